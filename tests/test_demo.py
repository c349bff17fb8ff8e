"""The embedded default: demo data, offline tokenizer, tiny DeBERTa-v3-style encoder."""

from __future__ import annotations

import os
import shutil

import pandas as pd
import pytest
import torch
from transformers import AutoModel, AutoTokenizer, DebertaV2Model

from multitask.data import demo
from multitask.data.demo import (
    CATEGORY_WEIGHTS,
    DEMO_DATA_DIR,
    build_demo_encoder,
    default_demo_paths,
    tiny_deberta_config,
    train_tokenizer,
    write_demo_data,
)
from multitask.errors import UsageError
from multitask.train.arguments import DataArguments, ModelArguments, MultitaskTrainingArguments

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _read(name: str) -> pd.DataFrame:
    # Empty body/category cells stay "" instead of NaN.
    return pd.read_csv(default_demo_paths()[name], keep_default_na=False)


def _keys(frame: pd.DataFrame) -> set[tuple[str, str]]:
    return set(zip(frame["title"], frame["body"], strict=True))


def _is_japanese(text: str) -> bool:
    return any("\u3040" <= ch <= "\u30ff" or "\u4e00" <= ch <= "\u9fff" for ch in text)


@pytest.fixture(scope="module")
def demo_tokenizer():
    texts = [t for name in ("task1", "task2") for col in ("title", "body") for t in _read(name)[col]]
    return train_tokenizer(texts)


@pytest.fixture(scope="module")
def demo_encoder_dir(tmp_path_factory):
    return build_demo_encoder(tmp_path_factory.mktemp("demo_encoder"))


# --- data ---


def test_generation_is_deterministic_and_matches_committed_files(tmp_path):
    first = write_demo_data(tmp_path / "a", seed=0)
    second = write_demo_data(tmp_path / "b", seed=0)
    for name, path in first.items():
        assert path.read_bytes() == second[name].read_bytes(), name
        # The committed copy must be what `python -m multitask.demo` writes.
        assert path.read_bytes() == (DEMO_DATA_DIR / path.name).read_bytes(), name
    assert (tmp_path / "a" / "README.md").read_bytes() == (DEMO_DATA_DIR / "README.md").read_bytes()
    other = write_demo_data(tmp_path / "c", seed=1)
    assert other["task1"].read_bytes() != first["task1"].read_bytes()


def test_columns_sizes_and_languages():
    task1, task2, val, test = (_read(n) for n in ("task1", "task2", "val", "test"))
    assert list(task1.columns) == ["pick", "title", "body"]
    assert list(task2.columns) == ["category", "title", "body"]
    assert list(val.columns) == list(test.columns) == ["pick", "category", "title", "body"]
    assert 400 <= len(task1) + len(task2) <= 700
    assert 100 <= len(val) <= 140 and 100 <= len(test) <= 140
    everything = pd.concat([task1, task2, val, test])
    assert 0.35 < everything["title"].map(_is_japanese).mean() < 0.65
    assert (everything["body"] == "").any() and (everything["title"] != "").all()
    assert sum(p.stat().st_size for p in DEMO_DATA_DIR.iterdir()) < 200_000


def test_task_overlap_like_real_data():
    task1, task2 = _read("task1"), _read("task2")
    picks, declines, categorized = (
        _keys(task1[task1["pick"] == 1]),
        _keys(task1[task1["pick"] == 0]),
        _keys(task2),
    )
    both = picks & categorized
    assert 0.3 * len(picks) <= len(both) <= 0.7 * len(picks)  # about half verbatim in both files
    assert picks - categorized  # Pick label only
    assert categorized - picks  # category label only
    assert not declines & categorized
    # No accidental leakage between training and evaluation files.
    train = _keys(task1) | categorized
    assert not train & _keys(_read("val")) and not train & _keys(_read("test"))
    assert not _keys(_read("val")) & _keys(_read("test"))


def test_every_category_in_train_and_val_with_uneven_frequencies():
    task2, val, test = _read("task2"), _read("val"), _read("test")
    counts = task2["category"].value_counts()
    assert set(counts.index) == set(CATEGORY_WEIGHTS)
    assert counts.min() >= 8 and counts.max() >= 3 * counts.min()
    for frame in (val, test):
        assert set(frame.loc[frame["pick"] == 1, "category"]) == set(CATEGORY_WEIGHTS)
        assert (frame.loc[frame["pick"] == 0, "category"] == "").all()
        assert set(frame["pick"]) == {0, 1}


# --- tokenizer ---


def test_tokenizer_special_ids_and_templates(demo_tokenizer):
    tok = demo_tokenizer
    assert tok.convert_tokens_to_ids(["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]) == [0, 1, 2, 3, 4]
    assert (tok.pad_token_id, tok.cls_token_id, tok.sep_token_id) == (0, 1, 2)
    single = tok("Forecasters warn of heavy rain")["input_ids"]
    assert single[0] == 1 and single[-1] == 2
    pair = tok("a title", "a body")["input_ids"]
    assert pair[0] == 1 and pair.count(2) == 2 and pair[-1] == 2


def test_tokenizer_has_no_unk_on_english_japanese_and_full_width(demo_tokenizer):
    tok, val = demo_tokenizer, _read("val")
    english = next(t for t in val["body"] if t and not _is_japanese(t))
    japanese = next(t for t in val["body"] if _is_japanese(t))
    for text in (english, japanese, "首相？！", "ﾃｽﾄ"):
        assert tok.unk_token_id not in tok(text)["input_ids"], text
    # NFKC: full-width punctuation and half-width kana become their usual forms.
    assert tok("首相？！")["input_ids"] == tok("首相?!")["input_ids"]
    assert tok("ﾃｽﾄ")["input_ids"] == tok("テスト")["input_ids"]
    # Japanese has no spaces, yet comes out as multi-character pieces, not one piece per character.
    pieces = tok.tokenize(japanese)
    assert len(pieces) < len(japanese) and any(len(p.lstrip("▁")) >= 2 for p in pieces)
    # Every evaluation text is covered by the training vocabulary.
    for frame in (val, _read("test")):
        for text in pd.concat([frame["title"], frame["body"]]):
            assert tok.unk_token_id not in tok(text)["input_ids"], text


def test_tokenizer_save_load_round_trip(demo_tokenizer, tmp_path):
    demo_tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    texts = ["Central bank keeps interest rates on hold", "気象庁が大雨に警戒呼びかけ", "首相？！"]
    assert reloaded(texts)["input_ids"] == demo_tokenizer(texts)["input_ids"]
    assert reloaded("a", "b")["input_ids"] == demo_tokenizer("a", "b")["input_ids"]
    assert reloaded.pad_token_id == 0 and reloaded.model_max_length == 512


# --- encoder ---


def test_tiny_config_is_deberta_v3_style():
    config = tiny_deberta_config(vocab_size=100)
    assert config.relative_attention and not config.position_biased_input
    assert config.pos_att_type == ["p2c", "c2p"] and config.type_vocab_size == 0
    model = DebertaV2Model(config)
    assert hasattr(model.encoder, "rel_embeddings") and hasattr(model.encoder, "LayerNorm")


def test_build_demo_encoder_reloads_offline_with_identical_outputs(demo_encoder_dir):
    model, info = AutoModel.from_pretrained(demo_encoder_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    again = AutoModel.from_pretrained(demo_encoder_dir)
    tokenizer = AutoTokenizer.from_pretrained(demo_encoder_dir)
    assert model.config.vocab_size == len(tokenizer)
    batch = tokenizer(
        ["Scientists discover a comet", "研究チームが彗星を発見"], padding=True, return_tensors="pt"
    )
    model.eval()
    again.eval()
    with torch.no_grad():
        assert torch.equal(model(**batch).last_hidden_state, again(**batch).last_hidden_state)


def test_build_demo_encoder_reuses_and_rebuilds(demo_encoder_dir, tmp_path):
    weights = demo_encoder_dir / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert build_demo_encoder(demo_encoder_dir) == demo_encoder_dir
    assert weights.stat().st_mtime_ns == stamp  # reused, not rewritten

    # Changed data: the marker no longer matches, so the checkpoint is rebuilt.
    data_dir = tmp_path / "data"
    shutil.copytree(DEMO_DATA_DIR, data_dir)
    with (data_dir / "task1.csv").open("a", encoding="utf-8") as f:
        f.write("1,Brand new headline about zeppelins,\n")
    out = build_demo_encoder(tmp_path / "enc", data_dir=data_dir)
    shutil.copytree(demo_encoder_dir, tmp_path / "stale", dirs_exist_ok=True)
    rebuilt = build_demo_encoder(tmp_path / "stale", data_dir=data_dir)
    assert (rebuilt / "demo_build.json").read_text() == (out / "demo_build.json").read_text()
    assert (rebuilt / "demo_build.json").read_text() != (demo_encoder_dir / "demo_build.json").read_text()


def test_demo_is_bit_reproducible(tmp_path):
    """Same seed, same bytes: the tokenizer too, although tokenizers' UnigramTrainer depends on Rust's randomly
    seeded hash order (two raw trainings in one process already differ), so the demo trains the same model."""
    texts = [t for name in ("task1", "task2") for col in ("title", "body") for t in _read(name)[col]]
    first, second = train_tokenizer(texts), train_tokenizer(texts)
    assert first.backend_tokenizer.to_str() == second.backend_tokenizer.to_str()
    assert [first(t)["input_ids"] for t in texts] == [second(t)["input_ids"] for t in texts]
    builds = [build_demo_encoder(tmp_path / name, data_dir=tmp_path / "data", seed=3) for name in ("a", "b")]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (builds[0] / name).read_bytes() == (builds[1] / name).read_bytes(), name
    for name in ("task1", "task2", "val", "test"):
        assert (tmp_path / "data" / f"{name}.csv").is_file()


def test_use_demo_inputs_fills_in_data_encoder_and_default_settings(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "build_demo_encoder", lambda out_dir: out_dir)  # building it is tested above
    model_args, data_args = ModelArguments(), DataArguments()
    training_args = MultitaskTrainingArguments(output_dir=str(tmp_path), num_train_epochs=2.0, use_cpu=True)
    demo.use_demo_inputs(model_args, data_args, training_args, tmp_path)
    assert model_args.model_name_or_path == str(tmp_path / "demo_encoder")
    assert data_args.task1_file == str(demo.default_demo_paths()["task1"]) and data_args.test_files
    assert training_args.num_train_epochs == 2.0  # given by the user: kept
    assert training_args.learning_rate == demo.DEMO_OVERRIDES["learning_rate"]  # left at the default: the demo's
    assert model_args.freeze_embeddings is False  # an encoder built from scratch must train its word embeddings
    with pytest.raises(UsageError, match="--model_name_or_path is required"):
        demo.use_demo_inputs(ModelArguments(), DataArguments(task1_file="mine.csv"), training_args, tmp_path)
