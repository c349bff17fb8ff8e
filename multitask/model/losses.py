"""Loss terms: pure functions of logits and labels (tensors in, scalar tensor out).

Conventions: labels use -100 where a row has no label for that task. A term with no row to act on
returns `logits.sum() * 0.0` rather than a constant: an exact zero that is still connected to the graph,
so the head gets a (zero) gradient and DDP does not stall waiting for it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from multitask.labels import IGNORE_INDEX


def graph_zero(*tensors: torch.Tensor | None) -> torch.Tensor:
    """An exact 0 connected to the graph of ``tensors`` (None entries skipped): every input gets a zero gradient.

    Args:
        *tensors (`torch.Tensor | None`):
            The outputs that must stay in the graph (typically every head's logits of the batch).

    Returns:
        `torch.Tensor | None`: A 0-dim zero on the inputs' device; None when every entry is None.
    """
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

    Args:
        logits (`torch.Tensor` of shape `(batch, classes)`):
            One head's logits, any float dtype (computed in float32).
        labels (`torch.Tensor` of shape `(batch,)`):
            Class index per row, -100 for a row without a label for this head.
        class_weights (`torch.Tensor` of shape `(classes,)`, *optional*):
            Per-class weights on the logits' device (e.g. `inverse_frequency_weights`); None weights every row
            1.
        label_smoothing (`float`, *optional*, defaults to 0.0):
            Share of the target mass spread uniformly over the classes, in [0, 1).

    Returns:
        `torch.Tensor`: A 0-dim float32 loss in nats, the (weighted) mean over labelled rows.
    """
    labelled = labels != IGNORE_INDEX
    if not bool(labelled.any()):
        return graph_zero(logits)
    return F.cross_entropy(
        logits[labelled].float(),  # fp32: log-softmax of bf16/fp16 logits loses the small probabilities
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

    Args:
        counts (`Sequence[int]` or `torch.Tensor` of shape `(K,)`):
            Training rows per class, in logit order (n_c); N is their sum.
        min_weight (`float`, *optional*, defaults to 0.0):
            Lower clip (`--class_weight_min`, 0.6 in training).
        max_weight (`float`, *optional*, defaults to `inf`):
            Upper clip (`--class_weight_max`, 3.0 in training). Keep it finite when a class may have no
            training row: its weight would otherwise be inf, and a batch that does hold such a row would get a
            NaN loss.

    Returns:
        `torch.Tensor` of shape `(K,)`, float32: a class of exactly average frequency (n_c = N / K) gets 1
        before clipping.
    """
    counts = torch.as_tensor(counts, dtype=torch.float32)
    total, num_classes = counts.sum(), counts.numel()
    # clamp: keeps the unused branch of `where` finite for unseen classes (they take inf, then max_weight).
    weights = torch.where(counts > 0, total / (num_classes * counts.clamp(min=1.0)), torch.tensor(float("inf")))
    return weights.clamp(min=min_weight, max=max_weight)


def hierarchy_kl_to_uniform(category_logits: torch.Tensor, gate_labels: torch.Tensor) -> torch.Tensor:
    """Mean KL(p_category ‖ uniform) over gold-Decline rows (gate label 0).

    A Declined item has no category, so the category head should not be confident on it. KL to the uniform
    distribution is Σ p·log p + log N: 0 when flat, log N when one-hot.

    Args:
        category_logits (`torch.Tensor` of shape `(batch, N)`):
            Category-head logits for every row of the batch.
        gate_labels (`torch.Tensor` of shape `(batch,)`):
            Gate label per row; only rows at 0 count (Pick and -100 rows are ignored).

    Returns:
        `torch.Tensor`: A 0-dim value in [0, log N] nats; a graph-connected 0 when the batch has no Decline
        row.
    """
    declined = gate_labels == 0
    if not bool(declined.any()):
        return graph_zero(category_logits)
    log_probs = F.log_softmax(category_logits[declined].float(), dim=-1)
    num_categories = category_logits.size(-1)
    # log N as a 0-dim CPU tensor is fine next to CUDA logits: PyTorch treats 0-dim tensors like scalars.
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

    Args:
        gate_logits (`torch.Tensor` of shape `(batch, 2)`):
            Gate-head logits, column 1 = Pick.
        category_logits (`torch.Tensor` of shape `(batch, N)`):
            Category-head logits.
        gate_labels (`torch.Tensor` of shape `(batch,)`):
            Gate label per row; rows at 0 (Decline) are excluded, rows at -100 count when they have a
            category.
        category_labels (`torch.Tensor` of shape `(batch,)`):
            Gold category per row, -100 for none.

    Returns:
        `torch.Tensor`: A 0-dim value >= 0 in nats; a graph-connected 0 when no row qualifies.
    """
    # Task2-only rows (gate label -100) count: a row with a category is a Pick.
    rows = (category_labels != IGNORE_INDEX) & (gate_labels != 0)
    if not bool(rows.any()):
        return graph_zero(gate_logits, category_logits)
    log_pick = F.log_softmax(gate_logits[rows].float(), dim=-1)[:, 1]
    log_category = F.log_softmax(category_logits[rows].float(), dim=-1)
    log_true_category = log_category.gather(1, category_labels[rows].unsqueeze(1)).squeeze(1)
    return F.relu(log_true_category - log_pick).mean()


def confident_pseudo_label_ce(
    category_logits: torch.Tensor, gate_labels: torch.Tensor, category_labels: torch.Tensor, threshold: float
) -> torch.Tensor:
    """Self-training on Pick rows without a category: cross-entropy against the model's own argmax category,
    counted only where its probability reaches ``threshold`` (FixMatch's confidence mask, Sohn et al. 2020).

    These rows carry a gate label but no category, so a flat (N+1)-way classifier cannot use them. The target is
    taken from the same forward pass, detached (with dropout on, a noisy student fits its own confident guess;
    the pseudo-labels follow the model, so they are refreshed at every step). As in FixMatch the sum is divided
    by all such rows, not just the confident ones, so the term grows as the model becomes sure of more of them.

    Args:
        category_logits (`torch.Tensor` of shape `(batch, N)`): The category head's logits.
        gate_labels (`torch.Tensor` of shape `(batch,)`): 1 Pick, 0 Decline, -100 unknown.
        category_labels (`torch.Tensor` of shape `(batch,)`): Category ids, -100 where a row has none.
        threshold (`float`): The least top-1 probability that makes a pseudo-label.

    Returns:
        `torch.Tensor`: A 0-dim loss; a graph zero when the batch has no Pick row without a category.
    """
    unlabelled = (gate_labels == 1) & (category_labels == IGNORE_INDEX)
    if not bool(unlabelled.any()):
        return category_logits.sum() * 0.0
    logits = category_logits[unlabelled].float()
    confidence, target = logits.detach().softmax(dim=-1).max(dim=-1)
    per_row = F.cross_entropy(logits, target, reduction="none")
    return (per_row * (confidence >= threshold)).sum() / unlabelled.sum()


def symmetric_kl(logits_a: torch.Tensor, logits_b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """R-Drop consistency: ½·(KL(p_a ‖ p_b) + KL(p_b ‖ p_a)), averaged over the rows in `mask` (all if None).

    Args:
        logits_a (`torch.Tensor` of shape `(batch, classes)`):
            One head's logits from the first dropout pass.
        logits_b (`torch.Tensor` of shape `(batch, classes)`):
            The same head's logits from the second pass over the same inputs.
        mask (`torch.Tensor` of shape `(batch,)`, *optional*):
            Boolean rows to average over (e.g. rows with a category label); None uses every row.

    Returns:
        `torch.Tensor`: A 0-dim value >= 0 in nats (0 when the passes agree); a graph-connected 0 when `mask`
        selects no row.
    """
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

    Args:
        task_losses (`Sequence[torch.Tensor]`):
            0-dim losses L_i, in the order of `log_variances`.
        log_variances (`torch.Tensor` of shape `(len(task_losses),)`):
            The learned s_i (the model's `task_log_variances`, or the entries of it that belong to
            `task_losses`).

    Returns:
        `torch.Tensor`: A 0-dim total. It can be negative (s_i < 0 once a task's loss is small), so it is not
        comparable with an unweighted loss; 0 for an empty `task_losses`.
    """
    # new_zeros: the sum starts on the log-variances' device and dtype.
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

    Args:
        features (`torch.Tensor` of shape `(batch, hidden)`):
            Pooled encoder vectors (`MultitaskOutput.features`); L2-normalised here, in float32.
        category_labels (`torch.Tensor` of shape `(batch,)`):
            Category per row, -100 for none.
        temperature (`float`, *optional*, defaults to 0.1):
            Divides the cosine similarities (`--contrastive_temperature`); lower sharpens the contrast.

    Returns:
        `torch.Tensor`: A 0-dim loss >= 0, averaged over anchors. Under DDP each process only contrasts the
        rows of its own batch.
    """
    labelled = category_labels != IGNORE_INDEX
    # Unit vectors, so the dot products are cosines and the temperature alone sets the scale.
    normalised = F.normalize(features.float(), dim=1)
    similarity = normalised @ normalised.T / temperature
    self_pairs = torch.eye(similarity.shape[0], dtype=torch.bool, device=similarity.device)
    similarity = similarity.masked_fill(self_pairs, float("-inf"))  # a row is neither its own positive nor negative
    log_prob = similarity - torch.logsumexp(similarity, dim=1, keepdim=True)
    positives = (category_labels[:, None] == category_labels[None, :]) & labelled[:, None] & ~self_pairs
    anchors = positives.any(dim=1)
    if not bool(anchors.any()):
        return graph_zero(features)
    # masked_fill, not a product with the mask: the diagonal is -inf and 0·(-inf) would be NaN.
    positive_log_prob = log_prob.masked_fill(~positives, 0.0).sum(dim=1)
    return -(positive_log_prob[anchors] / positives.sum(dim=1)[anchors]).mean()


def combine_terms(
    terms: dict[str, torch.Tensor], weights: dict[str, float], log_variances: torch.Tensor | None = None
) -> torch.Tensor | None:
    """The training loss from named terms.

    Σ weights[name] · term, or, with learned ``log_variances`` (gate, category), Kendall weighting of the two
    cross-entropies (`uncertainty_weighted`) plus the weighted rest.

    Args:
        terms (`dict[str, torch.Tensor]`):
            0-dim loss terms by name, e.g. `gate_loss`, `category_loss`, `hierarchy_loss`,
            `rdrop_category_kl`.
        weights (`dict[str, float]`):
            A weight per term name (`MultitaskTrainingArguments.loss_term_weights()`); under Kendall weighting
            those of `gate_loss` and `category_loss` are not used.
        log_variances (`torch.Tensor` of shape `(2,)`, *optional*):
            Learned s = log σ² of (gate, category); None for fixed weights.

    Returns:
        `torch.Tensor | None`: The 0-dim loss, or None when there is no term (the caller supplies a graph
        zero).

    Raises:
        `KeyError`: A term whose name `weights` lacks.
    """
    if not terms:
        return None
    if log_variances is None:
        return sum(weights[name] * value for name, value in terms.items())
    tasks = [name for name in ("gate_loss", "category_loss") if name in terms]
    # s_0 belongs to the gate and s_1 to the category head even when a model has only one of them.
    indices = [0 if name == "gate_loss" else 1 for name in tasks]
    loss = uncertainty_weighted([terms[name] for name in tasks], log_variances[indices])
    return loss + sum(weights[name] * value for name, value in terms.items() if name not in tasks)


def task_terms(
    gate_logits: torch.Tensor | None,
    category_logits: torch.Tensor | None,
    gate_labels: torch.Tensor | None,
    category_labels: torch.Tensor | None,
    class_weights: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None),
    smoothing: tuple[float, float] = (0.0, 0.0),
    with_hierarchy: bool = False,
    with_pick_consistency: bool = False,
    pseudo_label_threshold: float | None = None,
) -> dict[str, torch.Tensor]:
    """The unweighted terms of one forward pass, by the name their weight and log line use.

    Args:
        gate_logits, category_logits (`torch.Tensor` of shape `(batch, 2)` / `(batch, N)`, or None):
            The heads' logits; a missing head contributes no term.
        gate_labels, category_labels (`torch.Tensor` of shape `(batch,)`, or None):
            Labels, -100 where a row has none.
        class_weights (`tuple`): per-class weights of the gate and the category cross-entropy (None: unweighted);
            moved to the logits' device here (they are built on the CPU with the data).
        smoothing (`tuple[float, float]`): label smoothing of the gate and the category cross-entropy.
        with_hierarchy (`bool`): add `hierarchy_loss` (`hierarchy_kl_to_uniform`) when both heads and gate labels exist.
        with_pick_consistency (`bool`): add `pick_consistency_loss` when both heads and both labels exist.
        pseudo_label_threshold (`float`, *optional*): add `pseudo_label_loss` (`confident_pseudo_label_ce`) at
            this confidence when both heads and both labels exist; None: off.

    Returns:
        `dict[str, torch.Tensor]`: `gate_loss`, `category_loss` (`masked_cross_entropy`, each a mean over its
        labelled rows) and the optional terms, scalars on the logits' device.
    """
    terms = {}
    for task, logits, labels, weights, smooth in (("gate", gate_logits, gate_labels, class_weights[0], smoothing[0]),
                                                  ("category", category_logits, category_labels, class_weights[1],
                                                   smoothing[1])):
        if logits is not None and labels is not None:
            weights = weights.to(logits.device) if weights is not None else None
            terms[f"{task}_loss"] = masked_cross_entropy(logits, labels, weights, smooth)
    both_heads = gate_logits is not None and category_logits is not None
    if both_heads and gate_labels is not None and with_hierarchy:
        terms["hierarchy_loss"] = hierarchy_kl_to_uniform(category_logits, gate_labels)
    if both_heads and category_labels is not None and gate_labels is not None and with_pick_consistency:
        terms["pick_consistency_loss"] = pick_consistency(gate_logits, category_logits, gate_labels, category_labels)
    if category_logits is not None and category_labels is not None and gate_labels is not None \
            and pseudo_label_threshold is not None:
        terms["pseudo_label_loss"] = confident_pseudo_label_ce(category_logits, gate_labels, category_labels,
                                                               pseudo_label_threshold)
    return terms
