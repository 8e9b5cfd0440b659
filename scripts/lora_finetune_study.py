"""LoRA study: the shipped model fine-tuned on the world clips it never trained on.

The shipped model (src/lumos/assets/default) was trained on the procedural world's ``train``
split, which never shows a held-out colour-shape pair (``lumos.data.world.HELDOUT_PAIRS``); every
``heldout`` clip has at least one. This script, each phase skipped when already done:

1. pre-tokenises with the shipped tokenizers (64 x 64 px, 9 frames, 30 % images): held-out
   training clips (``--train-count``, seed 3), the 400 held-out validation clips the shipped
   model was validated on (seed 1; never trained on) and ``--heldin-count`` fresh train-split
   clips (seed 4) to see what the adapter does to the pairs the model already knew;
2. trains one LoRA adapter per ``--seeds`` entry with ``lumos train --config RUN/config.yaml
   --set lora.rank=R`` (base frozen), one run at a time; a killed run resumes when rerun;
3. measures the AR-DF loss (tube masks, text drop 0.1, as in training) of the base model and of
   each adapter on every clip of the validation sets, with the same masks for every model: the
   mean over ``--eval-draws`` mask draws, weighted by scored positions;
4. prints a Markdown table and writes OUT/results.json.

The drop counts if it exceeds the seed-to-seed noise: the spread of the two adapters' losses.

    nice -n 10 python scripts/lora_finetune_study.py --out /work/runs/lora
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from lumos.data.kinds import KINDS
from lumos.data.shards import iter_samples, read_index
from lumos.generation.pipeline import DEFAULT_PIPELINE_DIR
from lumos.model.transformer import LumosModel
from lumos.training import lora
from lumos.training.config import MaskingConfig
from lumos.training.objective import ardf_loss, collate
from lumos.training.sources import sample_seed

BASE = DEFAULT_PIPELINE_DIR / "transformer"
MASKING = MaskingConfig(type="tube", schedule="cosine", min_rate=0.7, text_drop=0.1)
EVAL_BATCH = 16  # clips per forward when measuring


def lumos_cli(*args: str, threads: int) -> dict[str, float]:
    """Run ``python -m lumos.cli.main ARGS`` (inherits this process's niceness); its wall and
    CPU (user + system) seconds."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    start, start_cpu = time.perf_counter(), cpu()
    subprocess.run([sys.executable, "-m", "lumos.cli.main", *args], env=env, check=True)
    return {"wall_s": time.perf_counter() - start, "cpu_s": cpu() - start_cpu}


def tokenize(out: Path, split: str, count: int, seed: int, threads: int) -> None:
    if (out / "index.json").is_file():
        return
    lumos_cli("tokenize", "--world", split, "--count", str(count), "--seed", str(seed),
              "--height", "64", "--width", "64", "--frames", "9", "--image-fraction", "0.3",
              "--workers", "1", "--quiet", "--out", str(out), threads=threads)  # fmt: skip


def run_config(args: argparse.Namespace, seed: int, run: Path) -> dict:
    """The fine-tuning recipe (LoRA settings other than the rank; the rank comes on the
    command line). Batches and masking as the shipped model's training."""
    return {
        "name": f"lora-heldout-seed{seed}",
        "model": {"init_from": str(BASE), "vocabulary": "data"},
        "data": {
            "source": "shards",
            "shards": [str(args.out / "heldout-train")],
            "image_ratio": 0.25,
        },
        "masking": {
            "type": MASKING.type,
            "schedule": MASKING.schedule,
            "min_rate": MASKING.min_rate,
            "text_drop": MASKING.text_drop,
        },
        "optim": {
            "lr": args.lr,
            "warmup_steps": 20,
            "schedule": "cosine",
            "min_lr_ratio": 0.1,
            "weight_decay": 0.0,
            "grad_clip": 4.0,
        },
        "lora": {"alpha": args.alpha, "dropout": 0.0},
        "steps": args.steps,
        "micro_batch_size": 8,
        "image_micro_batch_size": 16,
        "precision": "fp32",
        "attention": "split",
        "seed": seed,
        "log_every": 10,
        "checkpoint_every": 50,
        "keep_checkpoints": 1,
        "tensorboard": False,
        "threads": args.threads,
        "output_dir": str(run),
    }


def train(args: argparse.Namespace, seed: int) -> dict[str, float] | None:
    """Fine-tune one adapter; its wall and CPU seconds (None when it was already trained)."""
    run = args.out / f"seed-{seed}"
    if (run / "adapter" / lora.ADAPTER_WEIGHTS).is_file():
        return None
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(yaml.safe_dump(run_config(args, seed, run), sort_keys=False))
    return lumos_cli("train", "--config", str(run / "config.yaml"),
                     "--set", f"lora.rank={args.rank}", threads=args.threads)  # fmt: skip


@torch.no_grad()
def heldout_loss(model: LumosModel, data: Path, draws: int) -> dict[str, float]:
    """AR-DF loss per kind and over all scored positions of every clip of ``data``; masks of
    batch b, kind k, draw d seeded by (d, k, b): the same for every model."""
    index = read_index(data)
    samples = list(iter_samples(data))
    sums = {kind: [0.0, 0] for kind in KINDS}
    for kind in KINDS:
        seqs = [
            s.sequence(index.vocab, index.spatial_compression) for s in samples if s.kind == kind
        ]
        for draw in range(draws):
            for b, start in enumerate(range(0, len(seqs), EVAL_BATCH)):
                gen = torch.Generator().manual_seed(sample_seed(draw, 2, KINDS.index(kind), b))
                batch = collate(seqs[start : start + EVAL_BATCH], index.vocab, MASKING, gen)
                out = ardf_loss(model, batch)
                sums[kind][0] += float(out.loss_sum)
                sums[kind][1] += out.count
    result = {kind: s / max(n, 1) for kind, (s, n) in sums.items()}
    result["all"] = sum(s for s, _ in sums.values()) / max(sum(n for _, n in sums.values()), 1)
    return result


def evaluate(args: argparse.Namespace, adapter: Path | None) -> dict[str, dict[str, float]]:
    model = LumosModel.from_pretrained(BASE, dtype=torch.float32)
    if adapter is not None:
        lora.load_adapter(model, adapter)
    sets = {"heldout": args.out / "heldout-val"}
    if args.heldin_count:
        sets["heldin"] = args.out / "heldin-val"
    return {name: heldout_loss(model.eval(), path, args.eval_draws) for name, path in sets.items()}


def table(results: dict, seeds: list[int]) -> str:
    rows = ["| model | set | image | video | all |", "|---|---|---|---|---|"]
    for name in ["base", *(f"seed-{s}" for s in seeds)]:
        for split, loss in results["loss"][name].items():
            rows.append(f"| {name} | {split} | {loss['image']:.4f} | {loss['video']:.4f} | "
                        f"{loss['all']:.4f} |")  # fmt: skip
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="data, runs and results (not the repo)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--steps", type=int, default=300, help="optimiser steps per run")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--alpha", type=float, default=16.0)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--train-count", type=int, default=3000, help="held-out training clips")
    p.add_argument("--heldin-count", type=int, default=400, help="train-split clips (0: skip)")
    p.add_argument("--eval-draws", type=int, default=3, help="mask draws per clip when measuring")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)

    tokenize(args.out / "heldout-train", "heldout", args.train_count, 3, args.threads)
    tokenize(args.out / "heldout-val", "heldout", 400, 1, args.threads)
    if args.heldin_count:
        tokenize(args.out / "heldin-val", "train", args.heldin_count, 4, args.threads)
    file = args.out / "results.json"
    results = json.loads(file.read_text()) if file.is_file() else {"train": {}, "loss": {}}
    for seed in args.seeds:
        times = train(args, seed)
        if times is not None:
            results["train"][f"seed-{seed}"] = times
    for name, adapter in [("base", None)] + [
        (f"seed-{s}", args.out / f"seed-{s}" / "adapter") for s in args.seeds
    ]:
        start = time.perf_counter()
        results["loss"][name] = evaluate(args, adapter)
        results.setdefault("eval_s", {})[name] = time.perf_counter() - start
    after = [results["loss"][f"seed-{s}"]["heldout"]["all"] for s in args.seeds]
    before = results["loss"]["base"]["heldout"]["all"]
    results["summary"] = {
        "before": before,
        "after_mean": sum(after) / len(after),
        "drop": before - sum(after) / len(after),
        "seed_spread": max(after) - min(after),
    }
    results["settings"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    file.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results, args.seeds))
    print(json.dumps(results["summary"], indent=2))


if __name__ == "__main__":
    main()
