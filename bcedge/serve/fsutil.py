"""Durable file steps: data fsync'd before a rename, the folder fsync'd after it.

The node acknowledges a scan only after it is on disk, so every step here syncs: a file is
written and fsync'd under a temporary name, renamed, and the folder that holds the new name is
fsync'd (``bcedge.imageio.atomic_write(..., durable=True)`` for whole files). A rename inside
one file system is atomic, so after a crash either the old or the new state is there, never a mix.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

# bcedge.imageio (and NumPy with it, ~0.1-0.2 s of CPU) is imported on first use, not here: the node
# imports this module before it launches its worker processes, and after a kill -9 every spooled
# scan waits for that launch.


def fsync_path(path: str | os.PathLike[str]) -> None:
    """fsync a file or folder (:func:`bcedge.imageio.fsync_path`)."""
    from bcedge.imageio import fsync_path as sync

    sync(path)


def fsync_tree(path: Path) -> None:
    """fsync every file and folder under ``path`` (itself included)."""
    for folder, _dirs, files in os.walk(path):
        for name in files:
            fsync_path(Path(folder) / name)
        fsync_path(folder)


def write_temp(folder: Path, data: bytes, *, prefix: str = "") -> Path:
    """Write ``data`` to a new uniquely named file in ``folder`` and fsync it; returns its path.

    The file is created exclusively (never overwrites) and removed again if writing fails.
    """
    path = folder / f"{prefix}{uuid.uuid4().hex}.part"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)
    return path


def write_durable(path: Path, data: bytes) -> Path:
    """Replace ``path`` with ``data`` atomically and durably (temp file, fsync, rename, fsync folder)."""
    from bcedge.imageio import atomic_write_bytes

    return atomic_write_bytes(path, data, durable=True)


def write_json_durable(path: Path, obj: Any) -> Path:
    """:func:`write_durable` of ``obj`` as indented JSON (UTF-8)."""
    return write_durable(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def read_json(path: Path, default: Any = None) -> Any:
    """The JSON in ``path``, or ``default`` when it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default


def move_durable(src: Path, dst: Path) -> Path:
    """Rename ``src`` to ``dst`` (same file system) and fsync both parent folders."""
    os.replace(src, dst)
    fsync_path(dst.parent)
    if src.parent != dst.parent:
        fsync_path(src.parent)
    return dst


def remove_tree(path: Path) -> None:
    """Delete a file or folder if it exists (no error when it is already gone)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
