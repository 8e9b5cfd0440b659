"""LoRA fine-tuning (lumos.training.lora, PEFT): only adapters train and are saved, at the
expected size; a run interrupted and resumed equals an uninterrupted one; DDP and FSDP2 (2
processes, gloo) match one process; generation with the adapter equals generation with the
merged weights (lumos merge-adapter); bad input is a one-line error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from lumos.cli.main import main
from lumos.cli.merge_adapter import stored_dtype
from lumos.errors import LumosError
from lumos.generation.pipeline import LumosPipeline
from lumos.model.config import LumosConfig
from lumos.model.transformer import LumosModel
from lumos.training import lora
from lumos.training.config import LORA_TARGETS, LoraConfig, load_config
from lumos.training.train import Trainer, tiny_vocabulary

# 3 latent frames of 2 x 4 tokens (videos 32 x 64 px, images 64 x 32 px), 2 x 2 clips a step.
TINY = [
    "data.image_size=[64, 32]",
    "data.video_size=[32, 64]",
    "micro_batch_size=2",
    "grad_accumulation=2",
    "optim.warmup_steps=1",
    "optim.lr=1e-2",
    "optim.schedule=constant",
    "validate_every=0",
    "tensorboard=false",
    "threads=1",
]


@pytest.fixture(autouse=True)
def _one_thread():
    """One thread (a tiny model on a shared CPU runs slower with more), restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    """A random tiny base model (GQA, so k/v projections are not square), saved."""
    torch.manual_seed(0)
    vocab = tiny_vocabulary()
    cfg = LumosConfig.tiny(
        vocabulary=vocab,
        vocab_size=vocab.size,
        hidden_size=64,
        intermediate_size=96,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    path = tmp_path_factory.mktemp("base") / "model"
    LumosModel(cfg).save_pretrained(path)
    return path


def config(out: Path, base: Path, *extra: str):
    overrides = [*TINY, f"model.init_from={base}", f"output_dir={out}", *extra]
    return load_config(preset="tiny-cpu-joint", overrides=overrides)


def expected_count(model: nn.Module, rank: int, targets) -> int:
    """rank * (in + out) summed over the targeted Linear layers."""
    return sum(
        rank * (m.in_features + m.out_features)
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and name.rpartition(".")[2] in targets
    )


@pytest.mark.parametrize(
    "bad",
    [
        "lora.rank=-1",
        "lora.rank=1.5",
        "lora.alpha=0",
        "lora.dropout=1",
        "lora.target_modules=[lm_head]",
        "lora.target_modules=[]",
        "lora.target_modules=[q_proj, q_proj]",
        "lora.nope=1",
    ],
)
def test_config_rejects_bad_lora_settings(bad):
    with pytest.raises(LumosError, match="lora"):
        load_config(preset="tiny-cpu-joint", overrides=[bad])


def test_defaults_are_off_and_target_every_projection():
    cfg = load_config(preset="tiny-cpu-joint", overrides=["lora.target_modules=v_proj"])
    assert cfg.lora.rank == 0 and cfg.lora.target_modules == ["v_proj"]
    assert LoraConfig().target_modules == list(LORA_TARGETS)


def test_short_run_trains_and_saves_only_the_adapter(tmp_path, base_dir):
    targets = ["q_proj", "k_proj", "down_proj"]
    cfg = config(tmp_path, base_dir, "steps=3", "lora.rank=3", "lora.alpha=6")
    cfg.lora.target_modules = targets
    trainer = Trainer(cfg, resume=False)
    model = trainer.module.model
    adapters = {n: p for n, p in model.named_parameters() if "lora_" in n}
    first = {n: p.detach().clone() for n, p in adapters.items()}
    assert {id(p) for g in trainer.optimizer.param_groups for p in g["params"]} == {
        id(p) for p in adapters.values()
    }
    trainer.fit()

    base = LumosModel.from_pretrained(base_dir)
    base_state = base.state_dict()
    frozen = {n.replace(".base_layer", ""): p for n, p in model.named_parameters()}
    frozen = {n: p for n, p in frozen.items() if "lora_" not in n}
    assert frozen.keys() == base_state.keys()
    for name, p in frozen.items():  # bit-identical base weights
        assert torch.equal(p, base_state[name]), name
    for name, p in adapters.items():  # every adapter factor moved
        assert not torch.equal(p, first[name]), name

    out = tmp_path / "adapter"
    assert sorted(f.name for f in out.iterdir()) == [lora.ADAPTER_CONFIG, lora.ADAPTER_WEIGHTS]
    assert not (tmp_path / "model").exists()
    saved = load_file(out / lora.ADAPTER_WEIGHTS)
    count = expected_count(base, 3, targets)
    assert len(saved) == 2 * len(targets) * base.config.num_hidden_layers
    assert sum(t.numel() for t in saved.values()) == count == lora.trainable_count(model)
    size = (out / lora.ADAPTER_WEIGHTS).stat().st_size
    assert 4 * count < size < 4 * count + 8192  # float32 factors plus the header
    meta = json.loads((out / lora.ADAPTER_CONFIG).read_text())
    assert (
        meta["r"] == 3
        and meta["lora_alpha"] == 6
        and sorted(meta["target_modules"]) == sorted(targets)
    )
    assert meta["base_model_name_or_path"] == str(base_dir)

    # The saved adapter, applied to the base, is the trained model.
    lora.load_adapter(base, out)
    ids = torch.randint(0, base.vocab.size, (2, 24))
    torch.testing.assert_close(base(ids).logits, model.eval()(ids).logits, rtol=0, atol=1e-6)


def _metrics(out: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_cli_interrupted_run_resumes_exactly(tmp_path, base_dir, capsys):
    """`lumos train --set lora.rank=4` stopped at a checkpoint and resumed gives the adapter
    and losses of an uninterrupted run (dropout on: the RNG state is restored too)."""
    extra = ["lora.rank=4", "lora.dropout=0.1"]
    ref = Trainer(config(tmp_path / "ref", base_dir, "steps=4", *extra), resume=False)
    expected = {r["step"]: r["loss"] for r in ref.fit()}

    out = tmp_path / "run"
    args = ["train", "--preset", "tiny-cpu-joint", "--output", str(out)]
    for s in [*TINY, f"model.init_from={base_dir}", *extra, "checkpoint_every=2"]:
        args += ["--set", s]
    assert main([*args, "--steps", "2"]) == 0
    # the checkpoint holds the adapter (and its optimiser state), not the frozen base
    import torch.distributed.checkpoint as dcp

    saved = dcp.FileSystemReader(out / "checkpoints" / "step-00000002" / "state").read_metadata()
    model_keys = [k for k in saved.state_dict_metadata if k.startswith("model.")]
    assert model_keys and all("lora_" in k for k in model_keys)
    assert main([*args, "--steps", "4"]) == 0
    assert "resumed from" in capsys.readouterr().err
    assert _metrics(out) == expected
    got = load_file(out / "adapter" / lora.ADAPTER_WEIGHTS)
    want = load_file(tmp_path / "ref" / "adapter" / lora.ADAPTER_WEIGHTS)
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k

    assert main([*args, "--steps", "6", "--set", "lora.rank=8"]) == 2  # other adapters
    assert "lora.rank" in capsys.readouterr().err


WORKER = """
import json, sys
from lumos.training.config import load_config
from lumos.training.distributed import shutdown_distributed
from lumos.training.train import Trainer

out, *overrides = sys.argv[1:]
result = {}
for parallel in ("ddp", "fsdp"):
    cfg = load_config(preset="tiny-cpu-joint", overrides=[*overrides, f"parallel={parallel}",
                      f"output_dir={out}/{parallel}"])
    trainer = Trainer(cfg, resume=False)
    result[parallel] = {"rows": trainer.fit(), "parallel": trainer.parallel}
    del trainer
if int(__import__("os").environ["RANK"]) == 0:
    json.dump(result, open(f"{out}/result.json", "w"))
shutdown_distributed()
"""


def test_ddp_and_fsdp_match_one_process(tmp_path, base_dir):
    """2 processes x 2 clips (gloo) against 1 process x 2 clips x 2 accumulation steps."""
    extra = [f"model.init_from={base_dir}", "lora.rank=4", "steps=3"]
    ref = Trainer(config(tmp_path / "one", base_dir, *extra), resume=False).fit()
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    overrides = [s for s in TINY if not s.startswith("grad_accumulation")] + extra
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    proc = subprocess.run(
        [*cmd, str(script), str(tmp_path), *overrides],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    want = load_file(tmp_path / "one" / "adapter" / lora.ADAPTER_WEIGHTS)
    for parallel in ("ddp", "fsdp"):
        assert result[parallel]["parallel"] == parallel
        for a, b in zip(result[parallel]["rows"], ref, strict=True):
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
            assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
        got = load_file(tmp_path / parallel / "adapter" / lora.ADAPTER_WEIGHTS)
        assert got.keys() == want.keys()
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def adapted_pipeline(tmp_path_factory):
    """A random tiny fp32 pipeline and a random adapter (B != 0, so it changes the model)."""
    root = tmp_path_factory.mktemp("pipe")
    pipe = LumosPipeline.random_init(seed=0)
    pipe.save_pretrained(root / "base")
    torch.manual_seed(1)
    adapted = lora.apply_lora(pipe.model, LoraConfig(rank=4, alpha=8))
    with torch.no_grad():
        for name, p in pipe.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    lora.save_adapter(adapted, root / "adapter")
    return root


def test_generation_with_adapter_equals_merged_weights(adapted_pipeline):
    root = adapted_pipeline
    out = root / "merged"
    assert main(["merge-adapter", str(root / "adapter"), "--checkpoint", str(root / "base"),
                 "--out", str(out)]) == 0  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == sorted(
        p.name for p in (root / "base").iterdir()
    )
    assert stored_dtype(out / "transformer") == torch.float32
    pipes = {
        "adapter": LumosPipeline.from_pretrained(root / "base", adapter=root / "adapter"),
        "merged": LumosPipeline.from_pretrained(out),
        "base": LumosPipeline.from_pretrained(root / "base"),
    }
    prompts = ["a red circle moves to the left", "a blue square moves up"]
    ids = torch.randint(0, pipes["base"].model.vocab.size, (2, 48))
    codes, logits = {}, {}
    for name, pipe in pipes.items():
        gens = [torch.Generator().manual_seed(s) for s in (3, 4)]
        # A random model spreads its probability evenly over 4,375 codes, so the ~1e-7 rounding
        # difference between unmerged and merged weights moves a sample across a CDF boundary
        # with probability ~4e-4 per sample (a flip in ~1 of 4 runs of this test); a trained
        # model is peaked. Sampling at temperature 0.3 makes this one peaked too.
        result = pipe(prompts, num_frames=9, height=32, width=64, num_inference_steps=4,
                      generator=gens, decode=False, sample_temperature=0.3)  # fmt: skip
        codes[name], logits[name] = result.codes, pipe.model(ids).logits
    assert torch.equal(codes["adapter"], codes["merged"])
    torch.testing.assert_close(logits["adapter"], logits["merged"], rtol=0, atol=1e-5)
    # The adapter matters: the base model decodes other codes and gives other logits.
    assert (codes["adapter"] != codes["base"]).float().mean() > 0.5
    assert (logits["adapter"] - logits["base"]).abs().max() > 1e-2


def test_merge_adapter_bare_model_dtype_and_errors(adapted_pipeline, base_dir, tmp_path, capsys):
    root = adapted_pipeline
    adapter = root / "adapter"
    half = tmp_path / "half"  # a bare model directory stored as float16
    LumosModel.from_pretrained(root / "base" / "transformer").save_pretrained(
        half, dtype=torch.float16
    )
    assert main(["merge-adapter", str(adapter), "--checkpoint", str(half), "--out",
                 str(tmp_path / "m16")]) == 0  # fmt: skip
    assert (tmp_path / "m16" / "config.json").is_file()
    assert not (tmp_path / "m16" / "pipeline.json").exists()
    assert stored_dtype(tmp_path / "m16") == torch.float16
    merged = LumosModel.from_pretrained(tmp_path / "m16")
    assert not any("lora" in k for k in merged.state_dict())
    assert main(["merge-adapter", str(adapter), "--checkpoint", str(half), "--out",
                 str(tmp_path / "m32"), "--dtype", "fp32"]) == 0  # fmt: skip
    assert stored_dtype(tmp_path / "m32") == torch.float32
    capsys.readouterr()

    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / lora.ADAPTER_CONFIG).write_text((adapter / lora.ADAPTER_CONFIG).read_text())
    other = tmp_path / "other"  # an adapter of another geometry (hidden 64, not 128)
    small = LumosModel.from_pretrained(base_dir)
    lora.save_adapter(lora.apply_lora(small, LoraConfig(rank=2)), other)
    base = ["--checkpoint", str(root / "base")]
    cases = [
        ([str(adapter), *base, "--out", str(full)], "not empty"),
        ([str(adapter), *base, "--out", str(root / "base")], "also an input"),
        ([str(adapter), *base, "--out", str(adapter)], "also an input"),
        ([str(no_weights), *base, "--out", str(tmp_path / "x")], lora.ADAPTER_WEIGHTS),
        ([str(tmp_path / "missing"), *base, "--out", str(tmp_path / "x")], "not a directory"),
        ([str(other), *base, "--out", str(tmp_path / "x")], "another model"),
    ]
    for argv, message in cases:
        assert main(["merge-adapter", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert (full / "keep.txt").read_text() == "mine" and not (tmp_path / "x").exists()


def test_adapter_loading_errors(adapted_pipeline, tmp_path, capsys):
    root = adapted_pipeline
    pipe = LumosPipeline.from_pretrained(root / "base", adapter=root / "adapter")
    with pytest.raises(LumosError, match="merge-adapter"):
        pipe.save_pretrained(tmp_path / "saved")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / lora.ADAPTER_CONFIG).write_text("{not json")
    (bad / lora.ADAPTER_WEIGHTS).write_bytes(b"")
    with pytest.raises(LumosError, match="PEFT config"):
        LumosPipeline.from_pretrained(root / "base", adapter=bad)
    prompt = ["generate", "a red circle", "--out", str(tmp_path / "v.mp4")]
    assert main([*prompt, "--random-init", "--adapter", str(root / "adapter")]) == 2
    assert "--random-init" in capsys.readouterr().err
    checkpoint = ["--checkpoint", str(root / "base"), "--dry-run"]
    assert main([*prompt, *checkpoint, "--adapter", str(bad)]) == 2
    assert "PEFT config" in capsys.readouterr().err
    assert main([*prompt, *checkpoint, "--adapter", str(root / "adapter")]) == 0


def test_eval_with_adapter(adapted_pipeline, tmp_path, capsys):
    """``lumos eval --adapter``: the adapter is applied (outputs differ from the base model's)
    and recorded in the report; with ``--random-init`` it is a one-line error."""
    root = adapted_pipeline
    run = ["eval", "--checkpoint", str(root / "base"), "--n", "1", "--groups", "t2i"]
    assert main([*run, "--out", str(tmp_path / "base")]) == 0
    assert main([*run, "--adapter", str(root / "adapter"), "--out", str(tmp_path / "lora")]) == 0
    capsys.readouterr()
    report = json.loads((tmp_path / "lora" / "report.json").read_text())
    assert report["settings"]["adapter"] == str(root / "adapter")
    sheets = [(tmp_path / d / "contact_sheet.png").read_bytes() for d in ("base", "lora")]
    assert sheets[0] != sheets[1]
    bad = ["eval", "--random-init", "--adapter", str(root / "adapter"), "--out", str(tmp_path)]
    assert main(bad) == 2
    assert "--random-init" in capsys.readouterr().err
