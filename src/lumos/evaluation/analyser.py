"""Analyser: reads background and objects (colour, shape, size, motion, position) off RGB
frames of the procedural world, to judge generated or reconstructed videos.

Method (all thresholds relative to the canvas, so any size works):

1. Background colour = per-channel median of the border pixels of all frames; its name is
   the nearest entry of :data:`~lumos.data.world.BACKGROUNDS`.
2. Foreground = pixels farther from the background colour than ``FG_FRACTION`` of the
   distance between the background and its closest palette colour; 4-connected components
   per frame; components smaller than ``MIN_AREA * min(H, W)**2`` pixels are noise.
3. A component's colour = nearest palette entry of the median of its strong pixels (those
   within ``1 - CORE_FRACTION`` of the background contrast of their nearest palette colour;
   the palette is moved by the background's colour shift, clipped to ``MAX_SHIFT``). A component whose strong pixels
   split into two palette colours (two touching objects) is cut in two, each pixel going
   to the colour it is closer to.
4. Soft coverage ``alpha`` = projection of (pixel - background) onto (object colour -
   background) in a window around the blob. Its sum (area) and centroid do not change
   under blur, so per shape hypothesis they give the half extent r and centre; the shape is
   the hypothesis whose rendering, blurred by the blur estimated from the second moments,
   fits alpha best (summed over up to ``SHAPE_FRAMES`` frames of the object's track).
5. Blobs are linked into tracks across frames by colour and nearest position; tracks seen
   in fewer than half the frames are dropped (flicker). Size: r / min(H, W) against the
   midpoint of the world's two sizes. Motion: least-squares slope of the centre over clip
   time in [0, 1]; "still" if the fitted displacement is below ``STILL_THRESHOLD`` of the
   canvas along both axes, else the dominant axis' direction.

Run ``python -m lumos.cli.analyser --n 1000`` for accuracy tables on clean and
degraded (blur, noise, JPEG, colour shift) world renders.
"""

from __future__ import annotations

import functools
import io
import itertools
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from lumos.data.world import (
    BACKGROUNDS,
    COLORS,
    SHAPES,
    SIZE_RADIUS,
    SPLITS,
    Scene,
    SceneSpec,
    coverage,
    inside,
    render,
    sample_scene,
)
from lumos.errors import LumosError

FG_FRACTION = 0.35
MIN_AREA = 0.006  # fraction of min(H, W)**2; the smallest world object covers ~0.029
CORE_FRACTION = 0.75  # strong pixels: coverage >= this, judged by nearest palette colour
SPLIT_FRACTION = 0.25  # a second colour holding this share of strong pixels splits a blob
PAD = 3  # pixels of context around a blob for the soft coverage
SHAPE_FRAMES = 3
SHAPE_WINDOW = 40  # pixels; larger blob windows are downsampled for the shape fit
BLURS = (0.0, 0.5, 0.8, 1.1, 1.4, 1.8)  # Gaussian sigmas (pixels) tried for shape templates
STILL_THRESHOLD = 0.1  # fraction of the canvas; world motion travels 0.35
SIZE_THRESHOLD = float(np.sqrt(SIZE_RADIUS["small"] * SIZE_RADIUS["large"]))
MAX_SHIFT = 30.0  # largest colour shift (8-bit levels) read off the background
POSITION_TOLERANCE = 0.05  # fraction of the canvas, for score()

_PALETTE_NAMES = tuple(COLORS)
_PALETTE = np.array([COLORS[c] for c in _PALETTE_NAMES], np.float32)


def _shape_moments() -> tuple[dict[str, float], dict[str, float]]:
    """Area (in r**2) and vertical centroid offset (in r) of each shape, numerically."""
    g = (np.arange(800) + 0.5) / 400 - 1.0
    area, offset = {}, {}
    for s in SHAPES:
        hit = inside(s, g[None, :], g[:, None])
        area[s] = float(hit.mean() * 4.0)
        offset[s] = float((hit * g[:, None]).sum() / hit.sum())
    return area, offset


SHAPE_AREA, SHAPE_OFFSET = _shape_moments()


@dataclass(frozen=True)
class DetectedObject:
    color: str
    shape: str
    size: str
    motion: str | None  # None for a single frame
    start: tuple[float, float]  # centre (x, y) in canvas fractions, first frame seen
    end: tuple[float, float]  # last frame seen
    pixels: float  # mean soft area in pixels
    confidence: float  # shape fit in [0, 1]: 1 - relative squared error of the best shape
    num_frames: int  # frames in which it was found


@dataclass(frozen=True)
class Analysis:
    background: str
    background_rgb: tuple[float, float, float]
    objects: tuple[DetectedObject, ...]  # largest first
    num_frames: int
    height: int
    width: int


@dataclass
class _Blob:
    frame: int
    color: str
    area: float  # soft area in pixels
    cx: float  # soft centroid in pixels
    cy: float
    alpha: np.ndarray  # soft coverage window
    top: int
    left: int


def _nearest(names: tuple[str, ...], table: np.ndarray, rgb: np.ndarray) -> str:
    return names[int(np.argmin(np.linalg.norm(table - rgb, axis=-1)))]


def _components(mask: np.ndarray) -> np.ndarray:
    """4-connected components of a bool [T, H, W] mask within each frame.

    Returns int64 labels, 0 for background; a label is 1 + the flat index of a pixel of the
    component. Min-label propagation with pointer jumping (few iterations).
    """
    big = mask.size + 1
    lab = np.where(mask, np.arange(1, big, dtype=np.int64).reshape(mask.shape), 0)
    while True:
        cur = np.where(mask, lab, big)
        new = cur.copy()
        np.minimum(new[:, 1:], cur[:, :-1], out=new[:, 1:])
        np.minimum(new[:, :-1], cur[:, 1:], out=new[:, :-1])
        np.minimum(new[:, :, 1:], cur[:, :, :-1], out=new[:, :, 1:])
        np.minimum(new[:, :, :-1], cur[:, :, 1:], out=new[:, :, :-1])
        new = np.where(mask, new, 0)
        new = np.where(mask, new.ravel()[np.maximum(new, 1) - 1], 0)  # jump to the root's label
        if np.array_equal(new, lab):
            return lab
        lab = new


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(steps):
        m = out.copy()
        m[1:] |= out[:-1]
        m[:-1] |= out[1:]
        m[:, 1:] |= out[:, :-1]
        m[:, :-1] |= out[:, 1:]
        out = m
    return out


def _blobs(
    f: np.ndarray,
    bg: np.ndarray,
    shift: np.ndarray,
    fg: np.ndarray,
    dist: np.ndarray,
    min_area: float,
) -> list[_Blob]:
    """Coloured blobs of every frame (steps 2-4 of the module docstring, without shapes)."""
    _, height, width, _ = f.shape
    palette = _PALETTE + shift
    contrast = np.linalg.norm(palette - bg, axis=1)
    labels = _components(fg)
    ids = labels[fg]
    order = np.argsort(ids, kind="stable")
    coords = np.argwhere(fg)[order]
    _, starts, counts = np.unique(ids[order], return_index=True, return_counts=True)
    parts = []  # (frame, ys, xs, colour name)
    for start, count in zip(starts, counts, strict=True):
        if count < min_area:
            continue
        t, ys, xs = coords[start : start + count].T
        t = int(t[0])
        rgb, d = f[t, ys, xs], dist[t, ys, xs]
        # strong pixels: close to their nearest palette colour, relative to its contrast
        gaps = np.linalg.norm(rgb[:, None] - palette, axis=-1)
        nearest = np.argmin(gaps, axis=1)
        core = gaps[np.arange(len(rgb)), nearest] <= (1 - CORE_FRACTION) * contrast[nearest]
        if core.sum() < 3:  # very blurred: fall back to the blob's strongest pixels
            core = d >= CORE_FRACTION * np.quantile(d, 0.9)
        names = nearest[core]
        votes = np.bincount(names, minlength=len(_PALETTE))
        first, second = np.argsort(votes)[::-1][:2]
        if votes[second] >= max(SPLIT_FRACTION * core.sum(), 3):
            # two touching objects: give each pixel to the nearer colour segment bg -> c
            cols = [np.median(rgb[core][names == k], 0) for k in (first, second)]
            seg = []
            for c in cols:
                a = np.clip((rgb - bg) @ (c - bg) / np.dot(c - bg, c - bg), 0, 1)
                seg.append(np.linalg.norm(rgb - bg - a[:, None] * (c - bg), axis=1))
            which = np.argmin(np.stack(seg), 0)
            for k, c in enumerate(cols):
                sel = which == k
                if sel.sum() >= min_area:
                    parts.append((t, ys[sel], xs[sel], _nearest(_PALETTE_NAMES, palette, c)))
        else:
            c = np.median(rgb[core], 0)
            parts.append((t, ys, xs, _nearest(_PALETTE_NAMES, palette, c)))

    blobs = []
    for t, ys, xs, name in parts:
        top, left = max(ys.min() - PAD, 0), max(xs.min() - PAD, 0)
        bottom, right = min(ys.max() + PAD + 1, height), min(xs.max() + PAD + 1, width)
        own = np.zeros((bottom - top, right - left), bool)
        own[ys - top, xs - left] = True
        near = _dilate(own, PAD) & ~(fg[t, top:bottom, left:right] & ~own)
        # Blur desaturates small objects, so measure coverage against the palette colour
        # moved by the background's colour shift rather than against the measured colour.
        axis = _PALETTE[_PALETTE_NAMES.index(name)] + shift - bg
        alpha = (f[t, top:bottom, left:right] - bg) @ axis / np.dot(axis, axis)
        alpha = np.where(near, alpha, 0.0).astype(np.float32)
        area = float(alpha.sum())
        if area < min_area:
            continue
        gy, gx = np.mgrid[top:bottom, left:right] + 0.5
        cx, cy = float((alpha * gx).sum() / area), float((alpha * gy).sum() / area)
        blobs.append(_Blob(t, name, area, cx, cy, alpha, int(top), int(left)))
    return blobs


@functools.lru_cache(maxsize=1024)
def _blur_matrices(n: int) -> np.ndarray:
    """[len(BLURS), n, n] matrices applying 1-D Gaussian blurs (renormalised at the edges)."""
    x = np.arange(n, dtype=np.float32)
    d2 = (x[:, None] - x[None, :]) ** 2
    out = np.stack([np.exp(-0.5 * d2 / max(s, 1e-3) ** 2) for s in BLURS])
    return out / out.sum(-1, keepdims=True)


def _shape_errors(blob: _Blob) -> np.ndarray:
    """Relative squared error of each shape hypothesis [len(SHAPES)] for one blob.

    Each hypothesis has the blob's area and centroid and is blurred by the Gaussian of
    ``BLURS`` that fits best. Windows wider than ``SHAPE_WINDOW`` pixels are box-downsampled
    first (blur sigmas then count downsampled pixels).
    """
    k = -(-max(blob.alpha.shape) // SHAPE_WINDOW)
    h, w = blob.alpha.shape[0] // k, blob.alpha.shape[1] // k
    alpha = blob.alpha[: h * k, : w * k].reshape(h, k, w, k).mean((1, 3))
    cx, cy = (blob.cx - blob.left) / k, (blob.cy - blob.top) / k  # window pixels
    norm = max(float((alpha**2).sum()), 1e-6)
    bh, bw = _blur_matrices(h), _blur_matrices(w).transpose(0, 2, 1)
    errors = []
    for s in SHAPES:
        r = np.sqrt(blob.area / SHAPE_AREA[s]) / k
        model = coverage(s, [cx], [cy - SHAPE_OFFSET[s] * r], r, [0], [0], h, w)[0]
        blurred = bh @ model @ bw  # [len(BLURS), h, w]
        errors.append(float(((blurred - alpha) ** 2).sum((1, 2)).min()) / norm)
    return np.array(errors)


def _track(blobs: list[_Blob], num_frames: int, scale: int) -> list[list[_Blob]]:
    """Link blobs into tracks: same colour, nearest previous position."""
    tracks: list[list[_Blob]] = []
    for t in range(num_frames):
        current = [b for b in blobs if b.frame == t]
        pairs = sorted(
            (np.hypot(b.cx - tr[-1].cx, b.cy - tr[-1].cy), i, j)
            for i, b in enumerate(current)
            for j, tr in enumerate(tracks)
            if tr[-1].color == b.color and tr[-1].frame < t
        )
        used_b, used_t = set(), set()
        for d, i, j in pairs:
            if i in used_b or j in used_t or d > 0.75 * scale:
                continue
            tracks[j].append(current[i])
            used_b.add(i)
            used_t.add(j)
        tracks.extend([b] for i, b in enumerate(current) if i not in used_b)
    return tracks


def _describe(track: list[_Blob], num_frames: int, height: int, width: int) -> DetectedObject:
    scale = min(height, width)
    picks = np.unique(np.linspace(0, len(track) - 1, min(SHAPE_FRAMES, len(track))).round())
    errors = np.mean([_shape_errors(track[int(i)]) for i in picks], axis=0)
    k = int(np.argmin(errors))
    shape = SHAPES[k]
    colors = [b.color for b in track]
    color = max(set(colors), key=colors.count)
    areas = np.array([b.area for b in track])
    r = np.sqrt(areas / SHAPE_AREA[shape])
    xs = np.array([b.cx for b in track]) / width
    ys = (np.array([b.cy for b in track]) - SHAPE_OFFSET[shape] * r) / height
    motion = None
    if num_frames > 1:
        t = np.array([b.frame for b in track]) / (num_frames - 1)
        if len(track) > 1 and np.ptp(t) > 0:
            dx, dy = np.polyfit(t, xs, 1)[0], np.polyfit(t, ys, 1)[0]
        else:
            dx = dy = 0.0
        if max(abs(dx), abs(dy)) < STILL_THRESHOLD:
            motion = "still"
        elif abs(dx) >= abs(dy):
            motion = "right" if dx > 0 else "left"
        else:
            motion = "down" if dy > 0 else "up"
    return DetectedObject(
        color=color,
        shape=shape,
        size="large" if np.median(r) / scale > SIZE_THRESHOLD else "small",
        motion=motion,
        start=(float(xs[0]), float(ys[0])),
        end=(float(xs[-1]), float(ys[-1])),
        pixels=float(areas.mean()),
        confidence=float(np.clip(1.0 - errors[k], 0.0, 1.0)),
        num_frames=len(track),
    )


def analyse(frames: np.ndarray) -> Analysis:
    """Background and objects of uint8 RGB frames [T, H, W, 3] (or one image [H, W, 3])."""
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise LumosError(
            f"analyse expects uint8 RGB frames [T, H, W, 3], got {frames.dtype} {frames.shape}"
        )
    num_frames, height, width, _ = frames.shape
    if min(height, width) < 8:
        raise LumosError(f"frames of {height}x{width} pixels are too small to analyse")
    f = frames.astype(np.float32)
    border = np.concatenate([f[:, 0], f[:, -1], f[:, :, 0], f[:, :, -1]], axis=1)
    bg = np.median(border.reshape(-1, 3), axis=0)
    names = tuple(BACKGROUNDS)
    background = _nearest(names, np.array([BACKGROUNDS[n] for n in names], np.float32), bg)
    shift = np.clip(bg - np.array(BACKGROUNDS[background], np.float32), -MAX_SHIFT, MAX_SHIFT)
    dist = np.linalg.norm(f - bg, axis=-1)
    contrast = float(np.linalg.norm(_PALETTE - bg, axis=1).min())
    scale = min(height, width)
    blobs = _blobs(f, bg, shift, dist > FG_FRACTION * contrast, dist, MIN_AREA * scale**2)
    tracks = [t for t in _track(blobs, num_frames, scale) if 2 * len(t) >= num_frames]
    objects = sorted(
        (_describe(t, num_frames, height, width) for t in tracks), key=lambda o: -o.pixels
    )
    return Analysis(
        background,
        (float(bg[0]), float(bg[1]), float(bg[2])),
        tuple(objects),
        num_frames,
        height,
        width,
    )


# ----------------------------------------------------------------------------- scoring


def score(analysis: Analysis, expected: Scene | SceneSpec) -> dict[str, bool]:
    """Compare an analysis with what was asked for; one bool per checked attribute.

    Matching rule: each expected object is paired with a distinct detected object (among the
    8 largest), choosing the pairing with the most colour matches, then shape, motion and
    size matches, then the smallest start-position distance. An attribute is correct if it
    is correct for every expected object (an unpaired expected object fails them all).
    Keys: ``count`` (as many objects detected as expected), ``color``, ``shape``; ``size``,
    ``motion``, ``position`` (start centre within ``POSITION_TOLERANCE`` on both axes) and
    ``background`` only when the expectation states them (motion only for videos);
    ``all`` is the conjunction of the others.
    """
    want = list(expected.objects)
    found = list(analysis.objects[:8])
    video = analysis.num_frames > 1

    def known(o, key: str) -> bool:
        return getattr(o, key, None) is not None and (key != "motion" or video)

    def agree(e, d, key: str) -> bool:
        if key == "position":
            dx, dy = d.start[0] - e.x, d.start[1] - e.y
            return max(abs(dx), abs(dy)) <= POSITION_TOLERANCE
        return getattr(e, key) == getattr(d, key)

    def rank(pairing):
        pairs = list(zip(want, pairing, strict=False))
        counts = [
            sum(agree(e, d, k) for e, d in pairs if known(e, k))
            for k in ("color", "shape", "motion", "size")
        ]
        dist = sum(np.hypot(d.start[0] - e.x, d.start[1] - e.y) for e, d in pairs if known(e, "x"))
        return (*counts, -dist)

    n = min(len(want), len(found))
    best = max(itertools.permutations(found, n), key=rank) if n else ()
    result = {"count": len(found) == len(want)}
    for key in ("color", "shape", "size", "motion", "position"):
        attr = "x" if key == "position" else key
        if any(known(e, attr) for e in want):
            paired = list(zip(want, best, strict=False))
            result[key] = len(found) >= len(want) and all(
                agree(e, d, key) for e, d in paired if known(e, attr)
            )
    if getattr(expected, "background", None) is not None:
        result["background"] = analysis.background == expected.background
    result["all"] = all(result.values())
    return result


def aggregate(scores: Iterable[dict[str, bool]]) -> dict[str, float]:
    """Mean of each key over the scores that contain it (accuracy in [0, 1])."""
    sums: dict[str, list[int]] = {}
    for s in scores:
        for k, v in s.items():
            sums.setdefault(k, []).append(int(v))
    return {k: float(np.mean(v)) for k, v in sums.items()}


# ----------------------------------------------------------------------------- benchmarks


def gaussian_blur(frames: np.ndarray, sigma: float) -> np.ndarray:
    """Blur float frames [T, H, W, C] spatially (sigma in pixels; edges replicated).

    Separable taps with plain numpy adds: small BLAS matmuls thread badly on a busy CPU.
    """
    radius = max(int(np.ceil(3 * sigma)), 1)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    _, height, width, _ = frames.shape
    pad = np.pad(frames, ((0, 0), (radius, radius), (0, 0), (0, 0)), mode="edge")
    out = sum(k * pad[:, i : i + height] for i, k in enumerate(taps))
    pad = np.pad(out, ((0, 0), (0, 0), (radius, radius), (0, 0)), mode="edge")
    return sum(k * pad[:, :, i : i + width] for i, k in enumerate(taps))


def degrade(
    frames: np.ndarray,
    rng: np.random.Generator,
    blur: float = 0.8,
    noise: float = 4.0,
    jpeg_quality: int = 75,
    color_shift: float = 8.0,
    chroma_subsampling: bool = False,
) -> np.ndarray:
    """Simulate a tokenizer reconstruction of uint8 frames [T, H, W, 3].

    Gaussian blur (sigma in pixels), a random per-channel colour offset (uniform in
    +-color_shift), Gaussian noise (std in 8-bit levels), then JPEG at ``jpeg_quality``
    (ringing, blocks; 4:4:4 unless ``chroma_subsampling``, which halves the colour resolution
    as JPEG's default 4:2:0 does, harsher than a learned RGB tokenizer). Defaults give about
    30 dB PSNR.
    """
    f = frames.astype(np.float32)
    if blur > 0:
        f = gaussian_blur(f, blur)
    f = f + rng.uniform(-color_shift, color_shift, size=3) + rng.normal(0, noise, size=f.shape)
    out = np.clip(np.rint(f), 0, 255).astype(np.uint8)
    if jpeg_quality < 100:
        for i, frame in enumerate(out):
            buf = io.BytesIO()
            Image.fromarray(frame).save(
                buf, format="JPEG", quality=jpeg_quality, subsampling=2 if chroma_subsampling else 0
            )
            out[i] = np.asarray(Image.open(buf).convert("RGB"))
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 arrays (255 peak)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


# Degradations for the accuracy tables: keyword arguments of degrade(), None = clean.
CONDITIONS: dict[str, dict | None] = {
    "clean": None,
    "degraded": {},  # ~30 dB: blur 0.8 px, noise 4, JPEG 75 (4:4:4), colour shift +-8
    "jpeg420": {"chroma_subsampling": True},  # as above with half-resolution chroma
    "harsh": {"blur": 1.2, "noise": 8.0, "jpeg_quality": 50, "color_shift": 15.0},
}


def evaluate_world(
    n: int,
    canvases: Iterable[tuple[int, int]] = ((64, 64), (64, 96), (48, 80)),
    splits: Iterable[str] = SPLITS,
    num_frames: int = 9,
    image_every: int = 5,
    degradation: dict | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Analyser accuracy on ``n`` world renders cycling over canvases (H, W) and splits.

    Every ``image_every``-th sample is a single frame of a still scene. With a
    ``degradation`` (keyword arguments of :func:`degrade`), frames are degraded first and
    the mean PSNR is returned as ``psnr``.
    """
    canvases, splits = list(canvases), list(splits)
    rng = np.random.default_rng(seed)
    scores, psnrs = [], []
    for i in range(n):
        height, width = canvases[i % len(canvases)]
        image = image_every > 0 and i % image_every == image_every - 1
        scene = sample_scene(seed * 1_000_003 + i, splits[i % len(splits)], still_only=image)
        frames = render(scene, height, width, 1 if image else num_frames)
        if degradation is not None:
            clean, frames = frames, degrade(frames, rng, **degradation)
            psnrs.append(psnr(clean, frames))
        scores.append(score(analyse(frames), scene))
    result = aggregate(scores)
    if psnrs:
        result["psnr"] = float(np.mean(psnrs))
    return result
