"""Keras backend: the ``.keras`` reference model (desktop only).

Every exported artifact is measured against this one. It runs on whichever
Keras backend is configured (``KERAS_BACKEND``: tensorflow, jax or torch). Models are
loaded with ``compile=False`` and no custom objects: bcedge models are built from stock
Keras layers, and only their compiled loss and metrics (training's custom objects) are
custom, which ``compile=False`` never deserialises. So the runtime does not import the
``training`` package (the layer rule; ``tests/test_backend_keras_standalone.py`` loads a
model saved by ``bcedge train``'s compile step with ``training`` blocked).

``threads`` is recorded but not applied: Keras' thread pools are process-wide
framework settings that must be fixed before the framework starts.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from bcedge.backends.base import Backend
from bcedge.errors import InputError, MissingDependencyError


class KerasBackend(Backend):
    """Run a ``.keras`` model with ``model(x, training=False)``."""

    name = "keras"
    options = ()

    def _open(self) -> tuple[int | None, int, int, int]:
        try:
            import keras
        except ImportError:
            raise MissingDependencyError("the keras backend", "train", "keras") from None
        self._keras = keras
        try:
            if self.content is None:
                self._model = keras.models.load_model(self.path, compile=False)
            else:
                # Keras loads from a path only: the verified bytes go to a file in a folder only this
                # process can write (0700), so nobody can swap what is loaded.
                with tempfile.TemporaryDirectory(prefix="bcedge-model-") as folder:
                    private = Path(folder) / f"model{self.path.suffix or '.keras'}"
                    private.write_bytes(self.content)
                    self._model = keras.models.load_model(private, compile=False)
        except Exception as exc:  # Keras raises ValueError, TypeError, OSError, zipfile errors... for a bad file
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(f"{self.path} is not a Keras model this Keras can load: {first}") from exc
        shape = self._model.input_shape
        if isinstance(shape, list):
            if len(shape) != 1:
                raise InputError(f"{self.path} has {len(shape)} inputs; bcedge models have one")
            shape = shape[0]
        self.details.update(
            keras_version=keras.__version__,
            keras_backend=keras.backend.backend(),
            threads_applied=False,
            params=int(self._model.count_params()),
        )
        if len(shape) != 4 or any(d is None for d in shape[1:]):
            raise InputError(f"{self.path} input has shape {shape}; expected (N, S, S, 1) with fixed S")
        return shape[0], int(shape[1]), int(shape[2]), int(shape[3])

    def _predict(self, batch: np.ndarray) -> np.ndarray:
        out = self._model(batch, training=False)
        if isinstance(out, (list, tuple)):
            out = out[0]
        return self._keras.ops.convert_to_numpy(out)

    def _close(self) -> None:
        self._model = None
