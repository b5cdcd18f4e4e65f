"""The backend contract: one float32 NHWC batch in, one float32 probability batch out.

After Polygraphy's runners: the base class checks the input once (type, dtype,
shape, value range), splits it to the model's batch size and checks what comes
back; each backend only loads its model (:meth:`Backend._open`) and runs one
already-valid batch (:meth:`Backend._predict`). Quantisation and dequantisation
live inside the backend (DESIGN.md, invariant 4), so every caller hands over
the same tensor :func:`bcedge.preprocess.preprocess` produced.

Backends import their library in :meth:`Backend._open`, never at module import.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

import numpy as np

from bcedge.errors import ConfigError, InputError

#: Inputs may stray this far outside [0, 1] (float round-off in preprocessing) and are clipped.
RANGE_TOLERANCE = 1e-6


#: Largest batch handed to a dynamic-batch model in one call (larger inputs are chunked).
MAX_DYNAMIC_BATCH = 8


class Backend(ABC):
    """A loaded model that maps (N, S, S, 1) float32 images in [0, 1] to probabilities.

    Subclasses set :attr:`name` and :attr:`options`, and implement :meth:`_open`
    and :meth:`_predict` (and :meth:`_close` when they hold resources).

    Args:
        path: model file (``.keras``, ``.tflite``, ``.onnx``, ``.engine``...).
        threads: CPU threads for inference (None: the library's default).
        content: the model file's bytes, already read (and verified against a manifest by
            :meth:`bcedge.bundle.Bundle.open`): the backend loads these bytes and never opens
            ``path`` (then only a name for messages), so a file swapped after the check cannot run.
        **options: backend-specific options, listed in :attr:`options`.

    Raises:
        InputError: the model file is missing or does not take/return (N, S, S, 1) tensors.
        ConfigError: an unknown option or an invalid thread count.
    """

    name: ClassVar[str]
    #: Keyword options this backend accepts besides ``threads``.
    options: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self, path: str | os.PathLike[str], *, threads: int | None = None, content: bytes | None = None, **options: Any
    ) -> None:
        self.path = Path(path)
        #: The model bytes given to the runtime, when they were read (and verified) by the caller.
        self.content = content
        if content is None and not self.path.exists():
            raise InputError(f"{self.name} model {self.path} does not exist")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ConfigError(f"threads is {threads!r}; expected a positive integer or None (library default)")
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            accepted = ", ".join(("threads", *self.options))
            raise ConfigError(f"the {self.name} backend has no option(s) {unknown}; it accepts {accepted}")
        self.threads = threads
        self._closed = False
        #: What was actually used (runtime, delegate, providers, I/O dtypes...), for reports.
        self.details: dict[str, Any] = {"backend": self.name, "path": str(self.path), "threads": threads}
        shape = tuple(self._open(**options))
        if (
            len(shape) != 4
            or shape[3] != 1
            or not isinstance(shape[1], int)
            or shape[1] != shape[2]
            or (shape[0] is not None and (not isinstance(shape[0], int) or shape[0] < 1))
        ):
            self.close()
            raise InputError(
                f"{self.path} takes input of shape {shape}; bcedge models take (N, S, S, 1) NHWC square images"
            )
        self._input_shape: tuple[int | None, int, int, int] = (shape[0], shape[1], shape[2], 1)
        self.details["input_shape"] = list(self._input_shape)

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"input {self._input_shape}"
        return f"{type(self).__name__}({str(self.path)!r}, {state})"

    @property
    def input_shape(self) -> tuple[int | None, int, int, int]:
        """(N, S, S, 1): N is the model's fixed batch size, or None when any batch size runs."""
        return self._input_shape

    @property
    def input_size(self) -> int:
        """Side S of the square model input."""
        return self._input_shape[1]

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Run the model on a batch of preprocessed images.

        Args:
            batch: (N, S, S, 1) float32 NHWC in [0, 1] (float64 is converted; values up to
                :data:`RANGE_TOLERANCE` outside [0, 1] are clipped), N >= 1, any N: batches
                are split (and the last one zero-padded) to a fixed model batch size.

        Returns:
            (N, S, S, 1) float32 probabilities in [0, 1].

        Raises:
            InputError: not an ndarray, wrong dtype, rank, channel count, size or value range,
                or the backend was closed.
        """
        if self._closed:
            raise InputError(f"the {self.name} backend for {self.path} is closed")
        x = self._check_input(batch)
        fixed = self._input_shape[0]
        if fixed is None and x.shape[0] > MAX_DYNAMIC_BATCH:
            # A dynamic-batch model would hold every image's activations at once: a 64-filter
            # UNet at 256x256 needs ~0.3 GB per image, and 52 validation images at once were
            # OOM-killed at 20 GB during an export. Run it in chunks instead.
            fixed_chunks = [x[i : i + MAX_DYNAMIC_BATCH] for i in range(0, x.shape[0], MAX_DYNAMIC_BATCH)]
            return np.concatenate([self._run(chunk) for chunk in fixed_chunks])
        if fixed is None or x.shape[0] == fixed:
            out = self._run(x)
        else:
            parts = []
            for start in range(0, x.shape[0], fixed):
                chunk = x[start : start + fixed]
                n = chunk.shape[0]
                if n < fixed:
                    # A fixed-batch model (TensorRT engine, TFLite batch 1...) needs a full batch.
                    pad = np.zeros((fixed - n, *chunk.shape[1:]), dtype=np.float32)
                    chunk = np.concatenate([chunk, pad])
                parts.append(self._run(chunk)[:n])
            out = np.concatenate(parts)
        return out

    def _run(self, x: np.ndarray) -> np.ndarray:
        out = np.asarray(self._predict(x))
        expected = (x.shape[0], *self._input_shape[1:])
        if out.shape != expected:
            if out.size == int(np.prod(expected)) and out.ndim in (3, 4):
                # (N, S, S) or (N, 1, S, S) with one channel: same values, canonical layout.
                out = out.reshape(expected)
            else:
                raise InputError(f"{self.path} returned shape {out.shape}; expected {expected} (N, S, S, 1)")
        # Sigmoid outputs run through fp16 or int8 can land a hair outside [0, 1].
        return np.clip(out.astype(np.float32, copy=False), 0.0, 1.0)

    def _check_input(self, batch: Any) -> np.ndarray:
        if not isinstance(batch, np.ndarray):
            raise InputError(f"predict takes a numpy array of shape (N, S, S, 1); got {type(batch).__name__}")
        if batch.dtype == np.float64:
            batch = batch.astype(np.float32)
        elif batch.dtype != np.float32:
            raise InputError(
                f"predict takes float32 images in [0, 1]; got dtype {batch.dtype} (convert with x.astype('float32'), "
                "scaling integers to [0, 1])"
            )
        _, size, _, _ = self._input_shape
        expected = f"(N, {size}, {size}, 1)"
        if batch.ndim != 4:
            raise InputError(f"predict takes a 4-D NHWC batch {expected}; got shape {batch.shape}")
        if batch.shape[3] != 1:
            raise InputError(f"predict takes one channel (NHWC, last dim 1) {expected}; got shape {batch.shape}")
        if batch.shape[1:3] != (size, size):
            raise InputError(f"{self.path} takes {expected} images; got shape {batch.shape}")
        if batch.shape[0] == 0:
            raise InputError(f"predict got an empty batch of shape {batch.shape}")
        lo, hi = float(batch.min()), float(batch.max())
        if not (lo >= -RANGE_TOLERANCE and hi <= 1.0 + RANGE_TOLERANCE):  # also catches NaN
            raise InputError(f"predict takes values in [0, 1] (preprocessed images); got min {lo:.6g}, max {hi:.6g}")
        if lo < 0.0 or hi > 1.0:
            batch = np.clip(batch, 0.0, 1.0)
        return np.ascontiguousarray(batch)

    @abstractmethod
    def _open(self, **options: Any) -> tuple[int | None, int, int, int]:
        """Load the model from :attr:`path`; return its input shape (N or None, S, S, 1)."""

    @abstractmethod
    def _predict(self, batch: np.ndarray) -> np.ndarray:
        """Run one valid batch: (n, S, S, 1) float32 in [0, 1], n == the fixed batch if any; return (n, S, S, 1)."""

    def _close(self) -> None:  # noqa: B027 (optional hook, most backends hold nothing to release)
        """Release library resources (sessions, interpreters, CUDA memory)."""

    def close(self) -> None:
        """Release the model; :meth:`predict` raises afterwards. Safe to call twice."""
        if not self._closed:
            self._closed = True
            self._close()

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    def __enter__(self) -> Backend:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
