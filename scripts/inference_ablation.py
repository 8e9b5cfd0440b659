"""Inference ablations of a pipeline (default: the shipped model) measured with ``lumos eval``.

Each setting changes one sampling option from the model's defaults (pipeline.json): the
history mask ratio, the steps per latent frame, the guidance scale, or the official
running-product temperature instead of the per-frame annealing. Every setting is one
``lumos eval`` process on the same cases (same ``--n`` and ``--seed``), one after the other, on
one CPU thread (``OMP_NUM_THREADS=1``); a setting whose ``report.json`` exists is reused. The
table (markdown, colour / shape / motion per group, and the wall time of each process) is
printed at the end, also for runs made with other ``--n``.

    python scripts/inference_ablation.py --out-root runs/inference-ablation --n 100
    python scripts/inference_ablation.py --out-root runs/inference-ablation --table
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# (name, lumos eval options), in the order they are run: the most telling first
SETTINGS = [
    ("defaults", []),
    ("history-mask-0", ["--history-mask-ratio", "0"]),
    ("history-mask-0.9", ["--history-mask-ratio", "0.9"]),
    ("steps-4", ["--steps", "4"]),
    ("steps-32", ["--steps", "32"]),
    ("guidance-1", ["--guidance", "1"]),
    ("guidance-8", ["--guidance", "8"]),
    ("official-temperature", ["--official-temperature"]),
    ("history-mask-0.3", ["--history-mask-ratio", "0.3"]),
    ("history-mask-0.5", ["--history-mask-ratio", "0.5"]),
    ("steps-8", ["--steps", "8"]),
    ("guidance-5", ["--guidance", "5"]),
]
GROUPS = ("t2v_heldin", "t2v_heldout", "t2i", "i2v_heldout")


def command(args: argparse.Namespace, options: list[str], out: Path) -> list[str]:
    cmd = ["lumos", "eval", "--n", str(args.n), "--seed", str(args.seed), "--out", str(out)]
    cmd += ["--batch-size", str(args.batch_size)]
    if args.checkpoint:
        cmd += ["--checkpoint", args.checkpoint]
    return cmd + options


def run(args: argparse.Namespace, name: str, options: list[str]) -> None:
    out = Path(args.out_root) / name
    if (out / "report.json").is_file():
        print(f"{name}: reusing {out / 'report.json'}", flush=True)
        return
    cmd = command(args, options, out)
    print(f"{name}: {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "lumos.cli.main", *cmd[1:]], check=True, env=env)
    wall = time.perf_counter() - start
    (out / "wall.json").write_text(json.dumps({"command": cmd, "wall_seconds": round(wall, 1)}))


def cell(acc: dict, key: str) -> str:
    return f"{100 * acc[key]:.0f}" if key in acc else "-"


def table(args: argparse.Namespace) -> str:
    head = "| lumos eval options | n | " + " | ".join(GROUPS) + " | wall time |"
    lines = [head, "|" + "---|" * (len(GROUPS) + 3)]
    for name, options in SETTINGS:
        out = Path(args.out_root) / name
        if not (out / "report.json").is_file():
            continue
        report = json.loads((out / "report.json").read_text())
        wall = json.loads((out / "wall.json").read_text()) if (out / "wall.json").is_file() else {}
        groups = []
        for g in GROUPS:
            acc = report["accuracy"].get(g)
            keys = ("color", "shape") if g == "t2i" else ("color", "shape", "motion")
            groups.append(" / ".join(cell(acc, k) for k in keys) if acc else "")
        n = report["settings"]["n_per_group"]
        seconds = wall.get("wall_seconds", report["settings"]["seconds"])
        label = f"`{' '.join(options)}`" if options else "(defaults)"
        lines.append(f"| {label} | {n} | " + " | ".join(groups) + f" | {seconds / 60:.1f} min |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out-root", default="runs/inference-ablation")
    p.add_argument("--n", type=int, default=100, help="prompts per group")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--batch-size", type=int, default=32, help="prompts at once (changes no result; 32)"
    )
    p.add_argument("--checkpoint", help="pipeline directory (default: the shipped model)")
    p.add_argument("--only", nargs="+", help="these settings only, in this order")
    p.add_argument("--table", action="store_true", help="print the table of finished runs")
    args = p.parse_args()
    chosen = dict(SETTINGS)
    unknown = [name for name in args.only or [] if name not in chosen]
    if unknown:
        p.error(f"unknown settings {unknown}; choose from {', '.join(chosen)}")
    if not args.table:
        Path(args.out_root).mkdir(parents=True, exist_ok=True)
        for name in args.only or chosen:
            run(args, name, chosen[name])
    print(table(args))


if __name__ == "__main__":
    main()
