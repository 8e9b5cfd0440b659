"""Our small trainable causal video tokenizer (FSQ bottleneck), CPU-friendly.

Layout, for temporal compression tc, patch size p and spatial compression sc:

* Causal space-time patchify: RGB frame 0 is repeated tc times, so that a clip of
  ``1 + tc*k`` frames becomes ``k + 1`` groups of tc frames; each group of tc frames and
  p x p pixels is folded into ``3*tc*p*p`` channels. Latent frame 0 therefore sees RGB
  frame 0 alone and latent frame j sees RGB frames ``tc*(j-1)+1 .. tc*j``.
* Encoder: causal 3-D convolutions over (latent frame, row, column); causal in time means
  the kernel covers the current and earlier latent frames only (zero padding in the past),
  so latent frame j never depends on RGB frames after ``tc*j``. Residual blocks, strided
  2-D downsampling until the grid is H/sc x W/sc, then a 1x1x1 projection to the FSQ
  channels.
* Decoder: the mirror image (nearest-neighbour 2x upsampling), ending in a projection to
  ``(3 + F)*tc*p*p`` channels that is unfolded back to pixels (coarse RGB + F features per
  pixel); the tc-1 frames that come from the repeated first frame are dropped. A small
  per-frame refiner (3x3 convolutions at full resolution) adds a residual correction that
  sharpens edges. The decoder is causal too: RGB frames of latent frame j depend only on
  tokens of latent frames <= j.

Normalisation is GroupNorm applied to each frame separately (normalising over time would
leak the future into the past). Saved as ``config.json`` + ``model.safetensors``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from lumos.errors import LumosError
from lumos.tokenizers.fsq import FSQ
from lumos.tokenizers.visual import Cache, CachedStreamDecoder, VisualTokenizer

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MODEL_TYPE = "lumos_causal_video_tokenizer"


@dataclass
class CausalVideoTokenizerConfig:
    """Architecture of :class:`CausalVideoTokenizer`.

    ``channels[i]`` is the width at grid H/(p*2^i); ``spatial_compression / patch_size``
    must equal ``2 ** (len(channels) - 1)``. ``temporal_compression`` is 4 for video
    tokenizers and 1 for image-only ones. ``temporal_kernel`` is the number of latent
    frames (current and past) each 3-D convolution sees. ``refine_channels`` > 0 adds a
    full-resolution per-frame refiner fed with the coarse RGB and ``refine_features``
    extra decoder channels per pixel (0 disables it).
    """

    levels: list[int] = field(default_factory=lambda: [7, 5, 5, 5, 5])
    temporal_compression: int = 4
    spatial_compression: int = 8
    patch_size: int = 4
    channels: list[int] = field(default_factory=lambda: [64, 96])
    encoder_blocks: int = 1
    decoder_blocks: int = 2
    temporal_kernel: int = 2
    norm_groups: int = 8
    refine_features: int = 4
    refine_channels: int = 16

    def __post_init__(self) -> None:
        p, sc, tc = self.patch_size, self.spatial_compression, self.temporal_compression
        if tc < 1 or p < 1 or sc % p or (sc // p) != 2 ** (len(self.channels) - 1):
            raise LumosError(
                f"inconsistent tokenizer config: spatial_compression {sc} must equal "
                f"patch_size {p} * 2^(len(channels)-1) = {p * 2 ** (len(self.channels) - 1)} "
                f"and temporal_compression {tc} must be >= 1"
            )
        if any(c % self.norm_groups for c in self.channels):
            raise LumosError(
                f"tokenizer channels {self.channels} must be multiples of norm_groups "
                f"{self.norm_groups}"
            )


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm over (channels, H, W) of each frame of [B, C, T, H, W] separately."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = super().forward(x.transpose(1, 2).reshape(b * t, c, h, w))
        return y.reshape(b, t, c, h, w).transpose(1, 2)


class CausalConv3d(nn.Conv3d):
    """3-D convolution over [B, C, T, H, W], causal in T (zero-pads only past frames)."""

    def __init__(
        self, cin: int, cout: int, kernel: int | tuple[int, int, int], stride: int = 1
    ) -> None:
        kt, kh, kw = (kernel,) * 3 if isinstance(kernel, int) else kernel
        padding = (0, (kh - 1) // 2, (kw - 1) // 2)
        super().__init__(cin, cout, (kt, kh, kw), stride=(1, stride, stride), padding=padding)
        self.time_pad = kt - 1

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        """``cache`` (streaming): this module's last ``time_pad`` input frames of the earlier
        calls stand in for the zero padding, and are updated."""
        if cache is None or not self.time_pad:
            return super().forward(F.pad(x, (0, 0, 0, 0, self.time_pad, 0)))
        past = cache.get(self)
        x = F.pad(x, (0, 0, 0, 0, self.time_pad, 0)) if past is None else torch.cat([past, x], 2)
        cache[self] = x[:, :, -self.time_pad :]
        return super().forward(x)


class ResBlock(nn.Module):
    def __init__(self, channels: int, groups: int, temporal_kernel: int) -> None:
        super().__init__()
        self.norm1 = FrameGroupNorm(groups, channels)
        self.conv1 = CausalConv3d(channels, channels, (temporal_kernel, 3, 3))
        self.norm2 = FrameGroupNorm(groups, channels)
        self.conv2 = CausalConv3d(channels, channels, (temporal_kernel, 3, 3))

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)), cache)
        return x + self.conv2(F.silu(self.norm2(h)), cache)


class Encoder(nn.Module):
    def __init__(self, cfg: CausalVideoTokenizerConfig) -> None:
        super().__init__()
        ch, kt, g = cfg.channels, cfg.temporal_kernel, cfg.norm_groups
        cin = 3 * cfg.temporal_compression * cfg.patch_size**2
        self.conv_in = CausalConv3d(cin, ch[0], (1, 3, 3))
        stages: list[nn.Module] = []
        for i, c in enumerate(ch):
            stages += [ResBlock(c, g, kt) for _ in range(cfg.encoder_blocks)]
            if i + 1 < len(ch):
                stages.append(CausalConv3d(c, ch[i + 1], (1, 4, 4), stride=2))
        self.stages = nn.Sequential(*stages)
        self.norm_out = FrameGroupNorm(g, ch[-1])
        self.conv_out = CausalConv3d(ch[-1], len(cfg.levels), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Patchified video [B, 3*tc*p*p, t, H/p, W/p] -> continuous latents [B, D, t, h, w]."""
        x = self.stages(self.conv_in(x))
        return self.conv_out(F.silu(self.norm_out(x)))


class Upsample(nn.Module):
    def __init__(self, cin: int, cout: int, temporal_kernel: int) -> None:
        super().__init__()
        self.conv = CausalConv3d(cin, cout, (temporal_kernel, 3, 3))

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=(1, 2, 2), mode="nearest"), cache)


class Decoder(nn.Module):
    def __init__(self, cfg: CausalVideoTokenizerConfig) -> None:
        super().__init__()
        ch, kt, g = cfg.channels[::-1], cfg.temporal_kernel, cfg.norm_groups
        self.conv_in = CausalConv3d(len(cfg.levels), ch[0], (kt, 3, 3))
        stages: list[nn.Module] = []
        for i, c in enumerate(ch):
            stages += [ResBlock(c, g, kt) for _ in range(cfg.decoder_blocks)]
            if i + 1 < len(ch):
                stages.append(Upsample(c, ch[i + 1], kt))
        self.stages = nn.Sequential(*stages)
        self.norm_out = FrameGroupNorm(g, ch[-1])
        self.out_channels = 3 + (cfg.refine_features if cfg.refine_channels else 0)
        cout = self.out_channels * cfg.temporal_compression * cfg.patch_size**2
        self.conv_out = CausalConv3d(ch[-1], cout, (1, 3, 3))

    def forward(self, codes: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        """FSQ codes [B, D, t, h, w] -> patchified [B, out_channels*tc*p*p, t, H/p, W/p]
        (RGB first, then the refiner's features). ``cache``: see :class:`CausalConv3d`."""
        x = self.conv_in(codes, cache)
        for stage in self.stages:
            x = stage(x, cache)
        return self.conv_out(F.silu(self.norm_out(x)))


class Refiner(nn.Module):
    """Per-frame full-resolution residual correction of the coarse RGB (3x3 convolutions)."""

    def __init__(self, cin: int, channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(cin, channels, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(channels, 3, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3 + F, T, H, W] (coarse RGB + features) -> RGB [B, 3, T, H, W]."""
        b, c, t, h, w = x.shape
        y = self.net(x.transpose(1, 2).reshape(b * t, c, h, w))
        return x[:, :3] + y.reshape(b, t, 3, h, w).transpose(1, 2)


def patchify(video: torch.Tensor, tc: int, p: int) -> torch.Tensor:
    """RGB [B, 3, 1 + tc*k, H, W] -> [B, 3*tc*p*p, 1 + k, H/p, W/p] (frame 0 repeated tc times)."""
    b, c, _, h, w = video.shape
    x = torch.cat([video[:, :, :1].expand(-1, -1, tc - 1, -1, -1), video], dim=2)
    t = x.shape[2] // tc
    x = x.reshape(b, c, t, tc, h // p, p, w // p, p)
    x = x.permute(0, 1, 3, 5, 7, 2, 4, 6)  # b, c, tc, p, p, t, h/p, w/p
    return x.reshape(b, c * tc * p * p, t, h // p, w // p)


def unpatchify(
    x: torch.Tensor, tc: int, p: int, channels: int = 3, first: bool = True
) -> torch.Tensor:
    """Inverse of :func:`patchify`: [B, C*tc*p*p, t, h, w] -> [B, C, 1 + tc*(t-1), h*p, w*p]
    (``first=False``, latent frames that follow others: [B, C, tc*t, h*p, w*p])."""
    b, _, t, h, w = x.shape
    x = x.reshape(b, channels, tc, p, p, t, h, w)
    x = x.permute(0, 1, 5, 2, 6, 3, 7, 4)  # b, c, t, tc, h, p, w, p
    x = x.reshape(b, channels, t * tc, h * p, w * p)
    return x[:, :, tc - 1 :] if first else x


class CausalVideoTokenizer(VisualTokenizer):
    """Causal video tokenizer: ``encode`` / ``decode`` as in :class:`VisualTokenizer`;
    ``forward`` is the differentiable autoencoder used for training."""

    def __init__(self, config: CausalVideoTokenizerConfig | None = None) -> None:
        super().__init__()
        self.config = config or CausalVideoTokenizerConfig()
        self.fsq = FSQ(self.config.levels)
        self.codebook_size = self.fsq.codebook_size
        self.temporal_compression = self.config.temporal_compression
        self.spatial_compression = self.config.spatial_compression
        self.encoder = Encoder(self.config)
        self.decoder = Decoder(self.config)
        self.refiner = (
            Refiner(self.decoder.out_channels, self.config.refine_channels)
            if self.config.refine_channels
            else None
        )

    def quantize(self, video: torch.Tensor) -> torch.Tensor:
        """RGB [B, 3, T, H, W] in [-1, 1] -> FSQ codes [B, D, t, h, w] (straight-through)."""
        z = self.encoder(patchify(video, self.temporal_compression, self.config.patch_size))
        return self.fsq(z.movedim(1, -1)).movedim(-1, 1)

    def reconstruct(
        self, codes: torch.Tensor, cache: Cache | None = None, first: bool = True
    ) -> torch.Tensor:
        """FSQ codes [B, D, t, h, w] -> RGB [B, 3, 1 + tc(t-1), H, W] (not clamped). With a
        ``cache`` the codes continue the latent frames of earlier calls (``first=False``: no
        frame-0 special case, tc*t RGB frames)."""
        x = self.decoder(codes, cache)
        tc, p = self.temporal_compression, self.config.patch_size
        x = unpatchify(x, tc, p, channels=self.decoder.out_channels, first=first)
        return x if self.refiner is None else self.refiner(x)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Differentiable round trip: RGB [B, 3, T, H, W] -> reconstruction, same shape."""
        return self.reconstruct(self.quantize(video))

    @property
    def decode_context(self) -> int:
        """Each causal convolution of the decoder reaches ``time_pad`` latent frames further
        back; GroupNorm and the refiner work per frame."""
        return sum(m.time_pad for m in self.decoder.modules() if isinstance(m, CausalConv3d))

    def _encode(self, video: torch.Tensor) -> torch.Tensor:
        return self.fsq.codes_to_indices(self.quantize(video).movedim(1, -1))

    def _decode(self, indices: torch.Tensor) -> torch.Tensor:
        return self._decode_chunk(indices, None, first=True)

    def _decode_chunk(
        self, indices: torch.Tensor, cache: Cache | None, first: bool
    ) -> torch.Tensor:
        """RGB of latent frames [B, n, h, w] that follow the frames ``cache`` has seen."""
        codes = self.fsq.indices_to_codes(indices).movedim(-1, 1)
        return self.reconstruct(codes.to(self.decoder.conv_in.weight.dtype), cache, first)

    def stream_decoder(self) -> CachedStreamDecoder:
        """Decodes a clip a few latent frames at a time from the decoder's cached causal state
        (the last input frames of every causal convolution): each latent frame is decoded
        once, so time and memory per frame do not depend on the clip's length."""
        return CachedStreamDecoder(self)

    def save_pretrained(self, directory: str | Path, dtype: torch.dtype = torch.float32) -> None:
        """Write ``config.json`` and ``model.safetensors`` (weights stored as ``dtype``;
        :meth:`from_pretrained` always loads float32) into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {"model_type": MODEL_TYPE, **dataclasses.asdict(self.config)}
        (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> CausalVideoTokenizer:
        """Load a directory written by :meth:`save_pretrained`."""
        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        for p in (config_path, weights_path):
            if not p.is_file():
                raise LumosError(
                    f"{p} is missing; a lumos visual tokenizer directory holds {CONFIG_NAME} "
                    f"and {WEIGHTS_NAME} (written by lumos train-tokenizer)"
                )
        try:
            raw = json.loads(config_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise LumosError(f"cannot read {config_path}: {err}") from err
        if not isinstance(raw, dict) or raw.pop("model_type", None) != MODEL_TYPE:
            raise LumosError(f"{config_path} is not a lumos visual tokenizer config")
        known = {f.name for f in dataclasses.fields(CausalVideoTokenizerConfig)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise LumosError(f"{config_path} has unknown fields {unknown}")
        try:
            model = cls(CausalVideoTokenizerConfig(**raw))
        except TypeError as err:
            raise LumosError(f"invalid config in {config_path}: {err}") from err
        try:
            state = load_file(str(weights_path))
        except (SafetensorError, OSError) as err:
            raise LumosError(f"cannot read {weights_path}: {err}") from err
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise LumosError(
                f"{weights_path} does not match {config_path}: {str(err).splitlines()[0]}"
            ) from err
        return model.eval()
