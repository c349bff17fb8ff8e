"""Hugging Face Hub I/O: data files up to a dataset repo (no empty commits) and back, with clear errors.

    python -m multitask.hub upload-data --repo user/name data/train data/test     # keeps train/…, test/…
    python -m multitask.hub fetch-data --repo user/name --dest data/

All traffic goes through `huggingface_hub` (its `HfApi`, `hf_hub_download`, `snapshot_download`), so
`HF_ENDPOINT`, proxies and caching behave as everywhere else; Hub datasets are loaded with
`datasets.load_dataset` (`load_dataset_splits`). The token comes from the argument, else `HF_TOKEN` (or the
seed pipeline's `HF_AUTH_TOKEN`), else the same names in a `.env` file in the working directory, else
`hf auth login`'s store (`resolve_token`); `--repo` may be left to `HF_DATASET_REPO` the same way.
Hub failures become a `HubError` that says what to fix and never contains the token.

`upload_files` is generic (any repo type, any files): pushing a model folder can reuse it, and `hub_errors`
gives any other Hub call (e.g. `Trainer.push_to_hub`) the same error messages.
"""

from __future__ import annotations

import argparse
import fnmatch
import logging
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2
from dotenv import dotenv_values
from huggingface_hub import CommitOperationAdd, HfApi, get_token, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    LocalTokenNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils.sha import git_hash, sha_fileobj

from multitask.errors import (
    DataError,
    MissingInputError,
    UsageError,
    UserError,
    cli,
    one_line,
    raise_usage_errors,
)

logger = logging.getLogger(__name__)

DATA_PATTERNS = ("*.csv", "*.tsv", "*.jsonl", "*.ndjson", "*.json", "*.parquet", "*.csv.gz", "*.jsonl.gz")
TOKEN_HELP = (
    "set HF_TOKEN (or HF_AUTH_TOKEN) in the environment or in a .env file in the working directory (see "
    ".env.example), or run `hf auth login`"
)
TOKEN_NAMES = ("HF_TOKEN", "HF_AUTH_TOKEN")  # HF_AUTH_TOKEN: the seed pipeline's .env name
REPO_NAME = "HF_DATASET_REPO"  # the seed pipeline's .env name of the dataset repo
_PATHS_INFO_BATCH = 500  # the Hub answers at most 1,000 paths per paths-info request


class HubError(UserError, RuntimeError):
    """A Hub operation failed; the message says what to check and never contains the token."""


def _setting(names: Sequence[str], env_file: str | Path = ".env") -> str | None:
    """The first of `names` set in the environment, else in `env_file` (read without exporting anything)."""
    for name in names:
        # A blank variable counts as unset, so the .env file can still supply the value.
        if os.environ.get(name, "").strip():
            return os.environ[name].strip()
    env_path = Path(env_file)
    if env_path.is_file():
        values = dotenv_values(env_path)
        for name in names:
            value = values.get(name)
            if value and value.strip():
                return value.strip()
    return None


def resolve_token(token: str | None = None, env_file: str | Path = ".env") -> str | None:
    """The token to use: `token`, else `HF_TOKEN` or `HF_AUTH_TOKEN`, else the login store.

    The environment is read first, then `env_file`; the `.env` file is read without exporting anything into
    `os.environ`.

    Args:
        token (`str`, *optional*):
            An explicit token; wins when non-empty (surrounding whitespace stripped).
        env_file (`str` or `Path`, *optional*, defaults to `".env"`):
            Dotenv file consulted after the environment, relative to the working directory; a missing file is
            skipped.

    Returns:
        `str | None`: The token, or None when none is configured anywhere (public repos still work).
    """
    if token:
        return token.strip()
    return _setting(TOKEN_NAMES, env_file) or get_token()  # `hf auth login`'s stored token, if any


def resolve_dataset_repo(repo_id: str | None, flag: str = "--repo", env_file: str | Path = ".env") -> str:
    """`repo_id`, or the id in `HF_DATASET_REPO` when it is empty or literally "HF_DATASET_REPO".

    Args:
        repo_id (`str`, *optional*):
            `user/name` as given on the command line; not validated here.
        flag (`str`, *optional*, defaults to `"--repo"`):
            The flag named in the error message.
        env_file (`str` or `Path`, *optional*, defaults to `".env"`):
            Dotenv file consulted after the environment.

    Returns:
        `str`: The repo id.

    Raises:
        `UsageError`: When neither `repo_id` nor `HF_DATASET_REPO` names one.
    """
    if repo_id and repo_id != REPO_NAME:
        return repo_id
    value = _setting([REPO_NAME], env_file)
    if not value:
        raise UsageError(f"{flag}: give a dataset repo id (user/name), or set {REPO_NAME} in the environment or .env")
    return value


def check_push_target(repo_id: str | None, flag: str) -> str:
    """Before anything is written: the repo id to upload to (resolved, well-formed) and a token to do it with.

    Nothing is sent to the Hub: whether the token may write to the repo is only known at upload time.

    Args:
        repo_id (`str`, *optional*):
            The target as given (may be empty or "HF_DATASET_REPO", see `resolve_dataset_repo`).
        flag (`str`):
            The flag named in the messages, e.g. `"--push_to_hub"`.

    Returns:
        `str`: The resolved, well-formed repo id.

    Raises:
        `UsageError`: No repo id, a malformed one, or no token configured.
    """
    from huggingface_hub.utils import validate_repo_id

    repo_id = resolve_dataset_repo(repo_id, flag)
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise UsageError(f"{flag} {repo_id}: not a valid repo id, expected user/name ({one_line(str(error))})") from None
    # A stored `hf auth login` token counts too; whether it may write is only learnt at upload (`whoami`).
    if resolve_token() is None:
        raise UsageError(f"{flag} {repo_id}: uploading needs a Hugging Face write token: {TOKEN_HELP}")
    return repo_id


def _scrub(message: str, token: str | None) -> str:
    """`message` with every copy of `token` replaced by *** (library messages can echo request headers/URLs)."""
    return message.replace(token, "***") if token else message


@contextmanager
def hub_errors(
    repo_id: str,
    repo_type: str = "dataset",
    token: str | None = None,
    endpoint: str | None = None,
    filename: str | None = None,
) -> Iterator[None]:
    """Turn huggingface_hub/network exceptions raised inside into a `HubError` with an actionable message.

    A `HubError` raised inside passes unchanged; exceptions it does not recognise propagate as they are. The
    original exception is chained (`from`), and `token` is scrubbed from messages that could echo it.

    Args:
        repo_id (`str`):
            The repo the calls inside touch, for the message.
        repo_type (`str`, *optional*, defaults to `"dataset"`):
            `"dataset"` or `"model"`, for the message.
        token (`str`, *optional*):
            The token in use; replaced by *** wherever a message would contain it.
        endpoint (`str`, *optional*):
            The Hub URL, for the message; None names `huggingface_hub.constants.ENDPOINT`.
        filename (`str`, *optional*):
            The file being fetched, named when the Hub says a file is missing.

    Raises:
        `HubError`: For a missing token, an unknown or invisible repo, a missing revision or file, a rejected
        token (401/403), any other HTTP failure, a malformed repo id, or no connection.
    """
    from huggingface_hub import constants

    where = f"{repo_type} repo '{repo_id}' on {endpoint or constants.ENDPOINT}"
    try:
        yield
    except HubError:  # already translated by a nested hub_errors: keep it
        raise
    except LocalTokenNotFoundError as error:
        raise HubError(f"no Hugging Face token for {where}: {TOKEN_HELP}") from error
    # The next three subclass HfHubHTTPError: caught after it, they would read as a bare HTTP failure.
    except RepositoryNotFoundError as error:
        raise HubError(
            f"{where} was not found, or the token cannot see it (a private repo needs its owner's token). "
            "Check --repo (user/name) and the token."
        ) from error
    except RevisionNotFoundError as error:
        raise HubError(f"revision not found in {where}: check --revision") from error
    except RemoteEntryNotFoundError as error:
        missing = f"file '{filename}'" if filename else "a requested file"
        raise HubError(f"{missing} was not found in {where}") from error
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        if status == 401:
            raise HubError(
                f"the Hub rejected the token for {where} (401 Unauthorized): it is missing, invalid or expired; "
                f"{TOKEN_HELP}"
            ) from error
        if status == 403:
            raise HubError(
                f"the token may not do this on {where} (403 Forbidden): a write token of the repo's owner "
                "(or of a member of its organization) is needed"
            ) from error
        raise HubError(_scrub(f"the Hub failed for {where}: {_first_line(error)}", token)) from error
    except HFValidationError as error:
        raise HubError(f"'{repo_id}' is not a valid repo id: expected user/name ({error})") from error
    # hf_hub_download raises LocalEntryNotFoundError when the Hub is unreachable and the file is not cached: a
    # connection problem, not a missing file (that is RemoteEntryNotFoundError above).
    except (OfflineModeIsEnabled, LocalEntryNotFoundError, httpx2.TransportError) as error:
        raise HubError(
            _scrub(
                f"cannot reach the Hub for {where} ({type(error).__name__}: {_first_line(error)}); "
                "check the network, HF_ENDPOINT and that HF_HUB_OFFLINE is not set",
                token,
            )
        ) from error


def _first_line(error: BaseException) -> str:
    """The first line of an exception's message (huggingface_hub appends request ids and server bodies), or its
    class name when the message is empty."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def collect_files(
    paths: Sequence[str | Path], prefix: str = "", patterns: Sequence[str] = DATA_PATTERNS
) -> dict[str, Path]:
    """`{path in repo: local file}`, keeping the folder layout.

    Every path is placed relative to the deepest folder holding all of them (`data/train data/test` →
    `train/…`, `test/…`; one folder → its contents at the root, as `hf upload` does); a folder contributes its
    files matching `patterns`, searched recursively, skipping huggingface_hub's `.cache` metadata.

    Args:
        paths (`Sequence[str | Path]`):
            Files and folders to upload.
        prefix (`str`, *optional*, defaults to `""`):
            Folder in the repo to put everything under (slashes at either end ignored).
        patterns (`Sequence[str]`, *optional*, defaults to `DATA_PATTERNS`):
            File-name globs a folder's files must match; a file given by name is taken whatever its name.

    Returns:
        `dict[str, Path]`: POSIX paths in the repo -> local files.

    Raises:
        `MissingInputError`: A path that does not exist, or a folder without a matching file.
        `UsageError`: Two different files that would land on the same repo path.
    """
    resolved = [Path(path) for path in paths]
    for path in resolved:
        if not path.exists():
            raise MissingInputError(f"{path}: no such file or directory")
    # A file counts by its folder, so a single file lands at the repo root (under `prefix`).
    anchors = [str(path.absolute() if path.is_dir() else path.absolute().parent) for path in resolved]
    try:
        base = Path(os.path.commonpath(anchors)) if anchors else Path(".")
    except ValueError:  # different drives: no common folder, every file by its name
        base = None
    files: dict[str, Path] = {}
    for path in resolved:
        if path.is_file():
            found = [path]
        else:
            found = [
                file
                for file in sorted(path.rglob("*"))
                if file.is_file()
                and any(fnmatch.fnmatch(file.name, pattern) for pattern in patterns)
                and ".cache" not in file.relative_to(path).parts  # huggingface_hub's download metadata
            ]
            if not found:
                raise MissingInputError(f"{path}: no {'/'.join(patterns)} files in this directory")
        for file in found:
            name = file.absolute().relative_to(base).as_posix() if base is not None else file.name
            in_repo = f"{prefix.strip('/')}/{name}" if prefix.strip("/") else name
            # One file reached twice (a folder and a file inside it) is fine; two files on one repo path are not.
            if in_repo in files and files[in_repo].resolve() != file.resolve():
                raise UsageError(f"{files[in_repo]} and {file} would both be uploaded as '{in_repo}'")
            files[in_repo] = file
    return files


def _same_content(local: Path, remote: RepoFile) -> bool:
    """Whether a local file equals a Hub file: sha256 for LFS files, git blob sha1 for regular ones."""
    remote_size = remote.lfs.size if remote.lfs is not None else remote.size
    if local.stat().st_size != remote_size:  # most changed files differ in size: no hashing needed
        return False
    if remote.lfs is not None:
        with local.open("rb") as file:
            return sha_fileobj(file).hex() == remote.lfs.sha256
    return git_hash(local.read_bytes()) == remote.blob_id  # regular Hub files are small (< 10 MB)


def upload_files(
    repo_id: str,
    files: Mapping[str, str | Path],
    *,
    repo_type: str = "dataset",
    token: str | None = None,
    private: bool = True,
    commit_message: str | None = None,
    revision: str | None = None,
) -> dict[str, Any]:
    """Upload `{path in repo: local file}` in one commit, creating the repo (private) if absent.

    Files whose content equals the Hub's are skipped; when nothing changed no commit is made. Files already in
    the repo but not in `files` are left there (nothing is deleted).

    Args:
        repo_id (`str`):
            `user/name` of the target repo.
        files (`Mapping[str, str | Path]`):
            POSIX path in the repo -> local file (e.g. `collect_files`).
        repo_type (`str`, *optional*, defaults to `"dataset"`):
            `"dataset"` or `"model"`.
        token (`str`, *optional*):
            A write token; None resolves one (`resolve_token`).
        private (`bool`, *optional*, defaults to `True`):
            Visibility of a repo this call creates; an existing repo keeps its own.
        commit_message (`str`, *optional*):
            None: "Upload a, b" for up to five changed files, else "Upload N files".
        revision (`str`, *optional*):
            Branch to compare against and commit to; None is the default branch.

    Returns:
        `dict[str, Any]`: `repo_id`, `repo_type`, `url`, `commit` (oid or None), `commit_url`, `added`,
        `modified`, `unchanged` (paths in repo) and a one-line `message`.

    Raises:
        `HubError`: No token, a token the Hub rejects (checked first, before the repo is created), or any Hub
        failure (`hub_errors`).
    """
    token = resolve_token(token)
    if token is None:
        raise HubError(
            f"uploading to {repo_type} repo '{repo_id}' needs a Hugging Face write token: {TOKEN_HELP}"
        )
    local = {path: Path(file) for path, file in files.items()}
    api = HfApi(token=token)
    with hub_errors(repo_id, repo_type, token, api.endpoint):
        api.whoami()  # a bad token fails here, clearly, before anything is created
        repo_url = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        # Sorted: the commit message and the added/modified lists do not depend on the caller's dict order.
        paths = sorted(local)
        remote: dict[str, RepoFile] = {}
        for start in range(0, len(paths), _PATHS_INFO_BATCH):
            for entry in api.get_paths_info(
                repo_id, paths[start : start + _PATHS_INFO_BATCH], repo_type=repo_type, revision=revision
            ):
                # get_paths_info lists folders too; only files can be compared.
                if isinstance(entry, RepoFile):
                    remote[entry.path] = entry
        added = [path for path in paths if path not in remote]
        modified = [path for path in paths if path in remote and not _same_content(local[path], remote[path])]
        unchanged = [path for path in paths if path in remote and path not in modified]
        result: dict[str, Any] = {
            "repo_id": repo_url.repo_id or repo_id,
            "repo_type": repo_type,
            "url": str(repo_url),
            "commit": None,
            "commit_url": None,
            "added": added,
            "modified": modified,
            "unchanged": unchanged,
        }
        # create_commit skips empty commits too, but returns the previous commit's oid as if it were new.
        if not added and not modified:
            result["message"] = f"{repo_type} repo {repo_id}: all {len(paths)} file(s) unchanged, no commit"
            logger.info(result["message"])
            return result
        operations = [
            CommitOperationAdd(path_in_repo=path, path_or_fileobj=local[path]) for path in added + modified
        ]
        changed = added + modified
        default_message = (
            "Upload " + ", ".join(changed) if len(changed) <= 5 else f"Upload {len(changed)} files"
        )
        info = api.create_commit(
            repo_id,
            operations,
            commit_message=commit_message or default_message,
            repo_type=repo_type,
            revision=revision,
        )
    result.update(commit=info.oid, commit_url=info.commit_url)
    result["message"] = (
        f"{repo_type} repo {repo_id}: 1 commit {info.oid[:8]} ({len(added)} added, {len(modified)} modified, "
        f"{len(unchanged)} unchanged)"
    )
    logger.info(result["message"])
    return result


def upload_data(
    repo_id: str,
    paths: Sequence[str | Path],
    token: str | None = None,
    private: bool = True,
    path_in_repo_prefix: str = "",
    commit_message: str | None = None,
) -> dict[str, Any]:
    """Upload data files (or directories of them) to a dataset repo, keeping their layout (`collect_files`).

    Args:
        repo_id (`str`):
            `user/name` of the dataset repo.
        paths (`Sequence[str | Path]`):
            Data files, or folders whose `DATA_PATTERNS` files are taken.
        token (`str`, *optional*):
            A write token; None resolves one.
        private (`bool`, *optional*, defaults to `True`):
            Visibility of a repo this call creates.
        path_in_repo_prefix (`str`, *optional*, defaults to `""`):
            Folder in the repo to upload into.
        commit_message (`str`, *optional*):
            None: a message listing the changed files.

    Returns:
        `dict[str, Any]`: `upload_files`'s result.

    Raises:
        `MissingInputError`, `UsageError`: From `collect_files`, before any network call.
        `HubError`: From `upload_files`.
    """
    files = collect_files(paths, path_in_repo_prefix)
    return upload_files(
        repo_id, files, repo_type="dataset", token=token, private=private, commit_message=commit_message
    )


def fetch_data(
    repo_id: str,
    dest: str | Path,
    token: str | None = None,
    revision: str | None = None,
    allow_patterns: Sequence[str] = DATA_PATTERNS,
) -> list[Path]:
    """Download a dataset repo's data files into `dest` (same layout as the repo); returns their local paths.

    Args:
        repo_id (`str`):
            `user/name` of the dataset repo.
        dest (`str` or `Path`):
            Local folder; created if missing, and files already there and unchanged are not downloaded again.
        token (`str`, *optional*):
            A token for a private repo; None resolves one.
        revision (`str`, *optional*):
            Branch, tag or commit; None is the default branch.
        allow_patterns (`Sequence[str]`, *optional*, defaults to `DATA_PATTERNS`):
            Globs on repo paths that select the files to fetch.

    Returns:
        `list[Path]`: Sorted local paths of the matching files under `dest`.

    Raises:
        `HubError`: A Hub failure, or no file matching `allow_patterns`.
    """
    token = resolve_token(token)
    dest = Path(dest)
    api = HfApi(token=token)
    with hub_errors(repo_id, "dataset", token, api.endpoint):
        folder = Path(
            snapshot_download(
                repo_id,
                repo_type="dataset",
                revision=revision,
                local_dir=dest,
                token=token,
                allow_patterns=list(allow_patterns),
                endpoint=api.endpoint,
            )
        )
    found = sorted(
        file
        for file in folder.rglob("*")
        if file.is_file()
        # snapshot_download keeps its own metadata under dest/.cache/.
        and ".cache" not in file.relative_to(folder).parts
        and any(fnmatch.fnmatch(file.relative_to(folder).as_posix(), pattern) for pattern in allow_patterns)
    )
    if not found:
        raise HubError(f"dataset repo '{repo_id}' has no files matching {', '.join(allow_patterns)}")
    return found


def download_data_files(
    repo_id: str,
    filenames: Sequence[str],
    revision: str | None = None,
    token: str | None = None,
    cache_dir: str | Path | None = None,
) -> list[Path]:
    """Download named files of a dataset repo into the Hub cache (for `--dataset_repo`); returns local paths.

    Args:
        repo_id (`str`):
            `user/name` of the dataset repo.
        filenames (`Sequence[str]`):
            Paths inside the repo (the `--train_file` etc. values under `--dataset_repo`).
        revision (`str`, *optional*):
            Branch, tag or commit (`--dataset_revision`).
        token (`str`, *optional*):
            A token for a private repo; None resolves one.
        cache_dir (`str` or `Path`, *optional*):
            Hub cache folder; None is huggingface_hub's default.

    Returns:
        `list[Path]`: Local paths in the order of `filenames` (inside the cache: read them, never write).

    Raises:
        `HubError`: Naming the first file that could not be downloaded.
    """
    token = resolve_token(token)
    paths = []
    for filename in filenames:
        with hub_errors(repo_id, "dataset", token, filename=filename):
            paths.append(
                Path(
                    hf_hub_download(
                        repo_id,
                        filename,
                        repo_type="dataset",
                        revision=revision,
                        token=token,
                        cache_dir=cache_dir,
                    )
                )
            )
    return paths


def load_dataset_splits(
    repo_id: str,
    config_name: str | None = None,
    revision: str | None = None,
    token: str | None = None,
    cache_dir: str | Path | None = None,
) -> Any:
    """Every split of a Hub dataset, loaded with `datasets.load_dataset`, as a `DatasetDict`.

    Works for CSV, JSON Lines, Parquet, … repos and for a dataset card's `configs`; `datasets`' cache applies.

    Args:
        repo_id (`str`):
            `user/name` of the dataset repo (`--dataset_repo`).
        config_name (`str`, *optional*):
            The dataset config (`--dataset_config_name`); None is the default one.
        revision (`str`, *optional*):
            Branch, tag or commit (`--dataset_revision`).
        token (`str`, *optional*):
            A token for a private repo; None resolves one.
        cache_dir (`str` or `Path`, *optional*):
            The `datasets` cache folder; None is its default.

    Returns:
        `DatasetDict`: The splits by name.

    Raises:
        `HubError`: The repo or revision cannot be found or reached, or its files do not build a dataset.
        `UsageError`: A config name the repo lacks (the message lists the ones it has).
        `DataError`: When `load_dataset` returns something other than a `DatasetDict`.
    """
    import datasets
    from datasets.exceptions import DatasetNotFoundError

    token = resolve_token(token)
    where = f"dataset repo '{repo_id}'"
    with hub_errors(repo_id, "dataset", token):
        try:
            loaded = datasets.load_dataset(repo_id, name=config_name, revision=revision, token=token,
                                           cache_dir=str(cache_dir) if cache_dir else None)
        except DatasetNotFoundError as error:
            message = one_line(str(error))
            # datasets raises DatasetNotFoundError for a missing revision too; only the message differs.
            if revision and "revision" in message.lower():
                raise HubError(f"--dataset_revision {revision}: not found in {where} ({message})") from error
            raise HubError(f"{where} was not found, or the token cannot see it (a private repo needs its owner's "
                           f"token: {TOKEN_HELP})") from error
        # datasets reports an unknown config as ValueError("BuilderConfig 'x' not found. Available: [...]").
        except ValueError as error:
            message = one_line(str(error))
            if "config" in message.lower():
                raise UsageError(f"--dataset_config_name {config_name}: {message}") from error
            raise HubError(f"{where}: cannot be loaded with datasets.load_dataset ({message[:300]})") from error
        except (FileNotFoundError, datasets.exceptions.DataFilesNotFoundError) as error:
            raise HubError(f"{where}: no data files that datasets.load_dataset can read ({one_line(str(error))[:300]})"
                           ) from error
        except datasets.exceptions.DatasetGenerationError as error:
            # DatasetGenerationError's own text is generic; the parse error that explains it is its __cause__.
            cause = one_line(str(error.__cause__ or error))
            raise HubError(f"{where}: its files do not build a dataset ({cause[:300]})") from error
        # load_dataset turns network failures into a builtin ConnectionError, which hub_errors does not catch.
        except ConnectionError as error:
            raise HubError(f"cannot reach the Hub for {where} ({one_line(str(error))[:200]}); check the network, "
                           "HF_ENDPOINT and that HF_HUB_OFFLINE is not set") from error
    if not isinstance(loaded, datasets.DatasetDict):
        raise DataError(f"{where}: expected a dataset with splits, got {type(loaded).__name__}")
    return loaded


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | list[Path]:
    """`python -m multitask.hub upload-data|fetch-data …`: returns `upload_data`'s result or the fetched paths.

    Args:
        argv (`Sequence[str]`, *optional*):
            Command-line arguments without the program name; None reads `sys.argv`.

    Returns:
        `dict[str, Any] | list[Path]`: `upload_data`'s result, or the fetched paths.

    Raises:
        `UsageError`: Bad arguments, or no repo id (checked before any network call).
        `HubError`: A failed upload or download.
    """
    # argparse rather than HfArgumentParser: subcommands with positional paths, as `hf upload` has.
    parser = argparse.ArgumentParser(prog="python -m multitask.hub", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    upload = commands.add_parser(
        "upload-data", help="Upload data files (or directories of them) to a dataset repo, keeping their layout."
    )
    upload.add_argument(
        "--repo", default=None,
        help=f"Dataset repo id, user/name (created private if absent). Empty: {REPO_NAME} (environment or .env).",
    )
    upload.add_argument(
        "paths", nargs="+",
        help="Files, or directories whose data files (CSV, TSV, JSONL, JSON, Parquet) are uploaded; placed relative "
        "to the deepest folder holding them all (data/train data/test -> train/..., test/...).",
    )
    upload.add_argument(
        "--public",
        action="store_true",
        help="Create the repo public (an existing repo keeps its visibility).",
    )
    upload.add_argument(
        "--path_in_repo", default="", help="Folder in the repo to upload into (default: the root)."
    )
    upload.add_argument("--message", default=None, help="Commit message.")
    fetch = commands.add_parser("fetch-data", help="Download a dataset repo's data files.")
    fetch.add_argument("--repo", default=None, help=f"Dataset repo id, user/name. Empty: {REPO_NAME}.")
    fetch.add_argument("--dest", required=True, help="Local directory (the repo's layout is kept).")
    fetch.add_argument("--revision", default=None, help="Branch, tag or commit (default: main).")
    for command in (parser, upload, fetch):
        raise_usage_errors(command)
    args = parser.parse_args(argv)
    args.repo = resolve_dataset_repo(args.repo)  # before any network call: a missing repo id is a usage error

    if args.command == "upload-data":
        result = upload_data(
            args.repo,
            args.paths,
            private=not args.public,
            path_in_repo_prefix=args.path_in_repo,
            commit_message=args.message,
        )
        print(result["message"])
        for status in ("added", "modified", "unchanged"):
            for path in result[status]:
                print(f"  {status:9} {path}")
        if result["commit_url"]:
            print(f"  {result['commit_url']}")
        return result
    files = fetch_data(args.repo, args.dest, revision=args.revision)
    print(f"{len(files)} file(s) from dataset repo {args.repo} in {args.dest}:")
    for file in files:
        print(f"  {file}")
    return files


def push_model(
    repo_id: str,
    model_dir: str | Path,
    run_dir: str | Path | None = None,
    token: str | None = None,
    private: bool = True,
) -> dict[str, Any]:
    """Upload a saved model and the run's reports to the root of a model repo; unchanged files are skipped.

    The model folder (weights, config with label maps and thresholds, tokenizer, README.md card) goes to the
    repo root, where `from_pretrained(repo id)` looks, without `training_args.bin`; the run's reports
    (`_RUN_REPORTS`) go under `run/`.

    Args:
        repo_id (`str`):
            `user/name` of the model repo (`--hub_model_id`).
        model_dir (`str` or `Path`):
            The run's saved `model/` folder (subfolders such as `adapter/` included).
        run_dir (`str` or `Path`, *optional*):
            The run directory whose reports travel along; None uploads the model alone.
        token (`str`, *optional*):
            A write token; None resolves one.
        private (`bool`, *optional*, defaults to `True`):
            Visibility of a repo this call creates.

    Returns:
        `dict[str, Any]`: `upload_files`'s result.

    Raises:
        `HubError`: From `upload_files`.
    """
    model_dir = Path(model_dir)
    files = {
        path.relative_to(model_dir).as_posix(): path
        for path in sorted(model_dir.rglob("*"))
        # training_args.bin is a pickle: from_pretrained does not need it, and unpickling downloads is unsafe.
        if path.is_file() and path.name != "training_args.bin"
    }
    if run_dir is not None:
        run_dir = Path(run_dir)
        for name in _RUN_REPORTS:
            for path in sorted(run_dir.glob(name)):
                files[f"run/{path.relative_to(run_dir).as_posix()}"] = path
    return upload_files(repo_id, files, repo_type="model", token=token, private=private,
                        commit_message=f"Upload model from {run_dir.name if run_dir else model_dir.name}")



def take_over_push(training_args: Any) -> str | None:
    """The model repo to push the finished run to (`--hub_model_id`), or None without `--push_to_hub`.

    Surprising: it turns the Trainer's own `push_to_hub` off (mutating `training_args`). We push the finished
    `model/` (with its card) ourselves with `push_model`: the Trainer would upload the run directory root at every
    save, and, checkpoints aside, the model would not sit at the repo root where `from_pretrained(repo id)` looks.

    Args:
        training_args (`TrainingArguments`):
            The run's arguments; `push_to_hub` is set to False when it was True.

    Returns:
        `str | None`: The repo id to pass to `push_model` at the end.

    Raises:
        `UsageError`: When `--push_to_hub` comes without `--hub_model_id`.
    """
    if not training_args.push_to_hub:
        return None
    if not training_args.hub_model_id:
        raise UsageError("--push_to_hub needs --hub_model_id user/name (the model repo to create or update)")
    # Before the Trainer is built, or Trainer.__init__ would already have created the repo (init_hf_repo).
    training_args.push_to_hub = False
    return training_args.hub_model_id


# What of a run directory travels with a pushed model (small, and useful to whoever loads it).
_RUN_REPORTS = (
    "metrics.json", "thresholds.json", "epoch_log.jsonl", "val_per_class_metrics.json", "hierarchy_stats.json",
    "label_map.json", "plots/*.png",
)  # fmt: skip


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(cli(main))
