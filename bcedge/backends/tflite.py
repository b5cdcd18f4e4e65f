"""LiteRT / TFLite backend: ``.tflite`` models in fp32, fp16, dynamic-range or full int8.

The interpreter comes from ``ai_edge_litert`` (LiteRT, the successor of
tflite-runtime), else ``tflite_runtime`` (older Jetson images), else
``tensorflow.lite`` as a desktop-only last resort. On the CPU, LiteRT applies
XNNPACK as its default delegate (fp32, fp16 and int8 kernels); ``xnnpack=False``
selects the builtin kernels only (``BUILTIN_WITHOUT_DEFAULT_DELEGATES``), useful
to check a delegate-induced difference.

Quantisation lives here: when the model's input tensor is int8/uint8/int16 the
float image is quantised with that tensor's (scale, zero point), rounded and
clipped to the integer range; an integer output is dequantised the same way, so
callers always trade float32 in [0, 1] for float32 probabilities.

Any-width models (``bcedge export`` writes them by default: input signature (1, S, -1, 1)) run
only the block of columns that holds the image: the preprocessed square is zero outside the
breast, and a craniocaudal view's breast fills about half of it, so the model does half the work.
The block is a multiple of :data:`WIDTH_STEP` columns starting on a multiple of it (every
stride-2 layer keeps the square's sampling grid), at least :data:`MIN_WIDTH` wide; the
probabilities outside it are 0 (the input there is 0: padding or removed background). Inside,
they differ from the square's only through the convolutions' view of the cut-off zeros (and, for
dynamic-range INT8, the activation ranges it quantises with): on the 65 validation images of the
mass model the masks agreed with the square's at Dice >= 0.9915 (mean 0.9994) in FP16 and >= 0.93
(mean 0.9976) in dynamic INT8 (``benchmarks/bench_any_width.py``).
"""

from __future__ import annotations

import importlib.metadata
import logging
from typing import Any

import numpy as np

from bcedge.backends.base import Backend
from bcedge.cstderr import c_stderr_to_debug_log
from bcedge.errors import ConfigError, InputError, MissingDependencyError

#: Interpreter sources in the order ``runtime="auto"`` tries them: (runtime, pip distribution).
RUNTIMES: tuple[tuple[str, str], ...] = (
    ("ai_edge_litert", "ai-edge-litert"),
    ("tflite_runtime", "tflite-runtime"),
    ("tensorflow", "tensorflow"),
)
_INTEGER_TYPES = (np.int8, np.uint8, np.int16)
_FLOAT_TYPES = (np.float32,)
#: Column granularity of an any-width model's input: MobileNetV2 and the UNets downsample 5 times,
#: so blocks that are multiples of 32 keep every stride-2 layer on the square's sampling grid.
WIDTH_STEP = 32
#: Narrowest block run. The narrowest breast of the mass model's validation images took a
#: 160-column block; narrower blocks are not measured, so they are not run.
MIN_WIDTH = 128


def _import_runtime(runtime: str) -> tuple[Any, Any]:
    """(Interpreter class, OpResolverType enum) of ``runtime``; ImportError when not installed."""
    if runtime == "ai_edge_litert":
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    elif runtime == "tflite_runtime":
        from tflite_runtime.interpreter import Interpreter, OpResolverType
    else:
        import tensorflow as tf

        Interpreter, OpResolverType = tf.lite.Interpreter, tf.lite.experimental.OpResolverType
    return Interpreter, OpResolverType


def load_interpreter_class(runtime: str = "auto") -> tuple[str, Any, Any]:
    """Find an interpreter: (runtime name, Interpreter class, OpResolverType enum).

    Raises:
        ConfigError: unknown ``runtime``.
        MissingDependencyError: the requested runtime (or, for ``auto``, every runtime) is missing.
    """
    names = [name for name, _ in RUNTIMES]
    if runtime != "auto" and runtime not in names:
        raise ConfigError(f"unknown TFLite runtime {runtime!r}; expected auto or one of {', '.join(names)}")
    for name, dist in RUNTIMES:
        if runtime not in ("auto", name):
            continue
        try:
            interpreter, resolver = _import_runtime(name)
        except ImportError:
            if runtime == name:
                raise MissingDependencyError(f"the tflite backend with runtime={name}", "tflite", dist) from None
            continue
        return name, interpreter, resolver
    raise MissingDependencyError("the tflite backend", "tflite", "ai-edge-litert")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


class TFLiteBackend(Backend):
    """Run a ``.tflite`` model on the LiteRT interpreter.

    Options:
        runtime: ``auto`` (default), ``ai_edge_litert``, ``tflite_runtime`` or ``tensorflow``.
        xnnpack: True (default) keeps LiteRT's default XNNPACK delegate; False runs builtin kernels.
        columns: ``breast`` (default): an any-width model runs only the image's column block;
            ``square``: it runs the whole square, as a fixed-width model (for comparisons).

    A model with a dynamic batch dimension is resized to each batch; a model with a
    fixed batch (usually 1) gets its batch split by :meth:`Backend.predict`.
    """

    name = "tflite"
    options = ("runtime", "xnnpack", "columns")

    def _open(
        self, runtime: str = "auto", xnnpack: bool = True, columns: str = "breast"
    ) -> tuple[int | None, int, int, int]:
        if columns not in ("breast", "square"):
            raise ConfigError(f"columns is {columns!r}; expected breast or square")
        used, interpreter_cls, resolver = load_interpreter_class(runtime)
        source = {"model_content": self.content} if self.content is not None else {"model_path": str(self.path)}
        kwargs: dict[str, Any] = {**source, "num_threads": self.threads}
        if not xnnpack:
            kwargs["experimental_op_resolver_type"] = resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        try:
            # LiteRT's C++ prints "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." on fd 2
            # while it allocates; that line belongs in the debug log, not on every infer's terminal.
            with c_stderr_to_debug_log(f"{self.path}: LiteRT"):
                self._interp = interpreter_cls(**kwargs)
                # An any-width model is allocated here at its narrowest block (MIN_WIDTH columns), then
                # re-planned by its first call at that call's width. Allocating the square made XNNPACK plan
                # the graph for 512 columns first: a cold `bcedge infer` of the 2944x1920 phantom took 491
                # ms that way against 458 from 128 columns with bcedge/mass_model's dynamic artifact (532
                # against 468 with the one before it; interleaved fresh processes, 2-core Xeon, avx512_vnni,
                # exploratory A/B, session 20). Allocating here, not at the first call, keeps the delegate's
                # start-up (and its fd-2 chatter) inside this block.
                narrow = square_any_width(self._interp, width=None if columns == "square" else MIN_WIDTH)
                try:
                    self._interp.allocate_tensors()
                except (ValueError, RuntimeError):
                    if not narrow or columns == "square":
                        raise
                    # A runtime that cannot plan an open width: the square, as before (its first call
                    # then falls back to the square too, see _predict).
                    square_any_width(self._interp)
                    self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(f"{self.path} is not a TFLite model {used} can load: {first}") from exc
        inputs, outputs = self._interp.get_input_details(), self._interp.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise InputError(
                f"{self.path} has {len(inputs)} inputs and {len(outputs)} outputs; bcedge models have one of each"
            )
        self._in, self._out = inputs[0], outputs[0]
        for role, det in (("input", self._in), ("output", self._out)):
            if det["dtype"] not in _INTEGER_TYPES + _FLOAT_TYPES:
                raise InputError(
                    f"{self.path} {role} tensor is {np.dtype(det['dtype'])}; expected float32 or int8/uint8/int16"
                )
            if det["dtype"] in _INTEGER_TYPES and det["quantization"][0] == 0.0:
                raise InputError(f"{self.path} {role} tensor is {np.dtype(det['dtype'])} without quantisation scale")
        shape = [int(v) for v in self._in["shape"]]
        signature = _signature(self._in)
        self._any_width = _any_width(signature) and columns == "breast"
        if len(shape) != 4 or signature[1] < 1 or signature[3] < 1 or (signature[2] < 1 and not _any_width(signature)):
            raise InputError(f"{self.path} input has shape {signature}; expected (N, S, S, 1) with fixed S")
        self._dynamic = signature[0] < 1
        self._width = shape[2]  # the allocated width (MIN_WIDTH for an any-width model until its first call)
        self._batch = shape[0]
        if _any_width(signature):
            shape[2] = shape[1]  # the contract: (N, S, S, 1) in and out, whatever block runs
        self.details.update(
            runtime=used,
            runtime_version=_version(dict(RUNTIMES)[used]),
            delegate="XNNPACK (LiteRT default CPU delegate)" if xnnpack else "none (builtin kernels)",
            input_dtype=np.dtype(self._in["dtype"]).name,
            output_dtype=np.dtype(self._out["dtype"]).name,
            input_quantization=_qparams(self._in),
            output_quantization=_qparams(self._out),
            batch="dynamic" if self._dynamic else shape[0],
            input_width=f"any (multiple of {WIDTH_STEP}, the breast's columns)"
            if self._any_width
            else (f"{shape[2]} (any-width model run square)" if _any_width(signature) else shape[2]),
        )
        return None if self._dynamic else shape[0], shape[1], shape[2], shape[3]

    def _resize(self, shape: list[int]) -> None:
        self._interp.resize_tensor_input(self._in["index"], shape)
        self._interp.allocate_tensors()

    def _predict(self, batch: np.ndarray) -> np.ndarray:
        n, size = batch.shape[0], batch.shape[2]
        c0, c1 = column_block(batch) if self._any_width else (0, size)
        if (self._dynamic and n != self._batch) or c1 - c0 != self._width:
            # Resizing re-plans the arena (a few ms; the next call repacks): only when the shape changes.
            try:
                self._resize([n, batch.shape[1], c1 - c0, 1])
            except (RuntimeError, ValueError) as exc:
                if not self._any_width or (c0, c1) == (0, size):
                    raise
                # A runtime whose delegate cannot re-plan an open width (not seen with LiteRT 2.3;
                # older tflite-runtime builds are not verified): run the square from now on.
                logging.getLogger(__name__).warning(
                    "%s: this runtime cannot change the input width (%s); running the whole square",
                    self.path,
                    str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                )
                self._any_width, (c0, c1) = False, (0, size)
                self._resize([n, batch.shape[1], size, 1])
                self.details["input_width"] = f"{size} (any-width model; this runtime could not resize it)"
            self._batch, self._width = n, c1 - c0
        part = batch if (c0, c1) == (0, size) else np.ascontiguousarray(batch[:, :, c0:c1])
        self._interp.set_tensor(self._in["index"], quantize(part, self._in))
        self._interp.invoke()
        out = dequantize(self._interp.get_tensor(self._out["index"]), self._out)
        if (c0, c1) == (0, size):
            return out
        full = np.zeros((n, batch.shape[1], size, out.shape[-1]), np.float32)
        full[:, :, c0:c1] = out
        return full

    def _close(self) -> None:
        self._interp = None


def column_block(batch: np.ndarray) -> tuple[int, int]:
    """The columns ``[c0, c1)`` an any-width model runs for ``batch``: the nonzero columns of every
    image, widened to multiples of :data:`WIDTH_STEP` (both ends) and to at least :data:`MIN_WIDTH`.

    Args:
        batch: (N, S, S, 1) float32 preprocessed images (0 outside the breast), S a multiple of
            :data:`WIDTH_STEP`.

    Returns:
        ``(c0, c1)``, ``0 <= c0 < c1 <= S``; ``(0, S)`` when every pixel is 0 or S is not a multiple.
    """
    size = batch.shape[2]
    cols = np.flatnonzero(batch.any(axis=(0, 1, 3)))
    if cols.size == 0 or size % WIDTH_STEP:
        return 0, size
    c0 = int(cols[0]) // WIDTH_STEP * WIDTH_STEP
    c1 = -(-(int(cols[-1]) + 1) // WIDTH_STEP) * WIDTH_STEP
    if c1 - c0 < MIN_WIDTH:  # widen to the right, then to the left at the edge
        c1 = min(size, c0 + MIN_WIDTH)
        c0 = max(0, c1 - MIN_WIDTH)
    return c0, c1


def _signature(detail: dict[str, Any]) -> list[int]:
    """An input's shape with -1 for each dimension the model leaves open."""
    return [int(v) for v in detail.get("shape_signature", detail["shape"])]


def _any_width(signature: list[int]) -> bool:
    """(N, S, -1, 1): any width, the square's side S fixed (see the module docstring)."""
    return len(signature) == 4 and signature[2] == -1 and signature[1] >= 1


def square_any_width(interpreter: Any, width: int | None = None) -> bool:
    """Resize an any-width model's input to the square (N, S, S, 1), or to ``width`` columns, before the
    first allocation (its width is 1 until then); other models are left as they are. Returns whether it
    was any-width."""
    details = interpreter.get_input_details()
    if len(details) == 1 and _any_width(signature := _signature(details[0])):
        columns = signature[1] if width is None else min(width, signature[1])
        interpreter.resize_tensor_input(details[0]["index"], [max(1, signature[0]), signature[1], columns, 1])
        return True
    return False


def _qparams(detail: dict[str, Any]) -> list[float] | None:
    if detail["dtype"] not in _INTEGER_TYPES:
        return None
    scale, zero_point = detail["quantization"]
    return [float(scale), int(zero_point)]


def quantize(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """Float32 ``x`` to the tensor's type: ``clip(round(x / scale) + zero_point)`` for integer tensors.

    Rounds half away from zero like TFLite's own QUANTIZE kernel (``std::round``), not
    half to even like ``np.rint``, so a value on a half step lands where the converter's
    calibration expects it.

    Args:
        x: float32 array (any shape).
        detail: an entry of ``Interpreter.get_input_details()``.
    """
    dtype = detail["dtype"]
    if dtype not in _INTEGER_TYPES:
        return x.astype(dtype, copy=False)
    scale, zero_point = detail["quantization"]
    info = np.iinfo(dtype)
    v = x / np.float32(scale)
    q = np.trunc(v + np.copysign(np.float32(0.5), v)) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(q: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """The tensor's values as float32: ``(q - zero_point) * scale`` for integer tensors."""
    if detail["dtype"] not in _INTEGER_TYPES:
        return q.astype(np.float32, copy=False)
    scale, zero_point = detail["quantization"]
    return ((q.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)).astype(np.float32)
