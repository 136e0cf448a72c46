"""The names the command line offers as choices, importable without torch.

`lightx2v --help`, `lightx2v generate --help` and `lightx2v --version` must not import torch (it
takes seconds), yet the help lists every solver, attention backend and conversion layout. The
modules that implement them take their names from here (schedulers/__init__.py,
loading/convert.py); the attention registry (ops/attention.py) is checked against
ATTENTION_BACKENDS by a test, so a list cannot drift from what runs.
"""

from __future__ import annotations

# schedulers/: ODE solvers take any step count and have a diffusers counterpart each;
# fixed-step samplers run only the timesteps a model was distilled on
SOLVERS = ("unipc", "dpm++", "euler")
FIXED_STEP_SOLVERS = ("distill",)
SOLVER_NAMES = SOLVERS + FIXED_STEP_SOLVERS

# ops/attention.py's registry, in its order
ATTENTION_BACKENDS = ("reference", "torch_sdpa", "sdpa_cudnn", "sdpa_flash", "sdpa_efficient",
                      "flash_attn3", "fa3_fp8", "flash_attn", "sage_attn", "sage8", "ssta")

# the backends among them that round q, k, v (and the probabilities) to 8 bits: lossy, opt-in, never
# taken by "auto" (ops/attention.AUTO_ORDER), refused under ring attention (engine_config)
QUANTIZED_ATTENTION = ("fa3_fp8", "sage_attn", "sage8")

# ops/fused.py's registry ("auto": triton on CUDA, else torch)
KERNELS = ("torch", "triton")

# loading/convert.py: output layouts, quantization schemes, dtypes (config.parse_dtype reads them)
CONVERT_LAYOUTS = ("official", "diffusers", "blocks")
QUANT_CHOICES = ("w8a8-fp8", "w8a8-int8", "w8a16-fp8", "w8a16-int8", "w4a4-nvfp4", "w4a16-nvfp4")
DTYPES = ("bf16", "fp16", "fp32")
