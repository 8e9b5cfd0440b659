"""lumos: Lumos-1 in PyTorch."""

from lumos.errors import LumosError
from lumos.model.config import LumosConfig
from lumos.model.transformer import LumosModel, LumosOutput
from lumos.sequence.vocab import Vocabulary

__all__ = ["LumosConfig", "LumosError", "LumosModel", "LumosOutput", "Vocabulary"]
__version__ = "0.1.0"
