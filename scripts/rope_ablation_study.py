"""MM-RoPE ablation study (docs/design.md, "MM-RoPE"): train the same world model with each
``rope_type``, two seeds each, then compare validation loss per latent frame and generation
quality measured with ``lumos eval``.

The paper (Lumos-1, its RoPE ablation) supports MM-RoPE with validation-loss curves only:
MM-RoPE below M-RoPE below 1-D RoPE. Here every run has the same data, steps, schedule and
configuration (``configs/default-model.yaml`` at the AR-DF masking study's scale: one process
and one thread per run, 8 clips a step, 1,500 steps, 50 warm-up steps); only ``rope_type``
and the seed (weights, data order, masks) change.

    python scripts/rope_ablation_study.py --out-root runs/rope-study
    python scripts/rope_ablation_study.py --out-root runs/rope-study --table

Per run ``OUT/RUN`` (``RUN`` = ``ROPE-seedS``), each stage skipped when its output exists, so a
rerun reuses finished runs and resumes interrupted ones (training from its checkpoints):

1. token shards, made once under ``OUT/data`` with ``lumos tokenize`` as
   ``scripts/train_default_model.sh`` made the shipped model's (procedural world, 64 x 64 px, 9
   frames, 30 % images; train split seed 0, held-out split seed 1), but with the shipped visual
   tokenizer (22,000 steps) rather than the 6,500-step one of the first transformer phases;
2. ``lumos train`` (``OUT/RUN/model``; validation every 250 steps in ``metrics.jsonl``);
3. the final validation: every validation clip, the same tube masks for every model (4 draws
   per clip), text kept (``OUT/RUN/final_validation.json``);
4. a pipeline directory, the trained transformer with the shipped tokenizers and
   ``pipeline.json`` (``OUT/RUN/pipeline``);
5. ``lumos eval --n N --seed 0`` on it (``OUT/RUN/eval/report.json``): the same prompts and seeds
   for every model.

``--parallel`` runs (default 2) go through these stages side by side, one CPU thread each.
Extra ``--set`` options go to every training run. The tables (markdown) are printed at the end:
curves and final losses as the mean of the seeds with half their difference, quality in %
per seed, and every difference from ``mm_rope`` beside the seed-to-seed noise.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROPES = ("mm_rope", "mm_rope_distributed_only", "mm_rope_scaled_only", "mrope", "1d")
STUDY_SETTINGS = ["optim.warmup_steps=50", "validate_every=250"]  # as the AR-DF masking study
# name -> (world split, seed) of the shards, as in scripts/train_default_model.sh
SHARDS = {"world-train": ("train", 0), "world-val": ("heldout", 1)}
IMAGE_FRACTION = 0.3
GROUPS = ("t2v_heldin", "t2v_heldout", "t2i", "i2v_heldout")
LUMOS = [sys.executable, "-m", "lumos.cli.main"]
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def run_name(rope: str, seed: int) -> str:
    return f"{rope}-seed{seed}"


def runs(args: argparse.Namespace) -> list[tuple[str, int]]:
    """(rope_type, seed) pairs, every rope type of a seed before the next seed."""
    return [(rope, seed) for seed in args.seeds for rope in args.ropes]


def data_dir(args: argparse.Namespace) -> Path:
    return Path(args.out_root) / "data"


def make_shards(args: argparse.Namespace) -> None:
    """``lumos tokenize`` the training and validation clips (a rerun resumes or is a no-op)."""
    from lumos.generation.pipeline import DEFAULT_PIPELINE_DIR

    counts = {"world-train": args.train_clips, "world-val": args.val_clips}
    for name, (split, seed) in SHARDS.items():
        out = data_dir(args) / name
        if (out / "index.json").is_file():
            continue
        cmd = [*LUMOS, "tokenize", "--world", split, "--count", str(counts[name])]
        cmd += ["--seed", str(seed), "--image-fraction", str(IMAGE_FRACTION)]
        cmd += ["--height", "64", "--width", "64", "--frames", "9", "--quiet"]
        cmd += ["--visual-tokenizer", str(args.visual_tokenizer)]
        cmd += ["--text-tokenizer", str(DEFAULT_PIPELINE_DIR / "text_tokenizer")]
        cmd += ["--workers", str(args.parallel), "--out", str(out)]
        say(f"tokenizing: {' '.join(cmd)}")
        start = time.perf_counter()
        subprocess.run(cmd, check=True, env=ONE_THREAD)
        say(f"{name}: {time.perf_counter() - start:.0f} s")


def overrides(args: argparse.Namespace, rope: str, seed: int) -> list[str]:
    data = data_dir(args)
    run = [
        f"model.overrides.rope_type={rope}",
        f"seed={seed}",
        f"data.shards=[{data / 'world-train'}]",
        f"data.validation_shards=[{data / 'world-val'}]",
        f"output_dir={Path(args.out_root) / run_name(rope, seed)}",
        f"steps={args.steps}",
    ]
    return [*STUDY_SETTINGS, *args.set, *run]


def stage(name: str, cmd: list[str], log: Path) -> float:
    """Run ``cmd`` (one CPU thread) with its output appended to ``log``; its wall seconds."""
    say(f"{name}: {' '.join(cmd)}")
    start = time.perf_counter()
    with open(log, "a") as f:
        code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=ONE_THREAD).returncode
    wall = time.perf_counter() - start
    if code:
        raise RuntimeError(f"{name} failed (exit {code}); see {log}")
    say(f"{name}: done in {wall / 60:.1f} min")
    return wall


def package(model: Path, out: Path, visual_tokenizer: Path) -> None:
    """A pipeline directory: ``model`` as the transformer, the shipped text tokenizer and
    pipeline.json, and ``visual_tokenizer`` (the one the shards were made with)."""
    from lumos.generation.pipeline import DEFAULT_PIPELINE_DIR

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(model, tmp / "transformer")
    shutil.copytree(DEFAULT_PIPELINE_DIR / "text_tokenizer", tmp / "text_tokenizer")
    shutil.copytree(visual_tokenizer, tmp / "visual_tokenizer")
    shutil.copy(DEFAULT_PIPELINE_DIR / "pipeline.json", tmp / "pipeline.json")
    tmp.rename(out)


def study_run(args: argparse.Namespace, rope: str, seed: int) -> None:
    """Every stage of one run that has not finished yet; wall seconds in ``OUT/RUN/wall.json``."""
    name = run_name(rope, seed)
    out = Path(args.out_root) / name
    log = Path(args.out_root) / f"{name}.log"
    out.mkdir(parents=True, exist_ok=True)
    walls_path = out / "wall.json"
    walls = json.loads(walls_path.read_text()) if walls_path.is_file() else {}

    def record(key: str, seconds: float) -> None:
        walls[key] = round(seconds, 1)  # the attempt that finished the stage
        walls_path.write_text(json.dumps(walls))

    if not (out / "model" / "config.json").is_file():
        cmd = [*LUMOS, "train", "--config", args.config]
        for o in overrides(args, rope, seed):
            cmd += ["--set", o]
        record("train", stage(f"{name} train", cmd, log))
    if not (out / "final_validation.json").is_file():
        cmd = [sys.executable, __file__, "--final-validation", str(out)]
        cmd += ["--out-root", args.out_root, "--mask-draws", str(args.mask_draws)]
        record("final_validation", stage(f"{name} final validation", cmd, log))
    if not (out / "pipeline").is_dir():
        package(out / "model", out / "pipeline", Path(args.visual_tokenizer))
    if not (out / "eval" / "report.json").is_file():
        cmd = [*LUMOS, "eval", "--checkpoint", str(out / "pipeline"), "--n", str(args.eval_n)]
        cmd += [
            "--seed",
            "0",
            "--batch-size",
            str(args.eval_batch_size),
            "--out",
            str(out / "eval"),
        ]
        record("eval", stage(f"{name} eval", cmd, log))


def final_validation(args: argparse.Namespace) -> None:
    """Loss per kind and latent frame of the model in ``args.final_validation`` on every
    validation clip, batches of 16, ``--mask-draws`` tube masks per batch whose seeds depend only
    on the batch and draw (the same masks for every model); text never dropped."""
    import torch

    from lumos import LumosModel
    from lumos.data.shards import iter_samples, read_index
    from lumos.training.config import MaskingConfig
    from lumos.training.objective import ardf_loss, collate

    torch.set_num_threads(1)
    run = Path(args.final_validation)
    model = LumosModel.from_pretrained(run / "model").eval()
    path = data_dir(args) / "world-val"
    index = read_index(path)
    kinds: dict[str, list] = {"image": [], "video": []}
    for smp in iter_samples(path):
        kinds[smp.kind].append(smp.sequence(index.vocab, index.spatial_compression))
    masking = MaskingConfig(type="tube", schedule="cosine", min_rate=0.7, text_drop=0.0)
    result = {}
    for kind, samples in kinds.items():
        total = count = 0
        for b in range(0, len(samples), 16):
            for draw in range(args.mask_draws):
                gen = torch.Generator().manual_seed(1000 * b + draw)
                with torch.no_grad():
                    out = ardf_loss(model, collate(samples[b : b + 16], model.vocab, masking, gen))
                total = total + out.frame_loss_sum
                count = count + out.frame_count
        frames = (total / count).tolist()
        loss = float(total.sum() / count.sum())
        result[kind] = {"clips": len(samples), "loss": loss, "frame_loss": frames}
        print(f"{kind}: {len(samples)} clips, loss {loss:.4f}, per frame {frames}", flush=True)
    (run / "final_validation.json").write_text(json.dumps(result, indent=1))


# ------------------------------------------------------------------------------------ tables


def mean_spread(values: list[float]) -> str:
    """``mean +-h`` with h half the range of the seeds (the value alone for one seed)."""
    if not values:
        return "-"
    m = sum(values) / len(values)
    if len(values) == 1:
        return f"{m:.3f}"
    return f"{m:.3f} ±{(max(values) - min(values)) / 2:.3f}"


def pooled_sd(per_rope: dict[str, list[float]]) -> float | None:
    """Pooled seed-to-seed standard deviation of one run's value over the rope types with
    several seeds (None without any). Two means of 2 seeds differ by noise of this size."""
    squares, dof = 0.0, 0
    for values in per_rope.values():
        if len(values) > 1:
            m = sum(values) / len(values)
            squares += sum((v - m) ** 2 for v in values)
            dof += len(values) - 1
    return math.sqrt(squares / dof) if dof else None


def differences(per_rope: dict[str, list[float]], scale: float = 1.0, digits: int = 3) -> str:
    """``rope: +d`` for every rope type against mm_rope, then the pooled noise."""
    base = per_rope.get("mm_rope")
    if not base:
        return "(no mm_rope run)"
    b = sum(base) / len(base)
    cells = [
        f"{rope} {scale * (sum(v) / len(v) - b):+.{digits}f}"
        for rope, v in per_rope.items()
        if v and rope != "mm_rope"
    ]
    sd = pooled_sd(per_rope)
    noise = f"seed-to-seed sd {scale * sd:.{digits}f}" if sd is not None else "one seed: no noise"
    return "; ".join(cells) + f" ({noise})"


def load_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def validation_curves(path: Path) -> dict[int, dict]:
    """Validation rows of ``metrics.jsonl`` by step (the last one of a step, as a resumed run
    may log a step twice)."""
    rows = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if any(k.startswith("val/") for k in row):
                rows[row["step"]] = row
    return rows


def series(row: dict, name: str) -> float | None:
    """``image``, ``video`` or ``frame K`` (video) of a validation row."""
    if name.startswith("frame"):
        frames = row.get("val/video/frame_loss") or []
        k = int(name.split()[1])
        return frames[k] if k < len(frames) and frames[k] is not None else None
    return row.get(f"val/{name}/loss")


def tables(args: argparse.Namespace) -> str:
    from lumos.training.config import load_config

    out = Path(args.out_root)
    runs_by_rope = {rope: [s for r, s in runs(args) if r == rope] for rope in args.ropes}
    lines = []

    curves = {
        (rope, seed): validation_curves(out / run_name(rope, seed) / "metrics.jsonl")
        for rope, seed in runs(args)
    }
    steps = sorted({step for c in curves.values() for step in c})
    names = ["image", "video", "frame 0", "frame 1", "frame 2"]
    cfg = load_config(args.config, None, overrides(args, *runs(args)[0]))
    images = cfg.image_micro_batch_size or cfg.micro_batch_size
    lines += [
        f"Validation loss during training (metrics.jsonl: {cfg.data.validation_batches} batches "
        f"of {cfg.micro_batch_size} videos and of {images} images, drawn with each run's seed, "
        "as are their masks), mean of the seeds ±half their difference:",
        "",
        "| rope_type | series | " + " | ".join(f"step {s}" for s in steps) + " |",
        "|" + "---|" * (2 + len(steps)),
    ]
    for rope, seeds in runs_by_rope.items():
        for name in names:
            cells = []
            for step in steps:
                vals = [series(curves[rope, s].get(step, {}), name) for s in seeds]
                cells.append(mean_spread([v for v in vals if v is not None]))
            lines.append(f"| {rope} | {name} | " + " | ".join(cells) + " |")

    final = {
        (r, s): load_json(out / run_name(r, s) / "final_validation.json") for r, s in runs(args)
    }
    lines += [
        "",
        f"Final validation loss (every validation clip, the same {args.mask_draws} tube masks per "
        "clip for every model, text kept), mean of the seeds ±half their difference:",
        "",
        "| rope_type | seeds | image | video | video frame 0 | frame 1 | frame 2 |",
        "|---|---|---|---|---|---|---|",
    ]
    per_metric: dict[str, dict[str, list[float]]] = {n: {} for n in names}
    for rope, seeds in runs_by_rope.items():
        done = [final[rope, s] for s in seeds if final[rope, s]]
        for name in names:
            kind = "image" if name == "image" else "video"
            k = int(name.split()[1]) if name.startswith("frame") else None
            per_metric[name][rope] = [
                f[kind]["loss"] if k is None else f[kind]["frame_loss"][k] for f in done
            ]
        cells = [mean_spread(per_metric[n][rope]) for n in names]
        lines.append(f"| {rope} | {len(done)} | " + " | ".join(cells) + " |")
    noise = (
        "the seed-to-seed sd is that of one run; the difference of two means of two seeds has "
        "the same standard error"
    )
    lines += [
        "",
        f"Final validation loss, difference of the seed means from mm_rope ({noise}):",
        "",
    ]
    lines += [f"- {name}: {differences(per_metric[name])}" for name in names]

    reports = {
        (r, s): load_json(out / run_name(r, s) / "eval" / "report.json") for r, s in runs(args)
    }
    n = next((rep["settings"]["n_per_group"] for rep in reports.values() if rep), None)
    lines += [
        "",
        f"Generation quality (`lumos eval --n {n} --seed 0`, the shipped sampling defaults): "
        "colour / shape / motion in % (text-to-image: colour / shape), one row per seed:",
        "",
        "| rope_type | seed | " + " | ".join(GROUPS) + " |",
        "|" + "---|" * (2 + len(GROUPS)),
    ]
    quality: dict[tuple[str, str], dict[str, list[float]]] = {}
    for (rope, seed), rep in reports.items():
        if not rep:
            continue
        cells = []
        for g in GROUPS:
            acc = rep["accuracy"].get(g, {})
            keys = ("color", "shape") if g == "t2i" else ("color", "shape", "motion")
            for key in keys:
                quality.setdefault((g, key), {}).setdefault(rope, []).append(acc.get(key, math.nan))
            cells.append(" / ".join(f"{100 * acc[k]:.0f}" if k in acc else "-" for k in keys))
        lines.append(f"| {rope} | {seed} | " + " | ".join(cells) + " |")
    lines += ["", f"Quality, difference of the seed means from mm_rope in points ({noise}):", ""]
    lines += [
        f"- {g} {key}: {differences(per_rope, scale=100, digits=0)}"
        for (g, key), per_rope in quality.items()
    ]
    if n:
        lines.append(
            f"- sampling noise alone: binomial standard error of {n} prompts, "
            f"{100 * math.sqrt(0.25 / n):.0f} points at 50 %, {100 * math.sqrt(0.09 / n):.0f} at 90 %"
        )

    walls = {r: load_json(out / run_name(*r) / "wall.json") or {} for r in runs(args)}
    lines += [
        "",
        f"Wall time (minutes; each stage one thread, {args.parallel} runs side by side; a "
        "resumed stage counts its last attempt only):",
        "",
    ]
    lines += ["| run | train | final validation | eval |", "|---|---|---|---|"]
    for (rope, seed), w in walls.items():
        cells = [
            f"{w[k] / 60:.1f}" if k in w else "-" for k in ("train", "final_validation", "eval")
        ]
        lines.append(f"| {run_name(rope, seed)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    from lumos.model.config import ROPE_TYPES
    from lumos.tokenizers.visual import DEFAULT_VISUAL_TOKENIZER_DIR

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/default-model.yaml")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--out-root", default="runs/rope-study")
    p.add_argument("--ropes", nargs="+", default=list(ROPES), choices=list(ROPE_TYPES))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--parallel", type=int, default=2, help="runs side by side (one thread each)")
    p.add_argument("--train-clips", type=int, default=12000, help="training clips (world train)")
    p.add_argument("--val-clips", type=int, default=400, help="validation clips (world heldout)")
    p.add_argument(
        "--visual-tokenizer",
        default=str(DEFAULT_VISUAL_TOKENIZER_DIR),
        help="of the shards and the pipelines (default: the shipped one)",
    )
    p.add_argument("--mask-draws", type=int, default=4, help="final validation masks per clip")
    p.add_argument("--eval-n", type=int, default=100, help="lumos eval prompts per group")
    p.add_argument("--eval-batch-size", type=int, default=32)
    p.add_argument("--set", action="append", default=[], help="extra override for every run")
    p.add_argument("--table", action="store_true", help="print the tables of finished stages")
    p.add_argument("--final-validation", metavar="RUN_DIR", help=argparse.SUPPRESS)  # a stage
    args = p.parse_args()
    args.out_root = str(Path(args.out_root).resolve())
    if args.final_validation:
        final_validation(args)
        return
    if not args.table:
        Path(args.out_root).mkdir(parents=True, exist_ok=True)
        make_shards(args)
        with ThreadPoolExecutor(args.parallel) as pool:
            jobs = {r: pool.submit(study_run, args, *r) for r in runs(args)}
        failed = [(r, job.exception()) for r, job in jobs.items() if job.exception()]
        for r, err in failed:
            say(f"{run_name(*r)}: {err}")
    print(tables(args), flush=True)
    if not args.table and failed:
        sys.exit(f"{len(failed)} run(s) failed; rerun the same command to resume them")


if __name__ == "__main__":
    main()
