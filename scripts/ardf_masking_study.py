"""AR-DF masking study (docs/design.md, "AR-DF"): train the same model with tube and with random masks,
then measure each one's validation loss per latent frame under both mask types.

With random masks a masked token of a later frame can copy the visible token at the same
place in an earlier frame, so later frames look easy; tube masks hide the same places in
every frame and remove the leak. The table shows it as (a) the frame k / frame 0 loss ratio
of each run under its own masks and (b) how much the random-mask run's later frames lose
when the leak is closed (its rows validated with tube instead of random masks).

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


def frame_losses(model, samples: list, masking, mask_draws: int) -> list[float]:
    """Mean loss per latent frame of ``model`` on ``samples`` (token sequences), batches of
    16, ``mask_draws`` masks per batch; the mask seeds depend only on the batch and draw."""
    import torch

    from lumos.training.objective import ardf_loss, collate

    total = count = 0
    for b in range(0, len(samples), 16):
        for draw in range(mask_draws):
            gen = torch.Generator().manual_seed(1000 * b + draw)
            with torch.no_grad():
                out = ardf_loss(model, collate(samples[b : b + 16], model.vocab, masking, gen))
            total = total + out.frame_loss_sum
            count = count + out.frame_count
    return (total / count).tolist()


def cross_validate(args: argparse.Namespace) -> dict[tuple[str, str, str], list[float]]:
    """Per-frame validation loss of each trained model under each mask type, on the validation
    videos whose caption says the object stands still and on the moving ones (still content
    is where a later frame can copy an earlier one). Same clips and mask seeds for every pair;
    text is never dropped here."""
    import dataclasses

    from lumos import LumosModel
    from lumos.data.shards import iter_samples, read_index
    from lumos.data.world import parse_caption
    from lumos.training.config import load_config

    configs = {m: load_config(args.config, None, overrides(args, m)) for m in MASKINGS}
    groups: dict[str, list] = {"still": [], "moving": []}  # the runs share the validation data
    for path in configs[MASKINGS[0]].data.validation_shards:
        index = read_index(path)
        for smp in iter_samples(path):
            if smp.kind == "video":
                motions = {o.motion for o in parse_caption(smp.caption).objects}
                seq = smp.sequence(index.vocab, index.spatial_compression)
                groups["still" if motions == {"still"} else "moving"].append(seq)
    result = {}
    for trained, cfg in configs.items():
        model = LumosModel.from_pretrained(Path(cfg.output_dir) / "model").eval()
        for validated in MASKINGS:
            masking = dataclasses.replace(cfg.masking, type=validated, text_drop=0.0)
            for group, samples in groups.items():
                losses = frame_losses(model, samples, masking, args.mask_draws)
                result[trained, validated, group] = losses
                print(f"{trained} / {validated} / {group} ({len(samples)} clips) done", flush=True)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/default-model.yaml")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--out-root", default="runs/ardf-study")
    p.add_argument("--mask-draws", type=int, default=4, help="mask draws per validation clip")
    p.add_argument("--set", action="append", default=[], help="extra override for both runs")
    args = p.parse_args()
    Path(args.out_root).mkdir(parents=True, exist_ok=True)
    train_all(args)
    losses = cross_validate(args)
    n = len(next(iter(losses.values())))
    head = " | ".join(f"frame {k}" for k in range(n))
    ratios = " | ".join(f"f{k}/f0" for k in range(1, n))
    print(f"\n| trained with | validated with | clips | {head} | {ratios} |")
    print("|" + "---|" * (3 + n + n - 1))
    for (trained, validated, group), frames in losses.items():
        cells = " | ".join(f"{x:.3f}" for x in frames)
        rel = " | ".join(f"{x / frames[0]:.3f}" for x in frames[1:])
        print(f"| {trained} | {validated} | {group} | {cells} | {rel} |")


if __name__ == "__main__":
    main()
