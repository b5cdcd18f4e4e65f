"""Per-op time breakdown of a ``.tflite`` model (``bcedge benchmark --profile-ops``, ``benchmarks/profile_tflite.py``).

Each op is cut out into a one-op model and timed alone (see :func:`profile_tflite_ops`).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bcedge.bench.flops import tflite_op_macs
from bcedge.bench.timing import time_calls
from bcedge.errors import ConfigError, InputError, MissingDependencyError


@dataclass
class OpTiming:
    """One op of a TFLite model timed on its own (see :func:`profile_tflite_ops`).

    Attributes:
        index: position in the model's execution order.
        op: builtin op name.
        ms: median time of a one-op model holding it (0 for ops on constants, folded at load).
        macs: multiply-accumulates (0 when not counted).
        input_types: dtype names of its inputs (``int8``, ``float32``...): shows hybrid kernels.
        note: ``folded`` (constant inputs only), ``failed: ...`` or empty.
    """

    index: int
    op: str
    ms: float
    macs: int
    input_types: list[str]
    note: str = ""


def _schema() -> Any:
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        try:
            from tensorflow.lite.python import schema_py_generated as schema
        except ImportError:
            raise MissingDependencyError("per-op TFLite profiling", "tflite", "ai-edge-litert") from None
    return schema


def profile_tflite_ops(
    path: str | os.PathLike[str], *, threads: int | None = 1, runs: int = 20, warmup: int = 3, xnnpack: bool = True
) -> list[OpTiming]:
    """Time every op of a ``.tflite`` model by running it alone, as a one-op model.

    LiteRT's Python interpreter has no per-op profiler (the C++ ``benchmark_model`` tool
    has one), so each operator is cut out of the flatbuffer together with the constant
    tensors it reads, and any op that only transforms constants for it (the DEQUANTIZE of
    FP16 weights, which XNNPACK folds at load); its other inputs become model inputs, filled
    with random values of their type. Each one-op model runs ``warmup`` + ``runs`` times on
    the same interpreter settings as the backend (XNNPACK, ``threads``) and the median is
    kept. The sum over ops is close to the whole model's time; what is missing is
    per-invoke overhead and what XNNPACK gains by running a partition as one.

    Returns:
        One :class:`OpTiming` per op, in execution order.

    Raises:
        MissingDependencyError: no LiteRT/TensorFlow flatbuffer schema or interpreter.
        InputError: not a TFLite model.
    """
    import flatbuffers

    from bcedge.backends.tflite import load_interpreter_class

    schema = _schema()
    _, interpreter_cls, resolver = load_interpreter_class("auto")
    buf = Path(path).read_bytes()
    try:
        model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(buf, 0))
    except Exception as exc:  # flatbuffers raises struct/index errors on garbage
        raise InputError(f"{path}: not a TFLite flatbuffer ({type(exc).__name__})") from exc
    graph = model.subgraphs[0]
    for t in graph.inputs:
        signature = graph.tensors[t].shapeSignature
        if signature is not None and any(int(v) < 0 for v in list(signature)[1:]):
            # Each one-op model would run at the placeholder width 1 and time nothing real.
            raise ConfigError(
                f"{path}: takes any input width; per-op profiling needs a fixed-width export (--tflite-fixed-width)"
            )
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    type_names = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}

    def op_name(op: Any) -> str:
        code = model.operatorCodes[op.opcodeIndex]
        return names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM")

    def is_const(t: int) -> bool:
        b = graph.tensors[t].buffer
        data = model.buffers[b].data if 0 < b < len(model.buffers) else None
        return data is not None and len(data) > 0

    producer = {t: i for i, op in enumerate(graph.operators) for t in op.outputs}
    folded = {i for i, op in enumerate(graph.operators) if all(t < 0 or is_const(t) for t in op.inputs)}

    def shape(t: int) -> list[int]:
        return [max(1, int(v)) for v in (graph.tensors[t].shape if graph.tensors[t].shape is not None else [])]

    results = []
    for i, op in enumerate(graph.operators):
        name = op_name(op)
        macs = tflite_op_macs(name, [shape(t) if t >= 0 else None for t in op.inputs], [shape(t) for t in op.outputs])
        in_types = [type_names.get(graph.tensors[t].type, "?") for t in op.inputs if t >= 0]
        if i in folded:
            results.append(OpTiming(i, name, 0.0, macs, in_types, "folded"))
            continue
        ops = [producer[t] for t in op.inputs if t >= 0 and producer.get(t) in folded] + [i]
        content = _one_op_model(schema, flatbuffers, model, graph, ops, is_const)
        try:
            kwargs: dict[str, Any] = {"model_content": content, "num_threads": threads}
            if not xnnpack:
                kwargs["experimental_op_resolver_type"] = resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
            interp = interpreter_cls(**kwargs)
            interp.allocate_tensors()
            rng = np.random.default_rng(i)
            for det in interp.get_input_details():
                interp.set_tensor(det["index"], _random_tensor(rng, det["shape"], det["dtype"]))
            ns = time_calls(lambda _x, it=interp: it.invoke(), [None], runs, warmup)  # type: ignore[list-item]
            results.append(OpTiming(i, name, float(np.median(ns)) / 1e6, macs, in_types))
        except (ValueError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            results.append(OpTiming(i, name, 0.0, macs, in_types, f"failed: {first}"))
    return results


def _random_tensor(rng: np.random.Generator, shape: Any, dtype: Any) -> np.ndarray:
    dims = [max(1, int(v)) for v in shape]
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(max(info.min, -128), min(info.max, 127), size=dims, endpoint=True).astype(dtype)
    if np.issubdtype(dtype, np.bool_):
        return rng.random(dims) < 0.5
    return rng.random(dims).astype(dtype)


def _one_op_model(
    schema: Any, flatbuffers: Any, model: Any, graph: Any, op_indices: list[int], is_const: Callable[[int], bool]
) -> bytes:
    """A model holding only ``op_indices`` of ``graph`` (in order), their constants and tensors."""
    ops = [graph.operators[i] for i in op_indices]
    produced = {t for op in ops for t in op.outputs}
    used = list(dict.fromkeys(t for op in ops for t in (*op.inputs, *op.outputs) if t >= 0))
    remap = {t: j for j, t in enumerate(used)}
    new = schema.ModelT()
    new.version = model.version
    new.operatorCodes = model.operatorCodes
    new.description = "bcedge one-op profile"
    new.buffers = [schema.BufferT()]
    tensors = []
    for t in used:
        tensor = copy.copy(graph.tensors[t])
        if is_const(t):
            new.buffers.append(model.buffers[tensor.buffer])
            tensor.buffer = len(new.buffers) - 1
        else:
            tensor.buffer = 0
        tensors.append(tensor)
    new_ops = []
    for op in ops:
        clone = copy.copy(op)
        clone.inputs = [remap[t] if t >= 0 else -1 for t in op.inputs]
        clone.outputs = [remap[t] for t in op.outputs]
        new_ops.append(clone)
    sub = schema.SubGraphT()
    sub.name = "profile"
    sub.tensors = tensors
    sub.operators = new_ops
    sub.inputs = [remap[t] for t in used if not is_const(t) and t not in produced]
    sub.outputs = [remap[t] for t in ops[-1].outputs]
    new.subgraphs = [sub]
    builder = flatbuffers.Builder(1024)
    builder.Finish(new.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def summarise_ops(ops: Sequence[OpTiming], model_p50_ms: float | None = None, top: int = 12) -> dict[str, Any]:
    """Per op type: count, total ms, share of the summed op time, GFLOP/s; plus the slowest ops.

    Args:
        ops: :func:`profile_tflite_ops` output.
        model_p50_ms: the whole model's p50, to report how much the op sum accounts for.
        top: how many of the slowest single ops to list.
    """
    total = sum(o.ms for o in ops)
    by_type: dict[str, dict[str, Any]] = {}
    for o in ops:
        entry = by_type.setdefault(o.op, {"count": 0, "ms": 0.0, "macs": 0, "input_types": set()})
        entry["count"] += 1
        entry["ms"] += o.ms
        entry["macs"] += o.macs
        entry["input_types"].update(o.input_types)
    types = []
    for name, e in sorted(by_type.items(), key=lambda kv: -kv[1]["ms"]):
        types.append(
            {
                "op": name,
                "count": e["count"],
                "ms": e["ms"],
                "share": e["ms"] / total if total else 0.0,
                "gflops_per_s": (2.0 * e["macs"] / 1e9) / (e["ms"] / 1000.0) if e["ms"] and e["macs"] else None,
                "input_types": sorted(e["input_types"]),
            }
        )
    slowest = sorted(ops, key=lambda o: -o.ms)[:top]
    return {
        "sum_ms": total,
        "model_p50_ms": model_p50_ms,
        "by_type": types,
        "slowest": [asdict(o) for o in slowest],
        "failed": [asdict(o) for o in ops if o.note.startswith("failed")],
    }
