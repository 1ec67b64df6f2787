"""Atomic file output: a file appears whole or not at all (temporary file, fsync, rename)."""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: Permissions of written files: what ``open`` would give (0666 less the umask), not mkstemp's 0600.
_FILE_MODE = 0o666 & ~_umask()


def _atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_bytes(path: str | Path, data: bytes) -> None:
    """Atomically write ``data`` to ``path``."""
    _atomic(Path(path), lambda fh: fh.write(data))


def write_text(path: str | Path, text: str) -> None:
    """Atomically write ``text`` to ``path``."""
    write_bytes(path, text.encode())


def write_png(path: str | Path, fig: Any, dpi: float | None = None) -> None:
    """Atomically write a matplotlib ``Figure`` as PNG. Build it with ``matplotlib.figure.Figure``
    (not pyplot): no global backend is switched, so this is safe inside a user's notebook."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    write_bytes(path, buf.getvalue())


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON to ``path``."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_torch(path: str | Path, obj: Any) -> None:
    """Atomically ``torch.save`` ``obj`` to ``path``."""
    _atomic(Path(path), lambda fh: torch.save(obj, fh))


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSON-lines file, ignoring a torn last line left by a killed writer."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows
