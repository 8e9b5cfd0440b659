"""Training checkpoints: atomic, the last N kept, exact resume.

Layout of ``<output>/checkpoints/step-00001000/``:

* ``state/``: model and optimiser state in ``torch.distributed.checkpoint`` format (each process
  writes its own shards, so FSDP never gathers the full model to save);
* ``trainer.pt``: step (the LR schedule is a function of it) and config (written by rank 0);
* ``rank-00000.pt`` ...: per process RNG states (torch, CUDA, Python, NumPy) and data positions.

A checkpoint is written to ``.tmp-step-.../`` and renamed when every process has finished, so a
directory named ``step-*`` is always complete; a crash leaves at most a temporary directory,
removed by the next save. Resuming needs the same number of processes (data positions are per
process). A checkpoint damaged later (a file deleted or truncated) raises
:class:`DamagedCheckpoint` when loaded, so the caller can fall back to an older one.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from lumos.errors import LumosError
from lumos.training.distributed import DistContext

PREFIX = "step-"


class DamagedCheckpoint(LumosError):
    """A checkpoint directory whose files are missing or unreadable."""


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [
        p
        for p in root.iterdir()
        if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX) :].isdigit()
    ]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def latest_checkpoint(root: str | Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def rng_state(device: torch.device) -> dict:
    """Every RNG state of this process (weights_only-loadable)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


@contextlib.contextmanager
def _single_process_quiet():
    """Silence DCP's warning that it runs without a process group (intended here)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


# Checkpoints hold the trained parameters only: a LoRA run's frozen base comes back from the
# model it was built from (``model.init_from``), as when it started.
TRAINED_ONLY = StateDictOptions(ignore_frozen_params=True, strict=False)


def save_checkpoint(
    root: str | Path,
    step: int,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    trainer_state: dict,
    rank_state: dict,
    ctx: DistContext,
    keep: int,
) -> Path:
    """Write a checkpoint for ``step`` (collective: every process calls it) and keep the last
    ``keep`` checkpoints. ``trainer_state`` is rank 0's; ``rank_state`` each process's own."""
    root = Path(root)
    final, tmp = root / checkpoint_name(step), root / f".tmp-{checkpoint_name(step)}"
    if ctx.is_main:
        for stale in root.glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir(parents=True)
    ctx.barrier()
    model_state, optim_state = get_state_dict(module, optimizer, options=TRAINED_ONLY)
    with _single_process_quiet():
        dcp.save(
            {"model": model_state, "optim": optim_state},
            checkpoint_id=tmp / "state",
            no_dist=not ctx.distributed,
        )
    torch.save(rank_state, tmp / f"rank-{ctx.rank:05d}.pt")
    if ctx.is_main:
        torch.save({**trainer_state, "world_size": ctx.world_size}, tmp / "trainer.pt")
    ctx.barrier()
    if ctx.is_main:
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for old in list_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    ctx.barrier()
    return final


def load_checkpoint(
    path: str | Path, module: nn.Module, optimizer: torch.optim.Optimizer, ctx: DistContext
) -> tuple[dict, dict]:
    """Restore model and optimiser in place; returns (trainer_state, this process's rank_state)."""
    path = Path(path)
    trainer = read_trainer_state(path)
    if trainer["world_size"] != ctx.world_size:
        raise LumosError(
            f"checkpoint {path} was written by {trainer['world_size']} processes; resume with "
            f"the same number (this run has {ctx.world_size})"
        )
    model_state, optim_state = get_state_dict(module, optimizer, options=TRAINED_ONLY)
    state = {"model": model_state, "optim": optim_state}
    try:
        rank_state, damage = torch.load(path / f"rank-{ctx.rank:05d}.pt", weights_only=True), ""
    except Exception as err:  # any unreadable piece (missing, truncated, garbled) is damage
        rank_state, damage = None, _reason(err)
    # Every process must agree before the collective load (one damaged rank file skips the
    # checkpoint everywhere).
    damaged = ctx.all_reduce(torch.tensor([float(bool(damage))], device=ctx.device))
    if float(damaged) > 0:
        raise DamagedCheckpoint(f"checkpoint {path} is damaged ({damage or 'another rank file'})")
    try:
        with _single_process_quiet():
            dcp.load(state, checkpoint_id=path / "state", no_dist=not ctx.distributed)
    except Exception as err:
        raise DamagedCheckpoint(f"checkpoint {path} is damaged ({_reason(err)})") from None
    set_state_dict(
        module,
        optimizer,
        model_state_dict=state["model"],
        optim_state_dict=state["optim"],
        options=TRAINED_ONLY,
    )
    return trainer, rank_state


def read_trainer_state(path: str | Path) -> dict:
    """``trainer.pt`` of a checkpoint (step, config, world size); DamagedCheckpoint if it is
    missing, unreadable or incomplete."""
    path = Path(path)
    try:
        trainer = torch.load(path / "trainer.pt", weights_only=True)
        if not all(k in trainer for k in ("step", "config", "world_size")):
            raise ValueError("trainer.pt lacks step, config or world_size")
    except Exception as err:
        raise DamagedCheckpoint(f"checkpoint {path} is damaged ({_reason(err)})") from None
    return trainer


def _reason(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def full_model_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded model state on CPU (collective under FSDP; complete on every process)."""
    return get_model_state_dict(
        module, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
