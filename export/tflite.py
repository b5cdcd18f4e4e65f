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
  convolutions' weights are then put back in float (:func:`export.tflite_rewrite.float_depthwise_weights`: LiteRT's
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
    computed at run time, which XNNPACK does not take (:func:`export.tflite_rewrite.depth_to_space_upsampling`
    says what replacing it measured, and why it is not the default).
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
        from export.tflite_rewrite import float_depthwise_weights

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
