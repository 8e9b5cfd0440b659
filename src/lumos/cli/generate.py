"""``lumos generate``: text-to-video, text-to-image and image-to-video from the command line."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm import tqdm

from lumos import validate
from lumos.errors import LumosError

if TYPE_CHECKING:
    from lumos.generation.pipeline import PipelineDefaults


FORMATS = ("mp4", "gif", "png")
OTHER_MEDIA = ("webm", "mkv", "mov", "avi", "jpg", "jpeg", "webp", "bmp", "tif", "tiff")
MAX_PROMPT_CHARS = 2000  # the pipeline also bounds the prompt in tokens
MAX_SIDE = 4096  # pixels
MAX_FRAMES = 1 + 4 * 64  # RGB frames
MAX_STEPS = 1000
DEFAULT_BATCH, MAX_BATCH = 8, 1024
FRAMES_ARG = validate.int_arg(1, MAX_FRAMES)
SIDE_ARG = validate.int_arg(1, MAX_SIDE)
FPS_ARG = validate.int_arg(1, 240)
EXAMPLE_PROMPT = "a red circle moves to the left"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="generate videos or images from prompts",
        description="Generate a video (or image) per prompt and print the written paths. "
        "Defaults come from the model's pipeline.json.",
    )
    p.add_argument("prompts", nargs="*", help="one or more prompts")
    p.add_argument("--prompts-file", type=Path, help="a UTF-8 text file with one prompt per line")
    p.add_argument(
        "--out",
        type=Path,
        help="output file (one prompt) or directory (several); default outputs/<prompt>.<format>",
    )
    p.add_argument("--format", choices=["mp4", "gif", "png"], help="default: from --out, else mp4")
    p.add_argument("--frames", type=FRAMES_ARG, help="RGB frames, 1 + 4k (1 = text-to-image)")
    p.add_argument("--t2i", action="store_true", help="text-to-image (same as --frames 1)")
    p.add_argument("--height", type=SIDE_ARG, help="pixels, a multiple of 8")
    p.add_argument("--width", type=SIDE_ARG, help="pixels, a multiple of 8")
    add_sampling_args(p)
    p.add_argument(
        "--seed", type=validate.SEED_ARG, default=0, help="prompt i uses seed + i (default 0)"
    )
    p.add_argument(
        "--batch-size",
        type=validate.int_arg(1, MAX_BATCH),
        default=DEFAULT_BATCH,
        help=f"prompts generated together (default {DEFAULT_BATCH}); more prompts run in turns",
    )
    p.add_argument("--image", type=Path, help="first frame for image-to-video (png, jpg, video)")
    add_model_args(p)
    add_adapter_arg(p)
    p.add_argument(
        "--threads", type=validate.THREADS_ARG, help="CPU threads (default: the model's setting)"
    )
    p.add_argument(
        "--fps",
        type=FPS_ARG,
        help="frame rate the model is conditioned on and the file is written at (default: the "
        "model's)",
    )
    p.add_argument(
        "--window",
        type=FRAMES_ARG,
        help="RGB frames the model sees at once (1 + 4k); longer videos slide it along "
        "(default: the model's trained clip length, pipeline.json num_frames)",
    )
    p.add_argument(
        "--prompt-schedule",
        help='successive prompts of one video, "FRAME:PROMPT;FRAME:PROMPT..." (RGB start '
        "frames: 0, then 1 + multiples of 4, the first frame of a latent frame), e.g. "
        '"0:a red circle moves left;17:a red circle moves up"',
    )
    p.add_argument("--video", type=Path, help="a clip to continue (its last frames are the start)")
    p.add_argument(
        "--negative-prompt",
        help="what to steer away from (a third guidance branch: 1.5x the compute); with "
        "--prompt-schedule it applies to every segment, which are otherwise each contrasted "
        "with their neighbour's prompt",
    )
    p.add_argument(
        "--negative-guidance",
        type=validate.float_arg(0),
        help="weight of the negative prompt (default: the model's, 0 turns it off)",
    )
    p.add_argument(
        "--stream",
        action="store_true",
        help="write each frame as a PNG as soon as it is made (OUT_frames/), then the video",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="compile the decoding step with torch.compile (slow first call, faster steps)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the estimated peak memory and FLOPs of the request; load no weights",
    )
    p.add_argument(
        "--max-memory",
        type=validate.float_arg(0, lo_open=True),
        metavar="GB",
        help="refuse a request whose estimated peak memory (GiB) exceeds this, before loading",
    )
    p.set_defaults(func=run)


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The model options read by :func:`load_pipeline` (shared by ``lumos generate`` and
    ``lumos sample``)."""
    p.add_argument(
        "--checkpoint",
        type=Path,
        help="pipeline or model directory (default: the model shipped with lumos)",
    )
    p.add_argument("--text-tokenizer", type=Path, help="tokenizer.json for a bare model dir")
    p.add_argument("--visual-tokenizer", type=Path, help="visual tokenizer dir for a bare model")
    p.add_argument(
        "--trust-torchscript",
        action="store_true",
        help="allow loading a Cosmos TorchScript tokenizer (runs its code)",
    )
    p.add_argument(
        "--random-init",
        action="store_true",
        help="use an untrained, randomly initialised tiny model (output is noise)",
    )
    add_placement_args(p)


def add_adapter_arg(p: argparse.ArgumentParser) -> None:
    """``--adapter`` (``lumos generate``, ``lumos eval``): a LoRA adapter on the model."""
    p.add_argument(
        "--adapter",
        type=Path,
        help="a LoRA adapter directory (lumos train with lora.rank > 0: OUTPUT/adapter) applied "
        "on top of the model (needs pip install lumos[lora])",
    )


def add_placement_args(p: argparse.ArgumentParser) -> None:
    """``--device`` / ``--dtype`` (see ``lumos.generation.pipeline.placement``)."""
    p.add_argument(
        "--device", help="cpu, cuda, cuda:1, ... (default: cuda when available, else cpu)"
    )
    p.add_argument(
        "--dtype",
        choices=["fp32", "bf16", "fp16"],
        help="weights and compute precision (default: bf16 on cuda, fp32 on cpu)",
    )


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    """Decoding options shared by ``lumos generate`` and ``lumos eval`` (see ``sampling_kwargs``)."""
    g = p.add_argument_group("sampling (defaults: the model's pipeline.json, else as shown)")
    # Types refuse what is never a valid value (NaN, inf, fractions); the ranges of the
    # sampling settings are GenerationConfig's to check.
    finite = validate.float_arg()
    g.add_argument(
        "--steps", type=validate.int_arg(1, MAX_STEPS), help="mask-decoding steps per latent frame"
    )
    g.add_argument("--guidance", type=finite, help="classifier-free guidance scale")
    g.add_argument("--history-mask-ratio", type=finite, help="history masking ratio in [0, 1)")
    g.add_argument(
        "--temperature", type=finite, default=1.0, help="noise on the keep-confidences (1)"
    )
    g.add_argument(
        "--sample-temperature", type=finite, default=1.0, help="token softmax temperature (1)"
    )
    g.add_argument(
        "--top-k", type=validate.int_arg(1), help="sample among the k likeliest tokens (all)"
    )
    g.add_argument(
        "--official-temperature",
        action="store_true",
        help="the official code's running-product noise decay (no noise after the first "
        "frame) instead of annealing --temperature afresh in every frame",
    )


def sampling_kwargs(args: argparse.Namespace, defaults: PipelineDefaults, num_frames: int) -> dict:
    """The ``LumosPipeline.__call__`` keyword arguments set by :func:`add_sampling_args`, with
    the unset ones resolved by the model's ``defaults`` (for ``num_frames`` RGB frames)."""
    settings = defaults.resolve(
        num_frames=num_frames,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        history_mask_ratio=args.history_mask_ratio,
    )
    return {
        "num_inference_steps": settings["num_inference_steps"],
        "guidance_scale": settings["guidance_scale"],
        "history_mask_ratio": settings["history_mask_ratio"],
        "temperature": args.temperature,
        "sample_temperature": args.sample_temperature,
        "top_k": args.top_k,
        "official_temperature": args.official_temperature,
    }


def slug(text: str, limit: int = 60) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:limit] or "video"


def read_prompts(args: argparse.Namespace) -> list[str]:
    """The prompts of the command line then of ``--prompts-file`` (UTF-8, blank lines and a
    byte-order mark skipped), each checked for length."""
    prompts = list(args.prompts)
    if args.prompts_file:
        text = validate.read_text(args.prompts_file, "prompts file")
        prompts += [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not prompts:
        raise LumosError(f'no prompt given; e.g. lumos generate "{EXAMPLE_PROMPT}"')
    for i, p in enumerate(prompts):
        if not p.strip():
            raise LumosError("a prompt is empty; give a sentence describing the video")
        if len(p) > MAX_PROMPT_CHARS:
            raise LumosError(
                f"prompt {i + 1} has {len(p)} characters; at most {MAX_PROMPT_CHARS} are allowed"
            )
    return prompts


def output_format(args: argparse.Namespace) -> str:
    """``--format``, else the suffix of an ``--out`` file, else mp4; a conflict is an error."""
    suffix = args.out.suffix.lstrip(".").lower() if args.out is not None else ""
    if suffix in OTHER_MEDIA and not args.out.is_dir():
        raise LumosError(
            f"--out {args.out}: .{suffix} is not an output format; use mp4, gif or png"
        )
    named = suffix if suffix in FORMATS and not args.out.is_dir() else None
    if args.format and named and args.format != named:
        raise LumosError(f"--format {args.format} conflicts with --out {args.out} (.{named})")
    return args.format or named or "mp4"


def output_paths(args: argparse.Namespace, prompts: list[str], fmt: str) -> list[Path]:
    """One path per prompt: ``--out`` itself for one prompt and a file name with a format
    suffix; else files in the ``--out`` (default ``outputs``) directory named after the
    prompts, never replacing an existing file (a number is appended instead). Each path is
    checked for writability here, before any work."""
    inputs = [args.prompts_file, args.image]
    out = args.out
    is_file = out is not None and out.suffix.lower().lstrip(".") in FORMATS and not out.is_dir()
    if is_file and len(prompts) == 1:
        return [validate.output_path(out, "file", inputs, "--out")]
    if is_file:
        raise LumosError(
            f"--out {out} names a file but there are {len(prompts)} prompts; give a directory"
        )
    folder = validate.output_path(out if out is not None else Path("outputs"), "dir", inputs)
    width = max(3, len(str(len(prompts) - 1)))
    paths: list[Path] = []
    taken: set[Path] = set()
    for i, p in enumerate(prompts):
        stem = f"{i:0{width}d}_{slug(p)}" if len(prompts) > 1 else slug(p)
        path, n = folder / f"{stem}.{fmt}", 1
        while path in taken or path.exists():
            n += 1
            path = folder / f"{stem}_{n}.{fmt}"
        taken.add(path)
        paths.append(path)
    return paths


def domain_warning(prompts: list[str], domain: str | None) -> str | None:
    """A warning when prompts name nothing of the model's prompt domain (``prompt_domain`` in
    pipeline.json; only the procedural world's is known to lumos), else None."""
    from lumos.generation.pipeline import WORLD_PROMPT_DOMAIN

    if domain != WORLD_PROMPT_DOMAIN:
        return None
    from lumos.data.world import parse_caption

    unknown = []
    for p in prompts:
        try:
            parse_caption(p)
        except LumosError:
            unknown.append(p)
    if not unknown:
        return None
    which = f"{unknown[0]!r}" + (f" and {len(unknown) - 1} more" if len(unknown) > 1 else "")
    return (
        f"warning: {which} names nothing this model was trained on (coloured shapes of the "
        f'procedural world); output will be mostly empty; e.g. "{EXAMPLE_PROMPT}"'
    )


def load_pipeline(args: argparse.Namespace):
    """The pipeline the model options name, placed and with its CPU threads set."""
    from lumos.generation.pipeline import LumosPipeline, placement

    device, dtype = getattr(args, "device", None), getattr(args, "dtype", None)
    adapter = getattr(args, "adapter", None)  # lumos generate only
    if args.random_init:
        pipe = LumosPipeline.random_init(args.seed).to(*placement(device, dtype))
    else:
        pipe = LumosPipeline.from_pretrained(
            args.checkpoint, args.text_tokenizer, args.visual_tokenizer, args.trust_torchscript,
            device=device, dtype=dtype, adapter=adapter,
        )  # fmt: skip
    # CPU threads: --threads, else the model's pipeline.json setting, else PyTorch's default.
    threads = getattr(args, "threads", None)
    threads = pipe.defaults.num_threads if threads is None else threads
    if threads:
        torch.set_num_threads(threads)
    return pipe


def check_memory(
    args: argparse.Namespace, prompts: list[str], schedule: list[tuple[int, str]] | None
) -> None:
    """``--dry-run``: print the plan of the request; ``--max-memory``: refuse a request that
    will not fit, naming what to lower. Only configs and the visual tokenizer are loaded."""
    from lumos.generation.pipeline import LumosPipeline
    from lumos.generation.planner import GiB

    if args.random_init:
        pipe = LumosPipeline.random_init(args.seed)
    else:
        pipe = LumosPipeline.from_pretrained(
            args.checkpoint, args.text_tokenizer, args.visual_tokenizer, args.trust_torchscript,
            weights=False, adapter=args.adapter,
        )  # fmt: skip
    d = pipe.defaults
    size = d.resolve(
        num_frames=1 if args.t2i else args.frames, height=args.height, width=args.width
    )
    sampling = sampling_kwargs(args, d, size["num_frames"])
    batch = min(len(prompts), args.batch_size)
    text_ids = pipe.encode_prompts(
        prompts, size["num_frames"], size["height"], size["width"], args.fps
    )
    longest = max(len(ids) for ids in text_ids)
    scale = d.resolve(negative_guidance_scale=args.negative_guidance)["negative_guidance_scale"]
    texts = [p for _, p in schedule] if schedule else prompts
    negatives = pipe.negative_prompts(args.negative_prompt, texts, schedule is not None)
    negative = bool(scale) and any(n is not None for n in negatives)
    plan = pipe.plan(
        batch, size["num_frames"], size["height"], size["width"],
        sampling["num_inference_steps"], sampling["guidance_scale"], longest,
        compile=args.compile, window=args.window, negative=negative, stream=args.stream,
    )  # fmt: skip
    if args.dry_run:
        print(
            f"{batch} prompt(s) at a time, {size['num_frames']} frames of "
            f"{size['width']}x{size['height']} px, {sampling['num_inference_steps']} steps, "
            f"guidance {sampling['guidance_scale']}"
            + (f", negative guidance {scale}" if negative else "")
        )
        print(plan.table())
    if args.max_memory is not None and plan.total > args.max_memory * GiB:
        raise LumosError(
            f"the request needs about {plan.total / GiB:.2f} GiB (more than --max-memory "
            f"{args.max_memory:g}); lower --batch-size, --frames or --height/--width"
        )


def stream_to_pngs(pipe, request: dict, paths: list[Path], bar) -> tuple[list, int]:
    """Generate with ``pipe.stream``: every RGB frame is written as ``<out>_frames/NNNN.png``
    as soon as its latent frame is decoded, and reported on stderr. Returns the whole videos."""
    import numpy as np
    from PIL import Image

    stream = pipe.stream(**request)  # checks the request: nothing is written on bad input
    folders = [p.with_name(p.stem + "_frames") for p in paths]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    parts, written, fps = [], 0, 1
    for chunk in stream:
        for folder, frames in zip(folders, chunk.frames, strict=True):
            for k, frame in enumerate(frames):
                Image.fromarray(frame).save(folder / f"{written + k:04d}.png")
        n = chunk.frames.shape[1]
        bar.write(
            f"latent frame {chunk.latent_frame}: frames {written}-{written + n - 1} -> "
            f"{folders[0]}{' ...' if len(folders) > 1 else ''}",
            file=sys.stderr,
        )
        parts.append(chunk.frames)
        written, fps = written + n, chunk.fps
    return list(np.concatenate(parts, axis=1)), fps


def load_clip(path: Path, width: int, height: int):
    """A clip to continue, as uint8 RGB [T, H, W, 3] at the output size."""
    from lumos.data.video_io import read_video, resize_crop

    frames, _ = read_video(path)
    return resize_crop(frames, (width, height))


def load_image(path: Path, width: int, height: int):
    from lumos.data.video_io import read_video, resize_crop

    frames, _ = read_video(path, max_frames=1)
    return resize_crop(frames[:1], (width, height))[0]


def run(args: argparse.Namespace) -> int:
    from lumos.generation.pipeline import parse_prompt_schedule, save_frames

    schedule = parse_prompt_schedule(args.prompt_schedule) if args.prompt_schedule else None
    if schedule is not None:
        if args.prompts or args.prompts_file:
            raise LumosError("--prompt-schedule gives the prompts; give no other prompt")
        args.prompts = [" / ".join(p for _, p in schedule)]  # names the output file
    prompts = read_prompts(args)
    if args.seed + len(prompts) - 1 > validate.MAX_SEED:
        raise LumosError(f"--seed + number of prompts must stay <= {validate.MAX_SEED}")
    fmt = output_format(args)
    if args.t2i and args.image:
        raise LumosError("--t2i and --image exclude each other")
    if args.adapter is not None and args.random_init:
        raise LumosError("--adapter applies to a trained model, not to --random-init")
    if args.image is not None:
        validate.input_file(args.image, "--image")
    if args.video is not None:
        validate.input_file(args.video, "--video")
        if args.image is not None or args.t2i:
            raise LumosError("--video (continuation) excludes --image and --t2i")
    if args.negative_prompt is not None and not args.negative_prompt.strip():
        raise LumosError(
            "--negative-prompt is empty; give what to steer away from (--negative-guidance 0 "
            "turns negative guidance off)"
        )
    if args.dry_run or args.max_memory is not None:
        check_memory(args, prompts, schedule)
        if args.dry_run:
            return 0
    paths = output_paths(args, prompts, fmt)
    if args.stream:  # the frame folders are outputs too: never reuse one
        for path in paths:
            folder = path.with_name(path.stem + "_frames")
            if folder.exists():
                raise LumosError(f"{folder} exists; --stream writes its frames there (move it)")
    pipe = load_pipeline(args)
    d = pipe.defaults
    size = d.resolve(
        num_frames=1 if args.t2i else args.frames, height=args.height, width=args.width
    )
    frames, height, width = size["num_frames"], size["height"], size["width"]
    pipe.latent_shape(frames, height, width)  # validate before any work
    warning = domain_warning(prompts, d.prompt_domain)
    image = load_image(args.image, width, height) if args.image else None
    video = load_clip(args.video, width, height) if args.video else None
    sampling = sampling_kwargs(args, d, frames)
    steps = sampling["num_inference_steps"]
    given = 1 if image is not None else 0  # latent frames that are not generated
    if video is not None:
        given = pipe.latent_shape(pipe.continuation_start(len(video), args.window), height, width)[0]
    latent_frames = pipe.latent_shape(frames, height, width)[0] - given
    bar = tqdm(
        total=latent_frames * steps * len(prompts),
        desc="generating",
        unit="step",
        leave=False,
        disable=not sys.stderr.isatty(),
    )
    # Prompt i always uses seed + i, so the batching does not change any output.
    for start in range(0, len(prompts), args.batch_size):
        chunk = range(start, min(start + args.batch_size, len(prompts)))
        request = dict(
            prompt=[p for _, p in schedule] if schedule else [prompts[i] for i in chunk],
            segment_frames=[r for r, _ in schedule] if schedule else None,
            num_frames=frames,
            height=height,
            width=width,
            generator=[torch.Generator().manual_seed(args.seed + i) for i in chunk],
            image=image,
            video=video,
            negative_prompt=args.negative_prompt,
            negative_guidance_scale=args.negative_guidance,
            window=args.window,
            callback=lambda *_: bar.update(1),
            compile=args.compile,
            fps=args.fps,
            **sampling,
        )
        if args.stream:
            videos, fps = stream_to_pngs(pipe, request, [paths[i] for i in chunk], bar)
        else:
            out = pipe(**request)
            videos, fps = out.frames, out.fps
        if warning:  # shown once the request has passed every check: errors stay one line
            print(warning, file=sys.stderr)
            warning = None
        for frames_i, i in zip(videos, chunk, strict=True):
            print(save_frames(frames_i, paths[i], fps))
    bar.close()
    if pipe.label:
        print(f"note: generated with a {pipe.label} model", file=sys.stderr)
    return 0
