"""The Gradio page: every request field of the served checkpoint, Generate / Cancel, progress, the
video, the seed used, and this session's history.

Two events generate, both through the job store (lightx2v.web.jobs):
  - the page's Generate button: a generator that queues the job, then follows its per-step
    progress into the progress bar and the status line, and ends with the video, the seed used
    and a history row (not part of the public API);
  - `api_name="/generate"` (a hidden trigger): the stable gradio_client endpoint. Its parameters
    are named as LightX2V.generate's (prompt, negative_prompt, image, last_image, height, width,
    num_frames, num_inference_steps, guidance_scale, shift, solver, seed), each with a default
    but the prompt; it returns the mp4.
A bad request is one line in the page (gr.Error: the HTTP API's message, the same checks as the
CLI), never a traceback. Cancel stops the session's running job in the worker at its next step.
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
HISTORY_COLUMNS = ["job", "status", "prompt", "size", "frames", "steps", "guidance", "shift", "solver", "seed", "seconds"]
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


def sampling_values(mc, choice: str) -> tuple:
    """(steps, guidance, shift, solver) of a sampling preset."""
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
    parts.append("LoRA: " + (", ".join(loras) if loras else "none (start with --lora FILE:STRENGTH)"))
    return " · ".join(parts)


def _gr_error(exc: InputError):
    import gradio as gr

    return gr.Error(str(exc), print_exception=False)


def api_generate_fn(state):
    """The stable API: its parameter names are the API's (gradio reads them from this signature)."""
    import gradio as gr

    def generate(prompt, negative_prompt=None, image=None, last_image=None, height=None, width=None, num_frames=None,
                 num_inference_steps=None, guidance_scale=None, shift=None, solver=None, seed=None,
                 progress=gr.Progress()):
        values = dict(prompt=prompt, negative_prompt=negative_prompt, height=height, width=width,
                      num_frames=num_frames, num_inference_steps=num_inference_steps,
                      guidance_scale=guidance_scale, shift=shift, solver=solver, seed=seed)
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


def ui_generate_fn(state, running: dict):
    """The page's Generate: yields (video, seed used, status, history, history table) as it goes."""
    import gradio as gr

    def run(prompt, negative_prompt, image, last_image, height, width, num_frames, num_inference_steps,
            guidance_scale, shift, solver, seed, history, request: gr.Request, progress=gr.Progress()):
        values = dict(prompt=prompt, negative_prompt=negative_prompt, height=height, width=width,
                      num_frames=num_frames, num_inference_steps=num_inference_steps,
                      guidance_scale=guidance_scale, shift=shift, solver=solver, seed=seed)
        start = time.monotonic()
        try:
            job_id, used = jobs.submit(state, values, image, last_image)
        except InputError as exc:
            raise _gr_error(exc) from None
        session = getattr(request, "session_hash", None) or "default"
        running[session] = job_id
        history = list(history or [])
        try:
            yield gr.skip(), str(used), f"queued ({job_id})", history, _table(history)
            for update in jobs.follow(state, job_id, timeout_s=FOLLOW_TIMEOUT_S):
                progress(update.progress / 100, desc=f"{update.status} {update.progress}%")
                if not update.final:
                    yield gr.skip(), gr.skip(), f"{update.status}: {update.progress}%", gr.skip(), gr.skip()
        finally:
            running.pop(session, None)
        row = _row(state, job_id, update, values, used, time.monotonic() - start)
        history = [row] + history
        if update.status == "completed":
            yield str(update.video), str(used), f"done in {row['seconds']} s: {update.video.name}", history, _table(history)
        elif update.status == "cancelled":
            yield None, str(used), "cancelled", history, _table(history)
        else:
            raise gr.Error(update.error or "the job failed", print_exception=False)

    return run


def reattach_fn(state, running: dict):
    """On page load: follow the newest queued / running job the page started (a reload, another tab):
    yields (video, status) as it goes; Cancel acts on it. Nothing running: the page as it is."""
    import gradio as gr

    def reattach(request: gr.Request):
        job_id = jobs.active_ui_job(state)
        if job_id is None:
            yield gr.skip(), gr.skip()
            return
        session = getattr(request, "session_hash", None) or "default"
        running[session] = job_id
        update = None
        try:
            for update in jobs.follow(state, job_id, timeout_s=FOLLOW_TIMEOUT_S):
                if not update.final:
                    yield gr.skip(), f"{update.status}: {update.progress}% ({job_id}, started before this page loaded)"
        finally:
            running.pop(session, None)
        if update is not None and update.status == "completed":
            yield str(update.video), f"done: {update.video.name}"
        elif update is not None:
            yield gr.skip(), update.status if update.status == "cancelled" else f"failed: {update.error}"

    return reattach


def _row(state, job_id, update, values, seed, seconds) -> dict:
    job = state.store.get(job_id)
    meta = job.meta if job is not None else {}
    return {"job": job_id, "status": update.status, "prompt": (values.get("prompt") or "")[:80],
            "size": meta.get("size", ""), "frames": meta.get("num_frames", ""), "steps": meta.get("steps", ""),
            "guidance": values.get("guidance_scale"), "shift": values.get("shift"), "solver": values.get("solver"),
            "seed": seed, "seconds": f"{seconds:.1f}", "video": str(update.video) if update.video else None}


def _table(history: list) -> list:
    return [[row.get(c, "") for c in HISTORY_COLUMNS] for row in history]


def build_blocks(state, engine=None):
    """The gr.Blocks of the page for a ServerState (its store, worker and served checkpoint)."""
    import gradio as gr

    from lightx2v.choices import SOLVER_NAMES

    mc = state.served.mc
    d = mc.defaults
    running: dict = {}
    steps0, guidance0, shift0, solver0 = sampling_values(mc, SAMPLING_DEFAULT)
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
                sampling = gr.Dropdown([SAMPLING_DEFAULT, SAMPLING_DISTILLED], value=SAMPLING_DEFAULT, label="sampling preset")
                with gr.Row():
                    steps = gr.Number(steps0, label="steps", precision=0, minimum=1, elem_id="steps")
                    guidance = gr.Number(guidance0, label="guidance", minimum=0)
                    shift = gr.Number(shift0, label="shift", minimum=0)
                    solver = gr.Dropdown(list(SOLVER_NAMES), value=solver0, label="solver", allow_custom_value=True)
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
        fields = [prompt, negative, image, last_image, height, width, frames, steps, guidance, shift, solver, seed]
        preset.change(lambda p: (gr.skip(), gr.skip()) if p == CUSTOM else tuple(int(v) for v in p.split("x")),
                      preset, [width, height], api_visibility="private", queue=False)
        for box in (width, height):  # a typed size is a custom one
            box.input(lambda: CUSTOM, None, preset, api_visibility="private", queue=False)
        sampling.change(lambda c: sampling_values(mc, c), sampling, [steps, guidance, shift, solver],
                        api_visibility="private", queue=False)
        dice.click(lambda: -1, None, seed, api_visibility="private", queue=False)
        go.click(ui_generate_fn(state, running), fields + [history], [video, used, status, history, table],
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


def _cancel(state, running: dict, request) -> str:
    job_id = running.get(getattr(request, "session_hash", None) or "default")
    if job_id is None:
        return "nothing is running"
    return "cancelling..." if jobs.cancel(state, job_id) else "the job had finished already"
