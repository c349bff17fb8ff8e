"""multitask.data.splits: the one stratified split and stratified samples (prepare, validation split, --max_*_samples)."""

from __future__ import annotations

from collections import Counter

import pytest

from multitask.data.splits import UNLABELLED, strata, stratified_sample, stratified_split


def test_stratified_split_cover_sizes_and_samples():
    labels = ["a"] * 40 + ["b"] * 20 + ["c"] * 10 + ["lonely"]
    train, test, info = stratified_split(labels, 7, seed=0)
    assert len(test) == 7 and Counter(labels[i] for i in test) == {"a": 4, "b": 2, "c": 1}
    assert 70 in train and info["too_small_to_stratify"] == {"lonely": 1}
    # Validation must hold both gate classes (thresholds are tuned there): `cover` moves one row in when needed.
    for seed in range(5):
        _, test, info = stratified_split(["a"] * 50 + ["b"] * 50, 0.05, seed=seed, cover=[1] * 98 + [0, 0])
        assert len({98, 99} & set(test.tolist())) >= 1
    sample, info = stratified_sample(labels, 14, seed=3)
    assert len(sample) == 14 and Counter(labels[i] for i in sample) == {"a": 8, "b": 4, "c": 2} and info["sampled"]
    assert (stratified_sample(labels, 14, seed=3)[0] == sample).all()  # seeded
    assert len(stratified_sample(labels, 1000)[0]) == len(labels)
    assert strata([1, 0, -100], [2, -100, -100]) == ["category=2", "pick=0", "(unlabelled)"]


def test_two_test_rows_of_two_equal_classes_take_one_of_each_and_indices_are_sorted():
    labels = ["a"] * 4 + ["b"] * 4 + ["solo"]
    train, test, info = stratified_split(labels, 2, seed=0)
    assert sorted(labels[i] for i in test) == ["a", "b"]
    assert 8 in train  # the single "solo" row cannot be in both parts: it trains
    assert sorted(train.tolist() + test.tolist()) == list(range(9))
    assert train.tolist() == sorted(train.tolist()) and test.tolist() == sorted(test.tolist())
    assert info == {"stratified": True, "stratified_by": "labels", "too_small_to_stratify": {"solo": 1}, "reason": None}


def test_row_count_at_least_the_splittable_rows_puts_them_all_in_test():
    train, test, _ = stratified_split(["a"] * 4 + ["b"] * 4 + ["solo"], 100, seed=0)
    assert train.tolist() == [8] and test.tolist() == list(range(8))


def test_nothing_splittable_keeps_every_row_in_train():
    train, test, info = stratified_split(["a", "b", "c"], 0.5, seed=0)
    assert train.tolist() == [0, 1, 2] and test.size == 0
    assert info["stratified"] is False and info["too_small_to_stratify"] == {"a": 1, "b": 1, "c": 1}


def test_fallback_stratifies_when_the_labels_cannot():
    # Three classes cannot all be in a test split of two rows; the gate label (two classes) can.
    _, test, info = stratified_split(["a", "a", "b", "b", "c", "c"], 2, seed=0, fallback=[1, 1, 1, 0, 0, 0])
    assert info["stratified_by"] == "fallback" and "number of classes" in info["reason"]
    assert sorted([1, 1, 1, 0, 0, 0][i] for i in test) == [0, 1]


def test_missing_labels_form_one_stratum():
    labels = ["a", "a", None, "", float("nan"), -100]
    assert strata([1, 1, 0, -100, -100, -100], labels) == [
        "category=a", "category=a", "pick=0", UNLABELLED, UNLABELLED, UNLABELLED]
    _, test, info = stratified_split(labels, 2, seed=0)
    assert info["too_small_to_stratify"] == {} and len(test) == 2
    assert sum(labels[i] == "a" for i in test) == 1  # one of the two "a", one of the four unlabelled


def test_bad_share_is_refused():
    with pytest.raises(ValueError, match="test_size"):
        stratified_split(["a", "a"], 1.5)


def test_sample_of_at_least_every_row_is_every_row_unsampled():
    sample, info = stratified_sample(["a", "b", "b"], 3)
    assert sample.tolist() == [0, 1, 2] and info == {"stratified": True, "sampled": False}
