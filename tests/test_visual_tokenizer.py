import pytest
import torch
from torch import nn

from lumos.errors import LumosError
from lumos.tokenizers.cosmos import CosmosTokenizer
from lumos.tokenizers.visual import (
    frames_to_video,
    load_visual_tokenizer,
    video_to_frames,
)

# ----------------------------------------------------------------------------- Cosmos mock


def pool(x: torch.Tensor) -> torch.Tensor:
    """Mean over blocks of 4 frames x 8 x 8 pixels (avg_pool3d has no bfloat16 CPU kernel)."""
    b, c, t, h, w = x.shape
    return x.reshape(b, c, t // 4, 4, h // 8, 8, w // 8, 8).mean(dim=[3, 5, 7])


class TinyCosmosEncoder(nn.Module):
    """Same interface as Cosmos-Tokenizer-DV4x8x8's encoder.jit: video -> (indices, codes)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv3d(3, 6, 1)
        self.register_buffer("levels", torch.tensor([8, 8, 8, 5, 5, 5]))
        self.register_buffer("basis", torch.tensor([1, 8, 64, 512, 2560, 12800]))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([x[:, :, :1].repeat(1, 1, 3, 1, 1), x], 2)
        z = torch.tanh(self.proj(pool(x))).float()
        half = (self.levels // 2).view(1, 6, 1, 1, 1)
        q = torch.minimum(torch.round(z * half), self.levels.view(1, 6, 1, 1, 1) - 1 - half)
        indices = ((q + half) * self.basis.view(1, 6, 1, 1, 1)).sum(1)
        return indices.to(torch.int32), q / half


class TinyCosmosDecoder(nn.Module):
    """Same interface as decoder.jit: indices [B, t, h, w] -> video [B, 3, 1+4(t-1), 8h, 8w]."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv3d(6, 3, 1)
        self.register_buffer("levels", torch.tensor([8, 8, 8, 5, 5, 5]))
        self.register_buffer("basis", torch.tensor([1, 8, 64, 512, 2560, 12800]))

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        digits = (indices.long().unsqueeze(1) // self.basis.view(1, 6, 1, 1, 1)) % self.levels.view(
            1, 6, 1, 1, 1
        )
        codes = digits.to(self.proj.weight.dtype)
        x = torch.tanh(self.proj(codes))
        x = x.repeat_interleave(4, 2).repeat_interleave(8, 3).repeat_interleave(8, 4)
        return x[:, :, 3:]


@pytest.fixture
def cosmos_dir(tmp_path):
    torch.jit.script(TinyCosmosEncoder()).save(str(tmp_path / "encoder.jit"))
    torch.jit.script(TinyCosmosDecoder()).save(str(tmp_path / "decoder.jit"))
    return tmp_path


def random_video(b=2, t=9, h=24, w=40):
    return torch.rand(b, 3, t, h, w) * 2 - 1


def test_cosmos_requires_opt_in(cosmos_dir):
    with pytest.raises(LumosError, match="--trust-torchscript"):
        load_visual_tokenizer(cosmos_dir)
    with pytest.raises(LumosError, match="allow_torchscript=True"):
        CosmosTokenizer(cosmos_dir)


def test_cosmos_shapes_through_loader(cosmos_dir):
    tok = load_visual_tokenizer(cosmos_dir, allow_torchscript=True)
    assert isinstance(tok, CosmosTokenizer)
    assert (tok.codebook_size, tok.temporal_compression, tok.spatial_compression) == (64000, 4, 8)
    video = random_video(b=3, t=9, h=24, w=40)
    idx = tok.encode(video)
    assert idx.dtype == torch.int64 and idx.shape == (3, 3, 3, 5)
    assert idx.min() >= 0 and idx.max() < 64000
    out = tok.decode(idx)
    assert out.dtype == torch.float32 and out.shape == (3, 3, 9, 24, 40)
    assert out.min() >= -1 and out.max() <= 1
    # image: T = 1 -> one latent frame
    img = tok.encode(random_video(b=2, t=1, h=16, w=8))
    assert img.shape == (2, 1, 2, 1)
    assert tok.decode(img).shape == (2, 3, 1, 16, 8)


def test_cosmos_casts_to_stored_dtype(tmp_path):
    torch.jit.script(TinyCosmosEncoder().to(torch.bfloat16)).save(str(tmp_path / "encoder.jit"))
    torch.jit.script(TinyCosmosDecoder().to(torch.bfloat16)).save(str(tmp_path / "decoder.jit"))
    tok = load_visual_tokenizer(tmp_path, allow_torchscript=True)
    idx = tok.encode(random_video(b=2, t=5, h=16, w=24))
    assert idx.shape == (2, 2, 2, 3)
    assert tok.decode(idx).dtype == torch.float32


def test_cosmos_missing_files(tmp_path):
    torch.jit.script(TinyCosmosEncoder()).save(str(tmp_path / "encoder.jit"))
    with pytest.raises(LumosError, match="decoder.jit is missing"):
        load_visual_tokenizer(tmp_path, allow_torchscript=True)
    (tmp_path / "encoder.jit").unlink()
    with pytest.raises(LumosError, match="not a visual tokenizer directory"):
        load_visual_tokenizer(tmp_path, allow_torchscript=True)
    with pytest.raises(LumosError, match="does not exist"):
        load_visual_tokenizer(tmp_path / "nope", allow_torchscript=True)
    (tmp_path / "encoder.jit").write_bytes(b"not a torchscript archive")
    (tmp_path / "decoder.jit").write_bytes(b"junk")
    with pytest.raises(LumosError, match="cannot load TorchScript"):
        load_visual_tokenizer(tmp_path, allow_torchscript=True)


def test_cosmos_rejects_continuous_encoder(tmp_path):
    class Continuous(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return pool(torch.cat([x[:, :, :1].repeat(1, 1, 3, 1, 1), x], 2))

    torch.jit.script(Continuous()).save(str(tmp_path / "encoder.jit"))
    torch.jit.script(TinyCosmosDecoder()).save(str(tmp_path / "decoder.jit"))
    tok = load_visual_tokenizer(tmp_path, allow_torchscript=True)
    with pytest.raises(LumosError, match="continuous"):
        tok.encode(random_video(b=1, t=1, h=8, w=8))


# ----------------------------------------------------------------------------- validation


def test_encode_validation_messages(cosmos_dir):
    tok = load_visual_tokenizer(cosmos_dir, allow_torchscript=True)
    with pytest.raises(LumosError, match=r"T = 1 \+ 4k \(1, 5, 9"):
        tok.encode(random_video(t=8, h=16, w=16))
    with pytest.raises(LumosError, match="multiples of 8"):
        tok.encode(random_video(t=5, h=20, w=16))
    with pytest.raises(LumosError, match=r"\[-1, 1\]"):
        tok.encode(random_video(t=5, h=16, w=16) * 3)
    with pytest.raises(LumosError, match="float tensor"):
        tok.encode((random_video(t=5, h=16, w=16) > 0).long())
    with pytest.raises(LumosError, match=r"\[B, 3, T, H, W\]"):
        tok.encode(torch.zeros(3, 5, 16, 16))
    with pytest.raises(LumosError, match="integer tensor"):
        tok.decode(torch.zeros(1, 2, 2, 2))
    with pytest.raises(LumosError, match=r"\[0, 64000\)"):
        tok.decode(torch.full((1, 2, 2, 2), 64000))
    with pytest.raises(LumosError, match=r"\[B, t, h, w\]"):
        tok.decode(torch.zeros(2, 2, 2, dtype=torch.long))


def test_latent_and_pixel_shapes(cosmos_dir):
    tok = load_visual_tokenizer(cosmos_dir, allow_torchscript=True)
    assert tok.latent_shape(25, 256, 448) == (7, 32, 56)
    assert tok.pixel_shape(7, 32, 56) == (25, 256, 448)
    assert tok.latent_shape(1, 8, 16) == (1, 1, 2)


def test_frames_video_round_trip():
    frames = torch.randint(0, 256, (2, 5, 16, 24, 3), dtype=torch.uint8).numpy()
    video = frames_to_video(frames)
    assert video.shape == (2, 3, 5, 16, 24) and video.min() >= -1 and video.max() <= 1
    assert (video_to_frames(video) == frames).all()
    with pytest.raises(LumosError, match="uint8"):
        frames_to_video(frames.astype("float32"))
