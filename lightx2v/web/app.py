"""The Gradio page: every request field of the served checkpoint, Generate / Cancel, progress, the
video, the seed used, and this session's history.

Two events generate, both through the job store (lightx2v.web.jobs):
  - the page's Generate button: a generator that queues the job, then follows its per-step
    progress into the progress bar and the status line, and ends with the video, the seed used
    and a history row (not part of the public API);
  - `api_name="/generate"` (a hidden trigger): the stable gradio_client endpoint. Its parameters
    are named as LightX2V.generate's (prompt, negative_prompt, image, last_image, height, width,
    num_frames, num_inference_steps, guidance_scale, shift, solver, seed), then `lora` (the HTTP
    API's per-job LoRAs: "NAME:STRENGTH,..." of --lora-dir), each with a default but the prompt;
    it returns the mp4.
The LoRA picker (with --lora-dir) is a multiselect of the offered files and a strength slider per
chosen file; Generate first writes them into the `lora` text it sends (shown on the page), then runs.
A bad request is one line in the page (gr.Error: the HTTP API's message, the same checks as the
CLI), never a traceback. Cancel stops the session's running job in the worker at its next step.

Shared with the image page (lightx2v.web.image_app): `follow_job` (follow one job into the status line
while Cancel can find it), `reattach_fn` (on page load, follow the newest queued / running job of the
page's kind: "ui" or "ui-images") and `_cancel`.
"""

# no `from __future__ import annotations`: gradio reads the handlers' gr.Request / gr.Progress
# parameters from their real annotations
import time
from pathlib import Path

from lightx2v.errors import InputError
from lightx2v.web import jobs

CUSTOM = "custom"
SAMPLING_DEFAULT = "checkpoint defaults"
SAMPLING_DISTILLED = "4-step distilled (LightX2V step/CFG distill: weights or LoRA)"
HISTORY_COLUMNS = ["job", "status", "prompt", "size", "frames", "steps", "guidance", "shift", "solver", "loras", "seed",
                   "seconds"]
LORA_STRENGTH_RANGE = (-2.0, 2.0)  # the slider's; the API takes -10 to 10
FOLLOW_TIMEOUT_S = 6 * 3600.0


def size_presets(mc) -> list[str]:
    """'WIDTHxHEIGHT' choices: the checkpoint's default size first, then the usual 480P / 720P
    landscape and portrait sizes (multiples of the family's size step), then custom."""
    d = mc.defaults
    out = [f"{d.width}x{d.height}"]
    for w, h in ((832, 480), (480, 832), (1280, 720), (720, 1280), (1280, 704), (704, 1280), (624, 624)):
        step = getattr(mc.spec.geometry, "size_multiple", 16)
        text = f"{w}x{h}"
        if w % step == 0 and h % step == 0 and text not in out:
            out.append(text)
    return out + [CUSTOM]


def sampling_choices(mc) -> tuple[list[str], str]:
    """(the sampling presets offered, the one selected). A checkpoint that is step-distilled (its
    files say so, or --preset named a distill preset) samples with its distilled settings by default
    (`mc.defaults` are those): offered and selected under its preset's name."""
    if mc.distill is not None:
        preset = getattr(mc.distill, "preset", None)
        what = preset.name if preset is not None else getattr(mc.distill, "evidence", "distilled")
        label = f"{mc.defaults.num_inference_steps}-step distilled: {what} (this checkpoint)"
        return [label], label
    return [SAMPLING_DEFAULT, SAMPLING_DISTILLED], SAMPLING_DEFAULT


def sampling_values(mc, choice: str) -> tuple:
    """(steps, guidance, shift, solver) of a sampling preset (the checkpoint's own for any but the
    generic distilled one)."""
    if choice == SAMPLING_DISTILLED:
        from lightx2v.models.wan.distill import DISTILL_DEFAULTS as d

        return d.num_inference_steps, d.guidance_scale, d.shift, d.solver
    d = mc.defaults
    return d.num_inference_steps, d.guidance_scale, d.shift_for(d.height, d.width), d.solver


def model_line(served, engine) -> str:
    mc = served.mc
    parts = [f"**{served.model_id}**: {mc.spec.title} {mc.task}"]
    if mc.distill is not None:
        parts.append(f"step-distilled ({getattr(mc.distill, 'name', 'preset')})")
    loras = [f"{Path(p).name} × {s:g}" for p, s in engine.lora.loras] if engine else []
    for dit, pairs in (engine.lora.per_dit.items() if engine else ()):
        loras += [f"{Path(p).name} × {s:g} ({dit})" for p, s in pairs]
    parts.append("LoRA merged: " + (", ".join(loras) if loras else "none"))
    library = getattr(served, "loras", None)
    parts.append(f"LoRAs per job: {len(library.names)} file(s) of --lora-dir" if library is not None
                 else "LoRAs per job: none (start with --lora-dir DIR)")
    return " · ".join(parts)


def _gr_error(exc: InputError):
    import gradio as gr

    return gr.Error(str(exc), print_exception=False)


def api_generate_fn(state):
    """The stable API: its parameter names are the API's (gradio reads them from this signature)."""
    import gradio as gr

    def generate(prompt, negative_prompt=None, image=None, last_image=None, height=None, width=None, num_frames=None,
                 num_inference_steps=None, guidance_scale=None, shift=None, solver=None, seed=None, lora=None,
                 progress=gr.Progress()):
        values = dict(prompt=prompt, negative_prompt=negative_prompt, height=height, width=width,
                      num_frames=num_frames, num_inference_steps=num_inference_steps,
                      guidance_scale=guidance_scale, shift=shift, solver=solver, seed=seed, lora=lora)
        try:
            job_id, _ = jobs.submit(state, values, image, last_image)
        except InputError as exc:
            raise _gr_error(exc) from None
        for update in jobs.follow(state, job_id, timeout_s=FOLLOW_TIMEOUT_S):
            progress(update.progress / 100, desc=update.status)
        if update.status != "completed":
            raise gr.Error(update.error or update.status, print_exception=False)
        return str(update.video)

    return generate


def session_of(request) -> str:
    """The browser session a handler serves (Cancel's key into the page's running-jobs map)."""
    return getattr(request, "session_hash", None) or "default"


def follow_job(state, running: dict, session: str, job_id: str, frame, progress=None, note: str = "", first=None):
    """Follow one job for a page (the video page's and the image page's Generate and re-attach): Cancel
    finds it in `running` under the session meanwhile. Yields `first` (the page's first outputs, when
    given: only once Cancel can find the job), then frame(status text) on every progress change
    ("in_progress: 40%" + note); returns the final Update (None if the follow timed out):
    `update = yield from follow_job(...)`."""
    running[session] = job_id
    update = None
    try:
        if first is not None:
            yield first
        for update in jobs.follow(state, job_id, timeout_s=FOLLOW_TIMEOUT_S):
            if progress is not None:
                progress(update.progress / 100, desc=f"{update.status} {update.progress}%")
            if not update.final:
                yield frame(f"{update.status}: {update.progress}%{note}")
    finally:
        running.pop(session, None)
    return update


def ui_generate_fn(state, running: dict):
    """The page's Generate: yields (video, seed used, status, history, history table) as it goes."""
    import gradio as gr

    def run(prompt, negative_prompt, image, last_image, height, width, num_frames, num_inference_steps,
            guidance_scale, shift, solver, seed, lora, history, request: gr.Request, progress=gr.Progress()):
        values = dict(prompt=prompt, negative_prompt=negative_prompt, height=height, width=width,
                      num_frames=num_frames, num_inference_steps=num_inference_steps,
                      guidance_scale=guidance_scale, shift=shift, solver=solver, seed=seed, lora=lora)
        start = time.monotonic()
        try:
            job_id, used = jobs.submit(state, values, image, last_image)
        except InputError as exc:
            raise _gr_error(exc) from None
        history = list(history or [])
        update = yield from follow_job(state, running, session_of(request), job_id,
                                       lambda text: (gr.skip(), gr.skip(), text, gr.skip(), gr.skip()), progress,
                                       first=(gr.skip(), str(used), f"queued ({job_id})", history, _table(history)))
        row = _row(state, job_id, update, values, used, time.monotonic() - start)
        history = [row] + history
        if update.status == "completed":
            yield str(update.video), str(used), f"done in {row['seconds']} s: {update.video.name}", history, _table(history)
        elif update.status == "cancelled":
            yield None, str(used), "cancelled", history, _table(history)
        else:
            raise gr.Error(update.error or "the job failed", print_exception=False)

    return run


def video_result(update) -> tuple:
    """A completed video job -> (the video component's value, the status line)."""
    return str(update.video), f"done: {update.video.name}"


def reattach_fn(state, running: dict, api: str = "ui", result=video_result):
    """On page load: follow the newest queued / running job this page kind started (`api`: the job's
    meta api, "ui" or "ui-images"; a reload, another tab): yields (result, status) as it goes, the
    result by result(update) once completed; Cancel acts on it. Nothing running: the page as it is."""
    import gradio as gr

    def reattach(request: gr.Request):
        job_id = jobs.active_ui_job(state, api)
        if job_id is None:
            yield gr.skip(), gr.skip()
            return
        update = yield from follow_job(state, running, session_of(request), job_id, lambda text: (gr.skip(), text),
                                       note=f" ({job_id}, started before this page loaded)")
        if update is not None and update.status == "completed":
            yield result(update)
        elif update is not None:
            yield gr.skip(), update.status if update.status == "cancelled" else f"failed: {update.error}"

    return reattach


def _row(state, job_id, update, values, seed, seconds) -> dict:
    from lightx2v.server.loras import describe_pairs

    job = state.store.get(job_id)
    meta = job.meta if job is not None else {}
    return {"job": job_id, "status": update.status, "prompt": (values.get("prompt") or "")[:80],
            "size": meta.get("size", ""), "frames": meta.get("num_frames", ""), "steps": meta.get("steps", ""),
            "guidance": values.get("guidance_scale"), "shift": values.get("shift"), "solver": values.get("solver"),
            "loras": describe_pairs(meta.get("loras")), "seed": seed, "seconds": f"{seconds:.1f}",
            "video": str(update.video) if update.video else None}


def _table(history: list) -> list:
    return [[row.get(c, "") for c in HISTORY_COLUMNS] for row in history]


def lora_spec(names, selected, *strengths) -> str:
    """The `lora` request text of the picker: each chosen file (in the order chosen) with its slider's
    strength ("a.safetensors:0.8,b.safetensors:1"); "" for none."""
    by_name = dict(zip(names, strengths))
    return ",".join(f"{n}:{float(by_name[n]):g}" for n in (selected or ()) if n in by_name)


def lora_picker(library):
    """The LoRA picker: (the `lora` text sent, the multiselect, one strength slider per offered file).
    Without --lora-dir: a disabled multiselect saying how to offer files, and an empty hidden text."""
    import gradio as gr

    if library is None:
        select = gr.Dropdown([], value=[], multiselect=True, label="LoRAs (per job)", interactive=False,
                             info="none offered: start with --lora-dir DIR to choose LoRA files here",
                             elem_id="lora-select")
        return gr.Textbox("", visible=False, elem_id="lora"), select, []
    names = list(library.names)
    select = gr.Dropdown(names, value=[], multiselect=True, label="LoRAs (per job)", elem_id="lora-select",
                         info="files of --lora-dir; each gets a strength below")
    low, high = LORA_STRENGTH_RANGE
    sliders = [gr.Slider(low, high, value=1.0, step=0.05, label=f"strength: {name}", visible=False)
               for name in names]
    spec = gr.Textbox("", label="LoRAs sent (NAME:STRENGTH)", interactive=False, elem_id="lora")
    return spec, select, sliders


def _wire_lora_picker(go, spec, select, sliders, library):
    """The picker's events; returns Generate's first event, which writes the `lora` text sent (so a
    click right after a slider moved sends its value); the generation runs `.then`."""
    import gradio as gr

    if library is None:
        return go.click(lambda: "", None, spec, api_visibility="private", queue=False)
    names = list(library.names)

    def compose(selected, *strengths):
        return lora_spec(names, selected, *strengths)

    def shown(selected):
        return [gr.update(visible=name in (selected or ())) for name in names]

    select.change(shown, select, sliders, api_visibility="private", queue=False)
    for box in [select, *sliders]:
        box.change(compose, [select, *sliders], spec, api_visibility="private", queue=False)
    return go.click(compose, [select, *sliders], spec, api_visibility="private", queue=False)


def build_blocks(state, engine=None):
    """The gr.Blocks of the page for a ServerState (its store, worker and served checkpoint)."""
    import gradio as gr

    from lightx2v.choices import SOLVER_NAMES

    if state.served.is_image:  # Qwen-Image t2i / edit: the image page (lightx2v.web.image_app)
        from lightx2v.web.image_app import build_image_blocks

        return build_image_blocks(state, engine)
    mc = state.served.mc
    d = mc.defaults
    running: dict = {}
    sampling_offered, sampling0 = sampling_choices(mc)
    steps0, guidance0, shift0, solver0 = sampling_values(mc, sampling0)
    library = getattr(state.served, "loras", None)
    with gr.Blocks(title="LightX2V", analytics_enabled=False) as blocks:
        gr.Markdown(f"# LightX2V\n{model_line(state.served, engine)}")
        with gr.Row():
            with gr.Column(scale=1):
                prompt = gr.Textbox(label="prompt", lines=3, placeholder="what the video shows", elem_id="prompt")
                negative = gr.Textbox(label="negative prompt", lines=2, placeholder="(the checkpoint's default)")
                image = gr.Image(label="first frame (image)", type="filepath", visible=mc.task in ("i2v", "flf2v", "ti2v"),
                                 sources=["upload", "clipboard"])
                last_image = gr.Image(label="last frame", type="filepath", visible=mc.task == "flf2v",
                                      sources=["upload", "clipboard"])
                with gr.Row():
                    preset = gr.Dropdown(size_presets(mc), value=f"{d.width}x{d.height}", label="size")
                    width = gr.Number(d.width, label="width", precision=0, minimum=16, elem_id="width")
                    height = gr.Number(d.height, label="height", precision=0, minimum=16, elem_id="height")
                with gr.Row():
                    frames = gr.Number(d.num_frames, label="frames (4k+1)", precision=0, minimum=1, elem_id="frames")
                    seed = gr.Number(-1, label="seed (-1: random)", precision=0, elem_id="seed")
                    dice = gr.Button("random seed", size="sm")
                sampling = gr.Dropdown(sampling_offered, value=sampling0, label="sampling preset", elem_id="sampling")
                with gr.Row():
                    steps = gr.Number(steps0, label="steps", precision=0, minimum=1, elem_id="steps")
                    guidance = gr.Number(guidance0, label="guidance", minimum=0)
                    shift = gr.Number(shift0, label="shift", minimum=0)
                    solver = gr.Dropdown(list(SOLVER_NAMES), value=solver0, label="solver", allow_custom_value=True)
                lora, lora_select, lora_sliders = lora_picker(library)
                with gr.Row():
                    go = gr.Button("Generate", variant="primary", elem_id="generate")
                    stop = gr.Button("Cancel", variant="stop", elem_id="cancel")
            with gr.Column(scale=1):
                video = gr.Video(label="result", buttons=["download"], elem_id="result", autoplay=False)
                status = gr.Textbox(label="status", interactive=False, elem_id="status")
                used = gr.Textbox(label="seed used", interactive=False, elem_id="seed-used")
                history = gr.State([])
                table = gr.Dataframe(headers=HISTORY_COLUMNS, value=[], label="history (this session)",
                                     interactive=False, wrap=True, elem_id="history")
        fields = [prompt, negative, image, last_image, height, width, frames, steps, guidance, shift, solver, seed,
                  lora]
        preset.change(lambda p: (gr.skip(), gr.skip()) if p == CUSTOM else tuple(int(v) for v in p.split("x")),
                      preset, [width, height], api_visibility="private", queue=False)
        for box in (width, height):  # a typed size is a custom one
            box.input(lambda: CUSTOM, None, preset, api_visibility="private", queue=False)
        sampling.change(lambda c: sampling_values(mc, c), sampling, [steps, guidance, shift, solver],
                        api_visibility="private", queue=False)
        dice.click(lambda: -1, None, seed, api_visibility="private", queue=False)
        started = _wire_lora_picker(go, lora, lora_select, lora_sliders, library)
        started.then(ui_generate_fn(state, running), fields + [history], [video, used, status, history, table],
                     api_visibility="private", concurrency_limit=None, show_progress_on=[video])
        def cancel(request: gr.Request) -> str:
            return _cancel(state, running, request)

        stop.click(cancel, None, status, api_visibility="private", concurrency_limit=None)
        blocks.load(reattach_fn(state, running), None, [video, status], api_visibility="private",
                    concurrency_limit=None)
        api_trigger = gr.Button(visible=False)
        api_trigger.click(api_generate_fn(state), fields, video, api_name="generate", concurrency_limit=None,
                          api_description="Generate a video (the stable API: parameters as LightX2V.generate's)")
    return blocks


def _cancel(state, running: dict, request):
    """Cancel's handler (both pages): stop the job this browser session follows. Once the job takes the
    cancel, the status is left to the follower, which writes "cancelled" when the worker stops: a
    "cancelling..." written here could land after it (a fast worker) and stay."""
    import gradio as gr

    job_id = running.get(session_of(request))
    if job_id is None:
        return "nothing is running"
    return gr.skip() if jobs.cancel(state, job_id) else "the job had finished already"
