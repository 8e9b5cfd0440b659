"""The user-facing pipeline: prompt in, RGB frames out (diffusers style).

A pipeline directory holds::

    pipeline.json          defaults (fps, size, frames, steps, guidance, history mask ratio)
                           and ``prompt_domain`` (see :class:`PipelineDefaults`)
    transformer/           LumosModel checkpoint (ours or official Lumos-1)
    text_tokenizer/        tokenizer.json
    visual_tokenizer/      ours (config.json + model.safetensors) or Cosmos (encoder/decoder.jit)

Units: ``height``/``width`` in pixels, ``num_frames`` in RGB frames (1 + 4k for a 4x temporal
tokenizer; 1 = text-to-image). Frames come back as uint8 ``[B, T, H, W, 3]``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from lumos import validate
from lumos.errors import LumosError
from lumos.generation.generate import GenerationConfig
from lumos.generation.long_video import Segment, generate_windowed
from lumos.generation.planner import GenerationPlan, plan_request
from lumos.model.config import LumosConfig
from lumos.model.transformer import LumosModel
from lumos.sequence.layout import header_timing, prompt_text
from lumos.sequence.vocab import Vocabulary
from lumos.tokenizers import load_visual_tokenizer
from lumos.tokenizers.official_text import check_official_text_tokenizer
from lumos.tokenizers.text import NUM_INT_TOKENS, TextTokenizer
from lumos.tokenizers.visual import (
    VisualTokenizer,
    decode_clip,
    frames_to_video,
    video_to_frames,
)

DEFAULT_PIPELINE_DIR = Path(__file__).resolve().parent.parent / "assets" / "default"
WORLD_PROMPT_DOMAIN = "procedural-world"  # prompts as parsed by lumos.data.world.parse_caption
MAX_PROMPT_TOKENS = 512  # text ids per prompt, template included


@dataclass
class PipelineDefaults:
    """Generation defaults stored in ``pipeline.json`` (unknown keys are errors); every unset
    setting of a request is filled from here by :meth:`resolve`."""

    fps: int = 4  # frame rate written in the prompt and the header, and of the output video
    height: int = 64  # pixels
    width: int = 64  # pixels
    num_frames: int = 9  # RGB frames, 1 + 4k (1: text-to-image)
    num_inference_steps: int = 16  # MaskGIT steps per latent frame
    guidance_scale: float = 3.0  # classifier-free guidance
    # weight of (prompt - negative prompt), a third guidance branch; a prompt schedule's
    # segments are contrasted with their neighbour's prompt by default (0: off)
    negative_guidance_scale: float = 3.0
    history_mask_ratio: float = 0.7  # fraction of a finished frame masked in the KV cache
    num_threads: int | None = None  # CPU threads the CLI uses (None: PyTorch's default)
    # Official checkpoints (lumos convert-official): seconds of video (informational: the
    # header's duration follows from the frames and fps), guidance for text-to-image, and the
    # resolution buckets [[W, H], ...] in pixels it was trained at (informational).
    duration: int | None = None
    image_guidance_scale: float | None = None
    resolution_buckets: list[list[int]] | None = None
    # What the model was trained to follow: "procedural-world" (coloured shapes; lumos generate
    # warns about prompts that name none) or None (open-domain, no check).
    prompt_domain: Literal["procedural-world"] | None = None

    @classmethod
    def load(cls, path: Path) -> PipelineDefaults:
        """The defaults of ``path`` (all defaults if it does not exist); a malformed file or
        value or an unknown key is a one-line error."""
        if not path.is_file():
            return cls()
        data = validate.read_json_object(path, "pipeline defaults")
        validate.known_keys(str(path), data, [f.name for f in dataclasses.fields(cls)])
        defaults = cls(**data)
        try:
            defaults.check()
        except LumosError as err:
            raise LumosError(f"{path}: {err}") from None
        return defaults

    def resolve(
        self,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        history_mask_ratio: float | None = None,
        negative_guidance_scale: float | None = None,
    ) -> dict[str, int | float]:
        """The generation settings, each one given as None taken from these defaults (the one
        place that fills them; 0 is a value, not "default"). Text-to-image (``num_frames`` 1)
        uses ``image_guidance_scale`` when it is set."""
        given = dict(
            num_frames=num_frames,
            height=height,
            width=width,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            history_mask_ratio=history_mask_ratio,
            negative_guidance_scale=negative_guidance_scale,
        )
        settings = {k: getattr(self, k) if v is None else v for k, v in given.items()}
        t2i = settings["num_frames"] == 1 and self.image_guidance_scale is not None
        if guidance_scale is None and t2i:
            settings["guidance_scale"] = self.image_guidance_scale
        return settings

    def window(self, window: int | None) -> int:
        """RGB frames a request sees at once: ``window``, else the trained clip (``num_frames``)."""
        return self.num_frames if window is None else window

    def check(self) -> None:
        """Types and ranges of every field."""
        for name in ("fps", "height", "width", "num_frames", "num_inference_steps"):
            validate.integer(name, getattr(self, name), 1)
        validate.number("guidance_scale", self.guidance_scale)
        validate.number("negative_guidance_scale", self.negative_guidance_scale)
        validate.number("history_mask_ratio", self.history_mask_ratio, 0, 1, hi_open=True)
        if self.num_threads is not None:
            validate.threads("num_threads", self.num_threads)
        if self.prompt_domain is not None:
            validate.choice("prompt_domain", self.prompt_domain, [WORLD_PROMPT_DOMAIN, None])
        if self.duration is not None:
            validate.integer("duration", self.duration, 1, 3600)
        if self.image_guidance_scale is not None:
            validate.number("image_guidance_scale", self.image_guidance_scale)
        for bucket in self.resolution_buckets or []:
            if not (isinstance(bucket, list) and len(bucket) == 2):
                raise LumosError(f"resolution_buckets entries are [width, height]; got {bucket!r}")
            for side in bucket:
                validate.integer("resolution bucket side", side, 8, 8192)


def parse_prompt_schedule(text: str) -> list[tuple[int, str]]:
    """A prompt schedule written as text (``lumos generate --prompt-schedule``, the demo):
    ``"0:a red circle moves left;17:a red circle moves up"`` -> ``[(0, ...), (17, ...)]``, RGB
    start frame and prompt of each segment (``__call__``'s ``segment_frames`` and ``prompt``,
    which check the frames)."""
    schedule = []
    for part in text.split(";"):
        frame, sep, prompt = part.partition(":")
        if not sep or not frame.strip().isdigit() or not prompt.strip():
            raise LumosError(
                f"prompt schedule part {part.strip()!r} is not FRAME:PROMPT "
                '(e.g. "0:a red circle moves left;17:a red circle moves up")'
            )
        schedule.append((int(frame), prompt.strip()))
    return schedule


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def placement(
    device: str | torch.device | None, dtype: torch.dtype | str | None
) -> tuple[torch.device, torch.dtype]:
    """Resolve a device and a dtype (``"fp32"``/``"bf16"``/``"fp16"`` or a torch dtype). Left
    None: CUDA when available, else the CPU; bfloat16 on CUDA, float32 elsewhere (the CPU has
    no fast bfloat16 matmul)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise LumosError(f"unknown device {device!r} ({err}); e.g. cpu, cuda, cuda:1") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LumosError(f"device {device} asked for, but PyTorch sees no CUDA device here")
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise LumosError(f"unknown dtype {dtype!r}; choose one of {list(DTYPES)}")
        dtype = DTYPES[dtype]
    if dtype not in DTYPES.values():
        raise LumosError(f"dtype {dtype} is not supported; choose one of {list(DTYPES)}")
    return device, dtype


@dataclass
class StreamedFrames:
    """What ``LumosPipeline.stream`` yields per latent frame (given frames: one item first)."""

    frames: np.ndarray  # uint8 [B, n, H, W, 3]: the new RGB frames (1 for latent frame 0, else tc)
    latent_frame: int  # index of the (first) latent frame these frames decode
    codes: torch.Tensor  # [B, t_new, h, w] latent codes of these frames
    fps: int


@dataclass
class PipelineOutput:
    frames: np.ndarray | None  # uint8 [B, T, H, W, 3]; None when called with decode=False
    codes: torch.Tensor  # [B, t, h, w] latent codes
    fps: int


class LumosPipeline:
    def __init__(
        self,
        model: LumosModel,
        text_tokenizer: TextTokenizer,
        visual_tokenizer: VisualTokenizer,
        defaults: PipelineDefaults | None = None,
        label: str = "",
    ) -> None:
        self.model = model.eval()
        self.text_tokenizer = text_tokenizer
        self.visual_tokenizer = visual_tokenizer.eval()
        self.defaults = defaults or PipelineDefaults()
        self.label = label  # e.g. "randomly initialised" for untrained pipelines
        self.adapter: Path | None = None  # the LoRA adapter applied unmerged (from_pretrained)
        v = model.vocab
        if v.codebook_size != visual_tokenizer.codebook_size:
            raise LumosError(
                f"the model has {v.codebook_size} visual ids but the visual tokenizer has "
                f"{visual_tokenizer.codebook_size} codes; they do not belong together"
            )
        if dataclasses.replace(v, codebook_size=0) == dataclasses.replace(
            Vocabulary.official(), codebook_size=0
        ):  # official ids: the text tokenizer must be Chameleon's with the video tokens
            check_official_text_tokenizer(text_tokenizer, v)

    # ---- construction ---------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        path: str | Path | None = None,
        text_tokenizer: str | Path | None = None,
        visual_tokenizer: str | Path | None = None,
        allow_torchscript: bool = False,
        weights: bool = True,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        adapter: str | Path | None = None,
    ) -> LumosPipeline:
        """Load a pipeline directory (None = the model shipped with lumos), or a bare model
        checkpoint directory together with ``text_tokenizer``/``visual_tokenizer`` paths.
        Weights load straight onto ``device`` in ``dtype`` (defaults: CUDA in bfloat16 when a
        GPU is present, else the CPU in float32; see :func:`placement`).
        ``weights=False`` builds the transformer on the ``meta`` device without reading its
        weights (enough for :meth:`plan`, not for generating). ``adapter``: a LoRA adapter
        directory (``lumos train`` with ``lora.rank`` > 0 writes OUTPUT/adapter) applied
        unmerged on top of the transformer (needs PEFT: ``pip install lumos[lora]``; only its
        config is checked when ``weights=False``)."""
        device, dtype = placement(device, dtype)
        root = Path(path) if path is not None else DEFAULT_PIPELINE_DIR
        if not root.exists():
            raise LumosError(f"checkpoint path {root} does not exist")
        if not root.is_dir():
            raise LumosError(
                f"checkpoint path {root} is a file; give a pipeline or model directory"
            )
        model_dir = root / "transformer" if (root / "transformer").is_dir() else root
        if path is None and not (model_dir / "config.json").is_file():
            raise LumosError(
                f"the shipped model is missing from {root} (incomplete installation); "
                "reinstall lumos or pass a checkpoint path"
            )
        text_path = Path(text_tokenizer) if text_tokenizer else root / "text_tokenizer"
        visual_path = Path(visual_tokenizer) if visual_tokenizer else root / "visual_tokenizer"
        if not text_path.exists():
            raise LumosError(
                f"text tokenizer {text_path} not found; give a pipeline directory (or, for a "
                "bare model directory, the text tokenizer: lumos generate --text-tokenizer)"
            )
        if not visual_path.exists():
            raise LumosError(
                f"visual tokenizer {visual_path} not found; give a pipeline directory (or, for a "
                "bare model directory, the visual tokenizer: lumos generate --visual-tokenizer)"
            )
        model = (
            LumosModel.from_pretrained(model_dir, dtype=dtype, device=device)
            if weights
            else LumosModel.on_meta(model_dir)
        )
        if adapter is not None:
            from lumos.training import lora

            if weights:
                lora.load_adapter(model, adapter)
            else:
                lora.read_adapter_config(adapter)
        pipe = cls(
            model,
            TextTokenizer.from_file(text_path),
            load_visual_tokenizer(visual_path, allow_torchscript, device=device, dtype=dtype),
            PipelineDefaults.load(root / "pipeline.json"),
        )
        pipe.adapter = Path(adapter) if adapter is not None else None
        return pipe

    def to(
        self, device: str | torch.device | None = None, dtype: torch.dtype | str | None = None
    ) -> LumosPipeline:
        """Move the transformer and the visual tokenizer (in place; returns the pipeline). An
        argument left None keeps the current setting."""
        weight = self.model.lm_head.weight
        device = torch.device(device) if device is not None else weight.device
        dtype = placement(device, dtype)[1] if dtype is not None else weight.dtype
        self.model.to(device=device, dtype=dtype)
        self.visual_tokenizer.to(device=device, dtype=dtype)
        return self

    @property
    def device(self) -> torch.device:
        return self.model.lm_head.weight.device

    @classmethod
    def random_init(cls, seed: int = 0) -> LumosPipeline:
        """An UNTRAINED pipeline: a randomly initialised tiny transformer with the shipped
        tokenizers (or an untrained visual tokenizer when none is shipped). Output is noise;
        useful to try the machinery before a trained model exists."""
        from lumos.tokenizers.causal_video import CausalVideoTokenizer

        torch.manual_seed(seed)
        text = TextTokenizer.from_file(DEFAULT_PIPELINE_DIR / "text_tokenizer")
        visual_dir = DEFAULT_PIPELINE_DIR / "visual_tokenizer"
        visual = (
            load_visual_tokenizer(visual_dir) if visual_dir.is_dir() else CausalVideoTokenizer()
        )
        vocab = Vocabulary.from_token_lookup(
            text.token_to_id, text.vocab_size, visual.codebook_size, NUM_INT_TOKENS
        )
        cfg = LumosConfig.tiny(vocabulary=vocab, vocab_size=vocab.size)
        return cls(LumosModel(cfg), text, visual, label="randomly initialised, untrained")

    def save_pretrained(self, path: str | Path) -> None:
        if self.adapter is not None:
            raise LumosError(
                f"this pipeline runs the adapter {self.adapter} unmerged; save the merged model "
                "with lumos merge-adapter"
            )
        path = Path(path)
        self.model.save_pretrained(path / "transformer")
        self.text_tokenizer.save(path / "text_tokenizer")
        self.visual_tokenizer.save_pretrained(path / "visual_tokenizer")
        (path / "pipeline.json").write_text(json.dumps(dataclasses.asdict(self.defaults), indent=2))

    # ---- generation -------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | Sequence[str],
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        history_mask_ratio: float | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        image: np.ndarray | torch.Tensor | None = None,
        temperature: float = 1.0,
        sample_temperature: float = 1.0,
        top_k: int | None = None,
        official_temperature: bool = False,
        fps: int | None = None,
        window: int | None = None,
        segment_frames: int | Sequence[int] | None = None,
        video: np.ndarray | torch.Tensor | None = None,
        negative_prompt: str | Sequence[str] | None = None,
        negative_guidance_scale: float | None = None,
        callback: Callable[[int, int, int, int], None] | None = None,
        compile: bool = False,
        decode: bool = True,
    ) -> PipelineOutput:
        """Generate one video per prompt. ``image`` (uint8 [H, W, 3] or [B, H, W, 3], already
        at ``height`` x ``width``) makes it image-to-video; ``num_frames=1`` is text-to-image.
        ``temperature`` scales the noise on the confidences that choose which tokens to keep;
        ``official_temperature`` replaces its per-frame annealing by the official code's running
        product (noise in the first generated frame only; docs/design.md, "Differences from the
        official code"). ``sample_temperature`` and ``top_k`` shape the token sampling itself.
        ``fps`` is the frame rate the model is conditioned on (prompt and header; the clip's
        duration in seconds follows from ``num_frames`` and ``fps`` as in the official code)
        and the rate of the output (default: pipeline.json's). ``window``: RGB frames the
        model sees at once (1 + k * temporal compression; default pipeline.json's
        ``num_frames``, the trained clip); longer videos slide it (docs/design.md, "Long
        videos"). ``segment_frames`` makes ``prompt`` a schedule of successive prompts of one
        video: an int N starts segment k >= 1 at RGB frame k*N + 1 (the first segment also holds
        frame 0), a list gives each segment's RGB start frame (0, then 1 + multiples of the
        temporal compression: the first frame of a latent frame). ``video`` (uint8
        [T, H, W, 3]) is continued: its last frames that fit the window are the start.
        A schedule's later segments each start a new clip, image-to-video from the last RGB
        frame before them: ``codes`` holds every clip's generated frames in order, ``frames``
        each clip decoded on its own (so ``decode(codes)`` equals ``frames`` only without a
        schedule). ``negative_prompt`` (one for all, or one per prompt or schedule segment)
        adds a third guidance branch that steers away from it with weight
        ``negative_guidance_scale`` (default pipeline.json's, 0 turns it off); a schedule
        without one contrasts each segment with its neighbour's prompt (the previous one; the
        first segment, the second's). ``compile`` runs the step compiled with
        ``torch.compile`` (fixed shapes; the first call compiles, at most two graphs per
        request shape). ``decode=False`` skips the visual
        decoder: ``frames`` is None (:meth:`decode` turns codes into frames later)."""
        request = self._request(
            prompt, num_frames, height, width, num_inference_steps, guidance_scale,
            history_mask_ratio, image, temperature, sample_temperature, top_k,
            official_temperature, fps, window, segment_frames, video, negative_prompt,
            negative_guidance_scale,
        )  # fmt: skip
        clips: list[tuple[torch.Tensor | None, list[torch.Tensor]]] = []  # (anchor, codes)
        for codes, anchor in self._codes(request, generator, callback, compile):
            if not clips or anchor is not None:
                clips.append((anchor, []))
            clips[-1][1].append(codes)
        frames = None
        if decode:  # each clip on its own; an anchor's frame belongs to the clip before
            frames = np.concatenate(
                [
                    self.decode(torch.cat(c if a is None else [a, *c], 1))[:, int(a is not None) :]
                    for a, c in clips
                ],
                1,
            )
        codes = torch.cat([x for _, c in clips for x in c], 1).cpu()
        return PipelineOutput(frames, codes, request["fps"])

    def decode(self, codes: torch.Tensor) -> np.ndarray:
        """uint8 RGB frames [B, T, H, W, 3] of latent codes [B, t, h, w], a few latent frames
        at a time where the tokenizer streams from a cached state (``tokenizers.visual.
        decode_clip``), so decoding a long clip takes no more memory than a short one."""
        return decode_clip(self.visual_tokenizer, codes.to(self._tokenizer_placement()[0]))

    @torch.no_grad()
    def stream(
        self,
        prompt: str | Sequence[str],
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        history_mask_ratio: float | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        image: np.ndarray | torch.Tensor | None = None,
        temperature: float = 1.0,
        sample_temperature: float = 1.0,
        top_k: int | None = None,
        official_temperature: bool = False,
        fps: int | None = None,
        window: int | None = None,
        segment_frames: int | Sequence[int] | None = None,
        video: np.ndarray | torch.Tensor | None = None,
        negative_prompt: str | Sequence[str] | None = None,
        negative_guidance_scale: float | None = None,
        callback: Callable[[int, int, int, int], None] | None = None,
        compile: bool = False,
    ) -> Iterator[StreamedFrames]:
        """Like ``__call__``, but yields the RGB frames of each latent frame as soon as it is
        generated and decoded (given frames first). Each latent frame is decoded from the
        fewest earlier latent frames the tokenizer's causal decoder reads
        (``VisualTokenizer.decode_last``), so the concatenated frames equal ``__call__``'s
        output for the same seeds. Inputs are checked before the first frame is made."""
        request = self._request(
            prompt, num_frames, height, width, num_inference_steps, guidance_scale,
            history_mask_ratio, image, temperature, sample_temperature, top_k,
            official_temperature, fps, window, segment_frames, video, negative_prompt,
            negative_guidance_scale,
        )  # fmt: skip
        return self._stream(self._codes(request, generator, callback, compile), request)

    def _codes(
        self, request: dict, generator, callback, compile: bool
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """``(codes [B, n, h, w], anchor)`` of the request on the model's device: the given
        frames (image, video) first, then one generated latent frame at a time. ``anchor``
        [B, 1, h, w] marks the first frame of a new clip (a prompt schedule's later segment,
        started from the image latent of the previous segment's last RGB frame): that clip
        decodes as ``anchor`` then its frames, and the anchor's own RGB frame is not output."""
        device = self.model.lm_head.weight.device
        given, history = request["given_frames"], request["history"]
        if given is not None:
            yield given.to(device), None
        if history is not None:
            yield history.to(device), None
        restart = self._last_frame_latent if len(request["segments"]) > 1 else None
        for _, frame, anchor in generate_windowed(
            self.model, request["segments"], request["num_frames"], request["height"],
            request["width"], request["window"], request["duration"], request["fps"], given,
            request["config"], generator, callback, compile, history, restart,
        ):  # fmt: skip
            yield frame[:, None], anchor

    def _last_frame_latent(self, clip: torch.Tensor) -> torch.Tensor:
        """Image latent [B, 1, h, w] of the last RGB frame of the clip ``clip`` [B, t, h, w]."""
        tok = self.visual_tokenizer
        last = tok.decode_last(clip.to(self._tokenizer_placement()[0]))[:, :, -1:]
        return tok.encode(last)

    def _stream(
        self, chunks: Iterator[tuple[torch.Tensor, torch.Tensor | None]], request: dict
    ) -> Iterator[StreamedFrames]:
        """Decode each chunk of codes as it comes, continuing its clip's causal decoding state
        (``VisualTokenizer.stream_decoder``); an anchored chunk starts a new clip."""
        tok, tok_device = self.visual_tokenizer, self._tokenizer_placement()[0]
        decoder, done = tok.stream_decoder(), 0
        for chunk, anchor in chunks:
            if anchor is not None:
                decoder = tok.stream_decoder()
                decoder(anchor.to(tok_device))  # its frame was output by the previous clip
            video = decoder(chunk.to(tok_device))
            yield StreamedFrames(video_to_frames(video), done, chunk.cpu(), request["fps"])
            done += chunk.shape[1]

    def _request(
        self,
        prompt: str | Sequence[str],
        num_frames: int | None,
        height: int | None,
        width: int | None,
        num_inference_steps: int | None,
        guidance_scale: float | None,
        history_mask_ratio: float | None,
        image: np.ndarray | torch.Tensor | None,
        temperature: float,
        sample_temperature: float,
        top_k: int | None,
        official_temperature: bool,
        fps: int | None = None,
        window: int | None = None,
        segment_frames: int | Sequence[int] | None = None,
        video: np.ndarray | torch.Tensor | None = None,
        negative_prompt: str | Sequence[str] | None = None,
        negative_guidance_scale: float | None = None,
    ) -> dict:
        """Check a request and turn it into the arguments of ``generate_windowed``."""
        d = self.defaults
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or any(not isinstance(p, str) or not p.strip() for p in prompts):
            raise LumosError("the prompt is empty; give a sentence describing the video")
        settings = d.resolve(
            num_frames, height, width, num_inference_steps, guidance_scale, history_mask_ratio,
            negative_guidance_scale,
        )  # fmt: skip
        num_frames, height, width = (settings[k] for k in ("num_frames", "height", "width"))
        t, h, w = self.latent_shape(num_frames, height, width)
        if fps is not None:
            validate.integer("fps", fps, 1, 240)
        tc = self.visual_tokenizer.temporal_compression
        window = d.window(window)
        validate.integer("window", window, 1 + 2 * tc)
        if (window - 1) % tc:
            raise LumosError(
                f"window must be 1 + {tc}k RGB frames (e.g. {1 + 2 * tc}), got {window}"
            )
        # The model is conditioned as it was trained: a clip of at most `window` frames.
        context = min(num_frames, window)
        fps, duration = header_timing(context, d.fps if fps is None else fps)
        negatives = self.negative_prompts(negative_prompt, prompts, segment_frames is not None)
        if not settings["negative_guidance_scale"]:
            negatives = [None] * len(prompts)

        def encode(texts: list[str | None]) -> list[list[int]] | None:
            if any(t is None for t in texts):
                return None
            return self.encode_prompts(texts, context, height, width, fps)

        if segment_frames is None:
            segments = [
                Segment(0, self.encode_prompts(prompts, context, height, width, fps),
                        encode(negatives))  # fmt: skip
            ]
            batch = len(prompts)
        else:  # a prompt schedule: the prompts are successive segments of one video
            if isinstance(segment_frames, int):  # every segment that long (+ frame 0)
                validate.integer("segment_frames", segment_frames, tc)
                if segment_frames % tc:
                    raise LumosError(
                        f"segment_frames must be a multiple of {tc} (whole latent frames), "
                        f"got {segment_frames}"
                    )
                rgb_starts = [0] + [1 + i * segment_frames for i in range(1, len(prompts))]
            else:  # the RGB frame each segment starts at
                rgb_starts = list(segment_frames)
            if len(rgb_starts) != len(prompts) or rgb_starts[0] != 0:
                raise LumosError("a prompt schedule needs one start frame per prompt, the first 0")
            for r in rgb_starts:
                validate.integer("segment start frame", r, 0)
                if r and (r - 1) % tc:
                    raise LumosError(
                        f"segments start on latent frames: RGB frame 0 or 1 + a multiple of {tc} "
                        f"(e.g. {1 + tc}, {1 + 2 * tc}); got {r}"
                    )
            starts = [(r + tc - 1) // tc for r in rgb_starts]  # RGB 1..tc: latent 1, ...
            if starts != sorted(set(starts)):
                raise LumosError("segment start frames must increase")
            if starts[-1] >= t:
                raise LumosError(
                    f"the last segment starts at frame {rgb_starts[-1]}, after the video's "
                    f"{num_frames} frames; give more frames or fewer prompts"
                )
            segments = [
                Segment(s0, self.encode_prompts([p], context, height, width, fps), encode([n]))
                for s0, p, n in zip(starts, prompts, negatives, strict=True)
            ]
            batch = 1
        text_ids = segments[0][1]
        given = history = None
        if image is not None and video is not None:
            raise LumosError("give image= (image-to-video) or video= (continuation), not both")
        if image is not None:
            given = self.encode_image(image, batch, height, width)
            if t < 2:
                raise LumosError("image-to-video needs num_frames > 1 (e.g. 9)")
        if video is not None:
            history = self.encode_video(video, batch, height, width, window)
            if history.shape[1] >= t:
                raise LumosError(
                    f"the clip gives {history.shape[1]} latent frames; num_frames must add more"
                )
        config = GenerationConfig(
            num_steps=settings["num_inference_steps"],
            guidance_scale=settings["guidance_scale"],
            negative_guidance_scale=settings["negative_guidance_scale"],
            history_mask_ratio=settings["history_mask_ratio"],
            temperature=temperature,
            sample_temperature=sample_temperature,
            top_k=top_k,
            official_temperature=official_temperature,
        )
        tw = self.latent_shape(window, height, width)[0]
        return dict(
            text_ids=text_ids, segments=segments, num_frames=t, height=h, width=w, window=tw,
            duration=duration, fps=fps, given_frames=given, history=history, config=config,
        )  # fmt: skip

    @staticmethod
    def negative_prompts(
        negative_prompt: str | Sequence[str] | None, prompts: list[str], schedule: bool
    ) -> list[str | None]:
        """The negative prompt of each prompt (or schedule segment), None where there is none.
        A schedule without one contrasts each segment with its neighbour: the previous
        segment's prompt (the first segment: the second's), so what changes at a switch is
        what guidance stresses (docs/design.md, "Long videos")."""
        if negative_prompt is None:
            if not schedule or len(prompts) < 2:
                return [None] * len(prompts)
            neighbours = [prompts[1], *prompts[:-1]]
            return [None if n == p else n for n, p in zip(neighbours, prompts, strict=True)]
        negatives = [negative_prompt] if isinstance(negative_prompt, str) else list(negative_prompt)
        if len(negatives) == 1:
            negatives = negatives * len(prompts)
        what = "schedule segments" if schedule else "prompts"
        if len(negatives) != len(prompts):
            raise LumosError(
                f"got {len(negatives)} negative prompts for {len(prompts)} {what}; give one, "
                "or one each"
            )
        if any(not isinstance(n, str) or not n.strip() for n in negatives):
            raise LumosError(
                "a negative prompt is empty; give what to steer away from, or none (for no "
                "negative guidance at all: negative_guidance_scale=0)"
            )
        return negatives

    def encode_prompts(
        self,
        prompts: Sequence[str],
        num_frames: int,
        height: int,
        width: int,
        fps: int | None = None,
    ) -> list[list[int]]:
        """Text ids of each prompt in its template, for ``num_frames`` RGB frames of ``height``
        x ``width`` pixels at ``fps`` (default: pipeline.json's); a prompt over
        ``MAX_PROMPT_TOKENS`` ids is an error."""
        fps, duration = header_timing(num_frames, self.defaults.fps if fps is None else fps)
        text_ids = [
            self.text_tokenizer.encode(prompt_text(p, width, height, fps, duration))
            for p in prompts
        ]
        if (longest := max(len(ids) for ids in text_ids)) > MAX_PROMPT_TOKENS:
            raise LumosError(
                f"a prompt is {longest} tokens long with its template; at most "
                f"{MAX_PROMPT_TOKENS} are allowed"
            )
        return text_ids

    def plan(
        self,
        batch: int = 1,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        prompt_tokens: int = MAX_PROMPT_TOKENS,
        dtype: torch.dtype | None = None,
        device: str | None = None,
        compile: bool = False,
        window: int | None = None,
        negative: bool = False,
        stream: bool = False,
    ) -> GenerationPlan:
        """Estimated peak memory and FLOPs of a call, without allocating anything (see
        ``generation/planner.py``). ``dtype``/``device`` default to the model's: ask for
        ``device="cuda", dtype=torch.bfloat16`` to project a GPU run from here. ``window`` as in
        ``__call__`` (default: the trained clip length). ``negative``: the call has negative
        prompts (a prompt schedule has them by default) and a non-zero negative guidance.
        ``stream``: for :meth:`stream`, which decodes while the cache lives."""
        s = self.defaults.resolve(num_frames, height, width, num_inference_steps, guidance_scale)
        weight = self.model.lm_head.weight
        return plan_request(
            self.model.config, self.visual_tokenizer, batch, s["num_frames"], s["height"],
            s["width"], prompt_tokens, s["num_inference_steps"], s["guidance_scale"],
            dtype or weight.dtype, device or ("cpu" if weight.is_meta else weight.device.type),
            compile, self.defaults.window(window), negative, stream,
        )  # fmt: skip

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        """Latent (t, h, w) for ``num_frames`` RGB frames of ``height`` x ``width`` pixels (the
        visual tokenizer's rule), with errors that list the allowed values."""
        return self.visual_tokenizer.latent_shape(num_frames, height, width)

    def encode_image(
        self, image: np.ndarray | torch.Tensor, batch: int, height: int, width: int
    ) -> torch.Tensor:
        """First-frame codes [B, 1, h, w] from uint8 RGB [H, W, 3] or [B, H, W, 3]."""
        x = torch.as_tensor(np.array(image))  # a copy: read-only arrays are fine
        if x.dim() == 3:
            x = x[None].expand(batch, -1, -1, -1)
        if x.dim() != 4 or x.shape[-1] != 3 or x.shape[0] != batch:
            raise LumosError(f"image must be uint8 RGB [H, W, 3]; got shape {tuple(x.shape)}")
        if tuple(x.shape[1:3]) != (height, width):
            raise LumosError(
                f"image is {x.shape[2]}x{x.shape[1]} pixels but the video is {width}x{height}; "
                "resize it first (lumos.data.video_io.resize_crop)"
            )
        device, dtype = self._tokenizer_placement()
        video = frames_to_video(x[:, None]).to(device=device, dtype=dtype)  # [B, 3, 1, H, W]
        return self.visual_tokenizer.encode(video)

    def continuation_start(self, clip_frames: int, window: int | None = None) -> int:
        """How many of a given clip's last RGB frames a continuation keeps as its start: the
        most ``1 + tc*k`` that leave room in the window (``window`` RGB frames, default the
        trained clip's) for one new latent frame. The output's first frames are these."""
        tc = self.visual_tokenizer.temporal_compression
        n = min(clip_frames, self.defaults.window(window) - tc)
        return 1 + (n - 1) // tc * tc

    def encode_video(
        self, video: np.ndarray | torch.Tensor, batch: int, height: int, width: int, window: int
    ) -> torch.Tensor:
        """Codes [B, t, h, w] of the end of a clip (uint8 RGB [T, H, W, 3] at ``height`` x
        ``width``) to continue from: its last :meth:`continuation_start` frames."""
        x = torch.as_tensor(np.array(video))
        if x.dim() != 4 or x.shape[-1] != 3 or x.shape[0] < 1:
            raise LumosError(f"video must be uint8 RGB [T, H, W, 3]; got shape {tuple(x.shape)}")
        if tuple(x.shape[1:3]) != (height, width):
            raise LumosError(
                f"video is {x.shape[2]}x{x.shape[1]} pixels but the output is {width}x{height}; "
                "resize it first (lumos.data.video_io.resize_crop)"
            )
        n = self.continuation_start(x.shape[0], window)
        device, dtype = self._tokenizer_placement()
        clip = frames_to_video(x[-n:][None]).to(device=device, dtype=dtype)  # [1, 3, n, H, W]
        return self.visual_tokenizer.encode(clip).expand(batch, -1, -1, -1)

    def _tokenizer_placement(self) -> tuple[torch.device, torch.dtype]:
        """Device and dtype of the visual tokenizer's weights (the CPU for TorchScript)."""
        p = next(self.visual_tokenizer.parameters(), None)
        return (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.float32)


def save_frames(frames: np.ndarray, path: str | Path, fps: int) -> Path:
    """Write one generated video (uint8 [T, H, W, 3]) to ``.mp4``, ``.gif`` or ``.png``.

    A ``.png`` of several frames is one image with the frames side by side; a name with a
    ``%d`` pattern (``frame_%04d.png``) writes one image per frame instead. Writes are atomic.
    Returns the path written (for a pattern, the first frame's).
    """
    from lumos.data.video_io import write_video

    path = Path(path)
    if path.suffix.lower() not in (".mp4", ".gif", ".png"):
        raise LumosError(f"unsupported output format {path.suffix!r}; use .mp4, .gif or .png")
    pattern = "%" in path.name and path.suffix.lower() == ".png"  # a video name's % is text
    if path.suffix.lower() == ".png" and len(frames) > 1 and not pattern:
        frames = np.concatenate(list(frames), axis=1)
    write_video(path, frames, fps)
    return path.with_name(path.name % 1) if pattern else path
