"""Parity with the official implementation on tiny random weights (tests/data/official)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import OFFICIAL
from lumos import LumosConfig, LumosModel

# The README's parity claim: hidden states and logits within 1e-5 of the official model (fp32;
# measured on CPU: logits within 7e-7, hidden states within 3e-6).
PARITY_ATOL = 1e-5


@pytest.fixture(scope="module")
def official_model():
    return LumosModel.from_pretrained(OFFICIAL / "weights")


def model_for_case(case, official_model):
    if case != "A_1d":
        return official_model
    cfg = LumosConfig.from_official(json.loads((OFFICIAL / case / "config.json").read_text()))
    assert cfg.rope_type == "1d" and not cfg.frame_bidirectional
    model = LumosModel(cfg).eval()
    model.load_state_dict(official_model.state_dict())
    return model


@pytest.mark.parametrize("case", ["A", "B", "A_1d"])
def test_hidden_states_and_logits_match_official(case, official_model):
    model = model_for_case(case, official_model)
    ids = load_file(OFFICIAL / case / "inputs.safetensors")["input_ids"]
    ref = load_file(OFFICIAL / case / "outputs.safetensors")
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
    assert len(out.hidden_states) == 3
    for i, h in enumerate(out.hidden_states):
        torch.testing.assert_close(h, ref[f"hidden_states_{i}"], atol=PARITY_ATOL, rtol=0)
    if "logits" in ref:
        torch.testing.assert_close(out.logits, ref["logits"], atol=PARITY_ATOL, rtol=0)
    else:
        sub = out.logits[..., ref["logit_cols"]]
        torch.testing.assert_close(sub, ref["logits_sub"], atol=PARITY_ATOL, rtol=0)
    torch.testing.assert_close(out.logits.logsumexp(-1), ref["logits_lse"], atol=PARITY_ATOL, rtol=0)
    assert torch.equal(out.logits.argmax(-1), ref["logits_argmax"])


@pytest.mark.parametrize("case", ["A", "B", "A_1d"])
def test_derived_positions_and_mask_match_official(case, official_model):
    model = model_for_case(case, official_model)
    ids = load_file(OFFICIAL / case / "inputs.safetensors")["input_ids"]
    ref_pos = load_file(OFFICIAL / case / "position_ids.safetensors")
    ref_mask = load_file(OFFICIAL / case / "attention_mask.safetensors")["attention_mask"]
    positions, structure = model.positions(ids)
    if case == "A_1d":
        for stream in positions.unbind(1):
            assert torch.equal(stream, ref_pos["position_ids"])
    else:
        for i, axis in enumerate("thw"):
            assert torch.equal(positions[:, i], ref_pos[f"{axis}_position_ids"]), axis
        assert torch.equal(structure.content.long(), ref_pos["image_content_flag"])
    assert torch.equal(model.attention_mask(structure, None), ref_mask)


def test_wrong_mask_or_rope_would_be_caught(official_model):
    """The fixtures discriminate: a causal mask or 1-D RoPE moves logits far beyond PARITY_ATOL."""
    ids = load_file(OFFICIAL / "A" / "inputs.safetensors")["input_ids"]
    ref = load_file(OFFICIAL / "A" / "outputs.safetensors")["logits"]
    cfg = official_model.config
    for change in ({"rope_type": "1d"}, {"frame_bidirectional": False}):
        model = LumosModel(LumosConfig(**{**cfg.__dict__, **change})).eval()
        model.load_state_dict(official_model.state_dict())
        with torch.no_grad():
            assert (model(ids).logits - ref).abs().max() > 0.1
