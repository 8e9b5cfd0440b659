"""The model's linear layers: ``F.linear``, except eager fp32 inference on an x86 CPU, which runs
oneDNN's matmul.

On this project's CPU (an AMD x86 core) PyTorch's default fp32 matmul (MKL) takes an AVX2 path;
oneDNN's measured about twice as fast on the head's and the decoder's inference shapes
(``benchmarks/bench_sampling.py``; ``benchmarks/bench_generation.py`` end to end). oneDNN's op
has no backward, so a call that autograd records, compiled code (Inductor lowers linears
itself) and every other device and dtype take ``F.linear``. ``torch.backends.mkldnn.flags(
enabled=False, allow_tf32=None)`` turns the oneDNN path off.
"""

from __future__ import annotations

import platform

import torch
import torch.nn.functional as F
from torch import nn

ONEDNN_LINEAR = (
    torch.backends.mkldnn.is_available()
    and platform.machine() in ("x86_64", "AMD64")
    and hasattr(torch.ops.mkldnn, "_linear_pointwise")
)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T (+ bias)``, [..., out]; see the module docstring for the oneDNN path."""
    if (
        ONEDNN_LINEAR
        and x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        and not torch.compiler.is_compiling()
        and torch.backends.mkldnn.enabled
    ):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and state-dict keys) computed by :func:`linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
