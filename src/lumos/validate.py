"""Checks for user-supplied values and output paths: the one place these rules live.

Every command line option, config value and output path a user gives goes through these
functions before any work starts. A bad value raises :class:`lumos.errors.LumosError` with a
one-line message naming the value and the allowed range. The ``*_arg`` factories wrap the same
checks as argparse ``type=`` callables, so a bad option is rejected while parsing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from lumos.errors import LumosError

MAX_SEED = 2**63 - 1  # seeds feed torch generators and NumPy SeedSequences: 0 .. 2^63 - 1
MAX_THREADS = max(16, 4 * (os.cpu_count() or 1))  # more CPU threads than this only thrashes


def _interval(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    if lo is not None and hi is not None:
        return f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo:g}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {hi:g}"
    return ""


def integer(name: str, value: Any, lo: int | None = None, hi: int | None = None) -> int:
    """``value`` as an int in ``lo..hi`` (inclusive). Booleans, floats (even ``12.0``) and
    non-numeric strings are refused; the string ``"12"`` (a command line) is 12."""
    original = value
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            value = None
    allowed = (
        f" {lo}..{hi}"
        if lo is not None and hi is not None
        else f" >= {lo}"
        if lo is not None
        else f" <= {hi}"
        if hi is not None
        else ""
    )
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or (lo is not None and value < lo)
        or (hi is not None and value > hi)
    ):
        raise LumosError(f"{name} must be an integer{allowed}, got {original!r}")
    return value


def number(
    name: str,
    value: Any,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
) -> float:
    """``value`` as a finite float in the interval given by ``lo``/``hi`` (open ends with
    ``lo_open``/``hi_open``). NaN, infinities, booleans and non-numeric strings are refused."""
    original = value
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            value = None
    ok = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and not (lo is not None and (value <= lo if lo_open else value < lo))
        and not (hi is not None and (value >= hi if hi_open else value > hi))
    )
    if not ok:
        allowed = _interval(lo, hi, lo_open, hi_open)
        raise LumosError(f"{name} must be a finite number {allowed}".rstrip() + f", got {original!r}")
    return float(value)


def choice(name: str, value: Any, allowed: Iterable[Any]) -> Any:
    """``value`` if it is one of ``allowed``."""
    allowed = list(allowed)
    if value not in allowed:
        raise LumosError(f"{name} must be one of {', '.join(map(str, allowed))}; got {value!r}")
    return value


def known_keys(name: str, data: Mapping[str, Any], known: Iterable[str]) -> None:
    """Reject keys of a config mapping that are not in ``known``, listing the known ones (the
    policy of every lumos config file: a misspelt key is an error, never silently ignored)."""
    known = sorted(known)
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise LumosError(f"{name} has unknown keys {unknown}; known: {known}")


def boolean(name: str, value: Any) -> bool:
    """``value`` if it is True or False (not 0/1 or a string)."""
    if not isinstance(value, bool):
        raise LumosError(f"{name} must be true or false, got {value!r}")
    return value


def pair(
    name: str,
    value: Any,
    lo: float | None = None,
    hi: float | None = None,
    kind: type = int,
    hi_open: bool = False,
) -> tuple:
    """``value`` (a list or tuple of two numbers of ``kind``, each in ``lo..hi``) as a tuple."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise LumosError(f"{name} must be a pair [a, b], got {value!r}")
    if kind is int:
        return tuple(integer(f"{name}[{i}]", v, lo, hi) for i, v in enumerate(value))
    return tuple(number(f"{name}[{i}]", v, lo, hi, hi_open=hi_open) for i, v in enumerate(value))


def seed(name: str, value: Any) -> int:
    """A seed: an integer in 0..MAX_SEED."""
    return integer(name, value, 0, MAX_SEED)


def threads(name: str, value: Any) -> int:
    """A CPU thread count: an integer in 1..MAX_THREADS."""
    return integer(name, value, 1, MAX_THREADS)


# ---- argparse types ----------------------------------------------------------------------


def _arg(check: Callable[[str], Any], label: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return check(text)
        except LumosError as err:
            # argparse prefixes "argument --name: "; drop our own "value must" subject.
            raise argparse.ArgumentTypeError(str(err).removeprefix("value ")) from None

    parse.__name__ = label  # shown by argparse in "invalid <label> value" messages
    return parse


def int_arg(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    """An argparse ``type=`` for an integer in ``lo..hi``."""
    return _arg(lambda text: integer("value", text, lo, hi), "int")


def float_arg(
    lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False
) -> Callable[[str], float]:
    """An argparse ``type=`` for a finite float in the given interval."""
    return _arg(lambda text: number("value", text, lo, hi, lo_open, hi_open), "float")


SEED_ARG = int_arg(0, MAX_SEED)
THREADS_ARG = int_arg(1, MAX_THREADS)


# ---- paths -------------------------------------------------------------------------------


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False


def output_path(
    path: str | os.PathLike,
    kind: str = "file",
    inputs: Iterable[str | os.PathLike | None] = (),
    what: str = "output",
) -> Path:
    """Check, before any work, that ``path`` can be written as a ``kind`` (``"file"`` or
    ``"dir"``): it is not one of ``inputs`` (nor inside an input directory for files), an
    existing entry has the right kind, and the nearest existing parent is a writable
    directory. Creates nothing."""
    p = Path(path)
    for given in inputs:
        if given is not None and _same(p, Path(given)):
            raise LumosError(f"{what} {p} is also an input ({given}); choose another path")
    if p.exists():
        if kind == "file" and p.is_dir():
            raise LumosError(f"{what} {p} is a directory; give a file name")
        if kind == "dir" and not p.is_dir():
            raise LumosError(f"{what} {p} is an existing file; give a directory")
        _probe(p if kind == "dir" else p.parent, p, what)
        return p
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise LumosError(f"{what} {p}: {parent} is a file, not a directory")
    _probe(parent, p, what)
    return p


def _probe(folder: Path, path: Path, what: str) -> None:
    """Create (and drop) an unnamed file in ``folder``: the only reliable writability test
    (permissions, read-only mounts, root)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise LumosError(f"{what} {path}: cannot write in {folder} ({err.strerror})") from None


def input_file(path: str | os.PathLike, what: str = "file") -> Path:
    """``path`` if it is an existing regular file."""
    p = Path(path)
    if p.is_dir():
        raise LumosError(f"{what} {p} is a directory, not a file")
    if not p.is_file():
        raise LumosError(f"{what} {p} does not exist")
    return p


def read_json_object(path: str | os.PathLike, what: str = "file") -> dict:
    """The JSON object (a mapping) stored in an existing UTF-8 file."""
    text = read_text(path, what)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise LumosError(f"{what} {path} is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise LumosError(f"{what} {path} must hold a JSON object, got {type(data).__name__}")
    return data


def read_text(path: str | os.PathLike, what: str = "file") -> str:
    """UTF-8 text of an existing file, with a leading byte-order mark removed."""
    p = input_file(path, what)
    try:
        return p.read_bytes().decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as err:
        raise LumosError(
            f"{what} {p} is not UTF-8 text (byte {err.start}); save it as UTF-8"
        ) from None
    except OSError as err:
        raise LumosError(f"cannot read {what} {p}: {err.strerror}") from None
