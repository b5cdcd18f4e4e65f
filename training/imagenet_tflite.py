"""ImageNet initialisation of Keras MobileNetV2 from a full-integer TFLite file.

The only ImageNet MobileNetV2 reachable here is ``mobilenet_v2_1.0_224_imagenet_int8.tflite``
(see ``../shared/weights/README.md``): Keras ``MobileNetV2(alpha=1.0, weights="imagenet")``
after full-integer post-training quantisation. The converter folded every batch norm into
the preceding convolution (kernel scaled per output channel, BN shift moved into an int32
bias) and quantised the kernels to int8 with one scale per output channel.

:func:`load_mobilenetv2_tflite` undoes what can be undone:

* kernel = (q - zero_point) x scale, per output channel (exact to half a quantisation step);
* bias = int32 q x its own per-channel scale (input scale x kernel scale);
* each TFLite convolution goes to the Keras ``Conv2D``/``DepthwiseConv2D`` of the same graph
  position, checked by shape *and* by the Keras layer name inside the TFLite tensor name;
* the Keras layers have no bias: each is followed by a ``BatchNormalization``, which is set to
  identity plus the folded bias (gamma 1, beta = bias, moving mean 0, moving variance
  1 - epsilon so that sqrt(variance + epsilon) = 1).

Why those BN layers are frozen (``trainable = False``, which Keras 3 also runs in inference
mode): the folded kernels already produce activations on ImageNet's post-BN scale. A BN in
training mode would standardise each channel by its *batch* statistics and replace that scale
with gamma=1/beta=bias, i.e. throw away the learned per-channel gains the fold put into the
kernel; fine-tuning would start from a different network than the one checked here. Frozen,
the layer is a fixed per-channel shift and the kernels (still trainable) carry the
adaptation. ``training.batchnorm.recalibrate`` leaves frozen BN layers as they are (Keras
updates moving statistics only for trainable BN layers in training mode).

The kernels do not depend on the input size, so any input size works (the encoder inside
``training.models.build_encoder_unet`` included); a model with the 1000-class top also gets
the ``predictions`` Dense layer (TFLite FULLY_CONNECTED, per-tensor scale).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bcedge.errors import ConfigError, MissingDependencyError

#: TFLite ops that carry a kernel, and the Keras layer class each maps onto.
KERNEL_OPS = {"CONV_2D": "Conv2D", "DEPTHWISE_CONV_2D": "DepthwiseConv2D", "FULLY_CONNECTED": "Dense"}


@dataclass(frozen=True)
class FoldedKernel:
    """One dequantised TFLite kernel with its folded bias.

    Attributes:
        op: ``CONV_2D``, ``DEPTHWISE_CONV_2D`` or ``FULLY_CONNECTED``.
        kernel: float32 in the Keras layout: Conv2D (kh, kw, in, out); DepthwiseConv2D
            (kh, kw, C, 1); Dense (in, out).
        bias: float32 (out,), the folded batch-norm shift (Dense: its own bias).
        kernel_name, bias_name: the TFLite tensor names (they contain the Keras layer names).
        step: float32 (out,) quantisation step of each output channel of ``kernel``.
    """

    op: str
    kernel: np.ndarray
    bias: np.ndarray
    kernel_name: str
    bias_name: str
    step: np.ndarray


def _dequantise(values: np.ndarray, params: dict) -> tuple[np.ndarray, np.ndarray]:
    """(q - zero_point) x scale along ``quantized_dimension``; returns (float32 array, scales)."""
    scales = np.asarray(params["scales"], np.float64)
    zero_points = np.asarray(params["zero_points"], np.int64)
    if scales.size == 0:
        raise ConfigError("a kernel tensor has no quantisation parameters (not a full-integer model)")
    axis = int(params["quantized_dimension"]) if scales.size > 1 else 0
    shape = [1] * values.ndim
    shape[axis] = scales.size
    if scales.size > 1 and values.shape[axis] != scales.size:
        raise ConfigError(f"{scales.size} scales for {values.shape[axis]} channels of a {values.shape} tensor")
    real = (values.astype(np.int64) - zero_points.reshape(shape)) * scales.reshape(shape)
    return real.astype(np.float32), scales.astype(np.float32)


def _to_keras_layout(op: str, kernel: np.ndarray) -> np.ndarray:
    if op == "CONV_2D":  # [out, kh, kw, in] -> [kh, kw, in, out]
        return np.ascontiguousarray(kernel.transpose(1, 2, 3, 0))
    if op == "DEPTHWISE_CONV_2D":  # [1, kh, kw, C] -> [kh, kw, C, 1]
        return np.ascontiguousarray(kernel.transpose(1, 2, 3, 0))
    return np.ascontiguousarray(kernel.T)  # FULLY_CONNECTED [out, in] -> Dense [in, out]


def _interpreter(path: Path):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise MissingDependencyError("reading TFLite ImageNet weights", "tflite", "ai-edge-litert") from exc
    try:
        return Interpreter(model_path=str(path))
    except Exception as exc:  # LiteRT raises ValueError/RuntimeError on a foreign or corrupt file
        first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
        raise ConfigError(f"{path}: not a readable TFLite model ({type(exc).__name__}: {first})") from exc


def read_folded_kernels(path: str | os.PathLike[str]) -> list[FoldedKernel]:
    """Every CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED kernel of a TFLite file, in graph order.

    Raises:
        ConfigError: the file is not a TFLite model, or a kernel is not int8 with a
            per-channel (or per-tensor) scale and an int32 bias.
    """
    path = Path(path)
    interpreter = _interpreter(path)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    kernels: list[FoldedKernel] = []
    # _get_ops_details is LiteRT's only per-op listing (public since tflite 2.x, underscore kept).
    for op in interpreter._get_ops_details():
        name = op["op_name"]
        if name not in KERNEL_OPS:
            continue
        inputs = [int(i) for i in op["inputs"]]
        if len(inputs) < 3 or inputs[1] < 0 or inputs[2] < 0:
            raise ConfigError(f"{path}: {name} op {op['index']} has no constant kernel and bias")
        kt, bt = tensors[inputs[1]], tensors[inputs[2]]
        if kt["dtype"] != np.int8 or bt["dtype"] != np.int32:
            raise ConfigError(
                f"{path}: {name} op {op['index']} has a {np.dtype(kt['dtype']).name} kernel and "
                f"{np.dtype(bt['dtype']).name} bias; expected full-integer int8/int32"
            )
        kernel, steps = _dequantise(interpreter.get_tensor(inputs[1]), kt["quantization_parameters"])
        bias, _ = _dequantise(interpreter.get_tensor(inputs[2]), bt["quantization_parameters"])
        out_channels = kernel.shape[-1] if name == "DEPTHWISE_CONV_2D" else kernel.shape[0]
        kernels.append(
            FoldedKernel(
                op=name,
                kernel=_to_keras_layout(name, kernel),
                bias=bias.reshape(-1),
                kernel_name=kt["name"],
                bias_name=bt["name"],
                step=np.broadcast_to(steps, (out_channels,)).astype(np.float32),
            )
        )
    return kernels


def _following_batch_norm(layer, layers: list, position: int):
    """The BatchNormalization that consumes ``layer``'s output (the next layer in Keras order)."""
    import keras

    for candidate in layers[position + 1 :]:
        if isinstance(candidate, keras.layers.BatchNormalization):
            if candidate.input is layer.output:
                return candidate
            break
    raise ConfigError(f"Keras layer {layer.name!r} is not followed by its BatchNormalization")


def load_mobilenetv2_tflite(model, path: str | os.PathLike[str], freeze_batch_norm: bool = True) -> int:
    """Set a Keras MobileNetV2 (alpha 1.0) to the dequantised ImageNet weights of a TFLite file.

    Args:
        model: ``keras.applications.MobileNetV2(alpha=1.0, weights=None, ...)`` with or without
            the top, at any input size.
        path: the full-integer ``.tflite`` (per-channel int8 weights, batch norm folded).
        freeze_batch_norm: make each convolution's BN layer non-trainable (see the module doc).

    Returns:
        The number of kernels loaded (52 without the top, 53 with it).

    Raises:
        ConfigError: the file is not such a model, or a kernel does not match the Keras
            layer of its position by shape or by name (nothing is loaded then).
    """
    import keras

    kernels = read_folded_kernels(path)
    layers = list(model.layers)
    targets = [(i, layer) for i, layer in enumerate(layers) if type(layer).__name__ in KERNEL_OPS.values()]
    if len(targets) > len(kernels):
        raise ConfigError(f"{path}: {len(kernels)} kernels for {len(targets)} Keras layers of {model.name!r}")
    leftover = kernels[len(targets) :]
    if any(k.op != "FULLY_CONNECTED" for k in leftover):
        raise ConfigError(
            f"{path}: {len(kernels)} kernels but {model.name!r} has {len(targets)} layers and the rest is not the top"
        )
    # Check every pair before writing anything, so a mismatch leaves the model untouched.
    plan = []
    for (position, layer), folded in zip(targets, kernels, strict=False):
        expected = KERNEL_OPS[folded.op]
        if type(layer).__name__ != expected:
            raise ConfigError(
                f"{path}: {folded.op} {folded.kernel_name!r} lands on {type(layer).__name__} {layer.name!r}"
            )
        if f"/{layer.name}/" not in folded.kernel_name:
            raise ConfigError(f"{path}: kernel {folded.kernel_name!r} is not Keras layer {layer.name!r}")
        weights = layer.get_weights()
        if tuple(weights[0].shape) != folded.kernel.shape:
            raise ConfigError(
                f"{path}: {layer.name!r} kernel is {tuple(weights[0].shape)}, the file's is {folded.kernel.shape}"
                " (MobileNetV2 alpha 1.0 only)"
            )
        if isinstance(layer, keras.layers.Dense):
            if len(weights) != 2 or f"/{layer.name}/" not in folded.bias_name:
                raise ConfigError(f"{path}: bias {folded.bias_name!r} does not belong to {layer.name!r}")
            plan.append((layer, [folded.kernel, folded.bias], None, None))
            continue
        if len(weights) != 1:
            raise ConfigError(f"Keras layer {layer.name!r} has a bias; expected a conv followed by batch norm")
        bn = _following_batch_norm(layer, layers, position)
        if f"/{bn.name}/" not in folded.bias_name:
            raise ConfigError(f"{path}: bias {folded.bias_name!r} is not Keras layer {bn.name!r}'s shift")
        plan.append((layer, [folded.kernel], bn, folded.bias))
    for layer, weights, bn, bias in plan:
        layer.set_weights(weights)
        if bn is None:
            continue
        ones = np.ones_like(bias)
        # Identity BN: (x - 0) / sqrt((1 - eps) + eps) * 1 + bias = x + bias.
        identity = {
            "gamma": ones,
            "beta": bias,
            "moving_mean": np.zeros_like(bias),
            "moving_variance": ones - bn.epsilon,
        }
        bn.set_weights([identity[w.name] for w in bn.weights])
        if freeze_batch_norm:
            bn.trainable = False
    return len(plan)
