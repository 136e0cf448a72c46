"""HunyuanVideo-1.5 declares itself: layout, components, DiT format, geometry, defaults, pipeline.

Text-to-video and image-to-video from the diffusers-format folders
(hunyuanvideo-community/HunyuanVideo-1.5-Diffusers-*: layouts.py) and the official release folder
(tencent/HunyuanVideo-1.5: official.py); the task is the folder's (its DiT variant's). The one place the generic layers learn about HunyuanVideo-1.5 (lightx2v.models.registry).
The DiT is not among `components`: the pipeline loads it (a diffusers transformer/ needs a whole-dict
conversion, dit_format.load_folder_dit; official keys, and --dit-path files, go through
lightx2v.loading.dit_files).
"""

from __future__ import annotations

import torch

from lightx2v.config import ModelConfig
from lightx2v.models.hunyuan15 import layouts
from lightx2v.models.hunyuan15.dit_format import HUNYUAN15_DIT_FORMAT
from lightx2v.models.registry import ComponentSpec, FamilySpec, Geometry, MemoryProfile, register_family


def _read(files, key_map=None):
    from lightx2v.models.wan.spec import _read as read

    return read(files, key_map)


def _build_llm(mc: ModelConfig):
    from lightx2v.models.hunyuan15.encoders import build_llm

    return build_llm(mc.arch.text_encoder)


def _read_llm(mc: ModelConfig):
    from lightx2v.models.hunyuan15.encoders import llm_key_from_file

    return _read(mc.files["text_encoder"], llm_key_from_file)


def _build_byt5(mc: ModelConfig):
    from lightx2v.models.hunyuan15.encoders import build_byt5

    return build_byt5(mc.arch.text_encoder_2)


def _read_byt5(mc: ModelConfig):
    from lightx2v.models.hunyuan15.encoders import read_byt5, read_official_byt5

    if mc.layout == "official":  # Glyph-SDXL-v2's byt5_model.pt
        return read_official_byt5(mc.files["text_encoder_2"][0])
    return read_byt5(_read(mc.files["text_encoder_2"]))


def _build_siglip(mc: ModelConfig):
    from lightx2v.models.hunyuan15.encoders import build_siglip

    return build_siglip(mc.arch.image_encoder)


def _read_siglip(mc: ModelConfig):
    from lightx2v.models.hunyuan15.encoders import siglip_key_from_file

    with torch.device("meta"):  # the installed transformers' own names (< 5: under vision_model)
        nested = hasattr(_build_siglip(mc), "vision_model")
    return _read(mc.files["image_encoder"], lambda k: siglip_key_from_file(k, nested))


def _build_vae(mc: ModelConfig):
    from lightx2v.models.hunyuan15.vae import HunyuanVideo15VAE

    return HunyuanVideo15VAE(mc.arch.vae)


def _read_vae(mc: ModelConfig):
    from lightx2v.models.hunyuan15.vae_keys import official_from_diffusers

    return _read(mc.files["vae"], official_from_diffusers if mc.layout == "diffusers" else None)


# ---- the tiny VAE (TAEHV for the HunyuanVideo-1.5 latents; the Wan specs' component, this family's map) ----


def _vae_needed(mc: ModelConfig) -> bool:
    from lightx2v.models.wan.spec import vae_needed

    return vae_needed(mc)


def _tiny_latents(mc: ModelConfig) -> tuple[str, tuple, tuple]:
    """The DiT's latents are (mu - shift) * scaling_factor: raw = latents * (1 / scaling_factor) + shift."""
    v = mc.arch.vae
    z = v.latent_channels
    return "hunyuanvideo-1.5", (float(v.shift_factor or 0.0),) * z, (1.0 / v.scaling_factor,) * z


def _tiny_vae_component():
    from lightx2v.models.wan.spec import tiny_vae_component

    return tiny_vae_component(_tiny_latents)


COMPONENTS = (
    ComponentSpec("text_encoder", "text encoder", _build_llm, _read_llm),
    ComponentSpec("text_encoder_2", "byT5 glyph encoder", _build_byt5, _read_byt5),
    # image-to-video only: SigLIP (transformers' SiglipVisionModel; the file's names are its own)
    ComponentSpec("image_encoder", "SigLIP image encoder", _build_siglip,
                  _read_siglip, needed=lambda mc: mc.task == "i2v"),
    # fp32 as every VAE of lightx2v (engine.vae_dtype changes it); with a tiny VAE, t2v does not load it
    ComponentSpec("vae", "VAE", _build_vae, _read_vae, dtype=lambda dt: torch.float32, needed=_vae_needed),
    # -- tiny VAE (tiny_vae= / --tiny-vae): taehv1_5 / lighttaehy1_5 (lightx2v.models.wan.taehv) --
    _tiny_vae_component(),
)

TRAINED_SIZE = (720, 1280)   # the 720p models' bucket at 16:9
TRAINED_FRAMES = 121


def geometry(mc: ModelConfig) -> Geometry:
    """Sides multiples of 16 (VAE stride 16 x patch 1), 4k+1 frames, 32 latent channels."""
    v, (pt, ph, pw) = mc.arch.vae, mc.dit.patch_size
    s, t = v.ffactor_spatial, v.ffactor_temporal
    return Geometry(size_multiple=s * ph, frame_step=t, latent_channels=v.latent_channels, stride=(t, s, s),
                    size_reason=f"VAE stride {s} x patch {ph}", patch=(pt, ph, pw), trained_size=TRAINED_SIZE,
                    trained_frames=TRAINED_FRAMES)


def memory(mc: ModelConfig, dtype: torch.dtype) -> MemoryProfile:
    """HunyuanVideo-1.5's activation costs at compute dtype `dtype` (s bytes an element), in bytes, one video.
    Counted from the code, not measured (no GPU run yet): runtime/memory.py's refusals read it as a lower bound.

    DiT, per image token (C = hidden_size, d = head dim), the tensors alive at a block's peak, the image
    MLP's GELU (dit_blocks.MMDoubleStreamBlock): forward's embedded stream (4C, held while run_blocks
    runs), the block's input stream (4C) and the stream after the attention residual (4C), the joint
    attention output (s C, alive through both MLPs), the fp32 modulated MLP input (4C) and its cast
    (s C), the MLP's hidden state and its GELU (4 s C each), and the RoPE table (4 d):
    (16 + 10 s) C + 4 d. The conditioning stream (at most TEXT_LEN text + GLYPH_LEN glyph tokens, + 729
    SigLIP tokens for i2v) goes through the same layers: its share is folded in per image token at the
    trained size (720 x 1280 x 121: 111,600 tokens; about +1%), as Qwen-Image does.
    VAE decode: the reference's VAE decodes the whole clip at once (no time chunks) in 256 px tiles by
    default (the pipeline's VAETiling): per pixel-frame of a tile, three full-resolution feature maps of
    the decoder's first width c0 in fp32 (a causal conv's padded input, its output and the residual):
    3 x c0 x 4 bytes.
    Text encoder (Qwen2.5-VL-7B's language model, transformers, SDPA), per prompt of n = 1108 tokens
    (crop_start + text_len): n x (4 hidden + 3 intermediate) x s for the layer's working set, the causal
    mask n^2 s, and every layer's hidden states, which the reference asks for (output_hidden_states):
    (layers + 1) x n x hidden x s. The byT5 encoder (256 tokens, 1472 wide) is small beside it.
    With a tiny VAE (t2v): its decode working set per pixel of one chunk (taehv.decode_pixel_bytes), untiled.
    """
    from lightx2v.models.hunyuan15.text import CROP_START, GLYPH_LEN, TEXT_LEN

    s, d = dtype.itemsize, mc.dit
    per_token = (16 + 10 * s) * d.hidden_size + 4 * d.head_dim
    cond = TEXT_LEN + GLYPH_LEN + (729 if mc.task == "i2v" else 0)
    _, th, tw = geometry(mc).token_grid(1, *TRAINED_SIZE)
    tt = geometry(mc).token_grid(TRAINED_FRAMES, *TRAINED_SIZE)[0]
    share = cond / (tt * th * tw)
    te, n = mc.arch.text_encoder, CROP_START + TEXT_LEN
    text = n * (4 * te.hidden_size + 3 * te.intermediate_size) * s + n * n * s
    text += (te.num_hidden_layers + 1) * n * te.hidden_size * s
    vae = dict(pixel_bytes=3 * mc.arch.vae.block_out_channels[0] * 4, vae_tile=mc.arch.vae.sample_size,
               vae_whole_clip=True)
    if mc.tiny_vae is not None and mc.task == "t2v":  # TAEHV decodes untiled, one latent frame at a time
        from lightx2v.models.wan.taehv import decode_pixel_bytes

        vae = dict(pixel_bytes=decode_pixel_bytes(mc.tiny_vae.config), vae_tile=None, vae_whole_clip=False)
    return MemoryProfile(token_bytes=per_token * (1 + share), attention_heads=d.heads_num, text_bytes=text, **vae)


def refine(mc: ModelConfig, *, dit_path=None, preset=None, hints=()) -> ModelConfig:
    """A user's DiT file (--dit-path: a LightX2V distilled or quantized file ...), then the 4-step
    distilled preset (named, or assumed from the file's name): distill.py."""
    from lightx2v.models.hunyuan15.distill import with_distill, with_dit_file

    if dit_path is not None:
        mc = with_dit_file(mc, dit_path)
    names = tuple(str(h) for h in ((dit_path,) if dit_path else ()))
    return with_distill(mc, preset, names)


def describe(mc: ModelConfig) -> dict:
    out = {"size": HUNYUAN15_DIT_FORMAT.describe(mc.dit), "tokenizer": mc.files["tokenizer"],
           "glyph tokenizer": mc.files["tokenizer_2"]}
    if "variant" in mc.files:  # the official release: which transformer/<variant>
        out["variant"] = mc.files["variant"]
    return out


def _pipeline():
    from lightx2v.pipelines.hunyuan15 import Hunyuan15Pipeline

    return Hunyuan15Pipeline


HUNYUAN15 = register_family(FamilySpec(
    name="hunyuanvideo-1.5", title="HunyuanVideo-1.5", tasks=layouts.SUPPORTED_TASKS, layouts=("diffusers", "official"),
    recognise=layouts.recognise, model_config=layouts.read_config, refine=refine, geometry=geometry,
    pipeline=_pipeline, components=COMPONENTS, dit_format=HUNYUAN15_DIT_FORMAT, describe=describe,
    presets=("hunyuanvideo-1.5-t2v-480p-distill",), memory=memory, widths=((2048, "HunyuanVideo-1.5 8.3B"),),
))
