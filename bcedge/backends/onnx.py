"""onnxruntime backend: ``.onnx`` models on the TensorRT, CUDA or CPU execution provider.

By default the session asks for TensorRT, then CUDA, then CPU, keeping those
this onnxruntime build offers (``onnxruntime.get_available_providers()``); the
providers actually used are in :attr:`Backend.details`. Input and output names
come from the model; a float16 model input is fed float16 and its output
converted back to float32.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bcedge.backends.base import Backend
from bcedge.errors import ConfigError, InputError, MissingDependencyError

#: Providers asked for when none are given, best first (filtered by what is installed).
DEFAULT_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def _import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependencyError("the onnx backend", "onnx", "onnxruntime") from None
    return onnxruntime


def gpu_providers() -> list[str]:
    """GPU execution providers this onnxruntime offers (empty when none, or onnxruntime is missing)."""
    try:
        import onnxruntime
    except ImportError:
        return []
    available = onnxruntime.get_available_providers()
    return [p for p in GPU_PROVIDERS if p in available]


class OnnxBackend(Backend):
    """Run an ``.onnx`` model with onnxruntime.

    Options:
        providers: execution providers in priority order, as onnxruntime takes them
            (names, or ``(name, options)`` pairs); default :data:`DEFAULT_PROVIDERS`
            filtered by availability. A name this build lacks is a ConfigError.

    ``threads`` sets ``intra_op_num_threads`` (and one inter-op thread).
    """

    name = "onnx"
    options = ("providers",)

    def _open(self, providers: list[Any] | tuple[Any, ...] | None = None) -> tuple[int | None, int, int, int]:
        ort = _import_ort()
        available = ort.get_available_providers()
        if providers is None:
            providers = [p for p in DEFAULT_PROVIDERS if p in available]
        else:
            for entry in providers:
                pname = entry[0] if isinstance(entry, (tuple, list)) else entry
                if pname not in available:
                    raise ConfigError(
                        f"onnxruntime provider {pname!r} is not available here; this build has {', '.join(available)}"
                    )
        options = ort.SessionOptions()
        if self.threads is not None:
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
        try:
            model = self.content if self.content is not None else str(self.path)
            self._session = ort.InferenceSession(model, sess_options=options, providers=list(providers))
        except Exception as exc:  # onnxruntime raises its own pybind exception types (InvalidProtobuf, Fail...)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(f"{self.path} is not an ONNX model onnxruntime can load: {first}") from exc
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or not outputs:
            raise InputError(f"{self.path} has {len(inputs)} inputs and {len(outputs)} outputs; expected 1 and >= 1")
        inp = inputs[0]
        if inp.type not in _TYPES or outputs[0].type not in _TYPES:
            raise InputError(f"{self.path} takes {inp.type} and returns {outputs[0].type}; expected float tensors")
        self._in_name, self._out_name = inp.name, outputs[0].name
        self._in_dtype = _TYPES[inp.type]
        dims = [d if isinstance(d, int) and d > 0 else None for d in inp.shape]
        if len(dims) != 4 or any(d is None for d in dims[1:]):
            raise InputError(
                f"{self.path} input {inp.name!r} has shape {inp.shape}; expected (N, S, S, 1) with fixed S"
            )
        self.details.update(
            runtime_version=ort.__version__,
            providers=self._session.get_providers(),
            input_name=self._in_name,
            output_name=self._out_name,
            input_dtype=np.dtype(self._in_dtype).name,
            output_dtype=np.dtype(_TYPES[outputs[0].type]).name,
            batch="dynamic" if dims[0] is None else dims[0],
        )
        return dims[0], dims[1], dims[2], dims[3]

    def _predict(self, batch: np.ndarray) -> np.ndarray:
        x = batch.astype(self._in_dtype, copy=False)
        (out,) = self._session.run([self._out_name], {self._in_name: x})
        return np.asarray(out, dtype=np.float32)

    def _close(self) -> None:
        self._session = None
