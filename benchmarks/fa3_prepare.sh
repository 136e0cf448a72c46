#!/usr/bin/env bash
# Assemble .fa3src/: the FlashAttention-3 sources (flash-attention's hopper/) and the CUTLASS headers
# they need, from the local git mirrors (no network), so that one device call can build FA3 there
# (benchmarks/fa3_build.sh). Runs HERE, not on the device. The folder is generated: never commit it
# (the lead lists /.fa3src/ in .git/info/exclude) and name it in the device call's `carry`.
#
#   bash benchmarks/fa3_prepare.sh [DEST]        # DEST defaults to <repo root>/.fa3src
#
# Layout (what hopper/setup.py reads: ../README.md, ../csrc/cutlass/include, its own folder):
#   .fa3src/README.md, LICENSE           flash-attention's top level (setup.py opens ../README.md)
#   .fa3src/hopper/                      FA3: setup.py, flash_api_stable.cpp, *.h/*.hpp, instantiations/, python
#   .fa3src/csrc/cutlass/include/        CUTLASS/CuTe headers at the commit flash-attention pins
#   .fa3src/csrc/cutlass/tools/util/include/, LICENSE.txt
#   .fa3src/SOURCES.txt                  which commits went in
# Environment: FA_MIRROR, CUTLASS_MIRROR (git dirs), FA_REF (default HEAD of the mirror),
# CUTLASS_REF (default: the submodule commit pinned by FA_REF; if the mirror lacks it, the newest
# mirror commit not after FA_REF's date, with a warning).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEST=${1:-$ROOT/.fa3src}
FA_MIRROR=${FA_MIRROR:-/work/.mirror/Dao-AILab+flash-attention/repo}
CUTLASS_MIRROR=${CUTLASS_MIRROR:-/work/.mirror/NVIDIA+cutlass/repo}
FA_REF=${FA_REF:-HEAD}

for m in "$FA_MIRROR" "$CUTLASS_MIRROR"; do
  git --git-dir="$m" rev-parse --git-dir >/dev/null 2>&1 || { echo "fa3_prepare: no git mirror at $m (fetch it first)" >&2; exit 2; }
done
fa=(git --git-dir="$FA_MIRROR")
cu=(git --git-dir="$CUTLASS_MIRROR")
FA_SHA=$("${fa[@]}" rev-parse "$FA_REF^{commit}")
PIN=$("${fa[@]}" ls-tree "$FA_SHA" csrc/cutlass | awk '$2 == "commit" {print $3}')
[ -n "$PIN" ] || { echo "fa3_prepare: $FA_SHA pins no csrc/cutlass submodule" >&2; exit 2; }
CUTLASS_NOTE="pinned by flash-attention"
if [ -n "${CUTLASS_REF:-}" ]; then
  CUTLASS_SHA=$("${cu[@]}" rev-parse "$CUTLASS_REF^{commit}")
  CUTLASS_NOTE="CUTLASS_REF=$CUTLASS_REF (pin is $PIN)"
elif "${cu[@]}" cat-file -e "$PIN^{commit}" 2>/dev/null; then
  CUTLASS_SHA=$PIN
else
  when=$("${fa[@]}" log -1 --format=%cI "$FA_SHA")
  CUTLASS_SHA=$("${cu[@]}" rev-list -1 --before="$when" HEAD)
  CUTLASS_NOTE="WARNING: the mirror lacks the pin $PIN; took the newest commit before $when"
  echo "fa3_prepare: $CUTLASS_NOTE" >&2
fi

# A fresh folder each time: stale files from another commit must not travel.
rm -rf "$DEST.tmp" && mkdir -p "$DEST.tmp/csrc/cutlass"
# The mirrors lack some large binary blobs elsewhere in the tree (a pdf, images); git archive names
# them on stderr even though the paths taken here do not include them: that line is filtered.
quiet() { grep -v 'invalid object' >&2 || true; }
"${fa[@]}" archive --format=tar "$FA_SHA" hopper README.md LICENSE 2> >(quiet) | tar -x -C "$DEST.tmp"
"${cu[@]}" archive --format=tar "$CUTLASS_SHA" include tools/util/include LICENSE.txt 2> >(quiet) \
  | tar -x -C "$DEST.tmp/csrc/cutlass"
{
  echo "flash-attention $FA_SHA ($("${fa[@]}" log -1 --format='%cI %s' "$FA_SHA"))"
  echo "cutlass $CUTLASS_SHA ($("${cu[@]}" describe --tags "$CUTLASS_SHA" 2>/dev/null || echo no tag); $CUTLASS_NOTE)"
  echo "prepared $(date -u +%Y-%m-%dT%H:%M:%SZ) by benchmarks/fa3_prepare.sh"
} > "$DEST.tmp/SOURCES.txt"
rm -rf "$DEST" && mv "$DEST.tmp" "$DEST"

# What setup.py needs, checked here so a device call is not spent finding out.
need=(README.md hopper/setup.py hopper/__init__.py hopper/flash_api_stable.cpp hopper/flash_attn_interface.py
      hopper/flash_prepare_scheduler.cu hopper/flash_fwd_launch_template.h hopper/static_switch.h
      hopper/instantiations/flash_fwd_hdim128_bf16_sm90.cu hopper/instantiations/flash_fwd_hdim128_e4m3_sm90.cu
      csrc/cutlass/include/cutlass/cutlass.h csrc/cutlass/include/cute/tensor.hpp)
for f in "${need[@]}"; do
  [ -f "$DEST/$f" ] || { echo "fa3_prepare: $DEST/$f is missing" >&2; exit 1; }
done
cat "$DEST/SOURCES.txt"
echo "$DEST: $(du -sb "$DEST" | awk '{printf "%.1f MiB", $1 / 1048576}'), $(find "$DEST" -type f | wc -l) files"
if git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1 && ! git -C "$ROOT" check-ignore -q "$DEST/README.md"; then
  echo "note: $DEST is not ignored by git here; add /$(basename "$DEST")/ to .git/info/exclude before a device call"
fi
