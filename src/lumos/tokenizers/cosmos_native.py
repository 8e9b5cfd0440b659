"""NVIDIA Cosmos-Tokenizer-DV4x8x8 (the official Lumos-1 visual tokenizer) in plain PyTorch.

Written from the public description of the network (NVIDIA/Cosmos-Tokenizer, Apache-2.0,
``CausalDiscreteVideoTokenizer`` with factorized 3-D encoder and decoder; docs/design.md,
"Tokenizers"):

* Haar wavelet patching: RGB frame 0 is repeated ``p`` times (p = patch size, 4), then
  ``log2(p)`` levels of a 2x2x2 Haar transform fold each ``p`` frames x ``p`` x ``p`` pixels
  into ``3 p^3`` channels. Latent frame 0 sees RGB frame 0 alone; latent frame j sees RGB
  frames ``4(j-1)+1 .. 4j``. All the temporal compression comes from the patching.
* Encoder: factorized causal convolutions (a 1x3x3 spatial one followed by a 3x1x1 temporal
  one that only looks at the current and two earlier frames, the first frame replicated into
  the past), residual blocks, spatial downsampling, and in the middle a per-frame spatial
  self-attention followed by a causal temporal self-attention. Normalisation is a GroupNorm
  with one group applied to each frame on its own.
* ``quant_conv`` (1x1) to 6 channels, FSQ with levels [8, 8, 8, 5, 5, 5] (64,000 codes).
* Decoder: the mirror image, then the inverse Haar transform; the ``p - 1`` frames made from
  the repeated first frame are dropped.

Everything is causal in time, so a clip can be encoded or decoded in chunks of latent frames
with a small carried state (the last frames seen by each temporal convolution and the
keys/values of each temporal attention): the result equals whole-clip processing while peak
memory grows with the chunk, not the clip (:attr:`CosmosVideoTokenizer.chunk_frames`).

Module and parameter names follow the released checkpoint, so its state dicts load as they
are (``lumos convert-cosmos``). Saved as ``config.json`` + ``model.safetensors``.
"""

from __future__ import annotations

import dataclasses
import json
import math
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

MODEL_TYPE = "cosmos_discrete_video_tokenizer"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

# Temporal state carried between chunks (see lumos.tokenizers.visual.Cache); None means the
# whole clip is processed at once.


@dataclass
class CosmosConfig:
    """Settings of a Cosmos discrete video tokenizer (defaults: the released DV4x8x8).

    ``channels`` is the base width (128 released); level i of the encoder/decoder has
    ``channels * channels_mult[i]`` channels and works at 1/2^i of the patched resolution
    (until the spatial compression is reached). ``attn_levels`` lists the levels with
    attention inside (none released: only the middle block has it). The temporal
    compression must equal ``patch_size`` (the released network compresses time only by
    its Haar patching).
    """

    channels: int = 128
    channels_mult: list[int] = field(default_factory=lambda: [2, 4, 4])
    num_res_blocks: int = 2
    attn_levels: list[int] = field(default_factory=list)
    z_channels: int = 16
    levels: list[int] = field(default_factory=lambda: [8, 8, 8, 5, 5, 5])
    patch_size: int = 4
    spatial_compression: int = 8
    temporal_compression: int = 4
    in_channels: int = 3
    out_channels: int = 3

    def __post_init__(self) -> None:
        p, n = self.patch_size, len(self.channels_mult)
        if p < 1 or p & (p - 1):
            raise LumosError(f"Cosmos patch_size must be a power of two; got {p}")
        if self.temporal_compression != p:
            raise LumosError(
                f"Cosmos temporal_compression {self.temporal_compression} must equal patch_size "
                f"{p} (only Haar-patch temporal compression is supported, as in DV4x8x8)"
            )
        sc = self.spatial_compression
        downs = round(math.log2(sc / p)) if sc >= p else -1
        if downs < 0 or p * 2**downs != sc or downs > n - 1:
            raise LumosError(
                f"Cosmos spatial_compression {sc} must be patch_size {p} times 2^k with "
                f"k <= {n - 1}"
            )
        if self.channels < 1 or any(m < 1 for m in self.channels_mult) or self.num_res_blocks < 1:
            raise LumosError(f"invalid Cosmos network width in {self}")
        if any(not 0 <= i < n for i in self.attn_levels):
            raise LumosError(f"Cosmos attn_levels {self.attn_levels} must lie in [0, {n})")

    @property
    def num_spatial_downs(self) -> int:
        return round(math.log2(self.spatial_compression // self.patch_size))


# ----------------------------------------------------------------------------- Haar patching


def _butterfly(x: torch.Tensor, dims: tuple[int, ...], scale: float) -> torch.Tensor:
    """For each size-2 dim d: (x0, x1) -> ((x0 + x1) * scale, (x0 - x1) * scale)."""
    for d in dims:
        a, b = x.select(d, 0), x.select(d, 1)
        x = torch.stack((a + b, a - b), dim=d) * scale
    return x


def haar_patch(video: torch.Tensor, patch_size: int, first: bool = True) -> torch.Tensor:
    """RGB [B, C, T, H, W] -> wavelet bands [B, C p^3, T'/p, H/p, W/p].

    With ``first`` (the chunk starts the clip) frame 0 is repeated p times, T' = T + p - 1;
    otherwise T' = T must be a multiple of p. Each level maps every 2x2x2 block (time,
    height, width) to 8 bands, band ``4 t + 2 h + w`` (0 = low, 1 = high per axis; low =
    mean, high = half difference), stacked in front of the channels.
    """
    x = video
    if first:
        x = torch.cat([x[:, :, :1].expand(-1, -1, patch_size - 1, -1, -1), x], dim=2)
    for _ in range(int(math.log2(patch_size))):
        b, c, t, h, w = x.shape
        x = x.reshape(b, c, t // 2, 2, h // 2, 2, w // 2, 2).permute(0, 3, 5, 7, 1, 2, 4, 6)
        x = _butterfly(x, (1, 2, 3), 0.5).reshape(b, 8 * c, t // 2, h // 2, w // 2)
    return x


def haar_unpatch(x: torch.Tensor, patch_size: int, first: bool = True) -> torch.Tensor:
    """Inverse of :func:`haar_patch`: [B, C p^3, t, h, w] -> RGB [B, C, p t - (p-1 if first), p h, p w]."""
    for _ in range(int(math.log2(patch_size))):
        b, c8, t, h, w = x.shape
        x = _butterfly(x.reshape(b, 2, 2, 2, c8 // 8, t, h, w), (1, 2, 3), 1.0)
        x = x.permute(0, 4, 5, 1, 6, 2, 7, 3).reshape(b, c8 // 8, 2 * t, 2 * h, 2 * w)
    return x[:, :, patch_size - 1 :] if first else x


# ----------------------------------------------------------------------------- layers


class CausalConv3d(nn.Module):
    """Conv over [B, C, T, H, W] with zero spatial padding and causal time padding: the
    ``kt - 1`` frames before the clip are copies of its first frame; between chunks they are
    the previous chunk's last frames (kept in ``cache``)."""

    def __init__(
        self, cin: int, cout: int, kernel: tuple[int, int, int], stride: int = 1, padding: int = 0
    ) -> None:
        super().__init__()
        self.conv3d = nn.Conv3d(cin, cout, kernel, stride=(1, stride, stride))
        self.time_pad = kernel[0] - 1
        self.padding = padding

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        if self.time_pad:
            past = cache.get(self) if cache is not None else None
            if past is None:
                past = x[:, :, :1].expand(-1, -1, self.time_pad, -1, -1)
            x = torch.cat([past, x], dim=2)
            if cache is not None:
                cache[self] = x[:, :, -self.time_pad :].clone()
        if self.padding:
            p = self.padding
            x = F.pad(x, (p, p, p, p))
        return self.conv3d(x)


def _factorized(cin: int, cout: int) -> nn.ModuleList:
    """A 1x3x3 spatial convolution followed by a 3x1x1 causal temporal one."""
    return nn.ModuleList(
        [CausalConv3d(cin, cout, (1, 3, 3), padding=1), CausalConv3d(cout, cout, (3, 1, 1))]
    )


def _run(convs: nn.ModuleList, x: torch.Tensor, cache: Cache | None) -> torch.Tensor:
    for conv in convs:
        x = conv(x, cache)
    return x


class FrameNorm(nn.Module):
    """GroupNorm with one group over (C, H, W) of each frame separately (causal)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(1, channels, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = self.norm(x.transpose(1, 2).reshape(b * t, c, h, w))
        return y.reshape(b, t, c, h, w).transpose(1, 2)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.norm1 = FrameNorm(cin)
        self.conv1 = _factorized(cin, cout)
        self.norm2 = FrameNorm(cout)
        self.conv2 = _factorized(cout, cout)
        self.nin_shortcut = CausalConv3d(cin, cout, (1, 1, 1)) if cin != cout else None

    def forward(self, x: torch.Tensor, cache: Cache | None) -> torch.Tensor:
        h = _run(self.conv1, F.silu(self.norm1(x)), cache)
        h = _run(self.conv2, F.silu(self.norm2(h)), cache)
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class _Attention(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = FrameNorm(channels)
        self.q = CausalConv3d(channels, channels, (1, 1, 1))
        self.k = CausalConv3d(channels, channels, (1, 1, 1))
        self.v = CausalConv3d(channels, channels, (1, 1, 1))
        self.proj_out = CausalConv3d(channels, channels, (1, 1, 1))

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.norm(x)
        return self.q(h), self.k(h), self.v(h)


class SpatialAttention(_Attention):
    """Self-attention among the H x W positions of each frame."""

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        b, c, t, h, w = x.shape
        q, k, v = (y.permute(0, 2, 3, 4, 1).reshape(b * t, 1, h * w, c) for y in self.qkv(x))
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.reshape(b, t, h, w, c).permute(0, 4, 1, 2, 3)
        return x + self.proj_out(out)


class TemporalAttention(_Attention):
    """Causal self-attention along time at each position; keys/values of earlier chunks come
    from ``cache``."""

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        b, c, t, h, w = x.shape
        q, k, v = (y.permute(0, 3, 4, 2, 1).reshape(b * h * w, 1, t, c) for y in self.qkv(x))
        past = cache.get(self) if cache is not None else None
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        if cache is not None:
            cache[self] = (k, v)
        seen = k.shape[2] - t
        mask = torch.ones(t, k.shape[2], dtype=torch.bool, device=x.device).tril(diagonal=seen)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = out.reshape(b, h, w, t, c).permute(0, 4, 3, 1, 2)
        return x + self.proj_out(out)


def _attention_pair(channels: int) -> nn.ModuleList:
    return nn.ModuleList([SpatialAttention(channels), TemporalAttention(channels)])


class Downsample(nn.Module):
    """2x spatial downsampling: strided 3x3 conv plus 2x2 average pool, then a 1x1 conv.
    ``active=False`` levels keep their (released) weights but pass the input through."""

    def __init__(self, channels: int, active: bool) -> None:
        super().__init__()
        self.conv1 = CausalConv3d(channels, channels, (1, 3, 3), stride=2)
        self.conv2 = CausalConv3d(channels, channels, (3, 1, 1))  # temporal: unused in DV4x8x8
        self.conv3 = CausalConv3d(channels, channels, (1, 1, 1))
        self.active = active

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return x
        x = F.pad(x, (0, 1, 0, 1))
        b, c, t, h, w = x.shape
        pooled = F.avg_pool2d(x.transpose(1, 2).reshape(b * t, c, h, w), 2)
        pooled = pooled.reshape(b, t, c, h // 2, w // 2).transpose(1, 2)
        return self.conv3(self.conv1(x) + pooled)


class Upsample(nn.Module):
    """2x nearest spatial upsampling with a residual 3x3 conv, then a 1x1 conv.
    ``active=False`` levels keep their weights but pass the input through."""

    def __init__(self, channels: int, active: bool) -> None:
        super().__init__()
        self.conv1 = CausalConv3d(channels, channels, (3, 1, 1))  # temporal: unused in DV4x8x8
        self.conv2 = CausalConv3d(channels, channels, (1, 3, 3), padding=1)
        self.conv3 = CausalConv3d(channels, channels, (1, 1, 1))
        self.active = active

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return x
        x = x.repeat_interleave(2, dim=3).repeat_interleave(2, dim=4)
        return self.conv3(self.conv2(x) + x)


def _level(blocks: list[ResBlock], attn: bool, channels: int) -> nn.Module:
    level = nn.Module()
    level.block = nn.ModuleList(blocks)
    level.attn = nn.ModuleList([_attention_pair(channels) for _ in blocks] if attn else [])
    return level


def _run_level(level: nn.Module, x: torch.Tensor, cache: Cache | None) -> torch.Tensor:
    for i, block in enumerate(level.block):
        x = block(x, cache)
        if len(level.attn):
            for layer in level.attn[i]:
                x = layer(x, cache)
    return x


class _Middle(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block_1 = ResBlock(channels, channels)
        self.attn_1 = _attention_pair(channels)
        self.block_2 = ResBlock(channels, channels)

    def forward(self, x: torch.Tensor, cache: Cache | None) -> torch.Tensor:
        x = self.block_1(x, cache)
        for layer in self.attn_1:
            x = layer(x, cache)
        return self.block_2(x, cache)


class Encoder(nn.Module):
    """Haar bands [B, 3 p^3, t, H/p, W/p] -> latents [B, z_channels, t, H/sc, W/sc]."""

    def __init__(self, cfg: CosmosConfig) -> None:
        super().__init__()
        widths = [cfg.channels * m for m in cfg.channels_mult]
        self.conv_in = _factorized(cfg.in_channels * cfg.patch_size**3, cfg.channels)
        self.down = nn.ModuleList()
        cin = cfg.channels
        for i, cout in enumerate(widths):
            blocks = [ResBlock(cin if j == 0 else cout, cout) for j in range(cfg.num_res_blocks)]
            level = _level(blocks, i in cfg.attn_levels, cout)
            if i != len(widths) - 1:
                level.downsample = Downsample(cout, active=i < cfg.num_spatial_downs)
            self.down.append(level)
            cin = cout
        self.mid = _Middle(cin)
        self.norm_out = FrameNorm(cin)
        self.conv_out = _factorized(cin, cfg.z_channels)

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        x = _run(self.conv_in, x, cache)
        for level in self.down:
            x = _run_level(level, x, cache)
            if hasattr(level, "downsample"):
                x = level.downsample(x)
        x = self.mid(x, cache)
        return _run(self.conv_out, F.silu(self.norm_out(x)), cache)


class Decoder(nn.Module):
    """Latents [B, z_channels, t, h, w] -> Haar bands [B, 3 p^3, t, h sc/p, w sc/p]."""

    def __init__(self, cfg: CosmosConfig) -> None:
        super().__init__()
        n = len(cfg.channels_mult)
        cin = cfg.channels * cfg.channels_mult[-1]
        self.conv_in = _factorized(cfg.z_channels, cin)
        self.mid = _Middle(cin)
        levels: list[nn.Module] = []
        for i in reversed(range(n)):
            cout = cfg.channels * cfg.channels_mult[i]
            blocks = [
                ResBlock(cin if j == 0 else cout, cout) for j in range(cfg.num_res_blocks + 1)
            ]
            level = _level(blocks, i in cfg.attn_levels, cout)
            if i != 0:
                level.upsample = Upsample(cout, active=n - 1 - i < cfg.num_spatial_downs)
            levels.insert(0, level)
            cin = cout
        self.up = nn.ModuleList(levels)
        self.norm_out = FrameNorm(cin)
        self.conv_out = _factorized(cin, cfg.out_channels * cfg.patch_size**3)

    def forward(self, z: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        x = self.mid(_run(self.conv_in, z, cache), cache)
        for level in reversed(self.up):
            x = _run_level(level, x, cache)
            if hasattr(level, "upsample"):
                x = level.upsample(x)
        return _run(self.conv_out, F.silu(self.norm_out(x)), cache)


# ----------------------------------------------------------------------------- tokenizer


def load_weights(model: nn.Module, state: dict, problem: str, assign: bool = False) -> None:
    """``model.load_state_dict(state)`` with a one-line error starting with ``problem`` that
    names the first wrong shape, or how many weights are missing/unexpected and where."""
    try:
        result = model.load_state_dict(state, strict=False, assign=assign)
    except RuntimeError as err:  # wrong shapes: one "size mismatch for <key>: ..." line each
        lines = [line.strip() for line in str(err).splitlines() if "mismatch" in line]
        raise LumosError(f"{problem}: {lines[0] if lines else str(err).strip()}") from None
    for kind, keys in (("missing", result.missing_keys), ("unexpected", result.unexpected_keys)):
        if keys:
            parts = ", ".join(sorted({k.split(".")[0] for k in keys}))
            raise LumosError(f"{problem}: {len(keys)} {kind} weights in {parts} (e.g. {keys[0]})")


class CosmosVideoTokenizer(VisualTokenizer):
    """Cosmos discrete video tokenizer (``encode``/``decode`` as in :class:`VisualTokenizer`).

    Runs in the dtype and on the device of its weights (``.to(device, dtype)``; inputs are
    moved there, results stay there); FSQ always rounds in float32, outputs are float32. ``chunk_frames`` latent frames are processed at a
    time (None or 0: the whole clip at once); the result does not depend on it.
    """

    def __init__(self, config: CosmosConfig | None = None, chunk_frames: int | None = 2) -> None:
        super().__init__()
        self.config = cfg = config or CosmosConfig()
        self.fsq = FSQ(cfg.levels)
        self.codebook_size = self.fsq.codebook_size
        self.temporal_compression = cfg.temporal_compression
        self.spatial_compression = cfg.spatial_compression
        self.chunk_frames = chunk_frames
        self.encoder = Encoder(cfg)
        self.quant_conv = CausalConv3d(cfg.z_channels, len(cfg.levels), (1, 1, 1))
        self.post_quant_conv = CausalConv3d(len(cfg.levels), cfg.z_channels, (1, 1, 1))
        self.decoder = Decoder(cfg)

    @property
    def dtype(self) -> torch.dtype:
        return self.quant_conv.conv3d.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.quant_conv.conv3d.weight.device

    def _chunks(self, t: int) -> list[tuple[int, int]]:
        """Half-open latent frame ranges covering ``0 .. t``."""
        step = self.chunk_frames or t
        return [(s, min(s + step, t)) for s in range(0, t, step)]

    def _encode(self, video: torch.Tensor) -> torch.Tensor:
        p, tc = self.config.patch_size, self.temporal_compression
        b, _, frames, h, w = video.shape
        t = 1 + (frames - 1) // tc
        sc = self.spatial_compression
        indices = torch.empty(b, t, h // sc, w // sc, dtype=torch.int64, device=self.device)
        cache: Cache = {}
        for s, e in self._chunks(t):
            rgb = video[:, :, max(0, 1 + tc * (s - 1)) : 1 + tc * (e - 1)]
            rgb = rgb.to(self.device, self.dtype)
            z = self.quant_conv(self.encoder(haar_patch(rgb, p, first=s == 0), cache))
            codes = self.fsq(z.float().movedim(1, -1))
            indices[:, s:e] = self.fsq.codes_to_indices(codes)
        return indices

    def _decode(self, indices: torch.Tensor) -> torch.Tensor:
        tc, sc = self.temporal_compression, self.spatial_compression
        b, t, h, w = indices.shape
        indices = indices.to(self.device)
        video = torch.empty(
            b, self.config.out_channels, 1 + tc * (t - 1), sc * h, sc * w, device=self.device
        )
        cache: Cache = {}
        for s, e in self._chunks(t):
            video[:, :, max(0, 1 + tc * (s - 1)) : 1 + tc * (e - 1)] = self._decode_chunk(
                indices[:, s:e], cache, first=s == 0
            )
        return video

    def _decode_chunk(self, indices: torch.Tensor, cache: Cache, first: bool) -> torch.Tensor:
        """RGB of latent frames [B, n, h, w] that follow the frames ``cache`` has seen."""
        codes = self.fsq.indices_to_codes(indices).movedim(-1, 1).to(self.dtype)
        x = self.decoder(self.post_quant_conv(codes), cache)
        return haar_unpatch(x, self.config.patch_size, first=first)

    def stream_decoder(self) -> CachedStreamDecoder:
        """Decodes a clip a few latent frames at a time from the decoder's cached causal state
        (last input frames of each convolution, keys/values of each temporal attention): no
        latent frame is decoded twice."""
        return CachedStreamDecoder(self, self.chunk_frames)

    # ---- files -------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, dtype: torch.dtype | None = None) -> None:
        """Write ``config.json`` and ``model.safetensors`` (weights in ``dtype``, default: as
        they are) into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {"model_type": MODEL_TYPE, **dataclasses.asdict(self.config)}
        (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        state = {
            k: v.detach().to("cpu", dtype or v.dtype).contiguous()
            for k, v in self.state_dict().items()
        }
        save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> CosmosVideoTokenizer:
        """Load a directory written by :meth:`save_pretrained` (or ``lumos convert-cosmos``)
        straight onto ``device`` (default CPU) in ``dtype`` (default float32)."""
        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        for p in (config_path, weights_path):
            if not p.is_file():
                raise LumosError(f"{p} is missing; run lumos convert-cosmos to make this directory")
        try:
            raw = json.loads(config_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise LumosError(f"cannot read {config_path}: {err}") from err
        if not isinstance(raw, dict) or raw.pop("model_type", None) != MODEL_TYPE:
            raise LumosError(f"{config_path} is not a Cosmos tokenizer config ({MODEL_TYPE})")
        known = {f.name for f in dataclasses.fields(CosmosConfig)}
        if set(raw) - known:
            raise LumosError(f"{config_path} has unknown fields {sorted(set(raw) - known)}")
        try:
            config = CosmosConfig(**raw)
        except TypeError as err:
            raise LumosError(f"invalid config in {config_path}: {err}") from err
        device = torch.device(device or "cpu")
        with torch.device("meta"):
            model = cls(config)
        model.fsq = FSQ(config.levels).to(device)  # buffers computed, not loaded
        try:
            state = load_file(str(weights_path), device=str(device))
        except (SafetensorError, OSError) as err:
            raise LumosError(f"cannot read {weights_path}: {err}") from err
        state = {k: v.to(dtype or torch.float32) for k, v in state.items()}
        load_weights(model, state, f"{weights_path} does not match {config_path}", assign=True)
        return model.eval()
