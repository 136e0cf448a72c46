"""Apply a unified diff (`diff -u`, paths a/... b/...) under a folder, for machines without `patch`.

    python benchmarks/apply_patch.py DIR FILE.patch

Each hunk's context and removed lines must appear in order in the file; a hunk that does not match
is an error (exit 1) and nothing of that file is written."""

from __future__ import annotations

import re
import sys
from pathlib import Path


def apply(root: Path, text: str) -> list[str]:
    done = []
    for part in re.split(r"^--- ", text, flags=re.M)[1:]:
        name = re.search(r"^\+\+\+ b/(\S+)", part, re.M).group(1)
        path = root / name
        src = path.read_text().splitlines(keepends=True)
        out, at = [], 0
        for hunk in re.split(r"^@@ .*@@.*\n", part, flags=re.M)[1:]:
            lines = hunk.splitlines(keepends=True)
            old = [line[1:] for line in lines if line[:1] in (" ", "-")]
            new = [line[1:] for line in lines if line[:1] in (" ", "+")]
            i = next((i for i in range(at, len(src) + 1) if src[i:i + len(old)] == old), None)
            if i is None:
                raise SystemExit(f"{name}: a hunk does not apply")
            out += src[at:i] + new
            at = i + len(old)
        path.write_text("".join(out + src[at:]))
        done.append(name)
    return done


if __name__ == "__main__":
    print("patched", ", ".join(apply(Path(sys.argv[1]), Path(sys.argv[2]).read_text())))
