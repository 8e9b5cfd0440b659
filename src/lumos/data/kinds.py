"""Image and video samples, and which optimiser steps train on which.

Joint training alternates image and video batches (docs/design.md, "Training"): optimiser step
``k`` is an image step iff ``floor((k+1) r) > floor(k r)`` for the image ratio ``r``, so images
take a fraction ``r`` of the steps, spread evenly (``r = 0.5`` gives video, image, video, ...;
``r = 0.25`` one image step in four). Every micro-batch of a step is of the step's kind. Token
shards, the data loader, the synthetic sources and the training loop all use these functions.
"""

from __future__ import annotations

import math

KINDS = ("image", "video")


def images_before(step: int, image_ratio: float) -> int:
    """Image steps among the first ``step`` optimiser steps (the epsilon keeps ``0.29 * 100`` at
    29 despite float rounding)."""
    return math.floor(step * image_ratio + 1e-9)


def step_kind(step: int, image_ratio: float) -> str:
    """``image`` or ``video``: the kind of optimiser step ``step`` (0-based)."""
    is_image = images_before(step + 1, image_ratio) > images_before(step, image_ratio)
    return "image" if is_image else "video"


def kinds_used(image_ratio: float) -> list[str]:
    """The kinds that ever get a step: ``image`` iff ``image_ratio > 0``, ``video`` iff < 1."""
    return [k for k, used in zip(KINDS, (image_ratio > 0, image_ratio < 1), strict=True) if used]
