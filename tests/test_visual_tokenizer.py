import numpy as np
import pytest
import torch
from torch import nn

from lumos.data.world import ProceduralWorld
from lumos.errors import LumosError
from lumos.tokenizers import load_visual_tokenizer
from lumos.tokenizers.causal_video import (
    CausalVideoTokenizer,
    CausalVideoTokenizerConfig,
    patchify,
    unpatchify,
)
from lumos.tokenizers.cosmos import CosmosTokenizer
from lumos.tokenizers.visual import (
    DEFAULT_VISUAL_TOKENIZER_DIR,
    frames_to_video,
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


# ----------------------------------------------------------------------------- our model


def tiny_config(**kw) -> CausalVideoTokenizerConfig:
    defaults = dict(levels=[5, 4, 3], channels=[16, 32], encoder_blocks=1, decoder_blocks=1)
    return CausalVideoTokenizerConfig(**(defaults | kw))


@pytest.mark.parametrize("b,t,h,w", [(2, 9, 24, 40), (3, 1, 16, 8), (1, 5, 32, 16)])
def test_causal_video_shapes(b, t, h, w):
    torch.manual_seed(0)
    tok = CausalVideoTokenizer(tiny_config()).eval()
    assert (tok.codebook_size, tok.temporal_compression, tok.spatial_compression) == (60, 4, 8)
    video = random_video(b, t, h, w)
    idx = tok.encode(video)
    assert idx.dtype == torch.int64 and idx.shape == (b, 1 + (t - 1) // 4, h // 8, w // 8)
    assert idx.min() >= 0 and idx.max() < 60
    out = tok.decode(idx)
    assert out.shape == video.shape and out.min() >= -1 and out.max() <= 1
    # the training path gives the same reconstruction as decode(encode(x)) (before clamping)
    with torch.no_grad():
        assert torch.allclose(tok(video).clamp(-1, 1), out, atol=1e-5)
    # batch elements are independent
    assert torch.equal(tok.encode(video[-1:]), idx[-1:])


def test_encoder_is_causal():
    torch.manual_seed(0)
    tok = CausalVideoTokenizer(tiny_config()).eval()
    video = random_video(2, 13, 16, 24)
    with torch.no_grad():
        base = tok.quantize(video)
        for k in range(1, 13):  # RGB frame k lies in latent frame ceil(k / 4)
            changed = video.clone()
            changed[:, :, k] = torch.rand_like(changed[:, :, k]) * 2 - 1
            codes = tok.quantize(changed)
            first = -(-k // 4)
            assert torch.equal(codes[:, :, :first], base[:, :, :first]), k
            z0 = tok.encoder(patchify(video, 4, 4))
            z1 = tok.encoder(patchify(changed, 4, 4))
            assert not torch.allclose(z1[:, :, first], z0[:, :, first]), k


def test_first_frame_is_encoded_alone():
    torch.manual_seed(0)
    tok = CausalVideoTokenizer(tiny_config()).eval()
    video = random_video(2, 9, 16, 16)
    assert torch.equal(tok.encode(video)[:, :1], tok.encode(video[:, :, :1]))


def test_decoder_is_causal():
    torch.manual_seed(0)
    tok = CausalVideoTokenizer(tiny_config()).eval()
    idx = torch.randint(0, 60, (2, 4, 3, 2))
    base = tok.decode(idx)
    for j in range(1, 4):
        changed = idx.clone()
        changed[:, j] = (changed[:, j] + 1 + torch.randint(0, 58, changed[:, j].shape)) % 60
        out = tok.decode(changed)
        keep = 1 + 4 * (j - 1)  # RGB frames of latent frames < j
        assert torch.equal(out[:, :, :keep], base[:, :, :keep]), j
        assert not torch.allclose(out[:, :, keep:], base[:, :, keep:]), j


def test_image_only_tokenizer():
    tok = CausalVideoTokenizer(tiny_config(temporal_compression=1)).eval()
    video = random_video(2, 3, 16, 8)
    idx = tok.encode(video)
    assert idx.shape == (2, 3, 2, 1)
    assert tok.decode(idx).shape == video.shape


def test_patchify_round_trip():
    video = random_video(2, 9, 16, 24)
    x = patchify(video, 4, 4)
    assert x.shape == (2, 3 * 4 * 16, 3, 4, 6)
    assert torch.equal(unpatchify(x, 4, 4), video)


def test_save_and_load_pretrained(tmp_path):
    torch.manual_seed(0)
    tok = CausalVideoTokenizer(tiny_config()).eval()
    tok.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_visual_tokenizer(tmp_path)
    assert isinstance(loaded, CausalVideoTokenizer) and loaded.config == tok.config
    video = random_video(2, 5, 16, 24)
    assert torch.equal(loaded.encode(video), tok.encode(video))
    # corrupt or mismatched files are user errors
    (tmp_path / "model.safetensors").write_bytes(b"junk")
    with pytest.raises(LumosError, match="cannot read"):
        load_visual_tokenizer(tmp_path)
    CausalVideoTokenizer(tiny_config(channels=[8, 16], norm_groups=4)).save_pretrained(
        tmp_path / "other"
    )
    (tmp_path / "model.safetensors").write_bytes(
        (tmp_path / "other" / "model.safetensors").read_bytes()
    )
    with pytest.raises(LumosError, match="does not match"):
        load_visual_tokenizer(tmp_path)
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(LumosError, match="cannot read"):
        load_visual_tokenizer(tmp_path)


def test_inconsistent_config_is_user_error():
    with pytest.raises(LumosError, match="spatial_compression"):
        CausalVideoTokenizerConfig(channels=[16, 32, 64], patch_size=4)


def test_shipped_default_tokenizer():
    tok = load_visual_tokenizer(DEFAULT_VISUAL_TOKENIZER_DIR)
    assert isinstance(tok, CausalVideoTokenizer)
    assert (tok.codebook_size, tok.temporal_compression, tok.spatial_compression) == (4375, 4, 8)
    world = ProceduralWorld("heldout", 64, 48, 9, seed=int(torch.randint(0, 1000, ())))
    frames = np.stack([world[i].frames for i in range(2)])
    video = frames_to_video(frames)
    idx = tok.encode(video)
    assert idx.shape == (2, 3, 8, 6)
    recon = tok.decode(idx)
    mse = ((recon - video) / 2).pow(2).flatten(1).mean(1)
    assert (10 * torch.log10(1 / mse) > 18).all()  # untrained: ~10 dB; held-out mean: 29 dB
