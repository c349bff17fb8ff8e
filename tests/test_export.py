"""ONNX export (fp32 and int8) of tiny DeBERTa-v2 and BERT multitask models, its agreement with PyTorch, and
run_predict.py on the ONNX backend."""

import contextlib
import copy
import io
import json

import numpy as np
import onnxruntime
import pandas as pd
import pytest
import torch
from transformers import BertConfig, BertModel

from multitask.export import onnx_export as export
from multitask.labels import parse_top_k_cell
from multitask.model.modeling import MultitaskModel, build_config
from multitask.serve.onnx_backend import OnnxMultitaskModel, load_predictor, onnx_export_for
from multitask.serve.predict import fit_gate_statistics, predict_scores
from tests.conftest import CATEGORIES, SENTENCES, write_csv

CHECK_TEXTS = [text for texts in SENTENCES.values() for text in texts]


@pytest.fixture(scope="module")
def check_csv(tmp_path_factory):
    rows = [
        (text, "0" if kind == "junk" else "1", "" if kind == "junk" else kind)
        for kind, texts in SENTENCES.items()
        for text in texts
    ]
    return write_csv(
        tmp_path_factory.mktemp("check") / "val.csv",
        {
            "title": [t for t, _, _ in rows],
            "body": ["" for _ in rows],
            "pick": [p for _, p, _ in rows],
            "category": [c for _, _, c in rows],
        },
    )


def _with_gate_statistics(model, tokenizer):
    """Fitted feature gate scores, a combined gate score and stored thresholds, as after a training run."""
    labels = [
        CATEGORIES.index(kind) if kind in CATEGORIES else -100
        for kind, texts in SENTENCES.items()
        for _ in texts
    ]
    fit_gate_statistics(model, tokenizer, CHECK_TEXTS, labels, bank_size=12, knn_k=3)
    model.config.gate_score = "pick_maha"
    model.config.gate_thresholds = {"default": 0.5, "f1": 0.3, "leak": 0.45}
    return model


@pytest.fixture(scope="module")
def deberta_dir(tmp_path_factory, _base_model, tokenizer):
    model = _with_gate_statistics(copy.deepcopy(_base_model).eval(), tokenizer)
    path = tmp_path_factory.mktemp("deberta") / "model"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory, tokenizer):
    torch.manual_seed(0)
    encoder = BertModel(
        BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=128,
        )
    )
    model = MultitaskModel(build_config(encoder.config, CATEGORIES), encoder=encoder).eval()
    model.config.gate_score = "joint"
    model.config.gate_thresholds = {"default": 0.5, "f1": 0.25}
    path = tmp_path_factory.mktemp("bert") / "model"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _export(model_dir, check_csv, *extra):
    target = model_dir.parent / ("onnx_int8" if "int8" in extra else "onnx")
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        result = export.main(
            [
                str(model_dir),
                "--onnx",
                "--output_dir",
                str(target),
                "--check_file",
                str(check_csv),
                "--batch_size",
                "4",
                *extra,
            ]
        )
    assert "top-1 category agreement" in buffer.getvalue()  # printed
    assert json.loads((target / "agreement.json").read_text()) == result["agreement"]  # and recorded
    return target, result["agreement"]


@pytest.fixture(scope="module")
def deberta_exports(deberta_dir, check_csv):
    return {
        "float32": _export(deberta_dir, check_csv),
        "int8": _export(deberta_dir, check_csv, "--quantize", "int8"),
    }


@pytest.fixture(scope="module")
def bert_exports(bert_dir, check_csv):
    return {
        "float32": _export(bert_dir, check_csv),
        "int8": _export(bert_dir, check_csv, "--quantize", "int8"),
    }


def _assert_fp32_agreement(agreement):
    assert agreement["rows"] == len(CHECK_TEXTS) and agreement["precision"] == "float32"
    assert agreement["max_abs_pick_prob_diff"] < 1e-4
    assert max(agreement["max_abs_gate_score_diff"].values()) < 1e-4
    assert agreement["max_abs_category_prob_diff"] < 1e-4
    assert agreement["category_top1_agreement"] == 1.0
    assert set(agreement["gate_decisions_changed"]) == set(agreement["thresholds"])
    assert not any(agreement["gate_decisions_changed"].values()) and not any(
        agreement["decisions_changed"].values()
    )


def _assert_int8_close(agreement):
    # A random tiny model has no margin to speak of; int8 must still be close, and be reported.
    assert agreement["precision"] == "int8"
    assert agreement["max_abs_pick_prob_diff"] < 0.05 and agreement["category_top1_agreement"] >= 0.8


def test_deberta_export_files_outputs_and_agreement(deberta_exports, deberta_dir):
    target, agreement = deberta_exports["float32"]
    for name in (
        "model.onnx",
        "config.json",
        "tokenizer.json",
        "gate_statistics.safetensors",
        "export_info.json",
    ):
        assert (target / name).is_file(), name
    session = onnxruntime.InferenceSession(str(target / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [node.name for node in session.get_inputs()] == ["input_ids", "attention_mask"]
    assert [(node.name, node.shape) for node in session.get_outputs()] == [
        ("gate_logits", ["batch", 2]),
        ("category_logits", ["batch", 3]),
        ("features", ["batch", 32]),
    ]
    assert session.get_inputs()[0].shape == ["batch", "sequence"]
    exported = OnnxMultitaskModel(target)
    assert exported.config.gate_score == "pick_maha" and exported.config.category_id2label == dict(
        enumerate(CATEGORIES)
    )
    assert exported.config.gate_thresholds == {"default": 0.5, "f1": 0.3, "leak": 0.45}
    assert agreement["gate_score"] == "pick_maha" and "maha" in agreement["max_abs_gate_score_diff"]
    _assert_fp32_agreement(agreement)
    _assert_int8_close(deberta_exports["int8"][1])
    assert json.loads((deberta_exports["int8"][0] / "export_info.json").read_text())["precision"] == "int8"


def test_bert_export_agreement(bert_exports):
    _assert_fp32_agreement(bert_exports["float32"][1])
    _assert_int8_close(bert_exports["int8"][1])
    assert not (bert_exports["float32"][0] / "gate_statistics.safetensors").exists()  # none fitted


def test_onnx_scores_equal_torch_scores_on_unseen_lengths(deberta_exports, deberta_dir):
    """Batch sizes and lengths the graph was not traced with; every gate score, same batching as PyTorch."""
    model, tokenizer = load_predictor(str(deberta_dir), "torch", "cpu")
    exported, _ = load_predictor(str(deberta_exports["float32"][0]))
    texts = ["x", " ".join(CHECK_TEXTS)] + CHECK_TEXTS[:5]
    reference = predict_scores(model, tokenizer, texts, batch_size=3, max_length=100)
    scores = predict_scores(exported, tokenizer, texts, batch_size=3, max_length=100)
    assert (
        set(scores.gate_scores) == set(reference.gate_scores) >= {"pick", "joint", "maha", "knn", "pick_maha"}
    )
    for name, value in reference.gate_scores.items():
        np.testing.assert_allclose(scores.gate_scores[name], value, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(scores.pick_prob, reference.gate_scores["pick_maha"], atol=1e-5)
    np.testing.assert_allclose(scores.category_probs, reference.category_probs, atol=1e-5)


def test_run_predict_onnx_backend_writes_the_torch_predictions(
    deberta_exports, deberta_dir, check_csv, tmp_path
):
    import run_predict

    common = ["--input_files", str(check_csv), "--threshold", "f1", "--batch_size", "4"]
    torch_metrics = run_predict.main(
        ["--model", str(deberta_dir), "--output_dir", str(tmp_path / "torch"), *common]
    )
    onnx_metrics = run_predict.main(
        [
            "--model",
            str(deberta_exports["float32"][0]),
            "--backend",
            "onnx",
            "--output_dir",
            str(tmp_path / "onnx"),
            *common,
        ]
    )
    expected = pd.read_csv(tmp_path / "torch" / "predictions_val.csv", dtype=str, keep_default_na=False)
    written = pd.read_csv(tmp_path / "onnx" / "predictions_val.csv", dtype=str, keep_default_na=False)
    assert list(written.columns) == list(expected.columns)
    for column in ("title", "pick", "category", "pick_pred", "category_pred", "decision"):
        assert written[column].tolist() == expected[column].tolist(), column
    for column in (
        "pick_prob",
        "category_prob",
    ):  # rounded to 6 decimals: a 1e-7 difference may show in the last
        np.testing.assert_allclose(written[column].astype(float), expected[column].astype(float), atol=2e-6)
    top = [[label for label, _ in parse_top_k_cell(cell)] for cell in expected["category_top3"]]
    assert [[label for label, _ in parse_top_k_cell(cell)] for cell in written["category_top3"]] == top
    for key in ("gate_accuracy", "category_accuracy", "joint_accuracy"):
        if key in torch_metrics["val"]:
            assert onnx_metrics["val"][key] == torch_metrics["val"][key], key
    assert onnx_metrics["val"]["threshold"] == torch_metrics["val"]["threshold"] == 0.3


def test_load_predictor_runs_a_run_directorys_default_export(deberta_exports, deberta_dir):
    # The choice rules themselves are in test_onnx_backend.py; here the real export behind them loads.
    assert onnx_export_for(str(deberta_dir.parent), "onnx") == deberta_exports["float32"][0]
    model, _ = load_predictor(str(deberta_dir.parent), "onnx")
    assert isinstance(model, OnnxMultitaskModel)


def test_output_names_follow_the_heads(model):
    assert export.output_names(model.config) == ["gate_logits", "category_logits", "features"]
    gate_only = build_config(model.config.encoder_config, None)
    assert export.output_names(gate_only) == ["gate_logits", "features"]


def test_export_help_documents_every_flag():
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), pytest.raises(SystemExit):
        export.main(["--help"])
    assert "--quantize" in buffer.getvalue()
    for field in export.ExportArguments.__dataclass_fields__.values():
        assert field.metadata.get("help"), field.name


def test_calibration_targets_by_hand():
    calibration = export.Int8Calibration(["t"], min_top1_agreement=0.99, max_gate_changed=0.01)
    good = {"rows": 200, "category_top1_agreement": 0.995, "gate_decisions_changed": {"a": 0, "b": 2}}
    assert calibration.passes(good) and calibration.searches
    assert not calibration.passes({**good, "gate_decisions_changed": {"a": 3}})  # 1.5 % at the worst threshold
    assert not calibration.passes({**good, "category_top1_agreement": 0.98})
    assert export.Int8Calibration(["t"]).passes({"rows": 1})  # no targets, no heads: nothing to miss
    assert not export.Int8Calibration(["t"], smooth_alpha=0.85).searches


def test_mixed_precision_export_chooses_on_half_and_reports_the_other(bert_dir, check_csv, tmp_path):
    target = tmp_path / "mixed"
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        result = export.main([str(bert_dir), "--quantize", "int8", "--output_dir", str(target), "--check_file",
                              str(check_csv), "--keep_float", "gate_head", "--min_top1_agreement", "1.0",
                              "--max_gate_changed", "0.0", "--batch_size", "4"])
    info = json.loads((target / "export_info.json").read_text())["quantization"]
    search = info["float_layer_search"]
    layers = {name for name, module in MultitaskModel.from_pretrained(bert_dir).named_modules()
              if isinstance(module, torch.nn.Linear)}
    assert set(search["sensitivity"]) == layers - {"gate_head"}  # every candidate measured, the forced one not
    assert info["kept_float"][0] == "gate_head" and set(info["kept_float"]) <= layers
    agreement = result["agreement"]
    assert info["calibration_rows"] + agreement["held_out"]["rows"] == agreement["rows"] == len(CHECK_TEXTS)
    assert agreement["kept_float"] == info["kept_float"]
    printed = buffer.getvalue()
    assert "held-out rows" in printed and "kept in float32: gate_head" in printed
    # The search's own targets hold on the rows it chose on; the model is the export's and loads as usual.
    assert OnnxMultitaskModel(target).precision == "int8"


def test_smoothed_int8_export_calibrates_on_half_and_keeps_the_torch_model(bert_dir, check_csv, tmp_path):
    target = tmp_path / "smoothed"
    with contextlib.redirect_stdout(io.StringIO()):
        result = export.main([str(bert_dir), "--quantize", "int8", "--per_channel", "--output_dir", str(target),
                              "--check_file", str(check_csv), "--smooth_alpha", "0.85", "--batch_size", "4"])
    info = json.loads((target / "export_info.json").read_text())["quantization"]
    assert info["smoothing"] == {"method": "SmoothQuant", "alpha": 0.85, "layers": 12}
    assert info["calibration_rows"] == len(CHECK_TEXTS) // 2 and info["float_layer_search"] is None
    agreement = result["agreement"]
    assert agreement["held_out"]["rows"] == len(CHECK_TEXTS) - len(CHECK_TEXTS) // 2
    _assert_int8_close(agreement)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--smooth_alpha", "2"], "--smooth_alpha 2.0: a migration strength in [0, 1]"),
        (["--keep_float", "no_such_layer"], "--keep_float 'no_such_layer' matches no linear layer"),
        (["--keep_float", "(bad"], "not a regular expression"),
        (["--min_top1_agreement", "1.5"], "--min_top1_agreement 1.5: a share in (0, 1]"),
    ],
)
def test_bad_int8_options_are_one_error_line_and_write_nothing(bert_dir, check_csv, tmp_path, capsys, extra,
                                                               message):
    from multitask.errors import cli

    target = tmp_path / "never"
    argv = [str(bert_dir), "--quantize", "int8", "--output_dir", str(target), "--check_file", str(check_csv)]
    assert cli(export.main, [*argv, *extra]) == 2
    err = capsys.readouterr().err
    # One error line, the last (model loading may print a progress bar first), no traceback.
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and err.rstrip("\n").splitlines()[-1] == errors[0] and message in errors[0]
    assert "Traceback" not in err and not target.exists()


def test_int8_options_need_int8_and_a_search_needs_rows(bert_dir, tmp_path, capsys):
    from multitask.errors import cli

    target = tmp_path / "never"
    assert cli(export.main, [str(bert_dir), "--output_dir", str(target), "--max_gate_changed", "0.01"]) == 2
    assert "error: --max_gate_changed: applies to --quantize int8 only" in capsys.readouterr().err
    assert cli(export.main, [str(bert_dir), "--quantize", "int8", "--output_dir", str(target),
                             "--min_top1_agreement", "0.99"]) == 2
    assert "needs check rows to calibrate on" in capsys.readouterr().err
    assert not target.exists()


def test_a_failed_search_leaves_no_graph_and_no_old_agreement(bert_dir, check_csv, tmp_path, monkeypatch):
    target = tmp_path / "export"
    argv = [str(bert_dir), "--output_dir", str(target), "--check_file", str(check_csv), "--batch_size", "4"]
    with contextlib.redirect_stdout(io.StringIO()):
        export.main(argv)  # a good fp32 export with its agreement.json
    assert (target / "agreement.json").is_file()
    searched = []

    def broken_choice(layers, sensitivity, passes, kept):
        searched.append(passes([]))  # one candidate graph is scored, then the search fails
        raise RuntimeError("search failed")

    monkeypatch.setattr(export, "choose_float_layers", broken_choice)
    with pytest.raises(RuntimeError, match="search failed"):
        export.main([*argv, "--quantize", "int8", "--min_top1_agreement", "0.99"])
    assert searched and not (target / "model.onnx").exists() and not (target / "agreement.json").exists()
