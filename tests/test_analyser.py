import numpy as np
import pytest

from lumos.cli.analyser import main
from lumos.data.world import (
    SHAPES,
    SIZE_RADIUS,
    Scene,
    WorldObject,
    caption,
    parse_caption,
    render,
    sample_scene,
)
from lumos.errors import LumosError
from lumos.evaluation.analyser import (
    CONDITIONS,
    Analysis,
    DetectedObject,
    aggregate,
    analyse,
    degrade,
    evaluate_world,
    score,
)

CANVASES = ((64, 64), (64, 96), (48, 80), (80, 48))
KEYS = ("count", "color", "shape", "size", "motion", "position", "background", "all")


def _seed() -> int:
    return int(np.random.default_rng().integers(10**6))


def test_accuracy_clean():
    acc = evaluate_world(300, CANVASES, seed=_seed())
    print("clean accuracy:", {k: round(v, 4) for k, v in acc.items()})
    for k in KEYS:
        assert acc[k] >= 0.99, (k, acc)


def test_accuracy_degraded():
    acc = evaluate_world(300, CANVASES, degradation=CONDITIONS["degraded"], seed=_seed())
    print("degraded accuracy:", {k: round(v, 4) for k, v in acc.items()})
    assert 28.0 < acc["psnr"] < 33.0
    for k in KEYS:
        assert acc[k] >= 0.95, (k, acc)


def test_positions_motion_and_single_frames():
    a = WorldObject("triangle", "orange", "large", "down", 0.27, 0.3)
    b = WorldObject("cross", "cyan", "small", "right", 0.5, 0.8)
    scene = Scene((a, b), "navy")
    for height, width in ((64, 96), (96, 64)):
        result = analyse(render(scene, height, width, 9))
        assert result.background == "navy" and result.num_frames == 9
        assert [(o.color, o.shape, o.size, o.motion) for o in result.objects] == [
            ("orange", "triangle", "large", "down"),
            ("cyan", "cross", "small", "right"),
        ]
        big, small = result.objects
        np.testing.assert_allclose(big.start, (0.27, 0.3), atol=0.01)
        np.testing.assert_allclose(big.end, (0.27, 0.65), atol=0.01)
        np.testing.assert_allclose(small.end, (0.85, 0.8), atol=0.01)
        assert big.num_frames == 9 and big.confidence > 0.95
        expected_area = 2.0 * (SIZE_RADIUS["large"] * min(height, width)) ** 2
        assert abs(big.pixels / expected_area - 1) < 0.05
        image = analyse(render(scene, height, width, 1)[0])  # [H, W, 3] is one image
        assert image.num_frames == 1 and [o.motion for o in image.objects] == [None, None]
        assert score(image, scene) == {
            "count": True,
            "color": True,
            "shape": True,
            "size": True,
            "position": True,
            "background": True,
            "all": True,
        }


def test_touching_objects_are_separated():
    rng = np.random.default_rng()
    colors = [("red", "orange"), ("white", "yellow"), ("blue", "cyan"), ("green", "magenta")]
    for c1, c2 in colors:
        s1, s2 = rng.choice(SHAPES, size=2)
        # large objects centred 0.4 apart: their boxes touch
        a = WorldObject(str(s1), c1, "large", "still", 0.3, 0.5)
        b = WorldObject(str(s2), c2, "large", "still", 0.7, 0.5)
        scene = Scene((a, b), "grey")
        assert score(analyse(render(scene, 64, 64, 3)), scene)["all"], (c1, s1, c2, s2)


def test_score_rules():
    def obj(color, shape, motion="left", start=(0.5, 0.5)):
        return DetectedObject(color, shape, "small", motion, start, start, 100.0, 1.0, 9)

    found = (obj("blue", "square", "up", (0.7, 0.7)), obj("red", "circle", "left", (0.2, 0.2)))
    analysis = Analysis("black", (0.0, 0.0, 0.0), found, 9, 64, 64)
    # matched by colour whatever the order; unstated size/background are not scored
    spec = parse_caption("a red circle moves left and a blue square moves up")
    assert score(analysis, spec) == {
        "count": True,
        "color": True,
        "shape": True,
        "motion": True,
        "all": True,
    }
    result = score(analysis, parse_caption("a red circle rises on a grey background"))
    assert not result["count"] and result["color"] and result["shape"]
    assert not result["motion"] and not result["background"] and not result["all"]
    result = score(analysis, parse_caption("a red triangle, a blue square and a green cross"))
    assert not result["count"] and not result["color"] and not result["shape"]
    assert "motion" not in result
    scene = Scene((WorldObject("circle", "red", "small", "left", 0.2, 0.26),), "black")
    assert not score(analysis, scene)["position"] and not score(analysis, scene)["count"]
    scene = Scene((WorldObject("circle", "red", "small", "left", 0.2, 0.24),), "black")
    assert score(analysis, scene)["position"]
    assert aggregate([{"a": True, "b": False}, {"a": False}, {"a": True}]) == {
        "a": 2 / 3,
        "b": 0.0,
    }


def test_caption_prompts_are_judged():
    rng = np.random.default_rng()
    for seed in rng.integers(10**6, size=10):
        scene = sample_scene(int(seed), "heldout")
        frames = degrade(render(scene, 48, 80, 9), rng)
        result = score(analyse(frames), parse_caption(caption(scene, int(seed))))
        assert result["all"], (scene, result)


def test_empty_noise_and_bad_input():
    empty = analyse(np.zeros((5, 40, 56, 3), np.uint8))
    assert empty.objects == () and empty.background == "black"
    assert not score(empty, sample_scene(0))["count"]
    noise = np.random.default_rng().integers(0, 256, size=(3, 48, 64, 3), dtype=np.uint8)
    read = analyse(noise)
    # Uniform noise: the border median is mid-grey, and no blob fits any shape.
    assert (read.num_frames, read.height, read.width, read.background) == (3, 48, 64, "grey")
    assert len(read.objects) <= 3 and all(o.confidence < 0.05 for o in read.objects), read
    with pytest.raises(LumosError):
        analyse(np.zeros((2, 32, 32, 3), np.float32))
    with pytest.raises(LumosError):
        analyse(np.zeros((2, 32, 32), np.uint8))


def test_cli(capsys):
    assert main(["--n", "4", "--conditions", "clean,harsh", "--canvases", "48x64"]) == 0
    out = capsys.readouterr().out
    assert "clean" in out and "harsh" in out and "shape" in out
    assert main(["--n", "2", "--conditions", "blurry"]) == 2
    assert main(["--n", "2", "--canvases", "64by64"]) == 2
