"""Where a model's files come from: a local folder, or a Hugging Face hub repo fetched file by file.

A hub repo is listed first (the API when online; the local hub cache when offline or unreachable), so the
resolver can decide what the model is and download only the files the chosen path needs.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from gte_onnx.errors import ModelFolderError
from gte_onnx.progress import Progress

COMMIT = re.compile(r"^[0-9a-f]{40}$")
TRUE = ("1", "true", "yes", "on")


def hub_offline(local_files_only: bool = False) -> bool:
    """local_files_only, or HF_HUB_OFFLINE set (read now: tests and users may set it after import)."""
    if local_files_only or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in TRUE:
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:
        return False


def hub_cache_dir() -> Path:
    """The hub's cache folder, from HF_HUB_CACHE or HF_HOME as they are set now."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def repo_folder_name(repo_id: str) -> str:
    """`org/name` -> `models--org--name`, the hub cache's (and gte-onnx cache's) folder name."""
    return "models--" + repo_id.replace("/", "--")


def looks_like_hub_id(text: str) -> bool:
    return text.count("/") == 1 and not text.startswith((".", "/", "~")) and all(text.split("/"))


@dataclass
class LocalFolder:
    """A model folder on disk: every file is already there."""

    root: Path

    @property
    def name(self) -> str:
        return str(self.root)

    revision = None
    repo_id = None

    @property
    def files(self) -> list[str]:
        return sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file())

    def fetch(self, names: Iterable[str], what: str = "") -> Path:
        missing = [n for n in names if not (self.root / n).is_file()]
        if missing:
            raise ModelFolderError(f"{self.root} lacks {', '.join(missing)}")
        return self.root


@dataclass
class HubRepo:
    """A hub repo at one commit, listed once; `fetch` downloads the named files with hf_hub_download."""

    repo_id: str
    revision: str  # the commit hash
    files: list[str]
    offline: bool
    cache_dir: Path

    @property
    def name(self) -> str:
        return self.repo_id

    @property
    def root(self) -> Path:
        return self.cache_dir / repo_folder_name(self.repo_id) / "snapshots" / self.revision

    def fetch(self, names: Iterable[str], what: str = "") -> Path:
        """Download each file not yet in the hub cache (hf_hub_download skips cached ones); a bar counts them."""
        import huggingface_hub

        wanted = list(dict.fromkeys(names))
        progress = Progress(len(wanted), f"download {what or self.repo_id}", sys.stderr.isatty() and bool(wanted), unit="file")
        try:
            for name in wanted:
                progress.note(name)
                try:
                    huggingface_hub.hf_hub_download(
                        self.repo_id, name, revision=self.revision, cache_dir=str(self.cache_dir),
                        local_files_only=self.offline,
                    )
                except Exception as exc:  # network, auth, a file missing from the offline cache
                    raise ModelFolderError(
                        f"could not get {name} of {self.repo_id}@{self.revision[:12]}"
                        f"{' from the local hub cache (offline)' if self.offline else ' from the Hugging Face hub'}: "
                        f"{type(exc).__name__}: {exc}"
                    ) from None
                progress.update(1)
        finally:
            progress.close()
        return self.root


def open_hub_repo(repo_id: str, revision: str | None, local_files_only: bool) -> HubRepo:
    """List a hub repo: online through the API (falling back to the local cache when the hub is
    unreachable), offline from the local hub cache."""
    cache = hub_cache_dir()
    offline = hub_offline(local_files_only)
    if not offline:
        listed = _list_online(repo_id, revision)
        if listed is not None:
            commit, files = listed
            return HubRepo(repo_id, commit, files, offline=False, cache_dir=cache)
    commit, files = _list_cached(cache, repo_id, revision, offline)
    return HubRepo(repo_id, commit, files, offline=True, cache_dir=cache)


def _list_online(repo_id: str, revision: str | None) -> tuple[str, list[str]] | None:
    """(commit, files) from the hub API; None when the hub cannot be reached (then the cache answers)."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        info = HfApi().model_info(repo_id, revision=revision)
    except (RepositoryNotFoundError, GatedRepoError, RevisionNotFoundError) as exc:
        raise ModelFolderError(f"{repo_id}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    except Exception:  # no network, proxy or DNS failure, timeout
        return None
    return str(info.sha), sorted(s.rfilename for s in (info.siblings or []))


def _list_cached(cache: Path, repo_id: str, revision: str | None, offline: bool) -> tuple[str, list[str]]:
    """(commit, files) of a repo in the local hub cache: what was downloaded before."""
    repo_dir = cache / repo_folder_name(repo_id)
    where = "offline (HF_HUB_OFFLINE / local_files_only)" if offline else "the hub is unreachable"
    commit = revision if revision and COMMIT.match(revision) else None
    if commit is None:
        ref = repo_dir / "refs" / (revision or "main")
        if not ref.is_file():
            raise ModelFolderError(
                f"{repo_id}{'@' + revision if revision else ''} is not in the local hub cache {cache}, and {where}"
            )
        commit = ref.read_text(encoding="utf-8").strip()
    snapshot = repo_dir / "snapshots" / commit
    if not snapshot.is_dir():
        raise ModelFolderError(f"{repo_id}@{commit[:12]} has no snapshot in the local hub cache {cache}, and {where}")
    files = sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file())
    return commit, files


def open_source(model: str | Path, revision: str | None = None, local_files_only: bool = False):
    """A LocalFolder for an existing folder, else a HubRepo for an `org/name` hub id."""
    path = Path(model).expanduser()
    text = str(model)
    if path.is_dir():
        return LocalFolder(path)
    if path.exists():
        raise ModelFolderError(f"{text} is a file, not a model folder")
    if not looks_like_hub_id(text):
        raise ModelFolderError(f"{text} is neither a local model folder nor a hub id of the form org/name")
    return open_hub_repo(text, revision, local_files_only)
