"""Native Cosmos-Tokenizer-DV4x8x8: parity with the official network (narrow fixture traced
from NVIDIA's code), conversion through ``lumos convert-cosmos``, bf16, chunked decoding."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from conftest import OFFICIAL
from lumos.cli.main import main
from lumos.errors import LumosError
from lumos.tokenizers import load_visual_tokenizer
from lumos.tokenizers.cosmos import CosmosTokenizer
from lumos.tokenizers.cosmos_convert import convert_cosmos
from lumos.tokenizers.cosmos_native import (
    CosmosConfig,
    CosmosVideoTokenizer,
    haar_patch,
    haar_unpatch,
)

COSMOS_NARROW = OFFICIAL / "cosmos_dv4x8x8_narrow"


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("cosmos") / "native"
    assert main(["convert-cosmos", str(COSMOS_NARROW), str(out), "--trust-torchscript"]) == 0
    return out


@pytest.fixture
def no_torchscript(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("torch.jit.load called")

    monkeypatch.setattr(torch.jit, "load", refuse)


def case(name):
    return (
        load_file(COSMOS_NARROW / name / "inputs.safetensors"),
        load_file(COSMOS_NARROW / name / "outputs.safetensors"),
    )


@pytest.mark.parametrize("name", ["video", "image"])
def test_converted_matches_official(converted, no_torchscript, name):
    tok = load_visual_tokenizer(converted)
    assert isinstance(tok, CosmosVideoTokenizer)
    assert tok.config.channels == 16  # read from the weights, not from any config file
    inputs, ref = case(name)
    decoded = tok.decode(ref["indices"])
    assert decoded.shape == ref["decoded"].shape
    assert (decoded - ref["decoded"]).abs().max() < 1e-4
    indices = tok.encode(inputs["video"])
    assert indices.shape == ref["indices"].shape and indices.dtype == torch.int64
    assert (indices == ref["indices"]).float().mean() >= 0.99
    assert (tok.decode(indices) - decoded).abs().mean() < 1e-3


@pytest.mark.parametrize("name", ["video", "image"])
def test_bf16_within_tolerance(converted, name):
    """bf16 weights and activations (FSQ rounds in fp32): decoded values within 0.02 (max) and
    2e-3 (mean) of the fp32 reference; encoded codes whose decoding is within 5e-3 (mean) of
    the reference decoding (bf16 moves codes that sit near a rounding boundary)."""
    tok = load_visual_tokenizer(converted, dtype=torch.bfloat16)
    assert tok.dtype == torch.bfloat16
    inputs, ref = case(name)
    err = (tok.decode(ref["indices"]) - ref["decoded"]).abs()
    assert err.max() < 0.02 and err.mean() < 2e-3
    indices = tok.encode(inputs["video"])
    assert (indices == ref["indices"]).float().mean() > 0.7
    fp32 = load_visual_tokenizer(converted)
    assert (fp32.decode(indices) - ref["decoded"]).abs().mean() < 5e-3


def random_tokenizer(channels=8, **kw):
    """A random network with the released structure (norm affines perturbed so that errors in
    the norms show)."""
    model = CosmosVideoTokenizer(CosmosConfig(channels=channels, **kw)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".norm." in name:
                p.copy_(
                    torch.rand_like(p) + 0.5 if name.endswith("weight") else p.uniform_(-0.3, 0.3)
                )
    return model


def test_chunked_equals_whole_clip():
    """Causal chunks give the whole-clip result: exactly in float64, to float rounding in
    float32 (different kernel shapes); batch 2, non-square, attention at a level too."""
    model = random_tokenizer(attn_levels=[2])
    indices = torch.randint(0, 64000, (2, 5, 3, 5))
    video = torch.rand(2, 3, 17, 24, 40) * 2 - 1
    model.chunk_frames = None
    whole_dec, whole_enc = model.decode(indices), model.encode(video)
    assert whole_dec.shape == (2, 3, 17, 24, 40) and whole_enc.shape == (2, 5, 3, 5)
    for chunk in (1, 2, 3):
        model.chunk_frames = chunk
        assert (model.decode(indices) - whole_dec).abs().max() < 2e-5
        assert (model.encode(video) == whole_enc).float().mean() > 0.999
    model = model.double()
    model.chunk_frames = None
    whole_dec, whole_enc = model.decode(indices), model.encode(video.double())
    for chunk in (1, 2):
        model.chunk_frames = chunk
        assert torch.equal(model.decode(indices), whole_dec)
        assert torch.equal(model.encode(video.double()), whole_enc)
    # causal: the first frames of a clip do not depend on later latent frames
    model.chunk_frames = None
    assert torch.equal(model.decode(indices[:, :2]), whole_dec[:, :, :5])
    assert torch.equal(model.encode(video[:, :, :9].double()), whole_enc[:, :3])


def test_haar_round_trip():
    x = torch.randn(2, 3, 9, 16, 24)
    bands = haar_patch(x, 4)
    assert bands.shape == (2, 192, 3, 4, 6)
    # band 0 (low in time, height and width at both levels) is the mean of each 4x4x4 block
    repeated = torch.cat([x[:, :, :1].expand(-1, -1, 3, -1, -1), x], dim=2)
    means = repeated.reshape(2, 3, 3, 4, 4, 4, 6, 4).mean(dim=(3, 5, 7))
    assert torch.allclose(bands[:, :3], means, atol=1e-6)
    assert torch.allclose(haar_unpatch(bands, 4), x, atol=1e-6)
    later = torch.randn(1, 3, 8, 8, 8)
    assert torch.allclose(
        haar_unpatch(haar_patch(later, 4, first=False), 4, first=False), later, atol=1e-6
    )


# ----------------------------------------------------------------------------- any width


class _Quantizer(nn.Module):
    def __init__(self, levels):
        super().__init__()
        self.register_buffer("_levels", torch.tensor(levels, dtype=torch.int32))


class _InvQuant(nn.Module):
    def __init__(self, levels):
        super().__init__()
        self.quantizer = _Quantizer(levels)


class OfficialLayoutEncoder(nn.Module):
    """The state-dict layout and interface of the released encoder.jit, around a network."""

    def __init__(self, model: CosmosVideoTokenizer):
        super().__init__()
        self.encoder, self.quant_conv = model.encoder, model.quant_conv
        self.quantizer = _Quantizer(model.config.levels)
        self.model = [model]  # not a submodule: keeps the state dict in the released layout

    def forward(self, video):
        model = self.model[0]
        z = self.quant_conv(self.encoder(haar_patch(video, model.config.patch_size)))
        codes = model.fsq(z.movedim(1, -1))
        return model.fsq.codes_to_indices(codes).to(torch.int32), codes


class OfficialLayoutDecoder(nn.Module):
    def __init__(self, model: CosmosVideoTokenizer):
        super().__init__()
        self.inv_quant = _InvQuant(model.config.levels)
        self.post_quant_conv, self.decoder = model.post_quant_conv, model.decoder
        self.model = [model]

    def forward(self, indices):
        model = self.model[0]
        codes = model.fsq.indices_to_codes(indices).movedim(-1, 1)
        x = self.decoder(self.post_quant_conv(codes))
        return haar_unpatch(x, model.config.patch_size)


@pytest.mark.parametrize("channels, batch, shape", [(8, 2, (9, 24, 40)), (24, 3, (5, 16, 8))])
def test_any_width_through_the_cli(tmp_path, monkeypatch, channels, batch, shape):
    """``lumos convert-cosmos`` reads the width from the weights (no config file at all)."""
    model = random_tokenizer(channels=channels)
    video = torch.rand(batch, 3, *shape) * 2 - 1
    indices = model.encode(video)
    src = tmp_path / "released"
    src.mkdir()
    with torch.no_grad():
        enc = torch.jit.trace(OfficialLayoutEncoder(model), video, check_trace=False)
        dec = torch.jit.trace(OfficialLayoutDecoder(model), indices, check_trace=False)
    enc.save(str(src / "encoder.jit"))
    dec.save(str(src / "decoder.jit"))
    out = tmp_path / "native"
    assert main(["convert-cosmos", str(src), str(out), "--trust-torchscript"]) == 0
    monkeypatch.setattr(torch.jit, "load", None)  # from here on, no TorchScript
    tok = load_visual_tokenizer(out)
    assert tok.config.channels == channels and tok.config.channels_mult == [2, 4, 4]
    assert (tok.encode(video) == indices).float().mean() >= 0.99
    assert (tok.decode(indices) - model.decode(indices)).abs().max() < 1e-5


# ----------------------------------------------------------------------------- loading rules


def test_released_directory_asks_for_conversion(tmp_path):
    with pytest.raises(LumosError, match="lumos convert-cosmos") as err:
        load_visual_tokenizer(COSMOS_NARROW)
    assert "model.safetensors is missing" not in str(err.value)
    assert "\n" not in str(err.value)
    assert isinstance(load_visual_tokenizer(COSMOS_NARROW, allow_torchscript=True), CosmosTokenizer)


def test_converted_directory_never_runs_torchscript(converted, tmp_path, no_torchscript):
    mixed = tmp_path / "mixed"
    shutil.copytree(converted, mixed)
    shutil.copy(COSMOS_NARROW / "encoder.jit", mixed)
    shutil.copy(COSMOS_NARROW / "decoder.jit", mixed)
    tok = load_visual_tokenizer(mixed, allow_torchscript=True)
    assert isinstance(tok, CosmosVideoTokenizer)
    assert tok.decode(torch.zeros(1, 1, 1, 2, dtype=torch.long)).shape == (1, 3, 1, 8, 16)


def test_convert_errors(tmp_path, converted, capsys):
    out = tmp_path / "out"
    assert main(["convert-cosmos", str(COSMOS_NARROW), str(out)]) == 2
    assert "--trust-torchscript" in capsys.readouterr().err and not out.exists()
    assert main(["convert-cosmos", str(COSMOS_NARROW), str(converted), "--trust-torchscript"]) == 2
    assert "already exists" in capsys.readouterr().err
    half = tmp_path / "half"
    half.mkdir()
    shutil.copy(COSMOS_NARROW / "encoder.jit", half)
    with pytest.raises(LumosError, match="lacks decoder.jit"):
        convert_cosmos(half, out, allow_torchscript=True)
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_loading_errors(converted, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(converted, bad)
    config = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps(config | {"channels": 8}))
    with pytest.raises(LumosError, match="size mismatch for encoder.conv_in.0.conv3d.weight"):
        load_visual_tokenizer(bad)
    (bad / "config.json").write_text(json.dumps(config | {"colour": 1}))
    with pytest.raises(LumosError, match=r"unknown fields \['colour'\]"):
        load_visual_tokenizer(bad)
    (bad / "model.safetensors").unlink()
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(LumosError, match="model.safetensors is missing; run lumos convert-cosmos"):
        load_visual_tokenizer(bad)
