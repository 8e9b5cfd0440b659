import dataclasses

import numpy as np
import pytest
import torch

from lumos import LumosConfig, LumosError, Vocabulary
from lumos.cli.main import main
from lumos.generation.pipeline import LumosPipeline, PipelineDefaults, save_frames
from lumos.training.config import TrainConfig


@pytest.fixture(scope="module")
def pipe():
    return LumosPipeline.random_init(seed=0)


def test_text_to_video_image_and_i2v_shapes(pipe):
    out = pipe(
        "a red circle moves left",
        num_frames=9,
        height=64,
        width=48,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
    )
    assert out.frames.shape == (1, 9, 64, 48, 3) and out.frames.dtype == np.uint8
    assert out.codes.shape == (1, 3, 8, 6)
    img = pipe("a red circle", num_frames=1, num_inference_steps=2)
    assert img.frames.shape == (1, 1, 64, 64, 3) and img.fps == 1
    i2v = pipe("a red circle moves up", image=img.frames[0, 0], num_inference_steps=2)
    assert i2v.frames.shape == (1, 9, 64, 64, 3)
    first = pipe.encode_image(img.frames[0, 0], 1, 64, 64)
    assert torch.equal(i2v.codes[:, :1], first)


def test_batch_equals_single_prompts(pipe):
    prompts = ["a red circle moves left", "a small blue star moves down on a grey background"]
    kw = dict(num_frames=5, num_inference_steps=3)
    gens = [torch.Generator().manual_seed(10 + i) for i in range(2)]
    batch = pipe(prompts, generator=gens, **kw)
    for i, p in enumerate(prompts):
        single = pipe(p, generator=torch.Generator().manual_seed(10 + i), **kw)
        assert torch.equal(batch.codes[i], single.codes[0])
        # the decoder's batched convolutions may round a pixel differently
        diff = np.abs(batch.frames[i].astype(int) - single.frames[0].astype(int))
        assert diff.max() <= 1


def test_sampling_options_reach_the_sampler(pipe):
    """No confidence noise and top-1 sampling make decoding deterministic: the seed no longer
    matters (it does with the default sampling)."""
    kw = dict(num_frames=5, height=48, width=64, num_inference_steps=2)

    def codes(seed, **extra):
        return pipe("a red circle", generator=torch.Generator().manual_seed(seed), **kw, **extra)

    greedy = dict(temperature=0.0, top_k=1)
    assert torch.equal(codes(1, **greedy).codes, codes(2, **greedy).codes)
    assert not torch.equal(codes(1).codes, codes(2).codes)
    assert not torch.equal(codes(1, top_k=1).codes, codes(2, top_k=1).codes)


def test_official_temperature_reaches_the_scheduler(pipe, tmp_path, monkeypatch):
    """``official_temperature`` (pipeline argument, ``--official-temperature`` of lumos
    generate) arrives in GenerationConfig and changes the samples."""
    from lumos.generation.generate import GenerationConfig

    seen = []
    scheduler = GenerationConfig.scheduler

    def spy(self):
        seen.append(self.official_temperature)
        return scheduler(self)

    monkeypatch.setattr(GenerationConfig, "scheduler", spy)
    kw = dict(num_frames=9, height=48, width=40, num_inference_steps=3)

    def codes(**extra):
        return pipe("a red circle", generator=torch.Generator().manual_seed(4), **kw, **extra).codes

    official, standard = codes(official_temperature=True), codes()
    assert seen == [True, False]
    assert not torch.equal(official, standard)
    argv = ["generate", "a red circle", "--random-init", "--frames", "5", "--steps", "2"]
    assert main([*argv, "--official-temperature", "--out", str(tmp_path / "a.png")]) == 0
    assert main([*argv, "--out", str(tmp_path / "b.png")]) == 0
    assert seen[2:] == [True, False]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"prompt": " "}, "empty"),
        ({"prompt": "x", "num_frames": 4}, r"1 \+ 4k"),
        ({"prompt": "x", "height": 60}, "multiples of 8"),
        ({"prompt": "x", "image": np.zeros((32, 32, 3), np.uint8)}, "resize"),
        ({"prompt": "x", "num_inference_steps": 0}, "num_steps"),
        ({"prompt": "x", "history_mask_ratio": 1.5}, "history_mask_ratio"),
        ({"prompt": "x", "top_k": 0}, "top_k"),
        ({"prompt": "x", "sample_temperature": 0.0}, "sample_temperature"),
    ],
)
def test_bad_requests(pipe, kwargs, message):
    with pytest.raises(LumosError, match=message):
        pipe(**kwargs)


def test_save_frames_formats(tmp_path):
    frames = np.random.randint(0, 255, (5, 16, 24, 3), np.uint8)
    assert save_frames(frames, tmp_path / "a.png", 4).is_file()
    assert save_frames(frames, tmp_path / "a.gif", 4).is_file()
    with pytest.raises(LumosError, match="format"):
        save_frames(frames, tmp_path / "a.avi", 4)


def test_cli_generate_writes_files_and_rejects_bad_input(tmp_path, capsys):
    out = tmp_path / "v.gif"
    assert (
        main(
            [
                "generate",
                "a red circle moves left",
                "--random-init",
                "--steps",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert out.is_file() and str(out) in capsys.readouterr().out
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n\na blue square moves up\n")
    assert (
        main(
            [
                "generate",
                "--prompts-file",
                str(prompts),
                "--random-init",
                "--steps",
                "1",
                "--t2i",
                "--out",
                str(tmp_path / "batch"),
                "--format",
                "png",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in (tmp_path / "batch").iterdir()) == [
        "000_a_red_circle.png",
        "001_a_blue_square_moves_up.png",
    ]
    capsys.readouterr()
    bad = [
        ["generate", "", "--random-init"],
        ["generate", "x", "--random-init", "--frames", "6", "--out", str(tmp_path / "bad.mp4")],
        ["generate", "x", "--random-init", "--image", str(tmp_path / "missing.png")],
        ["generate", "x", "--checkpoint", str(tmp_path / "nope")],
        ["generate", "x", "--random-init", "--top-k", "0", "--out", str(tmp_path / "bad.mp4")],
    ]
    for argv in bad:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("lumos generate: error:")
    assert not (tmp_path / "bad.mp4").exists()


def test_shipped_default_model_loads_and_generates():
    from lumos.generation.pipeline import DEFAULT_PIPELINE_DIR

    size = sum(f.stat().st_size for f in DEFAULT_PIPELINE_DIR.rglob("*") if f.is_file())
    assert size < 60e6
    shipped = LumosPipeline.from_pretrained()
    assert shipped.label == "" and shipped.model.config.num_hidden_layers == 4
    out = shipped(
        "a red circle moves to the left",
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
    )
    assert out.frames.shape == (1, 9, 64, 64, 3) and out.fps == 4


def test_defaults_fill_only_unset_settings():
    d = PipelineDefaults(num_frames=9, height=64, width=96, guidance_scale=3.0)
    assert d.resolve() == dict(
        num_frames=9,
        height=64,
        width=96,
        num_inference_steps=d.num_inference_steps,
        guidance_scale=3.0,
        history_mask_ratio=d.history_mask_ratio,
        negative_guidance_scale=d.negative_guidance_scale,
    )
    given = d.resolve(num_frames=5, height=32, guidance_scale=0.0, history_mask_ratio=0.0,
                      negative_guidance_scale=0.0)  # fmt: skip
    assert (given["num_frames"], given["height"], given["width"]) == (5, 32, 96)
    assert given["guidance_scale"] == 0.0 and given["history_mask_ratio"] == 0.0  # 0 is a value
    assert given["negative_guidance_scale"] == 0.0
    t2i = dataclasses.replace(d, image_guidance_scale=5.0)
    assert t2i.resolve(num_frames=1)["guidance_scale"] == 5.0
    assert t2i.resolve(num_frames=9)["guidance_scale"] == 3.0
    assert t2i.resolve(num_frames=1, guidance_scale=2.0)["guidance_scale"] == 2.0


def test_every_config_rejects_unknown_keys_and_lists_the_known_ones(tmp_path):
    file = tmp_path / "pipeline.json"
    file.write_text('{"fps": 4, "guidance": 3.0}')
    with pytest.raises(LumosError, match=r"unknown keys \['guidance'\]; known: .*guidance_scale"):
        PipelineDefaults.load(file)
    config = LumosConfig.tiny().to_dict()
    with pytest.raises(LumosError, match=r"unknown keys \['hiden_size'\]; known: .*hidden_size"):
        LumosConfig.from_dict({**config, "hiden_size": 8})
    vocab = {**Vocabulary.official().to_dict(), "codebook": 8}
    with pytest.raises(LumosError, match=r"unknown keys \['codebook'\]; known: .*codebook_size"):
        Vocabulary.from_dict(vocab)
    with pytest.raises(LumosError, match=r"unknown keys \['lr'\]; known: .*optim"):
        TrainConfig.from_dict({"lr": 1e-3})


def test_fps_conditions_the_model_and_the_output():
    """``fps`` is written into the prompt and the video header (duration = whole seconds of the
    clip at that rate, as in the official code) and is the output's frame rate."""
    from lumos.generation.pipeline import DEFAULT_PIPELINE_DIR

    pipe = LumosPipeline.from_pretrained(DEFAULT_PIPELINE_DIR)
    seen = []
    real = pipe.text_tokenizer.encode
    pipe.text_tokenizer.encode = lambda text: seen.append(text) or real(text)
    out = pipe("a red circle moves up", num_frames=25, num_inference_steps=1, fps=12, window=25,
               decode=False, generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert out.fps == 12 and "consisting of 24 frames at 12 frames per second" in seen[-1]
    request = pipe._request("a red circle moves up", 25, None, None, 1, None, None, None,
                            1.0, 1.0, None, False, 12, 25)  # fmt: skip
    assert (request["fps"], request["duration"]) == (12, 2)
    assert pipe._request("x y", 25, None, None, 1, None, None, None, 1.0, 1.0, None, False,
                         4, 25)["duration"] == 6  # fmt: skip
    # longer than the window: conditioned as the window's clip (9 frames at 4 fps: 2 s)
    long = pipe._request("x y", 25, None, None, 1, None, None, None, 1.0, 1.0, None, False)
    assert (long["fps"], long["duration"], long["window"], long["num_frames"]) == (4, 2, 3, 7)
