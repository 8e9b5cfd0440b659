"""``lumos convert-official`` end to end on stand-ins of every released file, and its
one-line errors (docs/design.md,
"Vocabulary", "Generation" and "Tokenizers")."""

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lumos.cli.main import main
from lumos.data.buckets import PRESET_MAX_GRIDS, resolution_buckets
from lumos.data.video_io import read_video
from lumos.errors import LumosError
from lumos.generation.pipeline import LumosPipeline
from lumos.tokenizers.cosmos_native import CosmosVideoTokenizer
from official_stand_ins import (
    COSMOS_NARROW,
    write_chameleon_tokenizer,
    write_lumos_text_tokenizer,
    write_official_checkpoint,
)


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """The released files' stand-ins: sharded official checkpoint with the full 129,536-id
    vocabulary, Lumos-1 text_tokenizer.json with both quirks, the narrow Cosmos directory."""
    root = tmp_path_factory.mktemp("released")
    return {
        "checkpoint": write_official_checkpoint(root / "lumos-1", shards=2),
        "text": write_lumos_text_tokenizer(root / "text_tokenizer.json", quirks=True),
        "cosmos": COSMOS_NARROW,
    }


def convert_args(released, out, **override):
    paths = {**released, **override}
    return [
        "convert-official",
        "--checkpoint",
        str(paths["checkpoint"]),
        "--text-tokenizer",
        str(paths["text"]),
        "--cosmos",
        str(paths["cosmos"]),
        "--out",
        str(out),
        "--trust-torchscript",
    ]


@pytest.fixture(scope="module")
def pipeline_dir(released, tmp_path_factory):
    out = tmp_path_factory.mktemp("converted") / "lumos-1-pipeline"
    assert main(convert_args(released, out)) == 0
    return out


def test_layout_and_official_defaults(pipeline_dir):
    names = sorted(p.relative_to(pipeline_dir).as_posix() for p in pipeline_dir.rglob("*"))
    assert names == [
        "pipeline.json",
        "text_tokenizer",
        "text_tokenizer/tokenizer.json",
        "transformer",
        "transformer/config.json",
        "transformer/model-00001-of-00002.safetensors",
        "transformer/model-00002-of-00002.safetensors",
        "transformer/model.safetensors.index.json",
        "visual_tokenizer",
        "visual_tokenizer/config.json",
        "visual_tokenizer/model.safetensors",
    ]
    defaults = json.loads((pipeline_dir / "pipeline.json").read_text())
    assert defaults["num_inference_steps"] == 50
    assert (defaults["guidance_scale"], defaults["image_guidance_scale"]) == (15.0, 16.0)
    assert defaults["history_mask_ratio"] == 0.7
    assert (defaults["fps"], defaults["duration"], defaults["num_frames"]) == (12, 2, 25)
    assert (defaults["width"], defaults["height"]) == (448, 256)
    buckets = [tuple(b) for b in defaults["resolution_buckets"]]
    assert buckets == resolution_buckets(PRESET_MAX_GRIDS["256p"]) and (448, 256) in buckets


def test_generate_from_converted_pipeline(pipeline_dir, tmp_path, monkeypatch):
    """`lumos generate --checkpoint PIPELINE_DIR`: 25 frames at 256p (448x256) scaled down by
    8 (56x32); no TorchScript is loaded."""

    def refuse(*args, **kwargs):
        raise AssertionError("torch.jit.load called while generating")

    monkeypatch.setattr(torch.jit, "load", refuse)
    out = tmp_path / "video.mp4"
    args = ["generate", "a red ball rolls to the left", "--checkpoint", str(pipeline_dir)]
    args += ["--height", "32", "--width", "56", "--steps", "2", "--out", str(out)]
    assert main(args) == 0
    frames, fps = read_video(out)
    assert frames.shape == (25, 32, 56, 3) and fps == 12


def test_bf16_generation_on_cpu(pipeline_dir):
    pipe = LumosPipeline.from_pretrained(pipeline_dir)
    assert isinstance(pipe.visual_tokenizer, CosmosVideoTokenizer)
    pipe.model.to(torch.bfloat16)
    pipe.visual_tokenizer.to(torch.bfloat16)
    gen = torch.Generator().manual_seed(0)
    out = pipe(
        "a blue cube", num_frames=5, height=32, width=56, num_inference_steps=2, generator=gen
    )
    assert out.frames.shape == (1, 5, 32, 56, 3) and out.frames.dtype.name == "uint8"
    assert out.codes.shape == (1, 2, 4, 7)
    assert int(out.codes.min()) >= 0 and int(out.codes.max()) < 64000


def test_bf16_conversion_from_chameleon_tokenizer(released, tmp_path):
    """--dtype bf16 re-casts the weights; a plain Chameleon tokenizer.json gets the video
    tokens; a single-file checkpoint stays a single file (--skip-check: no probe run)."""
    single = write_official_checkpoint(tmp_path / "single")
    chameleon = write_chameleon_tokenizer(tmp_path / "tokenizer.json")
    out = tmp_path / "pipe"
    args = convert_args(released, out, checkpoint=single, text=chameleon)
    args += ["--dtype", "bf16", "--skip-check"]
    assert main(args) == 0
    assert (out / "transformer" / "model.safetensors").is_file()
    with safe_open(out / "visual_tokenizer" / "model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}  # noqa: SIM118
    assert json.loads((out / "transformer" / "config.json").read_text())["torch_dtype"] == (
        "bfloat16"
    )
    pipe = LumosPipeline.from_pretrained(out)
    assert pipe.text_tokenizer.token_to_id("VIDVIDEAHZ") == 65536 + 407


def test_one_line_errors(released, tmp_path, capsys):
    def fails(args, match):
        out = tmp_path / "out"
        assert main(args) == 2
        err = capsys.readouterr().err
        assert match in err and err.count("\n") == 1, err
        assert not out.exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]

    out = tmp_path / "out"
    # visual range of the vocabulary vs the Cosmos codebook and the text tokenizer's codes
    small = write_official_checkpoint(tmp_path / "small-vocab", vocab_size=65536 + 4096)
    chameleon = write_chameleon_tokenizer(tmp_path / "chameleon.json")
    fails(
        convert_args(released, out, checkpoint=small, text=chameleon),
        "vocabulary has 4096 visual ids [65536, 69632) but the Cosmos tokenizer has 64000 codes",
    )
    fails(
        convert_args(released, out, checkpoint=small),
        "video tokens up to code 63999 but the checkpoint's vocabulary has 4096 visual ids",
    )
    # a tokenizer without (all) the video tokens
    partial = write_lumos_text_tokenizer(tmp_path / "partial.json", drop=1)
    fails(convert_args(released, out, text=partial), "63999 video tokens, not 64000")
    # a missing decoder
    no_decoder = tmp_path / "cosmos"
    no_decoder.mkdir()
    for name in ("encoder.jit", "config.json", "model_config.yaml"):
        shutil.copy(COSMOS_NARROW / name, no_decoder)
    fails(convert_args(released, out, cosmos=no_decoder), "lacks decoder.jit")
    # special-token strings not at the expected ids
    data = json.loads(released["text"].read_text())
    data["model"]["vocab"]["<reserved08706>"] = 12
    data["model"]["vocab"]["filler12"] = 8710
    moved = tmp_path / "moved.json"
    moved.write_text(json.dumps(data))
    fails(convert_args(released, out, text=moved), "<reserved08706> has id 12")
    # no opt-in to loading TorchScript
    fails(convert_args(released, out)[:-1], "--trust-torchscript")


def test_pipeline_rejects_tokenizer_without_video_tokens(pipeline_dir, tmp_path):
    """A pipeline directory whose text tokenizer lacks the video tokens fails on loading,
    before any generation."""
    broken = tmp_path / "broken"
    shutil.copytree(pipeline_dir, broken)
    write_chameleon_tokenizer(broken / "text_tokenizer" / "tokenizer.json")
    with pytest.raises(LumosError, match="video token VIDVIDAZ .* is missing"):
        LumosPipeline.from_pretrained(broken)


def test_pipeline_rejects_visual_tokenizer_without_decoder(pipeline_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(pipeline_dir, broken)
    weights = broken / "visual_tokenizer" / "model.safetensors"
    state = {k: v for k, v in load_file(weights).items() if not k.startswith("decoder.")}
    save_file(state, weights)
    with pytest.raises(LumosError, match=r"does not match .*: \d+ missing weights in decoder \("):
        LumosPipeline.from_pretrained(broken)
