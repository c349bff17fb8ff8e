"""Loss terms: pure functions of logits and labels (tensors in, scalar tensor out).

Conventions: labels use -100 where a row has no label for that task. A term with no row to act on
returns `logits.sum() * 0.0` rather than a constant: an exact zero that is still connected to the graph,
so the head gets a (zero) gradient and DDP does not stall waiting for it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .labels import IGNORE_INDEX


def graph_zero(*tensors: torch.Tensor | None) -> torch.Tensor:
    """An exact 0 connected to the graph of ``tensors`` (None entries skipped): every input gets a zero gradient."""
    total = None
    for tensor in tensors:
        if tensor is not None:
            total = tensor.sum() * 0.0 if total is None else total + tensor.sum() * 0.0
    return total


def masked_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    class_weights: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Cross-entropy over the rows that carry a label (label != -100).

    With class weights this is the weighted mean Σ w_y·ℓ / Σ w_y, as `torch.nn.functional.cross_entropy`
    defines it. A batch with no labelled row gives exactly 0 (never NaN).
    """
    labelled = labels != IGNORE_INDEX
    if not bool(labelled.any()):
        return graph_zero(logits)
    return F.cross_entropy(
        logits[labelled].float(),
        labels[labelled],
        weight=class_weights.float() if class_weights is not None else None,
        label_smoothing=label_smoothing,
    )


def inverse_frequency_weights(
    counts: Sequence[int] | torch.Tensor, min_weight: float = 0.0, max_weight: float = float("inf")
) -> torch.Tensor:
    """Balanced class weights N / (K · n_c), clipped to [min_weight, max_weight].

    Without clipping, a class seen once gets a weight of N/K and dominates the batch it appears in.
    A class never seen in training gets `max_weight` (it can only matter if it appears later).
    """
    counts = torch.as_tensor(counts, dtype=torch.float32)
    total, num_classes = counts.sum(), counts.numel()
    weights = torch.where(counts > 0, total / (num_classes * counts.clamp(min=1.0)), torch.tensor(float("inf")))
    return weights.clamp(min=min_weight, max=max_weight)


def hierarchy_kl_to_uniform(category_logits: torch.Tensor, gate_labels: torch.Tensor) -> torch.Tensor:
    """Mean KL(p_category ‖ uniform) over gold-Decline rows (gate label 0).

    A Declined item has no category, so the category head should not be confident on it. KL to the uniform
    distribution is Σ p·log p + log N: 0 when flat, log N when one-hot.
    """
    declined = gate_labels == 0
    if not bool(declined.any()):
        return graph_zero(category_logits)
    log_probs = F.log_softmax(category_logits[declined].float(), dim=-1)
    num_categories = category_logits.size(-1)
    kl = (log_probs.exp() * log_probs).sum(dim=-1) + torch.log(torch.tensor(float(num_categories)))
    return kl.mean()


def pick_consistency(
    gate_logits: torch.Tensor,
    category_logits: torch.Tensor,
    gate_labels: torch.Tensor,
    category_labels: torch.Tensor,
) -> torch.Tensor:
    """Mean of max(0, log P(true category) − log P(Pick)) over gold-Pick rows that carry a category.

    A child decision should not be more confident than its parent: when the category head is sure of the
    gold category while the gate doubts Pick, the gap is penalised; otherwise the term is 0.
    """
    rows = (category_labels != IGNORE_INDEX) & (gate_labels != 0)
    if not bool(rows.any()):
        return graph_zero(gate_logits, category_logits)
    log_pick = F.log_softmax(gate_logits[rows].float(), dim=-1)[:, 1]
    log_category = F.log_softmax(category_logits[rows].float(), dim=-1)
    log_true_category = log_category.gather(1, category_labels[rows].unsqueeze(1)).squeeze(1)
    return F.relu(log_true_category - log_pick).mean()


def symmetric_kl(logits_a: torch.Tensor, logits_b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """R-Drop consistency: ½·(KL(p_a ‖ p_b) + KL(p_b ‖ p_a)), averaged over the rows in `mask` (all if None)."""
    if mask is not None:
        if not bool(mask.any()):
            return graph_zero(logits_a, logits_b)
        logits_a, logits_b = logits_a[mask], logits_b[mask]
    log_p = F.log_softmax(logits_a.float(), dim=-1)
    log_q = F.log_softmax(logits_b.float(), dim=-1)
    kl_pq = (log_p.exp() * (log_p - log_q)).sum(dim=-1)
    kl_qp = (log_q.exp() * (log_q - log_p)).sum(dim=-1)
    return 0.5 * (kl_pq + kl_qp).mean()


def uncertainty_weighted(task_losses: Sequence[torch.Tensor], log_variances: torch.Tensor) -> torch.Tensor:
    """Kendall et al. (2018) weighting for classification: Σ_i exp(−s_i)·L_i + ½·s_i with s_i = log σ_i².

    The learned σ_i = exp(s_i / 2) scale each task's loss; the ½·s_i term stops σ from growing without bound.
    """
    total = log_variances.new_zeros(())
    for index, task_loss in enumerate(task_losses):
        total = total + torch.exp(-log_variances[index]) * task_loss + 0.5 * log_variances[index]
    return total


def supervised_contrastive(
    features: torch.Tensor, category_labels: torch.Tensor, temperature: float = 0.1
) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al., NeurIPS 2020) on the pooled vectors of one batch.

    Anchors are rows with a category label that share it with at least one other row of the batch; for each,
    minus the mean log-probability of its positives among all other rows (cosine similarity / ``temperature``).
    Every other row sits in the denominator, Decline rows (no category) included: they act as negatives, which
    pushes out-of-scope items away from every category. With many categories and small batches few rows have a
    positive; a batch with none gives an exact, graph-connected 0.
    """
    labelled = category_labels != IGNORE_INDEX
    normalised = F.normalize(features.float(), dim=1)
    similarity = normalised @ normalised.T / temperature
    self_pairs = torch.eye(similarity.shape[0], dtype=torch.bool, device=similarity.device)
    similarity = similarity.masked_fill(self_pairs, float("-inf"))
    log_prob = similarity - torch.logsumexp(similarity, dim=1, keepdim=True)
    positives = (category_labels[:, None] == category_labels[None, :]) & labelled[:, None] & ~self_pairs
    anchors = positives.any(dim=1)
    if not bool(anchors.any()):
        return graph_zero(features)
    positive_log_prob = log_prob.masked_fill(~positives, 0.0).sum(dim=1)
    return -(positive_log_prob[anchors] / positives.sum(dim=1)[anchors]).mean()


def combine_terms(
    terms: dict[str, torch.Tensor], weights: dict[str, float], log_variances: torch.Tensor | None = None
) -> torch.Tensor | None:
    """The training loss from named terms: Σ weights[name] · term, or, with learned ``log_variances`` (gate,
    category), Kendall weighting of the two cross-entropies (`uncertainty_weighted`) plus the weighted rest.

    ``weights`` must name every term. Returns None when there is no term (the caller supplies a graph zero).
    """
    if not terms:
        return None
    if log_variances is None:
        return sum(weights[name] * value for name, value in terms.items())
    tasks = [name for name in ("gate_loss", "category_loss") if name in terms]
    indices = [0 if name == "gate_loss" else 1 for name in tasks]
    loss = uncertainty_weighted([terms[name] for name in tasks], log_variances[indices])
    return loss + sum(weights[name] * value for name, value in terms.items() if name not in tasks)
