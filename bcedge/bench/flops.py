"""FLOP counting from a model's graph (TFLite and ONNX; nothing is run).

Counted: 2 x multiply-accumulates of convolutions, transposed convolutions, depthwise
convolutions and matrix products; element-wise ops, pooling and resizing are not counted.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bcedge.errors import InputError, MissingDependencyError


@dataclass
class FlopCount:
    """Multiply-accumulates of a model for one image, by op type.

    Attributes:
        macs: total multiply-accumulates (batch 1).
        by_op: op type -> MACs.
        source: where it was counted (``tflite graph``, ``onnx graph``).
    """

    macs: int
    by_op: dict[str, int]
    source: str

    @property
    def gflops(self) -> float:
        """Giga floating-point operations (2 per multiply-accumulate)."""
        return 2.0 * self.macs / 1e9


def _prod(values: Iterable[int]) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


def tflite_op_macs(op: str, inputs: Sequence[Sequence[int] | None], outputs: Sequence[Sequence[int]]) -> int:
    """Multiply-accumulates of one TFLite op from its tensor shapes (0 for ops not counted).

    Args:
        op: builtin op name (``CONV_2D``...).
        inputs: shape of each input tensor (None for an omitted optional input).
        outputs: shape of each output tensor.

    Layouts (TFLite): CONV_2D filter (Cout, Kh, Kw, Cin/groups), output NHWC; DEPTHWISE_CONV_2D
    filter (1, Kh, Kw, Cout); TRANSPOSE_CONV inputs (output_shape, filter (Cout, Kh, Kw, Cin),
    input NHWC); FULLY_CONNECTED weights (units, depth); BATCH_MATMUL (..., M, K) x (..., K, N).
    """
    if not outputs:
        return 0
    out = outputs[0]
    if op == "CONV_2D" and len(inputs) >= 2 and inputs[1] is not None:
        w = inputs[1]
        return _prod(out) * _prod(w[1:])
    if op == "DEPTHWISE_CONV_2D" and len(inputs) >= 2 and inputs[1] is not None:
        w = inputs[1]
        return _prod(out) * _prod(w[1:3])
    if op == "TRANSPOSE_CONV" and len(inputs) >= 3 and inputs[1] is not None and inputs[2] is not None:
        w, x = inputs[1], inputs[2]
        return _prod(x) * _prod(w[:3])
    if op == "FULLY_CONNECTED" and len(inputs) >= 2 and inputs[1] is not None:
        return _prod(out) * int(inputs[1][-1])
    if op == "BATCH_MATMUL" and inputs and inputs[0] is not None:
        return _prod(out) * int(inputs[0][-1])
    return 0


def count_tflite(path: str | os.PathLike[str]) -> FlopCount:
    """Count a ``.tflite`` model's MACs from its graph (LiteRT's op list and tensor shapes).

    Shapes are the model's static shapes (batch 1 for bcedge exports; a dynamic batch counts as 1);
    an any-width model counts at its square (the most it runs; :mod:`bcedge.backends.tflite`), and
    is run once on zeros for that: its upsampling computes the decoder's shapes at run time.

    Raises:
        MissingDependencyError: no TFLite interpreter installed.
        InputError: the file is not a TFLite model.
    """
    from bcedge.backends.tflite import load_interpreter_class, square_any_width

    _, interpreter_cls, resolver = load_interpreter_class("auto")
    try:
        # Builtin kernels only: the op list is then the model's own, not XNNPACK partitions.
        interp = interpreter_cls(
            model_path=str(path), experimental_op_resolver_type=resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        )
        if square_any_width(interp):
            interp.allocate_tensors()
            interp.invoke()  # zeros: the shapes, not the values, are wanted
        ops = interp._get_ops_details()
        shapes = {int(t["index"]): [max(1, int(v)) for v in t["shape"]] for t in interp.get_tensor_details()}
    except (ValueError, RuntimeError) as exc:
        raise InputError(f"{path}: not a TFLite model this interpreter can read ({exc})") from exc
    by_op: dict[str, int] = {}
    for op in ops:
        ins = [shapes.get(int(i)) if int(i) >= 0 else None for i in op["inputs"]]
        outs = [shapes[int(i)] for i in op["outputs"] if int(i) in shapes]
        macs = tflite_op_macs(op["op_name"], ins, outs)
        if macs:
            by_op[op["op_name"]] = by_op.get(op["op_name"], 0) + macs
    return FlopCount(sum(by_op.values()), by_op, "tflite graph")


def count_onnx(path: str | os.PathLike[str]) -> FlopCount:
    """Count an ``.onnx`` model's MACs from its graph (ONNX shape inference; nothing is run).

    Counted: Conv (``prod(out) * prod(W[1:])``), ConvTranspose (``prod(in) * prod(W[1:])``),
    Gemm and MatMul (``prod(out) * K``). A symbolic batch dimension counts as 1.

    Raises:
        MissingDependencyError: the ``onnx`` package is not installed.
        InputError: the file is not an ONNX model.
    """
    try:
        import onnx
        from onnx import shape_inference
    except ImportError:
        raise MissingDependencyError("counting ONNX FLOPs", "train", "onnx") from None
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError, ValueError... for a bad file
        raise InputError(f"{path}: not an ONNX model ({type(exc).__name__})") from exc
    init_names = {t.name for t in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in init_names:
            continue
        for dim in inp.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value") or dim.dim_value <= 0:
                dim.Clear()
                dim.dim_value = 1
    try:
        inferred = shape_inference.infer_shapes(model)
    except Exception as exc:  # InferenceError and friends
        raise InputError(f"{path}: ONNX shape inference failed ({type(exc).__name__}: {exc})") from exc
    shapes: dict[str, list[int]] = {t.name: list(t.dims) for t in inferred.graph.initializer}
    for vi in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = [int(d.dim_value) for d in dims]
    by_op: dict[str, int] = {}
    for node in inferred.graph.node:
        ins = [shapes.get(n) for n in node.input]
        out = shapes.get(node.output[0]) if node.output else None
        macs = 0
        if node.op_type == "Conv" and out and len(ins) > 1 and ins[1]:
            macs = _prod(out) * _prod(ins[1][1:])
        elif node.op_type == "ConvTranspose" and ins and ins[0] and len(ins) > 1 and ins[1]:
            macs = _prod(ins[0]) * _prod(ins[1][1:])
        elif node.op_type == "Gemm" and out and ins and ins[0]:
            trans_a = any(a.name == "transA" and a.i for a in node.attribute)
            macs = _prod(out) * int(ins[0][0] if trans_a else ins[0][-1])
        elif node.op_type == "MatMul" and out and ins and ins[0]:
            macs = _prod(out) * int(ins[0][-1])
        if macs:
            by_op[node.op_type] = by_op.get(node.op_type, 0) + macs
    return FlopCount(sum(by_op.values()), by_op, "onnx graph")


def count_flops(path: str | os.PathLike[str], fmt: str) -> FlopCount | None:
    """The model's :class:`FlopCount` read from an artifact of format ``fmt``, or None when that format
    (Keras, TensorRT) or the library needed to read it is not supported here."""
    try:
        if fmt == "tflite":
            return count_tflite(path)
        if fmt == "onnx":
            return count_onnx(path)
    except MissingDependencyError:
        return None
    return None
