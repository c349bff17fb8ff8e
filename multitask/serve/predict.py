"""Batched, length-sorted inference and the prediction table, shared by run_predict.py and training runs."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from transformers import AutoModel, AutoTokenizer

from multitask.data.text_encoding import EncodingSettings, aggregate_windows, encode_documents
from multitask.io.rundir import saved_model_dir
from multitask.labels import parse_top_k_cell, top_k_cell
from multitask.model.configuration import MultitaskConfig
from multitask.model.modeling import MultitaskModel, MultitaskOutput
from multitask.model.ood import PROBABILITY_SCORES

logger = logging.getLogger(__name__)


def select_device(name: str = "auto") -> torch.device:
    """The device to predict on.

    Args:
        name (`str`, *optional*, defaults to `"auto"`):
            `auto` (CUDA, then Apple MPS, then CPU) or any name `torch.device` accepts.

    Returns:
        `torch.device`: The chosen device.
    """
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def load_model(model: str, device: str = "auto", config: MultitaskConfig | None = None, tokenizer=None,
               **hub_kwargs) -> tuple[MultitaskModel, object]:
    """Model and tokenizer from a run dir, a model dir or a Hub id, in eval mode on the chosen device.

    No file checks here: `multitask.serve.predictor.load_model` checks the directory first and turns loading
    failures into one-line errors.

    Args:
        model (`str`):
            A run directory (its `model/` is loaded), a model directory or a Hub id.
        device (`str`, *optional*, defaults to `"auto"`):
            See `select_device`.
        config (`MultitaskConfig`, *optional*):
            The config, when the caller already loaded it from the same place (not read again).
        tokenizer (`PreTrainedTokenizerBase`, *optional*):
            Likewise for the tokenizer.
        **hub_kwargs:
            Passed to `from_pretrained` (`token`, `revision`, `cache_dir`).

    Returns:
        `tuple[MultitaskModel, PreTrainedTokenizerBase]`: The model in eval mode on the device, and its tokenizer.

    Raises:
        `ValueError`: When the checkpoint is not a multitask model.
    """
    source = saved_model_dir(model)
    extra = {"config": config} if config is not None else {}
    multitask_model = AutoModel.from_pretrained(source, **extra, **hub_kwargs)
    if not isinstance(multitask_model, MultitaskModel):
        raise ValueError(f"{model}: not a multitask model (model_type {multitask_model.config.model_type!r})")
    multitask_model.check_gate_statistics(str(model))
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(source, **hub_kwargs)
    multitask_model.to(select_device(device)).eval()
    return multitask_model, tokenizer


@dataclass
class Scores:
    """Model scores aligned with the input rows. A head the model lacks gives None.

    `pick_prob` is the score the gate thresholds apply to (`config.gate_score`; P(Pick) by default);
    `gate_scores` holds every in-scope score the model can give (`multitask.model.ood.ALL_SCORES`), `pick_prob`
    among them. `features` and `category_logits` are filled only when asked for (fitting gate statistics).
    """

    pick_prob: np.ndarray | None
    category_probs: np.ndarray | None
    gate_scores: dict[str, np.ndarray] = field(default_factory=dict)
    features: np.ndarray | None = None
    category_logits: np.ndarray | None = None
    gate_logits: np.ndarray | None = None

    def rows(self, index: np.ndarray) -> Scores:
        """The scores of the rows at `index` (positions or a boolean mask), every field alike."""

        def take(values: np.ndarray | None) -> np.ndarray | None:
            return None if values is None else values[index]

        return Scores(
            take(self.pick_prob),
            take(self.category_probs),
            {name: values[index] for name, values in self.gate_scores.items()},
            take(self.features),
            take(self.category_logits),
            take(self.gate_logits),
        )


def stored_max_length(config: MultitaskConfig) -> int:
    """The input length the model was trained with; 256 (the old default) for models saved before it was stored."""
    return EncodingSettings.from_config(config).max_seq_length


@dataclass
class WindowOutputs:
    """Raw head outputs (float32 numpy) of every model input, and the document (text index) each belongs to."""

    documents: np.ndarray
    gate_logits: np.ndarray | None
    category_logits: np.ndarray | None
    features: np.ndarray | None

    def per_document(self, aggregation: str = "mean") -> WindowOutputs:
        """One row per document: logits by `aggregation` (mean or max), features averaged. A no-op when every
        document is one input (truncated texts)."""
        if np.array_equal(self.documents, np.arange(len(self.documents))):
            return self

        def combine(values: np.ndarray | None, how: str) -> np.ndarray | None:
            return None if values is None else aggregate_windows(values, self.documents, how)[1]

        ids = np.unique(self.documents)
        return WindowOutputs(ids, combine(self.gate_logits, aggregation), combine(self.category_logits, aggregation),
                             combine(self.features, "mean"))


@torch.inference_mode()
def window_outputs(
    model: MultitaskModel,
    tokenizer,
    texts: list[str],
    batch_size: int = 64,
    max_length: int | None = None,
    progress: bool = False,
    dtype: torch.dtype = torch.float32,
    with_features: bool = False,
) -> WindowOutputs:
    """Run the model on the inputs of `texts` (one per text, or its windows in chunked mode), in batches of
    similar length (less padding); rows come back in input order.

    Args:
        model (`MultitaskModel` or `OnnxMultitaskModel`):
            The model; its config says how texts are cut (truncation or windows).
        tokenizer (`PreTrainedTokenizerBase`):
            Its tokenizer.
        texts (`list[str]`):
            The texts, each already joined from its text columns.
        batch_size (`int`, *optional*, defaults to 64):
            Inputs per forward pass.
        max_length (`int`, *optional*):
            Tokens per input; None: the length stored in the config.
        progress (`bool`, *optional*, defaults to `False`):
            Show a progress bar.
        dtype (`torch.dtype`, *optional*, defaults to `torch.float32`):
            Another dtype runs the forward under autocast (weights stay fp32); outputs are stored as float32.
        with_features (`bool`, *optional*, defaults to `False`):
            Also keep the pooled vectors.

    Returns:
        `WindowOutputs`: One row per model input, with the document (text index) each belongs to.
    """
    device = model.device  # also an ONNX model (multitask.serve.onnx_backend), which has no parameters
    was_training = model.training
    model.eval()  # dropout off, whatever state the caller left the model in
    encoded = encode_documents(tokenizer, texts, EncodingSettings.from_config(model.config, max_length))
    inputs = encoded["input_ids"]
    # Stable: equal lengths keep input order, so the batches (and their rounding) are the same every run.
    order = np.argsort([len(ids) for ids in inputs], kind="stable")
    config = model.config
    gate_logits = np.zeros((len(inputs), 2), np.float32) if config.has_gate else None
    category_logits = np.zeros((len(inputs), config.num_categories), np.float32) if config.has_category else None
    features = np.zeros((len(inputs), config.hidden_size), np.float32) if with_features else None
    starts = range(0, len(inputs), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="Predicting", unit="batch")
    # One autocast region for all batches: its cache then casts each weight to `dtype` once, not once per batch.
    with torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext():
        for start in starts:
            rows = order[start : start + batch_size]
            # pad() builds the attention mask and pads only to this batch's longest input (sorted: little).
            batch = tokenizer.pad({"input_ids": [inputs[i] for i in rows]}, return_tensors="pt").to(device)
            outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            output_features=with_features)
            for stored, value in ((gate_logits, outputs.gate_logits), (category_logits, outputs.category_logits),
                                  (features, outputs.features)):
                if stored is not None:
                    # .float(): under autocast the outputs may be bf16, which numpy cannot hold.
                    stored[rows] = value.float().cpu().numpy()
    model.train(was_training)
    return WindowOutputs(np.asarray(encoded["document"]), gate_logits, category_logits, features)


def scores_from_outputs(model: MultitaskModel, outputs: WindowOutputs, batch_size: int = 64) -> Scores:
    """`Scores` from per-document outputs: calibrated probabilities and every gate score the model can give,
    computed in float32 on the model's device.

    Args:
        model (`MultitaskModel`):
            The model (temperatures, gate statistics and `gate_score` come from its config).
        outputs (`WindowOutputs`):
            One row per document (`WindowOutputs.per_document`).
        batch_size (`int`, *optional*, defaults to 64):
            Rows scored at a time (the kNN score compares each row with the whole bank).

    Returns:
        `Scores`: `pick_prob` is the score the thresholds apply to.

    Raises:
        `ValueError`: When the model's gate score cannot be computed from these outputs.
    """
    config = model.config
    rows = len(outputs.documents)
    gate_scores: dict[str, np.ndarray] = {}

    def tensor(values: np.ndarray | None, part: slice) -> torch.Tensor | None:
        return None if values is None else torch.from_numpy(values[part]).to(model.device)

    with torch.inference_mode():
        for start in range(0, rows, batch_size):
            part = slice(start, start + batch_size)
            batch = MultitaskOutput(gate_logits=tensor(outputs.gate_logits, part),
                                    category_logits=tensor(outputs.category_logits, part),
                                    features=tensor(outputs.features, part) if config.gate_statistics else None)
            for name, value in model.in_scope_scores(batch).items():
                gate_scores.setdefault(name, np.zeros(rows, dtype=np.float32))[part] = value.cpu().numpy()
    category_probs = None
    if outputs.category_logits is not None:
        category_probs = torch.softmax(torch.from_numpy(outputs.category_logits) / config.head_temperature("category"),
                                       dim=-1).numpy()
    pick_prob = None
    if config.has_gate:
        name = config.gate_score
        if name not in gate_scores and rows:
            if config.has_category or name not in PROBABILITY_SCORES:
                # Thresholds were tuned on this score: applying them to another would decide wrongly, silently.
                raise ValueError(f"the model's gate score {name!r} cannot be computed (it gives {sorted(gate_scores)})")
            name = "pick"  # a gate-only model: its only probability score is P(Pick)
        pick_prob = gate_scores.get(name, np.zeros(rows, np.float32))
    return Scores(pick_prob, category_probs, gate_scores, outputs.features, outputs.category_logits,
                  outputs.gate_logits)


def predict_scores(
    model: MultitaskModel,
    tokenizer,
    texts: list[str],
    batch_size: int = 64,
    max_length: int | None = None,
    progress: bool = False,
    dtype: torch.dtype = torch.float32,
    return_features: bool = False,
    aggregation: str | None = None,
) -> Scores:
    """Score texts, one row per text in input order: `window_outputs` → per document → `scores_from_outputs`.

    Texts are encoded as in training, from the model config (`truncation`/`head_tokens`, or `long_text="chunk"`
    windows recombined by `aggregation`).

    Args:
        model (`MultitaskModel` or `OnnxMultitaskModel`):
            The model.
        tokenizer (`PreTrainedTokenizerBase`):
            Its tokenizer.
        texts (`list[str]`):
            The texts, each already joined from its text columns.
        batch_size (`int`, *optional*, defaults to 64):
            Inputs per forward pass.
        max_length (`int`, *optional*):
            Tokens per input; None: the length stored in the config (256 for older models).
        progress (`bool`, *optional*, defaults to `False`):
            Show a progress bar.
        dtype (`torch.dtype`, *optional*, defaults to `torch.float32`):
            Forward-pass precision (autocast).
        return_features (`bool`, *optional*, defaults to `False`):
            Also return the pooled vectors and the raw logits (to fit gate statistics and calibration).
        aggregation (`str`, *optional*):
            `mean` or `max` over a document's windows; None: the config's `chunk_aggregation`.

    Returns:
        `Scores`: One row per text.
    """
    with_features = return_features or bool(model.config.gate_statistics)
    raw = window_outputs(model, tokenizer, texts, batch_size, max_length, progress, dtype, with_features)
    scores = scores_from_outputs(
        model, raw.per_document(aggregation or getattr(model.config, "chunk_aggregation", "mean")), batch_size)
    if not return_features:
        scores.features = scores.category_logits = scores.gate_logits = None
    return scores


# The columns `prediction_table` adds; an input column of one of these names is kept under `<name>_input`.
OUTPUT_COLUMNS = ("pick_prob", "pick_pred", "category_pred", "category_prob", "decision")
_TOP_K_COLUMN = re.compile(r"category_top\d*$")


def keep_colliding_inputs(frame: pd.DataFrame, source: str = "the input") -> pd.DataFrame:
    """`frame` with every column named like a prediction output (`OUTPUT_COLUMNS`, `category_top<k>`) renamed to
    `<name>_input` (`<name>_input2`, … when that is taken too), with a warning: an input column is kept, never
    overwritten by an output. Unchanged (the same object) when nothing collides."""
    colliding = [c for c in frame.columns if c in OUTPUT_COLUMNS or _TOP_K_COLUMN.match(str(c))]
    if not colliding:
        return frame
    taken = set(frame.columns)
    renames = {}
    for column in colliding:
        new, number = f"{column}_input", 1
        while new in taken:
            number += 1
            new = f"{column}_input{number}"
        taken.add(new)
        renames[column] = new
    logger.warning("%s: input column(s) named like prediction outputs are kept renamed: %s", source,
                   ", ".join(f"{old!r} -> {new!r}" for old, new in renames.items()))
    return frame.rename(columns=renames)


def top_categories(category_probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The `k` most probable category ids of every row, most probable first, and their probabilities.

    Args:
        category_probs (`np.ndarray` of shape `(rows, categories)`):
            Category probabilities (`Scores.category_probs`).
        k (`int`):
            How many to keep; more than the number of categories keeps them all.

    Returns:
        `tuple[np.ndarray, np.ndarray]`: Ids and probabilities, each of shape `(rows, min(k, categories))`.
    """
    # Stable sort: tied probabilities rank the lower category id first, as argmax does elsewhere.
    top = np.argsort(-category_probs, axis=1, kind="stable")[:, : min(k, category_probs.shape[1])]
    return top, np.take_along_axis(category_probs, top, axis=1)


def decide(
    scores: Scores,
    config: MultitaskConfig,
    threshold: float = 0.5,
    review_band: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The decision rule of run_predict.py and `multitask.Predictor`: one decision per row, and the review flag.

    A row is Picked when its gate score (`scores.pick_prob`) is >= `threshold`; a Picked row's decision is its
    most probable category, any other row's is ``Decline``. A gate-only model decides ``Pick``/``Decline``, a
    category-only model always the category.

    Args:
        scores (`Scores`):
            The model's scores (`predict_scores`).
        config (`MultitaskConfig`):
            The model's config (category names).
        threshold (`float`, *optional*, defaults to 0.5):
            The gate threshold (`multitask.scoring.thresholds.resolve_threshold`).
        review_band (`tuple[float, float]`, *optional*):
            (low, high): rows whose gate score lies in [low, high) are flagged for review.

    Returns:
        `tuple[np.ndarray, np.ndarray]`: The decisions (strings) and a boolean review flag per row (all False
        without a band or a gate).
    """
    rows = len(scores.pick_prob if scores.pick_prob is not None else scores.category_probs)
    category = None
    if scores.category_probs is not None:
        best = top_categories(scores.category_probs, 1)[0][:, 0]
        category = np.array([config.category_id2label[int(i)] for i in best], dtype=object)
    if scores.pick_prob is not None:
        picked = scores.pick_prob >= threshold
        decisions = np.where(picked, category if category is not None else "Pick", "Decline").astype(object)
    else:
        decisions = category
    review = np.zeros(rows, dtype=bool)
    if review_band is not None and scores.pick_prob is not None:
        low, high = review_band
        review = (scores.pick_prob >= low) & (scores.pick_prob < high)
    return decisions, review


def significant(values: np.ndarray, digits: int = 6) -> np.ndarray:
    """`values` rounded to `digits` significant digits (zeros, infinities and NaN unchanged).

    Args:
        values (`np.ndarray`): Any shape.
        digits (`int`, *optional*, defaults to 6): Significant digits kept.

    Returns:
        `np.ndarray`: float64, same shape.
    """
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values) & (values != 0)
    magnitude = np.floor(np.log10(np.abs(np.where(finite, values, 1.0))))
    scale = 10.0 ** (digits - 1 - magnitude)
    return np.where(finite, np.round(values * scale) / scale, values)


def prediction_table(
    frame: pd.DataFrame,
    scores: Scores,
    config: MultitaskConfig,
    threshold: float = 0.5,
    top_k: int = 3,
    review_band: tuple[float, float] | None = None,
    source: str = "the input",
) -> pd.DataFrame:
    """Input columns kept, plus pick_prob, pick_pred, category_pred, category_prob, category_top{k}, decision.

    The decision is `decide`'s; with ``review_band`` (low, high), rows whose gate score lies in [low, high) get
    the decision ``review``. An input column named like an output is kept as `<name>_input`
    (`keep_colliding_inputs`, which warns, naming `source`). `category_top{k}` holds a JSON list of
    `[label, probability]` pairs (`top_k_cell`).

    Args:
        frame (`pd.DataFrame`):
            The input rows, in the order of `scores`.
        scores (`Scores`):
            The model's scores of those rows.
        config (`MultitaskConfig`):
            The model's config.
        threshold (`float`, *optional*, defaults to 0.5):
            The gate threshold.
        top_k (`int`, *optional*, defaults to 3):
            How many categories the `category_top{k}` column lists.
        review_band (`tuple[float, float]`, *optional*):
            The review band of the threshold, or None for no review decisions.
        source (`str`, *optional*):
            What the warning about renamed input columns names (the input file).

    Returns:
        `pd.DataFrame`: A copy of `frame` with the prediction columns added.
    """
    table = keep_colliding_inputs(frame, source).copy()
    if scores.pick_prob is not None:
        # Significant digits, not decimals: a squashed gate score (maha, knn) can sit near 1e-7, where its
        # threshold is too; six decimals would print every such score as 0.
        table["pick_prob"] = significant(scores.pick_prob)
        table["pick_pred"] = (scores.pick_prob >= threshold).astype(int)
    if scores.category_probs is not None:
        id2label = config.category_id2label
        top, top_probs = top_categories(scores.category_probs, top_k)
        table["category_pred"] = [id2label[int(i)] for i in top[:, 0]]
        table["category_prob"] = np.round(top_probs[:, 0], 6)
        table[f"category_top{top.shape[1]}"] = [
            top_k_cell([id2label[int(i)] for i in ids], probs) for ids, probs in zip(top, top_probs)
        ]
    decisions, review = decide(scores, config, threshold, review_band)
    table["decision"] = np.where(review, "review", decisions)
    return table


def prediction_records(
    table: pd.DataFrame,
    gate_labels: list[int],
    category_labels: list[int],
    config: MultitaskConfig,
    row_numbers: Sequence[int] | None = None,
    row_unit: str = "row",
) -> list[dict]:
    """One JSON-ready record per row: decisions, scores, and correctness flags where a gold label exists.

    Args:
        table (`pd.DataFrame`):
            The prediction table (`prediction_table`).
        gate_labels (`list[int]`):
            Gold gate labels per row (1 Pick, 0 Decline, -100 none).
        category_labels (`list[int]`):
            Gold category ids per row (-100 none).
        config (`MultitaskConfig`):
            The model's config (category names, label-map hash).
        row_numbers (`Sequence[int]`, *optional*):
            Each row's number as the user sees it in its input file (`tables.Table.numbers`); None: spreadsheet
            rows of a CSV (header = 1).
        row_unit (`str`, *optional*, defaults to `"row"`):
            The key the number is written under: "row" for CSV/TSV, "line" for JSON Lines, "record" otherwise.

    Returns:
        `list[dict]`: One record per row of `table`.
    """
    id2label = config.category_id2label
    top_column = next((c for c in table.columns if re.fullmatch(r"category_top\d+", str(c))), None)
    label_maps_hash = config.label_maps_hash()
    records = []
    for position, (gold_pick, gold_category) in enumerate(zip(gate_labels, category_labels)):
        row = table.iloc[position]
        number = int(row_numbers[position]) if row_numbers is not None else position + 2
        record: dict = {row_unit: number, "decision": row["decision"], "label_maps_hash": label_maps_hash}
        if "pick_prob" in table:
            record.update(pick_prob=float(row["pick_prob"]), pick_pred=int(row["pick_pred"]))
        if "category_pred" in table:
            record.update(category_pred=row["category_pred"], category_prob=float(row["category_prob"]))
            record["category_top"] = [{"label": label, "prob": prob} for label, prob in parse_top_k_cell(row[top_column])]
        if gold_pick != -100 and "pick_pred" in table:
            record.update(gold_pick=int(gold_pick), pick_correct=int(row["pick_pred"]) == gold_pick)
        if gold_category != -100 and "category_pred" in table:
            record.update(gold_category=id2label[gold_category],
                          category_correct=row["category_pred"] == id2label[gold_category])
        # The end-to-end decision is right when it is Decline for gold Decline, or the gold category.
        if gold_pick == 0 and config.has_gate:
            record["decision_correct"] = row["decision"] == "Decline"
        elif gold_category != -100 and gold_pick != 0:
            record["decision_correct"] = row["decision"] == id2label[gold_category]
        records.append(record)
    return records


def fit_gate_statistics(
    model: MultitaskModel,
    tokenizer,
    texts: list[str],
    category_labels: list[int] | np.ndarray,
    gate_labels: list[int] | np.ndarray | None = None,
    batch_size: int = 64,
    max_length: int | None = None,
    bank_size: int = 10000,
    knn_k: int = 10,
    seed: int = 0,
) -> dict:
    """Fit the feature gate scores (energy, Mahalanobis, kNN) on training rows and attach them to ``model``.

    Only rows with a category label and not labelled Decline are used (the Pick rows the categories describe;
    a Decline row the data kept with a category is left out); each is scored once with dropout off, as at
    prediction.

    Args:
        model (`MultitaskModel`):
            The trained model; gets the fitted statistics.
        tokenizer (`PreTrainedTokenizerBase`):
            Its tokenizer.
        texts (`list[str]`):
            Training texts.
        category_labels (`list[int]` or `np.ndarray`):
            Their category ids (-100 none).
        gate_labels (`list[int]` or `np.ndarray`, *optional*):
            Their gate labels; rows labelled 0 (Decline) are left out.
        batch_size (`int`, *optional*, defaults to 64):
            Inputs per forward pass.
        max_length (`int`, *optional*):
            Tokens per input; None: the config's.
        bank_size (`int`, *optional*, defaults to 10000):
            At most this many rows (a seeded sample) are kept for the kNN score.
        knn_k (`int`, *optional*, defaults to 10):
            The k of the kNN score.
        seed (`int`, *optional*, defaults to 0):
            Seed of the bank sample.

    Returns:
        `dict`: Rows used, bank size, k and the fitted squash constants, for the run log.
    """
    from multitask.model.ood import fit_gate_statistics as fit

    labels = np.asarray(category_labels)
    declined = np.asarray(gate_labels) == 0 if gate_labels is not None else np.zeros(labels.size, dtype=bool)
    keep = np.flatnonzero((labels != -100) & ~declined)
    scores = predict_scores(model, tokenizer, [texts[i] for i in keep], batch_size, max_length, return_features=True)
    fitted = fit(scores.features, scores.category_logits, labels[keep], model.config.num_categories,
                 bank_size=bank_size, knn_k=knn_k, seed=seed)
    model.attach_gate_statistics(fitted)
    return {"rows": int(keep.size), "bank_size": int(fitted["bank"].shape[0]), "knn_k": knn_k,
            "squash": model.config.gate_statistics["squash"]}
