"""HTTP request bodies -> a checked SamplingParams, and the error body every route answers with.

Both APIs arrive here as a flat dict of fields (multipart form values are strings, JSON values
typed) plus at most one uploaded image (bytes). Each field is converted to its type with a
one-line error naming it, and the request is then checked against the served checkpoint by
`prepare_request` (the same checks as the CLI: empty prompt, sizes the model cannot make, frames
not 4k+1, unknown solver, an image that is not an image), before anything is queued.

No request value ever becomes a file-system path: an image arrives as uploaded bytes or a base64
data URL (http URLs and paths are refused), and the output file is named after the job id.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import math
from typing import Any, Optional

from lightx2v.errors import InputError

# our fields beyond OpenAI's (prompt, model, seconds, size, input_reference)
EXTRA_FIELDS = {"negative_prompt": str, "num_frames": int, "num_inference_steps": int, "guidance_scale": float,
                "shift": float, "solver": str, "seed": int, "lora": str}
OPENAI_FIELDS = {"prompt": str, "model": str, "seconds": float, "size": str}
# a request field (SamplingParams) -> the name each API gives it, for the error's `param`
PARAM_NAMES = {"openai": {"image": "input_reference", "width": "size", "height": "size"},
               "task": {"image": "image_path", "num_frames": "target_video_length", "num_inference_steps": "infer_steps"},
               "ui": {}}
MAX_PROMPT_CHARS = 10_000
MAX_IMAGE_PIXELS = 4096 * 4096


class ApiError(Exception):
    """A 4xx answer: status, message, the field it is about, a machine code, extra headers."""

    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None,
                 headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers

    def body(self) -> dict:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code},
                "detail": self.message}


def convert(name: str, value: Any, kind: type) -> Any:
    """A field's value as `kind` (form strings converted); None and "" stay None."""
    if value is None or (isinstance(value, str) and value.strip() == "" and kind is not str):
        return None
    try:
        if kind is str:
            if not isinstance(value, str):
                raise ValueError
            return value
        if isinstance(value, bool) or isinstance(value, (dict, list)):
            raise ValueError
        if kind is int:
            text = value.strip() if isinstance(value, str) else None
            if text is not None and text.lstrip("+-").isdigit():
                return int(text)
            number = float(value)
            if not number.is_integer():
                raise ValueError
            return int(number)
        number = float(value)
        if not math.isfinite(number):
            raise ValueError
        return number
    except (ValueError, TypeError, OverflowError):
        what = {str: "a string", int: "an integer", float: "a number"}[kind]
        raise ApiError(400, f"{name} must be {what}, got {value!r:.60}", param=name, code="invalid_value") from None


def parse_size(text: str) -> tuple[int, int]:
    """'832x480' -> (width, height); a 400 naming `size` otherwise."""
    w, sep, h = text.lower().partition("x")
    if sep and w.strip().isdigit() and h.strip().isdigit() and len(text) <= 16:
        return int(w), int(h)
    raise ApiError(400, f"size must be WIDTHxHEIGHT such as 832x480, got {text!r:.40}", param="size", code="invalid_value")


def decode_data_url(text: str, name: str) -> bytes:
    """A base64 data URL (or bare base64) -> bytes. URLs to fetch and paths are refused."""
    if text.startswith(("http://", "https://", "file:", "/", ".", "~")):
        raise ApiError(400, f"{name} must be an uploaded file or a base64 data URL (data:image/png;base64,...); "
                            "this server fetches no URLs and reads no paths", param=name, code="invalid_value")
    data = text.split(",", 1)[1] if text.startswith("data:") and "," in text else text
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{name} is not valid base64 image data", param=name, code="invalid_value") from None


def check_image(data: bytes, name: str) -> bytes:
    """The bytes are a readable image of bounded size (PNG, JPEG, WebP), else a 400 naming `name`."""
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > MAX_IMAGE_PIXELS:
                raise ApiError(400, f"{name} is {im.width}x{im.height}; at most {MAX_IMAGE_PIXELS} pixels",
                               param=name, code="invalid_value")
            im.load()
    except ApiError:
        raise
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds (decompression bomb included)
        raise ApiError(400, f"{name} is not a readable image ({type(exc).__name__}); expected PNG, JPEG or WebP",
                       param=name, code="invalid_image") from None
    return data


@dataclasses.dataclass(frozen=True)
class Served:
    """What the routes need to know of the served checkpoint."""

    model_id: str
    mc: Any                 # ModelConfig
    fps: int
    loras: Any = None       # server.loras.LoraLibrary of --lora-dir (None: no LoRA per request)

    @property
    def is_image(self) -> bool:
        """An image model (its geometry makes one frame: Qwen-Image): /v1/images, not /v1/videos."""
        return self.mc.spec.geometry(self.mc).max_frames == 1


def frames_for_seconds(seconds: float, fps: int) -> int:
    """Seconds -> a 4k+1 frame count at the model's fps (at least 5)."""
    k = max(1, round(seconds * fps / 4))
    return 4 * k + 1


def checked_prompt(served: Served, fields: dict, what: str) -> str:
    """The request's prompt (non-empty, at most MAX_PROMPT_CHARS), its `model` (if given) checked to be the
    served one; an ApiError (400) naming the field otherwise. `what`: "video" or "image" (the message)."""
    prompt = convert("prompt", fields.get("prompt"), str)
    if prompt is None or not prompt.strip():
        raise ApiError(400, f"prompt is empty; give a text describing the {what}", param="prompt",
                       code="invalid_value")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ApiError(400, f"prompt is {len(prompt)} characters; at most {MAX_PROMPT_CHARS}", param="prompt",
                       code="invalid_value")
    model = convert("model", fields.get("model"), str)
    if model is not None and model != served.model_id:
        raise ApiError(400, f"model {model!r:.60} is not served here; this server serves {served.model_id!r}",
                       param="model", code="model_not_found")
    return prompt


def build_request(served: Served, fields: dict, image: Optional[bytes], api: str, last_image: Optional[bytes] = None):
    """(filled SamplingParams, request dict to store, meta) of a request's fields, checked against
    the checkpoint; an ApiError (400) naming the field otherwise. `last_image`: flf2v's last frame
    (checked bytes; the web UI sends it, the HTTP routes take one image)."""
    from lightx2v.config import SamplingParams
    from lightx2v.pipelines.request import prepare_request

    prompt = checked_prompt(served, fields, "video")
    values = {k: convert(k, fields.get(k), t) for k, t in EXTRA_FIELDS.items()}
    from lightx2v.server.loras import parse_job_loras

    loras = parse_job_loras(values.pop("lora"), served.loras)  # names offered by --lora-dir only
    width = height = None
    size = convert("size", fields.get("size"), str)
    if size is not None:
        width, height = parse_size(size)
    seconds = convert("seconds", fields.get("seconds"), float)
    if seconds is not None and not 0 < seconds <= 600:
        raise ApiError(400, f"seconds must be > 0 and at most 600, got {seconds:g}", param="seconds", code="invalid_value")
    if values["num_frames"] is None and seconds is not None:
        values["num_frames"] = frames_for_seconds(seconds, served.fps)
    params = SamplingParams(prompt=prompt, image=image, last_image=last_image, width=width, height=height, **values)
    try:
        filled = prepare_request(served.mc, params)
    except InputError as exc:  # the field named as this API calls it
        raise ApiError(400, str(exc), param=PARAM_NAMES.get(api, {}).get(exc.field, exc.field), code="invalid_value") from None
    request = dataclasses.replace(params, output_path=None).to_dict()
    frames_given = fields.get("num_frames") not in (None, "")
    shown = seconds if seconds is not None and not frames_given else None
    meta = {"api": api, "model": served.model_id, "prompt": prompt, "size": f"{filled.width}x{filled.height}",
            "seconds": f"{shown:g}" if shown is not None else f"{filled.num_frames / filled.fps:g}",
            "num_frames": filled.num_frames, "steps": filled.num_inference_steps}
    if loras:  # the worker applies them (dynamic LoRA) before the job; the UI's history shows them
        meta["loras"] = [[name, strength] for name, strength in loras]
    return filled, request, meta


# ---- the OpenAI Images API (POST /v1/images/generations; lightx2v.server.image_routes) -------------
# OpenAI's fields (prompt, model, n, size, response_format, output_format) and ours (negative_prompt, seed,
# steps or num_inference_steps, guidance_scale); quality, style, user, background and moderation are
# accepted and ignored (they have no meaning here).
IMAGE_FIELDS = {"n": int, "response_format": str, "output_format": str, "negative_prompt": str, "seed": int,
                "steps": int, "num_inference_steps": int, "guidance_scale": float}
RESPONSE_FORMATS = ("b64_json", "url")
IMAGE_FORMATS = {"png": "png", "webp": "webp", "jpeg": "jpg", "jpg": "jpg"}  # output_format -> extension
IMAGE_PARAM_NAMES = {"num_images": "n", "width": "size", "height": "size", "num_inference_steps": "steps",
                     "output_type": "output_format"}


def image_file_names(job_id: str, n: int, ext: str) -> list[str]:
    """The files an image job writes under the data dir's images/ (the output rule's NAME_i for n > 1)."""
    return [f"{job_id}.{ext}"] if n == 1 else [f"{job_id}_{i}.{ext}" for i in range(n)]


def build_image_request(served: Served, fields: dict, images: Optional[list] = None, api: str = "openai-images"):
    """(filled SamplingParams, request dict to store, meta) of an images/generations body (or, with the
    checked input `images` bytes, an images/edits one), checked against the checkpoint; an ApiError (400)
    naming the field (as OpenAI names it) otherwise. The images are stored in the job's request as the
    videos API stores its input image (SamplingParams.to_dict: PNG/JPEG bytes as base64)."""
    from lightx2v.config import SamplingParams
    from lightx2v.pipelines.request import prepare_request

    prompt = checked_prompt(served, fields, "image")
    v = {k: convert(k, fields.get(k), t) for k, t in IMAGE_FIELDS.items()}
    response_format = v["response_format"] or "b64_json"
    if response_format not in RESPONSE_FORMATS:
        raise ApiError(400, f"response_format must be b64_json or url, got {response_format!r:.40}",
                       param="response_format", code="invalid_value")
    fmt = (v["output_format"] or "png").lower()
    if fmt not in IMAGE_FORMATS:
        raise ApiError(400, f"output_format must be png, webp or jpeg, got {fmt!r:.40}", param="output_format",
                       code="invalid_value")
    if v["steps"] is not None and v["num_inference_steps"] is not None and v["steps"] != v["num_inference_steps"]:
        raise ApiError(400, "steps and num_inference_steps differ; give one", param="steps", code="invalid_value")
    width = height = None
    size = convert("size", fields.get("size"), str)
    if size not in (None, "auto"):
        width, height = parse_size(size)
    image = None
    if served.mc.task == "edit":  # one image: as the Edit pipeline takes it; several: a list (Edit-Plus)
        if not images:
            raise ApiError(400, "image is missing; an edit takes one or several input images (multipart `image` "
                                "or `image[]`)", param="image", code="invalid_value")
        image = images[0] if len(images) == 1 else list(images)
    params = SamplingParams(prompt=prompt, negative_prompt=v["negative_prompt"], width=width, height=height, image=image,
                            num_frames=1, num_inference_steps=v["steps"] or v["num_inference_steps"],
                            guidance_scale=v["guidance_scale"], seed=v["seed"], num_images=1 if v["n"] is None else v["n"],
                            output_type="jpeg" if fmt == "jpg" else fmt)
    try:
        filled = prepare_request(served.mc, params)
    except InputError as exc:
        raise ApiError(400, str(exc), param=IMAGE_PARAM_NAMES.get(exc.field, exc.field), code="invalid_value") from None
    meta = {"api": api, "kind": "image", "model": served.model_id, "prompt": prompt,
            "size": f"{filled.width}x{filled.height}", "n": filled.num_images, "steps": filled.num_inference_steps,
            "response_format": response_format, "output_format": params.output_type, "ext": IMAGE_FORMATS[fmt]}
    if images:
        meta["input_images"] = len(images)
    return filled, params.to_dict(), meta
