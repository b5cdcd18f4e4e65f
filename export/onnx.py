"""Keras model -> ONNX through tf2onnx, with stable names and a static shape by default.

* Input signature is explicit: ``image`` (1, S, S, 1) float32 NHWC in [0, 1] (the
  runtime's tensor layout; no transpose is added, so every backend sees one layout).
* Output is renamed ``mask`` when tf2onnx names it after an internal tensor, so
  backends and TensorRT bindings can rely on ``image`` -> ``mask``.
* Static batch of 1 by default: TensorRT builds a single-profile engine from it and
  edge runtimes plan memory once. ``dynamic_batch=True`` makes the batch symbolic
  (``N``) for desktop runtimes that batch.
* Opset 17 by default (TensorRT 8.6 and 10.x parse it; onnxruntime >= 1.13 runs it).
* The result passes ``onnx.checker.check_model``; ``onnxslim`` simplifies it when it is
  installed (optional, never required).

:func:`quantize_int8` makes the ONNX INT8 artifact (``onnx-int8``, ``model_int8.onnx``) from that FP32
file: static quantisation with onnxruntime's ``quantize_static`` in the QDQ format (the format its CPU
kernels are optimised for since 1.11), per-channel int8 weights reduced to 7 bits (``reduce_range``),
uint8 asymmetric activations calibrated (MinMax) on the export's calibration images through
:func:`export.calibration.onnx_calibration_reader`. Why 7 bits: onnxruntime's x86 kernels without
VNNI multiply uint8 activations by int8 weights with ``vpmaddubsw``, which adds two products into a
saturating int16; 255 * 127 * 2 overflows it, 255 * 64 * 2 does not. A full-range model is right on
a VNNI CPU and may be wrong on an AVX2 one (issue #14; measured in
``benchmarks/results/onnx_int8_accuracy.json``); the 7-bit one is right on both. ``quantize_static``'s
own docstring (onnxruntime 1.32) gives the same advice for x86 without VNNI.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bcedge.errors import ConfigError, MissingDependencyError

DEFAULT_OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAME = "mask"


def _rename_value(graph, old: str, new: str) -> None:
    """Rename tensor ``old`` to ``new`` everywhere in ``graph`` (node inputs/outputs, graph I/O)."""
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.name == old:
            value.name = new


def _set_batch(model_proto, dynamic_batch: bool) -> None:
    for value in (*model_proto.graph.input, *model_proto.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        if dynamic_batch:
            dim.dim_param = "N"
        else:
            dim.dim_value = 1


def convert(
    model,
    path: str | os.PathLike[str],
    size: int,
    *,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = False,
    slim: bool = True,
) -> dict:
    """Convert a Keras 3 model to ONNX and write it to ``path`` (atomically).

    Args:
        model: a Keras model taking (N, size, size, 1) float32 in [0, 1] with one output.
        path: destination ``.onnx`` file.
        size: input side in pixels.
        opset: ONNX opset (default 17).
        dynamic_batch: symbolic batch dimension instead of a static 1.
        slim: run ``onnxslim`` when it is installed.

    Returns:
        Details for the manifest: ``opset``, ``input``/``output`` name and shape,
        ``dynamic_batch``, ``slimmed`` (bool) and ``ops`` (sorted op types).

    Raises:
        MissingDependencyError: tf2onnx or onnx is not installed.
        ConfigError: the model has not exactly one input and one output.
    """
    if importlib.util.find_spec("tf2onnx") is None or importlib.util.find_spec("onnx") is None:
        raise MissingDependencyError("ONNX export", "train", "tf2onnx and onnx")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ConfigError(
            f"ONNX export expects one input and one output; the model has {len(model.inputs)}/{len(model.outputs)}"
        )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import onnx
    import tensorflow as tf
    import tf2onnx

    from bcedge.imageio import atomic_write_bytes

    batch = None if dynamic_batch else 1
    spec = (tf.TensorSpec((batch, size, size, 1), tf.float32, name=INPUT_NAME),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset)
    graph = proto.graph
    if graph.input[0].name != INPUT_NAME:
        _rename_value(graph, graph.input[0].name, INPUT_NAME)
    if graph.output[0].name != OUTPUT_NAME:
        _rename_value(graph, graph.output[0].name, OUTPUT_NAME)
    _set_batch(proto, dynamic_batch)
    slimmed = False
    if slim and importlib.util.find_spec("onnxslim") is not None:
        import onnxslim

        proto = onnxslim.slim(proto)
        slimmed = True
    onnx.checker.check_model(proto, full_check=True)
    atomic_write_bytes(Path(path), proto.SerializeToString())

    def shape_of(value) -> list[int | str]:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    return {
        "opset": opset,
        "input": {"name": proto.graph.input[0].name, "shape": shape_of(proto.graph.input[0])},
        "output": {"name": proto.graph.output[0].name, "shape": shape_of(proto.graph.output[0])},
        "dynamic_batch": dynamic_batch,
        "slimmed": slimmed,
        "ops": sorted({n.op_type for n in proto.graph.node}),
    }


# --------------------------------------------------------------------------- INT8 (QDQ)

#: What :func:`quantize_int8` passes to ``quantize_static`` besides the model, reader and ranges
#: (recorded in the manifest). Activations: uint8, asymmetric (a ReLU6 output spans [0, 6]; a
#: symmetric range would waste half the steps). Weights: int8, symmetric (zero point 0, which the
#: integer kernels take fastest), one scale per output channel (MobileNetV2's depthwise filters
#: differ by orders of magnitude from channel to channel; one scale per tensor rounds the small ones to 0).
INT8_OPTIONS: dict[str, Any] = {
    "quant_format": "QDQ",
    "activation_type": "QUInt8",
    "weight_type": "QInt8",
    "calibrate_method": "MinMax",
    "extra_options": {"ActivationSymmetric": False, "WeightSymmetric": True},
}


def qdq_summary(proto: Any) -> dict[str, Any]:
    """What a QDQ model quantises: ``{"qdq_nodes", "quantized_ops", "float_ops", "per_channel_weights",
    "weight_int_range"}``.

    ``quantized_ops``: ``{op type: count}`` of the nodes that read a ``DequantizeLinear`` output
    (onnxruntime fuses them into integer kernels); ``float_ops``: ``["Sigmoid#412", ...]`` (type and node
    index, as :func:`export.tflite.float_ops` names them) of the nodes that read a float tensor
    that is not dequantised (they run in float). ``weight_int_range``: ``[min, max]`` of every 8-bit
    initializer a ``DequantizeLinear`` reads (7-bit weights: within [-64, 64]; the int32 biases are left
    out); ``per_channel_weights``: how many of those carry one scale per channel.
    """
    from onnx import numpy_helper

    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    dq = [n for n in graph.node if n.op_type == "DequantizeLinear"]
    dq_outputs = {n.output[0] for n in dq}
    quantized: dict[str, int] = {}
    floating: list[str] = []
    for index, node in enumerate(graph.node):
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if any(name in dq_outputs for name in node.input):
            quantized[node.op_type] = quantized.get(node.op_type, 0) + 1
        elif any(name and name not in inits for name in node.input):  # reads a float tensor, not only constants
            floating.append(f"{node.op_type}#{index}")
    lo, hi, per_channel = None, None, 0
    for node in dq:
        if node.input[0] not in inits:
            continue
        values = numpy_helper.to_array(inits[node.input[0]])
        if values.dtype.kind not in "iu" or values.dtype.itemsize != 1 or values.size == 0:
            continue  # biases are int32 (scale = input scale x weight scale): not what the 8-bit kernels multiply
        lo = int(values.min()) if lo is None else min(lo, int(values.min()))
        hi = int(values.max()) if hi is None else max(hi, int(values.max()))
        scale = inits.get(node.input[1])
        if scale is not None and numpy_helper.to_array(scale).size > 1:
            per_channel += 1
    return {
        "qdq_nodes": sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph.node),
        "quantized_ops": dict(sorted(quantized.items())),
        "float_ops": floating,
        "per_channel_weights": per_channel,
        "weight_int_range": [lo, hi] if lo is not None else None,
    }


def keeps_calibration_cache() -> bool:
    """True when this onnxruntime's ``quantize_static`` reads and writes a calibration cache file."""
    from onnxruntime.quantization import quantize_static

    return "calibration_cache_path" in inspect.signature(quantize_static).parameters


def calibration_cache_file(
    cache_dir: str | os.PathLike[str], fp32_path: str | os.PathLike[str], calibration: np.ndarray
) -> Path:
    """Where :func:`quantize_int8` keeps the activation ranges of one model and calibration set.

    The name is the SHA-256 of the FP32 model bytes, the calibration array (shape, dtype, bytes) and the
    calibration method, so another model, other images or another method never reuse the ranges; the
    export passes it so a later quantisation of the same file (the full-range variant of
    ``benchmarks/onnx_int8_accuracy.py``) does not run the calibration again.

    Args:
        cache_dir: the export cache folder (``bcedge export --cache``); the file goes in ``onnx/`` below it.
        fp32_path: the FP32 ``.onnx`` file that will be quantised.
        calibration: (N, S, S, 1) float32 calibration images.
    """
    import hashlib

    array = np.ascontiguousarray(calibration, dtype=np.float32)
    digest = hashlib.sha256(Path(fp32_path).read_bytes())
    digest.update(f"{array.shape}|{INT8_OPTIONS['calibrate_method']}|".encode())
    digest.update(array.tobytes())
    return Path(cache_dir) / "onnx" / f"calibration-{digest.hexdigest()[:20]}.json"


def quantize_int8(
    fp32_path: str | os.PathLike[str],
    path: str | os.PathLike[str],
    calibration: np.ndarray,
    *,
    reduce_range: bool = True,
    per_channel: bool = True,
    calibration_cache: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Quantise an FP32 ONNX model to a QDQ INT8 model with onnxruntime and write it to ``path`` (atomically).

    Args:
        fp32_path: the FP32 ``.onnx`` file (:func:`convert`).
        path: destination ``.onnx`` file.
        calibration: (N, S, S, 1) float32 in [0, 1]: preprocessed calibration images
            (:func:`export.calibration.calibration_images`).
        reduce_range: 7-bit weights (default; see the module doc). False: full-range 8-bit weights,
            right only on CPUs whose integer kernels do not saturate (VNNI, ARM); kept for the measurement
            that shows it (``benchmarks/onnx_int8_accuracy.py``).
        per_channel: one weight scale per output channel (default).
        calibration_cache: a JSON file of activation ranges (:func:`calibration_cache_file` names one
            per model and image set): read when it exists (no calibration run), else written after
            calibrating (``quantize_static``'s ``calibration_cache_path``; an onnxruntime without it
            calibrates every time). Lets two variants share one calibration.

    Returns:
        Details for the manifest: the settings (:data:`INT8_OPTIONS`, ``reduce_range``,
        ``per_channel``), ``n_calibration``, ``onnxruntime`` version and :func:`qdq_summary`.

    Raises:
        MissingDependencyError: onnx or onnxruntime is not installed.
        ConfigError: bad calibration images (:func:`export.calibration.onnx_calibration_reader`).
    """
    if importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None:
        raise MissingDependencyError("ONNX INT8 export", "onnx", "onnx and onnxruntime")
    import onnx
    import onnxruntime
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from bcedge.imageio import atomic_write_bytes
    from export.calibration import onnx_calibration_reader

    fp32 = onnx.load(str(fp32_path))
    reader = onnx_calibration_reader(calibration, fp32.graph.input[0].name)
    n_calibration = len(reader)
    kwargs: dict[str, Any] = {}
    if calibration_cache is not None and keeps_calibration_cache():
        Path(calibration_cache).parent.mkdir(parents=True, exist_ok=True)
        kwargs["calibration_cache_path"] = str(calibration_cache)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".quantize-", dir=target.parent) as tmp:
        out = Path(tmp) / target.name
        quantize_static(
            str(fp32_path),
            str(out),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            reduce_range=reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options=dict(INT8_OPTIONS["extra_options"]),
            **kwargs,
        )
        proto = onnx.load(str(out))
    onnx.checker.check_model(proto, full_check=True)
    atomic_write_bytes(target, proto.SerializeToString())
    return {
        "quantizer": "onnxruntime.quantization.quantize_static",
        **INT8_OPTIONS,
        "reduce_range": bool(reduce_range),
        "per_channel": bool(per_channel),
        "n_calibration": n_calibration,
        "onnxruntime": onnxruntime.__version__,
        **qdq_summary(proto),
    }
