#!/usr/bin/env bash
# Build FlashAttention-3 (flash-attention's hopper/) ON THE DEVICE (H200, sm_90a), forward only,
# head dim 128, bf16 and fp8 e4m3, from the carried .fa3src/ (benchmarks/fa3_prepare.sh), with no
# network; then put the importable module in $FA3_SITE (default /tmp/fa3site) and a tarball of it in
# $OUT/fa3site.tar.gz, so a later call can carry it (as .fa3site/) instead of building again.
#
#   bash benchmarks/fa3_build.sh            # on the device; logs to stdout (session.sh: $OUT/fa3.log)
#   bash benchmarks/fa3_build.sh --plan     # no compiling: the sources and nvcc flags setup.py would use
#
# What is built (setup.py's own switches, FLASH_ATTENTION_DISABLE_*=TRUE for everything else): the
# instantiations flash_fwd_hdim128_bf16_sm90.cu and flash_fwd_hdim128_e4m3_sm90.cu, flash_api_stable.cpp
# (torch >= 2.9 takes the stable-ABI binding) and flash_prepare_scheduler.cu: 4 units. Inside each
# instantiation the runtime switches left are causal / non-causal and, for bf16 non-causal, cluster
# of 2 or 1 (kept: that is FA3's fast path at our shapes), so bf16 holds 3 kernels and e4m3 2 (a
# full-feature file holds 9-10: local, varlen, append-KV too).
#
# Build time. Measured on the CPU box (2026-11-30: the same nvcc 13.0 (13.0.88), gcc 12, CUTLASS pin
# and flags, one niced core of an AMD EPYC shared with others, each unit compiled alone):
# flash_fwd_hdim128_bf16_sm90.cu 207 s (3 kernels, 5.1 GB peak RAM), flash_fwd_hdim128_e4m3_sm90.cu
# 197 s (2 kernels, 4.5 GB), flash_prepare_scheduler.cu 161 s (sm_90a + sm_80), flash_api_stable.cpp
# 21 s (against torch 2.13's headers); all four compiled cleanly and the objects' symbols resolve. A
# full-feature instantiation holds 9-10 kernels (a full build, ~450 units, ran ~15 min on 128 cores:
# flash-attention issue 1486). Here the 4 units compile in parallel (MAX_JOBS=16), so the wall time
# is the slowest unit plus setup and link: ~4 min if the device's cores are like the box's (not
# measured there). nvcc's --threads parallelises over targets and each unit has one (sm_90a), so
# NVCC_THREADS buys nothing. A build over FA3_BUILD_LIMIT seconds (default 480) is stopped cleanly
# and the log says which units finished. Levers if it does not fit: FA3_DISABLE_CLUSTER=1 (bf16: 2
# kernels; FA3's non-causal path at 32760 tokens then runs without its 2-CTA cluster),
# FA3_DTYPES=bf16 (drops the e4m3 unit: frees cores, not wall time), FA3_SPLIT_COMPILE=N (nvcc
# --split-compile=N through NVCC_APPEND_FLAGS; may cost kernel speed).
# ptxas 13.0 reports small spills: bf16 non-causal 12 and 20 bytes (cluster 1, 2), causal none; e4m3 12 / 28;
# FA3's setup prefers ptxas 12.8 on CUDA 12): whether that costs speed is for the timing to say.
#
# Environment: FA3_SRC (default <repo>/.fa3src), FA3_SITE, FA3_WORK (/tmp/fa3build),
# FA3_CARRIED (<repo>/.fa3site: a carried earlier build, a folder or .fa3site/fa3site.tar.gz; used
# instead of building when it imports), FA3_BUILD_LIMIT, FA3_DTYPES (bf16,e4m3), MAX_JOBS (16), OUT,
# FA3_PATCHES (patch files applied to the copy of the sources; with NVCC_APPEND_FLAGS for their macros).
# Exit 0 when $FA3_SITE imports and a small FA3 call matches SDPA; 1 otherwise.
set -u -o pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SRC=${FA3_SRC:-$ROOT/.fa3src}
SITE=${FA3_SITE:-/tmp/fa3site}
WORK=${FA3_WORK:-/tmp/fa3build}
CARRIED=${FA3_CARRIED:-$ROOT/.fa3site}
OUT=${OUT:-$ROOT/bench_out}
LIMIT=${FA3_BUILD_LIMIT:-480}
DTYPES=${FA3_DTYPES:-bf16,e4m3}
PY=${PYTHON:-python3}
[ "$LIMIT" -lt 60 ] && LIMIT=60
export PYTHONUNBUFFERED=1  # setup.py's own lines reach the log even when the limit kills it
T0=$(date +%s)
say() { echo "[fa3_build +$(( $(date +%s) - T0 ))s] $*"; }

# ---------------------------------------------------------------- the switches setup.py reads
export FLASH_ATTENTION_FORCE_BUILD=TRUE FLASH_ATTENTION_OFFLINE_BUILD=TRUE  # never download (no network there)
for f in BACKWARD SPLIT PAGEDKV APPENDKV LOCAL SOFTCAP PACKGQA FP16 VARLEN SM80 \
         HDIM64 HDIM96 HDIM192 HDIM256 HDIMDIFF64 HDIMDIFF192; do
  export "FLASH_ATTENTION_DISABLE_$f=TRUE"
done
export FLASH_ATTENTION_DISABLE_HDIM128=FALSE
export FLASH_ATTENTION_DISABLE_CLUSTER=$([ "${FA3_DISABLE_CLUSTER:-0}" = 1 ] && echo TRUE || echo FALSE)
export FLASH_ATTENTION_DISABLE_FP8=$(case ",$DTYPES," in *,e4m3,*) echo FALSE ;; *) echo TRUE ;; esac)
export MAX_JOBS=${MAX_JOBS:-16} NVCC_THREADS=${NVCC_THREADS:-2} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
[ -n "${FA3_SPLIT_COMPILE:-}" ] && export NVCC_APPEND_FLAGS="${NVCC_APPEND_FLAGS:-} --split-compile=$FA3_SPLIT_COMPILE"

find_cuda() {  # NVCC and CUDA_HOME (what torch's cpp_extension and setup.py's version check read)
  NVCC=$(command -v nvcc || true)
  [ -z "$NVCC" ] && [ -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ] && NVCC=${CUDA_HOME:-/usr/local/cuda}/bin/nvcc
  [ -n "$NVCC" ] || { say "no nvcc on PATH nor in \$CUDA_HOME/bin"; return 1; }
  if [ -z "${CUDA_HOME:-}" ]; then  # nvcc on PATH may be a wrapper script: ask nvcc where it lives
    echo 'int main() { return 0; }' > /tmp/fa3_probe.cu
    local here; here=$("$NVCC" --dryrun -c /tmp/fa3_probe.cu -o /tmp/fa3_probe.o 2>&1 | sed -n 's/^#\$ _HERE_=//p' | head -1)
    CUDA_HOME=$(cd "${here:-$(dirname "$(readlink -f "$NVCC")")}/.." && pwd)
  fi
  export CUDA_HOME PATH=$CUDA_HOME/bin:$PATH
}

# setup.py's sources and nvcc flags without compiling: setuptools.setup replaced by a printer.
plan() {
  (cd "$1/hopper" && "$PY" - <<'EOF'
import runpy, sys, setuptools
def show(**kw):
    for ext in kw.get("ext_modules") or []:
        print("extension", ext.name)
        for s in ext.sources:
            print("  source", s)
        print("  nvcc", " ".join(ext.extra_compile_args["nvcc"]))
setuptools.setup = show
sys.argv = ["setup.py", "--name"]
runpy.run_path("setup.py", run_name="__main__")
EOF
  )
}

if [ "${1:-}" = "--plan" ]; then
  find_cuda || exit 1
  rm -rf "$WORK" && mkdir -p "$WORK" && cp -a "$SRC/." "$WORK/" && plan "$WORK"
  exit $?
fi

# ---------------------------------------------------------------- the check every path ends with
smoke() {  # a small FA3 call in bf16 (and e4m3 when built) against SDPA, from $SITE
  PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" "$PY" - "$DTYPES" <<'EOF'
import sys, torch, torch.nn.functional as F
import flash_attn_interface as fa3
print("flash_attn_interface from", fa3.__file__)
torch.manual_seed(0)
q, k, v = (torch.randn(1, 1000, 4, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
ref = F.scaled_dot_product_attention(*(t.transpose(1, 2).float() for t in (q, k, v))).transpose(1, 2)
def err(o):
    o = o[0] if isinstance(o, tuple) else o
    return ((o.float() - ref).norm() / ref.norm()).item()
if "bf16" in sys.argv[1]:  # a kernel a build left out would crash the process, not raise
    e = err(fa3.flash_attn_func(q, k, v)); print(f"bf16 rel. L2 vs fp32 SDPA {e:.2e}"); assert e < 2e-2, e
if "e4m3" in sys.argv[1]:
    one = torch.ones(1, 4, device="cuda")
    e8 = err(fa3.flash_attn_func(*(t.to(torch.float8_e4m3fn) for t in (q, k, v)), q_descale=one, k_descale=one, v_descale=one))
    print(f"e4m3 rel. L2 vs fp32 SDPA {e8:.2e}"); assert e8 < 0.2, e8  # fp8 rounding of q, k, v and P: ~5-8%; garbage would be ~1
print("FA3 SMOKE OK")
EOF
}

package() {  # $SITE -> $OUT/fa3site.tar.gz (split into 15 MiB parts if larger: files come back <= 16 MiB)
  mkdir -p "$OUT"
  tar -C "$SITE" -czf "$OUT/fa3site.tar.gz" . || return 1
  local bytes; bytes=$(stat -c %s "$OUT/fa3site.tar.gz")
  say "site $(du -sh "$SITE" | cut -f1); $OUT/fa3site.tar.gz $(( bytes / 1048576 )) MiB"
  if [ "$bytes" -gt $(( 60 * 1048576 )) ]; then
    say "tarball over 60 MiB: not kept in \$OUT"; rm -f "$OUT/fa3site.tar.gz"
  elif [ "$bytes" -gt $(( 15 * 1048576 )) ]; then
    split -b 15M -d "$OUT/fa3site.tar.gz" "$OUT/fa3site.tar.gz.part" && rm -f "$OUT/fa3site.tar.gz"
    say "split into $(ls "$OUT"/fa3site.tar.gz.part* | wc -l) parts: cat fa3site.tar.gz.part* > fa3site.tar.gz"
  fi
}

# ---------------------------------------------------------------- a carried build: no compiling
if [ -f "$CARRIED/fa3site.tar.gz" ] || [ -f "$CARRIED/flash_attn_interface.py" ]; then
  rm -rf "$SITE" && mkdir -p "$SITE"
  if [ -f "$CARRIED/fa3site.tar.gz" ]; then tar -xzf "$CARRIED/fa3site.tar.gz" -C "$SITE"; else cp -a "$CARRIED/." "$SITE/"; fi
  say "using the carried build $CARRIED"; cat "$SITE/FA3_BUILD.txt" 2>/dev/null
  if smoke; then exit 0; fi
  say "the carried build does not work here: building"
fi

# ---------------------------------------------------------------- preflight (cheap, before minutes of nvcc)
[ -f "$SRC/hopper/setup.py" ] || { say "no $SRC/hopper/setup.py: run benchmarks/fa3_prepare.sh here and carry .fa3src"; exit 1; }
cat "$SRC/SOURCES.txt" 2>/dev/null
find_cuda || exit 1
say "nvcc $NVCC: $("$NVCC" --version | grep -o 'release [0-9.]*'); CUDA_HOME=$CUDA_HOME; cccl: $(ls -d "$CUDA_HOME/include/cccl" 2>/dev/null || echo none)"
say "host compiler: $(${CXX:-c++} --version | head -1); ninja $(ninja --version 2>&1); $(nproc) cores; $(free -g | awk '/Mem/ {print $2 " GiB RAM"}'); /tmp free $(df -h /tmp | awk 'NR==2 {print $4}')"
"$PY" - <<'EOF' || exit 1
import os, sysconfig, torch
inc = sysconfig.get_paths()["include"]
print(f"python {sysconfig.get_python_version()} torch {torch.__version__} (CUDA {torch.version.cuda}); Python.h: {os.path.exists(os.path.join(inc, 'Python.h'))} in {inc}")
if not os.path.exists(os.path.join(inc, "Python.h")):
    raise SystemExit("Python.h is missing: flash_api_stable.cpp includes it (PyInit__C); no build possible")
for m in ("packaging", "setuptools"):
    __import__(m)
EOF
command -v ninja >/dev/null || { say "no ninja on PATH: torch's cpp_extension builds through it"; exit 1; }
# setup.py imports wheel.bdist_wheel; a wheel release without that alias gets setuptools' own command.
if ! "$PY" -c "from wheel.bdist_wheel import bdist_wheel" 2>/dev/null; then
  mkdir -p /tmp/fa3shim/wheel && echo "from setuptools.command.bdist_wheel import bdist_wheel  # noqa" > /tmp/fa3shim/wheel/bdist_wheel.py
  touch /tmp/fa3shim/wheel/__init__.py && export PYTHONPATH=/tmp/fa3shim${PYTHONPATH:+:$PYTHONPATH}
fi
# setup.py runs `git submodule update` (a no-op outside a git checkout); with no git at all it would raise.
if ! command -v git >/dev/null; then
  mkdir -p /tmp/fa3shim/bin && printf '#!/bin/sh\nexit 0\n' > /tmp/fa3shim/bin/git && chmod +x /tmp/fa3shim/bin/git
  export PATH=/tmp/fa3shim/bin:$PATH
fi

# ---------------------------------------------------------------- build
rm -rf "$WORK" && mkdir -p "$WORK" && cp -a "$SRC/." "$WORK/"
for p in ${FA3_PATCHES:-}; do  # patches to FA3's sources (paths from the repo root), e.g. benchmarks/fa3_exp2_fma.patch
  if command -v patch >/dev/null; then patch -p1 -d "$WORK" < "$ROOT/$p"; else "$PY" "$ROOT/benchmarks/apply_patch.py" "$WORK" "$ROOT/$p"; fi \
    || { say "patch $p does not apply"; exit 1; }
  say "applied $p"
done
plan "$WORK" > "$WORK/plan.txt" 2>&1 || { cat "$WORK/plan.txt"; say "setup.py fails before compiling"; exit 1; }
say "plan:"; grep -E '^extension|^  (source|nvcc)' "$WORK/plan.txt"
say "building (limit ${LIMIT}s, MAX_JOBS=$MAX_JOBS, flags: $(env | grep -o '^FLASH_ATTENTION_DISABLE_[A-Z0-9]*=FALSE' | tr '\n' ' '))"
B0=$(date +%s)
(cd "$WORK/hopper" && timeout -k 20 "$LIMIT" "$PY" setup.py build_ext --inplace 2>&1)
rc=$?
B1=$(date +%s)
say "setup.py build_ext rc=$rc after $(( B1 - B0 ))s$([ $rc -eq 124 ] && echo ' (TIMED OUT)')"
log=$(ls "$WORK"/hopper/build/temp*/.ninja_log 2>/dev/null | head -1)
if [ -n "$log" ]; then  # seconds per finished unit, from ninja's own log (start/end in ms)
  say "finished units:"; awk -F'\t' 'NR > 1 {printf "  %6.0fs  %s\n", ($2 - $1) / 1000, $4}' "$log" | sort -rn
fi
if [ $rc -ne 0 ]; then  # an object file appears when its unit is done
  say "unfinished units: $(cd "$WORK/hopper" && awk '/^  source/ {print $2}' "$WORK/plan.txt" | while read -r s; do
    ls build/temp*/"${s%.*}".o >/dev/null 2>&1 || echo -n "$s "; done)"
fi
so=$(ls "$WORK"/hopper/flash_attn_3/_C*.so 2>/dev/null | head -1)
[ $rc -eq 0 ] && [ -n "$so" ] || { say "BUILD FAILED (no flash_attn_3/_C*.so)"; exit 1; }

# ---------------------------------------------------------------- the importable module
rm -rf "$SITE" && mkdir -p "$SITE/flash_attn_3"
cp "$WORK"/hopper/flash_attn_interface.py "$WORK"/hopper/flash_attn_config.py "$SITE/"
cp "$WORK"/hopper/flash_attn_3/*.py "$so" "$SITE/flash_attn_3/"
{
  cat "$SRC/SOURCES.txt" 2>/dev/null
  echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) in $(( B1 - B0 ))s; nvcc $("$NVCC" --version | grep -o 'release [0-9.]*'); torch $("$PY" -c 'import torch; print(torch.__version__)')"
  env | grep '^FLASH_ATTENTION_DISABLE_' | sort
} > "$SITE/FA3_BUILD.txt"
smoke; ok=$?
package
say "done: $([ $ok -eq 0 ] && echo OK || echo 'SMOKE FAILED'); PYTHONPATH=$SITE"
exit $ok
