"""Meta-device build, FSDP2 sharding, then per-process loading (docs/design.md, "Loading order"):
the shards each process loads equal today's full-model load cut into shards, training from them
gives identical losses, and fresh or LLM-initialised weights do not depend on the world size."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from lumos.errors import LumosError
from lumos.model.checkpoint import checkpoint_entries
from lumos.model.config import LumosConfig
from lumos.model.transformer import LumosModel
from lumos.training import sharded_load
from lumos.training.config import load_config
from lumos.training.llm_init import EXTENDED
from lumos.training.sharded_load import (
    init_weights,
    iter_rows,
    normal_rows,
    read_rows,
    weight_slots,
)
from lumos.training.train import Trainer, tiny_vocabulary
from official_stand_ins import write_official_checkpoint
from test_training import TINY

VOCAB_SIZE = 65536 + 37  # official special ids, a 37-code visual slice: odd rows, uneven shards

COMMON = [
    *TINY,
    "grad_accumulation=1",
    "optim.lr=2e-3",
    "optim.schedule=constant",
    "steps=3",
]


def write_bf16_official(path):
    """The official layout in bf16: Chameleon config, two shards with an index and a bundled
    tokenizer key (``model.vqmodel.*``, ignored); the body is the official fixture's."""
    write_official_checkpoint(path, vocab_size=VOCAB_SIZE, shards=2)
    index = json.loads((path / "model.safetensors.index.json").read_text())
    for file in sorted(set(index["weight_map"].values())):
        state = {k: v.bfloat16() for k, v in load_file(path / file).items()}
        if file.startswith("model-00002"):
            state["model.vqmodel.quant_conv.weight"] = torch.ones(3, 2)
            index["weight_map"]["model.vqmodel.quant_conv.weight"] = file
        save_file(state, path / file, metadata={"format": "pt"})
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    return path


def write_llm(path):
    """A random text-only Llama checkpoint of TINY's geometry (200 text ids, untied head)."""
    llm = {
        "model_type": "llama",
        "vocab_size": 200,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
    }
    geometry = {k: v for k, v in llm.items() if k not in ("model_type", "vocab_size")}
    model = LumosModel(LumosConfig.tiny(tiny_vocabulary(), **geometry))
    state = {k: v[:200] if k in EXTENDED else v for k, v in model.state_dict().items()}
    state = {k: v for k, v in state.items() if "q_norm" not in k and "k_norm" not in k}
    path.mkdir()
    (path / "config.json").write_text(json.dumps(llm))
    save_file({k: v.contiguous() for k, v in state.items()}, path / "model.safetensors")
    return path


def config(out, *extra):
    return load_config(preset="tiny-cpu-joint", overrides=[*COMMON, f"output_dir={out}", *extra])


def test_one_process_loads_exactly_what_from_pretrained_loads(tmp_path):
    ckpt = write_bf16_official(tmp_path / "official")
    trainer = Trainer(config(tmp_path / "run", f"model.init_from={ckpt}"), resume=False)
    reference = LumosModel.from_pretrained(ckpt)  # bf16 on disk -> fp32 on the CPU
    ours = dict(trainer.module.model.named_parameters())
    assert ours.keys() == dict(reference.named_parameters()).keys()
    for name, p in reference.named_parameters():
        assert ours[name].dtype == torch.float32 and torch.equal(ours[name], p), name
    assert torch.equal(trainer.module.model.rope_axes, reference.rope_axes)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_rows_are_read_chunk_by_chunk(tmp_path, monkeypatch, dtype):
    stored = torch.randn(37, 3, 5).to(dtype)
    tensors = {"w": stored, "b": torch.randn(4), "model.vqmodel.q": torch.ones(2)}
    save_file(tensors, tmp_path / "model.safetensors")
    entries = checkpoint_entries(tmp_path)
    assert sorted(entries) == ["b", "w"]  # the bundled tokenizer key is dropped
    entry = entries["w"]
    assert (entry.dtype, entry.shape) == (dtype, (37, 3, 5))
    monkeypatch.setattr(sharded_load, "CHUNK_BYTES", 4 * 15 * dtype.itemsize)  # 4 rows
    assert [(a, len(rows)) for a, rows in iter_rows(entry, 5, 35)] == [
        *((a, 4) for a in range(5, 33, 4)),
        (33, 2),
    ]
    out = torch.full((30, 3, 5), float("nan"), dtype=torch.float64)
    read_rows(entry, 5, 35, out)
    assert torch.equal(out, stored[5:35].double())
    read_rows(entry, 9, 9, out[:0])  # a process without rows of this tensor
    fp8 = {"w": torch.zeros(2, 2, dtype=torch.float8_e4m3fn)}
    save_file(fp8, tmp_path / "model.safetensors")
    with pytest.raises(LumosError, match="w is stored as F8_E4M3; readable dtypes: F64"):
        checkpoint_entries(tmp_path)


def test_fresh_rows_do_not_depend_on_the_split():
    whole = torch.cat([v for _, v in normal_rows(3, "w", (37, 5000), 0, 37)])
    parts = [
        v
        for a, b in ((0, 19), (19, 30), (30, 37))
        for _, v in normal_rows(3, "w", (37, 5000), a, b)
    ]
    assert torch.equal(torch.cat(parts), whole)
    assert not torch.equal(whole, torch.cat([v for _, v in normal_rows(4, "w", (37, 5000), 0, 37)]))
    assert abs(float(whole.std()) - 1) < 0.01 and abs(float(whole.mean())) < 0.01


def test_fresh_init_rules():
    with torch.device("meta"):
        model = LumosModel(LumosConfig.tiny(tiny_vocabulary()))
    model.to_empty(device="cpu")
    model.requires_grad_(False)
    init_weights(weight_slots(model), seed=0, std=0.02)
    layer = model.model.layers[0]
    assert torch.equal(
        layer.self_attn.q_norm.weight, torch.ones_like(layer.self_attn.q_norm.weight)
    )
    assert torch.equal(layer.self_attn.k_norm.bias, torch.zeros_like(layer.self_attn.k_norm.bias))
    assert torch.equal(model.model.norm.weight, torch.ones_like(model.model.norm.weight))
    for w in (model.lm_head.weight, layer.mlp.up_proj.weight, model.model.embed_tokens.weight):
        assert abs(float(w.std()) - 0.02) < 0.002 and abs(float(w.mean())) < 0.002
    # Weights are drawn independently of each other.
    assert not torch.equal(
        layer.self_attn.q_proj.weight, model.model.layers[1].self_attn.q_proj.weight
    )


def test_mismatched_checkpoint_is_a_one_line_error(tmp_path):
    ckpt = write_bf16_official(tmp_path / "official")
    config_file = ckpt / "config.json"
    data = json.loads(config_file.read_text())
    (ckpt / "model-00001-of-00002.safetensors").write_bytes(b"\x10\x00garbage")
    with pytest.raises(LumosError, match="cannot read weights"):
        Trainer(config(tmp_path / "run", f"model.init_from={ckpt}"), resume=False)
    write_bf16_official(tmp_path / "other")
    config_file.write_text(json.dumps({**data, "intermediate_size": 96}))
    for file in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
        (ckpt / file).write_bytes((tmp_path / "other" / file).read_bytes())
    with pytest.raises(LumosError, match="has shape"):
        Trainer(config(tmp_path / "run", f"model.init_from={ckpt}"), resume=False)


WORKER = """
import json, sys
import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from lumos.model.transformer import LumosModel
from lumos.training.checkpointing import full_model_state
from lumos.training.config import load_config
from lumos.training.distributed import shutdown_distributed
from lumos.training.llm_init import init_from_llm
from lumos.training.train import Trainer, resolve_vocabulary

out, ckpt, llm, *common = sys.argv[1:]


def trainer(name, *extra):
    cfg = load_config(preset="tiny-cpu-joint", overrides=[*common, f"output_dir={out}-{name}", *extra])
    return Trainer(cfg, resume=False), cfg


def full(t):
    return {k.removeprefix("model."): v for k, v in full_model_state(t.module).items()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# This change: every process reads only its rows of the checkpoint.
new, _ = trainer("new", f"model.init_from={ckpt}")
loaded = full(new)
# Today's path: every process loads the whole checkpoint in fp32, then the shards are cut from it.
old, _ = trainer("old", f"model.init_from={ckpt}")
whole = LumosModel.from_pretrained(ckpt).float().state_dict()
set_model_state_dict(
    old.module, {"model." + k: v for k, v in whole.items()},
    options=StateDictOptions(full_state_dict=True),
)
result = {"loaded_equals_whole": same(loaded, whole), "new": new.fit(), "old": old.fit()}
del new, old
fresh, _ = trainer("fresh")
result["fresh"] = {k: v.tolist() for k, v in full(fresh).items() if k.endswith(("q_proj.weight", "embed_tokens.weight"))}
del fresh
from_llm, cfg = trainer("llm", f"model.init_from_llm={llm}", "model.vocabulary=tiny", "model.overrides={}")
single = init_from_llm(llm, resolve_vocabulary("tiny", []), seed=cfg.seed).state_dict()
result["llm_equals_single_process"] = same(full(from_llm), single)
if from_llm.ctx.is_main:
    json.dump(result, open(out, "w"))
from_llm.ctx.barrier()
del from_llm
shutdown_distributed()
"""


def test_two_process_fsdp_loading_matches_todays_path(tmp_path):
    ckpt = write_bf16_official(tmp_path / "official")
    llm = write_llm(tmp_path / "llm")
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = tmp_path / "result.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    common = [*COMMON, "parallel=fsdp", "model.gradient_checkpointing=true"]
    proc = subprocess.run(
        [*cmd, str(script), str(out), str(ckpt), str(llm), *common],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["loaded_equals_whole"] and result["llm_equals_single_process"]
    keys = ("loss", "grad_norm", "frame_loss", "tokens")
    assert [[r[k] for k in keys] for r in result["new"]] == [
        [r[k] for k in keys] for r in result["old"]
    ]
    assert len(result["new"]) == 3
    # Fresh weights: the same values as in one process.
    single = Trainer(config(tmp_path / "single"), resume=False).module.model.state_dict()
    for k, v in result["fresh"].items():
        assert torch.equal(torch.tensor(v), single[k]), k
