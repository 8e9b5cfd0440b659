"""``lumos demo``: the web demo (Gradio; ``pip install -e ".[demo]"``), see :mod:`lumos.demo`."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from lumos import validate
from lumos.errors import LumosError


def register(sub: argparse._SubParsersAction) -> None:
    from lumos.cli.generate import FRAMES_ARG, MAX_STEPS, SIDE_ARG, add_placement_args
    from lumos.demo import Limits

    lim = Limits()
    p = sub.add_parser(
        "demo",
        help="start the web demo (text/image-to-video with live frames)",
        description="Serve a web page that generates videos and images with one loaded model, "
        "showing the frames as they are made, and the API endpoint /generate. Stop with Ctrl-C.",
    )
    p.add_argument(
        "--checkpoint",
        type=Path,
        help="pipeline directory, e.g. one made by lumos convert-official "
        "(default: the model shipped with lumos)",
    )
    p.add_argument(
        "--trust-torchscript",
        action="store_true",
        help="allow loading a Cosmos TorchScript tokenizer (runs its code)",
    )
    add_placement_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument(
        "--port", type=validate.int_arg(1, 65535), help="port (default: 7860 or the next free)"
    )
    p.add_argument("--share", action="store_true", help="also open a public Gradio share link")
    p.add_argument(
        "--queue-size",
        type=validate.int_arg(1, 1000),
        default=8,
        help="requests that may wait for the model; more are refused (default 8)",
    )
    p.add_argument(
        "--max-frames",
        type=FRAMES_ARG,
        default=lim.max_frames,
        help=f"largest request in RGB frames (default {lim.max_frames})",
    )
    p.add_argument(
        "--max-size",
        type=SIDE_ARG,
        default=lim.max_side,
        help=f"largest height and width in pixels (default {lim.max_side})",
    )
    p.add_argument(
        "--max-steps",
        type=validate.int_arg(1, MAX_STEPS),
        default=lim.max_steps,
        help=f"most steps per latent frame (default {lim.max_steps})",
    )
    p.add_argument(
        "--threads", type=validate.THREADS_ARG, help="CPU threads (default: the model's setting)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from lumos.demo import Limits, serve
    from lumos.generation.pipeline import LumosPipeline

    if importlib.util.find_spec("gradio") is None:
        raise LumosError('the demo needs Gradio; install it with pip install -e ".[demo]"')
    pipe = LumosPipeline.from_pretrained(
        args.checkpoint, allow_torchscript=args.trust_torchscript, device=args.device,
        dtype=args.dtype,
    )  # fmt: skip
    threads = args.threads if args.threads is not None else pipe.defaults.num_threads
    if threads:
        torch.set_num_threads(threads)
    limits = Limits(max_frames=args.max_frames, max_side=args.max_size, max_steps=args.max_steps)
    serve(pipe, limits, args.host, args.port, args.share, args.queue_size)
    return 0
