"""The web demo behind ``lumos demo``: a Gradio app around one loaded :class:`LumosPipeline`.

Frames are shown in the page as each latent frame is finished (the model makes them one latent
frame at a time), then the finished mp4 and a GIF to download. One generation runs at a time
(the model is shared); the others wait in a queue of bounded size. Every request is checked
before any work (:meth:`DemoApp.check`): a bad value or upload is a one-line message in the
page. Everything the app writes (uploads, outputs, Gradio's cache) lives in one temporary
directory, removed when the app stops (:func:`serve`).

The app also exposes the named API endpoint ``/generate`` (prompt, num_frames, height, width,
num_inference_steps, guidance_scale, seed -> mp4), e.g. with ``gradio_client``::

    Client("http://127.0.0.1:7860/").predict("a red circle moves to the left", 9, 64, 64, 16,
                                              3.0, 0, api_name="/generate")

Gradio is imported only by :func:`build` and :func:`serve` (the optional ``demo`` extra).
"""

import os
import queue
import secrets
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lumos import validate
from lumos.errors import LumosError

if TYPE_CHECKING:
    from lumos.generation.pipeline import LumosPipeline

MODES = ("text-to-video", "text-to-image", "image-to-video", "video continuation",
         "prompt schedule")  # fmt: skip
SCHEDULE_EXAMPLE = (
    "0:a red circle moves to the right;9:a red circle moves to the left;"
    "17:a red circle moves to the right"
)
EXAMPLE_PROMPTS = [  # prompts the shipped model follows (see its model card)
    "a red circle moves to the left",
    "a blue square moves up",
    "a large yellow triangle moves down on a navy background",
    "a small green star moves right",
]
MAX_PROMPT_CHARS = 500
MAX_UPLOAD_MB = 20
KEEP_OUTPUTS_S = 3600  # a finished job's files are removed this long after it ended
LIVE_HEIGHT = 128  # pixels: live frames are enlarged (nearest neighbour) to at least this


class Cancelled(Exception):
    """Raised inside the generation (at a step) once its job was cancelled."""


@dataclass
class Limits:
    """What one request may ask for (the page and ``/generate`` alike)."""

    max_frames: int = 33  # RGB frames
    max_side: int = 256  # pixels, height and width each
    max_steps: int = 50  # MaskGIT steps per latent frame
    max_prompt_chars: int = MAX_PROMPT_CHARS
    max_upload_mb: int = MAX_UPLOAD_MB


@dataclass
class Request:
    """A checked request: ``kwargs`` go to the pipeline as they are."""

    prompt: str | list[str]  # a prompt schedule: one per segment
    seed: int
    kwargs: dict[str, Any] = field(default_factory=dict)


def _whole(name: str, value: Any, lo: int, hi: int) -> int:
    """An integer in lo..hi; a whole float (what a number box sends) counts as an integer."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return validate.integer(name, value, lo, hi)


def contact_sheet(frames: list[np.ndarray], columns: int = 9) -> np.ndarray:
    """The frames made so far (a list of uint8 ``[t, H, W, 3]``) in rows of ``columns``, left
    to right, as one uint8 ``[H', W', 3]`` image enlarged by an integer factor to at least
    :data:`LIVE_HEIGHT` pixels per frame; the last row is padded with white."""
    video = np.concatenate(frames)  # [T, H, W, 3]
    T, H, W, _ = video.shape
    cols = min(T, columns)
    rows = -(-T // cols)
    sheet = np.full((rows * cols, H, W, 3), 255, dtype=np.uint8)
    sheet[:T] = video
    sheet = (
        sheet.reshape(rows, cols, H, W, 3).transpose(0, 2, 1, 3, 4).reshape(rows * H, cols * W, 3)
    )
    scale = max(1, -(-LIVE_HEIGHT // H))
    return sheet.repeat(scale, axis=0).repeat(scale, axis=1)


class DemoApp:
    """The demo's logic without Gradio: checks, the one-at-a-time generation, the outputs."""

    def __init__(self, pipe: "LumosPipeline", workdir: str | Path, limits: Limits | None = None):
        self.pipe = pipe
        self.limits = limits or Limits()
        self.outputs = Path(workdir) / "outputs"
        self.outputs.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # one generation at a time on the shared model
        self._cancels: dict[str, threading.Event] = {}  # session -> its running job's flag

    # ---- requests ---------------------------------------------------------------------------
    def check(
        self,
        prompt: Any,
        num_frames: Any,
        height: Any,
        width: Any,
        steps: Any,
        guidance: Any,
        history_mask_ratio: Any = None,
        seed: Any = None,
        upload: str | None = None,
        mode: str = "text-to-video",
        negative_prompt: Any = None,
    ) -> Request:
        """A :class:`Request`, or LumosError saying what is wrong and what is allowed. ``seed``
        None or negative draws a random one; ``upload`` (a file path) is the first frame of an
        image-to-video request, or the clip a video continuation continues: its first
        ``max_frames`` frames (the limit) are read, the pipeline keeps their end, and
        ``num_frames`` counts that end and the new frames, as in the pipeline. A prompt
        schedule's prompt is ``FRAME:PROMPT;FRAME:PROMPT...`` (``parse_prompt_schedule``; the
        pipeline checks its frames when the job starts). ``negative_prompt``: what to steer
        away from (blank: none; a schedule then contrasts its segments with each other)."""
        lim = self.limits
        validate.choice("mode", mode, MODES)
        if not isinstance(prompt, str) or not prompt.strip():
            raise LumosError("the prompt is empty; describe the video, e.g. "
                             f'"{EXAMPLE_PROMPTS[0]}"')  # fmt: skip
        if len(prompt) > lim.max_prompt_chars:
            raise LumosError(
                f"the prompt has {len(prompt)} characters; at most {lim.max_prompt_chars} "
                "are allowed"
            )
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            raise LumosError("the negative prompt must be text")
        negative_prompt = (negative_prompt or "").strip() or None
        if negative_prompt is not None and len(negative_prompt) > lim.max_prompt_chars:
            raise LumosError(
                f"the negative prompt has {len(negative_prompt)} characters; at most "
                f"{lim.max_prompt_chars} are allowed"
            )
        num_frames = 1 if mode == "text-to-image" else num_frames
        num_frames = _whole("frames", num_frames, 1, lim.max_frames)
        height = _whole("height", height, 8, lim.max_side)
        width = _whole("width", width, 8, lim.max_side)
        steps = _whole("steps", steps, 1, lim.max_steps)
        guidance = validate.number("guidance", guidance, 0, 100)
        if history_mask_ratio is None:
            history_mask_ratio = self.pipe.defaults.history_mask_ratio
        history_mask_ratio = validate.number(
            "history mask ratio", history_mask_ratio, 0, 1, hi_open=True
        )
        if seed is None or (isinstance(seed, (int, float)) and seed < 0):
            seed = secrets.randbelow(2**31)
        seed = validate.seed("seed", int(seed) if isinstance(seed, float) else seed)
        self.pipe.latent_shape(num_frames, height, width)  # sizes the tokenizer allows
        kwargs: dict[str, Any] = dict(
            num_frames=num_frames, height=height, width=width, num_inference_steps=steps,
            guidance_scale=guidance, history_mask_ratio=history_mask_ratio,
        )  # fmt: skip
        if negative_prompt is not None:
            kwargs["negative_prompt"] = negative_prompt
        if mode in ("image-to-video", "video continuation"):
            if num_frames == 1:
                raise LumosError(f"{mode} needs more than 1 frame (e.g. 9)")
            if not upload:
                what = "a start image (or video)" if mode == "image-to-video" else "a video"
                raise LumosError(f"{mode} needs {what}: upload one")
        if mode == "image-to-video":
            kwargs["image"] = self.read_upload(upload, width, height)[0]
        elif mode == "video continuation":
            kwargs["video"] = self.read_upload(upload, width, height, lim.max_frames)
        elif mode == "prompt schedule":
            from lumos.generation.pipeline import parse_prompt_schedule

            schedule = parse_prompt_schedule(prompt)
            kwargs["segment_frames"] = [frame for frame, _ in schedule]
            return Request([p for _, p in schedule], seed, kwargs)
        return Request(prompt.strip(), seed, kwargs)

    def read_upload(
        self, path: str | Path, width: int, height: int, max_frames: int = 1
    ) -> np.ndarray:
        """The first ``max_frames`` frames of an uploaded image or video, fitted to ``width`` x
        ``height`` (uint8 ``[T, H, W, 3]``); a file too large or not an image/video is a
        LumosError."""
        from lumos.data.video_io import read_video, resize_crop

        path = Path(path)
        size_mb = path.stat().st_size / 2**20
        if size_mb > self.limits.max_upload_mb:
            raise LumosError(
                f"the upload {path.name} is {size_mb:.1f} MB; at most "
                f"{self.limits.max_upload_mb} MB are allowed"
            )
        try:
            frames, _ = read_video(path, max_frames=max_frames)
        except LumosError:
            raise LumosError(
                f"the upload {path.name} is not an image or video that can be read; "
                "upload a PNG/JPEG image or an MP4/WebM/GIF video"
            ) from None
        return resize_crop(frames[:max_frames], (width, height))

    # ---- generation -------------------------------------------------------------------------
    def run(self, req: Request, session: str = "") -> Iterator[tuple]:
        """Generate ``req`` on a worker thread, yielding ``("step", frame, step, num_frames,
        num_steps)`` after each step and ``("frames", uint8 [t, H, W, 3])`` as frames are
        finished. Raises LumosError (a bad request) or :class:`Cancelled`. Closing this
        iterator, or :meth:`cancel` of its ``session``, stops the generation at its next step."""
        cancel = threading.Event()
        self._cancels[session] = cancel
        events: queue.Queue = queue.Queue()

        def callback(frame: int, step: int, num_frames: int, num_steps: int) -> None:
            if cancel.is_set():
                raise Cancelled
            events.put(("step", frame, step, num_frames, num_steps))

        def work() -> None:
            import torch

            try:
                with self._lock:
                    if cancel.is_set():
                        raise Cancelled
                    gen = [torch.Generator().manual_seed(req.seed)]
                    for new in self.pipe.stream(
                        req.prompt, generator=gen, callback=callback, **req.kwargs
                    ):
                        events.put(("frames", new.frames[0]))
                events.put(("done",))
            except BaseException as err:  # handed over to the reader, who raises it
                events.put(("error", err))

        threading.Thread(target=work, name="lumos-demo-generation", daemon=True).start()
        try:
            while (event := events.get())[0] != "done":
                if event[0] == "error":
                    raise event[1]
                yield event
        finally:
            cancel.set()  # the reader is gone (finished, cancelled or closed): stop the worker
            if self._cancels.get(session) is cancel:
                del self._cancels[session]

    def cancel(self, session: str = "") -> bool:
        """Stop ``session``'s running generation at its next step; False if none runs."""
        flag = self._cancels.get(session)
        if flag is not None:
            flag.set()
        return flag is not None

    def close(self, timeout: float = 10.0) -> None:
        """Cancel every running generation and wait (up to ``timeout`` seconds) for the model
        to be free, so that no worker is inside PyTorch when the process exits."""
        for flag in list(self._cancels.values()):
            flag.set()
        if self._lock.acquire(timeout=timeout):
            self._lock.release()

    def save(self, frames: np.ndarray, kinds: tuple[str, ...] = ("mp4", "gif")) -> list[Path]:
        """Write ``frames`` (uint8 [T, H, W, 3]) as ``lumos.<kind>`` files into a new job
        folder, after removing the job folders older than :data:`KEEP_OUTPUTS_S`."""
        from lumos.generation.pipeline import save_frames

        now = time.time()
        for old in self.outputs.iterdir():
            if now - old.stat().st_mtime > KEEP_OUTPUTS_S:
                shutil.rmtree(old, ignore_errors=True)
        job = Path(tempfile.mkdtemp(dir=self.outputs))
        return [
            save_frames(frames, job / f"lumos.{kind}", self.pipe.defaults.fps) for kind in kinds
        ]


# ---- Gradio ---------------------------------------------------------------------------------


def build(app: DemoApp, queue_size: int = 8):
    """The Gradio Blocks of ``app`` (queued: at most ``queue_size`` waiting requests)."""
    import gradio as gr

    d, lim = app.pipe.defaults, app.limits
    title = "Lumos-1 demo" + (f" ({app.pipe.label})" if app.pipe.label else "")

    def refuse(err: Exception) -> gr.Error:
        return gr.Error(" ".join(str(err).split()), print_exception=False)

    def generate_ui(mode, prompt, negative, frames, height, width, steps, guidance, hmr, seed,
                    random_seed, upload, request: gr.Request):  # fmt: skip
        session = request.session_hash if request is not None else ""
        try:
            req = app.check(prompt, frames, height, width, steps, guidance, hmr,
                            None if random_seed else seed, upload, mode, negative)  # fmt: skip
        except LumosError as err:
            yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), f"**Refused:** {err}"
            raise refuse(err) from None
        yield None, None, None, req.seed, "Waiting for the model..."
        made: list[np.ndarray] = []
        t0 = time.perf_counter()
        try:
            for event in app.run(req, session):
                if event[0] == "step":
                    f, step, n, s = event[1:]
                    status = f"Generating: latent frame {f + 1}/{n}, step {step + 1}/{s}"
                    yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), status
                else:
                    made.append(event[1])
                    count = sum(len(m) for m in made)
                    yield (
                        contact_sheet(made),
                        gr.skip(),
                        gr.skip(),
                        gr.skip(),
                        f"{count} frames so far",
                    )
        except Cancelled:
            yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), "Cancelled."
            return
        except LumosError as err:
            yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), f"**Refused:** {err}"
            raise refuse(err) from None
        video = np.concatenate(made)
        seconds = time.perf_counter() - t0
        done = (f"Done: {len(video)} frames of {video.shape[2]}x{video.shape[1]} px in "
                f"{seconds:.1f} s, seed {req.seed}")  # fmt: skip
        if len(video) == 1:  # text-to-image
            (png,) = app.save(video, ("png",))
            yield contact_sheet(made), None, str(png), req.seed, done
            return
        mp4, gif = app.save(video)
        yield contact_sheet(made), str(mp4), str(gif), req.seed, done

    def generate_api(prompt, num_frames, height, width, num_inference_steps, guidance_scale,
                     seed):  # fmt: skip
        """Generate one video; returns the mp4. A negative seed draws a random one."""
        try:
            req = app.check(prompt, num_frames, height, width, num_inference_steps,
                            guidance_scale, seed=seed)  # fmt: skip
            frames = [event[1] for event in app.run(req) if event[0] == "frames"]
        except LumosError as err:
            raise refuse(err) from None
        except Cancelled:
            raise gr.Error("cancelled", print_exception=False) from None
        (mp4,) = app.save(np.concatenate(frames), ("mp4",))
        return str(mp4)

    def cancel_ui(request: gr.Request):
        running = app.cancel(request.session_hash if request is not None else "")
        return "Cancelled." if running else "Nothing to cancel."

    with gr.Blocks(
        title=title, analytics_enabled=False, delete_cache=(600, KEEP_OUTPUTS_S)
    ) as demo:
        gr.Markdown(
            f"# {title}\nAutoregressive video generation, one latent frame at a time: the "
            "frames appear below as they are made. The shipped model knows coloured shapes "
            "moving on a plain background (try an example)."
        )
        with gr.Row():
            with gr.Column():
                mode = gr.Radio(
                    list(MODES), value=MODES[0], label="Task",
                    info=f"video continuation continues the clip (its first {lim.max_frames} "
                    "frames at most); Frames counts the kept end of the clip plus the new "
                    "frames. A prompt schedule's prompt is FRAME:PROMPT;FRAME:PROMPT (start "
                    f'frames 0, then 1 + 4k), e.g. "{SCHEDULE_EXAMPLE}" with 25 frames',
                )  # fmt: skip
                prompt = gr.Textbox(
                    label="Prompt", lines=2, max_length=lim.max_prompt_chars,
                    placeholder=EXAMPLE_PROMPTS[0], elem_id="prompt",
                )  # fmt: skip
                gr.Examples([[p] for p in EXAMPLE_PROMPTS], inputs=[prompt])
                negative = gr.Textbox(
                    label="Negative prompt (optional): what to steer away from, a third "
                    "guidance branch (1.5x the compute)", max_length=lim.max_prompt_chars,
                    elem_id="negative",
                )  # fmt: skip
                upload = gr.File(
                    label="Start image (image-to-video) or clip (video continuation), at most "
                    f"{lim.max_upload_mb} MB",
                    file_types=["image", "video"], height=150, elem_id="upload",
                )  # fmt: skip
                with gr.Row():
                    frames = gr.Number(d.num_frames, label=f"Frames (1 + 4k, at most "
                                       f"{lim.max_frames})", precision=0, elem_id="frames")  # fmt: skip
                    height = gr.Number(d.height, label="Height (px)", precision=0, elem_id="height")
                    width = gr.Number(d.width, label="Width (px)", precision=0, elem_id="width")
                with gr.Row():
                    steps = gr.Slider(1, lim.max_steps, d.num_inference_steps, step=1,
                                      label="Steps per latent frame", elem_id="steps")  # fmt: skip
                    guidance = gr.Slider(0, 10, d.guidance_scale, step=0.1, label="Guidance")
                    hmr = gr.Slider(0, 0.95, d.history_mask_ratio, step=0.05,
                                    label="History mask ratio")  # fmt: skip
                with gr.Row():
                    seed = gr.Number(
                        0, label="Seed (used by the last run)", precision=0, elem_id="seed"
                    )
                    random_seed = gr.Checkbox(True, label="Random seed")
                with gr.Row():
                    run_btn = gr.Button("Generate", variant="primary", elem_id="generate")
                    cancel_btn = gr.Button("Cancel", elem_id="cancel")
            with gr.Column():
                status = gr.Markdown("Ready.", elem_id="status")
                live = gr.Image(label="Frames so far (each latent frame as it is finished)",
                                format="png", interactive=False, height=200,
                                elem_id="live")  # fmt: skip
                video = gr.Video(label="Video", interactive=False, autoplay=True, loop=True,
                                 height=320, elem_id="video")  # fmt: skip
                download = gr.File(label="Download (GIF, or PNG for an image)", interactive=False)
        event = run_btn.click(
            generate_ui,
            [mode, prompt, negative, frames, height, width, steps, guidance, hmr, seed,
             random_seed, upload],  # fmt: skip
            [live, video, download, seed, status],
            api_visibility="private", concurrency_id="model", concurrency_limit=1,
        )  # fmt: skip
        cancel_btn.click(
            cancel_ui, None, status, cancels=[event], queue=False, api_visibility="private"
        )
        with gr.Row(visible=False):  # the inputs and output of the /generate API endpoint
            api_in = [
                gr.Textbox(label="prompt"), gr.Number(label="num_frames", precision=0),
                gr.Number(label="height", precision=0), gr.Number(label="width", precision=0),
                gr.Number(label="num_inference_steps", precision=0),
                gr.Number(label="guidance_scale"), gr.Number(label="seed", precision=0),
            ]  # fmt: skip
            api_out = gr.File(label="mp4")
            api_btn = gr.Button()
        api_btn.click(generate_api, api_in, api_out, api_name="generate",
                      concurrency_id="model", concurrency_limit=1)  # fmt: skip
    return demo.queue(max_size=queue_size, default_concurrency_limit=1)


def serve(
    pipe: "LumosPipeline",
    limits: Limits | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    share: bool = False,
    queue_size: int = 8,
) -> None:
    """Run the demo until interrupted (Ctrl-C or SIGTERM), then remove its temporary
    directory, the only place it writes to."""
    workdir = tempfile.mkdtemp(prefix="lumos-demo-")
    os.environ["GRADIO_TEMP_DIR"] = workdir  # read when Gradio is imported
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("GRADIO_RUN_HISTORY", "False")  # newer Gradio: record no run history
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # cleanup on SIGTERM
    app = DemoApp(pipe, workdir, limits)
    try:
        demo = build(app, queue_size)
        demo.launch(
            server_name=host, server_port=port, share=share, quiet=False, ssr_mode=False,
            show_error=True, max_file_size=f"{app.limits.max_upload_mb}mb",
        )  # fmt: skip
    except KeyboardInterrupt:
        pass
    finally:
        app.close()
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(workdir, ignore_errors=True)
