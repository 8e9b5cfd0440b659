import math
import random

import pytest

from lumos.data.buckets import (
    PRESET_MAX_GRIDS,
    PRESETS,
    choose_bucket,
    parse_size,
    resize_crop_box,
    resolution_buckets,
)
from lumos.errors import LumosError


def test_preset_budgets():
    assert PRESET_MAX_GRIDS == {"256p": 112, "384p": 252, "480p": 360}
    for name, size in PRESETS.items():
        assert size in resolution_buckets(PRESET_MAX_GRIDS[name])


@pytest.mark.parametrize("n", [1, 7, 16, 112, 252, 360])
def test_buckets_are_the_budget_boundary(n):
    buckets = resolution_buckets(n)
    # brute force: within budget and aspect, and growing both sides by one grid would exceed it
    expected = {
        (32 * w, 32 * h)
        for w in range(1, n + 1)
        for h in range(1, n + 1)
        if w * h <= n and max(w, h) <= 4 * min(w, h) and (w + 1) * (h + 1) > n
    }
    assert set(buckets) == expected
    assert len(buckets) == len(set(buckets))
    for w, h in buckets:
        assert w % 32 == 0 and h % 32 == 0
        assert (w // 32) * (h // 32) <= n
        assert max(w, h) / min(w, h) <= 4.0
    # symmetric: a bucket's transpose is a bucket
    assert {(h, w) for w, h in buckets} == set(buckets)


def test_buckets_options():
    assert resolution_buckets(4, grid=16, max_aspect=1.0) == [(32, 32)]
    assert (64, 16) in resolution_buckets(4, grid=16)
    with pytest.raises(LumosError, match="max_aspect"):
        resolution_buckets(112, max_aspect=0.5)
    with pytest.raises(LumosError):
        resolution_buckets(0)


def test_choose_bucket_hand_values():
    b112 = resolution_buckets(112)
    assert choose_bucket(1920, 1080, b112) == (448, 256)
    assert choose_bucket(1080, 1920, b112) == (256, 448)
    assert choose_bucket(500, 500, b112) == (320, 320)
    assert choose_bucket(640, 480, b112) == (384, 288)
    assert choose_bucket(1920, 1080, resolution_buckets(252)) == (672, 384)
    # 16:9 is closer to 25x14 grids (1.786) than to the 16:10 preset 768x480
    assert choose_bucket(1920, 1080, resolution_buckets(360)) == (800, 448)
    # extreme aspect ratios clamp to the 4:1 bucket
    assert choose_bucket(10000, 100, b112) == (640, 160)


def test_choose_bucket_ties_prefer_larger_area():
    # 2:1 and 1:2 sources are equally far from a square; among equal aspect, larger area wins
    assert choose_bucket(100, 100, [(64, 32), (32, 32), (64, 64), (32, 64)]) == (64, 64)
    # sqrt(2) aspect is exactly between 1:1 and 2:1 (log distance): larger area wins
    assert choose_bucket(1, 1, [(64, 32), (96, 96)]) == (96, 96)
    assert choose_bucket(2, 1, [(128, 64), (64, 32)]) == (128, 64)


def test_choose_bucket_is_closest_in_log_aspect():
    rng = random.Random(0)
    buckets = resolution_buckets(112)
    for _ in range(200):
        sw, sh = rng.randint(16, 4000), rng.randint(16, 4000)
        w, h = choose_bucket(sw, sh, buckets)
        best = min(abs(math.log(bw / bh) - math.log(sw / sh)) for bw, bh in buckets)
        assert abs(math.log(w / h) - math.log(sw / sh)) == pytest.approx(best, abs=1e-12)


@pytest.mark.parametrize(
    "src, dst, expected",
    [
        ((1920, 1080), (448, 256), (455, 256, 3, 0)),  # 1920 * 256/1080 = 455.1
        ((1080, 1920), (256, 448), (256, 455, 0, 3)),
        ((100, 100), (64, 32), (64, 64, 0, 16)),
        ((160, 96), (448, 256), (448, 269, 0, 6)),  # upscale: 96 * 2.8 = 268.8
        ((640, 480), (384, 288), (384, 288, 0, 0)),  # same aspect: no crop
        ((301, 100), (96, 32), (96, 32, 0, 0)),  # 100 * 96/301 = 31.9 -> never below target
        ((33, 10), (64, 32), (106, 32, 21, 0)),  # 33 * 3.2 = 105.6
    ],
)
def test_resize_crop_box(src, dst, expected):
    sw, sh, left, top = resize_crop_box(*src, *dst)
    assert (sw, sh, left, top) == expected
    assert sw >= dst[0] and sh >= dst[1]
    assert left + dst[0] <= sw and top + dst[1] <= sh


def test_resize_crop_box_random_covers_target():
    rng = random.Random(1)
    for _ in range(500):
        sw, sh, dw, dh = (rng.randint(1, 3000) for _ in range(4))
        w, h, left, top = resize_crop_box(sw, sh, dw, dh)
        assert (w == dw and h >= dh) or (h == dh and w >= dw)
        assert abs(w / h - sw / sh) <= max(1 / h, 1 / w) * (1 + w / h) + 1e-9
        assert left == (w - dw) // 2 and top == (h - dh) // 2


def test_parse_size():
    assert parse_size("256p") == (448, 256)
    assert parse_size("480P") == (768, 480)
    assert parse_size("640x352") == (640, 352)
    for bad in ["300x200", "abc", "0x32", "448x256x1", "x256"]:
        with pytest.raises(LumosError):
            parse_size(bad)
