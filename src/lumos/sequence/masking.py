"""Masking rules shared by training and generation (docs/design.md, "AR-DF" and "Generation").

``SCHEDULES`` map a progress ``u`` in [0, 1] to a masking ratio: training draws ``u`` at random
to corrupt a sample (``training/objective.py``), generation walks ``u = (s+1)/S`` over the
steps of a frame to decide how many tokens stay masked (``generation/scheduler.py``).
``history_mask_indices`` is the fixed pattern a finished frame is masked with in the KV cache.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

# Masking ratio for progress u in [0, 1]: 1 at u = 0 (all masked), 0 at u = 1.
SCHEDULES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "cosine": lambda u: torch.cos(math.pi / 2 * u),
    "linear": lambda u: 1 - u,
    "arccos": lambda u: torch.arccos(u) / (math.pi / 2),
    "square": lambda u: 1 - u**2,
}


def history_mask_indices(h: int, w: int, ratio: float) -> torch.Tensor:
    """Evenly spaced content positions (of ``L = h*(w+1)``, NEWLINE column included) that are
    masked when a finished frame is written into the cache: ``idx_k = round(k*L/n)``,
    ``n = round(ratio*L)``. The same set for every frame and both guidance branches."""
    L = h * (w + 1)
    n = round(ratio * L)
    if n == 0:
        return torch.zeros(0, dtype=torch.long)
    return torch.round(torch.arange(n, dtype=torch.float64) * L / n).long()
