"""Resolution buckets and resize/crop geometry.

Units: sizes are (W, H) in pixels unless a name says "grids" (one grid = ``grid`` x ``grid``
pixels, 32 by default, i.e. 4 x 4 latent tokens with the 8x spatial tokenizer).

Bucket set (docs/design.md, "Data format"). A budget of N grids allows every (w, h) grid size with
``w * h <= N`` and aspect ratio ``<= max_aspect``. Keeping *all* of them makes the
"closest aspect ratio" rule pick tiny buckets whenever a small (w, h) happens to match the
source better (a 7:2 source would get 14x4 = 56 grids of a 112 budget). We therefore keep only
the buckets on the boundary of the budget, as the official code (Lumina-mGPT's
``generate_crop_size_list``) does: those with ``(w + 1) * (h + 1) > N``, i.e. growing both sides
by one grid would exceed the budget (for each width w, the heights ``N // (w + 1) .. N // w``).
Every such bucket uses most of the budget and together they cover all aspect ratios up to
``max_aspect``. The official presets (448x256, 672x384, 768x480) are members of their sets.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

from lumos.errors import LumosError

GRID = 32  # pixels per bucket grid cell (spatial tokenizer stride 8 x 4 tokens)

# Official presets, (W, H) in pixels.
PRESETS: dict[str, tuple[int, int]] = {"256p": (448, 256), "384p": (672, 384), "480p": (768, 480)}
# Grid budget N of each preset: W * H / GRID**2 (112, 252, 360).
PRESET_MAX_GRIDS: dict[str, int] = {k: w * h // GRID**2 for k, (w, h) in PRESETS.items()}


def resolution_buckets(
    max_grids: int, grid: int = GRID, max_aspect: float = 4.0
) -> list[tuple[int, int]]:
    """Buckets (W, H) in pixels for a budget of ``max_grids`` grid cells of ``grid`` pixels.

    Returns the boundary buckets described in the module docstring, i.e. (w*grid, h*grid) for
    ``w >= 1`` and ``max(1, max_grids // (w + 1)) <= h <= max_grids // w`` with
    ``max(w, h) / min(w, h) <= max_aspect``; sorted by width descending, then height.
    """
    if max_grids < 1 or grid < 1:
        raise LumosError(f"bucket budget must be positive, got max_grids={max_grids} grid={grid}")
    if max_aspect < 1.0:
        raise LumosError(f"max_aspect must be >= 1 (it is max(W,H)/min(W,H)), got {max_aspect}")
    buckets = []
    for w in range(max_grids, 0, -1):
        for h in range(max(1, max_grids // (w + 1)), max_grids // w + 1):
            if max(w, h) <= max_aspect * min(w, h):
                buckets.append((w * grid, h * grid))
    return buckets


def choose_bucket(src_w: int, src_h: int, buckets: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The bucket (W, H) closest in aspect ratio to a ``src_w`` x ``src_h`` source.

    Closeness is ``max(r, 1/r)`` with ``r = (W/H) / (src_w/src_h)`` (a log-symmetric distance,
    exact rational arithmetic); ties go to the larger area, then the larger width.
    """
    if src_w < 1 or src_h < 1:
        raise LumosError(f"source size must be positive, got {src_w}x{src_h}")
    if not buckets:
        raise LumosError("no resolution buckets to choose from; check the bucket budget")

    def key(bucket: tuple[int, int]) -> tuple[Fraction, int, int]:
        w, h = bucket
        r = Fraction(w * src_h, h * src_w)
        return (max(r, 1 / r), -w * h, -w)

    return min(buckets, key=key)


def resize_crop_box(src_w: int, src_h: int, dst_w: int, dst_h: int) -> tuple[int, int, int, int]:
    """Geometry to resize a source so it covers ``dst_w`` x ``dst_h``, then centre-crop it.

    Returns ``(scaled_w, scaled_h, left, top)`` in pixels: resize the source to
    ``scaled_w x scaled_h`` (uniform scale, the limiting side fitted exactly, the other rounded
    to nearest and never below the target), then crop the box ``(left, top, left + dst_w,
    top + dst_h)``; any odd leftover pixel goes to the right/bottom.
    """
    if min(src_w, src_h, dst_w, dst_h) < 1:
        raise LumosError(f"sizes must be positive: source {src_w}x{src_h}, target {dst_w}x{dst_h}")
    if dst_w * src_h >= dst_h * src_w:  # width is the limiting side: scale = dst_w / src_w
        scaled_w = dst_w
        scaled_h = max(dst_h, (2 * src_h * dst_w + src_w) // (2 * src_w))
    else:  # height is the limiting side: scale = dst_h / src_h
        scaled_h = dst_h
        scaled_w = max(dst_w, (2 * src_w * dst_h + src_h) // (2 * src_h))
    return scaled_w, scaled_h, (scaled_w - dst_w) // 2, (scaled_h - dst_h) // 2


def parse_size(spec: str, grid: int = GRID) -> tuple[int, int]:
    """Parse a preset name ("256p", "384p", "480p") or "WxH" in pixels into (W, H).

    W and H must be positive multiples of ``grid``.
    """
    text = spec.strip().lower()
    if text in PRESETS:
        return PRESETS[text]
    parts = text.split("x")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise LumosError(
            f"bad size {spec!r}; use a preset ({', '.join(PRESETS)}) or WxH in pixels, e.g. 448x256"
        )
    w, h = int(parts[0]), int(parts[1])
    if w < grid or h < grid or w % grid or h % grid:
        raise LumosError(f"bad size {spec!r}: W and H must be positive multiples of {grid}")
    return w, h
