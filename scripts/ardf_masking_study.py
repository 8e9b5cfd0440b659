"""AR-DF masking study (SPEC section 6): train the same model with tube and with random masks,
then measure each one's validation loss per latent frame under both mask types.

With random masks a masked token of a later frame can copy the visible token at the same
place in an earlier frame, so later frames look easy; tube masks hide the same places in
every frame and remove the leak. The table shows it as (a) the frame k / frame 0 loss ratio
of each run under its own masks and (b) how much the random-mask run's later frames lose
when the leak is closed (validated with tube masks).

    python scripts/ardf_masking_study.py --config configs/default-model.yaml --steps 1500

Both trainings run side by side (one process each, ``threads`` from the config); finished
runs are reused, interrupted ones resume. Extra ``--set`` options go to both runs.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

MASKINGS = ("tube", "random")
STUDY_SETTINGS = [  # video only (the leak needs several frames), a short warm-up
    "data.image_ratio=0",
    "optim.warmup_steps=50",
    "validate_every=250",
    "checkpoint_every=500",
]


def overrides(args: argparse.Namespace, masking: str) -> list[str]:
    out = Path(args.out_root) / f"ardf-{masking}"
    run = [f"masking.type={masking}", f"output_dir={out}", f"steps={args.steps}"]
    return [*STUDY_SETTINGS, *args.set, *run]


def train_all(args: argparse.Namespace) -> None:
    procs = []
    for masking in MASKINGS:
        cmd = [sys.executable, "-m", "lumos.cli.main", "train", "--config", args.config]
        for o in overrides(args, masking):
            cmd += ["--set", o]
        log = open(Path(args.out_root) / f"ardf-{masking}.log", "a")  # noqa: SIM115
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
        print(f"training {masking}: {' '.join(cmd)}", flush=True)
    if any(p.wait() != 0 for p in procs):
        sys.exit(f"a training run failed; see the logs in {args.out_root}")


def cross_validate(args: argparse.Namespace) -> dict[tuple[str, str], list[float]]:
    """Per-frame validation loss of each trained run (resumed at its last checkpoint) under
    each mask type; same validation clips and mask seeds for every pair."""
    from lumos.training.config import load_config
    from lumos.training.train import Trainer

    result = {}
    for trained in MASKINGS:
        for validated in MASKINGS:
            cfg = load_config(
                args.config, None, [*overrides(args, trained), f"masking.type={validated}"]
            )
            trainer = Trainer(cfg, resume=True)
            if trainer.step != args.steps:
                sys.exit(f"{cfg.output_dir} stopped at step {trainer.step}, not {args.steps}")
            result[trained, validated] = trainer.validate()["val/video/frame_loss"]
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/default-model.yaml")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--out-root", default="runs/ardf-study")
    p.add_argument("--set", action="append", default=[], help="extra override for both runs")
    args = p.parse_args()
    Path(args.out_root).mkdir(parents=True, exist_ok=True)
    train_all(args)
    losses = cross_validate(args)
    n = len(next(iter(losses.values())))
    head = " | ".join(f"frame {k}" for k in range(n))
    ratios = " | ".join(f"f{k}/f0" for k in range(1, n))
    print(f"\n| trained with | validated with | {head} | {ratios} |")
    print("|" + "---|" * (2 + n + n - 1))
    for (trained, validated), frames in losses.items():
        cells = " | ".join(f"{x:.3f}" for x in frames)
        rel = " | ".join(f"{x / frames[0]:.3f}" for x in frames[1:])
        print(f"| {trained} | {validated} | {cells} | {rel} |")
    print("\nloss with random minus with tube validation masks, per frame (the leak it uses):")
    for trained in MASKINGS:
        gain = zip(losses[trained, "random"], losses[trained, "tube"], strict=True)
        print(f"  trained with {trained}: " + ", ".join(f"{r - t:+.3f}" for r, t in gain))


if __name__ == "__main__":
    main()
