"""Feature-space gate scores: hand-checked values on small tensors, fitting, and the save/load round trip."""

import numpy as np
import pytest
import torch
from pytest import approx

from multitask.model import ood
from multitask.model.modeling import MultitaskModel
from multitask.serve.predict import fit_gate_statistics, predict_scores


def test_energy_is_logsumexp():
    logits = torch.tensor([[0.0, 0.0], [1.0, 3.0]])
    assert ood.energy(logits).tolist() == approx([np.log(2.0), np.log(np.exp(1) + np.exp(3))])


def test_mahalanobis_identity_precision_is_squared_euclidean_to_nearest_mean():
    means = torch.tensor([[0.0, 0.0], [4.0, 0.0]])
    features = torch.tensor([[1.0, 1.0], [3.0, 0.0], [2.0, 0.0]])
    # nearest squared distances: (1,1)->(0,0): 2; (3,0)->(4,0): 1; (2,0): 4 to both
    assert ood.mahalanobis(features, means, torch.eye(2)).tolist() == approx([-2.0, -1.0, -4.0])


def test_mahalanobis_uses_the_precision():
    # precision diag(1, 4): a unit step along y costs 4, along x 1
    value = ood.mahalanobis(torch.tensor([[1.0, 1.0]]), torch.zeros(1, 2), torch.diag(torch.tensor([1.0, 4.0])))
    assert value.item() == approx(-5.0)


def test_knn_similarity_kth_neighbour_and_self_skip():
    bank = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=1)
    query = torch.tensor([[2.0, 0.0]])  # cos to bank rows: 1, 0, 0.7071
    assert ood.knn_similarity(query, bank, k=1).item() == approx(1.0)
    assert ood.knn_similarity(query, bank, k=2).item() == approx(2 ** -0.5, abs=1e-6)
    assert ood.knn_similarity(query, bank, k=1, skip_self=True).item() == approx(2 ** -0.5, abs=1e-6)


def test_squash_and_robust_scale():
    center, scale = ood.robust_center_scale(np.array([1.0, 2.0, 3.0, 4.0, 5.0]))
    assert center == approx(3.0)
    assert scale == approx(2.0 / 1.349)
    assert ood.squash(np.array([3.0]), center, scale)[0] == approx(0.5)
    assert float(ood.squash(torch.tensor([3.0 + scale]), center, scale)) == approx(1 / (1 + np.exp(-1)))
    # all-equal raw scores: a tiny positive scale, never a division by zero
    assert ood.robust_center_scale(np.ones(4))[1] > 0


def test_fit_statistics_means_precision_and_bank():
    rng = np.random.default_rng(0)
    features = np.concatenate([rng.normal(0, 1, (40, 3)), rng.normal(5, 1, (40, 3))])
    labels = np.array([0] * 40 + [1] * 40)
    fitted = ood.fit_feature_statistics(features, labels, num_categories=3, bank_size=30, seed=1)
    assert fitted["class_means"][0].numpy() == approx(features[:40].mean(axis=0), abs=1e-5)
    assert fitted["class_means"][2].numpy() == approx(features.mean(axis=0), abs=1e-5)  # no row: overall mean
    assert fitted["bank"].shape == (30, 3)
    assert torch.linalg.norm(fitted["bank"], dim=1).numpy() == approx(np.ones(30), abs=1e-5)
    # the precision inverts a covariance close to the identity (unit-variance clusters)
    assert np.linalg.inv(fitted["precision"].numpy()) == approx(np.eye(3), abs=0.4)


def test_in_scope_scores_separate_far_points():
    rng = np.random.default_rng(0)
    features = np.concatenate([rng.normal(0, 1, (50, 4)) + [6, 0, 0, 0], rng.normal(0, 1, (50, 4)) - [6, 0, 0, 0]])
    labels = np.array([0] * 50 + [1] * 50)
    logits = np.stack([features[:, 0], -features[:, 0]], axis=1)
    fitted = ood.fit_gate_statistics(features, logits, labels, 2, bank_size=100, knn_k=5)
    near = torch.tensor([[6.0, 0, 0, 0]])
    far = torch.tensor([[0.0, 30.0, 0, 0]])
    scores = {name: ood.in_scope_scores(None, torch.tensor([[6.0, -6.0], [0.0, 0.0]]), torch.cat([near, far]), fitted)
              for name in ["x"]}["x"]
    assert {"msp", "energy", "maha", "knn"} <= set(scores)
    assert "joint" not in scores  # no gate logits
    for name in ("maha", "knn", "energy"):
        assert scores[name][0] > scores[name][1], name
        assert 0 <= scores[name][1] < scores[name][0] < 1
    # a typical training row's squashed score is about 0.5 (median of the training raw scores)
    assert scores["maha"][0] == approx(0.5, abs=0.35)


def test_ood_metrics_hand_checked():
    score = np.array([0.9, 0.8, 0.7, 0.2, 0.75])
    in_scope = np.array([1, 1, 1, 0, 0], dtype=bool)
    result = ood.ood_metrics(score, in_scope)
    # pairs (in, out): 0.9>0.2, 0.9>0.75, 0.8>0.2, 0.8>0.75, 0.7>0.2, 0.7<0.75 -> 5/6
    assert result["auroc"] == approx(5 / 6)
    # keeping 95 % of in-scope rows needs threshold 0.7: 0.75 passes, 0.2 does not
    assert result["fpr_at_95tpr"] == approx(0.5)
    assert np.isnan(ood.ood_metrics(score, np.ones(5, dtype=bool))["auroc"])


def test_fitted_model_round_trip_and_prediction(model, tokenizer, tmp_path):
    texts = ["stock market rally lifts shares", "home team wins the championship", "election results announced",
             "inflation slows as prices fall", "striker scores twice in final", "voters head to the polls"]
    labels = [0, 2, 1, 0, 2, 1]
    info = fit_gate_statistics(model, tokenizer, texts + ["junk text"], labels + [-100], bank_size=4, knn_k=2)
    assert info["rows"] == 6 and info["bank_size"] == 4
    model.config.gate_score = "pick_maha"
    before = predict_scores(model, tokenizer, texts + ["lorem ipsum"], batch_size=3)
    assert set(before.gate_scores) == set(ood.ALL_SCORES)
    assert before.pick_prob == approx(before.gate_scores["pick"] * before.gate_scores["maha"], rel=1e-5)
    model.save_pretrained(tmp_path)
    loaded = MultitaskModel.from_pretrained(tmp_path)
    assert loaded.config.gate_statistics == model.config.gate_statistics
    assert torch.equal(loaded.gate_bank, model.gate_bank)
    assert torch.equal(loaded.gate_precision, model.gate_precision)
    after = predict_scores(loaded, tokenizer, texts + ["lorem ipsum"], batch_size=3)
    for name in ood.ALL_SCORES:
        assert after.gate_scores[name] == approx(before.gate_scores[name], abs=1e-5), name


def test_feature_score_without_statistics_is_refused(model):
    from multitask.model.configuration import MultitaskConfig

    with pytest.raises(ValueError, match="fitted gate statistics"):
        MultitaskConfig(encoder_config=model.config.encoder_config, gate_score="maha")


def test_missing_or_damaged_statistics_are_refused(model, tokenizer, tmp_path):
    texts = ["stock market rally lifts shares", "home team wins the championship", "election results announced",
             "inflation slows as prices fall"]
    fit_gate_statistics(model, tokenizer, texts, [0, 2, 1, 0], bank_size=4, knn_k=1)
    model.check_gate_statistics()  # fitted: fine
    model.gate_bank.fill_(float("nan"))  # what a checkpoint without the buffers loads as
    with pytest.raises(ValueError, match="gate statistics"):
        model.check_gate_statistics("m")


def test_a_gate_score_that_cannot_be_computed_is_an_error(model, tokenizer):
    model.config.gate_score = "maha"  # thresholds tuned on maha; no statistics to compute it
    with pytest.raises(ValueError, match="cannot be computed"):
        predict_scores(model, tokenizer, ["stock market rally"])
