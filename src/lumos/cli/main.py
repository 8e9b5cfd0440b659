"""The ``lumos`` command line.

Each subcommand lives in its own module under ``lumos.cli`` and exposes
``register(subparsers)``, which adds an argparse parser whose ``func`` default is the
function to run with the parsed arguments. User errors (:class:`lumos.errors.LumosError`
and bad options) are printed as one line and exit with status 2. A closed standard output
(``lumos generate ... | head -1``) does not stop a command: its outputs are still written.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from lumos.errors import LumosError

# Module names under lumos.cli, in the order shown by --help.
COMMANDS = [
    "generate",
    "eval",
    "sample",
    "info",
    "tokenizer",
    "text_tokenizer",
    "tokenize",
    "train",
    "merge_adapter",
    "world",
    "convert",
    "demo",
]


def one_line(message: object) -> str:
    """A message on one line (what a user error prints)."""
    return " ".join(str(message).split())


def out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` says an allocation failed (CPU allocator, CUDA, or Python)."""
    text = str(err).lower()
    return isinstance(err, MemoryError) or "out of memory" in text or "can't allocate" in text


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block) and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {one_line(message)}\n")


class _GuardedStdout:
    """Standard output that keeps the command running when the reader goes away: after a
    BrokenPipeError further output is discarded (stdout is pointed at /dev/null so the
    interpreter's final flush cannot fail either)."""

    def __init__(self, stream) -> None:
        self._stream = stream
        self._closed = False

    def write(self, text: str) -> int:
        if not self._closed:
            try:
                self._stream.write(text)
                self._stream.flush()
            except BrokenPipeError:
                self._discard()
        return len(text)

    def flush(self) -> None:
        if not self._closed:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._discard()

    def _discard(self) -> None:
        self._closed = True
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass  # not a real file (e.g. captured by a test): nothing to flush at exit

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
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
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:  # a bad option (one line printed) or --help
        return exit.code if isinstance(exit.code, int) else 2
    stdout, sys.stdout = sys.stdout, _GuardedStdout(sys.stdout)
    try:
        result = args.func(args)
    except LumosError as err:
        print(f"lumos {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 2
    except OSError as err:  # refused by the system midway: disk full, permissions, ...
        path = err.filename2 or err.filename  # a rename names its target second
        where = f": {path}" if path else ""
        print(f"lumos {args.command}: error: {err.strerror or one_line(err)}{where}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as err:
        if not out_of_memory(err):
            raise
        print(
            f"lumos {args.command}: error: out of memory ({one_line(err)[:160]}); ask for "
            "less at once (smaller sizes, fewer frames or prompts, a smaller --batch-size)",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(f"lumos {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        sys.stdout = stdout
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
