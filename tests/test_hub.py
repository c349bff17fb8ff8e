"""multitask.io.hub against the in-process fake Hub: the real huggingface_hub client builds every request."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub import ModelCard, constants
from huggingface_hub.hf_api import RepoFile

from multitask.errors import UsageError
from multitask.io import hub as hub_module
from multitask.io.hub import (
    HubError,
    _same_content,
    download_data_files,
    fetch_data,
    resolve_token,
    take_over_push,
    upload_data,
    upload_files,
)
from tests.hub_server import git_blob_sha, serve_fake_hub

REPO = "tester/support-data"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no stray .env from the developer's checkout
    with serve_fake_hub(monkeypatch, tmp_path / "hf_home") as server:
        yield server


@pytest.fixture
def data_dir(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "train.csv").write_text(
        "pick,title,body\n1,reset my password,\n0,今日の星占い,\n", encoding="utf-8"
    )
    (folder / "test.csv").write_text("pick,title,body\n1,change my password,\n", encoding="utf-8")
    (folder / "notes.txt").write_text("not data", encoding="utf-8")
    return folder


def test_resolve_token_precedence(hub, tmp_path, monkeypatch):
    assert resolve_token() is None
    (tmp_path / ".env").write_text("HF_TOKEN=from_dotenv\nOTHER_SETTING=1\n", encoding="utf-8")
    assert resolve_token() == "from_dotenv"
    assert "HF_TOKEN" not in os.environ and "OTHER_SETTING" not in os.environ  # read, not exported
    monkeypatch.setenv("HF_TOKEN", "from_environment")
    assert resolve_token() == "from_environment"
    assert resolve_token("explicit") == "explicit"


def test_upload_once_then_unchanged_then_one_changed_file(hub, data_dir, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", hub.token)
    result = hub_module.main(["upload-data", "--repo", REPO, str(data_dir)])
    assert len(hub.commits_to(REPO)) == 1
    assert result["added"] == ["test.csv", "train.csv"] and result["commit"] == hub.commits[-1].oid
    assert hub.repo(REPO).private  # created private by default
    files = hub.files(REPO)
    assert files["train.csv"] == (data_dir / "train.csv").read_bytes() and "notes.txt" not in files
    assert "1 commit" in capsys.readouterr().out

    again = hub_module.main(
        ["upload-data", "--repo", REPO, str(data_dir / "train.csv"), str(data_dir / "test.csv")]
    )
    assert len(hub.commits_to(REPO)) == 1  # no empty commit
    assert again["commit"] is None and again["unchanged"] == ["test.csv", "train.csv"]
    assert "unchanged, no commit" in capsys.readouterr().out

    (data_dir / "test.csv").write_text(
        "pick,title,body\n1,change my password,\n0,buy pills,\n", encoding="utf-8"
    )
    changed = upload_data(REPO, [data_dir])
    commits = hub.commits_to(REPO)
    assert len(commits) == 2 and commits[-1].added == ["test.csv"]
    assert changed["modified"] == ["test.csv"] and changed["unchanged"] == ["train.csv"]
    assert hub.files(REPO)["test.csv"] == (data_dir / "test.csv").read_bytes()


def test_upload_into_folder_and_public(hub, data_dir):
    (data_dir / "extra").mkdir()
    (data_dir / "extra" / "more.jsonl").write_text('{"title": "x", "pick": 1}\n', encoding="utf-8")
    result = upload_data(
        "test-org/public-data", [data_dir], token=hub.token, private=False, path_in_repo_prefix="v1"
    )
    assert result["added"] == ["v1/extra/more.jsonl", "v1/test.csv", "v1/train.csv"]
    assert not hub.repo("test-org/public-data").private


def test_fetch_round_trip_is_byte_identical(hub, data_dir, tmp_path, monkeypatch, capsys):
    upload_data(REPO, [data_dir], token=hub.token)
    monkeypatch.setenv("HF_TOKEN", hub.token)
    dest = tmp_path / "fetched"
    fetched = hub_module.main(["fetch-data", "--repo", REPO, "--dest", str(dest)])
    assert [path.name for path in fetched] == ["test.csv", "train.csv"]
    for path in fetched:
        assert path.read_bytes() == (data_dir / path.name).read_bytes()
    assert not (dest / ".gitattributes").exists()  # only data files are fetched
    assert "2 file(s)" in capsys.readouterr().out
    (cached,) = download_data_files(REPO, ["train.csv"])
    assert cached.read_bytes() == (data_dir / "train.csv").read_bytes()


def test_wrong_token_is_a_clear_error(hub, data_dir, tmp_path):
    wrong = "hf_wrong_" + "x" * 20
    with pytest.raises(HubError, match="rejected the token.*401") as upload_error:
        upload_data(REPO, [data_dir], token=wrong)
    assert not hub.repos and wrong not in str(upload_error.value)
    upload_data(REPO, [data_dir], token=hub.token)
    with pytest.raises(HubError, match="401") as fetch_error:
        fetch_data(REPO, tmp_path / "out", token=wrong)
    assert wrong not in str(fetch_error.value)


def test_missing_token_is_a_clear_error(hub, data_dir):
    with pytest.raises(HubError, match="needs a Hugging Face write token.*HF_TOKEN.*.env"):
        upload_data(REPO, [data_dir])
    assert not hub.repos


def test_missing_repo_file_or_access_is_a_clear_error(hub, data_dir, tmp_path):
    with pytest.raises(HubError, match="'tester/absent' .*was not found"):
        fetch_data("tester/absent", tmp_path / "out", token=hub.token)
    upload_data(REPO, [data_dir], token=hub.token)
    with pytest.raises(HubError, match="file 'absent.csv' was not found"):
        download_data_files(REPO, ["absent.csv"], token=hub.token)
    with pytest.raises(HubError, match="was not found, or the token cannot see it"):  # private, anonymous
        fetch_data(REPO, tmp_path / "anonymous")
    with pytest.raises(HubError, match="403"):
        upload_data("someone-else/data", [data_dir], token=hub.token)
    with pytest.raises(FileNotFoundError, match="no such file"):
        upload_data(REPO, [tmp_path / "missing.csv"], token=hub.token)


def test_same_content_uses_lfs_sha256_or_git_blob_id(tmp_path):
    path = tmp_path / "big.csv"
    path.write_bytes(b"a,b\n1,2\n")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    lfs = {"size": 8, "oid": digest, "pointerSize": 134}
    assert _same_content(path, RepoFile(path="big.csv", size=134, oid="pointer-sha1", lfs=lfs))
    assert not _same_content(
        path, RepoFile(path="big.csv", size=134, oid="pointer-sha1", lfs={**lfs, "oid": "0" * 64})
    )
    assert _same_content(path, RepoFile(path="big.csv", size=8, oid=git_blob_sha(path.read_bytes())))
    assert not _same_content(path, RepoFile(path="big.csv", size=9, oid=git_blob_sha(path.read_bytes())))


def test_token_never_appears_in_output_logs_or_files(hub, data_dir, tmp_path, monkeypatch, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("HF_TOKEN", hub.token)
    messages = []
    hub_module.main(["upload-data", "--repo", REPO, str(data_dir)])
    hub_module.main(["upload-data", "--repo", REPO, str(data_dir)])
    (data_dir / "train.csv").write_text("pick,title,body\n1,new row,\n", encoding="utf-8")
    messages.append(str(upload_data(REPO, [data_dir])))
    hub_module.main(["fetch-data", "--repo", REPO, "--dest", str(tmp_path / "fetched")])
    download_data_files(REPO, ["train.csv"])
    for call in (
        lambda: fetch_data("tester/absent", tmp_path / "x"),
        lambda: upload_data("other/x", [data_dir]),
    ):
        with pytest.raises(HubError) as error:
            call()
        messages.append(str(error.value))
    captured = capsys.readouterr()
    assert hub.token not in captured.out + captured.err + caplog.text + "".join(messages)
    written = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert any(path.name == "train.csv" for path in written)  # the scan sees the caches and download metadata
    assert not [path for path in written if hub.token.encode() in path.read_bytes()]


def test_cli_in_a_fresh_process_reads_hf_endpoint_and_dotenv(hub, data_dir, tmp_path):
    """As a user runs it: huggingface_hub reads HF_ENDPOINT at import, the token comes from ./.env."""
    (tmp_path / ".env").write_text(f"HF_TOKEN={hub.token}\n", encoding="utf-8")
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "0"}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parent.parent), env.get("PYTHONPATH", "")]
    )
    command = [sys.executable, "-m", "multitask.hub", "upload-data", "--repo", REPO, str(data_dir)]
    for expected in ("1 commit", "unchanged, no commit"):
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert expected in done.stdout and hub.token not in done.stdout + done.stderr
    assert len(hub.commits_to(REPO)) == 1
    (tmp_path / ".env").write_text("HF_TOKEN=hf_not_valid\n", encoding="utf-8")
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("error: the Hub rejected the token")  # the contract
    assert len(done.stderr.strip().splitlines()) == 1 and "hf_not_valid" not in done.stderr


def test_model_and_card_round_trip(hub, encoder_dir, tmp_path):
    """What a model push needs: model files + a card in one commit, then loading back by repo id."""
    from transformers import AutoModel, AutoTokenizer

    model_dir = Path(shutil.copytree(encoder_dir, tmp_path / "model"))  # the fixture is shared: copy
    ModelCard("---\nlicense: mit\nlibrary_name: transformers\n---\n# Tiny encoder\n").save(
        model_dir / "README.md"
    )
    files = {path.name: path for path in model_dir.iterdir() if path.is_file()}
    result = upload_files("tester/tiny-encoder", files, repo_type="model", token=hub.token)
    assert len(hub.commits_to("tester/tiny-encoder", "model")) == 1 and "README.md" in result["added"]
    again = upload_files("tester/tiny-encoder", files, repo_type="model", token=hub.token)
    assert again["commit"] is None

    loaded = AutoModel.from_pretrained("tester/tiny-encoder", token=hub.token)
    local = AutoModel.from_pretrained(model_dir)
    assert all(torch.equal(a, b) for a, b in zip(local.state_dict().values(), loaded.state_dict().values()))
    assert len(AutoTokenizer.from_pretrained("tester/tiny-encoder", token=hub.token)) > 0
    assert ModelCard.load("tester/tiny-encoder", token=hub.token).data.license == "mit"
    assert constants.ENDPOINT == hub.url


def test_take_over_push_turns_the_trainers_push_off():
    args = SimpleNamespace(push_to_hub=True, hub_model_id="me/model")
    assert take_over_push(args) == "me/model" and args.push_to_hub is False
    assert take_over_push(SimpleNamespace(push_to_hub=False, hub_model_id="me/model")) is None
    with pytest.raises(UsageError, match="--hub_model_id"):
        take_over_push(SimpleNamespace(push_to_hub=True, hub_model_id=None))
