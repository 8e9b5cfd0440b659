"""Atomic writes: a file (or directory) appears complete under its name or not at all.

Data is written to a temporary name next to the target (``.<stem>.<pid>-<hex>.tmp<suffix>``)
and renamed over it. A process killed mid-write leaves its temporary behind; the next write
into the same directory removes temporaries whose writing process no longer runs.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_TMP = re.compile(r"^\..*\.(\d+)-[0-9a-f]{8}\.tmp(\.[^.]*)?$")
_cleaned: set[Path] = set()  # directories already swept by this process


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete temporaries in ``folder`` left by writers that no longer run; returns them."""
    folder = Path(folder)
    removed = []
    if folder.is_dir():
        for entry in folder.iterdir():
            m = _TMP.match(entry.name)
            if m and not entry.is_symlink() and not _alive(int(m.group(1))):
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                removed.append(entry)
    return removed


def temporary_name(path: str | os.PathLike) -> Path:
    """A fresh temporary path next to ``path`` with the same suffix (so writers that pick a
    format from the suffix still work)."""
    path = Path(path)
    return path.with_name(f".{path.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{path.suffix}")


def _prepare(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = path.parent.resolve()
    if folder not in _cleaned:
        remove_stale_temporaries(folder)
        _cleaned.add(folder)
    return temporary_name(path)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; it is renamed over ``path`` when the block succeeds
    and deleted when it fails. The parent directory is created."""
    path = Path(path)
    tmp = _prepare(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary directory to fill; it replaces the directory ``path`` when the
    block succeeds (the old one is removed just before the rename) and is deleted when it
    fails."""
    path = Path(path)
    tmp = _prepare(path)
    tmp.mkdir()
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
