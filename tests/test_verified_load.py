"""The model that runs is the model that was verified: bytes read once, hashed, given to the runtime.

A second process swaps the artifact file between the bundle's model (A) and another model (B)
as fast as it can while this one opens the bundle again and again. Every open must either be
refused (the bytes read were B's: hash mismatch) or run A; never B.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from bench_fixtures import make_tiny_bundle

from bcedge.bundle import load_bundle
from bcedge.errors import BundleError

pytest.importorskip("ai_edge_litert")

_SWAPPER = textwrap.dedent(
    """
    import os, sys, time
    target, a, b, stop = sys.argv[1:5]
    blobs = [open(a, "rb").read(), open(b, "rb").read()]
    i = 0
    while not os.path.exists(stop):
        tmp = f"{target}.swap{i % 2}"
        with open(tmp, "wb") as fh:
            fh.write(blobs[i % 2])
        os.replace(tmp, target)
        i += 1
    print(i)
    """
)


def _other_model(data: bytes) -> bytes:
    """The same network with the output bias -11 turned into +11: other probabilities everywhere."""
    old, new = np.float32(-11.0).tobytes(), np.float32(11.0).tobytes()
    assert data.count(old) == 1
    return data.replace(old, new)


@pytest.mark.parametrize("backend", ["tflite", "onnx"])
def test_concurrent_swap_never_runs_another_model(backend: str, tmp_path: Path) -> None:
    if backend == "onnx":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnx")
    bundle = load_bundle(make_tiny_bundle(tmp_path / "bundle"))
    record = bundle.artifact(backend=backend)
    target = bundle.dir / record.file
    a_bytes = target.read_bytes()
    (tmp_path / "a").write_bytes(a_bytes)
    (tmp_path / "b").write_bytes(_other_model(a_bytes))
    x = np.random.default_rng(0).random((1, bundle.input_size, bundle.input_size, 1), dtype=np.float32)
    with bundle.open(record) as model:
        expected = model.predict(x)
    stop = tmp_path / "stop"
    swapper = subprocess.Popen(
        [sys.executable, "-c", _SWAPPER, str(target), str(tmp_path / "a"), str(tmp_path / "b"), str(stop)],
        stdout=subprocess.PIPE,
        text=True,
    )
    ran_a = refused = ran_other = 0
    try:
        deadline = time.monotonic() + 20
        while (ran_a < 20 or refused < 20) and time.monotonic() < deadline:
            try:
                model = bundle.open(record)
            except BundleError as exc:
                assert "tampered" in str(exc) or "missing" in str(exc)
                refused += 1
                continue
            with model:
                got = model.predict(x)
            if np.allclose(got, expected, atol=1e-6):
                ran_a += 1
            else:
                ran_other += 1
    finally:
        stop.touch()
        swaps = int(swapper.communicate(timeout=30)[0] or 0)
    assert ran_other == 0, f"{ran_other} opens ran a model other than the verified one"
    # Both outcomes happened: the swapper really interfered, and verified opens still ran A.
    assert ran_a > 0 and refused > 0, (ran_a, refused, swaps)


@pytest.mark.parametrize("backend", ["tflite", "onnx"])
def test_open_never_reads_the_path_after_the_check(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The artifact file is deleted right after its bytes were verified: the backend still opens."""
    if backend == "onnx":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnx")
    from bcedge.bundle import Bundle

    bundle = load_bundle(make_tiny_bundle(tmp_path / "bundle"))
    record = bundle.artifact(backend=backend)
    real = Bundle.read_artifact

    def read_then_delete(self: Bundle, rec, verify: bool = True) -> bytes:
        data = real(self, rec, verify)
        (self.dir / rec.file).unlink()
        return data

    monkeypatch.setattr(Bundle, "read_artifact", read_then_delete)
    with bundle.open(record) as model:
        assert model.content is not None and len(model.content) == record.size_bytes
        assert model.predict(np.zeros((1, bundle.input_size, bundle.input_size, 1), np.float32)).shape[0] == 1
    assert not (bundle.dir / record.file).exists()
