"""The shipped default model (src/lumos/assets/default) follows prompts (issue 5's CI check)."""

import torch

from lumos.data.world import parse_caption
from lumos.evaluation.analyser import analyse, score
from lumos.generation.pipeline import LumosPipeline

# Held-in colour-shape pairs, one per motion, fixed before looking at any output.
PROMPTS = [
    "a red circle moves to the left",
    "a green square moving right",
    "a blue triangle moves up",
    "a yellow cross moving down",
]


def test_shipped_model_follows_the_colour_of_most_prompts():
    pipe = LumosPipeline.from_pretrained()
    gens = [torch.Generator().manual_seed(i) for i in range(len(PROMPTS))]
    out = pipe(PROMPTS, generator=gens)  # the shipped defaults: 9 x 64 x 64, 16 steps
    assert out.frames.shape == (4, 9, 64, 64, 3)
    colour_right = [
        score(analyse(frames), parse_caption(prompt))["color"]
        for prompt, frames in zip(PROMPTS, out.frames, strict=True)
    ]
    assert sum(colour_right) >= 3, dict(zip(PROMPTS, colour_right, strict=True))
