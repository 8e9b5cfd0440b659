"""Pre-tokenisation throughput and kill/resume determinism on procedural-world clips.

First the visual tokenizer alone: clips/s encoding ``--encode-batch`` clips one per call
against all in one call (the batching ``lumos tokenize`` does), on ``--device`` in
``--precision``. Then ``pretokenize`` three times in child processes (each in its own process
group): uninterrupted; interrupted with SIGKILL (main process and workers) once
``--kill-after`` shards exist; then restarted to completion. Prints clips/s of the
uninterrupted run and checks that the resumed output is byte-identical to the uninterrupted one.

    python benchmarks/bench_pretokenize.py                      # 2,000 clips, 2 workers
    python benchmarks/bench_pretokenize.py --count 200 --samples-per-shard 20
    python benchmarks/bench_pretokenize.py --visual-tokenizer lumos-1-1b/visual_tokenizer \
        --height 256 --width 448 --frames 25 --fps 12 --workers 1     # a GPU: bf16 by default

Tokenizers: the shipped ones (``src/lumos/assets/default/``) when present; otherwise a seeded,
untrained :class:`CausalVideoTokenizer` (default architecture, same cost as a trained one) and
a BPE tokenizer trained on world captions, written to the work directory.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from lumos.cli.tokenize import DEFAULT_TEXT_TOKENIZER
from lumos.data.pretokenize import WorldSource, load_tokenizers, make_job, pretokenize
from lumos.data.world import ProceduralWorld
from lumos.tokenizers.causal_video import CausalVideoTokenizer
from lumos.tokenizers.text import train_text_tokenizer
from lumos.tokenizers.visual import DEFAULT_VISUAL_TOKENIZER_DIR, frames_to_video
from lumos.training.distributed import resolve_precision

REPEATS = 5  # encoder timings: the median of this many


def tokenizers(work: Path, visual: Path | None) -> tuple[Path, Path, str]:
    text, what = DEFAULT_TEXT_TOKENIZER, []
    if visual is not None:
        what.append(f"visual tokenizer {visual}")
    elif DEFAULT_VISUAL_TOKENIZER_DIR.is_dir():
        visual = DEFAULT_VISUAL_TOKENIZER_DIR
    else:
        visual = work / "visual_tokenizer"
        torch.manual_seed(0)
        CausalVideoTokenizer().save_pretrained(visual)
        what.append("untrained default-architecture visual tokenizer")
    if not text.exists():
        text = work / "text_tokenizer"
        world = ProceduralWorld("train", 32, 32, 1, image_fraction=0.5)
        train_text_tokenizer([world[i].caption for i in range(500)], 1000, text)
        what.append("BPE text tokenizer trained on world captions")
    return visual, text, "; ".join(what) or "shipped tokenizers"


def placement(args: argparse.Namespace) -> tuple[torch.device, torch.dtype]:
    device = torch.device(args.device)
    return device, resolve_precision(args.precision, device)


def child(args: argparse.Namespace) -> None:
    source = WorldSource(
        "train", args.count, args.height, args.width, args.frames, args.fps, args.image_fraction
    )
    job, toks = make_job(
        source,
        args.out,
        args.visual,
        args.text,
        args.samples_per_shard,
        args.encode_batch,
        *placement(args),
    )
    began = time.perf_counter()
    summary = pretokenize(job, toks, args.workers, progress=False)
    summary["wall_seconds"] = time.perf_counter() - began
    print(json.dumps(summary))


def launch(args: argparse.Namespace, out: Path, visual: Path, text: Path) -> subprocess.Popen:
    cmd = [sys.executable, __file__, "--child", "--out", str(out), "--visual", str(visual)]
    cmd += ["--text", str(text)]
    names = ("count", "height", "width", "frames", "fps", "image_fraction", "workers")
    names += ("samples_per_shard", "encode_batch", "device", "precision")
    for name in names:
        cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True)


def finish(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"child failed with status {proc.returncode}")
    return json.loads(out.strip().splitlines()[-1])


def seconds(fn) -> float:
    """Median wall time of ``fn`` over :data:`REPEATS` runs after one warm-up (``fn`` ends in a
    host copy of its result, so GPU work is finished when it returns)."""
    fn()
    times = []
    for _ in range(REPEATS):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return sorted(times)[REPEATS // 2]


def encoder_table(args: argparse.Namespace, visual: Path, text: Path) -> None:
    """Clips/s of the visual tokenizer: one clip per call against ``--encode-batch`` per call,
    with one intra-op thread as in ``lumos tokenize``."""
    torch.set_num_threads(1)
    device, dtype = placement(args)
    encode = load_tokenizers(visual, text, device, dtype).visual.encode
    world = ProceduralWorld("train", args.height, args.width, args.frames, seed=1)
    clips = torch.stack([frames_to_video(world[i].frames) for i in range(args.encode_batch)])
    clips = clips.to(device, dtype)
    alone = seconds(lambda: [encode(clips[i : i + 1]).cpu() for i in range(len(clips))])
    batched = seconds(lambda: encode(clips).cpu())
    n = len(clips)
    print(f"visual tokenizer on {device} in {str(dtype).removeprefix('torch.')}, {n} clips:")
    print(f"{'calls':>24} {'clips/s':>9} {'vs one per call':>16}")
    print(f"{'one clip per call':>24} {n / alone:9.1f} {1:16.2f}")
    print(f"{f'{n} clips per call':>24} {n / batched:9.1f} {alone / batched:16.2f}")


def files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.parquet")) + [out / "index.json"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=2000)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--frames", type=int, default=9)
    p.add_argument("--fps", type=int, default=4)
    p.add_argument("--image-fraction", type=float, default=0.3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--samples-per-shard", type=int, default=100)
    p.add_argument("--encode-batch", type=int, default=8)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    p.add_argument("--visual-tokenizer", type=Path, help="default: the shipped one")
    p.add_argument("--skip-runs", action="store_true", help="the encoder table only")
    p.add_argument("--kill-after", type=int, default=8, help="shards done before the SIGKILL")
    p.add_argument("--workdir", type=Path, help="default: a temporary directory")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--visual", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--text", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_pretokenize_"))
    visual, text, what = tokenizers(work, args.visual_tokenizer)
    print(f"tokenizers: {what}; work directory {work}")
    print(
        f"{args.count} world clips {args.width}x{args.height} (W x H), {args.frames} frames, "
        f"{args.image_fraction:.0%} images, {args.workers} workers, "
        f"{args.samples_per_shard} samples per shard, {os.cpu_count()} CPUs"
    )
    encoder_table(args, visual, text)
    if args.skip_runs:
        return

    began = time.perf_counter()
    full = finish(launch(args, work / "uninterrupted", visual, text))
    wall = time.perf_counter() - began
    print(
        f"uninterrupted: {args.count / wall:.1f} clips/s end to end ({wall:.1f} s, process start "
        f"included); {full['samples_per_second']:.1f} clips/s inside the run"
    )

    resumed_dir = work / "resumed"
    proc = launch(args, resumed_dir, visual, text)
    while len(list(resumed_dir.glob("shard-*.parquet"))) < args.kill_after:
        if proc.poll() is not None:
            raise SystemExit("the run finished before it could be killed; lower --kill-after")
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_with = len(list(resumed_dir.glob("shard-*.parquet")))
    began = time.perf_counter()
    rest = finish(launch(args, resumed_dir, visual, text))
    print(
        f"killed with {killed_with}/{rest['shards_total']} shards done; restart redid "
        f"{rest['shards_tokenized']} shards in {time.perf_counter() - began:.1f} s"
    )
    same = files(resumed_dir) == files(work / "uninterrupted")
    print(f"resumed output byte-identical to uninterrupted: {same}")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
