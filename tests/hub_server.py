"""A small in-process fake of the Hugging Face Hub, so tests run the real `huggingface_hub` client offline.

It answers exactly what huggingface_hub 2.4 sends for: `whoami` (and its agent-registry lookup),
`create_repo`, `repo_info` (model/dataset, with or without a revision), `list_repo_tree`, `get_paths_info`,
`create_commit` (preupload + NDJSON commit; every file is answered "regular", so contents travel base64 inside
the commit and no LFS/Xet transfer is needed), README metadata validation, and file downloads (`/resolve/`,
GET and HEAD with the `X-Repo-Commit`, `ETag` and `Content-Length` headers that `hf_hub_download` requires).
Model and dataset repos both work, so `push_to_hub`/`upload_folder`, `from_pretrained("user/name")` and
`datasets.load_dataset("user/name")` (Parquet, JSON Lines, CSV repos; revisions by commit id) run against it too. Not implemented: branches/tags/PRs, LFS/Xet uploads, Spaces.

Requests with a wrong bearer token get 401; private repos are invisible (404) without the right token.
Every commit made through the API is recorded in `FakeHub.commits`.

Use the `fake_hub` fixture (import it into a conftest) or `serve_fake_hub`: it starts a server on
127.0.0.1, points `HF_ENDPOINT` and the already-imported `huggingface_hub.constants` at it, turns offline
mode off, and puts `HF_HOME` (cache, token file) in the test's tmp dir.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

GITATTRIBUTES = (
    b"*.bin filter=lfs diff=lfs merge=lfs -text\n*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
)
_PLURAL = {"models": "model", "datasets": "dataset"}
_URL_PREFIX = {"model": "", "dataset": "datasets/"}
_REPO = r"(models|datasets)/([^/]+)/([^/]+)"
_ROUTES = [
    ("GET", re.compile(r"^/api/whoami-v2$"), "whoami"),
    ("GET", re.compile(r"^/api/agent-harnesses$"), "agent_harnesses"),
    ("POST", re.compile(r"^/api/repos/create$"), "create_repo"),
    ("POST", re.compile(r"^/api/validate-yaml$"), "validate_yaml"),
    ("GET", re.compile(rf"^/api/{_REPO}(?:/revision/([^/]+))?$"), "repo_info"),
    ("GET", re.compile(rf"^/api/{_REPO}/tree/([^/]+)(?:/(.+))?$"), "tree"),
    ("POST", re.compile(rf"^/api/{_REPO}/paths-info/([^/]+)$"), "paths_info"),
    ("POST", re.compile(rf"^/api/{_REPO}/preupload/([^/]+)$"), "preupload"),
    ("POST", re.compile(rf"^/api/{_REPO}/commit/([^/]+)$"), "commit"),
    ("GET", re.compile(r"^/(?:(datasets)/)?([^/]+)/([^/]+)/resolve/([^/]+)/(.+)$"), "resolve"),
]


def git_blob_sha(content: bytes) -> str:
    """The git object id of a file, which the Hub reports as `oid`/ETag of regular files."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


@dataclass
class Commit:
    """One commit made through the commit endpoint."""

    repo_type: str
    repo_id: str
    oid: str
    title: str
    added: list[str]
    deleted: list[str]


@dataclass
class FakeRepo:
    repo_type: str
    repo_id: str
    private: bool
    # (commit oid, title, date, files at that commit), oldest first; the last one is the head of "main".
    history: list[tuple[str, str, str, dict[str, bytes]]] = field(default_factory=list)

    @property
    def head(self) -> tuple[str, str, str, dict[str, bytes]]:
        return self.history[-1]

    def at(self, revision: str) -> tuple[str, str, str, dict[str, bytes]] | None:
        if revision == "main":
            return self.head
        return next((entry for entry in self.history if entry[0] == revision), None)


class _HubError(Exception):
    """An HTTP error answer with the Hub's `X-Error-Code` header where the client keys on it."""

    def __init__(
        self, status: int, message: str, code: str | None = None, commit: str | None = None, **body: str
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.commit, self.body = status, message, code, commit, body


class FakeHub:
    """The fake Hub's state and HTTP server. `url`, `token` (the only valid one), `user`, `commits`."""

    def __init__(
        self, user: str = "tester", orgs: tuple[str, ...] = ("test-org",), token: str | None = None
    ) -> None:
        self.user, self.orgs = user, orgs
        self.token = token or "hf_fake_" + secrets.token_hex(16)
        self.repos: dict[tuple[str, str], FakeRepo] = {}
        self.commits: list[Commit] = []
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, for debugging
        self.lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------------- lifecycle
    def start(self) -> FakeHub:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-hub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def patch_environment(self, monkeypatch: pytest.MonkeyPatch, hf_home: Path) -> None:
        """Point huggingface_hub (already imported: it read its env at import) and transformers at this server."""
        from huggingface_hub import constants, hf_api

        hf_home.mkdir(parents=True, exist_ok=True)
        settings = {
            "ENDPOINT": self.url,
            "HUGGINGFACE_CO_URL_TEMPLATE": self.url + "/{repo_id}/resolve/{revision}/{filename}",
            "HF_HUB_OFFLINE": False,
            "HF_HUB_DISABLE_XET": True,  # everything is a regular file here; no Xet storage
            "HF_HOME": str(hf_home),
            "HF_HUB_CACHE": str(hf_home / "hub"),
            "HUGGINGFACE_HUB_CACHE": str(hf_home / "hub"),
            "HF_ASSETS_CACHE": str(hf_home / "assets"),
            "HF_XET_CACHE": str(hf_home / "xet"),
            "HF_TOKEN_PATH": str(hf_home / "token"),  # never read a developer's real login token
            "HF_STORED_TOKENS_PATH": str(hf_home / "stored_tokens"),
        }
        for name, value in settings.items():
            monkeypatch.setattr(constants, name, value)
        for name, value in {
            "HF_ENDPOINT": self.url,
            "HF_HUB_OFFLINE": "0",
            "TRANSFORMERS_OFFLINE": "0",
            "HF_HOME": str(hf_home),
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
        }.items():
            monkeypatch.setenv(name, value)
        for name in (
            "HF_TOKEN",
            "HUGGING_FACE_HUB_TOKEN",
            "HF_HUB_CACHE",
            "HF_TOKEN_PATH",
            "HF_OIDC_RESOURCE",
        ):
            monkeypatch.delenv(name, raising=False)
        # Module-level helpers (`huggingface_hub.create_repo`, …) are bound to an HfApi built at import.
        monkeypatch.setattr(hf_api.api, "endpoint", self.url)
        if "transformers.utils.hub" in sys.modules:  # transformers caches its own HfApi
            monkeypatch.setattr(sys.modules["transformers.utils.hub"], "_hf_api", None)
        try:  # `datasets` reads its endpoint, offline switch and cache folder at import, like huggingface_hub
            from datasets import config as datasets_config
        except ImportError:
            datasets_config = None
        if datasets_config is not None:
            for name, value in {
                "HF_ENDPOINT": self.url,
                "HUB_DATASETS_URL": self.url + "/datasets/{repo_id}/resolve/{revision}/{path}",
                "HF_HUB_OFFLINE": False,
                "HF_DATASETS_OFFLINE": False,
                "HF_DATASETS_CACHE": hf_home / "datasets",
                "HF_MODULES_CACHE": hf_home / "modules",
            }.items():
                if hasattr(datasets_config, name):
                    monkeypatch.setattr(datasets_config, name, value)

    # ---------------------------------------------------------------------------------------- inspection
    def repo(self, repo_id: str, repo_type: str = "dataset") -> FakeRepo:
        return self.repos[(repo_type, repo_id)]

    def files(self, repo_id: str, repo_type: str = "dataset") -> dict[str, bytes]:
        """The files at the head of the repo's main branch."""
        return dict(self.repo(repo_id, repo_type).head[3])

    def commits_to(self, repo_id: str, repo_type: str = "dataset") -> list[Commit]:
        return [c for c in self.commits if c.repo_id == repo_id and c.repo_type == repo_type]

    # ------------------------------------------------------------------------------------------ endpoints
    def _user_of(self, authorization: str | None) -> str | None:
        """None for an anonymous request; raises 401 for a wrong token."""
        if authorization is None:
            return None
        if authorization == f"Bearer {self.token}":
            return self.user
        raise _HubError(401, "Invalid credentials in Authorization header")

    def _visible_repo(self, plural: str | None, namespace: str, name: str, user: str | None) -> FakeRepo:
        repo_type = _PLURAL.get(plural or "models", "model")
        repo = self.repos.get((repo_type, f"{namespace}/{name}"))
        if repo is None or (repo.private and user is None):
            raise _HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def _snapshot(self, repo: FakeRepo, revision: str) -> tuple[str, str, str, dict[str, bytes]]:
        snapshot = repo.at(revision)
        if snapshot is None:
            raise _HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return snapshot

    def whoami(self, user, query, body, groups):
        if user is None:
            raise _HubError(401, "You must be authenticated (no token)")
        return {
            "type": "user",
            "name": user,
            "fullname": user,
            "orgs": [{"name": org} for org in self.orgs],
            "auth": {"type": "access_token", "accessToken": {"displayName": "fake", "role": "write"}},
        }

    def agent_harnesses(self, user, query, body, groups):  # the client's best-effort agent detection
        return {"standardEnvVars": [], "harnesses": {}}

    def create_repo(self, user, query, body, groups):
        if user is None:
            raise _HubError(401, "You must be authenticated to create a repo")
        payload = json.loads(body or b"{}")
        repo_type = payload.get("type") or "model"
        if repo_type not in _URL_PREFIX:
            raise _HubError(400, f"The fake Hub supports model and dataset repos, not {repo_type!r}")
        namespace = payload.get("organization") or user
        if namespace not in (user, *self.orgs):
            raise _HubError(
                403, f"You don't have the rights to create a repo under the namespace {namespace!r}"
            )
        repo_id = f"{namespace}/{payload['name']}"
        url = f"{self.url}/{_URL_PREFIX[repo_type]}{repo_id}"
        if (repo_type, repo_id) in self.repos:
            raise _HubError(
                409, f"You already created this {repo_type} repo", url=url
            )  # create_repo reads url
        private = payload.get("visibility", "private" if payload.get("private") else "public") != "public"
        repo = FakeRepo(repo_type, repo_id, private)
        repo.history.append(
            (secrets.token_hex(20), "initial commit", _now(), {".gitattributes": GITATTRIBUTES})
        )
        self.repos[(repo_type, repo_id)] = repo
        return {"url": url, "name": repo_id, "id": secrets.token_hex(12)}

    def validate_yaml(self, user, query, body, groups):
        return {"errors": [], "warnings": []}

    def repo_info(self, user, query, body, groups):
        plural, namespace, name, revision = groups
        repo = self._visible_repo(plural, namespace, name, user)
        oid, _title, date, files = self._snapshot(repo, unquote(revision or "main"))
        with_blobs = query.get("blobs", ["false"])[0].lower() in ("1", "true")
        siblings = [
            {"rfilename": path, **({"size": len(data), "blobId": git_blob_sha(data)} if with_blobs else {})}
            for path, data in sorted(files.items())
        ]
        return {
            "id": repo.repo_id,
            "author": namespace,
            "sha": oid,
            "private": repo.private,
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "lastModified": date,
            "createdAt": date,
            "siblings": siblings,
        }

    def _entry(self, path: str, files: dict[str, bytes], commit: tuple[str, str, str] | None) -> dict:
        if path in files:
            entry = {"type": "file", "oid": git_blob_sha(files[path]), "size": len(files[path]), "path": path}
        else:
            entry = {"type": "directory", "oid": hashlib.sha1(path.encode()).hexdigest(), "path": path}
        if commit is not None:  # expand=True: the client parses lastCommit when present
            entry["lastCommit"] = {"id": commit[0], "title": commit[1], "date": commit[2]}
        return entry

    def tree(self, user, query, body, groups):
        plural, namespace, name, revision, base = groups
        repo = self._visible_repo(plural, namespace, name, user)
        oid, title, date, files = self._snapshot(repo, unquote(revision))
        base = unquote(base or "").strip("/")
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        expand = query.get("expand", ["false"])[0].lower() in ("1", "true")
        under = [path for path in sorted(files) if not base or path.startswith(base + "/")]
        if base and not under:
            raise _HubError(404, f"{base} does not exist on {revision}", "EntryNotFound", commit=oid)
        listed: dict[str, None] = {}
        for path in under:
            parts = path[len(base) + 1 if base else 0 :].split("/")
            prefix = base + "/" if base else ""
            depth = len(parts) if recursive else 1
            for level in range(1, depth + 1):
                listed[prefix + "/".join(parts[:level])] = None
        commit = (oid, title, date) if expand else None
        return [self._entry(path, files, commit) for path in listed]

    def paths_info(self, user, query, body, groups):
        plural, namespace, name, revision = groups
        repo = self._visible_repo(plural, namespace, name, user)
        oid, title, date, files = self._snapshot(repo, unquote(revision))
        form = parse_qs(body.decode())
        expand = form.get("expand", ["false"])[0].lower() in ("1", "true")
        commit = (oid, title, date) if expand else None
        found = []
        for path in form.get("paths", []):
            path = path.strip("/")
            if path in files or any(other.startswith(path + "/") for other in files):
                found.append(self._entry(path, files, commit))
        return found

    def preupload(self, user, query, body, groups):
        plural, namespace, name, revision = groups
        repo = self._write_access(plural, namespace, name, user)
        oid, _title, _date, files = self._snapshot(repo, unquote(revision))
        answers = []
        for item in json.loads(body)["files"]:
            answer = {"path": item["path"], "uploadMode": "regular", "shouldIgnore": False}
            if item["path"] in files:  # lets create_commit drop files that did not change
                answer["oid"] = git_blob_sha(files[item["path"]])
            answers.append(answer)
        return {"files": answers, "commitOid": oid}

    def _write_access(self, plural, namespace, name, user) -> FakeRepo:
        if user is None:
            raise _HubError(401, "You must be authenticated to write to a repo")
        repo = self._visible_repo(plural, namespace, name, user)
        if namespace not in (user, *self.orgs):
            raise _HubError(403, "You don't have write access to this repo")
        return repo

    def commit(self, user, query, body, groups):
        plural, namespace, name, revision = groups
        repo = self._write_access(plural, namespace, name, user)
        if query.get("create_pr"):
            raise _HubError(400, "The fake Hub does not support pull requests (create_pr)")
        parent_oid, _title, _date, parent_files = self._snapshot(repo, unquote(revision))
        if unquote(revision) != "main":
            raise _HubError(400, "The fake Hub commits to main only")
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header" or not lines[0]["value"].get("summary"):
            raise _HubError(400, "A commit needs a header line with a summary")
        header = lines[0]["value"]
        if header.get("parentCommit") and header["parentCommit"] != parent_oid:
            raise _HubError(412, "A commit has happened since. Please refresh and try again.")
        files, added, deleted = dict(parent_files), [], []
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            if key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
                added.append(value["path"])
            elif key == "deletedFile":
                if value["path"] not in files:
                    raise _HubError(404, "A file with this name doesn't exist", "EntryNotFound")
                del files[value["path"]]
                deleted.append(value["path"])
            elif key == "deletedFolder":
                gone = [path for path in files if path.startswith(value["path"].rstrip("/") + "/")]
                for path in gone:
                    del files[path]
                deleted += gone
            else:  # lfsFile: never asked for, preupload answers "regular"
                raise _HubError(400, f"The fake Hub does not support {key!r} commit lines")
        oid = hashlib.sha1(
            f"{parent_oid}{header['summary']}{sorted(added)}{secrets.token_hex(8)}".encode()
        ).hexdigest()
        repo.history.append((oid, header["summary"], _now(), files))
        self.commits.append(Commit(repo.repo_type, repo.repo_id, oid, header["summary"], added, deleted))
        url = f"{self.url}/{_URL_PREFIX[repo.repo_type]}{repo.repo_id}/commit/{oid}"
        return {"success": True, "commitOid": oid, "commitUrl": url, "hookOutput": "", "pullRequestUrl": None}

    def resolve(self, user, query, body, groups):
        plural, namespace, name, revision, path = groups
        repo = self._visible_repo(plural, namespace, name, user)
        oid, _title, _date, files = self._snapshot(repo, unquote(revision))
        path = unquote(path)
        if path not in files:
            raise _HubError(404, "Entry not found", "EntryNotFound", commit=oid)
        content = files[path]
        headers = {
            "X-Repo-Commit": oid,
            "ETag": f'"{git_blob_sha(content)}"',
            "Content-Type": "application/octet-stream",
        }
        return _Raw(content, headers)


@dataclass
class _Raw:
    content: bytes
    headers: dict[str, str]


def _make_handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects

        def log_message(self, format, *args) -> None:  # quiet: the test output stays readable
            pass

        def do_GET(self) -> None:
            self._handle("GET")

        def do_HEAD(self) -> None:
            self._handle("HEAD")

        def do_POST(self) -> None:
            self._handle("POST")

        def _handle(self, method: str) -> None:
            split = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            hub.requests.append((method, split.path))
            route_method = "GET" if method == "HEAD" else method
            try:
                for allowed, pattern, name in _ROUTES:
                    match = pattern.match(split.path)
                    if match and allowed == route_method:
                        with hub.lock:
                            user = hub._user_of(self.headers.get("Authorization"))
                            result = getattr(hub, name)(user, parse_qs(split.query), body, match.groups())
                        break
                else:
                    raise _HubError(404, f"Fake Hub: no route for {method} {split.path}")
            except _HubError as error:
                headers = {"X-Error-Message": error.message}
                if error.code:
                    headers["X-Error-Code"] = error.code
                if error.commit:
                    headers["X-Repo-Commit"] = error.commit
                self._send(
                    error.status, json.dumps({"error": error.message, **error.body}).encode(), headers, method
                )
                return
            if isinstance(result, _Raw):
                self._send(200, result.content, result.headers, method)
            else:
                self._send(200, json.dumps(result).encode(), {"Content-Type": "application/json"}, method)

        def _send(self, status: int, content: bytes, headers: dict[str, str], method: str) -> None:
            self.send_response(status)
            headers = {"Content-Type": "application/json", **headers}
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            if method != "HEAD":
                self.wfile.write(content)

    return Handler


@contextmanager
def serve_fake_hub(monkeypatch: pytest.MonkeyPatch, hf_home: Path) -> Iterator[FakeHub]:
    """Start a FakeHub, point huggingface_hub at it for the test, stop it afterwards."""
    from huggingface_hub.utils import close_session

    with FakeHub() as hub:
        hub.patch_environment(monkeypatch, hf_home)
        try:
            yield hub
        finally:
            close_session()  # pooled keep-alive connections point at this server's port


@pytest.fixture
def fake_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """A running FakeHub with huggingface_hub pointed at it (see the module docstring)."""
    with serve_fake_hub(monkeypatch, tmp_path / "hf_home") as hub:
        yield hub
