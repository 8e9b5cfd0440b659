"""Text and visual tokenizers. ``load_visual_tokenizer`` loads any visual tokenizer directory."""

from lumos.tokenizers.loading import load_visual_tokenizer

__all__ = ["load_visual_tokenizer"]
