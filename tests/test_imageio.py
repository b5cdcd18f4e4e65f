"""Atomic writes: complete file or the old one, normal permissions, no temp files left."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import cv2
import numpy as np
import pytest

from bcedge.imageio import atomic_write, atomic_write_bytes, to_uint8, write_png


def test_png_round_trip_and_mode(tmp_path: Path) -> None:
    out = tmp_path / "with space" / "img.png"
    img = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    write_png(out, img)
    back = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint8 and np.array_equal(back, to_uint8(img))
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~mask
    sixteen = (np.arange(64, dtype=np.uint16) * 1000).reshape(8, 8)
    write_png(out, sixteen)
    assert np.array_equal(cv2.imread(str(out), cv2.IMREAD_UNCHANGED), sixteen)


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    atomic_write_bytes(out, b"old")

    def broken(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(out, broken)
    assert out.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_durable_write_fsyncs_data_then_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    target = tmp_path / "with space" / "state.json"
    atomic_write_bytes(target, b"{}")
    assert synced == []  # atomic only
    atomic_write_bytes(target, b'{"n": 1}', durable=True)
    assert target.read_bytes() == b'{"n": 1}'
    assert len(synced) == 2 and synced[0].startswith(str(target.parent / ".state.json."))
    assert synced[1] == str(target.parent)


def test_json_default_converts_numpy_paths_and_refuses_the_rest() -> None:
    import json

    from bcedge.imageio import json_default

    doc = {"a": np.float32(0.5), "b": np.arange(3, dtype=np.int64), "p": Path("x y/z"), "t": (1, 2)}
    assert json.loads(json.dumps(doc, default=json_default)) == {"a": 0.5, "b": [0, 1, 2], "p": "x y/z", "t": [1, 2]}
    with pytest.raises(TypeError, match="object"):
        json.dumps({"o": object()}, default=json_default)
