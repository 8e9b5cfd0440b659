"""FlexAttention's frame-causal block mask (docs/design.md, "Frame-causal attention") against the
dense mask: forward on the CPU (FlexAttention has no CPU backward), gradients against the split
path only where CUDA is available."""

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import create_mask

from lumos.errors import LumosError
from lumos.model.attention import FlexFrameAttention
from lumos.model.config import LumosConfig
from lumos.model.transformer import LumosModel
from lumos.sequence.structure import frame_causal_mask
from lumos.training.config import MaskingConfig
from lumos.training.objective import ARDFObjective, collate, resolve_attention
from test_objective import VOCAB, make_sequences


def mixed_batch(gen: torch.Generator):
    """Video samples of two layouts and different text lengths, an image, a non-square frame
    grid, text dropped from some: right padding of several lengths."""
    seqs = make_sequences(2, frames=3, h=2, w=5, text_lens=[5, 9], gen=gen)
    seqs += make_sequences(1, frames=1, h=3, w=2, text_lens=[2], gen=gen)
    seqs += make_sequences(1, frames=2, h=4, w=3, text_lens=[7], gen=gen)
    return collate(seqs, VOCAB, MaskingConfig(text_drop=0.5), gen)


@pytest.mark.parametrize("block_size", [16, 128])
def test_block_mask_is_the_dense_mask(block_size):
    gen = torch.Generator().manual_seed(0)
    batch = mixed_batch(gen)
    model = LumosModel(LumosConfig.tiny(vocabulary=VOCAB))
    valid = batch.attention_mask.bool()
    _, s = model.positions(batch.targets, valid)
    assert int(valid.sum(1).min()) < valid.shape[1]  # padded rows
    flex = FlexFrameAttention(s, valid, block_size=block_size)
    B, L = valid.shape
    dense = frame_causal_mask(s, valid)
    assert torch.equal(create_mask(flex.mask_mod, B, 1, L, L, device="cpu"), dense)
    # The block mask (tiles skipped, full or partial) gives SDPA's result with the dense mask,
    # query heads sharing key/value heads (GQA), padding rows included.
    q = torch.randn(B, 4, L, 16, generator=gen, dtype=torch.float64)
    k, v = (torch.randn(B, 2, L, 16, generator=gen, dtype=torch.float64) for _ in range(2))
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=dense, enable_gqa=True)
    torch.testing.assert_close(flex(q, k, v, enable_gqa=True), ref, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_model_and_loss_with_flex_equal_dense_on_cpu(bidirectional):
    torch.manual_seed(1)
    cfg = LumosConfig.tiny(vocabulary=VOCAB, frame_bidirectional=bidirectional)
    model = LumosModel(cfg).double().eval()
    batch = mixed_batch(torch.Generator().manual_seed(2))
    valid = batch.attention_mask.bool()
    positions, s = model.positions(batch.targets, valid)
    with torch.no_grad():
        ref, _ = model.hidden(batch.input_ids, positions, model.attention_mask(s, valid))
        args = (batch.input_ids, batch.attention_mask, batch.targets, batch.loss_mask)
        losses = {
            mode: ARDFObjective(model, 16, mode)(*args).loss for mode in ("dense", "split", "flex")
        }
        if bidirectional:
            h, _ = model.hidden(batch.input_ids, positions, FlexFrameAttention(s, valid))
            torch.testing.assert_close(h[valid], ref[valid], atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(losses["flex"], losses["dense"], atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(losses["split"], losses["dense"], atol=1e-10, rtol=1e-10)


def test_attention_modes_per_device():
    assert resolve_attention("auto", torch.device("cpu")) == "split"
    assert resolve_attention("auto", torch.device("cuda", 0)) == "flex"
    assert resolve_attention("dense", torch.device("cpu")) == "dense"
    with pytest.raises(LumosError, match="attention flex needs a CUDA device"):
        resolve_attention("flex", torch.device("cpu"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention's backward needs CUDA")
def test_flex_gradients_equal_split_on_cuda():
    torch.manual_seed(3)
    model = LumosModel(LumosConfig.tiny(vocabulary=VOCAB)).cuda().train()
    model.gradient_checkpointing = True
    batch = mixed_batch(torch.Generator().manual_seed(4)).to("cuda")
    args = (batch.input_ids, batch.attention_mask, batch.targets, batch.loss_mask)
    results = {}
    for mode in ("split", "flex"):
        out = ARDFObjective(model, 16, mode)(*args)
        out.loss.backward()
        results[mode] = (
            out.loss.detach(),
            {n: p.grad.clone() for n, p in model.named_parameters()},
        )
        model.zero_grad()
    torch.testing.assert_close(results["flex"][0], results["split"][0], atol=1e-5, rtol=1e-5)
    for name, grad in results["split"][1].items():
        torch.testing.assert_close(results["flex"][1][name], grad, atol=1e-5, rtol=1e-4, msg=name)
