"""Peak memory of native Cosmos decoding: whole clip vs temporal chunks.

Decodes random indices of a clip (default 33 RGB frames of 256 x 448 = 9 x 32 x 56 latent
tokens) with a randomly initialised network of the released width (channels 128, 112 M
parameters), once per chunk setting, each in its own child process. On CUDA the peak is
``torch.cuda.max_memory_allocated``; on the CPU it is the growth of the process's peak
resident set (``VmHWM``, reset after the model is built) during the decode. Also checks
that every chunked result equals the whole-clip one.

    python benchmarks/bench_cosmos_memory.py                      # whole, 1 and 2 latent frames
    python benchmarks/bench_cosmos_memory.py --chunks 0 1 --channels 32 --frames 17

The first row is a decode of one latent frame (1 RGB frame): the network's fixed cost.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from lumos.tokenizers.cosmos_native import CosmosConfig, CosmosVideoTokenizer


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(args: argparse.Namespace) -> dict:
    """One decode in this process; returns peak memory in MiB and the output path."""
    torch.manual_seed(0)
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    model = CosmosVideoTokenizer(CosmosConfig(channels=args.channels), chunk_frames=args.chunk)
    model = model.to(device, dtype).eval()
    t = 1 + (args.frames - 1) // 4
    indices = torch.randint(0, 64000, (1, t, args.height // 8, args.width // 8), device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        base = _status_kib("VmRSS") * 1024
    start = time.perf_counter()
    video = model.decode(indices)
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = _status_kib("VmHWM") * 1024 - base
    seconds = time.perf_counter() - start
    torch.save(video.cpu(), args.save)
    return {"chunk": args.chunk, "peak_mib": peak / 2**20, "seconds": seconds}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--chunks", type=int, nargs="+", default=[0, 1, 2], help="0 = whole clip")
    p.add_argument("--channels", type=int, default=128)
    p.add_argument("--frames", type=int, default=33)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=448)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--no-mkldnn", action="store_true", help="CPU convolutions without oneDNN (slower)"
    )
    p.add_argument("--chunk", type=int, help=argparse.SUPPRESS)  # child process
    p.add_argument("--save", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.backends.mkldnn.enabled = not args.no_mkldnn
    if args.chunk is not None:
        args.chunk = args.chunk or None
        print(json.dumps(measure(args)))
        return
    # Large blocks straight from mmap and freed memory handed back, so that the resident set
    # follows the live tensors rather than glibc's retained heap.
    env = os.environ | {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}

    def run(chunk: int, frames: int, out: Path) -> dict:
        cmd = [sys.executable, __file__, "--chunk", str(chunk), "--save", str(out)]
        cmd += ["--frames", str(frames)]
        for name in ("channels", "height", "width", "device", "dtype", "threads"):
            cmd += [f"--{name}", str(getattr(args, name))]
        cmd += ["--no-mkldnn"] if args.no_mkldnn else []
        line = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
        return json.loads(line.strip().splitlines()[-1]) | {"out": out}

    with tempfile.TemporaryDirectory() as tmp:
        # The network's fixed cost (workspaces, re-laid-out weights): one latent frame.
        base = run(0, 1, Path(tmp) / "one_frame.pt")
        results = [run(c, args.frames, Path(tmp) / f"chunk{c}.pt") for c in args.chunks]
        reference = torch.load(results[0]["out"])
        print(
            f"Cosmos decode, {args.frames} frames of {args.height}x{args.width}, channels "
            f"{args.channels}, {args.device} {args.dtype}; peak memory growth during the "
            f"decode (one latent frame alone: {base['peak_mib']:.1f} MiB)"
        )
        for r in results:
            diff = (torch.load(r["out"]) - reference).abs().max().item()
            label = "whole clip" if not r["chunk"] else f"chunks of {r['chunk']} latent frames"
            print(
                f"  {label:<28} peak +{r['peak_mib']:8.1f} MiB  {r['seconds']:6.1f} s  "
                f"max |diff| vs first {diff:.2e}"
            )


if __name__ == "__main__":
    main()
