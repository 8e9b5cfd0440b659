"""Model configuration: one dataclass, presets, and the official config.json mapping."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from lumos import validate
from lumos.errors import LumosError
from lumos.sequence.vocab import Vocabulary

# rope_type -> (slot allocation, positions scaled by the tokenizer's compression ratios).
# "3d" (contiguous 2:3:3 slot ranges, t on the highest frequencies, unscaled positions) is the
# same rotation as Qwen2-VL's M-RoPE sections, so the two names are aliases.
RopeType = Literal[
    "mm_rope", "mm_rope_distributed_only", "mm_rope_scaled_only", "mrope", "3d", "1d"
]
ROPE_TYPES: dict[str, tuple[str, bool]] = {
    "mm_rope": ("distributed", True),
    "mm_rope_distributed_only": ("distributed", False),
    "mm_rope_scaled_only": ("contiguous", True),
    "mrope": ("contiguous", False),
    "3d": ("contiguous", False),
    "1d": ("1d", False),
}


@dataclass
class LumosConfig:
    """Decoder geometry and the Lumos-specific switches (``config.json`` of our checkpoints)."""

    vocab_size: int  # rows of the embedding and the LM head (>= the vocabulary's ids)
    hidden_size: int  # model width d
    intermediate_size: int  # SwiGLU MLP width
    num_hidden_layers: int  # decoder layers
    num_attention_heads: int  # query heads; head_dim = hidden_size / num_attention_heads
    num_key_value_heads: int  # key/value heads (grouped-query attention when fewer)
    rope_theta: float = 10000.0  # RoPE base
    rms_norm_eps: float = 1e-5  # epsilon of the RMSNorms
    # Checkpoint metadata only, never enforced: RoPE has no position table, and official-size
    # sequences (25 frames at 384 x 672 px) are longer than the official value 4,096.
    max_position_embeddings: int = 4096
    rope_type: RopeType = "mm_rope"  # position encoding, see ROPE_TYPES and docs/design.md
    rope_scale_t: int = 4  # MM-RoPE temporal scale: RGB frames per latent frame
    rope_scale_hw: int = 8  # MM-RoPE spatial scale: pixels per latent token
    frame_bidirectional: bool = True  # frame-causal attention (False: plain causal)
    initializer_range: float = 0.02  # std of the normal init of linear and embedding weights
    # The id layout (Vocabulary.to_dict()): special, integer and visual ids.
    vocabulary: dict = field(default_factory=lambda: Vocabulary.official().to_dict())

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers"):
            validate.integer(name, getattr(self, name), 1, 2**24)
        for name in ("num_attention_heads", "num_key_value_heads", "rope_scale_t", "rope_scale_hw"):
            validate.integer(name, getattr(self, name), 1, 1024)
        validate.integer("max_position_embeddings", self.max_position_embeddings, 1)
        validate.number("rope_theta", self.rope_theta, 0, lo_open=True)
        validate.number("rms_norm_eps", self.rms_norm_eps, 0, 1, lo_open=True)
        validate.number("initializer_range", self.initializer_range, 0)
        validate.boolean("frame_bidirectional", self.frame_bidirectional)
        if not isinstance(self.vocabulary, dict):
            raise LumosError(f"vocabulary must be a mapping of ids, got {self.vocabulary!r}")
        if self.rope_type not in ROPE_TYPES:
            raise LumosError(
                f"rope_type {self.rope_type!r} unknown; choose one of {list(ROPE_TYPES)}"
            )
        if self.hidden_size % self.num_attention_heads:
            raise LumosError("hidden_size must be a multiple of num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise LumosError("num_attention_heads must be a multiple of num_key_value_heads")
        if ROPE_TYPES[self.rope_type][0] == "distributed" and (self.head_dim // 2) % 16:
            raise LumosError(
                f"MM-RoPE needs head_dim/2 to be a multiple of 16; head_dim is {self.head_dim}"
            )
        if ROPE_TYPES[self.rope_type][0] == "contiguous" and (self.head_dim // 2) % 8:
            raise LumosError(
                f"3-D RoPE needs head_dim/2 to be a multiple of 8; got {self.head_dim}"
            )
        vocab = self.vocab
        needed = vocab.size if vocab.codebook_size else vocab.int_base + vocab.num_ints
        if needed > self.vocab_size:
            raise LumosError(f"vocabulary needs {needed} ids but vocab_size is {self.vocab_size}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def vocab(self) -> Vocabulary:
        return Vocabulary.from_dict(self.vocabulary)

    def to_dict(self) -> dict:
        return {"lumos_format": 1, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> LumosConfig:
        if "lumos_format" not in data:
            return cls.from_official(data)
        names = {f.name for f in dataclasses.fields(cls)}
        validate.known_keys("config.json", data, names | {"lumos_format"})
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def from_official(cls, data: dict) -> LumosConfig:
        """Map an official Lumos-1 (Chameleon) config.json; unsupported options are errors.
        The one exception to the unknown-key policy: a Hugging Face config carries many keys
        that do not concern the model (``architectures``, ``transformers_version``, ...)."""
        required = [
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
        ]
        missing = [k for k in required if k not in data]
        if missing:
            raise LumosError(f"config.json lacks {missing}: not a Lumos-1 checkpoint config")
        if data.get("swin_norm", False):
            raise LumosError("config.json sets swin_norm: true, which lumos does not support")
        if int(data.get("model_parallel_size", 1)) != 1:
            raise LumosError(
                "config.json sets model_parallel_size != 1, which lumos does not support"
            )
        if data.get("rope_scaling") is not None:
            raise LumosError("config.json sets rope_scaling, which lumos does not support")
        if data.get("attention_bias", False) or data.get("mlp_bias", False):
            raise LumosError("config.json enables biases, which Lumos-1 checkpoints do not have")
        mm_rope = bool(data.get("mm_rope", False))
        official = Vocabulary.official()
        vocab_size = int(data["vocab_size"])
        # Small test checkpoints keep the official special ids but have no room for visual ids.
        codebook = min(official.codebook_size, max(0, vocab_size - official.visual_offset))
        vocab = dataclasses.replace(official, codebook_size=codebook)
        return cls(
            vocab_size=vocab_size,
            hidden_size=int(data["hidden_size"]),
            intermediate_size=int(data["intermediate_size"]),
            num_hidden_layers=int(data["num_hidden_layers"]),
            num_attention_heads=int(data["num_attention_heads"]),
            num_key_value_heads=int(data.get("num_key_value_heads", data["num_attention_heads"])),
            rope_theta=float(data.get("rope_theta", 10000.0)),
            rms_norm_eps=float(data.get("rms_norm_eps", 1e-5)),
            max_position_embeddings=int(data.get("max_position_embeddings", 4096)),
            rope_type="mm_rope" if mm_rope else "1d",
            frame_bidirectional=mm_rope,
            initializer_range=float(data.get("initializer_range", 0.02)),
            vocabulary=vocab.to_dict(),
        )

    # ---- presets ------------------------------------------------------------------------
    # Every preset takes the same arguments: the vocabulary (default: the official one; it also
    # sets ``vocab_size``) and overrides of any field. MODEL_PRESETS names the training ones.
    @classmethod
    def _preset(cls, geometry: dict, vocabulary: Vocabulary | None, overrides: dict) -> LumosConfig:
        vocab = vocabulary or Vocabulary.official()
        return cls(
            **{"vocab_size": vocab.size, "vocabulary": vocab.to_dict(), **geometry, **overrides}
        )

    @classmethod
    def tiny(cls, vocabulary: Vocabulary | None = None, **overrides: Any) -> LumosConfig:
        """A 2-layer model for tests and CPU experiments (hidden 128, 4 heads, 2 KV heads)."""
        geometry = dict(
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
        return cls._preset(geometry, vocabulary, overrides)

    @classmethod
    def benchmark(cls, vocabulary: Vocabulary | None = None, **overrides: Any) -> LumosConfig:
        """The benchmark geometry: 4 layers, hidden 256, 4 heads, MLP 688."""
        geometry = dict(
            hidden_size=256,
            intermediate_size=688,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=4,
        )
        return cls._preset(geometry, vocabulary, overrides)

    @classmethod
    def lumos_1b(cls, vocabulary: Vocabulary | None = None, **overrides: Any) -> LumosConfig:
        """Lumos-1 1B geometry (Llama-3.2-1B body)."""
        geometry = dict(
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
        )
        return cls._preset(geometry, vocabulary, overrides)

    @classmethod
    def lumos_3b(cls, vocabulary: Vocabulary | None = None, **overrides: Any) -> LumosConfig:
        """Lumos-1 3B geometry (Llama-3.2-3B body)."""
        geometry = dict(
            hidden_size=3072,
            intermediate_size=8192,
            num_hidden_layers=28,
            num_attention_heads=24,
            num_key_value_heads=8,
        )
        return cls._preset(geometry, vocabulary, overrides)


Geometry = Literal["tiny", "1b", "3b"]
MODEL_PRESETS: dict[str, Callable[..., LumosConfig]] = {
    "tiny": LumosConfig.tiny,
    "1b": LumosConfig.lumos_1b,
    "3b": LumosConfig.lumos_3b,
}
