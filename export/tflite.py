"""Keras model -> TFLite flatbuffers: FP32, FP16, dynamic-range and full INT8.

The path is Keras 3 ``model.export(..., format="tf_saved_model")`` with a static
``(1, S, S, 1)`` float32 signature, then ``tf.lite.TFLiteConverter.from_saved_model``.
Converting from the SavedModel rather than ``from_keras_model`` is the route that
works with Keras 3 models (the latter expects tf.keras objects), and the static
batch of 1 is what edge interpreters run fastest (no resize at load time).

Precisions, as the converter defines them:

* ``fp32``: no optimisation.
* ``fp16``: weights stored as float16 (``target_spec.supported_types=[tf.float16]``);
  CPU kernels dequantise them to float32 at load, GPU delegates compute in FP16.
* ``dynamic``: dynamic-range quantisation (``optimizations=[DEFAULT]`` without
  representative data): int8 weights, activations quantised on the fly; the depthwise
  convolutions' weights are then put back in float (:func:`float_depthwise_weights`: LiteRT's
  XNNPACK has no kernel for an int8-weight depthwise convolution on float activations, so
  each one ran on a single-threaded builtin kernel between two XNNPACK partitions).
* ``int8``: full integer quantisation from a representative dataset of preprocessed
  training images (:mod:`export.calibration`; never random data), builtins restricted to
  ``TFLITE_BUILTINS_INT8`` so conversion fails rather than silently leaving float kernels;
  the model's input/output are float32 (QUANTIZE/DEQUANTIZE at the ends) or int8.
  With ``float_layers`` (selective quantisation) the named layers stay in float and
  everything else is integer: :func:`debug_ranking` ranks the layers by the TFLite
  quantisation debugger's error (RMSE of the quantised output over its scale), and the
  export keeps the worst N in float (``bcedge export --int8-float-layers N``). Issue #12:
  MobileNetV2's first depthwise convolution alone has an RMSE of 2.3 quantisation steps on
  the mass model, and full INT8 lost 0.012 validation Dice; three float layers recovered it
  there (+0.004) but not on the test views (-0.012), so the shipped bundle has no such artifact.

After conversion :func:`float_ops` lists every op that still computes in float, so a
partly-quantised model is reported rather than discovered on the device.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from bcedge.errors import ConfigError
from bcedge.formats import KINDS

#: The precisions of the tflite rows of the artifact-kind table (:data:`bcedge.formats.KINDS`).
TFLITE_PRECISIONS = tuple(k.precision for k in KINDS.values() if k.format == "tflite")
IoType = Literal["float", "int8"]
#: Ops whose job is to convert between float and int8 at the model's boundary.
BOUNDARY_OPS = frozenset({"QUANTIZE", "DEQUANTIZE"})


def _tf():
    # Quiet TensorFlow's C++ start-up chatter; only when we are the ones importing it.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    return tf


def any_width_model(model):
    """``model`` with every nearest-neighbour ``UpSampling2D`` replaced by an equivalent resize.

    Why: Keras' nearest ``UpSampling2D`` repeats rows and columns with ``tf.repeat``, whose
    reshape loses the channel count when the width is unknown, and the TFLite converter then
    cannot lower the next convolution (``tf.Conv2D ... neither a custom op nor a flex op``).
    ``tf.image.resize(..., method="nearest")`` to twice the size picks the same pixels
    (``floor(i / 2)``) and keeps the channels static. Weights are shared with ``model``; the
    caller checks the outputs agree (:func:`export_saved_model` does). The resize's size is
    computed at run time, which XNNPACK does not take (:func:`depth_to_space_upsampling` says
    what replacing it measured, and why it is not the default).
    """
    import keras

    tf = _tf()

    class NearestUpsample(keras.layers.Layer):
        """2x nearest-neighbour upsampling of (N, H, W, C) by ``tf.image.resize``."""

        def call(self, x):
            return tf.image.resize(x, tf.shape(x)[1:3] * 2, method="nearest")

        def compute_output_shape(self, shape):
            return (shape[0], *(None if d is None else 2 * d for d in shape[1:3]), shape[3])

    def clone(layer):
        if isinstance(layer, keras.layers.UpSampling2D) and layer.get_config().get("interpolation") == "nearest":
            return NearestUpsample(name=layer.name)
        return layer.__class__.from_config(layer.get_config())

    # A nested encoder sub-model (no upsampling inside) is rebuilt whole from its config by clone().
    out = keras.models.clone_model(model, clone_function=clone)
    out.set_weights(model.get_weights())
    return out


def export_saved_model(model, path: str | os.PathLike[str], size: int, *, any_width: bool = False) -> Path:
    """Write ``model`` as a TensorFlow SavedModel with one serving signature.

    Args:
        model: a Keras 3 model taking (N, size, size, 1) float32 in [0, 1].
        path: the SavedModel folder to create.
        size: input side in pixels.
        any_width: the signature takes (1, size, W, 1) for any W (the runtime runs only the
            columns that hold the breast, a multiple of ``bcedge.backends.tflite.WIDTH_STEP``;
            see :mod:`bcedge.backends.tflite`); False: (1, size, size, 1).

    Returns:
        The SavedModel folder. Its ``serving_default`` signature takes ``image``
        (1, size, size or any, 1) float32 and returns the model's output.

    Raises:
        ConfigError: ``any_width`` and the rebuilt model does not reproduce ``model`` on a
            square input (max |difference| over 1e-5).
    """
    tf = _tf()
    path = Path(path)
    if any_width:
        rebuilt = any_width_model(model)
        probe = np.random.default_rng(0).random((1, size, size, 1), dtype=np.float32)
        diff = float(np.max(np.abs(np.asarray(rebuilt(probe)) - np.asarray(model(probe)))))
        if not diff <= 1e-5:
            raise ConfigError(f"the any-width copy of the model differs from it by {diff:.3g}; export it fixed-width")
        model = rebuilt
    spec = tf.TensorSpec((1, size, None if any_width else size, 1), tf.float32, name="image")
    model.export(str(path), format="tf_saved_model", verbose=False, input_signature=[spec])
    return path


def representative_dataset(images: np.ndarray) -> Callable[[], Iterable[list[np.ndarray]]]:
    """The converter's ``representative_dataset``: one (1, S, S, 1) float32 image per step.

    Args:
        images: (N, S, S, 1) float32 in [0, 1]: preprocessed calibration images.
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[-1] != 1 or len(images) == 0:
        raise ConfigError(f"calibration images must be a non-empty (N, S, S, 1) array; got shape {images.shape}")

    def gen() -> Iterable[list[np.ndarray]]:
        for i in range(len(images)):
            yield [images[i : i + 1]]

    return gen


#: Calibration images the quantisation debugger runs (each through an instrumented model
#: that is several times slower than the plain one; the ranking is stable well before this).
DEBUG_IMAGES = 16


def _int8_converter(saved_model: str | os.PathLike[str], calib_images: np.ndarray, *, selective: bool):
    tf = _tf()
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset(calib_images)
    # A selective model needs the float builtins for its float layers; a pure one must not
    # have them, so that an op without an integer kernel fails the conversion.
    ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8] + ([tf.lite.OpsSet.TFLITE_BUILTINS] if selective else [])
    converter.target_spec.supported_ops = ops
    return converter


def _debug_images(calib_images: np.ndarray) -> Callable[[], Iterable[list[np.ndarray]]]:
    picks = np.linspace(0, len(calib_images) - 1, min(DEBUG_IMAGES, len(calib_images))).astype(int)
    return representative_dataset(calib_images[picks])


def debug_ranking(saved_model: str | os.PathLike[str], calib_images: np.ndarray) -> list[dict]:
    """The layers of the full-INT8 model, worst quantised first.

    Runs ``tf.lite.experimental.QuantizationDebugger`` on up to :data:`DEBUG_IMAGES`
    calibration images: for every quantised layer output, the RMSE between the float and
    the dequantised integer result, divided by the output's quantisation scale (so 1.0 is
    an error of one quantisation step, the debugger tutorial's measure).

    Args:
        saved_model: folder written by :func:`export_saved_model`.
        calib_images: (N, S, S, 1) float32 preprocessed images in [0, 1], N >= 1.

    Returns:
        ``[{"tensor": output tensor name, "op": op name, "rmse_over_scale": float}, ...]``
        sorted by ``rmse_over_scale``, descending.
    """
    import csv
    import io

    tf = _tf()
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=_int8_converter(saved_model, calib_images, selective=True), debug_dataset=_debug_images(calib_images)
    )
    debugger.run()
    buf = io.StringIO()
    debugger.layer_statistics_dump(buf)
    buf.seek(0)
    ranking = []
    for row in csv.DictReader(buf):
        scale = float(row.get("scale") or 0.0)
        mse = float(row.get("mean_squared_error") or 0.0)
        if scale > 0 and np.isfinite(mse):
            ranking.append(
                {"tensor": row["tensor_name"], "op": row["op_name"], "rmse_over_scale": float(np.sqrt(mse) / scale)}
            )
    ranking.sort(key=lambda r: -r["rmse_over_scale"])
    return ranking


def convert(
    saved_model: str | os.PathLike[str],
    precision: str,
    *,
    calib_images: np.ndarray | None = None,
    int8_io: IoType = "float",
    float_layers: Sequence[str] = (),
) -> bytes:
    """Convert a SavedModel to a TFLite flatbuffer.

    Args:
        saved_model: folder written by :func:`export_saved_model`.
        precision: one of :data:`TFLITE_PRECISIONS`.
        calib_images: ``int8`` only: (N, S, S, 1) float32 preprocessed images in [0, 1].
        int8_io: ``int8`` only: ``float`` keeps float32 input/output (the model quantises
            at its input and dequantises at its output), ``int8`` makes them int8
            (input scale 1/255, zero point -128 for [0, 1] data).
        float_layers: ``int8`` only: output tensor names (from :func:`debug_ranking`) of
            layers to keep in float; empty: a pure integer model.

    Returns:
        The .tflite bytes.

    Raises:
        ConfigError: unknown precision or I/O type, or INT8 without calibration images.
    """
    if precision not in TFLITE_PRECISIONS:
        raise ConfigError(f"unknown TFLite precision {precision!r}; expected one of {', '.join(TFLITE_PRECISIONS)}")
    if int8_io not in ("float", "int8"):
        raise ConfigError(f"unknown INT8 input/output type {int8_io!r}; expected float or int8")
    if float_layers and precision != "int8":
        raise ConfigError(f"float layers apply to full INT8 only, not {precision!r}")
    tf = _tf()
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    if precision == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif precision == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        return float_depthwise_weights(bytes(converter.convert()))[0]
    elif precision == "int8":
        if calib_images is None:
            raise ConfigError("full INT8 conversion needs calibration images (preprocessed training images)")
        converter = _int8_converter(saved_model, calib_images, selective=bool(float_layers))
        if int8_io == "int8":
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
        if float_layers:
            # The debugger's own route to a selectively quantised model (the converter has no
            # public denylist): it calibrates once, then quantises all but the listed nodes.
            debugger = tf.lite.experimental.QuantizationDebugger(
                converter=converter,
                debug_dataset=_debug_images(calib_images),
                debug_options=tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=list(float_layers)),
            )
            return bytes(debugger.get_nondebug_quantized_model())
    return bytes(converter.convert())


def float_depthwise_weights(content: bytes) -> tuple[bytes, int]:
    """A dynamic-range model with its int8 depthwise-convolution weights dequantised to float32.

    Why: LiteRT's default CPU delegate (XNNPACK) runs dynamic-range ("hybrid") convolutions and fully
    connected layers itself, but has no hybrid depthwise convolution; each such op fell back to the
    builtin kernel (one thread) and split the graph. On ``bcedge/mass_model`` (MobileNetV2 encoder,
    15 hybrid depthwise ops) the graph ran as 21 XNNPACK partitions, and dequantising those weights
    took a 512x320 call from 51.0 to 38.6 ms at 2 threads and 74.4 to 61.9 ms at 1 (medians of 20
    interleaved calls, 2-core Intel Xeon, CPU flags avx2 fma avx512f avx512_vnni amx_int8;
    ``benchmarks/float_depthwise_gate.py``), for 0.1 MB more (depthwise filters are 3x3 per channel).
    The float weights are the int8 values times their scales, the values the hybrid kernel multiplied
    by; what changes is that the activations entering those ops are no longer quantised (closer to
    the float model).

    Args:
        content: a ``.tflite`` flatbuffer (any; only hybrid depthwise ops are touched).

    Returns:
        (the new flatbuffer, how many depthwise weight tensors were dequantised); ``content``
        itself when there were none.
    """
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    depthwise = schema.BuiltinOperator.DEPTHWISE_CONV_2D
    users: dict[int, int] = {}  # buffer index -> how many tensors read it (the converter may share buffers)
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            users[tensor.buffer] = users.get(tensor.buffer, 0) + 1
    changed = 0
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            if max(code.builtinCode, code.deprecatedBuiltinCode) != depthwise or len(op.inputs) < 2:
                continue
            activation, weights = subgraph.tensors[op.inputs[0]], subgraph.tensors[op.inputs[1]]
            quant = weights.quantization
            if activation.type != schema.TensorType.FLOAT32 or weights.type != schema.TensorType.INT8 or quant is None:
                continue  # a float op, or a fully quantised one: not hybrid
            stored = model.buffers[weights.buffer].data
            if stored is None or len(stored) != int(np.prod(weights.shape)):
                continue  # weights outside the flatbuffer (a > 2 GB model's offset buffers): left as they are
            values = np.frombuffer(bytes(stored), np.int8).reshape(weights.shape)
            scale = np.asarray(quant.scale, np.float32)
            zero = np.asarray(quant.zeroPoint if quant.zeroPoint is not None else [0], np.float32)
            if scale.size > 1:  # per channel, along quantizedDimension
                shape = [1] * values.ndim
                shape[quant.quantizedDimension] = -1
                scale, zero = scale.reshape(shape), zero.reshape(shape) if zero.size > 1 else zero
            data = np.frombuffer(((values.astype(np.float32) - zero) * scale).astype("<f4").tobytes(), np.uint8)
            if users.get(weights.buffer, 0) > 1:  # shared: give this tensor a buffer of its own
                buffer = schema.BufferT()
                model.buffers.append(buffer)
                users[weights.buffer] -= 1
                weights.buffer = len(model.buffers) - 1
            model.buffers[weights.buffer].data = data
            weights.type = schema.TensorType.FLOAT32
            weights.quantization = None
            changed += 1
    if not changed:
        return content, 0
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), changed


def depth_to_space_upsampling(content: bytes) -> tuple[bytes, int]:
    """An any-width model's nearest 2x resizes rewritten as CONCATENATION of four copies + DEPTH_TO_SPACE.

    Each RESIZE_NEAREST_NEIGHBOR whose size is computed as twice the input's height and width (``SHAPE``
    -> ``SLICE [1:3]`` -> ``MUL 2``, what :func:`any_width_model`'s ``tf.image.resize`` lowers to) becomes
    ``DEPTH_TO_SPACE(CONCATENATION(x, x, x, x), 2)`` and the size computation is dropped. Both put input
    pixel (i, j) at output pixels (2i + dy, 2j + dx) (with or without half-pixel centres a nearest 2x
    resize reads pixel floor(o / 2)), so the outputs are bit-identical. Resizes of any other shape are
    left alone.

    Why it exists and is not the default: XNNPACK takes neither the resize nor its size computation, so
    each upsampling runs on one thread between two XNNPACK partitions; the new ops run inside XNNPACK but
    copy the input four times. On ``bcedge/mass_model`` (session 20, 2-core Intel Xeon, avx512_vnni;
    ``benchmarks/results/depth_to_space_check.json``) the dynamic-range artifact took 37.5 -> 33.9 ms at
    2 threads but 60.3 -> 62.9 ms at 1 (the 16-scan job's interpreters), and FP16 got slower at both. So
    it is a tool for a device where it measures faster (many cores): ``benchmarks/depth_to_space_check.py
    --set`` checks and installs it.

    Returns:
        (the new flatbuffer, how many resizes were rewritten); ``content`` itself when none were.
    """
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    op_enum = schema.BuiltinOperator

    def builtin(op) -> int:
        code = model.operatorCodes[op.opcodeIndex]
        return max(code.builtinCode, code.deprecatedBuiltinCode)

    def opcode(code: int) -> int:
        for i, existing in enumerate(model.operatorCodes):
            if max(existing.builtinCode, existing.deprecatedBuiltinCode) == code:
                return i
        new = schema.OperatorCodeT()
        new.builtinCode, new.deprecatedBuiltinCode, new.version = code, min(code, 127), 1
        model.operatorCodes.append(new)
        return len(model.operatorCodes) - 1

    def constant(subgraph, index: int) -> np.ndarray | None:
        data = model.buffers[subgraph.tensors[index].buffer].data
        return None if data is None or len(data) == 0 else np.frombuffer(bytes(data), np.int32)

    def rewrite(subgraph) -> int:
        """Rewrite one subgraph's doubling resizes; returns how many."""
        rewritten = 0
        ops = list(subgraph.operators)
        producer = {int(t): i for i, op in enumerate(ops) for t in op.outputs}
        readers: dict[int, int] = {}
        for op in ops:
            for t in op.inputs:
                readers[int(t)] = readers.get(int(t), 0) + 1
        for t in subgraph.outputs:
            readers[int(t)] = readers.get(int(t), 0) + 1

        def made_by(tensor: int, code: int):
            """The op that makes ``tensor`` when it is ``code`` and ``tensor`` has no other reader."""
            i = producer.get(tensor)
            if i is None or builtin(ops[i]) != code or readers.get(tensor, 0) != 1:
                return None
            return i

        drop: set[int] = set()
        replace: dict[int, list] = {}
        for i, op in enumerate(ops):
            if builtin(op) != op_enum.RESIZE_NEAREST_NEIGHBOR or op.builtinOptions is None:
                continue
            if op.builtinOptions.alignCorners:
                continue
            x, size = int(op.inputs[0]), int(op.inputs[1])
            mul = made_by(size, op_enum.MUL)
            if mul is None:
                continue
            a, b = (int(t) for t in ops[mul].inputs)
            factor = constant(subgraph, b)
            cut = made_by(a, op_enum.SLICE)
            if factor is None or not np.all(factor == 2) or cut is None:
                continue
            shape_t, begin, length = (int(t) for t in ops[cut].inputs)
            shape_op = made_by(shape_t, op_enum.SHAPE)
            begin_v, length_v = constant(subgraph, begin), constant(subgraph, length)
            if shape_op is None or int(ops[shape_op].inputs[0]) != x or begin_v is None or length_v is None:
                continue
            if begin_v.tolist() != [1] or length_v.tolist() != [2]:
                continue
            source = subgraph.tensors[x]
            stacked = schema.TensorT()
            stacked.name = (source.name or b"") + b"/upsample_x4"
            stacked.type, stacked.buffer, stacked.quantization = source.type, 0, source.quantization
            stacked.shape = np.array([*list(source.shape)[:-1], 4 * int(source.shape[-1])], np.int32)
            if source.shapeSignature is not None:
                signature = list(source.shapeSignature)
                stacked.shapeSignature = np.array([*signature[:-1], 4 * int(signature[-1])], np.int32)
            subgraph.tensors.append(stacked)
            stacked_index = len(subgraph.tensors) - 1
            concat = schema.OperatorT()
            concat.opcodeIndex = opcode(op_enum.CONCATENATION)
            concat.inputs, concat.outputs = np.array([x] * 4, np.int32), np.array([stacked_index], np.int32)
            concat.builtinOptionsType = schema.BuiltinOptions.ConcatenationOptions
            concat.builtinOptions = schema.ConcatenationOptionsT()
            concat.builtinOptions.axis = 3
            to_space = schema.OperatorT()
            to_space.opcodeIndex = opcode(op_enum.DEPTH_TO_SPACE)
            to_space.inputs, to_space.outputs = np.array([stacked_index], np.int32), np.array(op.outputs, np.int32)
            to_space.builtinOptionsType = schema.BuiltinOptions.DepthToSpaceOptions
            to_space.builtinOptions = schema.DepthToSpaceOptionsT()
            to_space.builtinOptions.blockSize = 2
            replace[i] = [concat, to_space]
            drop.update((mul, cut, shape_op))
            rewritten += 1
        subgraph.operators = [new for i, op in enumerate(ops) if i not in drop for new in replace.get(i, [op])]
        return rewritten

    rewritten = sum(rewrite(subgraph) for subgraph in model.subgraphs)
    if not rewritten:
        return content, 0
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), rewritten


def _interpreter(content: bytes):
    """An interpreter over ``content`` without default delegates (XNNPACK would hide the ops)."""
    try:
        from ai_edge_litert import interpreter as lite

        return lite.Interpreter(
            model_content=content, experimental_op_resolver_type=lite.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        )
    except ImportError:  # TensorFlow's own (deprecated) interpreter reads the same flatbuffer
        tf = _tf()
        return tf.lite.Interpreter(
            model_content=content,
            experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        )


def op_summary(content: bytes) -> list[dict]:
    """Every op of a TFLite model with its operand and result dtypes.

    Returns:
        One ``{"index", "op", "inputs": [dtype names], "outputs": [dtype names]}`` per op,
        in execution order.
    """
    interp = _interpreter(content)
    rows = []
    for op in interp._get_ops_details():  # the only public-ish view of the op list
        rows.append(
            {
                "index": int(op["index"]),
                "op": str(op["op_name"]),
                "inputs": [np.dtype(t).name for t in op.get("operand_types", [])],
                "outputs": [np.dtype(t).name for t in op.get("result_types", [])],
            }
        )
    return rows


def float_ops(content: bytes, *, include_boundary: bool = False) -> list[str]:
    """Ops of a quantised model that still compute in floating point.

    An op counts as float when any of its inputs or outputs is float32/float16.
    QUANTIZE/DEQUANTIZE at the model's float input/output are expected (that is
    how a float-I/O INT8 model converts) and are left out unless ``include_boundary``.

    Returns:
        ``"OPNAME#index"`` strings, in execution order; empty for a fully integer model.
    """
    out = []
    for row in op_summary(content):
        if row["op"] in BOUNDARY_OPS and not include_boundary:
            continue
        if any(t in ("float32", "float16") for t in row["inputs"] + row["outputs"]):
            out.append(f"{row['op']}#{row['index']}")
    return out


def hybrid_ops(content: bytes) -> dict[str, int]:
    """``{op name: count}`` of the dynamic-range ("hybrid") ops: a float32 activation beside int8 weights."""
    counts: dict[str, int] = {}
    for row in op_summary(content):
        if len(row["inputs"]) >= 2 and row["inputs"][0] == "float32" and row["inputs"][1] == "int8":
            counts[row["op"]] = counts.get(row["op"], 0) + 1
    return dict(sorted(counts.items()))


def io_details(content: bytes) -> dict:
    """Input/output name, shape (-1: open), dtype and quantisation of a TFLite model (for the manifest)."""
    interp = _interpreter(content)

    def describe(d: dict) -> dict:
        scale, zero = d.get("quantization", (0.0, 0))
        return {
            "name": d["name"],
            # -1 where the model leaves a dimension open (an any-width model's width).
            "shape": [int(v) for v in d.get("shape_signature", d["shape"])],
            "dtype": np.dtype(d["dtype"]).name,
            "scale": float(scale),
            "zero_point": int(zero),
        }

    return {
        "inputs": [describe(d) for d in interp.get_input_details()],
        "outputs": [describe(d) for d in interp.get_output_details()],
    }
