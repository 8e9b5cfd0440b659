from pathlib import Path

import pytest
import torch

DATA = Path(__file__).parent / "data"
OFFICIAL = DATA / "official"


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield
