"""The three segmentation models of the study: UNet, UNet+MobileNetV2, UNet+VGG19.

Every model takes the same input, a (N, S, S, 1) float32 image in [0, 1] from
:func:`bcedge.preprocess.preprocess`, and returns (N, S, S, 1) float32 sigmoid
probabilities. Grey-to-RGB replication and the encoder's own input scaling
(VGG: caffe-style mean subtraction on a 0..255 scale; MobileNetV2: [-1, 1]) are a
frozen 1x1 convolution *inside* the graph, so every exported artifact carries them
and the runtime stays model-agnostic.

Only Keras layers and ``keras.ops`` are used, so the models build and train on
the TensorFlow, JAX and PyTorch backends alike.

Decoder upsampling. ``Conv2DTranspose`` (TRANSPOSE_CONV) is a known INT8
trouble spot in TFLite and TensorRT. The default here is nearest-neighbour
``UpSampling2D`` followed by the stage's 3x3 convolutions (RESIZE_NEAREST_NEIGHBOR
copies quantised values: exact in INT8); ``upsampling="transpose"`` stays
available. Measured by ``benchmarks/bench_upsampling.py`` on this project's CPU
(LiteRT, 1 thread, 256x256, p50; ``benchmarks/results/upsampling.json``):
dynamic-range TFLite is 3.7x *faster* than FP32 with nearest (UNet 174 vs 653 ms)
but 4.4x *slower* with transpose (2949 vs 666 ms; MobileNetV2 UNet 597 vs 41 ms),
the slow path seen in the first trial; full INT8 runs at the same speed either way
(UNet 143 vs 148 ms, MobileNetV2 UNet 11.7 vs 13.9 ms) and tracked the FP32 mask
more closely with nearest on the plain UNet (mask Dice vs Keras 0.980 vs 0.924).
Transpose is faster only in FP32 for the MobileNetV2 UNet (41 vs 56 ms), whose
transposed convolutions also halve the channels before the concatenation. Nearest
wins where quantised models run, so it is the default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bcedge.errors import BcedgeError, ConfigError, MissingDependencyError

MODEL_NAMES = ("unet", "unet-mobilenetv2", "unet-vgg19")
Upsampling = Literal["nearest", "bilinear", "transpose"]


@dataclass(frozen=True)
class EncoderSpec:
    """How to build a UNet on a ``keras.applications`` backbone.

    Attributes:
        application: constructor name in ``keras.applications``.
        skips: skip-connection layer names, deepest first (stride 16, 8, 4, 2[, 1]).
        bottleneck: layer feeding the decoder (stride 32).
        scale, offsets: the input normalisation as ``rgb = x * scale + offsets``
            for ``x`` in [0, 1] (replaces the application's ``preprocess_input``).
        weights_file: the file Keras downloads for ``weights="imagenet"``.
    """

    application: str
    skips: tuple[str, ...]
    bottleneck: str
    scale: float
    offsets: tuple[float, float, float]
    weights_file: str


#: Skip layers per backbone, as in qubvel/segmentation_models (a data table, not code).
ENCODERS: dict[str, EncoderSpec] = {
    "vgg19": EncoderSpec(
        application="VGG19",
        skips=("block5_conv4", "block4_conv4", "block3_conv4", "block2_conv2", "block1_conv2"),
        bottleneck="block5_pool",
        # caffe mode: RGB->BGR on a 0..255 scale minus the ImageNet BGR mean; grey input
        # makes the channel order moot, so only the per-channel mean matters.
        scale=255.0,
        offsets=(-103.939, -116.779, -123.68),
        weights_file="vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
    ),
    "mobilenetv2": EncoderSpec(
        application="MobileNetV2",
        skips=("block_13_expand_relu", "block_6_expand_relu", "block_3_expand_relu", "block_1_expand_relu"),
        bottleneck="out_relu",
        scale=2.0,  # tf mode: [0, 1] -> [-1, 1]
        offsets=(-1.0, -1.0, -1.0),
        weights_file="mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_{size}_no_top.h5",
    ),
}

DECODER_FILTERS = (256, 128, 64, 32, 16)

#: Batch-norm momentum of every BN layer (encoder included). Inference uses the moving
#: statistics; with small datasets (tens of steps per epoch) Keras' 0.99 (MobileNetV2:
#: 0.999) averages over many epochs of changing weights, and on our data the MobileNetV2
#: UNet predicted nothing in inference mode while training Dice rose. 0.9 tracks the last
#: ~10 steps. ``training.batchnorm.recalibrate`` re-estimates them exactly after training.
BN_MOMENTUM = 0.9


def _keras():
    try:
        import keras
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise MissingDependencyError("building a model", "train", "keras>=3") from exc
    return keras


def _conv_bn_relu(x, filters: int, name: str, batch_norm: bool = True):
    keras = _keras()
    layers = keras.layers
    x = layers.Conv2D(
        filters, 3, padding="same", use_bias=not batch_norm, kernel_initializer="he_normal", name=f"{name}_conv"
    )(x)
    if batch_norm:
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def _upsample(x, filters: int, mode: Upsampling, name: str):
    layers = _keras().layers
    if mode == "transpose":
        return layers.Conv2DTranspose(filters, 2, strides=2, padding="same", name=f"{name}_transpose")(x)
    return layers.UpSampling2D(2, interpolation=mode, name=f"{name}_upsample")(x)


def _grey_to_rgb(x, scale: float, offsets: tuple[float, float, float], name: str = "grey_to_rgb"):
    """Frozen 1x1 conv: (N,H,W,1) in [0,1] -> (N,H,W,3) as the encoder expects."""
    keras = _keras()
    import numpy as np

    layer = keras.layers.Conv2D(3, 1, use_bias=True, trainable=False, name=name)
    y = layer(x)
    layer.set_weights([np.full((1, 1, 1, 3), scale, np.float32), np.asarray(offsets, np.float32)])
    return y


def _check_size(name: str, input_size: int | None, multiple: int) -> None:
    # None builds a model for any input side (patch training; see training.train.fix_input_size).
    if input_size is not None and (input_size < multiple or input_size % multiple):
        raise ConfigError(f"model {name!r} needs an input size that is a multiple of {multiple}, got {input_size}")


def build_unet(
    input_size: int | None = 256,
    base_filters: int = 64,
    depth: int = 4,
    batch_norm: bool = True,
    upsampling: Upsampling = "nearest",
):
    """Plain UNet after Ronneberger et al. 2015 ('same' padding, optional batch norm).

    Args:
        input_size: S of the (S, S, 1) input; a multiple of 2**depth.
        base_filters: filters of the first stage, doubled at every downsampling (64 in the paper).
        depth: number of downsamplings (4 in the paper).
        batch_norm: batch normalisation after each convolution.
        upsampling: decoder upsampling, see the module doc.

    Returns:
        ``keras.Model`` named ``unet``: (N, S, S, 1) float32 -> (N, S, S, 1) sigmoid.
    """
    keras = _keras()
    layers = keras.layers
    _check_size("unet", input_size, 2**depth)
    inputs = keras.Input((input_size, input_size, 1), name="image")
    x = inputs
    skips = []
    for level in range(depth):
        f = base_filters * 2**level
        x = _conv_bn_relu(x, f, f"enc{level}_a", batch_norm)
        x = _conv_bn_relu(x, f, f"enc{level}_b", batch_norm)
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"enc{level}_pool")(x)
    f = base_filters * 2**depth
    x = _conv_bn_relu(x, f, "bottleneck_a", batch_norm)
    x = _conv_bn_relu(x, f, "bottleneck_b", batch_norm)
    for level in reversed(range(depth)):
        f = base_filters * 2**level
        x = _upsample(x, f, upsampling, f"dec{level}")
        x = layers.Concatenate(name=f"dec{level}_concat")([x, skips[level]])
        x = _conv_bn_relu(x, f, f"dec{level}_a", batch_norm)
        x = _conv_bn_relu(x, f, f"dec{level}_b", batch_norm)
    outputs = layers.Conv2D(1, 1, activation="sigmoid", dtype="float32", name="mask")(x)
    return keras.Model(inputs, outputs, name="unet")


def resolve_encoder_weights(encoder_weights: str | os.PathLike[str] | None) -> str | Path | None:
    """``imagenet`` | ``none``/None | a path to a weights file -> value for the builder."""
    if encoder_weights is None or str(encoder_weights).lower() in {"none", ""}:
        return None
    if str(encoder_weights).lower() == "imagenet":
        return "imagenet"
    path = Path(encoder_weights)
    if not path.is_file():
        raise ConfigError(
            f"--encoder-weights {encoder_weights!r}: expected 'imagenet', 'none' or an existing weights file"
        )
    return path


def is_tflite_weights(weights: str | Path | None) -> bool:
    """True for a ``.tflite`` weights file (read by :mod:`training.imagenet_tflite`)."""
    return isinstance(weights, Path) and weights.suffix.lower() == ".tflite"


def check_encoder_weights(
    model: str, encoder_weights: str | os.PathLike[str] | None, width: float = 1.0
) -> str | Path | None:
    """Resolve ``--encoder-weights`` for ``model`` and refuse what that model cannot take.

    The one ImageNet file reachable here is a full-integer MobileNetV2 alpha 1.0 TFLite
    (``../shared/weights``): only ``unet-mobilenetv2`` at width 1.0 can use it.

    Raises:
        ConfigError: a missing file, weights for the plain UNet, a ``.tflite`` for VGG19,
            or a ``.tflite`` with a MobileNetV2 width other than 1.0.
    """
    weights = resolve_encoder_weights(encoder_weights)
    if weights is None:
        return None
    if model == "unet":
        raise ConfigError("the plain UNet has no pretrained encoder; use --encoder-weights none")
    if is_tflite_weights(weights):
        if model != "unet-mobilenetv2":
            raise ConfigError(
                f"--encoder-weights {weights}: a TFLite file holds MobileNetV2 weights; "
                "no ImageNet weights reachable for VGG19; train from scratch (--encoder-weights none)"
            )
        if width != 1.0:
            raise ConfigError(
                f"--encoder-weights {weights}: the TFLite ImageNet weights are MobileNetV2 alpha 1.0; "
                f"use --width 1.0 (got {width})"
            )
    return weights


def _encoder(spec: EncoderSpec, input_size: int | None, weights: str | Path | None, alpha: float = 1.0):
    keras = _keras()
    constructor = getattr(keras.applications, spec.application)
    kwargs: dict = {"include_top": False, "input_shape": (input_size, input_size, 3)}
    if spec.application == "MobileNetV2":
        kwargs["alpha"] = alpha
    if weights == "imagenet":
        try:
            return constructor(weights="imagenet", **kwargs)
        except Exception as exc:  # network errors surface as many types (URLError, OSError, Exception)
            cache = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"
            fname = spec.weights_file.format(
                alpha=alpha, size=input_size if input_size in (96, 128, 160, 192, 224) else 224
            )
            raise BcedgeError(
                f"downloading ImageNet weights for {spec.application} failed ({type(exc).__name__}); "
                f"put {fname} into {cache}/ or pass --encoder-weights none|PATH"
            ) from exc
    model = constructor(weights=None, **kwargs)
    if is_tflite_weights(weights):
        from training.imagenet_tflite import load_mobilenetv2_tflite

        load_mobilenetv2_tflite(model, weights)
    elif isinstance(weights, Path):
        try:
            model.load_weights(str(weights))
        except Exception as exc:  # wrong file, wrong architecture
            raise ConfigError(
                f"--encoder-weights {weights}: cannot load into {spec.application} ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''})"
            ) from exc
    return model


def build_encoder_unet(
    backbone: str,
    input_size: int | None = 256,
    encoder_weights: str | os.PathLike[str] | None = None,
    decoder_filters: tuple[int, ...] = DECODER_FILTERS,
    upsampling: Upsampling = "nearest",
    freeze_encoder: bool = False,
    alpha: float = 1.0,
):
    """UNet decoder on a ``keras.applications`` encoder, in the style of segmentation_models.

    Args:
        backbone: a key of :data:`ENCODERS` (``vgg19``, ``mobilenetv2``).
        input_size: S of the (S, S, 1) input; a multiple of 32.
        encoder_weights: ``imagenet`` (Keras download), ``none``/None, a Keras weights file, or
            (MobileNetV2 alpha 1.0) the full-integer ImageNet ``.tflite`` (:mod:`training.imagenet_tflite`).
        decoder_filters: filters of the five decoder stages, deepest first.
        upsampling: decoder upsampling, see the module doc.
        freeze_encoder: make the encoder non-trainable (for warm-up with ImageNet weights).
        alpha: MobileNetV2 width multiplier (ImageNet weights exist for 0.35, 0.5, 0.75, 1.0, 1.3, 1.4);
            ignored by VGG19, which has none.

    Returns:
        ``keras.Model`` named ``unet-<backbone>``: (N, S, S, 1) float32 -> (N, S, S, 1) sigmoid.
    """
    keras = _keras()
    layers = keras.layers
    if backbone not in ENCODERS:
        raise ConfigError(f"unknown backbone {backbone!r}; expected one of {sorted(ENCODERS)}")
    spec = ENCODERS[backbone]
    _check_size(f"unet-{backbone}", input_size, 32)
    weights = check_encoder_weights(f"unet-{backbone}", encoder_weights, alpha)
    encoder = _encoder(spec, input_size, weights, alpha)
    # Setting ``trainable`` on the encoder sets it on every layer; the batch norms that
    # the TFLite loader froze (identity + folded bias, see training.imagenet_tflite) stay frozen.
    frozen = [layer for layer in encoder.layers if not layer.trainable]
    encoder.trainable = not freeze_encoder
    for layer in frozen:
        layer.trainable = False
    for layer in encoder.layers:
        if isinstance(layer, layers.BatchNormalization):
            # keras.applications builds MobileNetV2 with momentum 0.999; see BN_MOMENTUM.
            layer.momentum = BN_MOMENTUM
    # One feature extractor (bottleneck + skips) applied to the in-graph RGB tensor.
    features = keras.Model(
        encoder.input,
        [encoder.get_layer(spec.bottleneck).output] + [encoder.get_layer(n).output for n in spec.skips],
        name=f"encoder_{backbone}",
    )
    inputs = keras.Input((input_size, input_size, 1), name="image")
    rgb = _grey_to_rgb(inputs, spec.scale, spec.offsets)
    x, *skips = features(rgb)
    for stage, filters in enumerate(decoder_filters):
        name = f"decoder_stage{stage}"
        x = _upsample(x, filters, upsampling, name)
        if stage < len(skips):
            x = layers.Concatenate(name=f"{name}_concat")([x, skips[stage]])
        x = _conv_bn_relu(x, filters, f"{name}a")
        x = _conv_bn_relu(x, filters, f"{name}b")
    outputs = layers.Conv2D(1, 3, padding="same", activation="sigmoid", dtype="float32", name="mask")(x)
    return keras.Model(inputs, outputs, name=f"unet-{backbone}")


def check_freeze_encoder(name: str, freeze_encoder: bool) -> None:
    """Refuse ``--freeze-encoder`` for a model without an encoder (the plain UNet).

    Raises:
        ConfigError: one line.
    """
    if freeze_encoder and name == "unet":
        raise ConfigError("--freeze-encoder applies to the encoder UNets; the plain UNet has no encoder")


def build_model(
    name: str,
    input_size: int | None = 256,
    encoder_weights: str | os.PathLike[str] | None = None,
    *,
    base_filters: int = 64,
    batch_norm: bool = True,
    upsampling: Upsampling = "nearest",
    width: float = 1.0,
    decoder_width: float | None = None,
    freeze_encoder: bool = False,
):
    """Build one of :data:`MODEL_NAMES` for a (input_size, input_size, 1) input in [0, 1].

    Args:
        name: ``unet``, ``unet-mobilenetv2`` or ``unet-vgg19``.
        input_size: model input side in pixels (None: any multiple of 32, for patch training).
        encoder_weights: encoder UNets only: ``imagenet``, ``none``/None, a weights file or
            (``unet-mobilenetv2``, width 1.0) the ImageNet ``.tflite``.
        base_filters: plain UNet only: filters of the first stage.
        batch_norm: plain UNet only: batch normalisation.
        upsampling: ``nearest`` (default), ``bilinear`` or ``transpose``.
        width: encoder UNets only: multiplies the decoder filters and is MobileNetV2's
            ``alpha`` (0.35 gives the ~1.5 M-parameter demo model); 1.0 is the study's model.
        decoder_width: encoder UNets only: multiplies the decoder filters instead of ``width``
            (None/0: ``width``). At 256 px the full decoder costs ~8.5 GFLOPs per image against
            ~0.4 for the MobileNetV2 encoder (its first stage convolves 1,856 channels at 1/16
            scale); 0.5 cuts the model to ~3 GFLOPs while keeping the ImageNet encoder whole.
        freeze_encoder: encoder UNets only: the encoder's weights are not trained (only the decoder
            learns), a regulariser for fine-tuning on a few hundred images.
    """
    if decoder_width is not None and decoder_width != 0 and not 0.05 <= decoder_width <= 1.0:
        raise ConfigError(f"decoder width must be in [0.05, 1.0], got {decoder_width}")
    if not 0.05 <= width <= 1.0:
        raise ConfigError(f"width must be in [0.05, 1.0], got {width}")
    if upsampling not in ("nearest", "bilinear", "transpose"):
        raise ConfigError(f"unknown upsampling {upsampling!r}; expected nearest, bilinear or transpose")
    if name == "unet":
        check_encoder_weights(name, encoder_weights)
        if width != 1.0:
            raise ConfigError("--width applies to the encoder UNets; the plain UNet takes --base-filters")
        check_freeze_encoder(name, freeze_encoder)
        return build_unet(input_size, base_filters=base_filters, batch_norm=batch_norm, upsampling=upsampling)
    if name.startswith("unet-") and name[5:] in ENCODERS:
        scale = decoder_width or width
        decoder = tuple(max(4, round(f * scale)) for f in DECODER_FILTERS)
        return build_encoder_unet(
            name[5:],
            input_size,
            encoder_weights,
            decoder_filters=decoder,
            upsampling=upsampling,
            freeze_encoder=freeze_encoder,
            alpha=width,
        )
    raise ConfigError(f"unknown model {name!r}; expected one of {', '.join(MODEL_NAMES)}")


def custom_objects() -> dict:
    """The custom losses and metrics a saved bcedge model refers to."""
    from training.losses import LOSSES, SegmentationMetric

    return {"SegmentationMetric": SegmentationMetric, **LOSSES}


def load_trained(path: str | os.PathLike[str], compile: bool = False):
    """Load a ``.keras`` model saved by ``bcedge train`` (custom objects registered).

    Raises:
        InputError: the file is missing, corrupt or not a Keras model (one line).
    """
    keras = _keras()
    from bcedge.errors import InputError

    try:
        return keras.models.load_model(path, custom_objects=custom_objects(), compile=compile)
    except Exception as exc:  # a corrupt or foreign file: Keras raises many kinds
        first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
        raise InputError(f"{path}: cannot load the model ({type(exc).__name__}: {first})") from exc
