"""``lumos info PATH``: architecture, parameter count and vocabulary layout of a checkpoint."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from lumos.model.checkpoint import read_config, read_state_dict


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info",
        help="describe a checkpoint (architecture, parameters, vocabulary)",
        description="Print the architecture, parameter count and vocabulary layout of a Lumos "
        "checkpoint directory (official Lumos-1 or lumos format). Weights are not loaded.",
    )
    p.add_argument(
        "path",
        type=Path,
        help="checkpoint directory (config.json + safetensors) or pipeline directory",
    )
    p.set_defaults(func=run)


def describe(path: Path) -> str:
    """The description of a checkpoint directory, or of a pipeline directory's transformer
    (the directories ``lumos generate --checkpoint`` accepts)."""
    if (path / "transformer").is_dir() and not (path / "config.json").is_file():
        path = path / "transformer"
    cfg = read_config(path)
    counts = {name: math.prod(t.shape) for name, t in read_state_dict(path, mmap=True).items()}
    total = sum(counts.values())
    embed = counts.get("model.embed_tokens.weight", 0) + counts.get("lm_head.weight", 0)
    v = cfg.vocab
    lines = [
        f"checkpoint        {path}",
        f"parameters        {total:,} ({total / 1e9:.3f} B; {total - embed:,} without "
        f"embeddings and head)",
        f"layers            {cfg.num_hidden_layers}",
        f"hidden size       {cfg.hidden_size} (MLP {cfg.intermediate_size})",
        f"attention heads   {cfg.num_attention_heads} query, {cfg.num_key_value_heads} key/value, "
        f"head_dim {cfg.head_dim}",
        f"rope              {cfg.rope_type} (theta {cfg.rope_theta:g}, scales t={cfg.rope_scale_t} "
        f"hw={cfg.rope_scale_hw})",
        f"attention         {'frame-causal' if cfg.frame_bidirectional else 'causal'}",
        f"vocabulary        {cfg.vocab_size:,} ids: text [0, {v.text_size:,}), visual "
        f"[{v.visual_offset:,}, {v.visual_offset + v.codebook_size:,}) = {v.codebook_size:,} codes",
        f"special ids       BOS {v.bos}, PAD {v.pad}, SEP {v.sep}, video {v.video_start}/"
        f"{v.video_end}, frame {v.frame_start}/{v.frame_end}, newline {v.newline}, MASK {v.mask}, "
        f"integers {v.int_base}..{v.int_base + v.num_ints - 1}",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    print(describe(args.path))
    return 0
