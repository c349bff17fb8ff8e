"""Each loss term on tiny tensors, against numbers worked out by hand (the arithmetic is in the comments)."""

import math

import pytest
import torch

from multitask.model import losses

LN3 = math.log(3.0)


def test_masked_cross_entropy_ignores_unlabelled_rows():
    # Row 0: logits (0, 0), label 0 → −log ½ = ln 2. Row 1 carries no label and must not count.
    logits = torch.tensor([[0.0, 0.0], [5.0, -5.0]])
    loss = losses.masked_cross_entropy(logits, torch.tensor([0, -100]))
    assert loss.item() == pytest.approx(math.log(2.0), abs=1e-6)


def test_masked_cross_entropy_all_masked_is_exact_zero_with_gradient():
    logits = torch.randn(3, 4, requires_grad=True)
    loss = losses.masked_cross_entropy(logits, torch.full((3,), -100))
    assert loss.item() == 0.0 and not torch.isnan(loss)
    loss.backward()  # connected to the graph (DDP needs a gradient for every head)
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_masked_cross_entropy_class_weights_weighted_mean():
    # Row 0: logits (ln3, 0) → p = (¾, ¼), label 0 → ln(4/3) = 0.287682, weight 1.
    # Row 1: logits (0, 0), label 1 → ln 2 = 0.693147, weight 3.
    # Weighted mean = (0.287682 + 3·0.693147) / (1 + 3) = 0.591781.
    logits = torch.tensor([[LN3, 0.0], [0.0, 0.0]])
    loss = losses.masked_cross_entropy(logits, torch.tensor([0, 1]), class_weights=torch.tensor([1.0, 3.0]))
    assert loss.item() == pytest.approx(0.591781, abs=1e-5)


def test_masked_cross_entropy_label_smoothing():
    # ε = 0.1, K = 2, p = (¾, ¼), label 0:
    # (1−ε)·(−log ¾) + ε·½·(−log ¾ − log ¼) = 0.9·0.287682 + 0.05·(0.287682 + 1.386294) = 0.342613.
    logits = torch.tensor([[LN3, 0.0]])
    loss = losses.masked_cross_entropy(logits, torch.tensor([0]), label_smoothing=0.1)
    assert loss.item() == pytest.approx(0.342613, abs=1e-5)


def test_inverse_frequency_weights_are_clipped():
    # counts (8, 2, 0): N = 10, K = 3 → 10/24 = 0.4167, 10/6 = 1.6667, ∞; clipped to [0.5, 3].
    weights = losses.inverse_frequency_weights([8, 2, 0], min_weight=0.5, max_weight=3.0)
    assert weights.tolist() == pytest.approx([0.5, 10 / 6, 3.0], abs=1e-5)


def test_inverse_frequency_weights_balanced_is_one():
    assert losses.inverse_frequency_weights([5, 5, 5, 5]).tolist() == pytest.approx([1.0] * 4)


def test_hierarchy_kl_to_uniform_on_declined_rows_only():
    # Declined row: p = (¾, ¼): KL(p‖u) = ¾ ln ¾ + ¼ ln ¼ + ln 2 = −0.215762 − 0.346574 + 0.693147 = 0.130812.
    # The Pick row (very peaked) and the unlabelled row are ignored.
    category_logits = torch.tensor([[LN3, 0.0], [9.0, -9.0], [9.0, -9.0]])
    gate_labels = torch.tensor([0, 1, -100])
    assert losses.hierarchy_kl_to_uniform(category_logits, gate_labels).item() == pytest.approx(0.130812, abs=1e-5)


def test_hierarchy_kl_zero_when_flat_and_when_no_declined_row():
    assert losses.hierarchy_kl_to_uniform(torch.zeros(2, 5), torch.tensor([0, 0])).item() == pytest.approx(0.0, abs=1e-6)
    logits = torch.randn(2, 5, requires_grad=True)
    value = losses.hierarchy_kl_to_uniform(logits, torch.tensor([1, -100]))
    assert value.item() == 0.0
    value.backward()


def test_pick_consistency_penalises_category_more_confident_than_gate():
    # P(Pick) = ¾ → log = −0.287682.
    # Row 0: P(true cat) = 0.9 → log = −0.105361 → max(0, −0.105361 + 0.287682) = 0.182322.
    # Row 1: P(true cat) = ¾ → gap 0 → 0. Mean = 0.091161.
    gate_logits = torch.tensor([[0.0, LN3], [0.0, LN3]])
    category_logits = torch.tensor([[math.log(9.0), 0.0], [LN3, 0.0]])
    value = losses.pick_consistency(gate_logits, category_logits, torch.tensor([1, 1]), torch.tensor([0, 0]))
    assert value.item() == pytest.approx(0.091161, abs=1e-5)


def test_pick_consistency_skips_declined_and_unlabelled_rows():
    gate_logits = torch.tensor([[0.0, LN3], [0.0, 0.0]], requires_grad=True)
    category_logits = torch.tensor([[math.log(9.0), 0.0], [9.0, 0.0]])
    value = losses.pick_consistency(gate_logits, category_logits, torch.tensor([0, 1]), torch.tensor([0, -100]))
    assert value.item() == 0.0


def test_symmetric_kl_hand_value_and_identity():
    # p = (¾, ¼), q = (½, ½): KL(p‖q) = 0.130812, KL(q‖p) = ½ ln(2/3) + ½ ln 2 = 0.143841 → ½·sum = 0.137327.
    p_logits = torch.tensor([[LN3, 0.0]])
    q_logits = torch.tensor([[0.0, 0.0]])
    assert losses.symmetric_kl(p_logits, q_logits).item() == pytest.approx(0.137327, abs=1e-5)
    assert losses.symmetric_kl(p_logits, p_logits).item() == pytest.approx(0.0, abs=1e-7)


def test_symmetric_kl_mask():
    p_logits = torch.tensor([[LN3, 0.0], [5.0, 0.0]])
    q_logits = torch.tensor([[0.0, 0.0], [-5.0, 0.0]])
    masked = losses.symmetric_kl(p_logits, q_logits, torch.tensor([True, False]))
    assert masked.item() == pytest.approx(0.137327, abs=1e-5)
    assert losses.symmetric_kl(p_logits, q_logits, torch.tensor([False, False])).item() == 0.0


def test_uncertainty_weighted():
    # s = (0, ln 2): e^0·2 + 0 + e^{−ln 2}·1 + ½ ln 2 = 2 + 0.5 + 0.346574 = 2.846574.
    value = losses.uncertainty_weighted([torch.tensor(2.0), torch.tensor(1.0)], torch.tensor([0.0, math.log(2.0)]))
    assert value.item() == pytest.approx(2.846574, abs=1e-5)


def test_supervised_contrastive_hand_value():
    from multitask.model.losses import supervised_contrastive

    features = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]], requires_grad=True)  # cosines: 1, 0, 0
    labels = torch.tensor([0, 0, -100])  # the third row (Decline) is only a negative
    loss = supervised_contrastive(features, labels, temperature=1.0)
    # each of the two anchors: -log(e^1 / (e^1 + e^0))
    assert loss.item() == pytest.approx(math.log(math.e + 1) - 1, rel=1e-5)
    loss.backward()
    assert features.grad is not None


def test_supervised_contrastive_without_positive_pair_is_graph_zero():
    from multitask.model.losses import supervised_contrastive

    features = torch.randn(3, 4, requires_grad=True)
    loss = supervised_contrastive(features, torch.tensor([0, 1, -100]))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(features.grad, torch.zeros_like(features))


def test_combine_terms_weighted_sum_and_uncertainty():
    terms = {"gate_loss": torch.tensor(2.0), "category_loss": torch.tensor(1.0), "hierarchy_loss": torch.tensor(4.0)}
    weights = {"gate_loss": 0.4, "category_loss": 1.0, "hierarchy_loss": 0.5}
    assert losses.combine_terms(terms, weights).item() == pytest.approx(0.8 + 1.0 + 2.0)
    # log σ² = (0, ln 2): gate 2·1 + 0; category 1·½ + ½·ln 2; hierarchy keeps its λ
    learned = losses.combine_terms(terms, weights, torch.tensor([0.0, math.log(2.0)]))
    assert learned.item() == pytest.approx(2.0 + 0.5 + 0.5 * math.log(2.0) + 2.0)
    assert losses.combine_terms({}, weights) is None


def test_task_terms_names_each_present_term():
    """Terms only for heads and labels that exist; the optional ones only when asked for and computable."""
    from multitask.model.losses import task_terms

    gate = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    category = torch.tensor([[1.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    gate_labels, category_labels = torch.tensor([0, 1]), torch.tensor([-100, 1])
    plain = task_terms(gate, category, gate_labels, category_labels)
    assert set(plain) == {"gate_loss", "category_loss"}
    # gate: both rows right with margin 2 → CE = log(1 + e^-2) each
    assert torch.isclose(plain["gate_loss"], torch.log1p(torch.exp(torch.tensor(-2.0))))
    every = task_terms(gate, category, gate_labels, category_labels, class_weights=(torch.tensor([1.0, 1.0]), None),
                       smoothing=(0.0, 0.1), with_hierarchy=True, with_pick_consistency=True)
    assert set(every) == {"gate_loss", "category_loss", "hierarchy_loss", "pick_consistency_loss"}
    assert set(task_terms(None, category, None, category_labels, with_hierarchy=True)) == {"category_loss"}


def test_confident_pseudo_label_ce_by_hand():
    # Rows: Pick without category (confident), Pick without category (unsure), Pick with category, Decline.
    logits = torch.tensor([[3.0, 0.0], [0.1, 0.0], [5.0, 0.0], [5.0, 0.0]], requires_grad=True)
    gate = torch.tensor([1, 1, 1, 0])
    category = torch.tensor([-100, -100, 1, -100])
    loss = losses.confident_pseudo_label_ce(logits, gate, category, threshold=0.9)
    # Only row 0 passes (softmax 0.9526 >= 0.9); its target is its argmax (0); divided by the 2 unlabelled Pick rows.
    expected = math.log(1 + math.exp(-3.0)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert logits.grad[1:].abs().sum() == 0  # unsure, labelled and Decline rows get no gradient
    assert logits.grad[0, 0] < 0  # pushes the confident guess further up


def test_confident_pseudo_label_ce_without_such_rows_is_a_graph_zero():
    logits = torch.tensor([[1.0, 0.0]], requires_grad=True)
    loss = losses.confident_pseudo_label_ce(logits, torch.tensor([1]), torch.tensor([0]), threshold=0.5)
    assert loss.item() == 0.0 and loss.requires_grad


def test_task_terms_adds_the_pseudo_label_term_only_when_asked():
    gate_logits, category_logits = torch.zeros(2, 2), torch.tensor([[4.0, 0.0], [0.0, 0.0]])
    gate, category = torch.tensor([1, 1]), torch.tensor([-100, 1])
    assert "pseudo_label_loss" not in losses.task_terms(gate_logits, category_logits, gate, category)
    terms = losses.task_terms(gate_logits, category_logits, gate, category, pseudo_label_threshold=0.9)
    assert terms["pseudo_label_loss"].item() == pytest.approx(math.log(1 + math.exp(-4.0)), rel=1e-5)  # float32
