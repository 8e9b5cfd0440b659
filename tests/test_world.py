import argparse
import dataclasses
import time

import numpy as np
import pytest

from lumos.cli import world as world_cli
from lumos.data.world import (
    BACKGROUNDS,
    COLORS,
    GAP,
    HELDOUT_PAIRS,
    MOTIONS,
    SHAPES,
    SIZES,
    TRAIN_PAIRS,
    ProceduralWorld,
    Scene,
    caption,
    parse_caption,
    render,
    sample_scene,
)
from lumos.errors import LumosError

CANVASES = [(64, 64), (64, 96), (48, 80), (96, 48), (32, 32)]


def _boxes(scene: Scene, height: int, width: int, num_frames: int) -> np.ndarray:
    """Pixel bounding boxes [objects, T, 4] (top, left, bottom, right; inclusive) of each object."""
    out = []
    for obj in scene.objects:
        frames = render(Scene((obj,), scene.background), height, width, num_frames)
        fg = np.any(frames != np.array(BACKGROUNDS[scene.background], np.uint8), axis=-1)
        boxes = []
        for f in fg:
            rows, cols = np.nonzero(f.any(1))[0], np.nonzero(f.any(0))[0]
            boxes.append((rows[0], cols[0], rows[-1], cols[-1]))
        out.append(boxes)
    return np.array(out)


def test_deterministic_and_varied():
    seed = int(np.random.default_rng().integers(10**6))
    a, b = sample_scene(seed), sample_scene(seed)
    assert a == b
    assert np.array_equal(render(a, 48, 80, 5), render(b, 48, 80, 5))
    world = ProceduralWorld(height=48, width=80, num_frames=5, seed=seed, image_fraction=0.3)
    s1, s2 = world[17], world[17]
    assert s1.caption == s2.caption and s1.scene == s2.scene
    assert np.array_equal(s1.frames, s2.frames)
    scenes = {sample_scene(seed + i) for i in range(50)}
    assert len(scenes) == 50
    assert sample_scene(seed, "train") != sample_scene(seed, "heldout")


@pytest.mark.parametrize("height,width", CANVASES)
def test_render_shapes_and_bounds(height, width):
    rng = np.random.default_rng()
    for _ in range(20):
        scene = sample_scene(int(rng.integers(10**9)), str(rng.choice(["train", "heldout"])))
        for t in (1, 9):
            frames = render(scene, height, width, t)
            assert frames.shape == (t, height, width, 3) and frames.dtype == np.uint8
        boxes = _boxes(scene, height, width, 9)
        # inside the canvas with a margin of at least one pixel in every frame
        assert boxes[..., :2].min() >= 1
        assert boxes[..., 2].max() <= height - 2 and boxes[..., 3].max() <= width - 2
        if len(scene.objects) == 2:  # boxes separated by GAP minus the anti-aliased edges
            a, b = boxes
            gap_y = np.maximum(a[:, 0] - b[:, 2], b[:, 0] - a[:, 2]) - 1
            gap_x = np.maximum(a[:, 1] - b[:, 3], b[:, 1] - a[:, 3]) - 1
            assert np.all(np.maximum(gap_x, gap_y) >= GAP * min(height, width) - 2)


def test_motion_visible_and_sizes():
    for motion in MOTIONS:
        for size in SIZES:
            scene = sample_scene(int(np.random.default_rng().integers(10**6)), num_objects=1)
            obj = dataclasses.replace(scene.objects[0], motion=motion, size=size)
            # move the start so the object stays inside whatever the motion
            obj = dataclasses.replace(obj, x=0.5 + {"left": 0.17, "right": -0.17}.get(motion, 0))
            obj = dataclasses.replace(obj, y=0.5 + {"up": 0.17, "down": -0.17}.get(motion, 0))
            box = _boxes(Scene((obj,), scene.background), 64, 64, 9)[0].astype(float)
            centre = np.stack([(box[:, 1] + box[:, 3]) / 2, (box[:, 0] + box[:, 2]) / 2], 1)
            shift = (centre[-1] - centre[0]) / 64
            expect = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
            np.testing.assert_allclose(
                shift, 0.35 * np.array(expect.get(motion, (0, 0))), atol=0.03
            )
            extent = (box[0, 3] - box[0, 1] + 1) / 64
            assert (extent > 0.3) == (size == "large")


def test_splits():
    assert len(HELDOUT_PAIRS) == 8 and len(TRAIN_PAIRS) == len(COLORS) * len(SHAPES) - 8
    assert {c for c, _ in HELDOUT_PAIRS} <= {c for c, _ in TRAIN_PAIRS}
    assert {s for _, s in HELDOUT_PAIRS} <= {s for _, s in TRAIN_PAIRS}
    rng = np.random.default_rng()
    seen = {k: set() for k in ("shape", "color", "size", "motion", "background", "count")}
    for seed in rng.integers(10**9, size=400):
        train, held = sample_scene(int(seed), "train"), sample_scene(int(seed), "heldout")
        assert all((o.color, o.shape) not in HELDOUT_PAIRS for o in train.objects)
        assert any((o.color, o.shape) in HELDOUT_PAIRS for o in held.objects)
        for scene in (train, held):
            assert len({o.color for o in scene.objects}) == len(scene.objects)
            seen["background"].add(scene.background)
            seen["count"].add(len(scene.objects))
            for o in scene.objects:
                for k in ("shape", "color", "size", "motion"):
                    seen[k].add(getattr(o, k))
    assert seen["shape"] == set(SHAPES) and seen["color"] == set(COLORS)
    assert seen["size"] == set(SIZES) and seen["motion"] == set(MOTIONS)
    assert seen["background"] == set(BACKGROUNDS) and seen["count"] == {1, 2}
    assert all(o.motion == "still" for o in sample_scene(5, still_only=True).objects)
    assert len(sample_scene(5, num_objects=2).objects) == 2


def test_captions_round_trip():
    rng = np.random.default_rng()
    templates = set()
    for seed in rng.integers(10**9, size=400):
        scene = sample_scene(int(seed), str(rng.choice(["train", "heldout"])))
        image = bool(rng.random() < 0.3)
        text = caption(scene, int(seed), image=image)
        assert caption(scene, int(seed), image=image) == text
        spec = parse_caption(text)
        assert len(spec.objects) == len(scene.objects), text
        for want, got in zip(scene.objects, spec.objects, strict=True):
            assert (got.color, got.shape) == (want.color, want.shape), text
            assert got.motion == (None if image else want.motion), text
            assert got.size in (None, want.size), text
        assert spec.background in (None, scene.background), text
        templates.add(" ".join(w for w in text.split() if w.isalpha() and len(w) > 3)[:12])
    assert len(templates) >= 8


def test_parse_caption_free_text_and_errors():
    spec = parse_caption(
        "A big Orange diamond rises, while a tiny white cross is static. Gray background."
    )
    assert [(o.size, o.color, o.shape, o.motion) for o in spec.objects] == [
        ("large", "orange", "diamond", "up"),
        ("small", "white", "cross", "still"),
    ]
    assert spec.background == "grey"
    for bad in ("hello world", "a red thing", "a circle moves left", ""):
        with pytest.raises(LumosError):
            parse_caption(bad)


def test_world_dataset_images_and_speed():
    world = ProceduralWorld(
        "heldout", height=32, width=48, num_frames=5, image_fraction=0.5, seed=3
    )
    samples = [world[i] for i in range(60)]
    images = [s for s in samples if s.frames.shape[0] == 1]
    assert 15 <= len(images) <= 45
    for s in images:
        assert all(o.motion == "still" for o in s.scene.objects)
        assert all(o.motion is None for o in parse_caption(s.caption).objects)
    for s in samples:
        assert s.frames.shape[1:] == (32, 48, 3)
        assert any((o.color, o.shape) in HELDOUT_PAIRS for o in s.scene.objects)
    assert len(world) == 10**9
    with pytest.raises(IndexError):
        world[-1]
    scene = sample_scene(0, num_objects=2)
    start = time.perf_counter()
    for _ in range(20):
        render(scene, 64, 64, 9)
    assert (time.perf_counter() - start) / 20 < 0.02


def test_invalid_arguments():
    with pytest.raises(LumosError):
        sample_scene(0, "test")
    with pytest.raises(LumosError):
        sample_scene(0, num_objects=3)
    with pytest.raises(LumosError):
        render(sample_scene(0), 8, 64, 9)
    with pytest.raises(LumosError):
        render(sample_scene(0), 64, 64, 0)
    with pytest.raises(LumosError):
        ProceduralWorld(image_fraction=1.5)


def test_world_cli(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    world_cli.register(parser.add_subparsers())
    args = parser.parse_args(
        ["world", "--out", str(tmp_path), "--n", "3", "--size", "32x48", "--frames", "5"]
        + ["--image-fraction", "0.5", "--seed", "1", "--analyse"]
    )
    assert args.func(args) == 0
    lines = (tmp_path / "captions.txt").read_text().splitlines()
    assert len(lines) == 3 and (tmp_path / "sheet.png").is_file()
    for line in lines:
        name, text = line.split("\t")
        parse_caption(text)
        assert (tmp_path / name).is_file()
    assert "analyser:" in capsys.readouterr().out
    with pytest.raises(LumosError):
        args.func(parser.parse_args(["world", "--out", str(tmp_path), "--size", "64by64"]))
