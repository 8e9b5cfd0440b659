"""2-process DDP and FSDP2 (gloo, CPU, torchrun) against one process with the same global batch."""

import json
import os
import subprocess
import sys

import pytest
import torch

from lumos.training.config import load_config
from lumos.training.train import Trainer

# Global batch 4 = 2 processes x 2 samples, or 1 process x 2 samples x 2 accumulation steps.
COMMON = [
    "model.overrides={hidden_size: 64, intermediate_size: 128, num_attention_heads: 2, num_key_value_heads: 1}",
    "data.image_size=[64, 32]",
    "data.video_size=[32, 64]",
    "micro_batch_size=2",
    "optim.warmup_steps=2",
    "optim.lr=2e-3",
    "optim.schedule=constant",  # the FSDP run stops at step 4 and resumes: LR must not depend on steps
    "validate_every=0",
    "tensorboard=false",
    "threads=1",
]

WORKER = """
import json, sys
from lumos.training.config import load_config
from lumos.training.distributed import shutdown_distributed
from lumos.training.train import Trainer

def run(out, overrides):
    trainer = Trainer(load_config(preset="tiny-cpu-joint", overrides=overrides))
    rows = trainer.fit()
    val = trainer.validate()
    if trainer.ctx.is_main:
        json.dump({"rows": rows, "val": val, "parallel": trainer.parallel}, open(out, "w"))
    trainer.ctx.barrier()

out, *overrides = sys.argv[1:]
run(out, overrides)
shutdown_distributed()  # as `lumos train` does: trainer gone, group destroyed before exit
"""


def torchrun(tmp_path, name: str, overrides: list[str]) -> dict:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = tmp_path / f"{name}.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [*cmd, str(script), str(out), *overrides],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    threads = torch.get_num_threads()
    out = tmp_path_factory.mktemp("single")
    overrides = [*COMMON, "grad_accumulation=2", "steps=6", f"output_dir={out}"]
    trainer = Trainer(load_config(preset="tiny-cpu-joint", overrides=overrides), resume=False)
    rows = trainer.fit()
    val = trainer.validate()
    torch.set_num_threads(threads)
    return rows, val


def check_same(rows, ref):
    assert [r["step"] for r in rows] == [r["step"] for r in ref]
    for a, b in zip(rows, ref, strict=True):
        assert a["kind"] == b["kind"] and a["tokens"] == b["tokens"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
        for x, y in zip(a["frame_loss"], b["frame_loss"], strict=True):
            assert x == pytest.approx(y, rel=1e-5, abs=1e-6)


def check_val(val, ref):
    """Validation batches are split over processes and reduced: same figures as one process."""
    assert (
        set(val)
        == set(ref)
        == {"val/image/loss", "val/image/frame_loss", "val/video/loss", "val/video/frame_loss"}
    )
    assert len(ref["val/video/frame_loss"]) == 3
    for k in ref:
        assert val[k] == pytest.approx(ref[k], rel=1e-5)


def test_ddp_matches_single_process(tmp_path, single):
    rows, val = single
    got = torchrun(tmp_path, "ddp", [*COMMON, "parallel=ddp", "steps=6", f"output_dir={tmp_path}"])
    assert got["parallel"] == "ddp"
    check_same(got["rows"], rows)
    assert rows[-1]["loss"] < rows[0]["loss"]
    check_val(got["val"], val)


def test_fsdp_checkpointed_resume_matches_single_process(tmp_path, single):
    """FSDP2 with activation checkpointing; stops at step 4 (checkpoint) and resumes to 6."""
    rows, val = single
    args = [*COMMON, "parallel=fsdp", "model.gradient_checkpointing=true", f"output_dir={tmp_path}"]
    first = torchrun(tmp_path, "fsdp_a", [*args, "steps=4", "checkpoint_every=2"])
    assert first["parallel"] == "fsdp"
    second = torchrun(tmp_path, "fsdp_b", [*args, "steps=6"])
    check_same(first["rows"] + second["rows"], rows)
    check_val(second["val"], val)
    loaded = load_config(preset="tiny-cpu-joint", overrides=[*args, "steps=6"])
    assert (tmp_path / "model" / "model.safetensors").is_file() and loaded.steps == 6
