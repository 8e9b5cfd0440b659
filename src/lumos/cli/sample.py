"""``lumos sample``: generate a benchmark's prompts in the layout its evaluator reads.

Suites (``--prompts FILE`` is the user's copy of the benchmark's prompt file):

* ``vbench``: VBench's ``VBench_full_info.json`` (a list of objects with ``prompt_en`` and
  ``dimension``) or a text file of prompts, one per line -> ``<out>/{prompt}-{k}.mp4``, 5
  samples per prompt by default (what VBench evaluates). A prompt that repeats an earlier one
  is dropped (it would name the same files).
* ``geneval``: GenEval's ``evaluation_metadata.jsonl`` (one JSON object per line, with
  ``prompt``) -> ``<out>/{i:05d}/metadata.jsonl`` (that line) and
  ``<out>/{i:05d}/samples/{k:04d}.png``; text-to-image, 4 samples per prompt by default.
* ``prompts``: a text file of prompts, one per line -> ``<out>/{i:05d}-{k}.{mp4|gif|png}``,
  1 sample per prompt by default.

``i`` is the prompt's index (blank lines skipped) and ``k`` the sample's. Output (i, k) is
generated with :func:`output_seed` ``(seed, i, k)``, which depends on nothing else, and its frames
are decoded on their own, so a run split with ``--part`` or resumed after an interruption
writes the same frames as one uninterrupted run (on CPU in fp32, tested; on a GPU the kernels
picked for a batch shape may change a few tokens): PNGs are then equal byte for byte, mp4s as
far as libx264 encodes equal frames equally (not always, on the machine of the tests). Every file is written atomically, so an
existing output is finished and is skipped. ``manifest.json`` (``manifest-part-I-of-N.json``
for a part) records every setting and each output's seed; a run refuses an output directory
whose manifests hold other settings.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from lumos import validate
from lumos.atomic import write_text
from lumos.cli.generate import (
    DEFAULT_BATCH,
    FORMATS,
    FPS_ARG,
    FRAMES_ARG,
    MAX_BATCH,
    MAX_PROMPT_CHARS,
    SIDE_ARG,
    add_model_args,
    add_sampling_args,
    domain_warning,
    load_pipeline,
    sampling_kwargs,
)
from lumos.errors import LumosError

SUITES = ("vbench", "geneval", "prompts")
DEFAULT_SAMPLES = {"vbench": 5, "geneval": 4, "prompts": 1}  # what each evaluator expects
MAX_SAMPLES = 10_000  # per prompt
MAX_PARTS = 100_000
MAX_NAME_BYTES = 255  # longest file name on common file systems (ext4, APFS, NTFS)


@dataclass(frozen=True)
class Prompt:
    text: str
    metadata: str | None = None  # GenEval: the prompt's line of evaluation_metadata.jsonl


@dataclass(frozen=True)
class Output:
    prompt_index: int
    sample: int
    seed: int
    path: str  # relative to --out


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sample",
        help="sample a benchmark's prompts (VBench, GenEval, a prompt list) for its evaluator",
        description="Generate every prompt of a benchmark prompt file into the layout its "
        "evaluator reads; resumable (finished outputs are skipped), split across machines "
        "with --part, with a manifest of every setting and seed. Defaults come from the "
        "model's pipeline.json.",
    )
    p.add_argument("--suite", choices=SUITES, required=True, help="the prompt file's format")
    p.add_argument(
        "--prompts",
        type=Path,
        required=True,
        help="vbench: VBench_full_info.json or a text file; geneval: evaluation_metadata.jsonl; "
        "prompts: a text file of one prompt per line",
    )
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument(
        "--samples-per-prompt",
        type=validate.int_arg(1, MAX_SAMPLES),
        help="default: vbench 5, geneval 4, prompts 1",
    )
    p.add_argument(
        "--part",
        type=part_arg,
        default=(0, 1),
        metavar="I/N",
        help="generate only part I (0-based) of N equal runs of consecutive prompts",
    )
    p.add_argument(
        "--seed",
        type=validate.SEED_ARG,
        default=0,
        help="output (i, k) uses a seed made from this, prompt i and sample k (default 0)",
    )
    p.add_argument("--frames", type=FRAMES_ARG, help="RGB frames, 1 + 4k (geneval: 1)")
    p.add_argument("--height", type=SIDE_ARG, help="pixels, a multiple of 8")
    p.add_argument("--width", type=SIDE_ARG, help="pixels, a multiple of 8")
    p.add_argument(
        "--format",
        choices=FORMATS,
        help="--suite prompts only (default: png for 1 frame, else mp4)",
    )
    p.add_argument(
        "--fps",
        type=FPS_ARG,
        help="frame rate the model is conditioned on and the videos are written at (default: "
        "the model's)",
    )
    add_sampling_args(p)
    p.add_argument(
        "--batch-size",
        type=validate.int_arg(1, MAX_BATCH),
        default=DEFAULT_BATCH,
        help=f"outputs generated together (default {DEFAULT_BATCH}); changes no output",
    )
    add_model_args(p)
    p.add_argument(
        "--threads", type=validate.THREADS_ARG, help="CPU threads (default: the model's setting)"
    )
    p.add_argument(
        "--compile", action="store_true", help="compile the decoding step with torch.compile"
    )
    p.set_defaults(func=run)


def part_arg(text: str) -> tuple[int, int]:
    """``"I/N"`` as (I, N) with 0 <= I < N (an argparse ``type=``)."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)) <= MAX_PARTS:
        raise argparse.ArgumentTypeError(
            f"must be I/N with 0 <= I < N <= {MAX_PARTS} (e.g. 0/2 and 1/2), got {text!r}"
        )
    return int(m.group(1)), int(m.group(2))


def part_range(num_prompts: int, part: tuple[int, int]) -> range:
    """The prompt indices of part ``(i, n)``: consecutive runs whose sizes differ by at most
    one, together covering every prompt once."""
    i, n = part
    return range(num_prompts * i // n, num_prompts * (i + 1) // n)


def output_seed(seed: int, prompt_index: int, sample: int) -> int:
    """The seed of output (``prompt_index``, ``sample``): a hash of the three, in 0..2^63 - 1
    (stable across runs, machines and versions; reproduce one output with ``lumos generate
    --seed`` and the manifest's seed)."""
    digest = hashlib.sha256(f"lumos-sample/{seed}/{prompt_index}/{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def read_suite(suite: str, path: Path) -> list[Prompt]:
    """The prompts of ``path`` in the format of ``suite``, each checked for length (and, for
    VBench, for use as a file name); a malformed file is a one-line error naming the line."""
    text = validate.read_text(path, "--prompts file")
    if suite == "geneval":
        prompts = _geneval_prompts(text, path)
    elif suite == "vbench" and path.suffix.lower() == ".json":
        prompts = _vbench_prompts(text, path)
    else:
        prompts = [Prompt(line.strip()) for line in text.splitlines() if line.strip()]
    if not prompts:
        raise LumosError(f"--prompts file {path} holds no prompt")
    for i, p in enumerate(prompts):
        if len(p.text) > MAX_PROMPT_CHARS:
            raise LumosError(
                f"prompt {i} of {path} has {len(p.text)} characters; at most "
                f"{MAX_PROMPT_CHARS} are allowed"
            )
    if suite == "vbench":
        prompts = list(dict.fromkeys(prompts))  # the first of equal prompts is kept
        for i, p in enumerate(prompts):
            name = f"{p.text}-{MAX_SAMPLES}.mp4"
            if "/" in p.text or "\0" in p.text or len(name.encode()) > MAX_NAME_BYTES:
                raise LumosError(
                    f"VBench prompt {i} ({p.text[:40]!r}...) cannot name a file "
                    f"({{prompt}}-{{index}}.mp4 must hold no '/' and fit {MAX_NAME_BYTES} bytes)"
                )
    return prompts


def _vbench_prompts(text: str, path: Path) -> list[Prompt]:
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as err:
        raise LumosError(f"--prompts file {path} is not valid JSON ({err})") from None
    if not isinstance(entries, list):
        raise LumosError(
            f"--prompts file {path} must hold a JSON list of objects with prompt_en and "
            f"dimension (VBench_full_info.json), got {type(entries).__name__}"
        )
    prompts = []
    for i, entry in enumerate(entries):
        prompt = entry.get("prompt_en") if isinstance(entry, dict) else None
        if not isinstance(prompt, str) or not prompt.strip():
            raise LumosError(
                f"entry {i} of {path} has no prompt_en text (VBench_full_info.json entries are "
                '{"prompt_en": "...", "dimension": [...]})'
            )
        prompts.append(Prompt(prompt.strip()))
    return prompts


def _geneval_prompts(text: str, path: Path) -> list[Prompt]:
    prompts = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as err:
            raise LumosError(f"line {n} of {path} is not valid JSON ({err})") from None
        prompt = entry.get("prompt") if isinstance(entry, dict) else None
        if not isinstance(prompt, str) or not prompt.strip():
            raise LumosError(
                f'line {n} of {path} has no "prompt" text (evaluation_metadata.jsonl lines are '
                "JSON objects with a prompt)"
            )
        prompts.append(Prompt(prompt.strip(), line.strip()))
    return prompts


def output_name(suite: str, prompt: str, i: int, k: int, fmt: str) -> str:
    """The path of output (prompt ``i``, sample ``k``) relative to ``--out``."""
    if suite == "vbench":
        return f"{prompt}-{k}.mp4"
    if suite == "geneval":
        return f"{i:05d}/samples/{k:04d}.png"
    return f"{i:05d}-{k}.{fmt}"


def plan(
    suite: str, prompts: list[Prompt], samples: int, seed: int, part: tuple[int, int], fmt: str
) -> list[Output]:
    """Every output of ``part``, prompt by prompt."""
    return [
        Output(i, k, output_seed(seed, i, k), output_name(suite, prompts[i].text, i, k, fmt))
        for i in part_range(len(prompts), part)
        for k in range(samples)
    ]


def manifest_name(part: tuple[int, int]) -> str:
    i, n = part
    return "manifest.json" if n == 1 else f"manifest-part-{i}-of-{n}.json"


def check_manifests(out: Path, settings: dict) -> bool:
    """Whether ``out`` holds manifests (of this run or its other parts); one with other
    settings is an error naming the settings that differ."""
    found = False
    for path in sorted(out.glob("manifest*.json")) if out.is_dir() else []:
        stored = validate.read_json_object(path, "manifest").get("settings")
        if stored != settings:
            stored = stored if isinstance(stored, dict) else {}
            differ = sorted(
                k for k in settings.keys() | stored.keys() if stored.get(k) != settings.get(k)
            )
            raise LumosError(
                f"--out {out} holds a run with other settings ({', '.join(differ)} differ; see "
                f"{path.name}); give another --out or the same settings to resume it"
            )
        found = True
    return found


def pending_outputs(
    out: Path,
    outputs: list[Output],
    settings: dict,
    metadata: dict[int, str],
    inputs: list[Path | None],
) -> list[Output]:
    """The ``outputs`` not yet in ``out``, once ``out`` is known to hold only this run's
    files: its manifests have these ``settings``, files of these names come with a manifest,
    GenEval ``metadata`` files (by prompt index) hold their prompt's line, and no output
    would replace one of the ``inputs``."""
    resumed = check_manifests(out, settings)
    pending = [o for o in outputs if not (out / o.path).exists()]
    if len(pending) < len(outputs) and not resumed:
        there = next(o for o in outputs if (out / o.path).exists())
        raise LumosError(
            f"--out {out} holds {there.path} but no manifest of lumos sample (not this run's "
            "output); give another --out"
        )
    taken = {Path(p).resolve() for p in inputs if p is not None}
    for o in outputs:
        if (out / o.path).resolve() in taken:
            raise LumosError(f"output {out / o.path} would replace an input; give another --out")
    for i, line in metadata.items():
        path = out / f"{i:05d}" / "metadata.jsonl"
        if path.exists() and path.read_text(encoding="utf-8") != line + "\n":
            raise LumosError(f"{path} holds another prompt's metadata; give another --out")
    return pending


def run(args: argparse.Namespace) -> int:
    from lumos.generation.pipeline import save_frames

    suite = args.suite
    prompts = read_suite(suite, args.prompts)
    samples = args.samples_per_prompt or DEFAULT_SAMPLES[suite]
    if suite == "geneval" and args.frames not in (None, 1):
        raise LumosError(f"--suite geneval is text-to-image (1 frame); got --frames {args.frames}")
    if suite != "prompts" and args.format:
        fixed = "mp4" if suite == "vbench" else "png"
        raise LumosError(f"--format is for --suite prompts; {suite} writes {fixed}")
    inputs = [args.prompts, args.checkpoint, args.text_tokenizer, args.visual_tokenizer]
    out = validate.output_path(args.out, "dir", inputs, "--out")
    pipe = load_pipeline(args)
    d = pipe.defaults
    size = d.resolve(
        num_frames=1 if suite == "geneval" else args.frames, height=args.height, width=args.width
    )
    frames, height, width = size["num_frames"], size["height"], size["width"]
    if suite == "vbench" and frames == 1:
        raise LumosError("--suite vbench evaluates videos; give --frames > 1 (1 + 4k)")
    pipe.latent_shape(frames, height, width)  # a one-line error listing the allowed sizes
    fmt = {"vbench": "mp4", "geneval": "png"}.get(suite) or args.format
    fmt = fmt or ("png" if frames == 1 else "mp4")
    sampling = sampling_kwargs(args, d, frames)
    outputs = plan(suite, prompts, samples, args.seed, args.part, fmt)
    part = part_range(len(prompts), args.part)
    if len(part):
        pipe.encode_prompts([prompts[i].text for i in part], frames, height, width, args.fps)
    settings = {
        "suite": suite,
        "prompts_sha256": hashlib.sha256(args.prompts.read_bytes()).hexdigest(),
        "num_prompts": len(prompts),
        "samples_per_prompt": samples,
        "seed": args.seed,
        "model": "random-init" if args.random_init else str(args.checkpoint or "shipped"),
        "text_tokenizer": None if args.text_tokenizer is None else str(args.text_tokenizer),
        "visual_tokenizer": None if args.visual_tokenizer is None else str(args.visual_tokenizer),
        "num_frames": frames,
        "height": height,
        "width": width,
        "fps": args.fps,  # None: the pipeline's (from the model's pipeline.json)
        "format": fmt,
        "dtype": str(pipe.model.lm_head.weight.dtype).removeprefix("torch."),
        **sampling,
    }
    metadata = {i: prompts[i].metadata for i in part if prompts[i].metadata is not None}
    pending = pending_outputs(out, outputs, settings, metadata, inputs)
    manifest = {
        "settings": settings,
        "prompts_file": str(args.prompts),
        "device": str(pipe.model.lm_head.weight.device),
        "part": f"{args.part[0]}/{args.part[1]}",
        "prompt_indices": [part.start, part.stop],
        "batch_size": args.batch_size,
        "outputs": [
            {"path": o.path, "prompt_index": o.prompt_index, "sample": o.sample, "seed": o.seed}
            for o in outputs
        ],
    }

    def write_records() -> None:  # once the settings have been accepted by the pipeline
        write_text(out / manifest_name(args.part), json.dumps(manifest, indent=1) + "\n")
        for i, line in metadata.items():
            path = out / f"{i:05d}" / "metadata.jsonl"
            if not path.exists():
                write_text(path, line + "\n")

    warning = domain_warning([prompts[i].text for i in part], d.prompt_domain)
    if warning and pending:
        print(warning, file=sys.stderr)
    bar = tqdm(total=len(pending), desc="sampling", unit="output", disable=not sys.stderr.isatty())
    recorded = False
    for b0 in range(0, len(pending), args.batch_size):
        batch = pending[b0 : b0 + args.batch_size]
        result = pipe(
            [prompts[o.prompt_index].text for o in batch],
            num_frames=frames,
            height=height,
            width=width,
            generator=[torch.Generator().manual_seed(o.seed) for o in batch],
            fps=args.fps,
            compile=args.compile,
            decode=False,
            **sampling,
        )
        if not recorded:
            write_records()
            recorded = True
        for o, codes in zip(batch, result.codes, strict=True):
            # decoded alone: batched convolutions may round a pixel differently, and a
            # resumed or split run batches other outputs together
            video = pipe.decode(codes[None])[0]
            print(save_frames(video, out / o.path, result.fps))
            bar.update(1)
    bar.close()
    if not recorded:
        write_records()
    which = f"prompts {part.start}..{part.stop - 1}" if len(part) else "no prompt"
    print(
        f"{len(pending)} outputs written, {len(outputs) - len(pending)} already there "
        f"({which} of {len(prompts)}); manifest: {out / manifest_name(args.part)}",
        file=sys.stderr,
    )
    if pipe.label:
        print(f"note: generated with a {pipe.label} model", file=sys.stderr)
    return 0
