"""``lumos.model.linear``: the oneDNN inference path equals ``F.linear`` up to rounding, and
everything autograd records takes ``F.linear`` (oneDNN's op has no backward)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lumos.model import linear as L


def calls_onednn(monkeypatch) -> list[int]:
    calls: list[int] = []
    op = torch.ops.mkldnn._linear_pointwise

    def counted(*args):
        calls.append(1)
        return op(*args)

    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", counted)
    return calls


@pytest.mark.skipif(not L.ONEDNN_LINEAR, reason="oneDNN linear needs an x86 CPU build")
@pytest.mark.parametrize("shape", [(3, 7, 48), (5, 48), (1, 1, 48)])
def test_onednn_path_equals_f_linear(monkeypatch, shape):
    calls = calls_onednn(monkeypatch)
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(*shape, generator=g), torch.randn(40, 48, generator=g), torch.randn(40)
    with torch.no_grad():
        for bias in (None, b):
            torch.testing.assert_close(L.linear(x, w, bias), F.linear(x, w, bias))
    assert len(calls) == 2
    with torch.backends.mkldnn.flags(enabled=False, allow_tf32=None), torch.no_grad():
        L.linear(x, w)
    assert len(calls) == 2  # the switch turns it off


def test_recorded_calls_take_f_linear(monkeypatch):
    calls = calls_onednn(monkeypatch)
    layer = L.Linear(48, 40)
    x = torch.randn(2, 5, 48, requires_grad=True)
    layer(x).square().sum().backward()
    assert layer.weight.grad is not None and x.grad is not None
    assert calls == []
    with torch.no_grad():  # same layer at inference: oneDNN (where available), same values
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))
    assert len(calls) == int(L.ONEDNN_LINEAR)
    layer64 = L.Linear(48, 40).double()  # other dtypes: F.linear
    with torch.no_grad():
        layer64(x.double())
    assert len(calls) == int(L.ONEDNN_LINEAR)
