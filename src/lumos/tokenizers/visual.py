"""The visual tokenizer interface and the uint8 <-> [-1, 1] pixel conversion (docs/design.md,
"Tokenizers").

A visual tokenizer maps RGB video to a grid of discrete tokens and back:

* ``encode(video)``: float RGB in [-1, 1], shape [B, 3, T, H, W] with ``T = 1 + tc*k``
  RGB frames (tc = temporal compression, 4 for video tokenizers; T = 1 is an image) and
  H, W multiples of the spatial compression sc (8) -> int64 indices [B, t, h, w] with
  ``t = 1 + k`` latent frames, ``h = H/sc``, ``w = W/sc`` latent tokens.
* ``decode(indices)``: int indices [B, t, h, w] -> float RGB [B, 3, 1 + tc*(t-1), sc*h, sc*w]
  in [-1, 1].

Latent frame 0 covers RGB frame 0 alone; latent frame j >= 1 covers RGB frames
``tc*(j-1)+1 .. tc*j``. Implementations: :mod:`lumos.tokenizers.causal_video` (ours),
:mod:`lumos.tokenizers.cosmos_native` (Cosmos-Tokenizer-DV4x8x8) and the TorchScript adapter
:mod:`lumos.tokenizers.cosmos`; :func:`lumos.tokenizers.load_visual_tokenizer` loads any of
them from a directory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from lumos.errors import LumosError

DEFAULT_VISUAL_TOKENIZER_DIR = Path(__file__).resolve().parent.parent / (
    "assets/default/visual_tokenizer"
)

# Values this far outside [-1, 1] are rejected by encode (tolerates float rounding).
_RANGE_TOLERANCE = 1e-3


class VisualTokenizer(nn.Module):
    """Base class: validates inputs, subclasses implement ``_encode`` and ``_decode``.

    Subclasses set ``codebook_size``, ``temporal_compression`` and ``spatial_compression``.
    """

    codebook_size: int
    temporal_compression: int
    spatial_compression: int

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """(t, h, w) latent tokens for a clip of ``frames`` x ``height`` x ``width`` pixels."""
        self._check_pixel_shape(frames, height, width)
        tc, sc = self.temporal_compression, self.spatial_compression
        return 1 + (frames - 1) // tc, height // sc, width // sc

    def pixel_shape(self, t: int, h: int, w: int) -> tuple[int, int, int]:
        """(T, H, W) RGB frames and pixels decoded from a t x h x w latent grid."""
        tc, sc = self.temporal_compression, self.spatial_compression
        return 1 + tc * (t - 1), sc * h, sc * w

    def _check_pixel_shape(self, frames: int, height: int, width: int) -> None:
        tc, sc = self.temporal_compression, self.spatial_compression
        if frames < 1 or (frames - 1) % tc:
            allowed = f"T = 1 + {tc}k (1, {1 + tc}, {1 + 2 * tc}, ...)" if tc > 1 else "T >= 1"
            raise LumosError(
                f"the visual tokenizer needs {allowed} RGB frames; got T={frames} (trim the clip)"
            )
        if height < sc or width < sc or height % sc or width % sc:
            raise LumosError(
                f"the visual tokenizer needs height and width that are positive multiples of "
                f"{sc}; got {height}x{width} (H x W); resize or crop the frames"
            )

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """RGB video [B, 3, T, H, W] in [-1, 1] -> int64 indices [B, t, h, w]."""
        if not isinstance(video, torch.Tensor) or not video.is_floating_point():
            kind = video.dtype if isinstance(video, torch.Tensor) else type(video).__name__
            raise LumosError(
                f"encode expects a float tensor in [-1, 1]; got {kind} "
                "(convert uint8 frames with lumos.tokenizers.visual.frames_to_video)"
            )
        if video.ndim != 5 or video.shape[1] != 3:
            raise LumosError(
                f"encode expects RGB video of shape [B, 3, T, H, W]; got {list(video.shape)}"
            )
        self._check_pixel_shape(*video.shape[2:])
        lo, hi = video.amin().item(), video.amax().item()
        if not (lo >= -1 - _RANGE_TOLERANCE and hi <= 1 + _RANGE_TOLERANCE):
            raise LumosError(
                f"encode expects values in [-1, 1]; got min {lo:.4g}, max {hi:.4g} "
                "(map uint8 x with x / 127.5 - 1)"
            )
        indices = self._encode(video.clamp(-1, 1))
        return indices.to(torch.int64)

    @torch.no_grad()
    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """Int indices [B, t, h, w] -> float RGB video [B, 3, 1 + tc(t-1), sc*h, sc*w] in [-1, 1]."""
        self.decode_check(indices)
        return self._decode(indices.to(torch.int64)).clamp(-1, 1)

    def decode_check(self, indices: torch.Tensor) -> None:
        """One-line errors for what ``decode`` cannot take (dtype, shape, index range)."""
        if (
            not isinstance(indices, torch.Tensor)
            or indices.is_floating_point()
            or (indices.dtype in (torch.bool, torch.complex64, torch.complex128))
        ):
            kind = indices.dtype if isinstance(indices, torch.Tensor) else type(indices).__name__
            raise LumosError(f"decode expects an integer tensor of token indices; got {kind}")
        if indices.ndim != 4 or min(indices.shape) < 1:
            raise LumosError(
                f"decode expects indices of shape [B, t, h, w] (all >= 1); "
                f"got {list(indices.shape)}"
            )
        lo, hi = indices.min().item(), indices.max().item()
        if lo < 0 or hi >= self.codebook_size:
            raise LumosError(
                f"decode expects indices in [0, {self.codebook_size}); got min {lo}, max {hi} "
                "(were these tokens produced by a different tokenizer?)"
            )

    @property
    def decode_context(self) -> int | None:
        """Earlier latent frames that the decoding of one latent frame reads (its causal
        receptive field), or None when the decoder is not causal (every frame reads all)."""
        return None

    @torch.no_grad()
    def decode_last(self, indices: torch.Tensor) -> torch.Tensor:
        """RGB frames [B, 3, n, H, W] of the LAST latent frame of ``indices`` [B, t, h, w]
        (n = 1 when t == 1, else ``temporal_compression``): the same frames as the tail of
        ``decode(indices)``, decoding only the latent frames in :attr:`decode_context`."""
        t = indices.shape[1]
        ctx = self.decode_context
        start = 0 if ctx is None else max(0, t - 1 - ctx)
        n = 1 if t == 1 else self.temporal_compression
        return self.decode(indices[:, start:])[:, :, -n:]

    def stream_decoder(self) -> StreamDecoder:
        """A decoder for one clip fed a few latent frames at a time (streaming): see
        :class:`StreamDecoder`."""
        return StreamDecoder(self)

    def _encode(self, video: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _decode(self, indices: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class StreamDecoder:
    """Decodes one clip incrementally: each call takes the next latent frames [B, n, h, w] of
    the clip and returns their RGB frames [B, 3, T_n, H, W] (1 + tc*(n-1) for the clip's first
    call, tc*n after), equal to the matching frames of ``decode`` of the whole clip up to float
    rounding. This default keeps the last :attr:`VisualTokenizer.decode_context` latent frames
    and decodes them with the new ones (the whole prefix when the receptive field is
    unbounded); tokenizers with a cached causal state override
    :meth:`VisualTokenizer.stream_decoder`."""

    def __init__(self, tokenizer: VisualTokenizer) -> None:
        self.tokenizer = tokenizer
        self.kept: torch.Tensor | None = None  # [B, <= decode_context, h, w] earlier frames

    def __call__(self, indices: torch.Tensor) -> torch.Tensor:
        tok = self.tokenizer
        clip = indices if self.kept is None else torch.cat([self.kept, indices.to(self.kept)], 1)
        first = self.kept is None
        video = tok.decode(clip)
        n = indices.shape[1]
        video = video if first else video[:, :, -tok.temporal_compression * n :]
        ctx = tok.decode_context
        self.kept = clip if ctx is None else clip[:, clip.shape[1] - min(ctx, clip.shape[1]) :]
        return video


# Causal decoding state carried between calls of a streaming decoder: module -> its last input
# frames (causal convolutions) or (keys, values) (causal temporal attention).
Cache = dict[nn.Module, object]


class CachedStreamDecoder:
    """:class:`StreamDecoder` for tokenizers whose ``_decode_chunk(indices, cache, first)``
    continues a cached causal state: each call decodes only the new latent frames (``chunk``
    at a time, None: all at once), so every latent frame is decoded once and the work per
    frame does not depend on the clip's length."""

    def __init__(self, tokenizer: VisualTokenizer, chunk: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.chunk = chunk
        self.cache: Cache = {}
        self.seen = 0  # latent frames decoded so far

    @torch.no_grad()
    def __call__(self, indices: torch.Tensor) -> torch.Tensor:
        tok = self.tokenizer
        tok.decode_check(indices)
        device = next(tok.parameters()).device
        n = indices.shape[1]
        step = self.chunk or n
        out = [
            tok._decode_chunk(
                indices[:, s : s + step].to(device, torch.int64), self.cache, self.seen + s == 0
            )
            for s in range(0, n, step)
        ]
        self.seen += n
        return torch.cat(out, 2).float().clamp(-1, 1)


CLIP_DECODE_CHUNK = 4  # latent frames decoded at a time by decode_clip (cached-state tokenizers)


def clip_decode_chunk(tokenizer: VisualTokenizer) -> int | None:
    """Latent frames :func:`decode_clip` decodes at a time: :data:`CLIP_DECODE_CHUNK` for a
    tokenizer that streams from a cached causal state (each latent frame is decoded once, so the
    memory of decoding does not grow with the clip), None (the whole clip at once) for the
    others, whose chunks would re-decode their context."""
    return CLIP_DECODE_CHUNK if isinstance(tokenizer.stream_decoder(), CachedStreamDecoder) else None


def decode_clip(tokenizer: VisualTokenizer, indices: torch.Tensor) -> np.ndarray:
    """uint8 RGB frames [B, T, H, W, 3] of a clip's codes [B, t, h, w] (on the tokenizer's
    device), :func:`clip_decode_chunk` latent frames at a time: the float video of one chunk is
    the largest thing alive. Equals ``video_to_frames(tokenizer.decode(indices))`` up to float
    rounding (a pixel may differ by one level)."""
    chunk = clip_decode_chunk(tokenizer)
    if chunk is None:
        return video_to_frames(tokenizer.decode(indices))
    decoder = tokenizer.stream_decoder()
    starts = range(0, indices.shape[1], chunk)
    return np.concatenate([video_to_frames(decoder(indices[:, s : s + chunk])) for s in starts], 1)


def frames_to_video(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 RGB frames [T, H, W, 3] (or a batch [B, T, H, W, 3]) -> float [(B,) 3, T, H, W]
    in [-1, 1]."""
    x = torch.as_tensor(np.asarray(frames))
    if x.dtype != torch.uint8 or x.ndim not in (4, 5) or x.shape[-1] != 3:
        raise LumosError(
            f"expected uint8 RGB frames of shape [T, H, W, 3] or [B, T, H, W, 3]; "
            f"got {x.dtype} {list(x.shape)}"
        )
    x = x.movedim(-1, -4).float()
    return x / 127.5 - 1


def video_to_frames(video: torch.Tensor) -> np.ndarray:
    """Float video [(B,) 3, T, H, W] in [-1, 1] -> uint8 RGB frames [(B,) T, H, W, 3]."""
    x = ((video.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.movedim(-4, -1).cpu().numpy()
