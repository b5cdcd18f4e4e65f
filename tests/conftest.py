"""Shared fixtures: real-data location, a temp folder with a space, synthetic MG DICOMs.

Keep this file small and generic; fixtures used by one test module live in that module.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest


@pytest.fixture(scope="session", autouse=True)
def artifact_choice_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The suite's artifact choice (bcedge.choice): a private cache folder (never the user's
    ~/.cache) and the static order (``BCEDGE_CHOICE=static``: the acceptance check still runs, the
    timing does not), so results do not depend on how busy the machine is. Set in os.environ so the
    CLI subprocesses inherit it; tests/test_choice.py switches the timing back on."""
    saved = {k: os.environ.get(k) for k in ("XDG_CACHE_HOME", "BCEDGE_CHOICE")}
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg cache"))
    os.environ["BCEDGE_CHOICE"] = "static"
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def bcedge_data() -> Path:
    """The real-data folder from ``BCEDGE_DATA``; skips the test when it is unset or missing."""
    root = os.environ.get("BCEDGE_DATA")
    if not root:
        pytest.skip("BCEDGE_DATA is not set (point it at the shared data folder, e.g. ../shared/data)")
    path = Path(root)
    if not path.is_dir():
        pytest.skip(f"BCEDGE_DATA={root} is not a directory")
    return path


@pytest.fixture
def spaced_dir(tmp_path: Path) -> Path:
    """An empty folder whose path contains a space (catches quoting bugs)."""
    path = tmp_path / "with space"
    path.mkdir()
    return path


def full_range_ramp(bits: int, shape: tuple[int, int] = (64, 80), signed: bool = False) -> np.ndarray:
    """Row-major ramp over every representable stored value of ``bits`` bits (as far as the pixels allow).

    Returns:
        (H, W) uint16 from 0 to 2**bits - 1, or int16 from -2**(bits-1) to 2**(bits-1) - 1 when ``signed``.
    """
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    values = np.rint(np.linspace(lo, hi, shape[0] * shape[1])).astype(np.int64).reshape(shape)
    return values.astype(np.int16 if signed else np.uint16)


@pytest.fixture
def ramp() -> Callable[..., np.ndarray]:
    """:func:`full_range_ramp`: ``ramp(bits, shape=(64, 80), signed=False)``."""
    return full_range_ramp


@pytest.fixture
def write_mg(spaced_dir: Path) -> Callable[..., Path]:
    """Write a synthetic MG DICOM into :func:`spaced_dir`: ``write_mg(stored, name="scan.dcm", **MGTags fields)``."""
    from bcedge.dicom_write import MGTags, write_mg_dicom

    def _write(stored: np.ndarray, name: str = "scan.dcm", **tags: Any) -> Path:
        return write_mg_dicom(spaced_dir / name, stored, MGTags(**tags))

    return _write
