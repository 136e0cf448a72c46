"""Per-job LoRAs: the files a server offers (`--lora-dir DIR`) and a request's choice among them.

    scan_lora_dir(dir, dim) -> LoraLibrary        at startup: the *.safetensors in DIR that are LoRA files
    parse_job_loras(text, library) -> pairs       a request's `lora` field, checked before queueing (400)
    LoraLibrary.paths(pairs) -> (path, strength)  what the worker hands to the pipeline's set_lora
    router(state)                                 GET /v1/loras: the names a request may use

A request names a LoRA by its file name in the list (`style.safetensors:0.8,detail.safetensors`;
`style` works too), never by a path: only files found in DIR at startup can be loaded, so a request
cannot make the server read anything else. The chosen pairs travel in the job's meta (`loras`,
JSON), and the worker applies them with the pipeline's dynamic LoRA (hooks; the base weights are not
touched, and removing them gives the base output bit for bit) right before the job, replacing the
previous job's set. LoRAs merged at startup (`--lora`) stay merged under every job.

At startup a file that is not a LoRA (by lightx2v.loading.lora_info's key rules), whose name cannot
be written in the field (',' or ':'), or whose layers have none of this DiT's width (a LoRA for
another model size) is left out with a warning; a folder left with none is an error.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping, Optional

from lightx2v.errors import InputError

log = logging.getLogger("lightx2v.server")

MAX_JOB_LORAS = 8
SUFFIX = ".safetensors"


@dataclasses.dataclass(frozen=True)
class LoraFile:
    """One offered file: its name (what requests use), where it is, and what it holds."""

    name: str
    path: Path
    fits: str                      # "Wan2.1 1.3B (dim 1536)", or what can be said (lora_info)
    ranks: tuple[int, ...]
    size_bytes: int

    def as_dict(self) -> dict:
        return {"id": self.name, "object": "lora", "fits": self.fits, "ranks": list(self.ranks),
                "size_bytes": self.size_bytes}


@dataclasses.dataclass(frozen=True)
class LoraLibrary:
    """The LoRA files of --lora-dir, by name (sorted)."""

    root: Path
    files: Mapping[str, LoraFile]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.files)

    def lookup(self, name: str) -> Optional[LoraFile]:
        """The file a request names: its file name, or the name without `.safetensors`."""
        return self.files.get(name) or self.files.get(name + SUFFIX)

    def paths(self, pairs) -> tuple[tuple[str, float], ...]:
        """(name, strength) pairs -> (path, strength) pairs; a name no longer offered (a job queued
        before a restart with another --lora-dir) is one InputError line."""
        out = []
        for name, strength in pairs:
            found = self.lookup(str(name))
            if found is None:
                raise InputError(f"LoRA {name!r} is not offered by this server any more; offered: {_listing(self)}",
                                 field="lora")
            out.append((str(found.path), float(strength)))
        return tuple(out)


def _listing(library: Optional[LoraLibrary], most: int = 20) -> str:
    names = list(library.names) if library is not None else []
    text = ", ".join(names[:most])
    return text + (f" ... ({len(names)} in all)" if len(names) > most else "") if names else "none"


def _describe(path: Path, dim: Optional[int]) -> tuple[Optional[LoraFile], Optional[str]]:
    """(the offered file, None) or (None, why it is left out)."""
    from lightx2v.loading.lora_info import describe_lora, is_lora_file

    if "," in path.name or ":" in path.name:
        return None, "its name has ',' or ':', which the request field cannot carry; rename it"
    try:
        if not is_lora_file(path):
            return None, "not a LoRA file (no LoRA keys: lora_A/lora_B, lora_down/lora_up, diff)"
        info = describe_lora(path)
    except Exception as exc:  # noqa: BLE001 - a broken file is left out, the server starts
        return None, f"unreadable ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})"
    if dim is not None and info.widths and dim not in info.widths:
        return None, f"a LoRA for {info.fits}; no layer of it has this DiT's width {dim}"
    return LoraFile(path.name, path, info.fits, tuple(sorted(info.ranks)), path.stat().st_size), None


def scan_lora_dir(folder: str | Path, dim: Optional[int] = None) -> LoraLibrary:
    """The LoRA files offered per job (see the module docstring); `dim`: the DiT's hidden width."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise InputError(f"--lora-dir {folder} is not a folder; give the folder of the LoRA .safetensors "
                         "files a request may choose", field="lora_dir")
    root = root.resolve()
    files, skipped = {}, []
    for path in sorted(root.glob("*" + SUFFIX)):
        if not path.is_file():
            continue
        found, why = _describe(path, dim)
        if found is None:
            skipped.append(f"{path.name}: {why}")
            log.warning("--lora-dir: %s left out: %s", path.name, why, extra={"job": None})
        else:
            files[found.name] = found
    if not files:
        raise InputError(f"--lora-dir {folder} has no LoRA {SUFFIX} file for this model"
                         + (f" (left out: {'; '.join(skipped)[:300]})" if skipped else ""), field="lora_dir")
    return LoraLibrary(root, MappingProxyType(files))


def parse_job_loras(text: Optional[str], library: Optional[LoraLibrary]) -> tuple[tuple[str, float], ...]:
    """A request's `lora` ("NAME[:STRENGTH][,NAME[:STRENGTH]]", strength 1.0 by default) -> ((name,
    strength), ...) in the given order; an ApiError 400 naming `lora` otherwise. Empty: no LoRA."""
    from lightx2v.loading.lora import lora_strength
    from lightx2v.server.requests import ApiError

    def bad(message: str, code: str = "invalid_value") -> ApiError:
        return ApiError(400, message, param="lora", code=code)

    if text is None or not text.strip():
        return ()
    if library is None:
        raise bad("this server offers no LoRA per request; start it with --lora-dir DIR (or merge one at "
                  "startup with --lora FILE:STRENGTH)", code="unsupported")
    items = [item.strip() for item in text.split(",")]
    if len(items) > MAX_JOB_LORAS:
        raise bad(f"lora names {len(items)} LoRAs; at most {MAX_JOB_LORAS} per job")
    out: dict[str, float] = {}
    for item in items:
        name, sep, tail = item.rpartition(":")
        if not sep:
            name, tail = item, None
        name = name.strip()
        if not name:
            raise bad(f"lora must be NAME[:STRENGTH] separated by commas, such as style.safetensors:0.8,"
                      f"detail.safetensors; got {text!r:.80}")
        found = library.lookup(name)
        if found is None:
            raise bad(f"lora {name!r:.60} is not offered here; choose from: {_listing(library)} (GET /v1/loras)",
                      code="lora_not_found")
        try:
            what = f"lora {found.name}: the strength after ':'"
            strength = 1.0 if tail is None else lora_strength(tail.strip(), what)
        except InputError as exc:
            raise bad(str(exc)) from None
        if found.name in out:
            raise bad(f"lora names {found.name} twice; give each LoRA once with its strength")
        out[found.name] = strength
    return tuple(out.items())


def describe_pairs(pairs) -> str:
    """'a.safetensors × 0.8, b.safetensors × 1' (the UI's history, log lines); '' for none."""
    return ", ".join(f"{name} × {float(s):g}" for name, s in pairs or ())


def dit_width(mc: Any) -> Optional[int]:
    """The DiT's hidden width of a ModelConfig (None where the family does not state one)."""
    dim = getattr(getattr(getattr(mc, "arch", None), "dit", None), "dim", None)
    return dim if isinstance(dim, int) else None


def router(state):
    from fastapi import APIRouter

    r = APIRouter(prefix="/v1", tags=["LoRAs"])

    @r.get("/loras", summary="the LoRA files a request may name in its `lora` field (--lora-dir)")
    def list_loras():
        library = state.served.loras
        data = [f.as_dict() for f in library.files.values()] if library is not None else []
        return {"object": "list", "data": data}

    return r
