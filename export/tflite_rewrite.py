"""Op-for-op rewrites of a converted ``.tflite`` flatbuffer that keep what the model computes.

Both work on TensorFlow's flatbuffer object API (``tensorflow.lite.tools.flatbuffer_utils``, desktop side)
and return the new bytes with a count (0: ``content`` unchanged):

* :func:`float_depthwise_weights`: a dynamic-range model's int8 depthwise weights back to float, which
  :func:`export.tflite.convert` applies to every dynamic-range artifact it writes;
* :func:`depth_to_space_upsampling`: an any-width model's computed-size nearest resizes as
  CONCATENATION + DEPTH_TO_SPACE (bit-identical outputs), a tool applied per artifact where it measures
  faster (``benchmarks/depth_to_space_check.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _builtin(model: Any, op: Any) -> int:
    """The builtin operator code of ``op`` (the larger of the two fields: new codes live in ``builtinCode``)."""
    code = model.operatorCodes[op.opcodeIndex]
    return max(code.builtinCode, code.deprecatedBuiltinCode)


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
            if _builtin(model, op) != depthwise or len(op.inputs) < 2:
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
    -> ``SLICE [1:3]`` -> ``MUL 2``, what :func:`export.tflite.any_width_model`'s ``tf.image.resize``
    lowers to) becomes ``DEPTH_TO_SPACE(CONCATENATION(x, x, x, x), 2)`` and the size computation is
    dropped. Both put input
    pixel (i, j) at output pixels (2i + dy, 2j + dx) (with or without half-pixel centres a nearest 2x
    resize reads pixel floor(o / 2)), so the outputs are bit-identical. Resizes of any other shape are
    left alone.

    Why it exists and is not the default: XNNPACK takes neither the resize nor its size computation, so
    each upsampling runs on one thread between two XNNPACK partitions; the new ops run inside XNNPACK but
    copy the input four times. On ``bcedge/mass_model`` (session 20, 2-core Intel Xeon, avx512_vnni;
    ``benchmarks/results/depth_to_space_check*.json``) the dynamic-range artifact was 1.07-1.11x faster at
    2 threads and 0.96-1.02x at 1 (the 16-scan job's interpreters) in three runs; FP16 0.96x at 1 thread
    in all four, 0.98-1.06x at 2. Only the dynamic one was rewritten. So it is a tool for the
    machine it will run on: ``benchmarks/depth_to_space_check.py --set`` checks, times and installs it.

    Returns:
        (the new flatbuffer, how many resizes were rewritten); ``content`` itself when none were.
    """
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    op_enum = schema.BuiltinOperator

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
            if i is None or _builtin(model, ops[i]) != code or readers.get(tensor, 0) != 1:
                return None
            return i

        drop: set[int] = set()
        replace: dict[int, list] = {}
        for i, op in enumerate(ops):
            if _builtin(model, op) != op_enum.RESIZE_NEAREST_NEIGHBOR or op.builtinOptions is None:
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
