"""Reading and writing videos and images.

Frames on the numpy side are ``uint8`` arrays ``[T, H, W, 3]`` (RGB frames, pixels); clips on
the torch side are ``[3, T, H, W]`` floats in [-1, 1], the visual tokenizer's input layout once
a batch axis is added (``clip[None]`` -> ``[1, 3, T, H, W]``).

Inputs: anything FFmpeg decodes through PyAV (mp4, webm, mov, mkv, gif, ...), still images
through Pillow (png, jpg, ... read as a one-frame video at 1 fps, docs/design.md, "Token layout"), and printf
patterns of numbered images (``frames/%04d.png``, FFmpeg's image2 demuxer, played at the
requested fps or 25 fps). Every failure to read a user file raises :class:`LumosError`
naming the file and the problem.

Outputs (chosen by suffix): ``.mp4`` (H.264, yuv420p), ``.gif`` (looping), and still images
(``.png``, ``.jpg``, ``.webp``, ``.bmp``): one frame per file, or a numbered sequence when the
name holds a printf pattern (``out/frame_%04d.png`` writes frame_0001.png, frame_0002.png, ...,
numbered from 1 like FFmpeg). Each file is written to a temporary name in its directory and
renamed into place, so a failed write leaves no partial file.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image, ImageOps

from lumos.atomic import atomic_path
from lumos.data.buckets import choose_bucket, resize_crop_box
from lumos.errors import LumosError
from lumos.tokenizers.visual import frames_to_video

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
_WRITABLE_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
_PATTERN_DEFAULT_FPS = 25.0  # FFmpeg's image2 default frame rate


def read_video(
    path: str | os.PathLike,
    fps: float | None = None,
    max_frames: int | None = None,
    min_frames: int = 1,
) -> tuple[np.ndarray, float]:
    """Decode a video or image into uint8 RGB frames ``[T, H, W, 3]`` and their frame rate.

    With ``fps`` the video is resampled by timestamps: output frame k is the decoded frame
    nearest to time ``k / fps`` seconds after the first frame (ties go to the earlier frame),
    for every ``k / fps`` before the end of the last frame. Without it every decoded frame is
    returned at the stream's average rate. At most ``max_frames`` frames are decoded/returned;
    fewer than ``min_frames`` raises LumosError. The returned fps is ``fps`` when given.
    """
    p = Path(path)
    if fps is not None and not (math.isfinite(fps) and fps > 0):
        raise LumosError(f"fps must be a positive number, got {fps}")
    is_pattern = "%" in p.name
    if not is_pattern and not p.is_file():
        raise LumosError(f"{p}: no such file" + (" (it is a directory)" if p.is_dir() else ""))
    if p.suffix.lower() in IMAGE_SUFFIXES and not is_pattern:
        frames, out_fps = _read_image(p)[None], fps or 1.0
    else:
        frames, out_fps = _read_av(p, fps, max_frames, is_pattern)
    if len(frames) < min_frames:
        rate = f" at {out_fps:g} fps" if fps is not None else ""
        raise LumosError(
            f"{p}: too short: {len(frames)} frame(s){rate}, need {min_frames}; "
            "use a longer video or fewer frames / a lower fps"
        )
    return frames, out_fps


def _read_image(path: Path) -> np.ndarray:
    """One still image as uint8 ``[H, W, 3]`` (EXIF orientation applied)."""
    try:
        with Image.open(path) as im:
            return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise LumosError(f"{path}: cannot read image ({err})") from err


def _read_av(
    path: Path, fps: float | None, max_frames: int | None, is_pattern: bool
) -> tuple[np.ndarray, float]:
    options = {}
    if is_pattern:
        options = {"format": "image2", "options": {"framerate": str(fps or _PATTERN_DEFAULT_FPS)}}
    try:
        with av.open(str(path), **options) as container:
            if not container.streams.video:
                raise LumosError(f"{path}: no video stream found (not a video, or truncated?)")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            native_fps = float(rate) if rate else None
            timed = _timed_frames(container.decode(stream), native_fps)
            picked = _pick_frames(timed, fps, max_frames, native_fps)
            frames = _to_rgb(picked)
    except av.FFmpegError as err:
        problem = getattr(err, "strerror", None) or str(err)
        raise LumosError(
            f"{path}: cannot decode video ({problem}); is it corrupt or truncated?"
        ) from err
    if not frames.shape[0]:
        raise LumosError(f"{path}: no decodable video frames (truncated or corrupt file?)")
    return frames, fps or native_fps or _PATTERN_DEFAULT_FPS


def _timed_frames(
    frames: Iterable[av.VideoFrame], native_fps: float | None
) -> Iterator[tuple[float, av.VideoFrame]]:
    """(seconds since the first frame, frame); non-decreasing, index-based without timestamps."""
    start = last = None
    for i, frame in enumerate(frames):
        t = frame.time if frame.time is not None else i / (native_fps or _PATTERN_DEFAULT_FPS)
        start = t if start is None else start
        last = t - start if last is None else max(last, t - start)
        yield last, frame


def _pick_frames(
    timed: Iterable[tuple[float, av.VideoFrame]],
    fps: float | None,
    max_frames: int | None,
    native_fps: float | None,
) -> list[av.VideoFrame]:
    """Select frames (possibly repeated) for output times k / fps; streams, stops early."""
    limit = math.inf if max_frames is None else max_frames
    out: list[av.VideoFrame] = []
    prev: tuple[float, av.VideoFrame] | None = None
    step = 0.0  # last frame interval, the display time of the last frame if the rate is unknown
    for t, frame in timed:
        if fps is None:
            out.append(frame)
        while fps is not None and len(out) < limit and t >= len(out) / fps:
            target = len(out) / fps
            use_prev = prev is not None and target - prev[0] <= t - target + 1e-9
            out.append(prev[1] if use_prev else frame)
        if len(out) >= limit:
            return out
        if prev is not None:
            step = t - prev[0]
        prev = (t, frame)
    if fps is not None and prev is not None:  # times inside the last frame's display interval
        end = prev[0] + (1.0 / native_fps if native_fps else step)
        while len(out) < limit and len(out) / fps < end - 1e-6:
            out.append(prev[1])
    return out


def _to_rgb(frames: list[av.VideoFrame]) -> np.ndarray:
    """uint8 ``[T, H, W, 3]``; every frame converted once, at the first frame's size."""
    if not frames:
        return np.zeros((0, 0, 0, 3), np.uint8)
    w, h = frames[0].width, frames[0].height
    cache: dict[int, np.ndarray] = {}
    for f in frames:
        if id(f) not in cache:
            cache[id(f)] = f.reformat(width=w, height=h, format="rgb24").to_ndarray()
    return np.stack([cache[id(f)] for f in frames])


def resize_crop(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize uint8 ``[T, H, W, 3]`` frames to cover ``size`` = (W, H) pixels, centre-crop.

    Uses Pillow's bicubic filter, which is antialiased when downscaling.
    """
    dst_w, dst_h = size
    src_h, src_w = frames.shape[1:3]
    if (src_w, src_h) == (dst_w, dst_h):
        return frames
    sw, sh, left, top = resize_crop_box(src_w, src_h, dst_w, dst_h)
    box = (left, top, left + dst_w, top + dst_h)
    return np.stack(
        [np.asarray(Image.fromarray(f).resize((sw, sh), Image.BICUBIC).crop(box)) for f in frames]
    )


def load_clip(
    path: str | os.PathLike,
    num_frames: int,
    fps: float,
    size: tuple[int, int] | Sequence[tuple[int, int]],
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Read the first ``num_frames`` frames at ``fps``, fit them to a size, return ``[3, T, H, W]``.

    ``size`` is either one (W, H) in pixels or a list of buckets, of which the one closest in
    aspect ratio to the source is used (:func:`lumos.data.buckets.choose_bucket`). The frames
    are resized to cover it and centre-cropped. Floating ``dtype`` gives values in [-1, 1];
    ``torch.uint8`` gives 0..255. Images are one-frame videos (use ``num_frames=1``).
    A source with fewer than ``num_frames`` frames at ``fps`` raises LumosError.
    """
    if num_frames < 1:
        raise LumosError(f"num_frames must be >= 1, got {num_frames}")
    frames, _ = read_video(path, fps=fps, max_frames=num_frames, min_frames=num_frames)
    if isinstance(size[0], (int, np.integer)):
        target = (int(size[0]), int(size[1]))
    else:
        target = choose_bucket(frames.shape[2], frames.shape[1], size)
    frames = np.require(resize_crop(frames, target), requirements="W")  # copy only if read-only
    if dtype == torch.uint8:
        return torch.from_numpy(frames).permute(3, 0, 1, 2).contiguous()
    return frames_to_video(frames).to(dtype).contiguous()


def write_video(
    path: str | os.PathLike, frames: np.ndarray | torch.Tensor, fps: float, crf: int = 18
) -> None:
    """Write uint8 frames ``[T, H, W, 3]`` (or one ``[H, W, 3]`` image), format by suffix.

    ``.mp4``: H.264 (libx264, yuv420p, constant quality ``crf``); odd widths/heights are padded
    by repeating the last column/row, as 4:2:0 needs even sizes. ``.gif``: looping, frame delay
    rounded to 10 ms (the format's unit), identical consecutive frames merged by Pillow.
    ``.png``/``.jpg``/``.webp``/``.bmp``: one frame, or one file per frame when the file name
    holds a printf pattern. Parent directories are created.
    """
    p = Path(path)
    video = np.asarray(frames.detach().cpu() if isinstance(frames, torch.Tensor) else frames)
    if video.ndim == 3:
        video = video[None]
    if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3 or not video.shape[0]:
        raise LumosError(
            f"write_video needs uint8 frames [T,H,W,3] with T >= 1, got {video.dtype} "
            f"{tuple(video.shape)}; convert a [-1,1] tensor with "
            "lumos.tokenizers.visual.video_to_frames()"
        )
    if not (math.isfinite(fps) and fps > 0):
        raise LumosError(f"fps must be a positive number, got {fps}")
    suffix = p.suffix.lower()
    if suffix not in _WRITABLE_IMAGE_SUFFIXES | {".mp4", ".gif"}:
        raise LumosError(
            f"{p}: unsupported output format {p.suffix!r}; use .mp4, .gif or "
            f"{'/'.join(sorted(_WRITABLE_IMAGE_SUFFIXES))} (e.g. frames/%04d.png for a sequence)"
        )
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        if suffix == ".mp4":
            with atomic_path(p) as tmp:
                _write_mp4(tmp, video, fps, crf)
        elif suffix == ".gif":
            with atomic_path(p) as tmp:
                _write_gif(tmp, video, fps)
        else:
            _write_images(p, video)
    except (OSError, av.FFmpegError) as err:
        raise LumosError(f"{p}: cannot write ({err})") from err


def _write_mp4(path: Path, video: np.ndarray, fps: float, crf: int) -> None:
    if "libx264" not in av.codecs_available:
        raise LumosError("this PyAV build has no libx264 encoder; write .gif or .png instead")
    _, h, w, _ = video.shape
    if h % 2 or w % 2:  # yuv420p needs even sizes: repeat the last row / column
        video = np.pad(video, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    with av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(10000))
        stream.width, stream.height = video.shape[2], video.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf)}
        for frame in video:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def _write_gif(path: Path, video: np.ndarray, fps: float) -> None:
    images = [Image.fromarray(f) for f in video]
    delay_ms = max(20, 10 * round(100 / fps))  # GIF delays are in 1/100 s; < 20 ms is ignored
    images[0].save(
        path, format="GIF", save_all=True, append_images=images[1:], duration=delay_ms, loop=0
    )


def _write_images(path: Path, video: np.ndarray) -> None:
    if "%" not in path.name:
        if len(video) != 1:
            raise LumosError(
                f"{path}: an image file holds one frame, got {len(video)}; write .mp4/.gif or "
                f"a numbered sequence such as {path.with_name(path.stem + '_%04d' + path.suffix)}"
            )
        names = [path]
    else:
        try:
            names = [path.with_name(path.name % (i + 1)) for i in range(len(video))]
        except (TypeError, ValueError) as err:
            raise LumosError(f"{path}: bad frame pattern ({err}); use e.g. frame_%04d.png") from err
    image_format = Image.registered_extensions()[path.suffix.lower()]
    for name, frame in zip(names, video, strict=True):
        with atomic_path(name) as tmp:
            Image.fromarray(frame).save(tmp, format=image_format)
