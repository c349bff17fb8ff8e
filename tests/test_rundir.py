"""The run directory and output writing: nothing created before a run starts, all-or-nothing output files."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys

import pytest

from multitask.errors import DataError, OutputError, UsageError
from multitask.io.rundir import (
    RunDirectory,
    check_output_dir,
    check_output_file,
    resolve_resume_checkpoint,
    staged_files,
    write_json,
)


def test_staged_outputs_follow_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        with staged_files() as stage:
            stage.path(tmp_path / "out" / "predictions_x.csv").write_text("a\n")
        with staged_files() as stage:
            stage.path(tmp_path / "out" / "model.parquet").write_bytes(b"x")
    finally:
        os.umask(previous)
    for name in ("predictions_x.csv", "model.parquet"):
        assert stat.S_IMODE((tmp_path / "out" / name).stat().st_mode) == 0o644


def test_partial_files_of_a_killed_run_are_removed_by_the_next(tmp_path, caplog):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(gone.stdout)  # a process that has ended: its partial files are stale
    stale = tmp_path / f".predictions_x.partial-{dead}-abc123.csv"
    live = tmp_path / f".predictions_x.partial-{os.getppid()}-def456.csv"  # a running writer: kept
    other = tmp_path / f".predictions_y.partial-{dead}-abc123.csv"  # another target: not this run's business
    for path in (stale, live, other):
        path.write_text("half")
    with caplog.at_level(logging.WARNING), staged_files() as stage:
        stage.path(tmp_path / "out" / "predictions_x.csv").write_text("whole")
    assert not stale.exists() and live.exists() and other.exists()
    assert "removed 1 partial file(s) a killed run left" in caplog.text and str(stale) in caplog.text
    assert (tmp_path / "out" / "predictions_x.csv").read_text() == "whole"


def test_staged_files_appear_together_or_not_at_all(tmp_path):
    target = tmp_path / "new" / "deeper"
    with staged_files() as stage:
        stage.path(target / "a.csv").write_text("a\n")
        stage.path(target / "b.json").write_text("{}")
        assert not target.exists()  # nothing visible (not even the folder) until the end
    assert sorted(p.name for p in target.iterdir()) == ["a.csv", "b.json"]
    with pytest.raises(RuntimeError), staged_files() as stage:
        stage.path(tmp_path / "failed" / "a.csv").write_text("half")
        raise RuntimeError("crash while writing")
    assert not (tmp_path / "failed").exists()
    assert not [p for p in tmp_path.rglob("*") if ".partial-" in p.name]
    (target / "a.csv").write_text("old\n")
    with staged_files() as stage:
        stage.path(target / "a.csv").write_text("new\n")
    assert (target / "a.csv").read_text() == "new\n"  # replaced in one rename


def test_write_json_leaves_no_temporary_file(tmp_path):
    write_json(tmp_path / "x.json", {"a": 1})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_output_paths_are_checked_without_creating_anything(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        check_output_dir(tmp_path / "file.txt")
    with pytest.raises(OutputError, match="file.txt is a file"):
        check_output_dir(tmp_path / "file.txt" / "run")
    with pytest.raises(OutputError, match="is a directory"):
        check_output_file(tmp_path, "--report_file")
    assert check_output_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_complete_run_is_protected(tmp_path):
    run = RunDirectory(tmp_path / "run").start()
    run.close()
    with pytest.raises(OutputError, match="holds a complete run"):
        RunDirectory(tmp_path / "run").check_target()
    assert json.loads((tmp_path / "run" / "run_status.json").read_text())["status"] == "complete"


def test_an_unfinished_run_is_refused_unless_resumed(tmp_path):
    run = RunDirectory(tmp_path / "run").start()  # killed here: status running
    (tmp_path / "run" / "checkpoint-4").mkdir()
    (tmp_path / "run" / "checkpoint-8").mkdir()
    with pytest.raises(OutputError, match=r"status running, checkpoint-8\); continue it with --resume_from_check"):
        RunDirectory(tmp_path / "run").check_target()
    RunDirectory(tmp_path / "run", resuming=True).check_target()
    run.close(DataError("disk full"))
    (tmp_path / "run" / "checkpoint-4").rmdir()
    (tmp_path / "run" / "checkpoint-8").rmdir()
    with pytest.raises(OutputError, match="status failed.*no checkpoint to resume from"):
        RunDirectory(tmp_path / "run").check_target()
    (tmp_path / "own").mkdir()
    (tmp_path / "own" / "notes.txt").write_text("a folder of the user's own files is fine")
    RunDirectory(tmp_path / "own").check_target()


def test_held_log_lines_reach_train_log_or_are_dropped(tmp_path, caplog):
    logger = logging.getLogger("run_finetune")
    with caplog.at_level(logging.INFO):
        run = RunDirectory(tmp_path / "run")
        run.hold_logs()
        logger.info("data: 12 rows")
        assert not (tmp_path / "run").exists() and "12 rows" not in caplog.text
        run.start()
        logger.info("training")
        run.close()
    log = (tmp_path / "run" / "train.log").read_text(encoding="utf-8")
    assert log.index("data: 12 rows") < log.index("training") < log.index(f"run complete: {tmp_path / 'run'}")
    assert "data: 12 rows" in caplog.text  # replayed to the console too

    caplog.clear()
    with caplog.at_level(logging.INFO):
        refused = RunDirectory(tmp_path / "refused")
        refused.hold_logs()
        logger.info("data: 3 rows")
        refused.discard(DataError("x.csv, row 2: bad"))
    assert "3 rows" not in caplog.text and not (tmp_path / "refused").exists()


def test_discard_removes_only_what_the_run_created(tmp_path):
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    run = RunDirectory(existing)
    (existing / "demo_encoder").mkdir()  # created while the run prepared itself
    run.discard(DataError("bad"))
    assert [p.name for p in existing.iterdir()] == ["notes.txt"]
    fresh = RunDirectory(tmp_path / "fresh")
    (tmp_path / "fresh").mkdir()
    fresh.discard(DataError("bad"))
    assert not (tmp_path / "fresh").exists()
    other_rank = RunDirectory(tmp_path / "shared")
    (tmp_path / "shared").mkdir()  # rank 0 created it
    other_rank.discard(DataError("bad"), remove=False)
    assert (tmp_path / "shared").exists()


def test_failed_run_says_why_in_status_and_log(tmp_path):
    run = RunDirectory(tmp_path / "run").start()
    run.notes["note"] = "said plainly"
    run.close(DataError("x.csv, row 3: bad"))
    status = json.loads((tmp_path / "run" / "run_status.json").read_text())
    assert status["status"] == "failed" and status["error"] == "DataError: x.csv, row 3: bad"
    assert status["note"] == "said plainly"
    assert "run failed: DataError: x.csv, row 3: bad" in (tmp_path / "run" / "train.log").read_text()


def test_resolve_resume_checkpoint_finds_the_newest(tmp_path):
    for step in (3, 12):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert resolve_resume_checkpoint("True", tmp_path) == str(tmp_path / "checkpoint-12")
    assert resolve_resume_checkpoint("some/path", tmp_path) == "some/path"
    assert resolve_resume_checkpoint(None, tmp_path) is None
    with pytest.raises(UsageError, match="no checkpoint-"):
        resolve_resume_checkpoint("last", tmp_path / "missing")


def test_resume_skips_a_checkpoint_cut_off_while_written(tmp_path, caplog):
    """A kill or a full disk while the Trainer wrote checkpoint-20: resume continues from the last whole one."""
    (tmp_path / "checkpoint-10").mkdir()
    (tmp_path / "checkpoint-10" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-20").mkdir()
    (tmp_path / "checkpoint-20" / "model.safetensors").write_bytes(b"half")
    with caplog.at_level(logging.WARNING):
        assert resolve_resume_checkpoint("true", tmp_path) == str(tmp_path / "checkpoint-10")
    assert "checkpoint-20: cut off while being written" in caplog.text
    (tmp_path / "checkpoint-10" / "trainer_state.json").unlink()
    with pytest.raises(UsageError, match="no whole checkpoint to resume from"):
        resolve_resume_checkpoint("true", tmp_path)


def test_an_empty_output_dir_is_refused(tmp_path):
    with pytest.raises(OutputError, match="--output_dir is empty"):
        check_output_dir("")
    with pytest.raises(OutputError, match="--out is empty"):
        check_output_dir("  ", "--out")
