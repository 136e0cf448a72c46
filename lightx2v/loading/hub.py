"""A model path: a local folder, or a Hugging Face repo id fetched into the hub's cache.

Telling them apart, so that a typo in a local path is reported as one, not as a network error:
- a path that exists is local;
- a path that starts with `./`, `../`, `~` or `/`, has more than one `/` (or a `\\`), or whose first
  part is an existing local folder is a local path; missing, the error names the deepest folder of
  it that exists and the close names there (difflib);
- a name without `/` is a missing local folder (a repo id is `owner/name`);
- only a plausible `owner/name` whose owner is not a local folder is a repo id.

Fetching a repo id: one line "contacting the Hugging Face Hub for REPO ..." (stderr when `progress`,
else the `lightx2v.loading.hub` logger), then a first request with a time limit (huggingface_hub's
`HF_HUB_ETAG_TIMEOUT`, 10 s unless set; `timeout=` overrides it): `snapshot_download` itself asks
for the repo's info with no time limit, so a network that accepts the connection and never answers
would hang it. Once the Hub has answered, `snapshot_download` fetches the snapshot into the cache (a
second run downloads nothing) with huggingface_hub's own progress bars, which `progress=False` turns
off. Offline (`local_files_only=True`, or huggingface_hub's `HF_HUB_OFFLINE=1`) only the cache is
read; when the Hub cannot be reached a cached snapshot is used, with a warning. Every failure is one
`HubError` line (exit code 4) saying what happened and what to do (a full disk: `ResourceError`, 3).
"""

from __future__ import annotations

import difflib
import errno
import logging
import re
import sys
import warnings
from pathlib import Path

from lightx2v.errors import CheckpointError, HubError, ResourceError

logger = logging.getLogger(__name__)

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
EXAMPLE_REPO = "Wan-AI/Wan2.1-T2V-1.3B"


def looks_like_repo_id(s: str) -> bool:
    """`owner/name` that is not a local path (see the module docstring)."""
    if s.startswith(("./", "../", "~", "/", ".")) or "\\" in s or s.count("/") != 1:
        return False
    if not _REPO_ID.match(s) or "--" in s or ".." in s or s.endswith((".", "-")):
        return False
    return not Path(s.split("/", 1)[0]).is_dir()


def resolve_model_path(
    path_or_repo_id: str | Path,
    *,
    cache_dir: str | Path | None = None,
    revision: str | None = None,
    local_files_only: bool = False,
    timeout: float | None = None,
    progress: bool = True,
) -> Path:
    """A local path as-is; a repo id ('Wan-AI/Wan2.1-T2V-1.3B') -> its snapshot folder in the HF cache.

    `timeout`: seconds to wait for the Hub to answer (default huggingface_hub's HF_HUB_ETAG_TIMEOUT,
    10 s). `progress`: the "contacting" line on stderr and huggingface_hub's progress bars.
    Raises CheckpointError for a missing local path, HubError when the Hub fails.
    """
    p = Path(path_or_repo_id).expanduser()
    if p.exists():
        return p
    s = str(path_or_repo_id)
    if not looks_like_repo_id(s):
        raise CheckpointError(not_found_message(p))
    return fetch(s, cache_dir=cache_dir, revision=revision, local_files_only=local_files_only,
                 timeout=timeout, progress=progress)


def not_found_message(p: Path) -> str:
    """'model folder not found: P (the folder X exists; close names there: ...)'."""
    base = p.parent
    while not base.is_dir() and base != base.parent:
        base = base.parent
    here = base == Path(".") or not base.is_dir()
    if not base.is_dir():
        base = Path(".")
    missing = p.relative_to(base).parts[0] if p.is_relative_to(base) and p != base else p.name
    try:
        names = sorted(e.name for e in base.iterdir())
    except OSError:
        names = []
    lowered = {n.lower(): n for n in names}
    close = [lowered[n] for n in difflib.get_close_matches(missing.lower(), list(lowered), n=3, cutoff=0.6)]
    where = f"no {missing!r} in the current folder {Path.cwd()}" if here else f"the folder {base} exists"
    hint = f"{where}; close names there: {', '.join(close)}" if close else (
        where if here else f"{where} but has nothing named like {missing!r}")
    if here and "/" not in str(p):
        hint += f"; a Hugging Face repo id is written owner/name, e.g. {EXAMPLE_REPO}"
    return f"model folder not found: {p} ({hint})"


# ---------------------------------------------------------------- the Hub


def _say(message: str, progress: bool) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)
    else:
        logger.info(message)


def _is(exc: BaseException, *names: str) -> bool:
    """Whether `exc` is one of the named classes (httpx / httpx2 / requests: by name, whichever is installed)."""
    return any(c.__name__ in names for c in type(exc).__mro__)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _download_hint(repo_id: str) -> str:
    return f"or download it with `hf download {repo_id} --local-dir DIR` and pass DIR"


def _local_hint(repo_id: str) -> str:
    """'; no local folder X here either (close names: ...)' when the owner looks like a mistyped folder."""
    owner = repo_id.split("/", 1)[0]
    try:
        names = [e.name for e in Path(".").iterdir() if e.is_dir()]
    except OSError:
        names = []
    close = difflib.get_close_matches(owner, names, n=3, cutoff=0.75)
    return f"; not a local folder either (close names here: {', '.join(close)})" if close else ""


def _cached(repo_id: str, *, cache_dir, revision) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True))
    except Exception:  # noqa: BLE001 (not cached, or partly: the caller says what to do)
        return None


def _cache_folder(cache_dir) -> str:
    from huggingface_hub import constants

    return str(Path(cache_dir or constants.HF_HUB_CACHE).expanduser())


def _answered_error(exc: BaseException, repo_id: str, revision: str | None) -> HubError | None:
    """The Hub answered with a refusal: one line for it (None when it did not answer)."""
    if _is(exc, "GatedRepoError"):
        return HubError(f"{repo_id} is a gated repo on the Hugging Face Hub: accept its terms at "
                        f"https://huggingface.co/{repo_id} and log in (`hf auth login`), {_download_hint(repo_id)}")
    if _is(exc, "RepositoryNotFoundError"):
        return HubError(f"{repo_id} is not a model repo on the Hugging Face Hub (or it is private: log in with "
                        f"`hf auth login`); check the name (e.g. {EXAMPLE_REPO}){_local_hint(repo_id)}")
    if _is(exc, "RevisionNotFoundError"):
        return HubError(f"{repo_id} has no revision {revision!r} on the Hugging Face Hub; pass an existing branch, "
                        "tag or commit")
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if _is(exc, "HfHubHTTPError", "HTTPError") and status is not None and status < 500:
        return HubError(f"the Hugging Face Hub refused {repo_id} (HTTP {status}: {_first_line(exc)})")
    return None


def _unreachable(exc: BaseException, repo_id: str, timeout: float) -> HubError:
    from huggingface_hub import constants

    endpoint = constants.ENDPOINT
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status is not None:  # 5xx: the Hub is up but failing
        return HubError(f"the Hugging Face Hub ({endpoint}) answered HTTP {status} for {repo_id} (down or "
                        f"overloaded); try again later, {_download_hint(repo_id)}")
    if _is(exc, "TimeoutException", "Timeout", "TimeoutError"):
        return HubError(f"the Hugging Face Hub ({endpoint}) did not answer within {timeout:g} s for {repo_id}; "
                        f"check your network or proxy, wait longer with HF_HUB_ETAG_TIMEOUT=60, "
                        f"{_download_hint(repo_id)}{_local_hint(repo_id)}")
    return HubError(f"could not reach the Hugging Face Hub ({endpoint}) for {repo_id} ({_first_line(exc)}); "
                    f"check your network or proxy (HTTPS_PROXY, HF_ENDPOINT), {_download_hint(repo_id)}{_local_hint(repo_id)}")


def fetch(
    repo_id: str,
    *,
    cache_dir: str | Path | None = None,
    revision: str | None = None,
    local_files_only: bool = False,
    timeout: float | None = None,
    progress: bool = True,
) -> Path:
    """The snapshot folder of `repo_id` in the HF cache, downloaded if needed (see the module docstring)."""
    from huggingface_hub import HfApi, constants, snapshot_download

    offline = local_files_only or constants.HF_HUB_OFFLINE
    if offline:
        cached = _cached(repo_id, cache_dir=cache_dir, revision=revision)
        if cached is not None:
            return cached
        why = "local_files_only=True" if local_files_only else "HF_HUB_OFFLINE is set"
        raise HubError(f"could not fetch {repo_id}: it is not in the Hugging Face cache ({_cache_folder(cache_dir)}) "
                       f"and downloads are off ({why}); download it once online (`hf download {repo_id}`) "
                       "or pass a local folder")
    timeout = float(constants.HF_HUB_ETAG_TIMEOUT if timeout is None else timeout)
    _say(f"contacting the Hugging Face Hub for {repo_id} ...", progress)
    try:
        # snapshot_download's own first request has no time limit: this one does
        HfApi().repo_info(repo_id, revision=revision, timeout=timeout)
    except Exception as exc:  # noqa: BLE001 (every failure becomes one line; classified by _is)
        refused = _answered_error(exc, repo_id, revision)
        if refused is not None:
            raise refused from None
        cached = _cached(repo_id, cache_dir=cache_dir, revision=revision)
        if cached is None:
            raise _unreachable(exc, repo_id, timeout) from None
        warnings.warn(f"could not reach the Hugging Face Hub ({_first_line(exc)}); using the cached snapshot "
                      f"of {repo_id}", stacklevel=3)
        return cached
    return _download(repo_id, cache_dir=cache_dir, revision=revision, timeout=timeout, progress=progress,
                     snapshot_download=snapshot_download)


def _download(repo_id: str, *, cache_dir, revision, timeout: float, progress: bool, snapshot_download) -> Path:
    from huggingface_hub.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    turn_off = not progress and not are_progress_bars_disabled()
    if turn_off:
        disable_progress_bars()
    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, etag_timeout=timeout))
    except Exception as exc:  # noqa: BLE001 (the Hub answered a moment ago: a refusal, a dropped connection, a full disk)
        refused = _answered_error(exc, repo_id, revision)
        if refused is not None:
            raise refused from None
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise ResourceError(f"no space left for {repo_id} in the Hugging Face cache ({_cache_folder(cache_dir)}); "
                                "free space or set HF_HOME to another disk") from None
        raise HubError(f"downloading {repo_id} from the Hugging Face Hub failed ({_first_line(exc)}); run the "
                       f"command again to resume, {_download_hint(repo_id)}") from None
    finally:
        if turn_off:
            enable_progress_bars()
