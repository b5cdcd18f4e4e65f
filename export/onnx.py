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
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

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
