"""Atomic image and file writes: a temp file in the destination folder, then a rename.

Nothing a user already has is ever left half-written: either the old file or
the complete new one is there.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
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
    # The temporary name carries at most 64 bytes of the final one, so a 255-byte file name
    # still has a temporary that the file system accepts.
    fd, tmp = tempfile.mkstemp(
        prefix=f".{_clip_utf8(out.name, 64)}.", suffix=".tmp" + _clip_utf8(out.suffix, 16), dir=out.parent
    )
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


def _clip_utf8(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` UTF-8 bytes, never inside a character."""
    return text.encode("utf-8", "surrogateescape")[:max_bytes].decode("utf-8", "ignore")


def _checkpoint(step: str) -> None:
    """Called between the steps of :func:`replace_files`; tests replace it to inject a failure after each step."""


def replace_files(files: Mapping[Path, bytes], *, durable: bool = False) -> list[Path]:
    """Write several files all-or-nothing: afterwards either every one has its new content or none changed.

    Steps: (1) write every new content to a temporary file beside its destination; (2) keep each
    existing destination under a backup name (a hard link, so the file never disappears; a copy
    where the file system has no hard links); (3) rename the temporaries into place; (4) remove
    the backups. A failure in any step removes the temporaries, puts every backup back over the
    file that replaced it, removes new files that had no predecessor, and re-raises: a re-run that
    fails part-way never loses or half-replaces what the previous run wrote. Temporary and backup
    names are short (``.bcedge-XXXXXXXX.tmp``), whatever the destination's length.

    Args:
        files: destination -> content. Parent folders must exist.
        durable: fsync the data before the renames and the folders after (see :func:`atomic_write`).

    Returns:
        The destinations, in the order given.

    Raises:
        OSError: a step failed (everything was rolled back first, as far as the OS allowed).
    """
    dests = [Path(p) for p in files]
    temps: dict[Path, str] = {}
    backups: dict[Path, str] = {}
    replaced: list[Path] = []
    mode = 0o666 & ~_umask()
    try:
        for dest in dests:
            fd, tmp = tempfile.mkstemp(prefix=".bcedge-", suffix=".tmp", dir=dest.parent)
            temps[dest] = tmp
            with os.fdopen(fd, "wb") as fh:
                fh.write(files[dest])
                if durable:
                    fh.flush()
                    os.fsync(fh.fileno())
            os.chmod(tmp, mode)
            _checkpoint(f"write {dest.name}")
        for dest in dests:
            if os.path.lexists(dest):
                backups[dest] = _backup(dest)
                _checkpoint(f"backup {dest.name}")
        for dest in dests:
            os.replace(temps[dest], dest)
            del temps[dest]
            replaced.append(dest)
            _checkpoint(f"rename {dest.name}")
        if durable:
            for folder in {dest.parent for dest in dests}:
                fsync_path(folder)
    except BaseException:
        _roll_back(replaced, backups, temps)
        raise
    for backup in backups.values():
        _unlink_quietly(backup)
    return dests


def _backup(dest: Path) -> str:
    """A new name in ``dest``'s folder for the same file (hard link; copy without link support)."""
    for _ in range(100):
        name = os.path.join(dest.parent, f".bcedge-{os.urandom(4).hex()}.bak")
        try:
            os.link(dest, name, follow_symlinks=False)
            return name
        except FileExistsError:
            continue
        except OSError:  # no hard links here (FAT, some network file systems): a copy keeps the content
            shutil.copy2(dest, name, follow_symlinks=False)
            return name
    raise FileExistsError(f"no free backup name in {dest.parent}")


def _roll_back(replaced: list[Path], backups: dict[Path, str], temps: dict[Path, str]) -> None:
    """Undo :func:`replace_files`: restore replaced files, drop new ones, remove temporaries and backups."""
    for dest in replaced:
        if dest in backups:
            backup = backups.pop(dest)
            # On failure the backup stays on disk under its .bak name: better than losing it.
            with contextlib.suppress(OSError):
                os.replace(backup, dest)
        else:
            _unlink_quietly(dest)
    for name in [*temps.values(), *backups.values()]:
        _unlink_quietly(name)


def _unlink_quietly(path: str | os.PathLike[str]) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


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
