"""bcedge's Keras backend loads a model saved by ``bcedge train`` without the ``training`` package.

The runtime must not import the desktop side (issue #13, the layer rule): a ``.keras`` file
saved with a compiled custom loss and :class:`training.losses.SegmentationMetric` is loaded
with ``compile=False``, so Keras never deserialises the loss or metrics and needs none of
training's custom objects. The check runs in a fresh process where importing ``training``
fails, and compares that backend's output with the model that was saved.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

_LOAD_WITHOUT_TRAINING = textwrap.dedent(
    """
    import importlib.abc, sys
    import numpy as np

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "training":
                raise ImportError(f"blocked in this test: {name}")
            return None

    sys.meta_path.insert(0, Block())
    from bcedge.backends.keras import KerasBackend

    backend = KerasBackend(sys.argv[1])
    x = np.load(sys.argv[2])
    np.save(sys.argv[3], backend.predict(x))
    leaked = sorted(m for m in sys.modules if m.split(".")[0] == "training")
    assert not leaked, leaked
    print("PARAMS", backend.details["params"])
    """
)


@pytest.fixture(scope="module")
def trained_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    """A 32-px UNet compiled as ``bcedge train`` compiles it (custom loss and metrics), saved as .keras.

    Returns:
        (path, input (2, 32, 32, 1) float32, the saved model's output for it (2, 32, 32, 1) float32).
    """
    keras = pytest.importorskip("keras")
    from training.losses import default_metrics, get_loss
    from training.models import build_model

    keras.utils.set_random_seed(0)
    model = build_model("unet", 32, base_filters=4)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=get_loss("bce-dice"), metrics=default_metrics())
    x = np.random.default_rng(0).random((2, 32, 32, 1), dtype=np.float32)
    y = np.random.default_rng(1).random((2, 32, 32, 1)) > 0.7
    model.fit(x, y.astype(np.float32), epochs=1, verbose=0)  # the saved file holds a compiled, trained state
    path = tmp_path_factory.mktemp("keras model") / "best.keras"
    model.save(path)
    return path, x, np.asarray(model(x, training=False), dtype=np.float32)


def test_keras_backend_loads_without_training(
    trained_file: tuple[Path, np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    path, x, expected = trained_file
    np.save(tmp_path / "x.npy", x)
    proc = subprocess.run(
        [sys.executable, "-c", _LOAD_WITHOUT_TRAINING, str(path), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout.split("PARAMS")[1].split()[0]) > 0
    got = np.load(tmp_path / "y.npy")
    assert got.shape == expected.shape == (2, 32, 32, 1)
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_blocker_really_blocks(tmp_path: Path) -> None:
    """The import blocker itself must fail on ``import training`` (guards against a vacuous test)."""
    script = _LOAD_WITHOUT_TRAINING.replace("from bcedge.backends.keras import KerasBackend", "import training")
    proc = subprocess.run([sys.executable, "-c", script, "a", "b", "c"], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "blocked in this test: training" in proc.stderr
