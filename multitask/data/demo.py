"""The embedded default: synthetic bilingual demo data, an offline tokenizer and a tiny DeBERTa-v2 encoder.

`python run_finetune.py` with no arguments trains on this, offline, in a few minutes on a CPU.
Regenerate the committed CSVs with `python -m multitask.demo --out data/demo`.

Everything here is deterministic for a seed (same bytes), so a demo run can be compared across machines and the
tests can build their own tiny encoder from `train_tokenizer` and `tiny_deberta_config`. The demo *model* is
random (never pre-trained): its figures show the pipeline works, not what a real encoder reaches.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import random
import string
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import DebertaV2Config, DebertaV2Model, PreTrainedTokenizerFast

from multitask.errors import UsageError

DEMO_DATA_DIR = Path(__file__).resolve().parents[2] / "data" / "demo"
DEMO_FILES = {"task1": "task1.csv", "task2": "task2.csv", "val": "val.csv", "test": "test.csv"}
# Bump when the tokenizer/encoder recipe changes so cached demo encoders are rebuilt.
_ENCODER_RECIPE = "demo-encoder-v2"  # v2: canonical (reproducible) tokenizer

# Uneven on purpose (about 5:1 between the most and least frequent) so High/Mid/Low bands are non-empty.
CATEGORY_WEIGHTS = {
    "politics": 24,
    "economy": 19,
    "technology": 15,
    "sports": 13,
    "health": 10,
    "science": 8,
    "entertainment": 6,
    "weather": 5,
}

# kind -> language -> (title templates, body templates, {x} fillers); templates are "|"-separated.
# Slots: {x} topic word, {place}, {n} number, {day}. Title and body share one {x} so an item is coherent.
_NEWS = {
    "politics": {
        "en": (
            "{place} parliament debates {x}|Prime minister defends {x}|Opposition attacks {x} plan|Lawmakers delay vote on {x}|Senate approves {x} after long debate",
            "Lawmakers in {place} voted {n} to 40 on the {x} proposal on {day}.|The ruling party said the {x} bill goes to parliament next month.|Opposition leaders called the {x} a mistake and demanded an election.",
            "election|tax reform|coalition talks|defense budget|immigration policy|pension bill|voting law",
        ),
        "ja": (
            "{x}をめぐり国会が紛糾|首相、{x}について説明|野党が{x}に反対表明|{place}市議会で{x}の採決へ",
            "{place}で与野党が{x}について協議し、{day}に採決する見通しとなった。|政府は{x}の法案を来月の国会に提出する方針だ。|野党は{x}を批判し、首相に説明を求めた。",
            "選挙|税制改革|連立協議|防衛予算|移民政策|年金法案|憲法改正",
        ),
    },
    "economy": {
        "en": (
            "Central bank keeps {x} on hold|Investors watch {x} closely|{place} shares fall on {x} worries|Economists revise outlook on {x}",
            "Analysts in {place} said {x} could weigh on growth this quarter.|The index fell {n} points as traders reacted to news on {x}.|Companies reported profits up {n} percent despite {x} concerns.",
            "interest rates|inflation|the stock market|the yen|exports|bank earnings|oil prices",
        ),
        "ja": (
            "日銀、{x}の据え置きを決定|{x}が{n}か月ぶりの水準に|{place}の企業、{x}の影響を懸念|市場は{x}の動向に注目",
            "専門家は{x}が景気に影響すると指摘している。|{x}を受けて、日経平均は{n}円下落した。|{place}の中小企業の{n}%が{x}の先行きを不安視している。",
            "金利|物価|株価|円相場|輸出|銀行決算|原油価格",
        ),
    },
    "technology": {
        "en": (
            "{place} startup unveils new {x}|Tech giant delays {x} launch|Hackers target {x} users|Review: the latest {x} is faster",
            "The company said its new {x} uses {n} percent less power.|Engineers in {place} are testing the {x} before release on {day}.|Security researchers found a flaw in the {x} software.",
            "smartphone|AI chip|cloud service|software update|battery|data center|robot",
        ),
        "ja": (
            "{place}の新興企業が新型{x}を発表|大手IT企業、{x}の発売を延期|{x}を狙うサイバー攻撃が増加|新しい{x}、処理速度が{n}%向上",
            "同社の新しい{x}は、消費電力を{n}%削減したという。|{place}の開発チームが{x}の試験運用を始めた。|研究者が{x}のソフトウェアに脆弱性を発見した。",
            "スマートフォン|AIチップ|クラウドサービス|ソフトウェア更新|電池|データセンター|ロボット",
        ),
    },
    "sports": {
        "en": (
            "{place} wins {x} in extra time|Star player injured before {x}|Record crowd watches {x}|Coach praises team after {x}",
            "The home team scored {n} points in {x} on {day}.|Fans in {place} celebrated after {x} ended in a dramatic win.|The captain said the team trained hard for {x}.",
            "the football final|the baseball game|the marathon|the tennis open|the swimming championship|the rugby match",
        ),
        "ja": (
            "{x}で{place}のチームが優勝|{x}、エースが負傷で欠場|{x}に観客{n}千人|監督、{x}の勝利を称賛",
            "{place}で行われた{x}は、延長戦の末にホームチームが勝利した。|{x}で選手が{n}得点を挙げ、ファンが歓声を上げた。|主将は「{x}に向けて練習を重ねてきた」と話した。",
            "サッカー決勝|プロ野球|マラソン大会|テニス大会|水泳選手権|ラグビーの試合",
        ),
    },
    "health": {
        "en": (
            "Doctors warn of rising {x} cases|New study links diet to {x}|{place} hospitals prepare for {x}|Health ministry updates {x} guidelines",
            "Doctors in {place} reported {n} new cases linked to {x} this week.|Patients worried about {x} are advised to see a doctor early.|The health ministry said {x} remains a priority for clinics.",
            "flu|vaccine|hospital beds|heart disease|sleep|diabetes|mental health",
        ),
        "ja": (
            "{x}の患者が増加、医師が注意呼びかけ|{x}と食生活の関係、新研究|{place}の病院、{x}への対応を強化|厚労省、{x}の指針を改定",
            "{place}では今週、{x}の患者が{n}人報告された。|医師は{x}の症状があれば早めに受診するよう呼びかけている。|厚生労働省は{x}対策を重点課題としている。",
            "インフルエンザ|ワクチン|病床|心臓病|睡眠|糖尿病|心の健康",
        ),
    },
    "science": {
        "en": (
            "Scientists discover {x}|Researchers publish study on {x}|Space agency shares images of {x}|University team studies {x}",
            "Researchers at a university in {place} described {x} in a new paper.|The team spent {n} years collecting data on {x}.|Astronomers and biologists said {x} could change textbooks.",
            "a new planet|dinosaur fossils|a comet|gene editing|deep sea creatures|a telescope|climate data",
        ),
        "ja": (
            "研究チームが{x}を発見|{x}に関する論文を発表|宇宙機関、{x}の画像を公開|{place}の大学で{x}の研究",
            "{place}の大学の研究チームは{x}について論文を発表した。|研究者は{n}年かけて{x}のデータを集めた。|科学者は{x}の発見が教科書を書き換える可能性があると述べた。",
            "新しい惑星|恐竜の化石|彗星|ゲノム編集|深海生物|望遠鏡|気候データ",
        ),
    },
    "entertainment": {
        "en": (
            "{x} tops the box office|Fans line up for {x}|Director talks about {x}|{x} sells {n} thousand copies",
            "Critics in {place} praised {x} for its music and story.|{x} drew {n} thousand viewers in its first weekend.|The singer announced {x} on social media on {day}.",
            "the new film|the pop album|the anime series|the concert tour|the TV drama|the music award",
        ),
        "ja": (
            "{x}が興行収入首位に|{x}の公開にファンが行列|監督が{x}の舞台裏を語る|{x}、{n}万枚を売り上げ",
            "{place}の評論家は{x}の音楽と物語を高く評価した。|{x}は初週末に{n}万人を動員した。|人気歌手が{day}に{x}を発表した。",
            "新作映画|新アルバム|アニメシリーズ|コンサートツアー|連続ドラマ|音楽賞",
        ),
    },
    "weather": {
        "en": (
            "{x} expected in {place} this weekend|Forecasters warn of {x}|{x} disrupts trains in {place}|Temperatures drop as {x} moves in",
            "The weather agency said {x} could bring {n} millimeters of rain to {place}.|Residents were told to prepare for {x} on {day}.|Forecasters expect {x} to ease by the end of the week.",
            "heavy rain|a typhoon|snow|a heat wave|strong winds|thunderstorms",
        ),
        "ja": (
            "週末、{place}で{x}の恐れ|気象庁が{x}に警戒呼びかけ|{x}で{place}の電車に遅れ|{x}の影響で気温が低下",
            "気象庁によると、{x}で{place}では{n}ミリの雨が予想される。|住民は{day}の{x}に備えるよう求められた。|{x}は週末までに収まる見込みだ。",
            "大雨|台風|大雪|猛暑|強風|雷雨",
        ),
    },
}

# Decline rows: junk outside the taxonomy (spam, clickbait, recipes, chit-chat, errors, filler, horoscopes).
_JUNK = {
    "spam": {
        "en": (
            "BUY NOW!!! {n}% off {x}|You won a free {x}!|Limited offer: cheap {x} today",
            "Click the link to claim your {x} before midnight!|Best price on {x} guaranteed, call now!!!|Only {n} left, order your {x} today!",
            "watch|phone case|diet pills|designer bag|gift card",
        ),
        "ja": (
            "【激安】{x}が今だけ{n}%オフ！|当選おめでとうございます！{x}プレゼント|限定セール：{x}が半額",
            "今すぐこちらをクリックして{x}を受け取ってください！|{x}は在庫限り！お早めにどうぞ！！|残りわずか{n}個、{x}のご注文はお早めに！",
            "腕時計|化粧品|健康食品|ブランドバッグ|ギフト券",
        ),
    },
    "recipe": {
        "en": (
            "Easy {x} recipe|How to cook {x} in {n} minutes|My favorite {x} for busy nights",
            "Mix the flour and eggs, add the {x} and bake for {n} minutes.|Fry the {x} in butter, then season with salt and pepper.|Serve the {x} warm with rice.",
            "pancakes|curry|fried rice|banana bread|tomato soup",
        ),
        "ja": (
            "簡単{x}レシピ|{n}分でできる{x}|忙しい日の{x}",
            "{x}の材料を切って、醤油と砂糖で{n}分煮込みます。|フライパンで{x}を炒めれば完成です。|{x}は温かいご飯と一緒にどうぞ。",
            "カレー|肉じゃが|卵焼き|味噌汁|唐揚げ",
        ),
    },
    "chat": {
        "en": (
            "lol see you at lunch?|Anyone up for karaoke on {day}?|my {x} is so cute",
            "I'm so tired today, my {x} woke me up haha|my {x} knocked over the cup again lol|ok see you {day}!! bring your {x}",
            "cat|dog|little brother|hamster",
        ),
        "ja": (
            "今日のランチどうする？|{day}カラオケ行かない？|うちの{x}かわいすぎる",
            "{x}のせいで眠すぎてやばいw|うちの{x}がまたいたずらした笑|じゃあ{day}ね！{x}も連れてきて",
            "猫|犬|弟|ハムスター",
        ),
    },
    "error": {
        "en": (
            "Error {n}: page not found|Exception in thread main|Failed to load {x}",
            "NullPointerException at line {n} while reading {x}.|Please reload the {x} later.|Could not read {x} (code {n}).",
            "data|image|config file|user profile",
        ),
        "ja": (
            "エラー{n}：ページが見つかりません|システムエラーが発生しました|{x}の読み込みに失敗",
            "{x}を確認して、しばらくしてから再度お試しください。|{x}の読み込みに失敗しました（コード{n}）。|{x}について管理者に連絡してください。",
            "データ|画像|設定ファイル|プロフィール",
        ),
    },
    "filler": {
        "en": (
            "Lorem ipsum dolor sit amet|placeholder title {n}|test post {n}",
            "Lorem ipsum dolor sit amet, consectetur adipiscing elit.|test test test {x}|asdf qwerty {n}",
            "foo|bar|baz|qux",
        ),
        "ja": (
            "テスト投稿{n}|あいうえお かきくけこ|{x}のダミータイトル{n}",
            "これはテストです。これはテストです。|ダミーテキスト{x}。ダミーテキスト。|ああああ{n}",
            "その一|その二|その三",
        ),
    },
    # Hard negatives: clickbait that borrows news words, so the gate cannot rely on vocabulary alone.
    "clickbait": {
        "en": (
            "You won't believe this {x} trick!|10 {x} secrets they hide from you|Shocking {x} photos, number {n} will surprise you",
            "Click here to see the {x} secret that experts hate!!!|Share this before it gets deleted!|Sign up now for free {x} tips.",
            "election|inflation|smartphone|marathon|vaccine|comet|movie star|typhoon",
        ),
        "ja": (
            "{x}の裏ワザ、知らないと損！|誰も教えない{x}の秘密{n}選|衝撃の{x}画像、{n}枚目に驚愕",
            "今すぐクリックして{x}の秘密をチェック！！|削除される前にシェアしてください！|{x}の無料情報を今すぐ登録！",
            "選挙|物価|スマートフォン|マラソン大会|ワクチン|彗星|人気俳優|台風",
        ),
    },
    "horoscope": {
        "en": (
            "Your horoscope for {day}|Lucky color for {x} today|{x}: what the stars say",
            "{x}: a good day for new beginnings. Lucky number {n}.|{x} should avoid big decisions on {day}.|Wear something blue, {x}!",
            "Aries|Gemini|Leo|Scorpio|Pisces",
        ),
        "ja": (
            "{day}の星占い|{x}の今日の運勢|{x}のラッキーカラー",
            "{x}のあなたは、新しいことを始めると吉。ラッキーナンバーは{n}。|{x}は{day}に大きな決断を避けましょう。|{x}の人は青い服が幸運を呼びます！",
            "おひつじ座|ふたご座|しし座|さそり座|うお座",
        ),
    },
}

# Generic templates shared by every category: only the topic word {x} tells these apart.
_GENERIC = {
    "en": ("What we know so far about {x}", "Officials in {place} will give an update on {x} on {day}."),
    "ja": ("{x}について分かっていること", "{place}の関係者は{day}に{x}について説明する予定だ。"),
}
_NEWS = {
    category: {
        lang: (f"{titles}|{_GENERIC[lang][0]}", f"{bodies}|{_GENERIC[lang][1]}", fillers)
        for lang, (titles, bodies, fillers) in languages.items()
    }
    for category, languages in _NEWS.items()
}

_SLOTS = {
    "en": {
        "place": "Tokyo|Osaka|London|Berlin|Paris|Sydney|Toronto|Seoul|Nairobi|Chicago".split("|"),
        "day": "Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday".split("|"),
    },
    "ja": {
        "place": "東京|大阪|名古屋|札幌|福岡|京都|横浜|神戸|仙台|広島".split("|"),
        "day": "月曜日|火曜日|水曜日|木曜日|金曜日|土曜日|日曜日".split("|"),
    },
}


class _ItemMaker:
    """Draws unique (title, body) pairs: the same text never lands in two places by accident.

    Choices are dealt from reshuffled decks rather than drawn independently, so every template,
    filler and language turns up evenly and the training files cover the words of val/test.
    """

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.seen: set[tuple[str, str]] = set()
        self.decks: dict[tuple[str, ...], list[str]] = {}

    def deal(self, key: tuple[str, ...], options: list[str]) -> str:
        """The next card of the deck named `key`, refilled with a fresh shuffle of `options` when empty."""
        deck = self.decks.setdefault(key, [])
        if not deck:
            deck.extend(options)
            self.rng.shuffle(deck)
        return deck.pop()

    def make(
        self, table: dict[str, dict[str, tuple[str, str, str]]], kind: str | None = None
    ) -> dict[str, str]:
        """A new {"title", "body"} item of `kind` never returned before.

        Args:
            table (`dict[str, dict[str, tuple[str, str, str]]]`):
                `_NEWS` or `_JUNK`: kind -> language -> ("|"-separated titles, bodies, {x} fillers).
            kind (`str`, *optional*):
                A key of `table`; None deals the kinds in turn.

        Returns:
            `dict[str, str]`: `title` (first letter upper-cased) and `body` (empty for about 6 % of items).

        Raises:
            `RuntimeError`: When 1,000 draws in a row give only items already made (the templates are
            exhausted).
        """
        for _ in range(1000):
            kind_now = kind or self.deal(("kind",), sorted(table))
            lang = self.deal((kind_now, "lang"), ["en", "ja"])
            titles, bodies, fillers = table[kind_now][lang]
            slots = {
                "x": self.deal((kind_now, lang, "x"), fillers.split("|")),
                "n": str(self.rng.randint(2, 99)),
                **{name: self.deal((lang, name), words) for name, words in _SLOTS[lang].items()},
            }
            title = self.deal((kind_now, lang, "title"), titles.split("|")).format(**slots)
            # A template may open with a lower-case {x} filler; a headline starts upper-case.
            title = title[0].upper() + title[1:]
            body = self.deal((kind_now, lang, "body"), bodies.split("|")).format(**slots)
            # Real feeds have title-only items; keep a few.
            body = "" if self.rng.random() < 0.06 else body
            if (title, body) not in self.seen:
                self.seen.add((title, body))
                return {"title": title, "body": body}
        raise RuntimeError(f"could not draw a new unique item for {kind!r}")


def _write_csv(path: Path, columns: list[str], rows: list[dict[str, str]]) -> None:
    """UTF-8 CSV with "\n" line ends on every OS (byte-identical output); keys not in `columns` are dropped."""
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _eval_split(maker: _ItemMaker, n_pick: int, n_decline: int) -> list[dict[str, str]]:
    """About `n_pick` news rows in the training proportions (at least 3 per category) and `n_decline` junk rows,
    shuffled; every row has both labels (`category` empty on junk)."""
    total = sum(CATEGORY_WEIGHTS.values())
    rows = []
    for category, weight in CATEGORY_WEIGHTS.items():
        # At least 3 per category so every class is scored on validation and test.
        for _ in range(max(3, round(n_pick * weight / total))):
            rows.append({"pick": "1", "category": category, **maker.make(_NEWS, category)})
    rows += [{"pick": "0", "category": "", **maker.make(_JUNK)} for _ in range(n_decline)]
    maker.rng.shuffle(rows)
    return rows


def write_demo_data(out_dir: Path, seed: int = 0) -> dict[str, Path]:
    """Write task1/task2/val/test CSVs (+ README.md) into `out_dir`; byte-identical for the same seed.

    Task1 and Task2 share a third of each category's news items verbatim; Task1 adds 120 junk (Decline) rows;
    val and test get about 80 news and 40 junk rows each, with both labels.

    Args:
        out_dir (`Path`):
            Folder to write into (created if missing); existing files of the same names are overwritten.
        seed (`int`, *optional*, defaults to 0):
            Seed of every random choice.

    Returns:
        `dict[str, Path]`: `task1`, `task2`, `val`, `test` -> the CSV written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    maker = _ItemMaker(random.Random(seed))
    total = sum(CATEGORY_WEIGHTS.values())
    task1: list[dict[str, str]] = []
    task2: list[dict[str, str]] = []
    for category, weight in CATEGORY_WEIGHTS.items():
        items = [
            {"pick": "1", "category": category, **maker.make(_NEWS, category)}
            # 360 news items in all: minutes on a CPU, yet 18 for the rarest category (weather).
            for _ in range(round(360 * weight / total))
        ]
        third = len(items) // 3
        # First third in both tasks (verbatim overlap), second third Task1-only, the rest Task2-only.
        task1 += items[: 2 * third]
        task2 += items[:third] + items[2 * third :]
    task1 += [{"pick": "0", **maker.make(_JUNK)} for _ in range(120)]
    maker.rng.shuffle(task1)
    maker.rng.shuffle(task2)
    splits = {
        "task1": task1,
        "task2": task2,
        "val": _eval_split(maker, 80, 40),
        "test": _eval_split(maker, 80, 40),
    }
    columns = {"task1": ["pick", "title", "body"], "task2": ["category", "title", "body"]}
    paths = {}
    for name, rows in splits.items():
        paths[name] = out_dir / DEMO_FILES[name]
        _write_csv(paths[name], columns.get(name, ["pick", "category", "title", "body"]), rows)
    counts = "\n".join(f"| `{DEMO_FILES[n]}` | {len(r)} |" for n, r in splits.items())
    (out_dir / "README.md").write_text(_README.format(seed=seed, counts=counts), encoding="utf-8")
    return paths


_README = """# Demo data (synthetic)

Generated by `python -m multitask.demo --out data/demo` (seed {seed}); do not edit by hand.
Bilingual (about half English, half Japanese) news-like items made from templates with slot filling.
`python run_finetune.py` with no arguments trains on these files.

| file | rows |
|---|---|
{counts}

- `task1.csv`: `pick`, `title`, `body`. `pick=1` rows are news in one of 8 categories; `pick=0` rows are junk
  (spam, clickbait, recipes, chit-chat, error messages, filler, horoscopes).
- `task2.csv`: `category`, `title`, `body`. News items with a category (politics, economy, technology, sports,
  health, science, entertainment, weather; deliberately uneven frequencies). About half of the Pick rows of
  `task1.csv` appear verbatim here; the rest of each file has only one of the two labels.
- `val.csv`, `test.csv`: `pick`, `category`, `title`, `body`; `category` is empty for `pick=0` rows.

Some bodies are empty, as in real feeds (pandas reads empty cells as NaN unless `keep_default_na=False`).
`python -m multitask.demo --encoder-out DIR` also builds the tiny from-scratch DeBERTa-v2 encoder and its
tokenizer (trained offline on the title/body texts of `task1.csv` and `task2.csv`) in `DIR`.
"""


def default_demo_paths() -> dict[str, Path]:
    """Paths of the committed demo CSVs: task1, task2, val, test.

    Returns:
        `dict[str, Path]`: Name -> path under `data/demo/` of the repository (the files may not exist in an
        installed copy; `build_demo_encoder` regenerates them when missing).
    """
    return {name: DEMO_DATA_DIR / filename for name, filename in DEMO_FILES.items()}


SPECIAL_TOKENS = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]  # ids 0..4, as in DeBERTa-v3
# tokenizers' UnigramTrainer gives each required character missing from the final pieces the model's minimum
# score plus k * this step, k counting up in the iteration order of a Rust HashSet (randomly seeded per process).
_REQUIRED_CHAR_STEP = 1e-4
_SCORE_DECIMALS = 6  # the EM sums over the corpus in hash order too: scores differ in their last bits


def canonical_unigram(tokenizer: Tokenizer) -> Tokenizer:
    """The same trained Unigram tokenizer with a vocabulary independent of Rust's randomly seeded hash order.

    Three things in `UnigramTrainer` depend on it: which of the required characters (every character of the
    corpus and of `initial_alphabet`) gets which of the lowest scores, the id order of pieces with equal scores,
    and the last bits of every score (the EM sums over the corpus in hash order). So the same texts gave
    different tokenizers from run to run (a third of the demo texts tokenized differently). Here the
    required-character tail is re-assigned in code-point order, scores are rounded to 6 decimals, and every piece
    after the special tokens is ordered by (score desc, piece): same texts, same vocabulary, same bytes.

    Args:
        tokenizer (`tokenizers.Tokenizer`):
            A trained Unigram tokenizer whose first pieces are `SPECIAL_TOKENS`; not modified.

    Returns:
        `tokenizers.Tokenizer`: A new tokenizer with the reordered vocabulary and `unk_id` updated to match.
    """
    state = json.loads(tokenizer.to_str())
    vocab = [(piece, float(score)) for piece, score in state["model"]["vocab"]]
    special = [entry for entry in vocab[: len(SPECIAL_TOKENS)] if entry[0] in SPECIAL_TOKENS]
    pieces = vocab[len(special):]
    if pieces:
        floor = min(score for _, score in pieces)

        def in_tail(piece: str, score: float) -> bool:
            steps = (score - floor) / _REQUIRED_CHAR_STEP
            return len(piece) == 1 and abs(steps - round(steps)) < 1e-6 and round(steps) < len(pieces)

        # Single characters on the trainer's score ladder (floor + k·step) are the required-character tail.
        tail = sorted(piece for piece, score in pieces if in_tail(piece, score))
        tail_scores = sorted((score for piece, score in pieces if in_tail(piece, score)), reverse=True)
        # Highest tail score to the lowest code point: the same characters always get the same scores.
        rescored = dict(zip(tail, tail_scores))
        pieces = [(piece, round(rescored.get(piece, score), _SCORE_DECIMALS)) for piece, score in pieces]
        pieces = sorted(pieces, key=lambda entry: (-entry[1], entry[0]))
    state["model"]["vocab"] = [list(entry) for entry in special + pieces]
    state["model"]["unk_id"] = [piece for piece, _ in special + pieces].index("[UNK]")
    return Tokenizer.from_str(json.dumps(state, ensure_ascii=False))


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = 4000, model_max_length: int = 512
) -> PreTrainedTokenizerFast:
    """Train a SentencePiece-like Unigram tokenizer offline (NFKC, Metaspace, [CLS] A [SEP] B [SEP]).

    The same texts give the same tokenizer, byte for byte (`canonical_unigram`). The vocabulary may come out
    smaller than `vocab_size` on a small corpus.

    Args:
        texts (`Iterable[str]`):
            The training corpus; empty strings are skipped.
        vocab_size (`int`, *optional*, defaults to 4000):
            Target vocabulary size.
        model_max_length (`int`, *optional*, defaults to 512):
            The tokenizer's `model_max_length`, the cut-off when truncation is asked for without a length.

    Returns:
        `PreTrainedTokenizerFast`: With `[PAD]`, `[CLS]`, `[SEP]`, `[UNK]`, `[MASK]` at ids 0-4, ASCII and
        kana always in the alphabet, and token type 1 for a pair's second text.
    """
    tokenizer = Tokenizer(models.Unigram())
    # v5 DeBERTa tokenizers drop SentencePiece's NFKC (PITFALLS): make it explicit so ？！ map to ?!.
    tokenizer.normalizer = normalizers.NFKC()
    # "always" = SentencePiece's dummy prefix: a first word is split as it would be mid-sentence.
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    # ASCII and kana always in the alphabet, so unseen words fall back to characters, not [UNK].
    kana = [chr(c) for c in range(0x3041, 0x3097)] + [chr(c) for c in range(0x30A1, 0x30FB)] + ["ー"]
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        unk_token="[UNK]",
        initial_alphabet=list(string.ascii_letters + string.digits + string.punctuation) + kana,
        show_progress=False,
    )
    tokenizer.train_from_iterator((t for t in texts if t), trainer=trainer)
    tokenizer = canonical_unigram(tokenizer)  # bit-reproducible: the trainer's output depends on hash order
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        unk_token="[UNK]",
        mask_token="[MASK]",
        model_max_length=model_max_length,
    )


def tiny_deberta_config(
    vocab_size: int,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    intermediate_size: int = 128,
    max_position_embeddings: int = 512,
) -> DebertaV2Config:
    """A small DebertaV2Config with DeBERTa-v3 attention (the library defaults are v1-style; see PITFALLS).

    Relative attention with p2c/c2p, no absolute positions (`position_biased_input=False`), shared attention
    keys, a LayerNorm'd relative embedding and no token types: the parameter layout of DeBERTa-v3, at toy
    size.

    Args:
        vocab_size (`int`):
            The tokenizer's size (`len(tokenizer)`).
        hidden_size (`int`, *optional*, defaults to 64):
            Width of the encoder; must be divisible by `num_attention_heads`.
        num_hidden_layers (`int`, *optional*, defaults to 2):
            Number of layers.
        num_attention_heads (`int`, *optional*, defaults to 4):
            Attention heads per layer.
        intermediate_size (`int`, *optional*, defaults to 128):
            Width of each feed-forward block.
        max_position_embeddings (`int`, *optional*, defaults to 512):
            No absolute position embeddings are built from it; with `max_relative_positions=-1` DeBERTa takes
            it as the largest relative distance.

    Returns:
        `DebertaV2Config`
    """
    return DebertaV2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        relative_attention=True,
        pos_att_type=["p2c", "c2p"],
        position_biased_input=False,
        norm_rel_ebd="layer_norm",
        share_att_key=True,
        position_buckets=64,  # 256 in DeBERTa-v3; smaller suits a 64-wide model and short texts
        max_relative_positions=-1,
        type_vocab_size=0,  # no token-type embeddings, as in DeBERTa-v3
        pad_token_id=0,  # [PAD] is id 0 in train_tokenizer's vocabulary
    )


def _training_texts(data_dir: Path) -> list[str]:
    """Every title and body (empty ones included) of task1.csv and task2.csv: the tokenizer's training corpus."""
    texts = []
    for name in ("task1", "task2"):
        # newline="": the csv module handles line ends inside quoted cells itself.
        with (data_dir / DEMO_FILES[name]).open(encoding="utf-8", newline="") as f:
            texts += [text for row in csv.DictReader(f) for text in (row["title"], row["body"])]
    return texts


def build_demo_encoder(out_dir: Path, data_dir: Path | None = None, seed: int = 0) -> Path:
    """Train the tokenizer on the demo training texts and save a random tiny DeBERTa-v2 encoder in `out_dir`.

    Reuses `out_dir` when its marker matches a hash of the inputs (data, recipe, seed); rebuilds otherwise.
    If `data_dir` lacks the CSVs they are generated first.

    Args:
        out_dir (`Path`):
            Folder for config.json, model.safetensors, the tokenizer files and the `demo_build.json` marker.
        data_dir (`Path`, *optional*):
            Folder with the demo CSVs; None is the committed `data/demo/`.
        seed (`int`, *optional*, defaults to 0):
            Seed of the CSVs (when generated) and of the random weights.

    Returns:
        `Path`: `out_dir`, ready for `from_pretrained`.
    """
    out_dir, data_dir = Path(out_dir), Path(data_dir or DEMO_DATA_DIR)
    if not all((data_dir / f).exists() for f in DEMO_FILES.values()):
        write_demo_data(data_dir, seed=seed)
    digest = hashlib.sha256(f"{_ENCODER_RECIPE}|{seed}".encode())
    for name in ("task1", "task2"):
        digest.update((data_dir / DEMO_FILES[name]).read_bytes())
    marker = out_dir / "demo_build.json"
    expected = {"recipe": _ENCODER_RECIPE, "inputs_sha256": digest.hexdigest()}
    built = all((out_dir / f).exists() for f in ("config.json", "model.safetensors", "tokenizer.json"))
    if built and marker.exists() and json.loads(marker.read_text()) == expected:
        return out_dir

    # First: if the rebuild dies halfway, the old marker must not vouch for a mix of old and new files.
    marker.unlink(missing_ok=True)
    tokenizer = train_tokenizer(_training_texts(data_dir))
    torch.manual_seed(seed)
    model = DebertaV2Model(tiny_deberta_config(vocab_size=len(tokenizer)))
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    marker.write_text(json.dumps(expected, indent=2) + "\n")  # last, so a half-written dir is never reused
    return out_dir


# The demo trains a tiny encoder from scratch, which needs a far higher rate than fine-tuning does.
DEMO_OVERRIDES = {"learning_rate": 1e-3, "num_train_epochs": 8.0, "per_device_train_batch_size": 16}
# The demo encoder is built from scratch: frozen, its random word embeddings would stay random (joint accuracy
# 0.57 instead of 0.94 on the demo validation rows), so the demo trains them whatever the default.
DEMO_MODEL_OVERRIDES = {"freeze_embeddings": False}


def use_demo_inputs(model_args, data_args, training_args, run_dir: Path) -> None:
    """Point run_finetune's arguments (changed in place) at the demo.

    The demo's CSVs, a tiny encoder built (or reused) in `run_dir/demo_encoder`, and `DEMO_OVERRIDES` /
    `DEMO_MODEL_OVERRIDES` for each of those training and model settings left at its default. For a run given no
    `--model_name_or_path`. `--test_files` given by the user are kept. A setting passed explicitly *with its
    default value* counts as left at the default, so the demo value replaces it.

    Args:
        model_args (`ModelArguments`):
            Gets `model_name_or_path` = the demo encoder, and the `DEMO_MODEL_OVERRIDES` it leaves at defaults.
        data_args (`DataArguments`):
            Gets the task1/task2/validation files, and the test file unless `test_files` is set.
        training_args (`MultitaskTrainingArguments`):
            Gets the `DEMO_OVERRIDES` values it leaves at their defaults.
        run_dir (`Path`):
            The run directory; the encoder is built in its `demo_encoder/`.

    Raises:
        `UsageError`: For a run that names its own data without a model: the demo encoder knows only the
        demo's text.
    """
    if data_args.task1_file or data_args.task2_file or data_args.train_file or data_args.dataset_repo:
        raise UsageError("--model_name_or_path is required with your own data (the demo encoder knows only demo text)")
    paths = default_demo_paths()
    data_args.task1_file, data_args.task2_file = str(paths["task1"]), str(paths["task2"])
    data_args.validation_file = str(paths["val"])
    data_args.test_files = data_args.test_files or [str(paths["test"])]
    model_args.model_name_or_path = str(build_demo_encoder(run_dir / "demo_encoder"))
    # A fresh instance of the same class gives the defaults that class defines (subclasses included).
    _override_defaults(training_args, type(training_args)(output_dir=str(run_dir)), DEMO_OVERRIDES)
    _override_defaults(model_args, type(model_args)(), DEMO_MODEL_OVERRIDES)


def _override_defaults(arguments, defaults, overrides: dict) -> None:
    """Set each of `overrides` on `arguments` where it still equals its value in `defaults`."""
    for name, value in overrides.items():
        if getattr(arguments, name) == getattr(defaults, name):
            setattr(arguments, name, value)


def main(argv: list[str] | None = None) -> None:
    """`python -m multitask.demo [--out DIR] [--seed N] [--encoder-out DIR]`; prints the paths written.

    Args:
        argv (`list[str]`, *optional*):
            Command-line arguments without the program name; None reads `sys.argv`.
    """
    parser = argparse.ArgumentParser(
        description="Write the synthetic demo CSVs (and optionally the tiny encoder)."
    )
    parser.add_argument("--out", type=Path, default=DEMO_DATA_DIR, help="folder for the CSVs and README.md")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    parser.add_argument("--encoder-out", type=Path, default=None, help="also build the tiny encoder here")
    args = parser.parse_args(argv)
    for name, path in write_demo_data(args.out, seed=args.seed).items():
        print(f"{name}: {path}")
    if args.encoder_out is not None:
        print(f"encoder: {build_demo_encoder(args.encoder_out, data_dir=args.out, seed=args.seed)}")


if __name__ == "__main__":
    main()
