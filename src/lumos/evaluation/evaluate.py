"""Prompt-following evaluation on the procedural world (``lumos eval``).

Four groups of cases, each judged by the analyser against what its prompt says
(:func:`lumos.data.world.parse_caption`):

* ``t2v_heldin``  – text-to-video, colour-shape pairs seen in training;
* ``t2v_heldout`` – text-to-video, a held-out colour-shape pair;
* ``t2i``         – text-to-image (one frame), training pairs;
* ``i2v_heldout`` – image-to-video: the first frame of a rendered held-out clip plus its caption.

Cases are deterministic for a seed. Prompt ``i`` of a group is generated with its own
generator, so results do not depend on the batch size, and a group's cases depend only on
(seed, group, i): not on which other groups run, and distinct seeds give disjoint case seeds.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from lumos.atomic import atomic_path, write_text
from lumos.data.world import caption, parse_caption, render, sample_scene
from lumos.errors import LumosError
from lumos.evaluation.analyser import aggregate, analyse, score
from lumos.generation.pipeline import LumosPipeline

GROUPS = ("t2v_heldin", "t2v_heldout", "t2i", "i2v_heldout")
MAX_CASES = 1_000_003  # per group and seed: case seeds of different (seed, group) never overlap


def case_seed(seed: int, group: str, i: int) -> int:
    """The world seed of case ``i`` (``0 <= i < MAX_CASES``) of ``group`` for eval ``seed``."""
    return (seed * len(GROUPS) + GROUPS.index(group) + 1) * MAX_CASES + i


@dataclass
class EvalCase:
    group: str
    prompt: str
    seed: int
    image: np.ndarray | None = None  # uint8 [H, W, 3] first frame for image-to-video


def build_cases(
    n: int,
    height: int,
    width: int,
    num_frames: int,
    seed: int = 0,
    max_objects: int = 1,
    groups: tuple[str, ...] = GROUPS,
) -> list[EvalCase]:
    """``n`` cases per group, at ``height`` x ``width`` pixels and ``num_frames`` RGB frames."""
    if not 0 < n <= MAX_CASES or seed < 0:
        raise LumosError(f"need 0 < n <= {MAX_CASES} and seed >= 0, got n={n}, seed={seed}")
    objects = 1 if max_objects == 1 else None
    cases = []
    for group in groups:
        for i in range(n):
            s = case_seed(seed, group, i)
            split = "heldout" if "heldout" in group else "train"
            scene = sample_scene(s, split, num_objects=objects, still_only=group == "t2i")
            text = caption(scene, s, image=group == "t2i")
            image = render(scene, height, width, num_frames)[0] if group.startswith("i2v") else None
            cases.append(EvalCase(group, text, s, image))
    return cases


def evaluate(
    pipe: LumosPipeline,
    cases: list[EvalCase],
    num_frames: int,
    height: int,
    width: int,
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
    **sampling,
) -> tuple[dict, list[np.ndarray]]:
    """Generate and judge every case. Returns (report, frames per case). ``sampling`` goes to
    the pipeline call (``num_inference_steps``, ``guidance_scale``, ``top_k``, ...)."""
    records, videos = [], []
    by_kind: dict[tuple[bool, bool], list[int]] = {}
    for i, c in enumerate(cases):
        by_kind.setdefault((c.group == "t2i", c.image is not None), []).append(i)
    results: dict[int, np.ndarray] = {}
    for (image_only, with_image), idx in by_kind.items():
        for b0 in range(0, len(idx), batch_size):
            batch = [cases[i] for i in idx[b0 : b0 + batch_size]]
            out = pipe(
                [c.prompt for c in batch],
                num_frames=1 if image_only else num_frames,
                height=height,
                width=width,
                generator=[torch.Generator().manual_seed(c.seed) for c in batch],
                image=np.stack([c.image for c in batch]) if with_image else None,
                **sampling,
            )
            for i, frames in zip(idx[b0 : b0 + batch_size], out.frames, strict=True):
                results[i] = frames
            if progress is not None:
                progress(len(batch))
    for i, c in enumerate(cases):
        frames = results[i]
        analysis = analyse(frames)
        s = score(analysis, parse_caption(c.prompt))
        records.append(
            {
                "group": c.group,
                "prompt": c.prompt,
                "seed": c.seed,
                "scores": s,
                "detected": [
                    {"color": o.color, "shape": o.shape, "size": o.size, "motion": o.motion}
                    for o in analysis.objects
                ],
            }
        )
        videos.append(frames)
    groups = {
        g: aggregate(r["scores"] for r in records if r["group"] == g)
        for g in dict.fromkeys(c.group for c in cases)
    }
    counts = {g: sum(r["group"] == g for r in records) for g in groups}
    return {"accuracy": groups, "counts": counts, "cases": records}, videos


def contact_sheet(
    cases: list[EvalCase],
    videos: list[np.ndarray],
    path: str | Path,
    per_group: int = 6,
    scale: int = 2,
) -> Path:
    """A PNG with, per shown case, its group and prompt beside its frames (atomic write)."""
    shown = []
    for g in dict.fromkeys(c.group for c in cases):
        shown += [i for i, c in enumerate(cases) if c.group == g][:per_group]
    h, w = videos[shown[0]].shape[1:3]
    max_t = max(len(videos[i]) for i in shown)
    label_w, pad = 340, 4
    row_h = h * scale + 2 * pad
    sheet = Image.new("RGB", (label_w + max_t * (w * scale + pad), row_h * len(shown)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, i in enumerate(shown):
        y = r * row_h + pad
        text = f"[{cases[i].group}] {cases[i].prompt}"
        lines = [text[k : k + 52] for k in range(0, len(text), 52)][: max(1, row_h // 12)]
        draw.multiline_text((pad, y), "\n".join(lines), fill="black", spacing=1)
        for t, frame in enumerate(videos[i]):
            tile = Image.fromarray(frame).resize((w * scale, h * scale), Image.NEAREST)
            sheet.paste(tile, (label_w + t * (w * scale + pad), y))
    path = Path(path)
    with atomic_path(path) as tmp:
        sheet.save(tmp)
    return path


def write_report(report: dict, path: str | Path) -> Path:
    return write_text(path, json.dumps(report, indent=1))


def format_table(report: dict) -> str:
    keys = ("color", "shape", "motion", "count", "all")
    lines = [f"{'group':<14}{'n':>5}" + "".join(f"{k:>8}" for k in keys)]
    for g, acc in report["accuracy"].items():
        cells = "".join(f"{100 * acc[k]:>7.1f}%" if k in acc else f"{'-':>8}" for k in keys)
        lines.append(f"{g:<14}{report['counts'][g]:>5}{cells}")
    return "\n".join(lines)
