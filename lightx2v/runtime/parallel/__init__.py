"""Several GPUs: the engine's parallel step (after context_kv, under the cache, before compile).

    state.py     ParallelState: world, rank, the CFG / sequence (Ulysses x ring) groups; torchrun init
    sequence.py  Ulysses and ring sequence parallelism on the DiT's block stack, from its declared plan
    cfg.py       the two CFG branches on two ranks (a Guidance mode)
    ring.py      ring_attention (exact attention over a sequence sharded around a ring; branch ringvae)
    vae.py       decode_parallel (the VAE decode split spatially; branch ringvae)
    launch.py    a failure on one rank stops every rank with one message (the CLI)

`check_parallel(mc, cfg)` refuses before any weight is read what cannot run (a Ulysses degree that
does not divide the heads, a world size that is not the product of the degrees). `apply_parallel`
makes this rank's groups, keeps the state on the pipeline (`pipeline.parallel`: the guidance mode,
the shared seed, who writes the output) and wraps every DiT's block stack and self-attention. The
text and image encoders run on every rank (their inputs and weights are the same, so are their
outputs; no broadcast to wait for, and each rank holds them anyway), and every rank draws rank 0's
seed's noise on the CPU. Only rank 0 decodes and writes, unless vae_parallel splits the decode.
docs/parallel.md tells how to launch it.
"""

from __future__ import annotations

from lightx2v.errors import InputError
from lightx2v.runtime.parallel.state import ParallelState, check_world, environment, init_parallel  # noqa: F401


def possible_degrees(heads: int) -> list[int]:
    """The Ulysses degrees a model of `heads` attention heads allows (the divisors of heads)."""
    return [n for n in range(1, heads + 1) if heads % n == 0]


def check_parallel(mc, cfg, world: int | None = None) -> None:
    """`cfg` (ParallelConfig) against checkpoint `mc` and the launch, before any weight is read."""
    if not cfg.enabled:
        return
    check_world(cfg, world)
    pipe = mc.spec.pipeline()
    if hasattr(pipe, "for_model"):  # a family's dispatcher (Qwen-Image: t2i, edit, 2.1): the model's own class
        pipe = pipe.for_model(mc)
    title = getattr(pipe, "parallel_title", None) or mc.spec.title
    if not getattr(pipe, "parallel_ready", False):
        raise InputError(f"{title} pipelines do not run on several GPUs yet (cfg_parallel, ulysses, ring, "
                         "vae_parallel); run them on one", field="parallel")
    if cfg.ring > 1 and not getattr(pipe, "parallel_ring", True):
        raise InputError(f"ring {cfg.ring}: not built for {title}; use ulysses and / or cfg_parallel", field="ring")
    if cfg.vae_parallel and not getattr(pipe, "parallel_vae", True):
        raise InputError(f"vae_parallel: not built for {title}; rank 0 decodes", field="vae_parallel")
    heads = getattr(mc.dit, "num_heads", None)
    if cfg.sequence > 1 and heads is None:
        raise InputError(f"sequence parallelism (ulysses / ring) is not declared for {mc.spec.title} models; "
                         "use cfg_parallel", field="parallel")
    if cfg.ulysses > 1 and heads % cfg.ulysses:
        raise InputError(f"ulysses {cfg.ulysses} does not divide the model's {heads} attention heads; possible: "
                         f"{', '.join(map(str, possible_degrees(heads)))}", field="ulysses")
    if cfg.vae_parallel:
        try:
            from lightx2v.runtime.parallel import vae  # noqa: F401
        except ImportError:
            raise InputError("vae_parallel: the parallel VAE decode (lightx2v.runtime.parallel.vae) is not in this "
                             "build", field="vae_parallel") from None


def apply_parallel(pipeline, engine) -> list[str]:
    """The engine's parallel step: this rank's state on `pipeline.parallel`, each DiT's block stack
    sharded over the sequence group (ulysses x ring > 1); returns the log."""
    from lightx2v.runtime.parallel.sequence import apply_sequence_parallel

    cfg = engine.parallel
    state = init_parallel(cfg, engine.torch_device())
    pipeline.parallel = state
    log = [state.describe()]
    if cfg.cfg_parallel:
        log.append("cfg: cond on the CFG group's rank 0, uncond on its rank 1, one all-gather a step")
    if state.sp > 1:
        for name in pipeline.transformer_names:
            model = pipeline.components.get(name)
            if model is not None:
                n = apply_sequence_parallel(model, state)
                how = " x ".join(f"{k} {d}" for k, d in (("ulysses", state.ulysses), ("ring", state.ring)) if d > 1)
                log.append(f"{name}: tokens split over {state.sp} ranks ({how}), {n} self-attentions wrapped"
                           + (" (each ring block by the ring's exact kernel with its log-sum-exp: FA3 on Hopper where installed, else SDPA; not the self-attention backend)"
                              if state.ring > 1 else ""))
    return log


def guidance_kw(pipeline) -> dict:
    """The Guidance mode (and group) of a pipeline's engine: "parallel" across the CFG group when
    cfg_parallel is on, else the engine's cfg_mode."""
    state = getattr(pipeline, "parallel", None)
    if state is not None and state.cfg_group is not None:
        return {"mode": "parallel", "group": state.cfg_group}
    return {"mode": pipeline.engine.cfg_mode}


def decode(pipeline, vae, latents, on_chunk=None):
    """A pipeline's decode with vae_parallel: every rank decodes a spatial piece
    (lightx2v.runtime.parallel.vae), rank 0 gets the video [1, 3, F, H, W] (None elsewhere), then
    given whole to `on_chunk` (the streamed save). A Wan VAE blends its raw pieces as its tiled
    decode does (`decode_vae_parallel`; so does HunyuanVideo-1.5's); another decoder (a tiny VAE) its
    decoded pixels."""
    from lightx2v.runtime.parallel.vae import decode_parallel, decode_vae_parallel, has_raw_decoder

    group = pipeline.parallel.world_group
    if has_raw_decoder(vae):  # a Wan VAE's decoder (VAEDecode; Qwen-Image's), HunyuanVideo-1.5's
        video = decode_vae_parallel(vae, latents, group)
    else:
        video = decode_parallel(lambda z: vae.decode(z, progress=False), latents, group)
    if on_chunk is not None and video is not None:
        on_chunk(video)
    return video
