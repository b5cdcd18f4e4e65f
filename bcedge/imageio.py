"""Atomic image and file writes: a temp file in the destination folder, then a rename.

Nothing a user already has is ever left half-written: either the old file or
the complete new one is there.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bcedge.errors import InputError


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None], *, durable: bool = False) -> Path:
    """Call ``write(tmp_path)`` then rename ``tmp_path`` onto ``path``.

    The temporary file lives in the destination folder (same file system, so the
    rename is atomic) and is removed when ``write`` fails. Atomic is not durable: a
    power cut may still lose the new file. ``durable=True`` (the DICOM node, which
    acknowledges only what is on disk) fsyncs the data before the rename and the
    folder after it.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp" + out.suffix, dir=out.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        # mkstemp makes the file 0600; give it the mode a plain open() would have.
        os.chmod(tmp, 0o666 & ~_umask())
        if durable:
            fsync_path(tmp)
        os.replace(tmp, out)
        if durable:
            fsync_path(out.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def fsync_path(path: str | os.PathLike[str]) -> None:
    """Flush a file's data, or a folder's entries (new, renamed or removed names), to disk."""
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if os.path.isdir(path) else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, durable: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically (and durably with ``durable=True``, see :func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), durable=durable)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """(H, W) float in [0, 1] (clipped), bool, or uint8 -> uint8 in [0, 255]."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == bool:
        return image.astype(np.uint8) * 255
    return np.rint(np.clip(image.astype(np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def write_png(path: str | os.PathLike[str], image: np.ndarray) -> Path:
    """Write a greyscale (H, W) or BGR (H, W, 3) image as PNG, atomically.

    Args:
        path: destination ``.png``.
        image: float in [0, 1] (scaled to 8 bits), bool, uint8 or uint16 (kept 16-bit).
    """
    import cv2

    arr = image if image.dtype in (np.uint8, np.uint16) else to_uint8(image)
    ok, buf = cv2.imencode(".png", arr)
    if not ok:
        raise InputError(f"{path}: could not encode a PNG from an array of shape {image.shape}, dtype {image.dtype}")
    return atomic_write_bytes(path, buf.tobytes())


def json_default(value: Any) -> Any:
    """``json.dumps(..., default=json_default)``: NumPy scalars and arrays, paths, sets and tuples as JSON.

    Raises:
        TypeError: anything else (as ``json.dumps`` expects from ``default``).
    """
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
