"""Re-estimate batch-norm statistics of a trained model ("BN recalibration").

Inference uses each BN layer's moving mean/variance, an exponential average
taken while the weights were still changing. On small datasets that average
lags the final weights (see ``training.models.BN_MOMENTUM``). Recalibration
runs the training images once through the model in training mode, with the
momentum of step ``k`` set to ``k / (k + 1)`` so the moving statistics become the
plain average of the batch statistics under the final weights. Only BN moving
statistics change; no trainable weight does.
"""

from __future__ import annotations

import numpy as np


def batch_norm_layers(model) -> list:
    """Every BatchNormalization layer of ``model``, nested models included."""
    import keras

    return [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]


def recalibrate(model, images: np.ndarray, batch: int = 8) -> int:
    """Set BN moving statistics to the average batch statistics over ``images``.

    Args:
        model: a Keras model (eager calls; works on every backend).
        images: (N, S, S, 1) float32 in [0, 1], e.g. the training split without augmentation.
        batch: images per forward pass (the training batch size).

    Returns:
        The number of BN layers updated (0 leaves the model untouched).
    """
    layers = batch_norm_layers(model)
    if not layers or len(images) == 0:
        return 0
    saved = [layer.momentum for layer in layers]
    try:
        for step, start in enumerate(range(0, len(images), batch)):
            for layer in layers:
                layer.momentum = step / (step + 1.0)
            model(images[start : start + batch], training=True)
    finally:
        for layer, momentum in zip(layers, saved, strict=True):
            layer.momentum = momentum
    return len(layers)
