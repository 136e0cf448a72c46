"""The UMT5-XXL text encoder of Wan2.1 (encoder half of T5, "umt5" flavour).

Design: a plain `nn.Module` whose parameter names are the keys of the official checkpoint
`models_t5_umt5-xxl-enc-bf16.pth` (Wan-Video/Wan2.1 `wan/modules/t5.py`, class `T5Encoder`):

    token_embedding.weight
    blocks.{i}.norm1.weight                       RMS norm before attention
    blocks.{i}.attn.{q,k,v,o}.weight              no biases, no 1/sqrt(d) scaling (T5)
    blocks.{i}.pos_embedding.embedding.weight     per-block relative position bias (umt5)
    blocks.{i}.norm2.weight                       RMS norm before the feed-forward
    blocks.{i}.ffn.gate.0.weight                  gated GELU(tanh): fc2(fc1(x) * gelu(gate(x)))
    blocks.{i}.ffn.fc1.weight / ffn.fc2.weight
    norm.weight                                   final RMS norm

The numerics follow the reference step for step (norm statistics and softmax in fp32, the
GELU written out as the reference writes it, the fp16 overflow clamp), so a bf16 run matches
the official encoder. Dropout is left out: this is inference only. The relative-position
buckets depend only on the sequence length, so they are computed once per forward and shared
by all blocks (the reference recomputes them in every block; same values).

The diffusers layout stores a transformers `UMT5EncoderModel`; `t5_key_from_transformers`
renames its keys to the official ones.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from lightx2v.errors import CheckpointError

__all__ = ["UMT5Config", "UMT5Encoder", "encode_text", "relative_position_bucket", "t5_key_from_transformers"]


@dataclass(frozen=True)
class UMT5Config:
    """Architecture of the encoder; the defaults are umt5-xxl as Wan2.1 uses it."""

    vocab_size: int = 256384
    dim: int = 4096
    dim_attn: int = 4096  # num_heads * head_dim
    dim_ffn: int = 10240
    num_heads: int = 64
    num_layers: int = 24
    num_buckets: int = 32
    max_distance: int = 128
    shared_pos: bool = False  # False: one relative embedding per block (umt5); True: one shared (t5)
    eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.dim_attn % self.num_heads:
            raise CheckpointError(f"T5 dim_attn {self.dim_attn} is not a multiple of num_heads {self.num_heads}")

    @classmethod
    def from_transformers(cls, config: Mapping[str, Any]) -> "UMT5Config":
        """Read a transformers UMT5 `config.json` (diffusers layout: `text_encoder/config.json`)."""
        model_type = config.get("model_type", "umt5")
        if model_type != "umt5":
            raise CheckpointError(f"text encoder config has model_type {model_type!r}, expected 'umt5'")
        proj = config.get("feed_forward_proj", "gated-gelu")
        if proj != "gated-gelu":
            raise CheckpointError(f"text encoder feed_forward_proj is {proj!r}, expected 'gated-gelu' (umt5)")
        need = ("vocab_size", "d_model", "d_kv", "d_ff", "num_heads", "num_layers")
        missing = [k for k in need if k not in config]
        if missing:
            raise CheckpointError(f"text encoder config.json lacks {', '.join(missing)}")
        return cls(
            vocab_size=int(config["vocab_size"]),
            dim=int(config["d_model"]),
            dim_attn=int(config["d_kv"]) * int(config["num_heads"]),
            dim_ffn=int(config["d_ff"]),
            num_heads=int(config["num_heads"]),
            num_layers=int(config["num_layers"]),
            num_buckets=int(config.get("relative_attention_num_buckets", 32)),
            max_distance=int(config.get("relative_attention_max_distance", 128)),
            shared_pos=False,
            eps=float(config.get("layer_norm_epsilon", 1e-6)),
        )


def _fp16_clamp(x: torch.Tensor) -> torch.Tensor:
    """The reference clamps fp16 activations to the finite range once one overflows to inf.

    Written with `torch.where` so that it needs no host sync; other dtypes pass unchanged.
    """
    if x.dtype != torch.float16:
        return x
    bound = torch.finfo(torch.float16).max - 1000
    return torch.where(torch.isinf(x).any(), x.clamp(-bound, bound), x)


def relative_position_bucket(
    lq: int, lk: int, num_buckets: int, max_distance: int, bidirectional: bool, device: torch.device | None = None
) -> torch.Tensor:
    """Bucket index of each (query, key) offset, as T5 defines it. Returns [lq, lk] long.

    Half the buckets (per direction when bidirectional) hold exact offsets 0..max_exact-1, the
    rest grow logarithmically up to `max_distance`; farther offsets share the last bucket.
    The float expression keeps the reference's order of operations so boundaries round alike.
    """
    rel = torch.arange(lk, device=device)[None, :] - torch.arange(lq, device=device)[:, None]
    if bidirectional:
        num_buckets //= 2
        buckets = (rel > 0).long() * num_buckets
        rel = rel.abs()
    else:
        buckets = torch.zeros_like(rel)
        rel = -rel.clamp(max=0)
    max_exact = num_buckets // 2
    # clamp(min=1) only avoids log(0); those offsets take the exact branch below
    large = max_exact + (
        torch.log(rel.clamp(min=1).float() / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    ).long()
    large = large.clamp(max=num_buckets - 1)
    return buckets + torch.where(rel < max_exact, rel, large)


class T5LayerNorm(nn.Module):
    """RMS norm without bias; the statistic is taken in fp32."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, L, C]; the product is fp32 (type promotion), brought back to a half weight dtype
        x = x * torch.rsqrt(x.float().pow(2).mean(dim=-1, keepdim=True) + self.eps)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            x = x.type_as(self.weight)
        return self.weight * x


class GELUTanh(nn.Module):
    """tanh-approximated GELU, written out as the reference does (same rounding in bf16)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class T5RelativeEmbedding(nn.Module):
    """Learned bias per (bucket, head)."""

    def __init__(self, num_buckets: int, num_heads: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_buckets, num_heads)

    def forward(self, buckets: torch.Tensor) -> torch.Tensor:
        # buckets: [Lq, Lk] long -> bias [1, N, Lq, Lk]
        return self.embedding(buckets).permute(2, 0, 1).unsqueeze(0).contiguous()


class T5Attention(nn.Module):
    """Multi-head self-attention with an additive bias and no score scaling."""

    def __init__(self, dim: int, dim_attn: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim_attn // num_heads
        self.q = nn.Linear(dim, dim_attn, bias=False)
        self.k = nn.Linear(dim, dim_attn, bias=False)
        self.v = nn.Linear(dim, dim_attn, bias=False)
        self.o = nn.Linear(dim_attn, dim, bias=False)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        # x: [B, L, C]; bias: [B or 1, N, L, L] (position bias, dtype min at padded keys)
        b, n, d = x.size(0), self.num_heads, self.head_dim
        q = self.q(x).view(b, -1, n, d).transpose(1, 2)  # [B, N, L, D]
        k = self.k(x).view(b, -1, n, d).transpose(1, 2)
        v = self.v(x).view(b, -1, n, d).transpose(1, 2)
        # explicit scores (not SDPA) so the bf16 rounding matches the reference; the
        # encoder runs once per prompt, its cost is negligible next to the DiT
        attn = torch.matmul(q, k.transpose(-1, -2)) + bias  # [B, N, L, L]
        attn = F.softmax(attn.float(), dim=-1).type_as(attn)
        x = torch.matmul(attn, v).transpose(1, 2).reshape(b, -1, n * d)  # [B, L, N*D]
        return self.o(x)


class T5FeedForward(nn.Module):
    """Gated GELU feed-forward: fc2(fc1(x) * gelu(gate(x)))."""

    def __init__(self, dim: int, dim_ffn: int) -> None:
        super().__init__()
        # a Sequential so the checkpoint key is `gate.0.weight`, as in the official file
        self.gate = nn.Sequential(nn.Linear(dim, dim_ffn, bias=False), GELUTanh())
        self.fc1 = nn.Linear(dim, dim_ffn, bias=False)
        self.fc2 = nn.Linear(dim_ffn, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x) * self.gate(x))


class T5SelfAttention(nn.Module):
    """One pre-norm encoder block: attention then feed-forward, each residual."""

    def __init__(self, cfg: UMT5Config) -> None:
        super().__init__()
        self.norm1 = T5LayerNorm(cfg.dim, cfg.eps)
        self.attn = T5Attention(cfg.dim, cfg.dim_attn, cfg.num_heads)
        self.norm2 = T5LayerNorm(cfg.dim, cfg.eps)
        self.ffn = T5FeedForward(cfg.dim, cfg.dim_ffn)
        self.pos_embedding = None if cfg.shared_pos else T5RelativeEmbedding(cfg.num_buckets, cfg.num_heads)

    def forward(
        self, x: torch.Tensor, buckets: torch.Tensor, pad: torch.Tensor | None, pos_bias: torch.Tensor | None
    ) -> torch.Tensor:
        # x: [B, L, C]; buckets: [L, L]; pad: [B, 1, 1, L] bool (True = padded key) or None
        bias = pos_bias if self.pos_embedding is None else self.pos_embedding(buckets)  # [1, N, L, L]
        if pad is not None:
            bias = torch.where(pad, torch.finfo(x.dtype).min, bias.to(x.dtype))  # [B, N, L, L]
        x = _fp16_clamp(x + self.attn(self.norm1(x), bias.to(x.dtype)))
        return _fp16_clamp(x + self.ffn(self.norm2(x)))


class UMT5Encoder(nn.Module):
    """Token ids -> hidden states [B, L, dim]; the official `T5Encoder` for inference."""

    # nothing is kept in fp32: the official encoder runs entirely in the load dtype (bf16)
    _keep_in_fp32: tuple[str, ...] = ()
    # the nn.ModuleList attribute holding the repeated blocks (for offload / compile transforms)
    _repeated_blocks: tuple[str, ...] = ("blocks",)
    # the linears a quantizer may touch (EngineConfig.quant_text_encoder): the blocks' attention and
    # feed-forward projections; the token embedding, the norms and the relative position bias stay
    _quant_linears = r"blocks\.\d+\.(attn\.(q|k|v|o)|ffn\.(gate\.0|fc1|fc2))"

    def __init__(self, cfg: UMT5Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.pos_embedding = T5RelativeEmbedding(cfg.num_buckets, cfg.num_heads) if cfg.shared_pos else None
        self.blocks = nn.ModuleList(T5SelfAttention(cfg) for _ in range(cfg.num_layers))
        self.norm = T5LayerNorm(cfg.dim, cfg.eps)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        # ids: [B, L] long; mask: [B, L] (nonzero = real token) or None -> [B, L, dim]
        x = self.token_embedding(ids)
        length = ids.size(1)
        buckets = relative_position_bucket(
            length, length, self.cfg.num_buckets, self.cfg.max_distance, bidirectional=True, device=ids.device
        )
        pos_bias = self.pos_embedding(buckets) if self.pos_embedding is not None else None
        pad = None if mask is None else (mask == 0).view(ids.size(0), 1, 1, length)
        for block in self.blocks:
            x = block(x, buckets, pad, pos_bias)
        return self.norm(x)


@torch.no_grad()
def encode_text(encoder: UMT5Encoder, ids: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """Per prompt, the hidden states of its real tokens: a list of [L_i, dim].

    This is what the official `T5EncoderModel.__call__` returns; the DiT pads each back with
    zeros to its text length. `ids` and `mask` ([B, L]) are moved to the encoder's device.
    """
    device = encoder.token_embedding.weight.device
    ids, mask = ids.to(device), mask.to(device)
    lengths = mask.gt(0).sum(dim=1).tolist()
    out = encoder(ids, mask)  # [B, L, dim]
    return [u[:n] for u, n in zip(out, lengths)]


# transformers UMT5EncoderModel key -> official key; None drops a tied duplicate
_TRANSFORMERS_RENAMES: tuple[tuple[re.Pattern[str], str | None], ...] = tuple(
    (re.compile(p), r)
    for p, r in (
        (r"shared\.weight", "token_embedding.weight"),
        (r"encoder\.embed_tokens\.weight", None),  # tied to shared.weight
        (r"encoder\.block\.(\d+)\.layer\.0\.SelfAttention\.([qkvo])\.weight", r"blocks.\1.attn.\2.weight"),
        (
            r"encoder\.block\.(\d+)\.layer\.0\.SelfAttention\.relative_attention_bias\.weight",
            r"blocks.\1.pos_embedding.embedding.weight",
        ),
        (r"encoder\.block\.(\d+)\.layer\.0\.layer_norm\.weight", r"blocks.\1.norm1.weight"),
        (r"encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.wi_0\.weight", r"blocks.\1.ffn.gate.0.weight"),  # GELU'd
        (r"encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.wi_1\.weight", r"blocks.\1.ffn.fc1.weight"),  # linear
        (r"encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.wo\.weight", r"blocks.\1.ffn.fc2.weight"),
        (r"encoder\.block\.(\d+)\.layer\.1\.layer_norm\.weight", r"blocks.\1.norm2.weight"),
        (r"encoder\.final_layer_norm\.weight", "norm.weight"),
    )
)


def t5_key_from_transformers(key: str) -> str | None:
    """Rename a transformers `UMT5EncoderModel` key to the official one.

    `encoder.embed_tokens.weight` (tied to `shared.weight`) is dropped; keys that are not
    known are returned unchanged so that `load_into` reports them.
    """
    for pattern, repl in _TRANSFORMERS_RENAMES:
        if pattern.fullmatch(key):
            return None if repl is None else pattern.sub(repl, key)
    return key
