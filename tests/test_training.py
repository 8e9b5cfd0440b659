import dataclasses
import functools
import json
import os
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

from lumos.data import shards as fmt
from lumos.data.kinds import step_kind
from lumos.errors import LumosError
from lumos.model.transformer import LumosModel
from lumos.sequence.layout import parse_sequence
from lumos.sequence.vocab import Vocabulary
from lumos.training.checkpointing import latest_checkpoint, list_checkpoints
from lumos.training.config import PRESETS, TrainConfig, load_config
from lumos.training.llm_init import init_from_llm
from lumos.training.sources import MixedSource, SyntheticSource, global_micro_batch
from lumos.training.train import Trainer, lr_factor, tiny_vocabulary

# A run small enough for a few seconds on a loaded CPU: 3 latent frames of 2 x 4 tokens.
TINY = [
    "model.overrides={hidden_size: 64, intermediate_size: 128, num_attention_heads: 2, num_key_value_heads: 1}",
    "data.image_size=[64, 32]",
    "data.video_size=[32, 64]",
    "micro_batch_size=2",
    "grad_accumulation=2",
    "optim.warmup_steps=2",
    "validate_every=0",
    "tensorboard=false",
    "threads=1",
]


def tiny_config(tmp_path, *extra) -> TrainConfig:
    return load_config(preset="tiny-cpu-joint", overrides=[*TINY, f"output_dir={tmp_path}", *extra])


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_presets_and_overrides(tmp_path):
    for name in PRESETS:
        cfg = load_config(preset=name)
        assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    cfg = load_config(preset="lumos-3b-stage2-joint-384p")
    assert cfg.model.geometry == "3b" and cfg.data.image_size == (384, 672)
    assert cfg.parallel == "fsdp" and cfg.model.gradient_checkpointing
    assert cfg.masking.type == "tube" and cfg.masking.min_rate == 0.7
    assert cfg.optim.betas == (0.9, 0.95) and cfg.optim.grad_clip == 4.0
    file = tmp_path / "c.yaml"
    file.write_text("optim:\n  lr: 3.0e-4\nmasking:\n  type: random\nsteps: 7\n")
    cfg = load_config(str(file), "tiny-cpu-t2i", ["data.image_size=[64, 96]", "optim.lr=5e-4"])
    assert cfg.optim.lr == 5e-4 and cfg.masking.type == "random" and cfg.steps == 7
    assert cfg.data.image_size == (64, 96) and cfg.optim.schedule == "cosine"  # from the preset
    for bad in (
        ["optim.nope=1"],
        ["steps=abc"],
        ["masking.type=zigzag"],
        ["data.image_size=[30, 32]"],
        ["novalue"],
    ):
        with pytest.raises(LumosError):
            load_config(preset="tiny-cpu-t2i", overrides=bad)
    with pytest.raises(LumosError):
        load_config(preset="no-such-preset")
    examples = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
    assert examples
    for example in examples:  # every value an example file sets is the value the config holds
        written, loaded = yaml.safe_load(example.read_text()), load_config(str(example)).to_dict()
        for key, value in leaves(written):
            held = functools.reduce(lambda d, k: d[k], key.split("."), loaded)
            assert held == (tuple(value) if isinstance(held, tuple) else value), (example, key)


def leaves(data: dict, prefix: str = ""):
    """``(dotted key, value)`` of every non-mapping value of a nested config mapping (a model's
    ``overrides`` mapping is one value)."""
    for key, value in data.items():
        if isinstance(value, dict) and key != "overrides":
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def test_lr_schedule_and_step_kinds():
    cfg = load_config(preset="tiny-cpu-t2i", overrides=["steps=100", "optim.warmup_steps=10"])
    assert lr_factor(0, cfg) == pytest.approx(0.1) and lr_factor(9, cfg) == 1.0
    assert lr_factor(10, cfg) == 1.0 and lr_factor(100, cfg) == pytest.approx(0.1)
    assert lr_factor(55, cfg) == pytest.approx(0.1 + 0.9 * 0.5)
    cfg.optim.schedule = "constant"
    assert lr_factor(99, cfg) == 1.0
    assert [step_kind(s, 0.5) for s in range(4)] == ["video", "image", "video", "image"]
    assert {step_kind(s, 1.0) for s in range(5)} == {"image"}
    assert {step_kind(s, 0.0) for s in range(5)} == {"video"}
    assert sum(step_kind(s, 0.25) == "image" for s in range(100)) == 25


def test_synthetic_source_contract():
    vocab = tiny_vocabulary()
    # W processes x A accumulation steps see the micro-batches of one process with W*A.
    one = [global_micro_batch(c, 0, 1, 4) for c in range(8)]
    two = sorted(global_micro_batch(c, r, 2, 2) for r in range(2) for c in range(4))
    assert one == two == list(range(8))
    src = SyntheticSource(vocab, "video", (16, 40), 3, 4, (6, 9), micro_batch_size=2, seed=3)
    first = [next(src) for _ in range(3)]
    parsed = parse_sequence(vocab, first[0][0])
    assert len(parsed.frames) == 3 and parsed.frames[0].shape == (2, 5)
    # Motion: frame 1 is frame 0 shifted by -1, 0 or +1 columns.
    f0, f1 = parsed.frames[0], parsed.frames[1]
    assert any(torch.equal(f0.roll(d, 1)[:, 1:-1], f1[:, 1:-1]) for d in (-1, 0, 1))
    state = src.state_dict()
    more = next(src)
    src.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(next(src), more, strict=True))
    again = SyntheticSource(vocab, "video", (16, 40), 3, 4, (6, 9), micro_batch_size=2, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(next(again), first[0], strict=True))
    image = next(SyntheticSource(vocab, "image", (32, 24), 3, 4, (6, 9), 1))[0]
    assert len(parse_sequence(vocab, image).frames) == 1
    # Mixed: accumulation 2, image ratio 0.5 -> video, video, image, image, ...
    mixed = MixedSource(
        {k: SyntheticSource(vocab, k, (32, 32), 2, 4, (6, 9), 1) for k in ("image", "video")},
        0.5,
        2,
    )
    frames = [len(parse_sequence(vocab, next(mixed)[0]).frames) for _ in range(6)]
    assert frames == [2, 2, 1, 1, 2, 2]
    state = mixed.state_dict()
    after = next(mixed)
    mixed.load_state_dict(state)
    assert torch.equal(next(mixed)[0], after[0])


def test_training_reduces_loss_and_writes_outputs(tmp_path):
    cfg = tiny_config(
        tmp_path,
        "steps=12",
        "checkpoint_every=4",
        "keep_checkpoints=2",
        "validate_every=6",
        "tensorboard=true",
        "optim.lr=3e-3",
    )
    trainer = Trainer(cfg, resume=False)
    rows = trainer.fit()
    # No reference cycles: dropping the trainer frees it at once (lumos train relies on this to
    # free the model before it destroys the process group).
    freed = weakref.ref(trainer)
    del trainer
    assert freed() is None
    assert [r["kind"] for r in rows[:4]] == ["video", "image", "video", "image"]
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.3
    video = [r for r in rows if r["kind"] == "video"]
    assert len(video[0]["frame_loss"]) == 3 and all(v is not None for v in video[0]["frame_loss"])
    assert all(r["grad_norm"] > 0 and r["tokens"] > 0 for r in rows)
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == [
        "step-00000008",
        "step-00000012",
    ]
    metrics = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    val = [m for m in metrics if "val/video/loss" in m]
    assert [m["step"] for m in val] == [6, 12] and len(val[0]["val/video/frame_loss"]) == 3
    assert any((tmp_path / "tensorboard").iterdir())
    model = LumosModel.from_pretrained(tmp_path / "model")
    assert model.config.hidden_size == 64 and model.vocab == tiny_vocabulary()


def test_masking_types_train(tmp_path):
    for kind in ("random", "diffusion_forcing"):
        cfg = tiny_config(tmp_path / kind, "steps=2", f"masking.type={kind}", "attention=dense")
        rows = Trainer(cfg, resume=False).fit()
        assert all(r["loss"] > 0 for r in rows)


def _run_cli(args: list[str], **kwargs) -> subprocess.Popen:
    code = (
        "import argparse, sys; from lumos.cli import train; "
        "p = argparse.ArgumentParser(); train.register(p.add_subparsers()); "
        "a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", code, "train", *args], env=env, **kwargs)


def _metrics(path: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_sigkill_and_resume_is_exact(tmp_path):
    args = ["--preset", "tiny-cpu-joint", *(a for s in TINY for a in ("--set", s))]
    args += ["--steps", "10", "--set", "checkpoint_every=3", "--set", "keep_checkpoints=5"]
    ref = load_config(
        preset="tiny-cpu-joint", overrides=[*TINY, f"output_dir={tmp_path / 'ref'}", "steps=10"]
    )
    expected = {r["step"]: r["loss"] for r in Trainer(ref, resume=False).fit()}

    out = tmp_path / "killed"
    proc = _run_cli([*args, "--output", str(out)], stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    # Kill soon after the first checkpoint: 7 steps of margin before training would end.
    while not (out / "checkpoints" / "step-00000003").exists():
        assert proc.poll() is None and time.time() < deadline, "training ended before the kill"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "model").exists()  # really interrupted
    last = latest_checkpoint(out / "checkpoints")
    assert 3 <= max(_metrics(out)) < 10
    resumed = _run_cli([*args, "--output", str(out)], stderr=subprocess.PIPE, text=True)
    _, err = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, err
    assert "resumed from" in err and last.name in err
    got = _metrics(out)
    assert sorted(got) == list(range(1, 11))
    assert got == expected  # bit-identical losses


def test_finetune_from_checkpoint(tmp_path):
    cfg = tiny_config(tmp_path / "a", "steps=2")
    Trainer(cfg, resume=False).fit()
    saved = LumosModel.from_pretrained(tmp_path / "a" / "model")
    cfg = tiny_config(tmp_path / "b", "steps=1", f"model.init_from={tmp_path / 'a' / 'model'}")
    trainer = Trainer(cfg, resume=False)
    for (name, p), q in zip(
        trainer.module.model.named_parameters(), saved.parameters(), strict=True
    ):
        assert torch.equal(p, q), name
    trainer.fit()


def test_init_from_llm(tmp_path):
    vocab = tiny_vocabulary()
    n_text, d, layers = 200, 64, 2
    llm = {
        "model_type": "llama",
        "vocab_size": n_text,
        "hidden_size": d,
        "intermediate_size": 96,
        "num_hidden_layers": layers,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "rope_theta": 500000.0,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
    }
    shapes = {
        "model.embed_tokens.weight": (n_text, d),
        "lm_head.weight": (n_text, d),
        "model.norm.weight": (d,),
    }
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "self_attn.q_proj.weight": (d, d),
            p + "self_attn.k_proj.weight": (32, d),
            p + "self_attn.v_proj.weight": (32, d),
            p + "self_attn.o_proj.weight": (d, d),
            p + "mlp.gate_proj.weight": (96, d),
            p + "mlp.up_proj.weight": (96, d),
            p + "mlp.down_proj.weight": (d, 96),
            p + "input_layernorm.weight": (d,),
            p + "post_attention_layernorm.weight": (d,),
        }
    state = {k: torch.randn(s) * 0.5 + 0.1 for k, s in shapes.items()}
    (tmp_path / "config.json").write_text(json.dumps(llm))
    save_file(state, tmp_path / "model.safetensors")

    model = init_from_llm(tmp_path, vocab)
    assert model.config.vocab_size == vocab.size and model.config.rope_theta == 500000.0
    ours = model.state_dict()
    for k, v in state.items():
        if k in ("model.embed_tokens.weight", "lm_head.weight"):
            assert torch.equal(ours[k][:n_text], v)
            new = ours[k][n_text:]
            assert new.shape == (vocab.size - n_text, d)
            torch.testing.assert_close(new.mean(0), v.mean(0), atol=0.25, rtol=0)
            torch.testing.assert_close(new.std(0).mean(), v.std(0).mean(), atol=0.1, rtol=0)
        else:
            assert torch.equal(ours[k], v), k
    assert torch.equal(ours["model.layers.0.self_attn.q_norm.weight"], torch.ones(1, 32))
    # Training starts from it through the config.
    cfg = tiny_config(
        tmp_path / "run", "steps=1", f"model.init_from_llm={tmp_path}", "model.overrides={}"
    )
    Trainer(cfg, resume=False).fit()
    (tmp_path / "config.json").write_text(json.dumps({**llm, "vocab_size": 300}))
    with pytest.raises(LumosError, match="visual ids start"):
        init_from_llm(tmp_path, vocab)


def write_shards(root: Path, vocab: Vocabulary, sizes: list[int], seed: int) -> None:
    """Token shards of random images (4 x 8 latent) and 2-frame videos (4 x 4 latent)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    infos, index = [], 0
    for j, size in enumerate(sizes):
        rows = []
        for _ in range(size):
            image = index % 3 == 0
            t, h, w = (1, 4, 8) if image else (2, 4, 4)
            rows.append(
                fmt.TokenizedSample(
                    key=f"s{index}",
                    index=index,
                    kind="image" if image else "video",
                    codes=rng.integers(0, vocab.codebook_size, (t, h, w)).astype(np.int32),
                    text_ids=rng.integers(300, 5000, int(rng.integers(3, 20))).astype(np.int32),
                    width=8 * w,
                    height=8 * h,
                    fps=1 if image else 4,
                    duration=1 if image else 2,
                    caption="a caption",
                    source="test",
                )
            )
            index += 1
        name = fmt.shard_name(j, len(sizes))
        fmt.write_shard(root / name, rows, {"fingerprint": "t"})
        images = sum(r.kind == "image" for r in rows)
        infos.append({"file": name, "samples": size, "images": images, "videos": size - images})
    index_data = {
        "format": fmt.FORMAT,
        "version": fmt.VERSION,
        "fingerprint": f"t{seed}",
        "shards": infos,
        "vocab": vocab.to_dict(),
        "visual_tokenizer": {"spatial_compression": 8},
    }
    (root / fmt.INDEX_NAME).write_text(json.dumps(index_data))


def shard_run(tmp_path, vocab) -> list[str]:
    """Training and validation token shards under ``tmp_path``; the overrides that use them."""
    write_shards(tmp_path / "train", vocab, [20, 16], seed=0)
    write_shards(tmp_path / "val", vocab, [12], seed=1)
    return [
        "data.source=shards",
        f"data.shards=[{tmp_path / 'train'}]",
        f"data.validation_shards=[{tmp_path / 'val'}]",
        "data.validation_batches=2",
        "model.vocabulary=data",
    ]


def test_history_noise_changes_training_not_validation(tmp_path):
    """``masking.history_noise`` corrupts the history of training videos only: validation sees
    a clean history, so its losses are those of the same model without the noise."""
    vocab = dataclasses.replace(Vocabulary.official(), codebook_size=256)
    args = [*shard_run(tmp_path, vocab), "steps=1"]
    runs = {}
    for noise in (0.0, 0.5):
        cfg = tiny_config(tmp_path / str(noise), *args, f"masking.history_noise={noise}")
        trainer = Trainer(cfg, resume=False)
        runs[noise] = trainer.validate(), trainer.fit()[0]
    (val_clean, first_clean), (val_noisy, first_noisy) = runs[0.0], runs[0.5]
    assert val_clean == val_noisy and val_clean["val/video/loss"] > 0
    assert first_clean["kind"] == first_noisy["kind"] == "video"
    assert first_clean["loss"] != first_noisy["loss"]


def test_training_on_token_shards_resumes_exactly(tmp_path):
    vocab = dataclasses.replace(Vocabulary.official(), codebook_size=256)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab.to_dict()))
    args = [*shard_run(tmp_path, vocab), "validate_every=2"]
    ref = Trainer(tiny_config(tmp_path / "ref", *args, "steps=4"), resume=False).fit()
    assert {r["kind"] for r in ref} == {"image", "video"}
    Trainer(
        tiny_config(tmp_path / "run", *args, "steps=2", "checkpoint_every=2"), resume=False
    ).fit()
    rest = Trainer(tiny_config(tmp_path / "run", *args, "steps=4")).fit()
    assert [r["loss"] for r in rest] == [r["loss"] for r in ref[2:]]
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "val/video/loss" in m] == [2, 4]
    # The vocabulary as a JSON file; a mismatch between data and model is a user error.
    json_vocab = [*args[:4], f"model.vocabulary={tmp_path / 'vocab.json'}", "steps=1"]
    Trainer(tiny_config(tmp_path / "json", *json_vocab), resume=False).fit()
    with pytest.raises(LumosError, match="another vocabulary"):
        Trainer(tiny_config(tmp_path / "bad", *args[:4], "steps=1"), resume=False)
