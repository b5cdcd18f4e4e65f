"""Dynamic-batch models get at most MAX_DYNAMIC_BATCH images per call (memory stays bounded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bcedge.backends.base import MAX_DYNAMIC_BATCH, Backend


class _Recorder(Backend):
    name = "recorder"

    def _open(self) -> tuple[int | None, int, int, int]:
        self.calls: list[int] = []
        return (None, 16, 16, 1)

    def _predict(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append(batch.shape[0])
        return batch * 0.5


def test_dynamic_batch_is_chunked(tmp_path: Path) -> None:
    model_file = tmp_path / "with space" / "m.bin"
    model_file.parent.mkdir()
    model_file.write_bytes(b"x")
    x = np.random.default_rng(0).random((2 * MAX_DYNAMIC_BATCH + 3, 16, 16, 1)).astype(np.float32)
    with _Recorder(model_file) as backend:
        out = backend.predict(x)
        assert backend.calls == [MAX_DYNAMIC_BATCH, MAX_DYNAMIC_BATCH, 3]
    assert np.allclose(out, x * 0.5)
