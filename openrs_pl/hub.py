"""Where a model or dataset named on the command line comes from: a local path or a Hugging Face hub id, decided once.

``runs/nomodel`` is both a relative path and a syntactically valid hub id. Left to ``from_pretrained``, a missing
folder is looked up on the hub, which without network costs a minute of retries before "couldn't connect to
huggingface.co". :func:`resolve_model` and :func:`resolve_dataset` decide instead:

1. an existing path is local (a model folder must hold ``config.json``);
2. a name that cannot be a hub id (``./x``, ``/abs``, ``~/x``, ``a/b/c``, a data-file suffix) is a missing local path;
3. otherwise it is a hub id, used from the local cache when the hub is offline (``HF_HUB_OFFLINE=1``) or unreachable
   (one short connection attempt), and refused at once when it is in neither.

Every refusal is a :class:`SourceNotFoundError` whose one-line message says which of the two it was.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

# Suffixes that mark a name as a data file (never a hub id).
DATA_SUFFIXES = (".jsonl", ".json", ".parquet")
# Seconds one connection attempt to the hub may take before it counts as unreachable.
CONNECT_TIMEOUT_S = 3.0

RepoType = Literal["model", "dataset"]
Where = Literal["local", "hub", "hub-cache"]


class SourceNotFoundError(FileNotFoundError):
    """A model or dataset that is neither an existing local path nor a usable hub id (message: one line)."""


@dataclass(frozen=True)
class Source:
    """The decision for one name.

    Attributes:
        given: the name as the user wrote it.
        where: ``"local"`` (an existing path), ``"hub"`` (download/update from the hub) or ``"hub-cache"`` (the
            hub is offline or unreachable; the cached snapshot is used).
        location: what to load: the absolute local path, the hub id, or the cached snapshot folder.
    """

    given: str
    where: Where
    location: str

    def __str__(self) -> str:
        if self.where == "local":
            return f"local {self.location}"
        if self.where == "hub-cache":
            return f"hub id {self.given} (offline, from the local cache {self.location})"
        return f"hub id {self.given}"


def hub_offline_reason() -> str | None:
    """Why the hub cannot be used right now (``HF_HUB_OFFLINE``, or no connection), or ``None`` when it can."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or _env_flag("HF_DATASETS_OFFLINE"):
        return "HF_HUB_OFFLINE is set"
    return _connect_error(constants.ENDPOINT)


@functools.cache
def _connect_error(endpoint: str) -> str | None:
    """One short request to ``endpoint``; the error, or ``None`` when it answered (cached for the process)."""
    from huggingface_hub import get_session

    try:
        get_session().head(endpoint, timeout=CONNECT_TIMEOUT_S)
    except Exception as exc:  # any transport error means "unreachable"; its type depends on the HTTP client
        return f"cannot connect to {endpoint}: {type(exc).__name__}"
    return None


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")


def could_be_hub_id(name: str) -> bool:
    """Whether ``name`` has the form of a hub repo id (``name`` or ``namespace/name``).

    >>> [could_be_hub_id(n) for n in ["Qwen/Qwen2-0.5B", "runs/x", "./runs/x", "/abs/x", "a/b/c", "d.jsonl", "~/m"]]
    [True, True, False, False, False, False, False]
    """
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if name.startswith((".", "/", "~")) or name.count("/") > 1 or name.endswith(DATA_SUFFIXES):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def cached_snapshot(repo_id: str, repo_type: RepoType) -> str | None:
    """The local snapshot folder of ``repo_id`` in the hub cache, or ``None`` when it was never downloaded."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, repo_type=repo_type, local_files_only=True)
    except Exception:  # LocalEntryNotFoundError, or a cache entry without a snapshot: not cached either way
        return None


def resolve(name: str, repo_type: RepoType) -> Source:
    """Decide whether ``name`` is a local path or a hub id (see the module docstring).

    Raises:
        SourceNotFoundError: a missing local path, or a hub id that is not cached while the hub is unusable.
    """
    noun = "model folder" if repo_type == "model" else "data file or folder"
    path = Path(name).expanduser()
    if path.exists():
        return Source(name, "local", str(path.resolve()))
    missing = f"{name}: no such local {noun} ({path.absolute()})"
    if not could_be_hub_id(name):
        raise SourceNotFoundError(f"{missing}; check the path")
    offline = hub_offline_reason()
    if offline is None:
        return Source(name, "hub", name)
    snapshot = cached_snapshot(name, repo_type)
    if snapshot is not None:
        return Source(name, "hub-cache", snapshot)
    raise SourceNotFoundError(
        f"{missing}, and hub {repo_type} id {name!r} is not in the local cache while the hub is unreachable "
        f"({offline}); give an existing local path, or download it once while online"
    )


def resolve_model(name: str) -> Source:
    """:func:`resolve` for a model; a local folder must be a ``save_pretrained`` checkpoint.

    Raises:
        SourceNotFoundError: see :func:`resolve`, or a local path that is not a model folder.
    """
    source = resolve(name, "model")
    if source.where == "local" and not (Path(source.location) / "config.json").is_file():
        raise SourceNotFoundError(
            f"{name}: local path {source.location} is not a model folder (no config.json); "
            "give a folder written by save_pretrained"
        )
    return source


def resolve_dataset(name: str) -> Source:
    """:func:`resolve` for a dataset (a local file or folder, or a hub dataset id)."""
    return resolve(name, "dataset")
