"""Latency and accuracy measurement for ``bcedge benchmark`` (one row per model, artifact, backend, threads).

What a row measures, on the machine it runs on:

* **Accuracy**: every evaluation image goes through :class:`bcedge.pipeline.Segmenter`, the
  path ``bcedge infer`` takes (decode, preprocess, infer, postprocess), and its mask on the
  *original* pixel grid is scored by :mod:`bcedge.evaluation`, the scoring of
  ``bcedge evaluate --model`` (same numbers for the same artifact and images): the row's
  ``evaluation`` holds, per source and kind (pixel masks, circles, normal images), the
  study's table, lesions found and false-positive components per image with bootstrap
  95 % intervals. ``dice``/``iou`` are per-image means over lesion-positive images (the
  export gate's convention: on screening data an empty prediction scores 1 on every
  normal image, so an all-image mean rewards a model that finds nothing);
  ``dice_all_images`` is there too.
* **Model latency**: ``Backend.predict`` on one preprocessed image (batch 1) timed with
  :func:`time.perf_counter_ns`, ``warmup`` calls first (not counted), then ``runs`` calls
  rotating over at least :data:`MIN_DISTINCT_INPUTS` distinct input buffers so no run
  reuses the previous run's input. Percentiles are NumPy's linear interpolation.
* **End to end**: per image, the stage times the Segmenter reports (``preprocess``,
  ``infer``, ``postprocess``) plus the time to decode the file (``decode``); medians over
  images (and repeated passes when there are few images).
* **Peak memory**: the measuring process' peak resident set (``ru_maxrss``). With
  ``isolate=True`` (the default) every row runs in a fresh Python process, so the figure is
  what that artifact alone needs (interpreter, libraries, data, model, activations);
  in-process rows share one process and the peak is reset between rows where Linux allows
  it (``/proc/self/clear_refs``), else it only grows (the row says which).
* **Compute**: model GFLOPs counted from the artifact's graph (2 x multiply-accumulates of
  convolutions, transposed convolutions, depthwise convolutions and matrix products;
  element-wise ops, pooling and resizing are not counted), the GFLOP/s achieved at p50,
  and its share of a measured FP32 GEMM ceiling (one NumPy matrix product, best of a few,
  with the BLAS limited to the row's thread count). INT8 rows count the same operations, so
  their share can exceed what FP32 arithmetic could reach.

Nothing heavy is imported at module import: backends, OpenCV, the pipeline and plotting are
imported inside the functions that need them. A worker entry point (``python -m bcedge.bench``)
runs one row or one GEMM measurement in a fresh process.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.metadata
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bcedge.errors import BcedgeError, ConfigError, InputError, MissingDependencyError

#: Identifies the JSON document :func:`run_benchmark` returns (see :data:`bcedge.bench_report.SCHEMA`).
REPORT_KIND = "bcedge.benchmark"
REPORT_VERSION = 1

#: Row statuses.
VALIDATED = "validated"  # built, and its accuracy gate passed at export
GATE_FAILED = "validation failed"  # built, but it lost more Dice than its tolerance at export
NOT_VALIDATED = "not validated"  # built, gate not measured
UNAVAILABLE = "not available here"  # its backend (library or hardware) is missing on this machine
FAILED = "error"  # it could not be measured here (bad file, backend failure...); ``reason`` says why
STATUSES = (VALIDATED, GATE_FAILED, NOT_VALIDATED, UNAVAILABLE, FAILED)

#: End-to-end stages reported per row, in pipeline order.
E2E_STAGES = ("decode", "preprocess", "infer", "postprocess")
#: The model-latency loop rotates over at least this many distinct input buffers.
MIN_DISTINCT_INPUTS = 4
#: With few evaluation images the end-to-end pass is repeated until this many images were timed.
MIN_E2E_TIMINGS = 8

_GATE_STATUS = {"passed": VALIDATED, "failed": GATE_FAILED, "not-measured": NOT_VALIDATED}


# --------------------------------------------------------------------------- options and data


@dataclass(frozen=True)
class BenchOptions:
    """How to measure.

    Attributes:
        runs: timed model calls per row (>= 1).
        warmup: untimed model calls before them (>= 0).
        threads: thread counts to measure each artifact with (one row each); None means
            every CPU this process may use.
        isolate: measure each row in a fresh process (clean per-artifact peak memory).
        profile_ops: add a per-op time breakdown to TFLite rows (:func:`profile_tflite_ops`).
        timeout_s: limit for one isolated row (None: no limit).
    """

    runs: int = 50
    warmup: int = 5
    threads: tuple[int, ...] | None = None
    isolate: bool = True
    profile_ops: bool = False
    timeout_s: float | None = None

    def __post_init__(self) -> None:
        for name, value, low in (("runs", self.runs, 1), ("warmup", self.warmup, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} is {value!r}; expected an integer >= {low}")
        if self.threads is not None:
            if not self.threads:
                raise ConfigError("threads is empty; give at least one thread count or None (every CPU)")
            for t in self.threads:
                if isinstance(t, bool) or not isinstance(t, int) or t < 1:
                    raise ConfigError(f"thread count {t!r}; expected a positive integer")

    def thread_counts(self) -> tuple[int, ...]:
        """The thread counts to measure (every usable CPU when none were given)."""
        return self.threads if self.threads is not None else (usable_cpus(),)


@dataclass(frozen=True)
class BenchData:
    """Where the evaluation images come from; plain data so it crosses to a worker process as JSON.

    Use :meth:`from_files` (image + mask pairs, e.g. the bundled sample scan) or
    :meth:`from_split` (a registered dataset restricted to one split of a split file).

    Attributes:
        kind: ``files`` or ``dataset``.
        files: (image path, mask path or None) pairs, for ``files``.
        dataset: registered dataset name (:mod:`bcedge.datasets.registry`), for ``dataset``.
        root: the dataset's folder.
        split: path of the split JSON file (None: every image of the dataset).
        split_name: ``train``, ``val`` or ``test``.
        options: reader options (``kind=CM``...).
        limit: use only the first ``limit`` images (None: all).
        label: how reports name the data.
    """

    kind: str
    files: tuple[tuple[str, str | None], ...] = ()
    dataset: str | None = None
    root: str | None = None
    split: str | None = None
    split_name: str = "test"
    options: dict[str, Any] = field(default_factory=dict)
    limit: int | None = None
    label: str = ""

    @classmethod
    def from_files(
        cls, pairs: Iterable[tuple[str | os.PathLike[str], str | os.PathLike[str] | None]], label: str = ""
    ) -> BenchData:
        """Images with optional lesion masks (PNG/DICOM, same size as the image; None: no lesion)."""
        files = tuple((str(Path(img)), None if mask is None else str(Path(mask))) for img, mask in pairs)
        if not files:
            raise ConfigError("no evaluation images given")
        for img, mask in files:
            for path in (img, mask):
                if path is not None and not Path(path).is_file():
                    raise InputError(f"{path}: evaluation file not found")
        return cls(kind="files", files=files, label=label or f"{len(files)} file(s)")

    @classmethod
    def from_split(
        cls,
        dataset: str,
        root: str | os.PathLike[str],
        split: str | os.PathLike[str] | None,
        split_name: str = "test",
        *,
        options: dict[str, Any] | None = None,
        limit: int | None = None,
    ) -> BenchData:
        """A dataset split (``open_dataset(dataset, root, **options)`` filtered by ``split``'s ``split_name``).

        ``split`` None takes every image of the dataset (e.g. a dataset a model never saw in training).
        """
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ConfigError(f"limit is {limit!r}; expected a positive integer or None")
        label = f"{dataset} {Path(split).name}[{split_name}]" if split is not None else f"{dataset} (every image)"
        return cls(
            kind="dataset",
            dataset=dataset,
            root=str(root),
            split=None if split is None else str(split),
            split_name=split_name,
            options=dict(options or {}),
            limit=limit,
            label=label,
        )

    @classmethod
    def from_command_line(
        cls,
        dataset: str,
        root: str | os.PathLike[str] | None,
        split: str | os.PathLike[str] | None,
        split_name: str = "test",
        options: Sequence[str] | None = None,
        limit: int | None = None,
    ) -> BenchData:
        """:meth:`from_split` from command-line values: root defaults to ``$BCEDGE_DATA``, options are ``KEY=VALUE``.

        Raises:
            ConfigError: no root and no ``BCEDGE_DATA``; a malformed option.
        """
        from bcedge.datasets.registry import parse_options

        if root is None:
            env_root = os.environ.get("BCEDGE_DATA")
            if not env_root:
                raise ConfigError("--data needs --root (the dataset folder) or BCEDGE_DATA set")
            root = env_root
        return cls.from_split(dataset, root, split, split_name, options=parse_options(options), limit=limit)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (also what the report records under ``data``)."""
        out = asdict(self)
        out["files"] = [list(pair) for pair in self.files]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchData:
        """Inverse of :meth:`to_dict`."""
        values = dict(data)
        values["files"] = tuple((str(a), None if b is None else str(b)) for a, b in values.get("files", ()))
        return cls(**values)

    def items(self) -> list[BenchItem]:
        """The evaluation images (pixels are read lazily, by :meth:`BenchItem.decode`).

        Raises:
            DatasetError / InputError: unknown dataset, missing root or split, ids not in the dataset.
        """
        if self.kind == "files":
            out = [_file_item(img, mask) for img, mask in self.files]
        elif self.kind == "dataset":
            from bcedge.datasets.registry import open_dataset
            from bcedge.datasets.splits import filter_samples, load_split

            if not (self.dataset and self.root):
                raise ConfigError("a dataset benchmark needs a dataset name and a root")
            reader = open_dataset(self.dataset, self.root, **self.options)
            samples = list(reader.samples())
            if self.split is not None:
                # Reader options may narrow the dataset its split was made for (e.g. cdd_kind=DM).
                samples = filter_samples(samples, load_split(self.split), self.split_name, strict=not self.options)
            # A lesion reported without a location has an empty mask that is not ground truth.
            out = [_sample_item(s) for s in samples if not s.lesion_unlocated]
        else:
            raise ConfigError(f"benchmark data kind {self.kind!r}; expected 'files' or 'dataset'")
        if self.limit is not None:
            out = out[: self.limit]
        if not out:
            raise InputError(f"no evaluation images in {self.label or self.kind}")
        return out


@dataclass(frozen=True)
class BenchItem:
    """One evaluation image.

    Attributes:
        id: sample id or file stem.
        mask_kind: ``pixel``, ``circle`` or ``none`` (no lesion).
        decode: reads the image: () -> :class:`bcedge.dicom.Mammogram`.
        mask: reads the ground truth: ((H, W)) -> (H, W) uint8 {0, 1}.
        source: dataset name (``files`` for image/mask pairs); evaluation reports group by it.
    """

    id: str
    mask_kind: str
    decode: Callable[[], Any]
    mask: Callable[[tuple[int, int]], np.ndarray]
    source: str = "files"


def _file_item(image: str, mask: str | None) -> BenchItem:
    from bcedge.dicom import read_mammogram

    def read_mask(shape: tuple[int, int]) -> np.ndarray:
        if mask is None:
            return np.zeros(shape, np.uint8)
        from bcedge.datasets.base import read_mask_file

        return read_mask_file(Path(mask), shape)

    return BenchItem(Path(image).stem, "none" if mask is None else "pixel", lambda: read_mammogram(image), read_mask)


def _sample_item(sample: Any) -> BenchItem:
    kind = sample.mask_kind if sample.has_lesion else "none"
    return BenchItem(sample.id, kind, sample.load_image, sample.load_mask, source=sample.source)


def sample_data(
    phantoms: int = 3, *, seed: int = 0, scale: float = 0.25, workdir: str | os.PathLike[str] | None = None
) -> BenchData:
    """The bundled sample scan (``bcedge/examples/phantom_lcc.dcm`` + mask) and ``phantoms`` more.

    The extra phantoms (:func:`bcedge.phantom.generate`, deterministic for ``seed`` and
    ``scale``) give the latency loop distinct inputs and the Dice more than one image.

    Args:
        phantoms: how many phantoms to add (0: the sample scan alone).
        seed: phantom seed.
        scale: phantom size relative to a full field (0.25: about 830 x 640 pixels).
        workdir: where to write them (a new temporary folder when None; the caller removes it).
    """
    examples = Path(__file__).parent / "examples"
    pairs: list[tuple[str | Path, str | Path | None]] = [
        (examples / "phantom_lcc.dcm", examples / "phantom_lcc_mask.png")
    ]
    if phantoms:
        from bcedge.phantom import generate

        out = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="bcedge-bench-"))
        for image in generate(out, count=phantoms, seed=seed, scale=scale):
            pairs.append((image, out / "masks" / f"{image.stem}.png"))
    label = "bundled sample scan" + (f" + {phantoms} phantoms (seed {seed}, scale {scale:g})" if phantoms else "")
    return BenchData.from_files(pairs, label=label)


# --------------------------------------------------------------------------- statistics and timing


def latency_stats(ns: Sequence[int] | np.ndarray) -> dict[str, float]:
    """p50/p95/p99/mean/min/max/std in milliseconds of durations in nanoseconds.

    Raises:
        ValueError: no durations.
    """
    arr = np.asarray(ns, dtype=np.float64) / 1e6
    if arr.size == 0:
        raise ValueError("no timings to summarise")
    p50, p95, p99 = np.percentile(arr, [50, 95, 99])
    return {
        "p50": float(p50),
        "p95": float(p95),
        "p99": float(p99),
        "mean": float(arr.mean()),
        "min": float(arr.min()),
        "max": float(arr.max()),
        "std": float(arr.std()),
    }


def distinct_inputs(tensors: Sequence[np.ndarray], minimum: int = MIN_DISTINCT_INPUTS) -> list[np.ndarray]:
    """At least ``minimum`` distinct (1, S, S, 1) buffers from the given ones (flipped copies added).

    Args:
        tensors: preprocessed images, each (1, S, S, 1) float32 in [0, 1].
        minimum: how many distinct buffers to return at least.
    """
    if not tensors:
        raise ValueError("no input tensors")
    out = [np.ascontiguousarray(t) for t in tensors]
    variants = (lambda a: a[:, :, ::-1], lambda a: a[:, ::-1, :], lambda a: a[:, ::-1, ::-1])
    k = 0
    while len(out) < minimum:
        base = tensors[k % len(tensors)]
        out.append(np.ascontiguousarray(variants[(k // len(tensors)) % len(variants)](base)))
        k += 1
    return out


def time_calls(call: Callable[[np.ndarray], Any], inputs: Sequence[np.ndarray], runs: int, warmup: int) -> list[int]:
    """Durations in ns of ``runs`` calls after ``warmup`` untimed ones, input ``i`` = ``inputs[i % n]``.

    The rotation continues from the warm-up, so the first timed call never sees the
    buffer the last warm-up call used (unless there is a single input).
    """
    n = len(inputs)
    for i in range(warmup):
        call(inputs[i % n])
    out: list[int] = []
    clock = time.perf_counter_ns
    for i in range(warmup, warmup + runs):
        x = inputs[i % n]
        start = clock()
        call(x)
        out.append(clock() - start)
    return out


# --------------------------------------------------------------------------- memory


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MB (10^6 bytes)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in kilobytes on Linux, bytes on macOS.
    return float(peak) / 1e6 if sys.platform == "darwin" else float(peak) * 1024 / 1e6


def current_rss_mb() -> float | None:
    """Current resident set size, MB, from ``/proc/self/statm`` (None where there is no /proc)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def _proc_peak_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e6
    except (OSError, ValueError, IndexError):
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _proc_peak_mb() is not None


# --------------------------------------------------------------------------- FLOP counting


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
    """Count a ``.tflite`` model's MACs from its graph (LiteRT's op list and tensor shapes; nothing is run).

    Shapes are the model's static shapes (batch 1 for bcedge exports; a dynamic batch counts as 1).

    Raises:
        MissingDependencyError: no TFLite interpreter installed.
        InputError: the file is not a TFLite model.
    """
    from bcedge.backends.tflite import load_interpreter_class

    _, interpreter_cls, resolver = load_interpreter_class("auto")
    try:
        # Builtin kernels only: the op list is then the model's own, not XNNPACK partitions.
        interp = interpreter_cls(
            model_path=str(path), experimental_op_resolver_type=resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        )
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


# --------------------------------------------------------------------------- GEMM ceiling


def gemm_gflops(n: int = 1024, repeats: int = 5) -> dict[str, float]:
    """FP32 GEMM speed of this process: best and median GFLOP/s of ``repeats`` ``(n, n) @ (n, n)`` products.

    The BLAS uses whatever threads it was started with (see :func:`measure_gemm_ceiling`).
    """
    rng = np.random.default_rng(0)
    a = rng.random((n, n), dtype=np.float32)
    b = rng.random((n, n), dtype=np.float32)
    c = a @ b  # warm-up: page in, spin up BLAS threads
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter_ns()
        np.matmul(a, b, out=c)
        times.append(time.perf_counter_ns() - start)
    flops = 2.0 * n**3
    best = min(times)
    return {
        "n": n,
        "repeats": repeats,
        "gflops": flops / best,  # ns -> GFLOP/s
        "gflops_median": flops / float(np.median(times)),
    }


#: Environment variables that set the thread count of the BLAS NumPy may use.
BLAS_THREAD_VARS = (
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def measure_gemm_ceiling(threads: int, n: int = 1024, repeats: int = 5, timeout_s: float = 120.0) -> dict[str, Any]:
    """FP32 GEMM ceiling with the BLAS limited to ``threads`` (measured in a fresh process,
    since a BLAS fixes its thread pool at start).

    Returns:
        :func:`gemm_gflops`'s dict plus ``threads`` and ``blas`` (NumPy's BLAS name),
        or ``{"threads", "error"}`` when the measurement failed.
    """
    env = dict(os.environ)
    for var in BLAS_THREAD_VARS:
        env[var] = str(threads)
    # OpenBLAS prints the kernel family it picked ("Core: Haswell"): an AVX2 kernel on an AVX-512
    # CPU caps this ceiling below what XNNPACK or oneDNN reach, and the report should say so.
    env["OPENBLAS_VERBOSE"] = "2"
    cmd = [sys.executable, "-m", "bcedge.bench", "gemm", "--n", str(n), "--repeats", str(repeats)]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"threads": threads, "error": f"{type(exc).__name__}: {exc}"}
    if proc.returncode != 0:
        return {"threads": threads, "error": _last_line(proc.stderr) or f"exit code {proc.returncode}"}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["threads"] = threads
    core = re.search(r"Core:\s*(\S+)", proc.stderr or "")
    if core:
        result["blas_kernel"] = core.group(1)
    return result


def _blas_name() -> str | None:
    try:
        config = np.show_config(mode="dicts")  # NumPy >= 1.26
        return str(config["Build Dependencies"]["blas"]["name"])
    except Exception:  # older NumPy, or a layout change: the name is informative only
        return None


# --------------------------------------------------------------------------- machine and libraries


def usable_cpus() -> int:
    """CPUs this process may run on (affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


_CPU_FLAGS = (
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "amx_int8",
    "asimd",
    "asimddp",
    "asimdhp",
    "i8mm",
    "sve",
)


def machine_info(threads: Sequence[int] = ()) -> dict[str, Any]:
    """CPU model, core counts, SIMD flags that matter for inference, GPU if any, OS and load.

    Args:
        threads: the thread counts the benchmark used (recorded as ``threads_used``).
    """
    cpu_model, flags = None, set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("model name", "hardware", "cpu model") and not cpu_model:
                cpu_model = value.strip()
            elif key in ("flags", "features") and not flags:
                flags = set(value.split())
    device_model = None
    with contextlib.suppress(OSError):
        device_model = Path("/proc/device-tree/model").read_text(errors="replace").strip("\x00\n ") or None
    info: dict[str, Any] = {
        "cpu_model": cpu_model or platform.processor() or platform.machine(),
        "device_model": device_model,
        "arch": platform.machine(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "threads_used": sorted(set(threads)),
        "cpu_flags": [f for f in _CPU_FLAGS if f in flags],
        "memory_gb": _memory_gb(),
        "os": f"{platform.system()} {platform.release()}",
        "gpu": gpu_info(),
    }
    with contextlib.suppress(OSError, AttributeError):
        info["load_avg"] = [round(v, 2) for v in os.getloadavg()]
    return info


def _memory_gb() -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) * 1024 / 1e9, 1)
    return None


def gpu_info() -> list[str]:
    """Names of NVIDIA GPUs (``nvidia-smi``), or the Jetson module; empty when none is found."""
    smi = shutil.which("nvidia-smi")
    if smi:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            proc = subprocess.run(
                [smi, "--query-gpu=name,driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
            if proc.returncode == 0:
                return [line.strip() for line in proc.stdout.splitlines() if line.strip()]
    with contextlib.suppress(OSError):
        model = Path("/proc/device-tree/model").read_text(errors="replace").strip("\x00\n ")
        if "jetson" in model.lower() or "nvidia" in model.lower():
            return [model]
    return []


#: Distributions whose versions the report records (absent ones are left out).
LIBRARIES = (
    "bcedge",
    "numpy",
    "opencv-python-headless",
    "opencv-python",
    "pydicom",
    "ai-edge-litert",
    "tflite-runtime",
    "tensorflow",
    "tensorflow-cpu",
    "onnxruntime",
    "onnxruntime-gpu",
    "onnx",
    "tensorrt",
    "keras",
    "matplotlib",
)


def library_versions(extra: Sequence[str] = ()) -> dict[str, str]:
    """Python and the installed versions of :data:`LIBRARIES` (read from metadata; nothing imported).

    Args:
        extra: more distribution names to record (e.g. ``highdicom`` for a SEG timing); absent ones
            are left out like the others.
    """
    out = {"python": platform.python_version()}
    for dist in (*LIBRARIES, *extra):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[dist] = importlib.metadata.version(dist)
    blas = _blas_name()
    if blas:
        out["numpy_blas"] = blas
    return out


def source_state(root: str | os.PathLike[str]) -> dict[str, Any]:
    """Git commit of the checkout at ``root`` and which ``bcedge/`` files differ from it.

    Benchmark scripts record this beside their figures: timings depend on the code that ran.

    Returns:
        ``{"git_commit": str | None, "uncommitted_bcedge_files": [path, ...]}``; None and an
        empty list where ``root`` is not a git checkout or git is missing.
    """

    def git(*args: str) -> str:
        try:
            done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return ""
        return done.stdout if done.returncode == 0 else ""

    # -z: NUL-separated "XY path" entries (two status letters, a space, the path), paths not quoted
    # (plain --porcelain puts a name with a space in quotes); a rename or copy is followed by its source.
    entries = iter(git("status", "--porcelain", "-z", "--", "bcedge").split("\0"))
    dirty = []
    for entry in entries:
        if len(entry) > 3:
            dirty.append(entry[3:])
            if entry[0] in "RC":
                next(entries, None)
    return {"git_commit": git("rev-parse", "HEAD").strip() or None, "uncommitted_bcedge_files": dirty}


# --------------------------------------------------------------------------- one row


@dataclass(frozen=True)
class RowJob:
    """One row to measure: an artifact of a bundle on its backend with a thread count (JSON-able)."""

    bundle: str
    file: str
    backend: str
    threads: int
    data: dict[str, Any]
    runs: int
    warmup: int
    profile_ops: bool = False


def base_row(bundle: Any, record: Any, threads: int | None) -> dict[str, Any]:
    """The row fields known without running anything (status from the manifest's gate)."""
    model = bundle.manifest.model
    return {
        "model": str(model.get("name") or bundle.dir.name),
        "architecture": model.get("architecture"),
        "bundle": str(bundle.dir),
        "file": record.file,
        "format": record.format,
        "precision": record.precision,
        "backend": record.backend,
        "threads": threads,
        "status": _GATE_STATUS.get(record.gate, NOT_VALIDATED),
        "reason": None if record.gate == "passed" else _gate_reason(record),
        "gate": record.gate,
        "export_dice": record.metrics.get("dice"),
        "size_mb": record.size_bytes / 1e6,
        "dice": None,
        "iou": None,
        "latency_ms": None,
        "e2e_ms": None,
        "throughput_ips": None,
        "peak_rss_mb": None,
        "gflops": None,
    }


def _gate_reason(record: Any) -> str:
    if record.gate == "failed":
        delta = record.metrics.get("delta_dice")
        lost = f" (Dice {delta:+.4f} vs the reference" if isinstance(delta, (int, float)) else " ("
        return f"accuracy gate failed at export{lost}, tolerance {record.tolerance})"
    return "accuracy gate not measured at export"


def measure_row(job: RowJob, *, items: list[BenchItem] | None = None, isolated: bool = False) -> dict[str, Any]:
    """Measure one row in this process (see the module doc for what is measured).

    Args:
        job: what to measure.
        items: the evaluation images (loaded from ``job.data`` when None).
        isolated: this process runs only this row (peak RSS is then the row's own).

    Returns:
        The row dict (``status`` ``error`` with a ``reason`` when the artifact could not be run).
    """
    from bcedge.bundle import load_bundle

    bundle = load_bundle(job.bundle)
    record = next((a for a in bundle.manifest.artifacts if a.file == job.file), None)
    if record is None:
        raise InputError(f"bundle {job.bundle} has no artifact {job.file}")
    row = base_row(bundle, record, job.threads)
    if items is None:
        items = BenchData.from_dict(job.data).items()
    peak_reset = True if isolated else reset_peak_rss()
    with _cv2_threads(job.threads):
        try:
            _measure_into(row, bundle, record, job, items)
        except BcedgeError as exc:
            row.update(status=FAILED, reason=str(exc))
        except Exception as exc:  # a backend library failing mid-run: report the row, keep the others going
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            row.update(status=FAILED, reason=f"{type(exc).__name__}: {first}")
    if record.backend == "keras":
        # Keras' thread pools are process-wide: only a fresh worker can size them (see worker_env).
        row["threads_applied"] = isolated
    peak = peak_rss_mb() if isolated else (_proc_peak_mb() or peak_rss_mb())
    row["peak_rss_mb"] = peak
    row["peak_rss_scope"] = "process per row" if isolated else ("row (peak reset)" if peak_reset else "whole run")
    return row


@contextlib.contextmanager
def _cv2_threads(threads: int | None) -> Iterator[None]:
    """Limit OpenCV (preprocessing) to the row's threads; restore afterwards."""
    try:
        import cv2
    except ImportError:
        yield
        return
    before = cv2.getNumThreads()
    if threads is not None:
        cv2.setNumThreads(int(threads))
    try:
        yield
    finally:
        cv2.setNumThreads(before)


def _open_segmenter(bundle: Any, record: Any, threads: int | None) -> Any:
    """A :class:`bcedge.pipeline.Segmenter` running exactly ``record``."""
    from bcedge.pipeline import Segmenter

    return Segmenter(bundle, backend=record.backend, artifact=record, threads=threads)


def _measure_into(row: dict[str, Any], bundle: Any, record: Any, job: RowJob, items: list[BenchItem]) -> None:
    from bcedge.evaluation import ImageScore, score_result, summarize
    from bcedge.preprocess import preprocess

    rss_before = current_rss_mb()
    start = time.perf_counter_ns()
    seg = _open_segmenter(bundle, record, job.threads)
    try:
        load_ms = (time.perf_counter_ns() - start) / 1e6
        backend = seg.backend
        config = bundle.preprocess_config()
        # Accuracy and end-to-end stages: every image through the runtime path, decode timed here.
        image_scores: list[ImageScore] = []
        stages: dict[str, list[float]] = {s: [] for s in E2E_STAGES}
        totals: list[float] = []
        tensors: list[np.ndarray] = []
        passes = max(1, math.ceil(MIN_E2E_TIMINGS / len(items)))
        # The first call of a backend allocates and sets up its delegate: not part of any stage.
        warm_id = None
        for item in items:
            with contextlib.suppress(InputError):  # an unreadable scan is reported by the pass below
                tensors.append(preprocess(item.decode(), config)[0])
                warm_id = item.id
                break
        if tensors:
            backend.predict(tensors[0])
        skipped: dict[str, str] = {}
        for p in range(passes):
            for item in items:
                if item.id in skipped:
                    continue
                try:
                    t0 = time.perf_counter_ns()
                    mammo = item.decode()
                    decode_ms = (time.perf_counter_ns() - t0) / 1e6
                    result = seg.segment(mammo)
                except InputError as exc:  # a bad scan is reported and left out; a backend failure is not caught
                    skipped[item.id] = str(exc)
                    continue
                timing = dict(result.timing_ms)
                timing["decode"] = decode_ms
                for stage in E2E_STAGES:
                    stages[stage].append(float(timing.get(stage, 0.0)))
                totals.append(sum(float(timing.get(s, 0.0)) for s in E2E_STAGES))
                if p:
                    continue
                if item.id != warm_id and len(tensors) < MIN_DISTINCT_INPUTS * 2:
                    tensors.append(preprocess(mammo, config)[0])
                try:
                    truth = item.mask(mammo.pixels.shape[:2])
                except InputError as exc:  # a mask that does not fit its image: left out, as by bcedge evaluate
                    skipped[item.id] = str(exc)
                    continue
                # The one scoring of bcedge evaluate --model (bcedge.evaluation): same numbers.
                image_scores.append(
                    score_result(result, truth, id=item.id, source=item.source, mask_kind=item.mask_kind)
                )
        if not totals:
            raise InputError(f"no evaluation image could be read; first error: {next(iter(skipped.values()))}")
        # Model latency: batch 1, rotating distinct inputs, warm-up excluded.
        inputs = distinct_inputs(tensors)
        ns = time_calls(backend.predict, inputs, job.runs, job.warmup)
        details = dict(getattr(backend, "details", {}) or {})
    finally:
        seg.close()
    latency = latency_stats(ns)
    latency.update(runs=job.runs, warmup=job.warmup, batch=1, distinct_inputs=len(inputs))
    evaluation = summarize(image_scores)
    lesion_scores = [s for s in image_scores if s.kind != "normal"]
    main = lesion_scores or image_scores
    e2e = {s: float(np.median(v)) for s, v in stages.items()}
    e2e["total"] = float(np.median(totals))
    e2e["mean_total"] = float(np.mean(totals))
    e2e["n"] = len(totals)
    row.update(
        dice=float(np.mean([s.dice for s in main])),
        iou=float(np.mean([s.iou for s in main])),
        dice_metric="lesion_images" if lesion_scores else "all_images",
        dice_all_images=float(np.mean([s.dice for s in image_scores])),
        iou_all_images=float(np.mean([s.iou for s in image_scores])),
        n_images=len(image_scores),
        n_lesion_images=len(lesion_scores),
        groups=_kind_groups(evaluation),
        evaluation=evaluation,
        latency_ms=latency,
        e2e_ms=e2e,
        throughput_ips=1000.0 / latency["mean"],
        e2e_throughput_ips=1000.0 / e2e["mean_total"] if e2e["mean_total"] > 0 else None,
        load_ms=load_ms,
        rss_before_model_mb=rss_before,
        backend_details={k: v for k, v in details.items() if k not in ("path",)},
        skipped_images=[{"id": key, "error": why} for key, why in skipped.items()],
    )
    if job.profile_ops and record.format == "tflite":
        path = bundle.artifact_path(record, verify=False)
        try:
            ops = profile_tflite_ops(path, threads=job.threads, runs=max(3, min(job.runs, 20)), warmup=2)
        except BcedgeError as exc:  # a device without the flatbuffer schema: the row itself stands
            row["op_profile_error"] = str(exc)
        else:
            row["op_profile"] = summarise_ops(ops, model_p50_ms=latency["p50"])


def _kind_groups(evaluation: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Short per-kind summary (all sources pooled) for the report's Markdown table."""
    from bcedge.evaluation import KINDS, find_group

    out: dict[str, dict[str, Any]] = {}
    for kind in KINDS:
        g = find_group(evaluation, kind)
        if g is None:
            continue
        if kind == "normal":
            out[kind] = {
                "n": g["n_images"],
                "false_positive_rate": g["flagged_share"]["value"],
                "fp_per_image": g["fp_per_image"]["value"],
            }
        else:
            out[kind] = {
                "n": g["n_images"],
                "dice": g["dice"]["value"],
                "iou": g["iou"]["value"],
                "detection_rate": g["detection_rate"]["value"],
                "fp_per_image": g["fp_per_image"]["value"],
            }
    return out


# --------------------------------------------------------------------------- the whole run


def select_artifacts(bundle: Any, formats: Sequence[str] | None) -> list[Any]:
    """The bundle's artifacts matching any of ``formats`` (``tflite``, ``tflite/int8``, ``int8``...).

    Raises:
        ConfigError: a token matching nothing the bcedge formats/precisions know.
    """
    from bcedge.bundle import FORMATS, PRECISIONS

    records = list(bundle.manifest.artifacts)
    if not formats:
        return records
    chosen = []
    for token in formats:
        fmt, _, prec = token.strip().lower().replace("-", "/").partition("/")
        if fmt in PRECISIONS and not prec:
            fmt, prec = "", fmt
        if (fmt and fmt not in FORMATS) or (prec and prec not in PRECISIONS):
            raise ConfigError(
                f"format {token!r}; expected a format ({', '.join(FORMATS)}), a precision ({', '.join(PRECISIONS)}) "
                "or FORMAT/PRECISION such as tflite/int8"
            )
        chosen += [r for r in records if (not fmt or r.format == fmt) and (not prec or r.precision == prec)]
    return [r for r in records if r in chosen]


def run_benchmark(
    bundles: Sequence[str | os.PathLike[str]],
    data: BenchData,
    options: BenchOptions | None = None,
    *,
    formats: Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure every (bundle, artifact, thread count) and return the report document.

    Artifacts whose backend is not available here become rows with status
    :data:`UNAVAILABLE` and the reason; one that fails to run becomes a :data:`FAILED` row.

    Args:
        bundles: bundle directories.
        data: the evaluation images.
        options: measurement settings.
        formats: artifact filter (see :func:`select_artifacts`); None for every artifact.
        progress: called with one line per step.

    Returns:
        The report: ``{"kind", "version", "created", "machine", "libraries", "settings", "data",
        "gemm_ceiling", "rows"}`` (validated by :func:`bcedge.bench_report.validate`).

    Raises:
        BundleError: a bundle cannot be loaded.
        ConfigError: bad options.
    """
    from bcedge.backends import BACKENDS
    from bcedge.bundle import load_bundle, utc_now

    options = options or BenchOptions()
    say = progress or (lambda _msg: None)
    thread_counts = options.thread_counts()
    loaded = [load_bundle(b) for b in bundles]
    created = utc_now()
    items: list[BenchItem] | None = None
    rows: list[dict[str, Any]] = []
    flops_cache: dict[str, FlopCount | None] = {}
    for bundle in loaded:
        records = select_artifacts(bundle, formats)
        if not records:
            say(f"{bundle.dir}: no artifact matches {', '.join(formats or [])}")
        model_flops = _bundle_flops(bundle, flops_cache)
        for record in records:
            spec = BACKENDS.get(record.backend)
            ok, why = spec.available() if spec is not None else (False, f"bcedge has no backend {record.backend!r}")
            if ok:
                ok, why = _hardware_ok(record.backend)
            for threads in thread_counts:
                row = base_row(bundle, record, threads)
                label = f"{row['model']} {record.format}/{record.precision} on {record.backend}, {threads} thread(s)"
                if not ok:
                    row.update(status=UNAVAILABLE, reason=why)
                    say(f"{label}: {UNAVAILABLE} ({why})")
                    rows.append(row)
                    continue
                say(f"{label}: measuring")
                job = RowJob(
                    str(bundle.dir),
                    record.file,
                    record.backend,
                    threads,
                    data.to_dict(),
                    options.runs,
                    options.warmup,
                    options.profile_ops,
                )
                if options.isolate:
                    measured = run_isolated(job, timeout_s=options.timeout_s)
                else:
                    if items is None:
                        items = data.items()
                    measured = measure_row(job, items=items)
                row.update(measured)
                own = flops_cache.get(str(bundle.dir / record.file))
                count = own or model_flops
                _add_compute(row, count)
                rows.append(row)
                if row["latency_ms"]:
                    say(f"{label}: p50 {row['latency_ms']['p50']:.2f} ms, Dice {row['dice']:.4f}")
                else:
                    say(f"{label}: {row['status']} ({row.get('reason')})")
    ceilings = {}
    measured_threads = sorted({r["threads"] for r in rows if r.get("latency_ms")})
    for threads in measured_threads:
        say(f"FP32 GEMM ceiling, {threads} thread(s)")
        ceilings[str(threads)] = measure_gemm_ceiling(threads)
    for row in rows:
        _add_ceiling_share(row, ceilings.get(str(row["threads"])))
    return {
        "kind": REPORT_KIND,
        "version": REPORT_VERSION,
        "created": created,
        "finished": utc_now(),
        "machine": machine_info(thread_counts),
        "libraries": library_versions(),
        "settings": {
            "runs": options.runs,
            "warmup": options.warmup,
            "threads": list(thread_counts),
            "isolate": options.isolate,
            "batch": 1,
            "formats": list(formats) if formats else None,
            "profile_ops": options.profile_ops,
        },
        "data": data.to_dict(),
        "gemm_ceiling": ceilings,
        "rows": rows,
    }


def _hardware_ok(backend: str) -> tuple[bool, str]:
    """TensorRT needs a GPU besides its library: say so instead of failing at load."""
    if backend == "tensorrt" and not gpu_info():
        return False, "no NVIDIA GPU found (nvidia-smi / Jetson device tree)"
    return True, ""


def _bundle_flops(bundle: Any, cache: dict[str, FlopCount | None]) -> FlopCount | None:
    """Count FLOPs of every countable artifact once; the bundle's count is the first one (fp32 preferred)."""
    best = None
    order = sorted(bundle.manifest.artifacts, key=lambda r: (r.precision != "fp32", r.format != "tflite"))
    for record in order:
        key = str(bundle.dir / record.file)
        if key not in cache:
            path = bundle.dir / record.file
            try:
                cache[key] = count_flops(path, record.format) if path.is_file() else None
            except BcedgeError:
                cache[key] = None
        if best is None and cache[key] is not None:
            best = cache[key]
    return best


def _add_compute(row: dict[str, Any], count: FlopCount | None) -> None:
    if count is None:
        row["gflops"] = None
        return
    row["gflops"] = count.gflops
    row["gflops_source"] = count.source
    row["macs_by_op"] = dict(count.by_op)
    lat = row.get("latency_ms")
    if lat and lat.get("p50"):
        row["achieved_gflops"] = count.gflops / (lat["p50"] / 1000.0)


def _add_ceiling_share(row: dict[str, Any], ceiling: dict[str, Any] | None) -> None:
    achieved = row.get("achieved_gflops")
    if achieved is None or not ceiling or not ceiling.get("gflops"):
        return
    row["ceiling_gflops"] = ceiling["gflops"]
    row["ceiling_share"] = achieved / ceiling["gflops"]


# --------------------------------------------------------------------------- isolation


def run_isolated(job: RowJob, timeout_s: float | None = None) -> dict[str, Any]:
    """Measure ``job`` in a fresh ``python -m bcedge.bench row`` process; its peak RSS is the row's own.

    Returns:
        The worker's row, or the fields of a :data:`FAILED` row when the worker crashed or timed out.
    """
    from bcedge.imageio import atomic_write_bytes

    with tempfile.TemporaryDirectory(prefix="bcedge-bench-job ") as tmp:
        job_path, out_path = Path(tmp) / "job.json", Path(tmp) / "row.json"
        atomic_write_bytes(job_path, json.dumps(asdict(job)).encode())
        cmd = [sys.executable, "-m", "bcedge.bench", "row", str(job_path), str(out_path)]
        try:
            proc = subprocess.run(
                cmd, env=worker_env(job.threads), capture_output=True, text=True, timeout=timeout_s, check=False
            )
        except subprocess.TimeoutExpired:
            return {"status": FAILED, "reason": f"timed out after {timeout_s} s"}
        if proc.returncode != 0 or not out_path.is_file():
            why = _last_line(proc.stderr) or f"worker exit code {proc.returncode}"
            return {"status": FAILED, "reason": f"worker failed: {why}"}
        return json.loads(out_path.read_text(encoding="utf-8"))


def worker_env(threads: int) -> dict[str, str]:
    """The environment of a row's worker: BLAS and TensorFlow thread pools sized to the row's threads.

    LiteRT and onnxruntime take the thread count as an argument; TensorFlow (the Keras
    reference) and BLAS libraries fix their pools from these variables when they start,
    which only a fresh process allows.
    """
    env = dict(os.environ)
    for var in BLAS_THREAD_VARS:
        env[var] = str(threads)
    env["TF_NUM_INTRAOP_THREADS"] = str(threads)
    env["TF_NUM_INTEROP_THREADS"] = "1"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def _last_line(text: str | None) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


# --------------------------------------------------------------------------- TFLite per-op profile


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


# --------------------------------------------------------------------------- worker entry point


def _worker(argv: Sequence[str]) -> int:
    """``python -m bcedge.bench row JOB.json OUT.json`` | ``python -m bcedge.bench gemm [--n N] [--repeats R]``."""
    if argv and argv[0] == "gemm":
        n, repeats = 1024, 5
        args = list(argv[1:])
        while args:
            key, value = args.pop(0), args.pop(0)
            if key == "--n":
                n = int(value)
            elif key == "--repeats":
                repeats = int(value)
        result = gemm_gflops(n, repeats)
        result["blas"] = _blas_name()
        print(json.dumps(result))
        return 0
    if len(argv) == 3 and argv[0] == "row":
        from bcedge.imageio import atomic_write_bytes

        job = RowJob(**json.loads(Path(argv[1]).read_text(encoding="utf-8")))
        row = measure_row(job, isolated=True)
        atomic_write_bytes(argv[2], json.dumps(row, default=_json_default).encode())
        return 0
    print("usage: python -m bcedge.bench row JOB.json OUT.json | gemm [--n N] [--repeats R]", file=sys.stderr)
    return 2


def _json_default(value: Any) -> Any:
    # A benchmark row must always be written: what JSON cannot hold is recorded as text.
    from bcedge.imageio import json_default

    try:
        return json_default(value)
    except TypeError:
        return str(value)


def _main() -> int:
    try:
        return _worker(sys.argv[1:])
    except BcedgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(_main())

__all__ = [
    "BenchData",
    "BenchItem",
    "BenchOptions",
    "FlopCount",
    "OpTiming",
    "RowJob",
    "count_flops",
    "count_onnx",
    "count_tflite",
    "distinct_inputs",
    "gemm_gflops",
    "latency_stats",
    "library_versions",
    "machine_info",
    "measure_gemm_ceiling",
    "measure_row",
    "peak_rss_mb",
    "profile_tflite_ops",
    "run_benchmark",
    "sample_data",
    "select_artifacts",
    "summarise_ops",
    "tflite_op_macs",
    "time_calls",
]
