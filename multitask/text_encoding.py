"""Texts → model inputs, one implementation for training, evaluation and prediction.

Long documents are cut to `max_length` tokens keeping the head (the tokenizer's own behaviour), the tail, or
both (`head_tail`: the first `head_tokens` and the last ones; Sun et al. 2019, "How to Fine-Tune BERT for Text
Classification?", found head 128 + tail 382 best at 512 tokens).

Each text is encoded whole without special tokens, the ids are cut, and the tokenizer's own special tokens
([CLS] … [SEP], <s> … </s>) are put around them. transformers v5's fast tokenizers have no
`build_inputs_with_special_tokens`, so that template is read from the tokenizer itself, once per call: a probe
text encoded with and without special tokens. `head` gives exactly what `tokenizer(texts, truncation=True,
max_length=max_length)` gives (a test checks it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .errors import UsageError

TRUNCATIONS = ("head", "tail", "head_tail")
_PROBE = "a"


def default_head_tokens(max_length: int) -> int:
    """A quarter of the length: 128 of 512, the head Sun et al. (2019) found best."""
    return max_length // 4


@dataclass(frozen=True)
class SpecialTemplate:
    """What the tokenizer adds around one sequence: ids before and after, and the token type of each part."""

    prefix_ids: list[int]
    suffix_ids: list[int]
    prefix_types: list[int] | None
    content_type: int | None
    suffix_types: list[int] | None

    @property
    def size(self) -> int:
        return len(self.prefix_ids) + len(self.suffix_ids)


def special_template(tokenizer) -> SpecialTemplate:
    """Read the single-sequence special-token template from the tokenizer (any backend, any model family)."""
    plain = tokenizer(_PROBE, add_special_tokens=False)["input_ids"]
    full = tokenizer(_PROBE)
    ids = full["input_ids"]
    start = next((i for i in range(len(ids) - len(plain) + 1) if ids[i : i + len(plain)] == plain), None)
    if not plain or start is None:
        raise ValueError(f"{type(tokenizer).__name__}: cannot find where its special tokens go ({_PROBE!r} encodes "
                         f"to {plain} alone and {ids} with special tokens)")
    end = start + len(plain)
    types = full.get("token_type_ids")
    return SpecialTemplate(
        prefix_ids=list(ids[:start]),
        suffix_ids=list(ids[end:]),
        prefix_types=list(types[:start]) if types is not None else None,
        content_type=types[start] if types is not None else None,
        suffix_types=list(types[end:]) if types is not None else None,
    )


def check_truncation(truncation: str, head_tokens: int | None, max_length: int, special_tokens: int = 0) -> int | None:
    """Validate the settings; return the head length `head_tail` uses (None for the other modes).

    `special_tokens` is how many the tokenizer adds; the head and the tail share what is left of `max_length`.
    """
    if truncation not in TRUNCATIONS:
        raise UsageError(f"--truncation {truncation!r}: choose one of {', '.join(TRUNCATIONS)}")
    budget = max_length - special_tokens
    if budget < 1:
        raise UsageError(f"--max_seq_length {max_length}: leaves no room for text next to the tokenizer's "
                         f"{special_tokens} special tokens")
    if truncation != "head_tail":
        if head_tokens is not None:
            raise UsageError(f"--head_tokens {head_tokens}: applies only with --truncation head_tail (this run cuts "
                             f"with --truncation {truncation})")
        return None
    head = default_head_tokens(max_length) if head_tokens is None else head_tokens
    if head < 1 or head >= budget:
        raise UsageError(f"--head_tokens {head}: with --truncation head_tail it must be at least 1 and below "
                         f"{budget} (--max_seq_length {max_length} less {special_tokens} special tokens), so the "
                         "tail keeps some tokens")
    return head


def cut_ids(ids: Sequence[int], budget: int, truncation: str, head_tokens: int | None = None) -> list[int]:
    """The ids of one text (no special tokens) cut to at most `budget`: the first, the last, or both ends."""
    ids = list(ids)
    if len(ids) <= budget:
        return ids
    if truncation == "head":
        return ids[:budget]
    if truncation == "tail":
        return ids[len(ids) - budget :]
    if truncation == "head_tail":
        head = min(head_tokens if head_tokens is not None else default_head_tokens(budget), budget)
        return ids[:head] + ids[len(ids) - (budget - head) :]
    raise ValueError(f"truncation must be one of {', '.join(TRUNCATIONS)}; got {truncation!r}")


def encode_texts(
    tokenizer,
    texts: Sequence[str],
    max_length: int,
    truncation: str = "head",
    head_tokens: int | None = None,
) -> dict[str, list[list[int]]]:
    """Unpadded `input_ids`, `attention_mask` (and `token_type_ids` when the tokenizer gives them) for each text,
    at most `max_length` tokens each, special tokens included.

    `truncation`: `head` keeps the beginning, `tail` the end, `head_tail` the first `head_tokens` (default: a
    quarter of `max_length`) and as many of the last tokens as fit.
    """
    template = special_template(tokenizer)
    head = check_truncation(truncation, head_tokens, max_length, template.size)
    budget = max_length - template.size
    # verbose=False: whole documents are longer than the model's limit on purpose; they are cut below.
    content = tokenizer(list(texts), add_special_tokens=False, verbose=False, return_attention_mask=False,
                        return_token_type_ids=False)["input_ids"]
    encoded: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": []}
    if template.content_type is not None:
        encoded["token_type_ids"] = []
    for ids in content:
        kept = cut_ids(ids, budget, truncation, head)
        encoded["input_ids"].append(template.prefix_ids + kept + template.suffix_ids)
        encoded["attention_mask"].append([1] * (template.size + len(kept)))
        if template.content_type is not None:
            encoded["token_type_ids"].append(template.prefix_types + [template.content_type] * len(kept)
                                             + template.suffix_types)
    return encoded


def text_separator(tokenizer) -> str:
    """What joins the text columns of one item: the tokenizer's separator token with spaces, or one space."""
    return f" {tokenizer.sep_token} " if tokenizer.sep_token else " "
