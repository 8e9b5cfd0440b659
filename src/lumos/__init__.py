"""lumos: Lumos-1 in PyTorch.

The top-level names are imported on first use, so importing a submodule (parsing a training
config, the command line's ``--help``) does not build the model stack.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lumos.errors import LumosError

if TYPE_CHECKING:
    from lumos.generation.generate import GenerationConfig
    from lumos.generation.pipeline import LumosPipeline, save_frames
    from lumos.model.config import LumosConfig
    from lumos.model.transformer import LumosModel, LumosOutput
    from lumos.sequence.vocab import Vocabulary
    from lumos.tokenizers import load_visual_tokenizer

_LAZY = {
    "GenerationConfig": "lumos.generation.generate",
    "LumosPipeline": "lumos.generation.pipeline",
    "save_frames": "lumos.generation.pipeline",
    "load_visual_tokenizer": "lumos.tokenizers",
    "LumosConfig": "lumos.model.config",
    "LumosModel": "lumos.model.transformer",
    "LumosOutput": "lumos.model.transformer",
    "Vocabulary": "lumos.sequence.vocab",
}

__all__ = [
    "GenerationConfig",
    "LumosConfig",
    "LumosError",
    "LumosModel",
    "LumosOutput",
    "LumosPipeline",
    "Vocabulary",
    "load_visual_tokenizer",
    "save_frames",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'lumos' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
