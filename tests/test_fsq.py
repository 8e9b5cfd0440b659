import itertools
import math

import pytest
import torch

from lumos.errors import LumosError
from lumos.tokenizers.cosmos import COSMOS_FSQ_LEVELS
from lumos.tokenizers.fsq import FSQ


@pytest.mark.parametrize("levels", [[3], [2, 3], [8, 5], [4, 4, 3], [5, 2, 7, 2], [8, 8, 8, 5]])
def test_round_trip_over_every_code(levels):
    fsq = FSQ(levels)
    assert fsq.codebook_size == math.prod(levels)
    indices = torch.arange(fsq.codebook_size)
    codes = fsq.indices_to_codes(indices)
    assert codes.shape == (fsq.codebook_size, len(levels))
    assert codes.min() >= -1 and codes.max() <= 1
    # every code is distinct and maps back to its own index
    assert torch.unique(codes, dim=0).shape[0] == fsq.codebook_size
    assert torch.equal(fsq.codes_to_indices(codes), indices)


def test_index_layout_first_channel_fastest():
    levels = [8, 5, 3]
    fsq = FSQ(levels)
    for digits in itertools.product(*(range(n) for n in levels)):
        index = digits[0] + digits[1] * 8 + digits[2] * 40
        codes = torch.tensor([(d - n // 2) / (n // 2) for d, n in zip(digits, levels, strict=True)])
        assert fsq.codes_to_indices(codes).item() == index
        assert torch.allclose(fsq.indices_to_codes(torch.tensor(index)), codes)


@pytest.mark.parametrize("levels", [[5], [8], [2], [7, 6]])
def test_quantiser_uses_exactly_the_grid(levels):
    fsq = FSQ(levels)
    z = torch.randn(20000, len(levels)) * 4
    codes = fsq(z)
    for i, n in enumerate(levels):
        values = torch.unique(codes[:, i] * (n // 2)).round().long().tolist()
        lo = -(n // 2)
        assert values == list(range(lo, lo + n)), (n, values)
    # quantised values are idempotent: codes map back to indices and the same codes
    idx = fsq.codes_to_indices(codes)
    assert idx.min() >= 0 and idx.max() < fsq.codebook_size
    assert torch.equal(fsq.indices_to_codes(idx), codes)


def test_straight_through_gradient_flows():
    fsq = FSQ([8, 5, 5])
    z = torch.randn(4, 7, 3, requires_grad=True)
    target = torch.rand(4, 7, 3) * 2 - 1
    loss = (fsq(z) - target).pow(2).sum()
    loss.backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    # gradient equals that of the bounded (unrounded) value: d bound / dz > 0 everywhere
    assert torch.isfinite(z.grad).all()


def test_official_levels_give_64000_codes():
    fsq = FSQ(COSMOS_FSQ_LEVELS)
    assert fsq.codebook_size == 64000
    assert fsq.dim == 6
    idx = torch.randint(0, 64000, (3, 5, 6))
    assert torch.equal(fsq.codes_to_indices(fsq.indices_to_codes(idx)), idx)


def test_bad_levels_are_user_errors():
    with pytest.raises(LumosError, match="levels"):
        FSQ([8, 1])
    with pytest.raises(LumosError, match="levels"):
        FSQ([])
