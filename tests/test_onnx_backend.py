"""multitask.serve.onnx_backend: which backend a --model/--backend/--dtype choice gets, on stand-in directories (a real
export, and scoring with it, are in test_export.py)."""

from __future__ import annotations

import pytest

from multitask.errors import UsageError
from multitask.serve.onnx_backend import find_onnx_export, is_onnx_export, onnx_export_for, onnx_providers


@pytest.fixture
def run_dir(tmp_path):
    """A run directory with a PyTorch model/ and a default ONNX export onnx/ (file contents do not matter here)."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "onnx").mkdir()
    for name in ("model.onnx", "config.json"):
        (tmp_path / "onnx" / name).write_text("{}")
    return tmp_path


def test_an_export_needs_both_graph_and_config(tmp_path, run_dir):
    assert is_onnx_export(run_dir / "onnx") and not is_onnx_export(run_dir / "model")
    (tmp_path / "graph_only").mkdir()
    (tmp_path / "graph_only" / "model.onnx").write_text("")
    assert not is_onnx_export(tmp_path / "graph_only") and not is_onnx_export("user/model")


def test_auto_picks_onnx_only_for_an_export_directory(run_dir):
    assert onnx_export_for(str(run_dir / "onnx")) == run_dir / "onnx"
    assert onnx_export_for(str(run_dir)) is None  # a run directory: PyTorch unless onnx is asked for
    assert onnx_export_for(str(run_dir / "model")) is None
    assert onnx_export_for("user/model") is None
    assert onnx_export_for(str(run_dir), "torch") is None


def test_onnx_backend_finds_a_run_directorys_default_export(run_dir):
    assert onnx_export_for(str(run_dir), "onnx") == run_dir / "onnx"
    assert find_onnx_export(run_dir / "onnx") == run_dir / "onnx"
    with pytest.raises(ValueError, match="python -m multitask.export"):
        onnx_export_for(str(run_dir / "model"), "onnx")


def test_impossible_combinations_are_refused(run_dir):
    exported = str(run_dir / "onnx")
    with pytest.raises(ValueError, match="an ONNX export"):
        onnx_export_for(exported, "torch")
    with pytest.raises(ValueError, match="--dtype bfloat16 with the ONNX backend"):
        onnx_export_for(exported, "onnx", "bfloat16")
    assert onnx_export_for(exported, "onnx", "float32") == run_dir / "onnx"
    with pytest.raises(ValueError, match="--backend 'tensorrt'"):
        onnx_export_for(exported, "tensorrt")


def test_providers_for_a_device():
    pytest.importorskip("onnxruntime")
    assert onnx_providers("auto") == onnx_providers("cpu") == ["CPUExecutionProvider"]
    with pytest.raises(UsageError, match="--device mps with the ONNX backend"):
        onnx_providers("mps")
