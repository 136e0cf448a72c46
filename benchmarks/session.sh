#!/usr/bin/env bash
# One device call: set up the carried wheels, then run the named parts in order, each under its own
# time limit, logs and results under $OUT (device notes: .library/device). Usage:
#   bash benchmarks/session.sh COMMIT part[:seconds] ...
# parts: tests (the GPU tests of our kernels, and the quantization tests on the device's torch), quant (quant_gemm.py), dit (dit_step.py, $DIT_CONFIGS, $DIT_ARGS: default --four-step, e.g. "--profile"),
#        e2e ($E2E_RUNS), offload (offload.py; offload_ours / offload_diffusers: bf16 ours, then diffusers'
#        resident and group-offloaded rows, each in its own process: both pinned copies do not fit the host), attn (attention_kernels.py),
#        sage8cfg (sage8_configs.py: sage8's kernel under explicit configurations, $SAGE8_CONFIGS), cache (cache.py),
#        family (family_dit.py: Qwen-Image / HunyuanVideo-1.5 DiTs vs diffusers, $FAMILIES, $HY_RES, $FAMILY_ARGS),
#        parallel (torchrun benchmarks/parallel.py on $NGPUS GPUs: the nvidia-h200-x2 kind),
#        qkprep (qk_prep.py: Wan's q/k RMSNorm + RoPE four ways), ffn (ffn_epilogue.py: the FFN's GELU epilogue),
#        tiling (vae_tiling.py), small (small_gpu.py: whole runs under a capped allocator, the planner's plans)
#        e2efam (e2e_family.py: whole HunyuanVideo-1.5 480P / Qwen-Image generations at full size, ours and diffusers,
#        $FAMILIES, $E2EFAM_CONFIGS: default / all / names; results under $OUT/e2efam)
#        fa3 (FlashAttention-3: fa3_build.sh builds it from the carried .fa3src, or takes a carried .fa3site,
#        then fa3_attention.py times it; both logs in $OUT/fa3.log, the module in $OUT/fa3site.tar.gz), fa3build (the build alone).
#        After fa3 (same call) or with .fa3site carried, `dit` with DIT_CONFIGS=compiled,compiled_fa3 runs the DiT on FA3.
set -u
COMMIT=$1; shift
OUT=${OUT:-bench_out}; mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl >/dev/null 2>&1
  export PYTHONPATH=/tmp/site:$PWD
  if [ -f .whl/ffmpeg.xz ] && [ ! -x /tmp/ffmpeg ]; then
    python3 -c "import lzma,shutil; shutil.copyfileobj(lzma.open('.whl/ffmpeg.xz'), open('/tmp/ffmpeg','wb'))" && chmod +x /tmp/ffmpeg
  fi
  [ -x /tmp/ffmpeg ] && export IMAGEIO_FFMPEG_EXE=/tmp/ffmpeg
else
  export PYTHONPATH=$PWD
fi
# FlashAttention-3, an optional build (benchmarks/fa3_build.sh): built into /tmp/fa3site by the fa3 part,
# or carried from an earlier call as .fa3site/ (the fa3site.tar.gz that call returned, or its contents).
FA3_SITE=${FA3_SITE:-/tmp/fa3site}; export FA3_SITE
if [ -f .fa3site/fa3site.tar.gz ]; then mkdir -p "$FA3_SITE" && tar -xzf .fa3site/fa3site.tar.gz -C "$FA3_SITE"
elif [ -f .fa3site/flash_attn_interface.py ]; then mkdir -p "$FA3_SITE" && cp -a .fa3site/. "$FA3_SITE/"; fi
export PYTHONPATH=$FA3_SITE:$PYTHONPATH
fa3_part() {  # $1: fa3 or fa3build, $2: seconds for the whole part; the build stops itself in time to report
  local build_limit=$(( $2 - 30 )) left rc
  [ "$1" = fa3 ] && build_limit=$(( $2 - 120 ))  # fa3_attention.py takes about a minute
  FA3_BUILD_LIMIT=${FA3_BUILD_LIMIT:-$build_limit} timeout "$2" bash benchmarks/fa3_build.sh > "$OUT/fa3.log" 2>&1; rc=$?
  # the timing runs whenever a module was built (a failed smoke check included: it records each kernel's error)
  [ "$1" = fa3 ] && ls "$FA3_SITE"/flash_attn_3/_C*.so >/dev/null 2>&1 || return $rc
  left=$(( $2 - ($(date +%s) - start) )); [ "$left" -lt 10 ] && left=10
  PYTHONUNBUFFERED=1 timeout "$left" python3 benchmarks/fa3_attention.py --out "$OUT" >> "$OUT/fa3.log" 2>&1 || rc=$?
  return $rc
}
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader > "$OUT/gpu.txt" 2>&1
for spec in "$@"; do
  part=${spec%%:*}; limit=${spec#*:}; [ "$limit" = "$spec" ] && limit=300
  start=$(date +%s)
  case $part in
    tests) timeout "$limit" python3 -m pytest -v --tb=short -rfE -p no:cacheprovider tests/ops/test_quant_kernels.py tests/quant/test_nvfp4.py tests/runtime/test_block_offload.py tests/ops/test_fused.py tests/ops/test_sage8.py tests/ops/test_flash_attn3.py tests/ops/test_attention.py tests/quant/test_quant.py tests/runtime/test_parallel_ring.py > "$OUT/tests.log" 2>&1 ;;
    quant) timeout "$limit" python3 benchmarks/quant_gemm.py --out "$OUT" --commit "$COMMIT" > "$OUT/quant.log" 2>&1 ;;
    dit) timeout "$limit" python3 benchmarks/dit_step.py --out "$OUT" --commit "$COMMIT" --shapes "${DIT_SHAPES:-14B-480p}" --configs "${DIT_CONFIGS:-compiled}" --no-per-layer ${DIT_ARGS:---four-step} > "$OUT/dit.log" 2>&1 ;;
    e2e) timeout "$limit" python3 benchmarks/e2e.py --out "$OUT" --commit "$COMMIT" --runs "${E2E_RUNS:-lossless}" > "$OUT/e2e.log" 2>&1 ;;
    offload) timeout "$limit" python3 benchmarks/offload.py --out "$OUT" --commit "$COMMIT" > "$OUT/offload.log" 2>&1 ;;
    cache) timeout "$limit" python3 benchmarks/cache.py --out "$OUT" --commit "$COMMIT" --methods "${CACHE_METHODS:-none,teacache,magcache,firstblock,taylorseer,diffusers_none,diffusers_firstblock,diffusers_taylorseer}" > "$OUT/cache.log" 2>&1 ;;
    small) timeout "$limit" python3 benchmarks/small_gpu.py --out "$OUT" --commit "$COMMIT" ${SMALL_CASES:+--cases "$SMALL_CASES"} > "$OUT/small.log" 2>&1 ;;
    offload_ours) timeout "$limit" python3 benchmarks/offload.py --out "$OUT/offload_ours" --commit "$COMMIT" --precisions bf16 --no-diffusers > "$OUT/offload_ours.log" 2>&1 ;;
    offload_diffusers) timeout "$limit" python3 benchmarks/offload.py --out "$OUT/offload_diffusers" --commit "$COMMIT" --precisions "" > "$OUT/offload_diffusers.log" 2>&1 ;;
    tinyvae) timeout "$limit" python3 benchmarks/tiny_vae.py --out "$OUT" --commit "$COMMIT" > "$OUT/tinyvae.log" 2>&1 ;;
    tiling) timeout "$limit" python3 benchmarks/vae_tiling.py --out "$OUT" > "$OUT/tiling.log" 2>&1 ;;
    family) timeout "$limit" python3 benchmarks/family_dit.py --out "$OUT" --commit "$COMMIT" --family "${FAMILIES:-qwen-image,hunyuan15}" --res "${HY_RES:-480p}" ${FAMILY_ARGS:-} > "$OUT/family.log" 2>&1 ;;
    parallel) NCCL_NVLS_ENABLE=0 timeout "$limit" torchrun --nproc-per-node "${NGPUS:-2}" benchmarks/parallel.py --out "$OUT" --commit "$COMMIT" --shapes "${PAR_SHAPES:-t2v-14b,i2v-14b}" > "$OUT/parallel.log" 2>&1 ;;
    e2efam) timeout "$limit" python3 benchmarks/e2e_family.py --out "$OUT/e2efam" --commit "$COMMIT" --family "${FAMILIES:-hunyuan15,qwen-image}" --configs "${E2EFAM_CONFIGS:-default}" > "$OUT/e2efam.log" 2>&1 ;;
    sage8cfg) timeout "$limit" python3 benchmarks/sage8_configs.py --out "$OUT" --commit "$COMMIT" ${SAGE8_CONFIGS:+--configs "$SAGE8_CONFIGS"} > "$OUT/sage8cfg.log" 2>&1 ;;
    attn) timeout "$limit" python3 benchmarks/attention_kernels.py --out "$OUT" > "$OUT/attn.log" 2>&1 ;;
    qkprep) timeout "$limit" python3 benchmarks/qk_prep.py --out "$OUT" > "$OUT/qkprep.log" 2>&1 ;;
    ffn) timeout "$limit" python3 benchmarks/ffn_epilogue.py --out "$OUT" > "$OUT/ffn.log" 2>&1 ;;
    fa3|fa3build) fa3_part "$part" "$limit" ;;
    *) echo "unknown part $part" ;;
  esac
  echo "$part rc=$? $(( $(date +%s) - start ))s" | tee -a "$OUT/parts.txt"
done
