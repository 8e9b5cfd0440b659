"""Training speed options (``compile``, ``optim.fused``, ``tf32``): same losses as the plain path."""

import pytest
import torch

from lumos.errors import LumosError
from lumos.training.config import load_config
from lumos.training.train import Trainer
from test_training import tiny_config


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def run(tmp_path, name, *extra):
    # One sequence length (images, fixed text, none dropped): the compiler compiles once.
    fixed = ["data.image_ratio=1", "data.text_tokens=[6, 6]", "masking.text_drop=0"]
    trainer = Trainer(tiny_config(tmp_path / name, "steps=2", *fixed, *extra), resume=False)
    return trainer, trainer.fit()


def same_training(rows, ref):
    for a, b in zip(rows, ref, strict=True):
        assert a["kind"] == b["kind"] and a["tokens"] == b["tokens"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-3)


def test_compiled_layers_train_like_eager(tmp_path):
    _, eager = run(tmp_path, "eager")
    compiled, rows = run(tmp_path, "compiled", "compile=true")
    assert all(
        layer._compiled_call_impl is not None for layer in compiled.module.model.model.layers
    )
    same_training(rows, eager)


def test_fused_adamw_trains_like_the_default(tmp_path):
    default, ref = run(tmp_path, "default")  # auto: fused on CUDA only
    fused, rows = run(tmp_path, "fused", "optim.fused=true")
    assert fused.optimizer.defaults["fused"]
    assert default.optimizer.defaults["fused"] == torch.cuda.is_available()
    same_training(rows, ref)


def test_speed_option_values_are_checked():
    cfg = load_config(preset="tiny-cpu-t2i")
    assert cfg.compile is False and cfg.tf32 is True and cfg.optim.fused == "auto"
    assert cfg.attention == "auto"
    for bad, message in (
        ("optim.fused=sometimes", "optim.fused"),
        ("optim.fused=1", "optim.fused"),
        ("compile=yes please", "compile must be true or false"),
        ("tf32=2", "tf32 must be true or false"),
        ("attention=sparse", "attention 'sparse' unknown"),
    ):
        with pytest.raises(LumosError, match=message):
            load_config(preset="tiny-cpu-t2i", overrides=[bad])


def test_flex_attention_for_training_needs_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("on CUDA attention flex is allowed")
    with pytest.raises(LumosError, match="attention flex needs a CUDA device"):
        Trainer(tiny_config(tmp_path, "attention=flex"), resume=False)
