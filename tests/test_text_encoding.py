"""multitask.data.text_encoding: head / tail / head_tail truncation with the tokenizer's own special tokens, for a
DeBERTa ([CLS] … [SEP]), a BERT (token types too) and an XLM-R (<s> … </s>) tokenizer. The end-to-end use in
training and prediction is in test_long_documents.py."""

import numpy as np
import pytest
from datasets import Dataset
from transformers import BertTokenizer, XLMRobertaTokenizer

from multitask.data.loading import tokenize
from multitask.data.text_encoding import (
    EncodingSettings,
    aggregate_windows,
    check_chunking,
    check_truncation,
    cut_ids,
    encode_documents,
    encode_texts,
    encode_windows,
    special_template,
    window_starts,
)
from multitask.errors import UsageError

WORDS = "the stock market rally lifts shares as central bank cuts interest rates and exports grow".split()
TEXTS = [
    "stock market",  # short: nothing cut
    " ".join(WORDS),
    " ".join(WORDS * 3),
    "株価が大きく上昇した " + " ".join(WORDS * 2) + " 首相が記者会見を開いた",
]


@pytest.fixture(scope="module")
def bert_tokenizer():
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    return BertTokenizer(vocab={token: index for index, token in enumerate(vocab)}, model_max_length=512)


@pytest.fixture(scope="module")
def xlmr_tokenizer():
    pieces = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(f"▁{w}", -1.0) for w in WORDS]
    return XLMRobertaTokenizer(vocab=pieces, model_max_length=512)


@pytest.fixture(params=["deberta", "bert", "xlmr"])
def any_tokenizer(request, tokenizer, bert_tokenizer, xlmr_tokenizer):
    """The tiny DeBERTa tokenizer of conftest ([CLS] … [SEP]), a BERT WordPiece one (with token_type_ids) and an
    XLM-R SentencePiece one (<s> … </s>, as multilingual-e5)."""
    return {"deberta": tokenizer, "bert": bert_tokenizer, "xlmr": xlmr_tokenizer}[request.param]


def _content(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_cut_ids_by_hand():
    ids = list(range(10))
    assert cut_ids(ids, 4, "head") == [0, 1, 2, 3]
    assert cut_ids(ids, 4, "tail") == [6, 7, 8, 9]
    assert cut_ids(ids, 4, "head_tail", head_tokens=1) == [0, 7, 8, 9]
    assert cut_ids(ids, 4, "head_tail", head_tokens=3) == [0, 1, 2, 9]
    assert cut_ids(ids, 10, "head_tail", head_tokens=3) == ids  # fits: nothing cut


@pytest.mark.parametrize("max_length", [4, 7, 12, 512])
def test_head_is_the_tokenizers_own_truncation(any_tokenizer, max_length):
    """The default keeps today's behaviour exactly: same ids, masks and token types as the tokenizer's own cut."""
    expected = any_tokenizer(TEXTS, truncation=True, max_length=max_length)
    assert encode_texts(any_tokenizer, TEXTS, max_length, "head") == dict(expected)


@pytest.mark.parametrize("max_length", [5, 12])
def test_tail_matches_left_truncation(any_tokenizer, max_length):
    any_tokenizer.truncation_side = "left"
    try:
        expected = any_tokenizer(TEXTS, truncation=True, max_length=max_length)
    finally:
        any_tokenizer.truncation_side = "right"
    assert encode_texts(any_tokenizer, TEXTS, max_length, "tail") == dict(expected)


def test_head_tail_keeps_both_ends_inside_the_special_tokens(any_tokenizer):
    template = special_template(any_tokenizer)
    assert template.size == any_tokenizer.num_special_tokens_to_add()
    first, last = any_tokenizer(["x"])["input_ids"][0][0], any_tokenizer(["x"])["input_ids"][0][-1]
    max_length, head = 12, 3
    encoded = encode_texts(any_tokenizer, TEXTS, max_length, "head_tail", head)
    budget = max_length - template.size
    for text, ids, mask in zip(TEXTS, encoded["input_ids"], encoded["attention_mask"]):
        content = _content(any_tokenizer, text)
        assert ids[0] == first and ids[-1] == last  # [CLS] … [SEP] / <s> … </s>, once each
        assert ids.count(first) == 1 and ids.count(last) == 1
        kept = ids[len(template.prefix_ids) : len(ids) - len(template.suffix_ids)]
        if len(content) <= budget:
            assert kept == content
        else:
            assert len(ids) == max_length and len(mask) == max_length
            assert kept == content[:head] + content[-(budget - head) :]
    if "token_type_ids" in encoded:
        assert all(set(types) == {0} for types in encoded["token_type_ids"])


def test_head_tail_on_japanese_with_the_deberta_tokenizer(tokenizer):
    text = "首相が記者会見を開いた " + "stock market rally " * 20 + "サッカー代表が勝利した"
    (ids,) = encode_texts(tokenizer, [text], 24, "head_tail", 8)["input_ids"]
    content = _content(tokenizer, text)
    assert ids == [tokenizer.cls_token_id, *content[:8], *content[-14:], tokenizer.sep_token_id]
    decoded = tokenizer.decode(ids, skip_special_tokens=True).replace(" ", "")
    assert decoded.startswith("首相") and decoded.endswith("勝利した")
    assert tokenizer.unk_token_id not in ids


def test_check_truncation_names_the_flag():
    assert check_truncation("head", None, 16, 2) is None
    assert check_truncation("head_tail", None, 512, 2) == 128  # a quarter, as Sun et al.'s 128 + 382
    with pytest.raises(UsageError, match="--head_tokens 14"):
        check_truncation("head_tail", 14, 16, 2)  # no room left for the tail
    with pytest.raises(UsageError, match="--truncation 'middle'"):
        check_truncation("middle", None, 16, 2)
    with pytest.raises(UsageError, match="only with --truncation head_tail"):  # not silently ignored
        check_truncation("tail", 64, 512, 2)
    with pytest.raises(UsageError, match="--max_seq_length 2"):
        check_truncation("head", None, 2, 2)


def test_data_tokenize_uses_the_same_cut(tokenizer):
    texts = ["sports " * 40 + "株価が大きく上昇した", "central bank cuts interest rates"]
    dataset = tokenize(Dataset.from_dict({"text": texts}), tokenizer, 16, "head_tail", 5)
    assert dataset["input_ids"] == encode_texts(tokenizer, texts, 16, "head_tail", 5)["input_ids"]
    assert dataset["length"] == [len(ids) for ids in dataset["input_ids"]] and dataset["length"][0] == 16


# Chunked mode (--long_text chunk): windows, their settings, and recombining window outputs per document.


@pytest.mark.parametrize("length, budget, stride, max_chunks, starts", [
    (3, 4, 1, None, [0]),             # fits: one window
    (4, 4, 1, None, [0]),             # exactly fits
    (10, 4, 1, None, [0, 3, 6]),      # step 3; the last window ends at the text's end
    (5, 4, 1, None, [0, 1]),          # the last window shares more than `stride` to stay full
    (10, 4, 0, None, [0, 4, 6]),      # no overlap, last one aligned to the end
    (10, 4, 1, 2, [0, 3]),            # capped: the first windows
])
def test_window_starts(length, budget, stride, max_chunks, starts):
    assert window_starts(length, budget, stride, max_chunks) == starts


def test_encode_windows_covers_every_token_with_the_special_tokens(bert_tokenizer):
    texts = [" ".join(WORDS), "stock market"]  # 15 words and 2 words, one token each
    encoded = encode_windows(bert_tokenizer, texts, max_length=8, stride=2)  # 6 content tokens a window, step 4
    content = bert_tokenizer(texts[0], add_special_tokens=False)["input_ids"]
    assert encoded["document"] == [0, 0, 0, 0, 1]  # starts 0, 4, 8, 9 for 15 tokens; the short text: one window
    cls, sep = bert_tokenizer.cls_token_id, bert_tokenizer.sep_token_id
    for start, ids in zip([0, 4, 8, 9], encoded["input_ids"][:4], strict=True):
        assert ids == [cls, *content[start : start + 6], sep]
    assert encoded["input_ids"][4] == bert_tokenizer("stock market")["input_ids"]
    assert all(len(mask) == len(ids) for mask, ids in zip(encoded["attention_mask"], encoded["input_ids"]))
    assert len(encoded["token_type_ids"]) == 5


def test_encode_documents_truncates_or_chunks_as_settings_say(bert_tokenizer):
    texts = [" ".join(WORDS * 2), "stock"]
    truncated = encode_documents(bert_tokenizer, texts, EncodingSettings(8, truncation="tail"))
    assert truncated["input_ids"] == encode_texts(bert_tokenizer, texts, 8, "tail")["input_ids"]
    assert truncated["document"] == [0, 1]
    chunked = encode_documents(bert_tokenizer, texts, EncodingSettings(8, long_text="chunk", chunk_stride=0,
                                                                       max_chunks=3))
    assert chunked["document"] == [0, 0, 0, 1]  # 30 tokens in windows of 6: capped at the first three


def test_tokenize_chunked_expands_rows_and_keeps_their_columns(bert_tokenizer):
    dataset = Dataset.from_dict({"text": [" ".join(WORDS), "stock market"], "gate_labels": [1, 0],
                                 "row_id": [7, 8]})
    windows = tokenize(dataset, bert_tokenizer, 8, long_text="chunk", chunk_stride=2)
    assert windows["document"] == [0, 0, 0, 0, 1]
    assert windows["gate_labels"] == [1, 1, 1, 1, 0] and windows["row_id"] == [7, 7, 7, 7, 8]
    assert windows["length"] == [8, 8, 8, 8, 4]
    assert tokenize(dataset, bert_tokenizer, 8)["document"] == [0, 1]  # truncated: one row per text


def test_aggregate_windows_mean_and_max_in_any_order():
    values = np.array([[1.0, 4.0], [3.0, 0.0], [5.0, 5.0], [-1.0, 2.0]], dtype=np.float32)
    documents = np.array([2, 0, 2, 0])  # windows shuffled, as a length-grouped sampler returns them
    ids, mean = aggregate_windows(values, documents, "mean")
    assert ids.tolist() == [0, 2]
    np.testing.assert_allclose(mean, [[1.0, 1.0], [3.0, 4.5]])
    assert mean.dtype == np.float32
    np.testing.assert_allclose(aggregate_windows(values, documents, "max")[1], [[3.0, 2.0], [5.0, 5.0]])
    with pytest.raises(ValueError, match="aggregation"):
        aggregate_windows(values, documents, "median")


@pytest.mark.parametrize("args, message", [
    (("chunk", 62, None, 64, 2), "--chunk_stride 62"),  # shares the whole window: no progress
    (("chunk", -1, None, 64, 2), "--chunk_stride -1"),
    (("chunk", None, 0, 64, 2), "--max_chunks 0"),
    (("truncate", 8, None, 64, 2), "only with --long_text chunk"),
    (("truncate", None, None, 64, 2, "head", "max"), "--chunk_aggregation max: applies only with --long_text chunk"),
    (("paragraphs", None, None, 64, 2), "--long_text 'paragraphs'"),
])
def test_check_chunking_refuses_bad_settings(args, message):
    with pytest.raises(UsageError, match=message):
        check_chunking(*args)


def test_check_chunking_defaults_and_truncation_conflict():
    assert check_chunking("chunk", None, None, 512, 2) == 510 // 8
    assert check_chunking("truncate", None, None, 512, 2) is None
    with pytest.raises(UsageError, match="--truncation head_tail"):
        check_chunking("chunk", None, None, 512, 2, "head_tail")
