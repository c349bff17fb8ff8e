"""Temperature scaling and calibration figures on small arrays with hand-checked values."""

import numpy as np
from pytest import approx

from multitask.scoring import calibration


def test_ece_equal_mass_bins_hand_checked():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([0, 1, 0, 1])
    # 2 bins of 2 rows, by confidence: {0.6, 0.7}: acc 1, conf 0.65 -> 0.35; {0.8, 0.9}: acc 0.5, conf 0.85 -> 0.35
    assert calibration.expected_calibration_error(probs, labels, bins=2) == approx(0.35)


def test_brier_and_nll_hand_checked():
    probs = np.array([[0.75, 0.25], [0.5, 0.5]])
    labels = np.array([0, 1])
    assert calibration.brier_score(probs, labels) == approx(((0.25**2 + 0.25**2) + (0.25 + 0.25)) / 2)
    assert calibration.negative_log_likelihood(probs, labels) == approx(-(np.log(0.75) + np.log(0.5)) / 2)


def test_fit_temperature_recovers_overconfidence():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 1.5, (4000, 3))
    labels = np.array([rng.choice(3, p=np.exp(row) / np.exp(row).sum()) for row in true_logits])
    # a model three times over-confident: its logits are 3x the true ones
    temperature = calibration.fit_temperature(3 * true_logits, labels)
    assert temperature == approx(3.0, rel=0.1)
    before = calibration.softmax_with_temperature(3 * true_logits, 1.0)
    after = calibration.softmax_with_temperature(3 * true_logits, temperature)
    assert calibration.expected_calibration_error(after, labels) < calibration.expected_calibration_error(before, labels)
    assert (after.argmax(axis=1) == before.argmax(axis=1)).all()  # temperature never changes the argmax


def test_joint_probabilities_sum_to_one():
    joint = calibration.joint_probabilities(np.array([0.8, 0.1]), np.array([[0.5, 0.5], [0.9, 0.1]]))
    assert joint.sum(axis=1) == approx([1.0, 1.0])
    assert joint[0].tolist() == approx([0.2, 0.4, 0.4])


def test_temperature_applied_by_the_model(model, tokenizer):
    from multitask.serve.predict import predict_scores

    texts = ["stock market rally lifts shares", "home team wins the championship"]
    raw = predict_scores(model, tokenizer, texts, return_features=True)
    model.config.calibration = {"gate_temperature": 2.0, "category_temperature": 0.5}
    scaled = predict_scores(model, tokenizer, texts)
    assert scaled.category_probs == approx(calibration.softmax_with_temperature(raw.category_logits, 0.5), abs=1e-5)
    assert scaled.gate_scores["pick"] == approx(calibration.softmax_with_temperature(raw.gate_logits, 2.0)[:, 1],
                                                abs=1e-5)
