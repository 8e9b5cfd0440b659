"""The memory planner against measured peak RSS on this CPU (issue 12).

For each configuration a fresh process records its RSS, loads the model from a checkpoint (fp32,
memory-mapped as a user's load would be), generates, and records its peak RSS; the measured
figure is the increase of the peak over the RSS before loading (so the interpreter and torch are
not counted; memory-mapped weights count where they are read). The plan comes from
``generation/planner.py`` for the same request, computed without allocating.

Configurations: the generation benchmark's (hidden 256, 4 layers, vocabulary 129,536; 3 latent
frames of 16 x 16, 8 steps, guidance 3), the 1B width with 2 layers (448 x 256 px, 13 frames,
4 steps, guidance 3; random weights, a 2.6 GB checkpoint written to a temporary directory) and the
shipped pipeline at 65 frames (default sliding window; decode included).

    python benchmarks/bench_planner.py [--only bench|1b|shipped]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

import torch

from rss import reset_peak, status_bytes

GiB = 1024**3


def start_measuring() -> int:
    """Warm up the math libraries, reset the peak-RSS counter (Linux: clear_refs 5) and return
    the RSS now: importing torch has a transient peak that would hide everything after it."""
    from lumos.model.linear import linear

    a = torch.randn(256, 256)
    with torch.no_grad():
        linear(a, a)  # the model's matmul path (oneDNN on x86): its one-time set-up
    torch.nn.functional.scaled_dot_product_attention(a[None, None], a[None, None], a[None, None])
    x = torch.randn(1, 8, 5, 16, 16)  # the tokenizer's kinds of ops: torch's one-time set-up
    torch.nn.functional.conv3d(x, torch.randn(8, 8, 3, 3, 3), padding=1)
    torch.nn.functional.conv2d(x[:, :, 0], torch.randn(8, 8, 3, 3), padding=1)
    torch.nn.functional.group_norm(x, 4)
    torch.nn.functional.interpolate(x, scale_factor=2)
    return reset_peak()


def run_case(name: str, checkpoint: str | None) -> dict:
    from lumos import LumosModel
    from lumos.generation.generate import GenerationConfig, generate
    from lumos.generation.pipeline import LumosPipeline
    from lumos.generation.planner import plan_generation

    torch.set_num_threads(2)
    if name == "shipped":
        # The tokenizer's convolution kernels set themselves up on their first call at a size
        # (about 50 MB here, once per process): run that before measuring, as for torch's ops.
        from lumos.generation.pipeline import DEFAULT_PIPELINE_DIR
        from lumos.tokenizers import load_visual_tokenizer
        from lumos.tokenizers.visual import decode_clip

        tok = load_visual_tokenizer(DEFAULT_PIPELINE_DIR / "visual_tokenizer")
        decode_clip(tok, torch.zeros(1, 17, 8, 8, dtype=torch.long))  # the pipeline's decode
        del tok
    before = start_measuring()
    if name == "shipped":
        pipe = LumosPipeline.from_pretrained()
        pipe("a blue square moves to the right", num_frames=65, generator=torch.Generator())
        measured = status_bytes("VmHWM") - before  # before planning: the plan's meta copy costs
        plan = pipe.plan(num_frames=65, prompt_tokens=60)  # the wrapped prompt: ~50 ids
        return {"measured": measured, "plan": plan.total, "table": plan.table()}
    model = LumosModel.from_pretrained(checkpoint)
    if name == "bench":
        frames, h, w, steps = 3, 16, 16, 8
    else:
        frames, h, w, steps = 4, 32, 56, 4
    prompt = list(range(100, 160))
    cfg = GenerationConfig(num_steps=steps, guidance_scale=3.0, history_mask_ratio=0.7)
    generate(model, [prompt], frames, h, w, 1, 8, None, cfg, torch.Generator().manual_seed(0))
    measured = status_bytes("VmHWM") - before
    plan = plan_generation(
        model.config, 1, frames, h, w, len(prompt), steps, 2, weights_mapped=True
    )
    return {"measured": measured, "plan": plan.total, "table": plan.table()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=["bench", "1b", "shipped"])
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--checkpoint", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.checkpoint)))
        return
    from lumos import LumosConfig, LumosModel

    cases = [args.only] if args.only else ["bench", "1b", "shipped"]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            ckpt = None
            if case != "shipped":
                torch.manual_seed(0)
                cfg = (
                    LumosConfig.benchmark()
                    if case == "bench"
                    else LumosConfig.lumos_1b(num_hidden_layers=2)
                )
                ckpt = f"{tmp}/{case}"
                LumosModel(cfg).save_pretrained(ckpt)
            cmd = [sys.executable, __file__, "--case", case]
            cmd += ["--checkpoint", ckpt] if ckpt else []
            out = subprocess.check_output(cmd).decode().strip().splitlines()[-1]
            results[case] = json.loads(out)
    print(f"{'configuration':<16}{'planned GiB':>13}{'measured GiB':>14}{'plan/measured':>15}")
    for case, r in results.items():
        print(
            f"{case:<16}{r['plan'] / GiB:>13.3f}{r['measured'] / GiB:>14.3f}"
            f"{r['plan'] / r['measured']:>15.2f}"
        )
    for case, r in results.items():
        print(f"\n[{case}]\n{r['table']}")


if __name__ == "__main__":
    main()
