"""The Gradio page of an image model (Qwen-Image text-to-image, Qwen-Image-Edit*): prompt, negative
prompt, size presets, steps, guidance (the true CFG scale), seed, number of images, for an edit model
the input image(s); Generate / Cancel, a gallery of the results (each downloadable), this session's history.

lightx2v.web.app.build_blocks hands over to `build_image_blocks` when the served model makes images
(`Served.is_image`). The work goes through the same job store and worker as everything else
(lightx2v.web.jobs.submit_images -> the images API's request checks, meta api "ui-images"); the
images are the job's files under the data dir's images/. The status line follows the job's steps, Cancel
stops it, and a reloaded page re-attaches to the newest "ui-images" job still queued or running, showing
its images when it finishes: the video page's code (lightx2v.web.app: follow_job, reattach_fn, _cancel).

    `api_name="/generate"` (a hidden trigger): the stable gradio_client endpoint, parameters named as
    LightX2V.generate's: prompt, negative_prompt, image (an edit model's input images: a list of files;
    unused by text-to-image), height, width, num_inference_steps, guidance_scale, seed, num_images;
    it returns the image files (a list, one per image).

Sizes: the family's default square first, then Qwen-Image's published aspect presets (16:9 1664x928,
9:16, 4:3, 3:4, 3:2, 2:3; the 4:3 / 3:4 1140 side rounded down to 1136, a multiple of 16, as diffusers
floors it), then custom. An edit model adds "auto": the last input image's ratio at the VAE area.
"""

# no `from __future__ import annotations`: gradio reads the handlers' gr.Request / gr.Progress annotations
import time

from lightx2v.errors import InputError
from lightx2v.web import jobs
from lightx2v.web.app import _cancel, follow_job, reattach_fn, session_of

CUSTOM, AUTO = "custom", "auto (the last input image's ratio)"
# Qwen-Image's published aspect sizes (width, height), model card / diffusers example
ASPECT_SIZES = (("16:9", 1664, 928), ("9:16", 928, 1664), ("4:3", 1472, 1140), ("3:4", 1140, 1472),
                ("3:2", 1584, 1056), ("2:3", 1056, 1584))
HISTORY_COLUMNS = ["job", "status", "prompt", "size", "images", "steps", "guidance", "seed", "seconds"]
FOLLOW_TIMEOUT_S = 6 * 3600.0


def image_size_presets(mc) -> list[str]:
    """'WIDTHxHEIGHT' labels: (edit: auto,) the default square, the aspect presets, custom."""
    step = mc.spec.geometry(mc).size_multiple
    d = mc.defaults
    out = [AUTO] if mc.task == "edit" else []
    out.append(f"{d.width}x{d.height} (1:1)")
    for name, w, h in ASPECT_SIZES:
        out.append(f"{w // step * step}x{h // step * step} ({name})")
    return out + [CUSTOM]


def preset_size(label: str):
    """(width, height) of a preset label; (None, None) for auto; None for custom (keep the typed size)."""
    if label == CUSTOM:
        return None
    if label == AUTO:
        return None, None
    w, h = label.split(" ")[0].split("x")
    return int(w), int(h)


def _submit(state, values: dict, images) -> tuple[str, int]:
    """Check and queue one image job: (job id, seed used); a bad request is gr.Error's one line."""
    import gradio as gr

    try:
        return jobs.submit_images(state, values, images)
    except InputError as exc:
        raise gr.Error(str(exc), print_exception=False) from None


def api_generate_fn(state):
    """The stable API: its parameter names are LightX2V.generate's (gradio reads this signature)."""
    import gradio as gr

    def generate(prompt, negative_prompt=None, image=None, height=None, width=None, num_inference_steps=None,
                 guidance_scale=None, seed=None, num_images=None, progress=gr.Progress()):
        values = dict(prompt=prompt, negative_prompt=negative_prompt, height=height, width=width,
                      num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, seed=seed,
                      num_images=num_images)
        job_id, _ = _submit(state, values, image)
        for update in jobs.follow(state, job_id, timeout_s=FOLLOW_TIMEOUT_S):
            progress(update.progress / 100, desc=f"{update.status} {update.progress}%")
        if update.status == "cancelled":
            raise gr.Error("the job was cancelled", print_exception=False)
        if update.status != "completed":
            raise gr.Error(update.error or update.status, print_exception=False)
        return [str(p) for p in update.images]

    return generate


def gallery_result(update) -> tuple:
    """A completed image job -> (the gallery's value, the status line)."""
    return [str(p) for p in update.images], f"done: {len(update.images)} image(s)"


def ui_generate_fn(state, running: dict):
    """The page's Generate: yields (gallery, seed used, status, history, history table) as it goes; the
    status line follows the worker's steps (lightx2v.web.app.follow_job, the video page's)."""
    import gradio as gr

    def run(prompt, negative_prompt, image, height, width, num_inference_steps, guidance_scale, seed, num_images,
            history, request: gr.Request, progress=gr.Progress()):
        values = dict(prompt=prompt, negative_prompt=negative_prompt, height=height, width=width,
                      num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, seed=seed,
                      num_images=num_images)
        start = time.monotonic()
        job_id, used = _submit(state, values, image)
        history = list(history or [])
        update = yield from follow_job(state, running, session_of(request), job_id,
                                       lambda text: (gr.skip(), gr.skip(), text, gr.skip(), gr.skip()), progress,
                                       first=(gr.skip(), str(used), f"queued ({job_id})", gr.skip(), gr.skip()))
        if update.status == "failed":
            raise gr.Error(update.error or "the job failed", print_exception=False)
        job = state.store.get(job_id)
        meta = job.meta if job is not None else {}
        row = {"job": job_id, "status": update.status, "prompt": (prompt or "")[:80], "size": meta.get("size", ""),
               "images": meta.get("n", ""), "steps": meta.get("steps", ""), "guidance": guidance_scale, "seed": used,
               "seconds": f"{time.monotonic() - start:.1f}"}
        history = [row] + history
        table = [[r.get(c, "") for c in HISTORY_COLUMNS] for r in history]
        if update.status == "cancelled":
            yield gr.skip(), str(used), "cancelled", history, table
            return
        files, _ = gallery_result(update)
        yield files, str(used), f"done in {row['seconds']} s: {len(files)} image(s)", history, table

    return run


def build_image_blocks(state, engine=None):
    """The gr.Blocks of an image model's page."""
    import gradio as gr

    from lightx2v.web.app import model_line

    mc = state.served.mc
    d = mc.defaults
    edit = mc.task == "edit"
    presets = image_size_presets(mc)
    with gr.Blocks(title="LightX2V", analytics_enabled=False) as blocks:
        gr.Markdown(f"# LightX2V\n{model_line(state.served, engine)}")
        with gr.Row():
            with gr.Column(scale=1):
                prompt = gr.Textbox(label="prompt", lines=3, placeholder="what the image shows", elem_id="prompt")
                negative = gr.Textbox(label="negative prompt", lines=2, placeholder="(the checkpoint's default)")
                image = gr.File(label="input image(s), in order", file_count="multiple", file_types=["image"],
                                type="filepath", visible=edit, elem_id="images")
                with gr.Row():
                    preset = gr.Dropdown(presets, value=presets[0], label="size", elem_id="size")
                    w0, h0 = (None, None) if edit else (d.width, d.height)
                    width = gr.Number(w0, label="width", precision=0, minimum=16, elem_id="width")
                    height = gr.Number(h0, label="height", precision=0, minimum=16, elem_id="height")
                with gr.Row():
                    steps = gr.Number(d.num_inference_steps, label="steps", precision=0, minimum=1, elem_id="steps")
                    guidance = gr.Number(d.guidance_scale, label="guidance (true CFG scale; 1: off)", minimum=0)
                    count = gr.Number(1, label="images", precision=0, minimum=1, maximum=1 if edit else 16,
                                      elem_id="num-images")
                with gr.Row():
                    seed = gr.Number(-1, label="seed (-1: random)", precision=0, elem_id="seed")
                    dice = gr.Button("random seed", size="sm")
                with gr.Row():
                    go = gr.Button("Generate", variant="primary", elem_id="generate")
                    stop = gr.Button("Cancel", variant="stop", elem_id="cancel")
            with gr.Column(scale=1):
                gallery = gr.Gallery(label="result", format="png", buttons=["download", "fullscreen"],
                                     elem_id="result", interactive=False)
                status = gr.Textbox(label="status", interactive=False, elem_id="status")
                used = gr.Textbox(label="seed used", interactive=False, elem_id="seed-used")
                history = gr.State([])
                table = gr.Dataframe(headers=HISTORY_COLUMNS, value=[], label="history (this session)",
                                     interactive=False, wrap=True, elem_id="history")
        fields = [prompt, negative, image, height, width, steps, guidance, seed, count]

        def on_preset(label):
            size = preset_size(label)
            return (gr.skip(), gr.skip()) if size is None else size

        preset.change(on_preset, preset, [width, height], api_visibility="private", queue=False)
        for box in (width, height):  # a typed size is a custom one
            box.input(lambda: CUSTOM, None, preset, api_visibility="private", queue=False)
        dice.click(lambda: -1, None, seed, api_visibility="private", queue=False)
        running: dict = {}
        go.click(ui_generate_fn(state, running), fields + [history], [gallery, used, status, history, table],
                 api_visibility="private", concurrency_limit=None, show_progress_on=[gallery])

        def cancel(request: gr.Request) -> str:
            return _cancel(state, running, request)

        stop.click(cancel, None, status, api_visibility="private", concurrency_limit=None)
        # a reload (another tab) re-attaches to the page's running image job: the video page's mechanism
        blocks.load(reattach_fn(state, running, api="ui-images", result=gallery_result), None, [gallery, status],
                    api_visibility="private", concurrency_limit=None)
        out = gr.File(file_count="multiple", visible=False)
        api_trigger = gr.Button(visible=False)
        api_trigger.click(api_generate_fn(state), fields, out, api_name="generate", concurrency_limit=None,
                          api_description="Generate images (the stable API: parameters as LightX2V.generate's)")
    return blocks
