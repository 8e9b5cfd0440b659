"""Training of :class:`~lumos.tokenizers.causal_video.CausalVideoTokenizer` on clips of the
procedural world (:mod:`lumos.data.world`); its evaluation is :mod:`lumos.evaluation.tokenizer`.

Training: each step is either a video batch (T RGB frames; with several clip lengths, one
drawn per step) or, with probability ``image_fraction``, an image batch (T = 1, still scenes),
optionally with random RGB channel permutations; the choice and the clips are pure functions of
(seed, step), so resuming from a checkpoint continues exactly where the run stopped. Loss: L1 +
MSE on RGB in [-1, 1]. AdamW, linear warm-up then cosine decay to 10 %.

Fine-tuning: ``init_from`` starts from a trained tokenizer; ``decoder_only`` then freezes its
encoder, so every clip keeps its codes and a transformer trained on them still fits, while the
decoder learns to draw them better (e.g. on motion it was not trained on).

Output directory layout::

    OUT/config.json, OUT/model.safetensors   the trained tokenizer, float16 weights
                                             (updated at every checkpoint)
    OUT/checkpoint/                          model + optimiser + step, for --resume
    OUT/train_log.jsonl                      one line per logging interval
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from lumos import validate
from lumos.data.world import ProceduralWorld
from lumos.errors import LumosError
from lumos.tokenizers.causal_video import (
    CausalVideoTokenizer,
    CausalVideoTokenizerConfig,
)
from lumos.tokenizers.visual import frames_to_video

CHECKPOINT_DIR = "checkpoint"
TRAINER_STATE = "trainer.pt"
LOG_NAME = "train_log.jsonl"
EXPORT_DTYPE = torch.float16  # OUT/model.safetensors: half the size; checkpoints stay float32


@dataclass
class TrainSettings:
    """Optimisation and data settings of a tokenizer training run (pixels and RGB frames)."""

    steps: int = 6000  # length of the LR schedule (optimiser steps)
    batch_size: int = 4  # clips per step
    lr: float = 2e-3  # peak AdamW learning rate
    weight_decay: float = 0.0  # AdamW weight decay
    warmup_steps: int = 200  # linear warmup, then cosine decay to 10 %
    grad_clip: float = 1.0  # max global gradient norm
    height: int = 64  # clip height, pixels
    width: int = 64  # clip width, pixels
    # RGB frames per video clip, 1 + 4k; a list: each video step draws one of these lengths (in
    # the world, an object moves the same distance over a clip of any length: longer is slower)
    frames: int | list[int] = 9
    image_fraction: float = 0.1  # probability that a step trains on still images (T = 1)
    color_augment_from: int = 0  # permute each clip's RGB channels at random from this step on
    seed: int = 0  # clips and augmentation
    checkpoint_every: int = 250  # steps between checkpoints (and at the end)
    log_every: int = 25  # steps between train_log.jsonl lines
    init_from: str | None = None  # a tokenizer directory to start from (its config and weights)
    decoder_only: bool = False  # train the decoder (and refiner) alone; needs init_from

    def clip_lengths(self) -> list[int]:
        """The video clip lengths (RGB frames) a step draws from."""
        return [self.frames] if isinstance(self.frames, int) else list(self.frames)


# ----------------------------------------------------------------------------- data


class ClipStream:
    """Training batches as a pure function of the step: uint8 -> float [B, 3, T, H, W] in [-1, 1].

    From step ``color_augment_from`` on, each clip's RGB channels are randomly permuted, so
    that the tokenizer does not learn the world's colour-shape pairings (the held-out split
    recombines them).
    """

    def __init__(self, s: TrainSettings) -> None:
        self.s = s
        self.videos = [
            ProceduralWorld("train", s.height, s.width, t, s.seed, 0.0) for t in s.clip_lengths()
        ]
        self.images = ProceduralWorld("train", s.height, s.width, 1, s.seed + 1, 1.0)

    def batch(self, step: int) -> torch.Tensor:
        s = self.s
        rng = np.random.default_rng([s.seed, step])
        if rng.random() < s.image_fraction:
            world = self.images
        elif len(self.videos) == 1:  # no draw: runs with one length replay as they always did
            world = self.videos[0]
        else:
            world = self.videos[rng.integers(len(self.videos))]
        clips = [world[step * s.batch_size + i].frames for i in range(s.batch_size)]
        if step >= s.color_augment_from:
            clips = [c[..., rng.permutation(3)] for c in clips]
        return frames_to_video(np.stack(clips))


# ----------------------------------------------------------------------------- training


def _lr_at(step: int, s: TrainSettings) -> float:
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    progress = (step - s.warmup_steps) / max(1, s.steps - s.warmup_steps)
    return s.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def _replace_dir(tmp: Path, final: Path) -> None:
    """Atomically-enough swap ``tmp`` into ``final`` (the old copy survives until the swap)."""
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)


def save_checkpoint(
    out: Path,
    model: CausalVideoTokenizer,
    opt: torch.optim.Optimizer,
    step: int,
    seconds: float,
    s: TrainSettings,
) -> None:
    """Write OUT/checkpoint (float32, via a temporary directory and a rename) and OUT's
    model files (float16)."""
    tmp = out / f"{CHECKPOINT_DIR}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    state = {
        "optimizer": opt.state_dict(),
        "step": step,
        "seconds": seconds,
        "settings": dataclasses.asdict(s),
    }
    torch.save(state, tmp / TRAINER_STATE)
    _replace_dir(tmp, out / CHECKPOINT_DIR)
    export = out / "export.tmp"
    model.save_pretrained(export, dtype=EXPORT_DTYPE)
    for path in export.iterdir():
        os.replace(path, out / path.name)
    export.rmdir()


def _load_checkpoint(out: Path) -> tuple[CausalVideoTokenizer, dict]:
    ckpt = out / CHECKPOINT_DIR
    if not ckpt.is_dir() and (out / f"{CHECKPOINT_DIR}.old").is_dir():
        ckpt = out / f"{CHECKPOINT_DIR}.old"  # interrupted in the middle of a swap
    if not (ckpt / TRAINER_STATE).is_file():
        raise LumosError(
            f"--resume: no checkpoint in {out} (expected {out / CHECKPOINT_DIR / TRAINER_STATE}); "
            "drop --resume to start a new run"
        )
    model = CausalVideoTokenizer.from_pretrained(ckpt)
    try:
        state = torch.load(ckpt / TRAINER_STATE, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError) as err:
        raise LumosError(f"cannot read {ckpt / TRAINER_STATE}: {err}") from err
    known = [f.name for f in dataclasses.fields(TrainSettings)]
    validate.known_keys(
        f"the training settings of {ckpt / TRAINER_STATE}", state.get("settings", {}), known
    )
    return model, state


def train_tokenizer(
    out: str | Path,
    settings: TrainSettings,
    config: CausalVideoTokenizerConfig | None = None,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
) -> CausalVideoTokenizer:
    """Train (or resume) a tokenizer into ``out``; returns the trained model.

    On resume the model config and data settings come from the checkpoint, except
    ``settings.steps`` (the length of the learning-rate schedule, may be raised to train
    further) and ``settings.color_augment_from``. A new run starts from ``settings.init_from``
    when given (``config`` is then ignored), else from a fresh ``config`` model.
    ``stop_after`` ends the run early after that many steps (with a checkpoint), without
    changing the schedule. Checkpoints every ``checkpoint_every`` steps and at the end.
    """
    out = Path(out)
    s = settings
    if min(s.clip_lengths()) < 1 or s.batch_size < 1 or s.steps < 1 or s.lr <= 0:
        raise LumosError("steps, batch size and frames must be >= 1 and lr > 0")
    if s.decoder_only and s.init_from is None and not resume:
        raise LumosError("decoder_only trains the decoder of a trained tokenizer; give init_from")
    start, seconds = 0, 0.0
    if resume:
        model, state = _load_checkpoint(out)
        saved = TrainSettings(**state["settings"])
        s = dataclasses.replace(
            saved, steps=settings.steps, color_augment_from=settings.color_augment_from
        )
        start, seconds = int(state["step"]), float(state["seconds"])
    else:
        if (out / CHECKPOINT_DIR).exists():
            raise LumosError(
                f"{out} already holds a training run; pass --resume to continue it or choose "
                "another --out"
            )
        if s.init_from is not None:
            model = CausalVideoTokenizer.from_pretrained(s.init_from)
        else:
            model = CausalVideoTokenizer(config or CausalVideoTokenizerConfig())
    model.train()
    for frames in s.clip_lengths():
        model.latent_shape(frames, s.height, s.width)  # validates the clip size
    if s.decoder_only:
        model.encoder.requires_grad_(False)  # the codes of every clip stay as they are
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=s.lr, betas=(0.9, 0.99), weight_decay=s.weight_decay)
    if resume:
        opt.load_state_dict(state["optimizer"])
    out.mkdir(parents=True, exist_ok=True)
    data = ClipStream(s)
    log_path = out / LOG_NAME
    if resume and log_path.exists():  # drop records written after the checkpoint
        lines = log_path.read_text().splitlines()
        log_path.write_text("".join(f"{x}\n" for x in lines if json.loads(x)["step"] <= start))
    log = log_path.open("a")
    end = s.steps if stop_after is None else min(s.steps, stop_after)
    bar = tqdm(range(start, end), initial=start, total=s.steps, disable=not progress)
    t0 = time.time() - seconds
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, s)
        video = data.batch(step)
        if s.decoder_only:
            with torch.no_grad():
                codes = model.quantize(video)
            recon = model.reconstruct(codes)
        else:
            recon = model(video)
        mse = F.mse_loss(recon, video)
        loss = F.l1_loss(recon, video) + mse
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, s.grad_clip)
        opt.step()
        step_psnr = 10 * math.log10(4.0 / max(mse.item(), 1e-12))  # RGB range [-1, 1] -> 2
        bar.set_postfix(loss=f"{loss.item():.4f}", psnr=f"{step_psnr:.2f}")
        done = step + 1
        if done % s.log_every == 0 or done == end:
            record = {
                "step": done,
                "loss": round(loss.item(), 6),
                "psnr": round(step_psnr, 3),
                "lr": _lr_at(step, s),
                "frames": video.shape[2],
                "seconds": round(time.time() - t0, 1),  # cumulative over resumes
            }
            log.write(json.dumps(record) + "\n")
            log.flush()
        if done % s.checkpoint_every == 0 or done == end:
            save_checkpoint(out, model, opt, done, time.time() - t0, s)
    log.close()
    return model.eval()
