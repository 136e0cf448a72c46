"""A model path that is not a local folder is a Hugging Face repo id.

It is fetched with huggingface_hub into its usual cache (so a second run downloads nothing) and
the snapshot folder is returned; detection then treats it as any local folder.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from lightx2v.errors import CheckpointError

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def looks_like_repo_id(s: str) -> bool:
    return bool(_REPO_ID.match(s)) and not s.startswith((".", "/", "~"))


def resolve_model_path(
    path_or_repo_id: str | Path,
    *,
    cache_dir: Optional[str | Path] = None,
    revision: Optional[str] = None,
    local_files_only: bool = False,
) -> Path:
    """A local folder as-is; a repo id ('Wan-AI/Wan2.1-T2V-1.3B') -> its snapshot folder in the HF cache."""
    p = Path(path_or_repo_id).expanduser()
    if p.exists():
        return p
    s = str(path_or_repo_id)
    if not looks_like_repo_id(s):
        raise CheckpointError(f"model folder not found: {p} (and it is not a Hugging Face repo id such as Wan-AI/Wan2.1-T2V-1.3B)")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(s, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only))
    except Exception as exc:  # network, auth, not found: one line for people
        raise CheckpointError(
            f"could not fetch {s} from the Hugging Face Hub ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "check the repo id and your connection, or pass a local folder"
        ) from None
