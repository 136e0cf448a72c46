"""diffusers' WanPipeline end to end, at the shapes e2e.py runs ours, for the same-run comparison.

The models are built directly (random weights, bf16 for the transformer and text encoder, fp32 VAE
as diffusers' Wan examples load it), not read from files: load time is not compared, only the
generation. The tokenizer is the one e2e.py wrote next to our checkpoint. Timed: the pipeline call
(text encoding, 4 steps, VAE decode to float frames) and `export_to_video` (diffusers' mp4 writer),
the first call and a second one; peak GPU memory.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from random_weights import fill_random_


def build(ckpt: Path, size: str, device: str, compiled: bool):
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

    tokenizer = AutoTokenizer.from_pretrained(ckpt / "google" / "umt5-xxl")
    tiny = size == "tiny"
    t5_cfg = UMT5Config(vocab_size=len(tokenizer) if tiny else 256384, d_model=32 if tiny else 4096,
                        d_kv=8 if tiny else 64, d_ff=64 if tiny else 10240, num_heads=4 if tiny else 64,
                        num_layers=2 if tiny else 24, relative_attention_num_buckets=32,
                        relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
                        dense_act_fn="gelu_new", is_encoder_decoder=False, tie_word_embeddings=False)
    dit_kw = (dict(num_attention_heads=2, attention_head_dim=32, text_dim=32, freq_dim=32, ffn_dim=128, num_layers=2)
              if tiny else dict(num_attention_heads=40, attention_head_dim=128, text_dim=4096, freq_dim=256,
                                ffn_dim=13824, num_layers=40))
    default = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.bfloat16)  # built in bf16 directly: no fp32 copy of 14B weights
        with torch.device(device):
            text_encoder = UMT5EncoderModel(t5_cfg)
            transformer = WanTransformer3DModel(patch_size=(1, 2, 2), in_channels=16, out_channels=16,
                                                cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
                                                **dit_kw)
    finally:
        torch.set_default_dtype(default)
    fill_random_(text_encoder, device)
    fill_random_(transformer, device)
    with torch.device(device):
        vae = AutoencoderKLWan() if not tiny else AutoencoderKLWan(base_dim=16, z_dim=16, dim_mult=[1, 2, 2, 2],
                                                                  num_res_blocks=1, attn_scales=[],
                                                                  temperal_downsample=[False, True, True])
    fill_random_(vae, device)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        num_train_timesteps=1000, flow_shift=3.0)
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder.eval(), transformer=transformer.eval(),
                       vae=vae.eval(), scheduler=scheduler)
    if compiled:
        transformer.set_attention_backend("_native_cudnn")
        transformer.compile_repeated_blocks(fullgraph=True)
    return pipe


def run(name: str, ckpt: Path, args, compiled: bool) -> dict:
    from diffusers.utils import export_to_video

    row: dict = {"run": name, "implementation": "diffusers", "compiled": compiled}
    if args.device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    pipe = build(ckpt, args.size, args.device, compiled and args.device == "cuda")
    row["build_s"] = time.perf_counter() - t0
    h, w, f = (480, 832, 81) if args.size != "tiny" else (64, 64, 9)
    for attempt in ("first", "second"):
        t1 = time.perf_counter()
        frames = pipe(prompt="a red panda drinking tea in a bamboo forest, cinematic", height=h, width=w,
                      num_frames=f, num_inference_steps=4, guidance_scale=1.0, output_type="np",
                      generator=torch.Generator(args.device).manual_seed(0)).frames[0]
        if args.device == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        path = Path(args.tmp) / f"{name}_{attempt}.mp4"
        try:  # diffusers' writer (imageio-ffmpeg, else OpenCV) where it has one
            export_to_video(frames, str(path), fps=16)
            row["export"] = "diffusers export_to_video"
        except (ImportError, AttributeError):  # no writer (or diffusers 0.42's imageio backend check failing,
            # H200 2026-11-30): our writer (the same libx264 settings as ours, after the decode)
            from lightx2v.io.output import save
            from lightx2v.io.video import to_uint8

            save(to_uint8(frames), path, fps=16)
            row["export"] = "lightx2v.io.output.save (diffusers has no writer here)"
        t3 = time.perf_counter()
        row[f"{attempt}_pipeline_s"], row[f"{attempt}_export_s"], row[f"{attempt}_total_s"] = t2 - t1, t3 - t2, t3 - t1
    row["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else 0.0
    return row
