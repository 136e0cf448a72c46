"""Quantized linear layers: schemes (one per file), `QuantLinear`, and the `apply_quant` transform.

`QUANT_SCHEMES` maps a scheme name to its (stateless) method object; `get_scheme(name)` is the
one place an unknown name becomes an error. Which scheme a checkpoint uses is read from its
tensors (dtype of `.weight`, shape of the scale), never from its file name:
lightx2v.loading.dit_files.inspect_dit_source.
"""

from __future__ import annotations

from types import MappingProxyType

from lightx2v.errors import InputError
from lightx2v.quant.base import QuantLinear, QuantScheme, apply_quant
from lightx2v.quant.fp8 import Fp8PerChannel, Fp8PerTensor, Fp8WeightOnly
from lightx2v.quant.int8 import Int8PerChannel, Int8WeightOnly
from lightx2v.quant.nvfp4 import Nvfp4, Nvfp4WeightOnly

QUANT_SCHEMES = MappingProxyType({s.name: s for s in (Int8PerChannel(), Fp8PerChannel(), Fp8PerTensor(),
                                                      Int8WeightOnly(), Fp8WeightOnly(),
                                                      Nvfp4(), Nvfp4WeightOnly())})


def get_scheme(name: str) -> QuantScheme:
    """The scheme object for a name ('w8a8-int8', 'w8a8-fp8', 'w8a16-int8', 'w8a16-fp8', 'fp8-scaled',
    'w4a4-nvfp4', 'w4a16-nvfp4')."""
    try:
        return QUANT_SCHEMES[name]
    except KeyError:
        raise InputError(f"unknown quantization scheme {name!r}; expected one of {', '.join(QUANT_SCHEMES)}") from None


def weight_only_for(scheme: QuantScheme) -> QuantScheme:
    """The weight-only scheme of the same stored format (itself if it is one): what a device that
    cannot run `scheme`'s low-bit GEMM computes a pre-quantized file with (w8a16-*, w4a16-nvfp4)."""
    for s in QUANT_SCHEMES.values():
        if s.storage == scheme.storage and s.name.split("-")[0].endswith("a16"):
            return s
    return scheme


__all__ = ["weight_only_for", "QUANT_SCHEMES", "get_scheme", "QuantScheme", "QuantLinear", "apply_quant"]
