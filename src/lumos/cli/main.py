"""The ``lumos`` command line.

Each subcommand lives in its own module under ``lumos.cli`` and exposes
``register(subparsers)``, which adds an argparse parser whose ``func`` default is the
function to run with the parsed arguments. User errors (:class:`lumos.errors.LumosError`)
are printed as one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from lumos.errors import LumosError

# Module names under lumos.cli, in the order shown by --help.
COMMANDS = [
    "generate",
    "eval",
    "info",
    "tokenizer",
    "text_tokenizer",
    "tokenize",
    "train",
    "world",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lumos",
        description="Lumos-1: autoregressive image and video generation with an LLM.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"lumos.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except LumosError as err:
        print(f"lumos {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lumos {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
