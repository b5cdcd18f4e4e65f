"""A tiny bundle for benchmark tests, built without TensorFlow (milliseconds, not seconds).

The same three-layer network is written twice, as a TFLite flatbuffer (through LiteRT's
flatbuffer schema) and as an ONNX graph (through ``onnx.helper``):

    image (1, S, S, 1) float32
      -> 3x3 conv, 1 -> C channels, SAME padding, ReLU        S*S*C*9 MACs
      -> 3x3 depthwise conv, C channels, SAME padding         S*S*C*9 MACs
      -> 1x1 conv, C -> 1                                     S*S*C   MACs
      -> sigmoid

so its multiply-accumulates can be counted by hand (:func:`tiny_macs`). The weights make a
smooth "bright region" detector: a local mean, centred on 0.55 and scaled, so a
preprocessed phantom gives a mask that is neither empty nor everything.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CHANNELS = 4
SIZE = 32


def tiny_macs(size: int = SIZE, channels: int = CHANNELS) -> int:
    """Hand count of the tiny network's multiply-accumulates for one image."""
    conv1 = size * size * channels * 3 * 3 * 1
    depthwise = size * size * channels * 3 * 3
    conv2 = size * size * 1 * 1 * 1 * channels
    return conv1 + depthwise + conv2


def _weights(channels: int) -> dict[str, np.ndarray]:
    w1 = np.full((channels, 3, 3, 1), 1.0 / 9.0, np.float32)  # OHWI: local mean in every channel
    b1 = np.zeros(channels, np.float32)
    dw = np.zeros((1, 3, 3, channels), np.float32)  # 1HWO: identity (centre tap)
    dw[0, 1, 1, :] = 1.0
    bdw = np.zeros(channels, np.float32)
    w2 = np.zeros((1, 1, 1, channels), np.float32)  # OHWI
    w2[0, 0, 0, 0] = 20.0
    b2 = np.array([-11.0], np.float32)  # logit 20 * (mean - 0.55)
    return {"w1": w1, "b1": b1, "dw": dw, "bdw": bdw, "w2": w2, "b2": b2}


def write_tiny_tflite(path: Path, size: int = SIZE, channels: int = CHANNELS) -> Path:
    """Write the tiny network as a float32 ``.tflite`` (batch 1)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s

    w = _weights(channels)
    model = s.ModelT()
    model.version = 3
    model.description = "bcedge tiny benchmark model"
    codes = []
    for code in (s.BuiltinOperator.CONV_2D, s.BuiltinOperator.DEPTHWISE_CONV_2D, s.BuiltinOperator.LOGISTIC):
        oc = s.OperatorCodeT()
        oc.builtinCode = code
        oc.deprecatedBuiltinCode = min(code, 127)
        oc.version = 1
        codes.append(oc)
    model.operatorCodes = codes
    buffers = [s.BufferT()]
    tensors = []

    def tensor(name: str, shape: tuple[int, ...], data: np.ndarray | None = None) -> int:
        t = s.TensorT()
        t.name = name
        t.shape = list(shape)
        t.type = s.TensorType.FLOAT32
        if data is None:
            t.buffer = 0
        else:
            b = s.BufferT()
            b.data = np.frombuffer(np.ascontiguousarray(data, np.float32).tobytes(), np.uint8)
            buffers.append(b)
            t.buffer = len(buffers) - 1
        tensors.append(t)
        return len(tensors) - 1

    act = (1, size, size, channels)
    x = tensor("image", (1, size, size, 1))
    w1, b1 = tensor("w1", w["w1"].shape, w["w1"]), tensor("b1", w["b1"].shape, w["b1"])
    t1 = tensor("t1", act)
    dw, bdw = tensor("dw", w["dw"].shape, w["dw"]), tensor("bdw", w["bdw"].shape, w["bdw"])
    t2 = tensor("t2", act)
    w2, b2 = tensor("w2", w["w2"].shape, w["w2"]), tensor("b2", w["b2"].shape, w["b2"])
    t3 = tensor("logits", (1, size, size, 1))
    out = tensor("mask", (1, size, size, 1))

    def op(code_index: int, inputs: list[int], outputs: list[int], options_type: int = 0, options=None):
        o = s.OperatorT()
        o.opcodeIndex = code_index
        o.inputs, o.outputs = inputs, outputs
        o.builtinOptionsType = options_type
        o.builtinOptions = options
        return o

    conv1 = s.Conv2DOptionsT(padding=s.Padding.SAME, strideW=1, strideH=1)
    conv1.fusedActivationFunction = s.ActivationFunctionType.RELU
    dw_opts = s.DepthwiseConv2DOptionsT()
    dw_opts.padding, dw_opts.strideW, dw_opts.strideH, dw_opts.depthMultiplier = s.Padding.SAME, 1, 1, 1
    conv2 = s.Conv2DOptionsT(padding=s.Padding.SAME, strideW=1, strideH=1)
    graph = s.SubGraphT()
    graph.name = "main"
    graph.tensors = tensors
    graph.inputs, graph.outputs = [x], [out]
    graph.operators = [
        op(0, [x, w1, b1], [t1], s.BuiltinOptions.Conv2DOptions, conv1),
        op(1, [t1, dw, bdw], [t2], s.BuiltinOptions.DepthwiseConv2DOptions, dw_opts),
        op(0, [t2, w2, b2], [t3], s.BuiltinOptions.Conv2DOptions, conv2),
        op(2, [t3], [out]),
    ]
    model.subgraphs = [graph]
    model.buffers = buffers
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(bytes(builder.Output()))
    return path


def write_tiny_onnx(path: Path, size: int = SIZE, channels: int = CHANNELS) -> Path:
    """Write the same network as ``.onnx`` (NHWC in and out, dynamic batch, opset 17)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = _weights(channels)
    inits = [
        numpy_helper.from_array(w["w1"].transpose(0, 3, 1, 2).copy(), "w1"),  # OIHW
        numpy_helper.from_array(w["b1"], "b1"),
        numpy_helper.from_array(w["dw"].transpose(3, 0, 1, 2).copy(), "dw"),  # (C, 1, 3, 3), group C
        numpy_helper.from_array(w["bdw"], "bdw"),
        numpy_helper.from_array(w["w2"].transpose(0, 3, 1, 2).copy(), "w2"),
        numpy_helper.from_array(w["b2"], "b2"),
    ]
    nodes = [
        helper.make_node("Transpose", ["image"], ["x_nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["x_nchw", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "dw", "bdw"], ["c2"], pads=[1, 1, 1, 1], kernel_shape=[3, 3], group=channels),
        helper.make_node("Conv", ["c2", "w2", "b2"], ["c3"], kernel_shape=[1, 1]),
        helper.make_node("Sigmoid", ["c3"], ["s"]),
        helper.make_node("Transpose", ["s"], ["mask"], perm=[0, 2, 3, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", size, size, 1])],
        [helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", size, size, 1])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def make_tiny_bundle(out: Path, size: int = SIZE, *, onnx_gate: str = "not-measured") -> Path:
    """A bundle holding the tiny network as TFLite fp32 (gate passed) and ONNX fp32 (gate ``onnx_gate``)."""
    from bundle_support import write_test_manifest

    from bcedge.bundle import ArtifactRecord
    from bcedge.preprocess import PreprocessConfig

    out.mkdir(parents=True, exist_ok=True)
    write_tiny_tflite(out / "model_fp32.tflite", size)
    records = [
        ArtifactRecord.from_file(
            out,
            "model_fp32.tflite",
            format="tflite",
            precision="fp32",
            backend="tflite",
            gate="passed",
            metrics={"dice": 0.5},
            tolerance=0.001,
        )
    ]
    try:
        write_tiny_onnx(out / "model.onnx", size)
    except ImportError:
        pass
    else:
        metrics = {"dice": 0.3, "delta_dice": -0.2} if onnx_gate == "failed" else {}
        records.append(
            ArtifactRecord.from_file(
                out,
                "model.onnx",
                format="onnx",
                precision="fp32",
                backend="onnx",
                gate=onnx_gate,
                metrics=metrics,
                tolerance=0.001 if onnx_gate == "failed" else None,
            )
        )
    model = {"name": "tiny", "architecture": "tiny-cnn", "params": 0}
    write_test_manifest(out, records, PreprocessConfig(size=size, work_size=128), model=model)
    return out
