import json
import shutil
from typing import get_args

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import OFFICIAL
from helpers import small_vocab, tiny_model
from lumos import LumosError, LumosModel, Vocabulary
from lumos.cli.main import main
from lumos.model.config import MODEL_PRESETS, ROPE_TYPES, Geometry, RopeType


def copy_official(tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(OFFICIAL / "weights", dst)
    return dst


def test_save_and_load_round_trip(tmp_path):
    model = tiny_model(rope_type="mm_rope_distributed_only")
    model.save_pretrained(tmp_path / "m")
    loaded = LumosModel.from_pretrained(tmp_path / "m")
    assert loaded.config == model.config
    ids = torch.randint(0, 100, (2, 17))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)


def test_sharded_official_checkpoint_with_vqmodel_keys(tmp_path):
    dst = copy_official(tmp_path)
    state = load_file(dst / "model.safetensors")
    (dst / "model.safetensors").unlink()
    names = sorted(state)
    shards = {
        "model-00001-of-00002.safetensors": names[: len(names) // 2],
        "model-00002-of-00002.safetensors": names[len(names) // 2 :],
    }
    weight_map = {}
    for file, keys in shards.items():
        part = {k: state[k] for k in keys}
        if file.startswith("model-00002"):
            part["model.vqmodel.encoder.conv_in.weight"] = torch.zeros(3)  # ignored
        save_file(part, dst / file)
        weight_map.update({k: file for k in part})
    (dst / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    loaded = LumosModel.from_pretrained(dst)
    ref = LumosModel.from_pretrained(OFFICIAL / "weights")
    for k, v in ref.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / "config.json").unlink(), "no config.json"),
        (lambda d: (d / "config.json").write_text("{not json"), "not valid JSON"),
        (
            lambda d: (d / "model.safetensors").write_bytes(b"\x10\x00garbage"),
            "cannot read weights",
        ),
        (lambda d: truncate(d / "model.safetensors"), "cannot read weights"),
        (lambda d: edit_config(d, swin_norm=True), "swin_norm"),
        (lambda d: edit_config(d, num_hidden_layers=3), "missing"),
        (lambda d: edit_config(d, hidden_size=64, num_attention_heads=2), "shape"),
        (lambda d: drop_key(d, "lm_head.weight"), "missing 1 keys"),
        (lambda d: add_key(d, "model.extra.weight"), "unexpected 1 keys"),
    ],
)
def test_bad_checkpoints_fail_with_one_clear_line(tmp_path, damage, message):
    dst = copy_official(tmp_path)
    damage(dst)
    with pytest.raises(LumosError, match=message) as err:
        LumosModel.from_pretrained(dst)
    assert "\n" not in str(err.value)


def truncate(file):
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


def edit_config(d, **changes):
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))


def drop_key(d, key):
    state = load_file(d / "model.safetensors")
    del state[key]
    save_file(state, d / "model.safetensors")


def add_key(d, key):
    state = load_file(d / "model.safetensors")
    state[key] = torch.zeros(2)
    save_file(state, d / "model.safetensors")


def test_cli_info(capsys, tmp_path):
    assert main(["info", str(OFFICIAL / "weights")]) == 0
    out = capsys.readouterr().out
    assert "2,655,104" in out and "mm_rope" in out and "frame-causal" in out and "MASK 9003" in out
    assert main(["info", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err


def test_half_precision_storage_loads_as_float32(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path / "m", dtype=torch.float16)
    assert load_file(tmp_path / "m" / "model.safetensors")["lm_head.weight"].dtype == torch.float16
    loaded = LumosModel.from_pretrained(tmp_path / "m")
    assert loaded.lm_head.weight.dtype == torch.float32
    torch.testing.assert_close(loaded.lm_head.weight, model.lm_head.weight, atol=1e-3, rtol=1e-3)


def test_config_literals_and_presets_agree():
    assert set(get_args(RopeType)) == set(ROPE_TYPES)
    assert set(get_args(Geometry)) == set(MODEL_PRESETS)
    vocab = small_vocab(64)
    for make in MODEL_PRESETS.values():  # one signature: (vocabulary, **overrides)
        cfg = make(vocab, num_hidden_layers=1)
        assert (cfg.vocab, cfg.vocab_size, cfg.num_hidden_layers) == (vocab, vocab.size, 1)
        assert make().vocab_size == Vocabulary.official().size
