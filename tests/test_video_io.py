import shutil
import subprocess
from fractions import Fraction

import numpy as np
import pytest
import torch
from PIL import Image

import lumos.data.video_io as video_io
from lumos.data.buckets import resolution_buckets
from lumos.data.video_io import load_clip, read_video, resize_crop, write_video
from lumos.errors import LumosError
from lumos.tokenizers.visual import frames_to_video, video_to_frames

FFMPEG = shutil.which("ffmpeg")
needs_ffmpeg = pytest.mark.skipif(FFMPEG is None, reason="ffmpeg is not installed (apt ffmpeg)")


def ffmpeg(*args: str) -> None:
    subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


@pytest.fixture(scope="module")
def mp4(tmp_path_factory):
    """A real H.264 file made by FFmpeg: 1 s, 24 fps, 160x96, moving test pattern."""
    path = tmp_path_factory.mktemp("media") / "testsrc.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=160x96:rate=24", "-t", "1", "-pix_fmt", "yuv420p",
           str(path))  # fmt: skip
    return path


def nearest_index(frame: np.ndarray, reference: np.ndarray) -> int:
    """Index of the reference frame most similar to ``frame``."""
    diffs = np.abs(reference.astype(np.int16) - frame.astype(np.int16)).mean(axis=(1, 2, 3))
    return int(np.argmin(diffs))


def random_smooth_frames(t: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """uint8 [T, H, W, 3] of distinct, smooth (compressible) random frames."""
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(t, 3, max(2, h // 8), max(2, w // 8), generator=g)
    big = torch.nn.functional.interpolate(small, size=(h, w), mode="bilinear")
    return (big * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


@needs_ffmpeg
def test_read_native(mp4):
    frames, fps = read_video(mp4)
    assert frames.shape == (24, 96, 160, 3) and frames.dtype == np.uint8
    assert fps == 24.0
    # all frames differ (moving pattern), so frame identification below is meaningful
    assert len({nearest_index(f, frames) for f in frames}) == 24


@needs_ffmpeg
@pytest.mark.parametrize("fps", [24, 12, 8, 16, 30, 5.5])
def test_fps_resampling_picks_nearest_frames(mp4, fps):
    full, _ = read_video(mp4)
    frames, out_fps = read_video(mp4, fps=fps)
    assert out_fps == fps
    # one output frame per k / fps inside the 1 s clip
    assert len(frames) == int(np.ceil(fps * 1.0 - 1e-9))
    got = [nearest_index(f, full) for f in frames]
    expected = []
    for k in range(len(frames)):
        x = Fraction(k) * 24 / Fraction(fps)  # target time in source frames
        lo = int(x)
        expected.append(min(lo if x - lo <= Fraction(1, 2) else lo + 1, 23))  # ties: earlier
    assert got == expected


@needs_ffmpeg
def test_max_and_min_frames(mp4):
    first, _ = read_video(mp4, fps=12, max_frames=5)
    all12, _ = read_video(mp4, fps=12)
    assert first.shape[0] == 5
    np.testing.assert_array_equal(first, all12[:5])
    assert read_video(mp4, max_frames=3)[0].shape[0] == 3
    with pytest.raises(LumosError, match="too short: 12 frame.* need 25"):
        read_video(mp4, fps=12, min_frames=25)
    with pytest.raises(LumosError, match="too short"):
        load_clip(mp4, num_frames=25, fps=12, size=(64, 64))


@needs_ffmpeg
def test_load_clip_crop_geometry(mp4):
    src, _ = read_video(mp4, fps=12, max_frames=9)
    # 160x96 -> 64x96: height already fits, so the result is the central 64 columns exactly
    clip = load_clip(mp4, num_frames=9, fps=12, size=(64, 96), dtype=torch.uint8)
    assert clip.shape == (3, 9, 96, 64) and clip.dtype == torch.uint8
    np.testing.assert_array_equal(clip.permute(1, 2, 3, 0).numpy(), src[:, :, 48:112])
    # float variant in [-1, 1], same content
    clip_f = load_clip(mp4, num_frames=9, fps=12, size=(64, 96))
    assert clip_f.dtype == torch.float32 and clip_f.is_contiguous()
    assert clip_f.min() >= -1 and clip_f.max() <= 1
    assert torch.equal(clip_f, frames_to_video(clip.permute(1, 2, 3, 0)))


@needs_ffmpeg
def test_read_bucket_resize_write_read_back(mp4, tmp_path):
    clip = load_clip(mp4, num_frames=9, fps=12, size=resolution_buckets(112))
    # 160x96 (5:3) -> the closest 256p bucket is 13x8 grids = 416x256
    assert clip.shape == (3, 9, 256, 416)
    expected = resize_crop(read_video(mp4, fps=12, max_frames=9)[0], (416, 256))
    np.testing.assert_array_equal(video_to_frames(clip), expected)
    # batch axis: the visual tokenizer's [B, 3, T, H, W] layout
    batch = torch.stack([clip, -clip])
    assert video_to_frames(batch).shape == (2, 9, 256, 416, 3)
    out = tmp_path / "sub" / "clip.mp4"
    write_video(out, video_to_frames(clip), fps=12)
    back, fps = read_video(out)
    assert back.shape == (9, 256, 416, 3) and fps == 12
    err = np.abs(back.astype(np.int16) - expected.astype(np.int16)).mean()
    assert err < 6, err  # H.264 at crf 18
    assert [p.name for p in out.parent.iterdir()] == ["clip.mp4"]


@needs_ffmpeg
@pytest.mark.parametrize("suffix", [".webm", ".mov", ".gif", ".mkv"])
def test_other_containers(tmp_path, suffix):
    path = tmp_path / f"clip{suffix}"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=120x80:rate=10", "-t", "1", str(path))
    frames, fps = read_video(path)
    assert frames.shape == (10, 80, 120, 3) and fps == 10
    clip = load_clip(path, num_frames=5, fps=5, size=resolution_buckets(16))
    assert clip.shape == (3, 5, 96, 160)  # 3:2 source -> 5x3 grids


def test_mp4_odd_size_is_padded(tmp_path):
    frames = random_smooth_frames(5, 33, 45, seed=1)
    write_video(tmp_path / "odd.mp4", frames, fps=7.5)
    back, fps = read_video(tmp_path / "odd.mp4")
    assert back.shape == (5, 34, 46, 3) and fps == 7.5
    assert np.abs(back[:, :33, :45].astype(np.int16) - frames).mean() < 8


def test_gif_round_trip(tmp_path):
    # at most 256 colours: exact
    rng = np.random.default_rng(2)
    palette = rng.integers(0, 256, (16, 3), dtype=np.uint8)
    frames = palette[rng.integers(0, 16, (6, 4, 6))].repeat(10, axis=1).repeat(12, axis=2)
    path = tmp_path / "anim.gif"
    write_video(path, frames, fps=10)
    back, fps = read_video(path)
    assert back.shape == (6, 40, 72, 3) and fps == pytest.approx(10)
    np.testing.assert_array_equal(back, frames)
    assert Image.open(path).info.get("loop") == 0
    # resampling a GIF by timestamps: 10 fps -> 5 fps keeps every other frame
    half, _ = read_video(path, fps=5)
    np.testing.assert_array_equal(half, frames[::2])
    # thousands of colours are quantised to a 256-colour palette per frame
    smooth = random_smooth_frames(3, 40, 72, seed=2)
    write_video(path, smooth, fps=10)
    assert np.abs(read_video(path)[0].astype(np.int16) - smooth).mean() < 8


def test_variable_frame_rate_gif(tmp_path):
    # frames shown at t = 0, 0.1, 0.15, 0.4, 0.5 s (durations 100, 50, 250, 100, 100 ms)
    levels = [0, 60, 120, 180, 240]
    images = [Image.new("RGB", (24, 16), (v, v, v)) for v in levels]
    path = tmp_path / "vfr.gif"
    images[0].save(
        path, save_all=True, append_images=images[1:], duration=[100, 50, 250, 100, 100], loop=0
    )
    frames, _ = read_video(path, fps=10, max_frames=6)
    # targets 0, .1, .2, .3, .4, .5 s -> nearest frames 0, 1, 2 (0.15), 3 (0.4), 3, 4
    assert [int(f[0, 0, 0]) for f in frames] == [0, 60, 120, 180, 180, 240]


def test_png_single_and_sequence(tmp_path):
    frames = random_smooth_frames(4, 30, 50, seed=3)
    write_video(tmp_path / "one.png", frames[0], fps=1)
    img, fps = read_video(tmp_path / "one.png")
    np.testing.assert_array_equal(img, frames[:1])
    assert fps == 1.0
    assert read_video(tmp_path / "one.png", fps=12)[1] == 12  # an image is a 1-frame video
    assert load_clip(tmp_path / "one.png", 1, 12, (32, 32)).shape == (3, 1, 32, 32)

    pattern = tmp_path / "seq" / "frame_%04d.png"
    write_video(pattern, frames, fps=8)
    names = sorted(p.name for p in pattern.parent.iterdir())
    assert names == [f"frame_{i:04d}.png" for i in range(1, 5)]
    back, fps = read_video(pattern, fps=8)
    np.testing.assert_array_equal(back, frames)
    assert fps == 8

    with pytest.raises(LumosError, match="one frame"):
        write_video(tmp_path / "many.png", frames, fps=8)

    write_video(tmp_path / "photo.jpg", frames[0], fps=1)
    jpg, _ = read_video(tmp_path / "photo.jpg")
    assert jpg.shape == (1, 30, 50, 3) and np.abs(jpg.astype(np.int16) - frames[:1]).mean() < 6


def test_write_errors(tmp_path):
    frames = random_smooth_frames(2, 16, 16)
    with pytest.raises(LumosError, match="unsupported output format"):
        write_video(tmp_path / "x.avi", frames, fps=8)
    with pytest.raises(LumosError, match="uint8"):
        write_video(tmp_path / "x.mp4", frames.astype(np.float32), fps=8)
    with pytest.raises(LumosError, match="fps"):
        write_video(tmp_path / "x.mp4", frames, fps=0)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "v.mp4"
    good = random_smooth_frames(3, 32, 48)
    write_video(path, good, fps=8)
    before = path.read_bytes()

    def broken(tmp, video, fps, crf):
        tmp.write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(video_io, "_write_mp4", broken)
    with pytest.raises(LumosError, match="disk full"):
        write_video(path, good, fps=8)
    with pytest.raises(LumosError):
        write_video(tmp_path / "new.mp4", good, fps=8)
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]
    assert path.read_bytes() == before


def test_pixel_value_conversion():
    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.999, 1.0, 3.0]).view(1, 1, 1, 7).expand(3, 1, 1, 7)
    assert video_to_frames(x)[0, 0, :, 0].tolist() == [0, 0, 64, 128, 255, 255, 255]
    v = torch.randint(0, 256, (2, 5, 8, 12, 3), dtype=torch.uint8)
    np.testing.assert_array_equal(video_to_frames(frames_to_video(v)), v.numpy())


@needs_ffmpeg
def test_unreadable_inputs(mp4, tmp_path):
    rng = np.random.default_rng(0)
    bad = tmp_path / "random.mp4"
    bad.write_bytes(rng.integers(0, 256, 20000, dtype=np.uint8).tobytes())
    truncated = tmp_path / "truncated.mp4"
    data = mp4.read_bytes()
    truncated.write_bytes(data[: int(0.3 * len(data))])
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    not_image = tmp_path / "fake.png"
    not_image.write_bytes(b"this is not a png")
    audio = tmp_path / "tone.wav"
    ffmpeg("-f", "lavfi", "-i", "sine=duration=0.2", str(audio))
    for path, problem in [
        (bad, "cannot decode"),
        (truncated, "cannot decode"),
        (empty, "cannot decode"),
        (not_image, "cannot read image"),
        (audio, "no video stream"),
        (tmp_path / "missing.mp4", "no such file"),
        (tmp_path, "directory"),
    ]:
        with pytest.raises(LumosError, match=problem) as info:
            read_video(path)
        assert path.name in str(info.value)
    with pytest.raises(LumosError, match="fps"):
        read_video(mp4, fps=-1)


@needs_ffmpeg
def test_truncated_faststart_mp4(tmp_path):
    # moov atom first: the header survives truncation, the frame data does not
    full = tmp_path / "fast.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=96x64:rate=24", "-t", "1", "-pix_fmt", "yuv420p",
           "-movflags", "+faststart", str(full))  # fmt: skip
    data = full.read_bytes()
    for fraction in (0.05, 0.3):
        cut = tmp_path / f"cut{fraction}.mp4"
        cut.write_bytes(data[: int(fraction * len(data))])
        with pytest.raises(LumosError, match="cut"):
            read_video(cut)
