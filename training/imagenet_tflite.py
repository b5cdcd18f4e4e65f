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

:func:`read_float_kernels` and :func:`load_float_tflite` do the same for a bundle's FP32/FP16
artifact (float kernels, batch norm folded), matching convolutions to any Keras model's layers
(nested models included) by name: ``training/rebuild_from_bundle.py`` rebuilds a trained model
whose checkpoint is lost from them.

Why one module: both readers undo the same conversion (TFLite's folded batch norm, its kernel
layouts, its op listing) into the same Keras layers with the same identity-BN trick; they differ
only in how a kernel is stored (int8 with scales, or float16/float32 behind a DEQUANTIZE).
"""

from __future__ import annotations

import os
import re
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


# --------------------------------------------------------------------------- float (FP32/FP16) files
#
# A bundle's FP32/FP16 TFLite artifact holds the trained network with each batch norm folded into
# the convolution before it, in float: enough to rebuild the Keras model when its checkpoint is
# lost (training/rebuild_from_bundle.py). FP16 files store every kernel and bias as a float16
# constant that a DEQUANTIZE op widens to float32 at load; FP32 files feed float32 constants
# straight to the convolution. The folded network is the same function as the trained one, so
# loading it into the Keras architecture (each BN set to identity plus the folded shift) gives a
# model whose outputs match the artifact's; the separate BN statistics are not recoverable.

#: Convolution ops a float file is read for, and the Keras layer class each maps onto.
FLOAT_KERNEL_OPS = {op: KERNEL_OPS[op] for op in ("CONV_2D", "DEPTHWISE_CONV_2D")}


def _float_constant(interpreter, tensors: dict, producers: dict, index: int, path: Path, what: str):
    """The float32 value and stored name of the constant feeding input ``index`` of a conv op.

    Follows one DEQUANTIZE (FP16 files: float16 constant -> float32). ``producers`` maps an output
    tensor index to the op that writes it (``_get_ops_details`` rows).

    Returns:
        ``(values float32 ndarray, name of the stored tensor)``.

    Raises:
        ConfigError: the input is computed (not a constant), or stored as int8/int32 (a quantised model).
    """
    op = producers.get(index)
    if op is not None:
        if op["op_name"] != "DEQUANTIZE":
            raise ConfigError(f"{path}: {what} is computed by a {op['op_name']} op, not a stored constant")
        index = int(op["inputs"][0])
        if index in producers:
            raise ConfigError(f"{path}: {what} is dequantised from a computed tensor, not a stored constant")
    detail = tensors[index]
    dtype = np.dtype(detail["dtype"])
    if dtype in (np.int8, np.uint8, np.int32, np.int16):
        # Dynamic-range and full-integer files keep quantised kernels: those are not the float weights.
        raise ConfigError(f"{path}: {what} {detail['name']!r} is stored as {dtype.name}: not a float (FP32/FP16) model")
    if dtype not in (np.float16, np.float32):
        raise ConfigError(f"{path}: {what} {detail['name']!r} is {dtype.name}; expected float32 or float16")
    try:
        values = interpreter.get_tensor(index)
    except ValueError as exc:  # LiteRT: a tensor without a buffer (a runtime input or intermediate)
        raise ConfigError(f"{path}: {what} {detail['name']!r} is not a stored constant") from exc
    return np.asarray(values, dtype=np.float32), str(detail["name"])


def read_float_kernels(path: str | os.PathLike[str]) -> list[FoldedKernel]:
    """Every CONV_2D / DEPTHWISE_CONV_2D kernel of an FP32 or FP16 TFLite file, in graph order.

    Returns:
        One :class:`FoldedKernel` per convolution: ``kernel`` float32 in the Keras layout (Conv2D
        (kh, kw, in, out), DepthwiseConv2D (kh, kw, C, 1)), ``bias`` float32 (out,) (zeros when
        the op has none), ``kernel_name``/``bias_name`` the stored constants' names (for FP16,
        the float16 constants behind the DEQUANTIZE ops), ``step`` zeros (not quantised).

    Raises:
        ConfigError: not a readable TFLite file, a kernel that is not a stored float constant
            (int8 kernels: a dynamic-range or full-integer model), or a file without convolutions.
    """
    path = Path(path)
    interpreter = _interpreter(path)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    # _get_ops_details is LiteRT's only per-op listing (see read_folded_kernels).
    ops = interpreter._get_ops_details()
    producers = {int(o): op for op in ops for o in op["outputs"] if int(o) >= 0}
    kernels: list[FoldedKernel] = []
    for op in ops:
        name = op["op_name"]
        if name not in FLOAT_KERNEL_OPS:
            continue
        inputs = [int(i) for i in op["inputs"]]
        if len(inputs) < 2 or inputs[1] < 0:
            raise ConfigError(f"{path}: {name} op {op['index']} has no kernel input")
        kernel, kernel_name = _float_constant(interpreter, tensors, producers, inputs[1], path, f"{name} kernel")
        if kernel.ndim != 4:
            raise ConfigError(f"{path}: {name} kernel {kernel_name!r} has shape {kernel.shape}; expected 4-D")
        out_channels = kernel.shape[-1] if name == "DEPTHWISE_CONV_2D" else kernel.shape[0]
        if len(inputs) > 2 and inputs[2] >= 0:
            bias, bias_name = _float_constant(interpreter, tensors, producers, inputs[2], path, f"{name} bias")
            bias = bias.reshape(-1)
        else:  # an op without the optional bias input adds nothing
            bias, bias_name = np.zeros(out_channels, np.float32), ""
        if bias.shape != (out_channels,):
            raise ConfigError(f"{path}: bias {bias_name!r} has {bias.size} values for {out_channels} channels")
        kernels.append(
            FoldedKernel(
                op=name,
                kernel=_to_keras_layout(name, kernel),
                bias=bias,
                kernel_name=kernel_name,
                bias_name=bias_name,
                step=np.zeros(out_channels, np.float32),
            )
        )
    if not kernels:
        raise ConfigError(f"{path}: no CONV_2D or DEPTHWISE_CONV_2D op; not a convolutional model")
    return kernels


def _layer_name_pattern(name: str) -> re.Pattern[str]:
    """Matches the Keras layer ``name`` as one scope of a TFLite tensor name.

    A scope is ``name/`` or ``name_<digits>/`` (Keras 3's export suffixes scopes, e.g. ``Conv1_1/``),
    preceded by the start, ``/`` or ``;`` (fused tensors join several names with ``;``). So
    ``block_1_expand`` does not match ``block_11_expand_1/`` and ``Conv1`` does not match ``Conv_1_1/``.
    """
    return re.compile(r"(?:^|[/;])" + re.escape(name) + r"(?:_\d+)?/")


def _kernel_layers(model) -> list[tuple[object, list, int]]:
    """Every layer of ``model`` and its nested models as ``(layer, its model's layers, position)``.

    Nested models are walked recursively (the encoder UNets hold the encoder as a sub-model); the
    sibling list is what :func:`_following_batch_norm` searches. Each layer appears once.
    """
    import keras

    found: list[tuple[object, list, int]] = []
    seen: set[int] = set()

    def walk(container) -> None:
        siblings = list(container.layers)
        for position, layer in enumerate(siblings):
            if id(layer) in seen:
                continue
            seen.add(id(layer))
            found.append((layer, siblings, position))
            if isinstance(layer, keras.Model):
                walk(layer)

    walk(model)
    return found


def _identity_bn_weights(bn, bias: np.ndarray) -> list[np.ndarray]:
    """The weights that make ``bn`` (inference mode) the per-channel shift ``x + bias``.

    Gamma 1, beta = bias, moving mean 0, moving variance 1 - epsilon (so sqrt(var + eps) = 1).

    Raises:
        ConfigError: ``bn`` lacks one of the four weights (``center``/``scale`` off) or has another size.
    """
    ones = np.ones_like(bias)
    identity = {"gamma": ones, "beta": bias, "moving_mean": np.zeros_like(bias), "moving_variance": ones - bn.epsilon}
    names = [w.name for w in bn.weights]
    if sorted(names) != sorted(identity):
        raise ConfigError(f"BatchNormalization {bn.name!r} has weights {names}; expected {sorted(identity)}")
    for w in bn.weights:
        if tuple(w.shape) != bias.shape:
            raise ConfigError(
                f"BatchNormalization {bn.name!r} has {tuple(w.shape)} {w.name}; the file's bias {bias.shape}"
            )
    return [identity[name] for name in names]


def load_float_tflite(model, path: str | os.PathLike[str]) -> int:
    """Set a Keras model to the weights of an FP32/FP16 TFLite file exported from its architecture.

    Each Keras ``Conv2D``/``DepthwiseConv2D`` (nested models included) takes the one TFLite kernel
    whose tensor name holds its layer name as a scope (:func:`_layer_name_pattern`): matched by
    name, not graph position. A conv with its own bias gets ``[kernel, bias]`` (a BatchNormalization
    after it, if any, becomes identity); a conv without bias gets the kernel and the BatchNormalization
    that consumes its output becomes identity plus the folded bias (:func:`_identity_bn_weights`);
    ``trainable`` is left as it is.

    Args:
        model: the Keras model, built (e.g. ``training.models.build_model(..., encoder_weights=None)``)
            with the architecture, widths and upsampling the file was exported from; any input size.
        path: the FP32 or FP16 ``.tflite`` (:func:`read_float_kernels`).

    Returns:
        The number of convolutions loaded (each file kernel exactly once).

    Raises:
        ConfigError: a Keras conv matched by no or several kernels, a kernel matched by no or several
            convs, a shape mismatch, a folded bias with no bias or BatchNormalization to go to, or a
            layer with weights the file cannot set. Everything is checked first: on error the model
            is untouched.
    """
    import keras

    path = Path(path)
    kernels = read_float_kernels(path)
    entries = _kernel_layers(model)
    convs = [
        (layer, siblings, pos) for layer, siblings, pos in entries if type(layer).__name__ in FLOAT_KERNEL_OPS.values()
    ]
    patterns = {id(layer): _layer_name_pattern(layer.name) for layer, _, _ in convs}
    claimed: dict[int, list[str]] = {i: [] for i in range(len(kernels))}
    plan: list[tuple[object, list[np.ndarray], object | None, list[np.ndarray] | None]] = []
    covered: set[int] = set()
    for layer, siblings, position in convs:
        pattern = patterns[id(layer)]
        hits = [i for i, k in enumerate(kernels) if pattern.search(k.kernel_name)]
        if len(hits) != 1:
            names = ", ".join(repr(kernels[i].kernel_name) for i in hits[:3])
            raise ConfigError(
                f"{path}: Keras layer {layer.name!r} matches {len(hits)} kernels of the file"
                + (f" ({names})" if hits else "; the file is not of this architecture")
            )
        folded = kernels[hits[0]]
        claimed[hits[0]].append(layer.name)
        expected_op = {v: k for k, v in FLOAT_KERNEL_OPS.items()}[type(layer).__name__]
        if folded.op != expected_op:
            raise ConfigError(
                f"{path}: {folded.op} {folded.kernel_name!r} lands on {type(layer).__name__} {layer.name!r}"
            )
        weights = layer.get_weights()
        if tuple(weights[0].shape) != folded.kernel.shape:
            raise ConfigError(
                f"{path}: {layer.name!r} kernel is {tuple(weights[0].shape)}, the file's is {folded.kernel.shape}"
                " (another width or architecture)"
            )
        covered.add(id(layer))
        if len(weights) == 2:
            if tuple(weights[1].shape) != folded.bias.shape:
                raise ConfigError(
                    f"{path}: {layer.name!r} bias is {tuple(weights[1].shape)}, the file's {folded.bias.shape}"
                )
            # A BN after a conv that has its own bias: the converter folded both; the bias carries it all.
            try:
                bn = _following_batch_norm(layer, siblings, position)
            except ConfigError:
                bn = None
            bn_weights = None if bn is None else _identity_bn_weights(bn, np.zeros_like(folded.bias))
            plan.append((layer, [folded.kernel, folded.bias], bn, bn_weights))
        elif len(weights) == 1:
            try:
                bn = _following_batch_norm(layer, siblings, position)
            except ConfigError:
                if np.any(folded.bias):
                    raise ConfigError(
                        f"{path}: {layer.name!r} has no bias and no BatchNormalization after it, but the file's "
                        f"convolution adds a bias ({folded.bias_name!r})"
                    ) from None
                bn = None
            bn_weights = None if bn is None else _identity_bn_weights(bn, folded.bias)
            plan.append((layer, [folded.kernel], bn, bn_weights))
        else:
            raise ConfigError(f"Keras layer {layer.name!r} has {len(weights)} weight arrays; expected kernel [+ bias]")
        if bn is not None:
            covered.add(id(bn))
    unused = [kernels[i].kernel_name for i, layers in claimed.items() if not layers]
    if unused:
        raise ConfigError(
            f"{path}: {len(unused)} kernels match no Keras conv of {model.name!r} (e.g. {unused[0]!r}); "
            "the file is not of this architecture"
        )
    shared = {kernels[i].kernel_name: layers for i, layers in claimed.items() if len(layers) > 1}
    if shared:
        name, layers = next(iter(shared.items()))
        raise ConfigError(f"{path}: kernel {name!r} matches several Keras layers ({', '.join(layers)})")
    # Every layer with weights must be set from the file, or the rebuilt model would mix in its init.
    leftover = [
        layer.name
        for layer, _, _ in entries
        if id(layer) not in covered and not isinstance(layer, keras.Model) and layer.weights
    ]
    if leftover:
        raise ConfigError(
            f"{path}: Keras layers {', '.join(leftover[:3])} of {model.name!r} have weights the file's "
            "convolutions do not set (transposed convolution, dense or a free batch norm)"
        )
    for layer, weights, bn, bn_weights in plan:
        layer.set_weights(weights)
        if bn is not None:
            bn.set_weights(bn_weights)
    return len(plan)
