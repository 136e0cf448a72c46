#!/usr/bin/env bash
# FA3's FP8 forward with part of the softmax's exp2 moved from the MUFU unit to the FMA pipe
# (benchmarks/fa3_exp2_fma.patch): builds one FA3 per variant in parallel ON THE DEVICE from the
# carried .fa3src, then times FA3's e4m3 kernel at the 14B-480P shape in each and in the carried
# unpatched build (.fa3site) with benchmarks/fa3_attention.py --kernels e4m3. Why: at head dim 128
# the exp2 unit (16 per clock per SM) takes about as long per score as the FP8 tensor cores, and FA3's
# e4m3 kernel reaches ~48% of the FP8 peak.
#
#   export OUT; FA3_VARIANTS="4:1 2:1" bash benchmarks/fa3_exp2.sh     # carry [".fa3src", ".fa3site"]
#
# A variant M:C computes the elements with (column % M) < C on the FMA pipe (4:1 = a quarter).
# Results: $OUT/fa3exp/<variant>/fa3_attention.json, build logs $OUT/fa3exp/build_<variant>.log.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$ROOT/bench_out}; mkdir -p "$OUT/fa3exp"
VARIANTS=${FA3_VARIANTS:-4:1 2:1}
n=$(echo $VARIANTS | wc -w); jobs=$(( $(nproc) / (n > 0 ? n : 1) )); [ "$jobs" -lt 2 ] && jobs=2
for var in $VARIANTS; do
  m=${var%%:*}; c=${var#*:}
  FA3_CARRIED=/nonexistent FA3_DTYPES=e4m3 FA3_BUILD_LIMIT=${FA3_BUILD_LIMIT:-200} FA3_SITE=/tmp/fa3exp_${m}_${c} FA3_WORK=/tmp/fa3exp_work_${m}_${c} \
    MAX_JOBS=$jobs OUT=/tmp/fa3exp_out_${m}_${c} FA3_PATCHES=benchmarks/fa3_exp2_fma.patch \
    NVCC_APPEND_FLAGS="-DFLASH_EXP2_POLY_MOD=$m -DFLASH_EXP2_POLY_CNT=$c" \
    bash "$ROOT/benchmarks/fa3_build.sh" > "$OUT/fa3exp/build_${m}_${c}.log" 2>&1 &
done
wait
BASE=/tmp/fa3exp_base; rm -rf "$BASE"; mkdir -p "$BASE" && tar -xzf "$ROOT/.fa3site/fa3site.tar.gz" -C "$BASE"
for site in "$BASE" $(for var in $VARIANTS; do echo /tmp/fa3exp_${var%%:*}_${var#*:}; done); do
  name=$(basename "$site" | sed 's/^fa3exp_//')
  if ! ls "$site"/flash_attn_3/_C*.so >/dev/null 2>&1; then echo "$name: no build"; continue; fi
  PYTHONPATH="$site:$ROOT${PYTHONPATH:+:$PYTHONPATH}" timeout 60 python3 "$ROOT/benchmarks/fa3_attention.py" \
    --shapes 14B-480P --kernels e4m3 --out "$OUT/fa3exp/$name" > "$OUT/fa3exp/time_$name.log" 2>&1
  python3 - "$OUT/fa3exp/$name/fa3_attention.json" "$name" <<'PY'
import json, sys
try:
    r = json.load(open(sys.argv[1]))["shapes"][0]["results"][0]
    print(f"{sys.argv[2]:>6}: with quantize {r.get('ms', 0):.2f} ms; kernel {r.get('attn_ms', 0):.2f} ms = {r.get('attn_tops', 0):.0f} TOPS; rel. L2 {r.get('rel_l2', 0):.3e}")
except Exception as exc:
    print(sys.argv[2], "failed:", exc)
PY
done
