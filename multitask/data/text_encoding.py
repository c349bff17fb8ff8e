"""Texts → model inputs, one implementation for training, evaluation and prediction.

Long documents are cut to `max_length` tokens keeping the head (the tokenizer's own behaviour), the tail, or
both (`head_tail`: the first `head_tokens` and the last ones; Sun et al. 2019, "How to Fine-Tune BERT for Text
Classification?", found head 128 + tail 382 best at 512 tokens).

Each text is encoded whole without special tokens, the ids are cut, and the tokenizer's own special tokens
([CLS] … [SEP], <s> … </s>) are put around them. transformers v5's fast tokenizers have no
`build_inputs_with_special_tokens`, so that template is read from the tokenizer itself, once per call: a probe
text encoded with and without special tokens. `head` gives exactly what `tokenizer(texts, truncation=True,
max_length=max_length)` gives (a test checks it).

Chunked mode (`long_text="chunk"`) keeps the whole document instead: its tokens are split into overlapping windows
of `max_length` (special tokens included), each window is one model input tagged with its document's index, and
the window outputs are recombined per document by `aggregate_windows` (mean or max of the logits; features are
always averaged). `truncation` does not apply there; `max_chunks` caps the windows per document (the first ones).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from multitask.errors import UsageError

TRUNCATIONS = ("head", "tail", "head_tail")
LONG_TEXT_MODES = ("truncate", "chunk")
CHUNK_AGGREGATIONS = ("mean", "max")
_PROBE = "a"  # encodes to at least one id with any tokenizer ([UNK] at worst)


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
        """Special tokens per sequence (2 for [CLS] … [SEP]): `max_length - size` tokens are left for the text."""
        return len(self.prefix_ids) + len(self.suffix_ids)


def special_template(tokenizer) -> SpecialTemplate:
    """Read the single-sequence special-token template from the tokenizer (any backend, any model family)."""
    plain = tokenizer(_PROBE, add_special_tokens=False)["input_ids"]
    full = tokenizer(_PROBE)
    ids = full["input_ids"]
    # Searched for, not assumed at position 1: model families differ in what (if anything) comes first.
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
        # Not ids[-budget:]: a budget of 0 would make that ids[-0:], the whole text.
        return ids[len(ids) - budget :]
    if truncation == "head_tail":
        head = min(head_tokens if head_tokens is not None else default_head_tokens(budget), budget)
        # Same reason: with head == budget the tail is ids[len(ids):], empty, not ids[-0:].
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
    encoded = _empty_inputs(template)
    for ids in content:
        _append_input(encoded, template, cut_ids(ids, budget, truncation, head))
    return encoded


def _empty_inputs(template: SpecialTemplate) -> dict[str, list]:
    encoded: dict[str, list] = {"input_ids": [], "attention_mask": []}
    if template.content_type is not None:
        encoded["token_type_ids"] = []
    return encoded


def _append_input(encoded: dict[str, list], template: SpecialTemplate, kept: list[int]) -> None:
    """One model input: `kept` content ids inside the tokenizer's special tokens."""
    encoded["input_ids"].append(template.prefix_ids + kept + template.suffix_ids)
    encoded["attention_mask"].append([1] * (template.size + len(kept)))
    if template.content_type is not None:
        encoded["token_type_ids"].append(template.prefix_types + [template.content_type] * len(kept)
                                         + template.suffix_types)


def default_chunk_stride(max_length: int) -> int:
    """Tokens two neighbouring windows share by default: an eighth of the length (64 of 512)."""
    return max(max_length // 8, 0)


def check_chunking(long_text: str, chunk_stride: int | None, max_chunks: int | None, max_length: int,
                   special_tokens: int = 0, truncation: str = "head", aggregation: str = "auto") -> int | None:
    """Validate the long-text settings; return the overlap chunked mode uses (None when texts are truncated).

    `aggregation` is `--chunk_aggregation`; like the other chunk flags it is refused when texts are truncated
    (its default, `auto`, passes).
    """
    if long_text not in LONG_TEXT_MODES:
        raise UsageError(f"--long_text {long_text!r}: choose one of {', '.join(LONG_TEXT_MODES)}")
    if long_text == "truncate":
        for flag, value in (("--chunk_stride", chunk_stride), ("--max_chunks", max_chunks),
                            ("--chunk_aggregation", None if aggregation == "auto" else aggregation)):
            if value is not None:
                raise UsageError(f"{flag} {value}: applies only with --long_text chunk (this run truncates texts)")
        return None
    if truncation != "head":
        raise UsageError(f"--truncation {truncation}: applies only with --long_text truncate; --long_text chunk keeps "
                         "every window of a document (cap them with --max_chunks, which keeps the first ones)")
    budget = max_length - special_tokens
    stride = default_chunk_stride(budget) if chunk_stride is None else chunk_stride
    if stride < 0 or stride >= budget:
        raise UsageError(f"--chunk_stride {stride}: the tokens neighbouring windows share must be at least 0 and "
                         f"below {budget} (--max_seq_length {max_length} less {special_tokens} special tokens)")
    if max_chunks is not None and max_chunks < 1:
        raise UsageError(f"--max_chunks {max_chunks}: must be at least 1 (empty: every window)")
    return stride


def window_starts(length: int, budget: int, stride: int, max_chunks: int | None = None) -> list[int]:
    """Where each window of `budget` tokens starts in a text of `length` tokens; neighbours share `stride` tokens.

    The last window ends at the text's end (it may share more than `stride` tokens with the one before), so every
    window is full. A text that fits gives one window. `max_chunks` keeps only the first windows.
    """
    if length <= budget:
        return [0]
    starts = list(range(0, length - budget, budget - stride)) + [length - budget]
    return starts[:max_chunks] if max_chunks else starts


def encode_windows(
    tokenizer,
    texts: Sequence[str],
    max_length: int,
    stride: int,
    max_chunks: int | None = None,
) -> dict[str, list]:
    """Chunked encoding: every text becomes one or more overlapping windows of at most `max_length` tokens
    (special tokens included), in text order. Returns the model inputs of each window and `document`, the index
    in `texts` it came from (rows of one text are adjacent)."""
    template = special_template(tokenizer)
    budget = max_length - template.size
    content = tokenizer(list(texts), add_special_tokens=False, verbose=False, return_attention_mask=False,
                        return_token_type_ids=False)["input_ids"]
    encoded = _empty_inputs(template)
    encoded["document"] = []
    for document, ids in enumerate(content):
        for start in window_starts(len(ids), budget, stride, max_chunks):
            _append_input(encoded, template, list(ids[start : start + budget]))
            encoded["document"].append(document)
    return encoded


@dataclass(frozen=True)
class EncodingSettings:
    """How texts become model inputs: the fields of the same names in `MultitaskConfig` (see there)."""

    max_seq_length: int
    truncation: str = "head"
    head_tokens: int | None = None
    long_text: str = "truncate"
    chunk_stride: int | None = None
    max_chunks: int | None = None

    @classmethod
    def from_config(cls, config, max_length: int | None = None) -> EncodingSettings:
        """A model's settings, read with defaults so models saved before a field existed (and ONNX exports) load;
        `max_length` overrides the stored length (256, the old default, for models saved before it was stored)."""
        return cls(max_length or getattr(config, "max_seq_length", None) or 256, getattr(config, "truncation", "head"),
                   getattr(config, "head_tokens", None), getattr(config, "long_text", "truncate"),
                   getattr(config, "chunk_stride", None), getattr(config, "max_chunks", None))


def encode_documents(tokenizer, texts: Sequence[str], settings: EncodingSettings) -> dict[str, list]:
    """Model inputs for `texts` as `settings` say: one truncated input per text, or its windows. Always returns
    `document` (the text index of each input).

    The one entry point training (`data.tokenize`) and prediction (`predict.predict_scores`) share.
    """
    max_length = settings.max_seq_length
    if settings.long_text == "chunk":
        return encode_windows(tokenizer, texts, max_length, settings.chunk_stride or 0, settings.max_chunks)
    encoded = encode_texts(tokenizer, texts, max_length, settings.truncation, settings.head_tokens)
    encoded["document"] = list(range(len(texts)))
    return encoded


def aggregate_windows(values, documents, how: str = "mean"):
    """Per-document rows from per-window rows: the mean or the element-wise max over each document's windows.

    `values` (windows, ...) and `documents` (windows,) numpy arrays, in any order (the Trainer may have grouped
    windows by length). Returns `(document_ids, aggregated)`, sorted by document id.
    """
    if how not in CHUNK_AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {', '.join(CHUNK_AGGREGATIONS)}; got {how!r}")
    values, documents = np.asarray(values), np.asarray(documents).reshape(-1)
    ids, inverse = np.unique(documents, return_inverse=True)
    shape = (len(ids), *values.shape[1:])
    if how == "max":
        result = np.full(shape, -np.inf, dtype=np.float64)
        # ufunc.at is unbuffered: a repeated document index takes every window, not just the last one.
        np.maximum.at(result, inverse, values)
    else:
        result = np.zeros(shape, dtype=np.float64)
        np.add.at(result, inverse, values)
        result /= np.bincount(inverse, minlength=len(ids)).reshape(-1, *([1] * (values.ndim - 1)))
    return ids, result.astype(values.dtype if values.dtype.kind == "f" else np.float32)


def text_separator(tokenizer) -> str:
    """What joins the text columns of one item: the tokenizer's separator token with spaces, or one space."""
    # Spaces around it: the words on either side still tokenize as word starts, as in the column's own text.
    return f" {tokenizer.sep_token} " if tokenizer.sep_token else " "
