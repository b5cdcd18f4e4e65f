"""ONNX -> TensorRT engines (FP16, INT8 with a calibrator), for TensorRT 8.6 and 10.x.

What runs where:

* Pure Python/NumPy, tested anywhere: :class:`CalibrationSource` (calibration batches
  from preprocessed images), :class:`CalibrationCache` (keyed by hashes),
  :func:`timing_cache_path`, engine naming (:func:`bcedge.backends.tensorrt.engine_filename`),
  :func:`trtexec_command` and :func:`check_onnx_for_tensorrt` (reads the graph with ``onnx``).
* Thin TensorRT code, run only where TensorRT and a GPU exist: :func:`build_engine`
  and :func:`make_calibrator`. Every version difference is decided in
  :class:`TrtFeatures` from the ``tensorrt`` module itself:

  ========================  ===========================================  ==========================
  what                      TensorRT 8.6 (JetPack 6.0; 8.4/8.5 on JP 5)  TensorRT 10.x (JetPack 6.1+)
  ========================  ===========================================  ==========================
  network flags             ``1 << EXPLICIT_BATCH`` (implicit batch is   ``0``: explicit batch is the
                            still the default)                           only mode, the flag is
                                                                         deprecated and ignored
  workspace limit           ``set_memory_pool_limit(WORKSPACE, n)``      same; ``max_workspace_size``
                            (8.4+; ``max_workspace_size`` deprecated)    removed
  build                     ``build_serialized_network`` (8.0+;          same; ``build_engine``
                            ``build_engine`` deprecated)                 removed
  INT8 calibrators          ``IInt8MinMaxCalibrator`` /                  same classes; implicit
                            ``IInt8EntropyCalibrator2``                  quantisation deprecated
                                                                         from 10.1 but working
  ========================  ===========================================  ==========================

  (NVIDIA's "Migrating from TensorRT 8.x to 10.x" guide, Python section; TensorRT's
  ``samples/python/*/build_engine.py`` for the 8.x forms.)

INT8 calibration defaults to **MinMax**: entropy calibration clips activation tails
to minimise KL divergence, and dense-output networks pay for it: a YOLO detector lost
10-20 % mAP with ``IInt8EntropyCalibrator2`` against 1 % with ``IInt8MinMaxCalibrator``
on TensorRT 8.5 (NVIDIA/TensorRT#3922); heatmap outputs came out wrong with Entropy2 and
right with MinMax in NVIDIA/TensorRT#2705; Ultralytics switched its TensorRT export to
MinMax (ultralytics/ultralytics#20345). A UNet's sigmoid map is such an output, with a
thin foreground. ``calibrator="entropy2"`` selects ``IInt8EntropyCalibrator2``.
INT8 engines also get the FP16 flag so layers without an INT8 kernel fall back to
FP16 rather than FP32 (as trtexec ``--int8 --fp16``).

Engine building has not been run in this project's development environment (no
TensorRT, no GPU); :func:`trtexec_command` prints the equivalent ``trtexec`` line.

Why one module: every TensorRT version difference of building is decided in one place
(:class:`TrtFeatures`), beside the calibrator and the caches that depend on it.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from bcedge.backends.tensorrt import (
    CudaRuntime,
    EngineError,
    engine_filename,
    import_tensorrt,
    load_cuda,
    sanitize_gpu_name,
    sanitize_version,
    trt_major,
)
from bcedge.errors import ConfigError, InputError
from bcedge.imageio import atomic_write_bytes

Precision = Literal["fp32", "fp16", "int8"]
CalibratorKind = Literal["minmax", "entropy2"]
CALIBRATORS = ("minmax", "entropy2")
LAST_BATCH_RULES = ("pad", "drop")

#: Highest default-domain opset TensorRT 8.6 parses ("TensorRT 8.6 supports operators up to Opset 17",
#: onnx-tensorrt release/8.6 docs/operators.md); TensorRT 10.0 parses opsets 9-20.
MAX_OPSET_TRT8 = 17
MAX_OPSET_TRT10 = 20
MIN_OPSET = 9

#: ONNX operators the TensorRT ONNX parser supports ("Y" rows of onnx-tensorrt
#: ``docs/operators.md`` at release/8.5-GA, opset <= 17). Every one is also supported by
#: TensorRT 10.x (same table at 10.x), so this is the conservative set for 8.6 and 10.
#: Ops added later (LayerNormalization, GroupNormalization, Gelu... in 8.6/10.x) are
#: deliberately absent: an engine must build on both versions.
_SUPPORTED_OPS_TABLE = """
    Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast Ceil Celu
    Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace DequantizeLinear Div
    Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gemm
    GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GRU HardSigmoid HardSwish
    Identity If ImageScaler InstanceNormalization IsNaN LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM
    LpNormalization LpPool MatMul Max MaxPool Mean MeanVarianceNormalization Min Mod Mul Neg NonMaxSuppression
    NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike
    RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax
    ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign
    Round ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice
    Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK
    Transpose Trilu Unsqueeze Upsample Where Xor
"""
SUPPORTED_OPS = frozenset(_SUPPORTED_OPS_TABLE.split())

#: Documented restrictions of ``Resize`` (same table): modes the parser accepts.
RESIZE_MODES = frozenset({"nearest", "linear"})
RESIZE_COORDINATE_MODES = frozenset(
    {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
)
RESIZE_NEAREST_MODES = frozenset({"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"})

_DEFAULT_DOMAINS = ("", "ai.onnx")


# --------------------------------------------------------------------------- hashes


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- calibration batches


class CalibrationSource:
    """Preprocessed images cut into the fixed-size batches TensorRT's calibrator asks for.

    Pure NumPy; no TensorRT. The images must be outputs of :func:`bcedge.preprocess.preprocess`
    (e.g. :func:`export.calibration.calibration_images`), never random data.

    Args:
        images: (N, S, S, 1) or (N, S, S) float array in [0, 1]; an object with an ``images``
            attribute of that shape (``training.data.ArraySet``); or an iterable of
            per-image arrays (S, S, 1), (S, S) or (1, S, S, 1) (what ``preprocess`` returns).
            The images are copied into one contiguous float32 array (200 images at 256 px
            take 52 MB), so the set can be hashed and iterated more than once.
        batch_size: images per calibration batch, >= 1. With a static-batch network the
            batch must equal the network's batch dimension; :func:`build_engine` re-cuts
            the source when it differs.
        last: what happens to a last batch with fewer than ``batch_size`` images:
            ``pad`` (default) fills it with images from the start of the set, so every
            batch holds real images and MinMax ranges are unchanged (a repeated image
            cannot widen a min/max; zero padding would add an all-black image);
            ``drop`` discards it (and needs at least one full batch).
        max_images: use at most the first ``max_images`` images.

    Raises:
        ConfigError: empty set, mixed shapes, non-finite values or values outside [0, 1],
            a bad ``batch_size``/``last``, or ``drop`` with fewer images than one batch.
    """

    def __init__(
        self,
        images: Any,
        *,
        batch_size: int = 1,
        last: Literal["pad", "drop"] = "pad",
        max_images: int | None = None,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"calibration batch_size is {batch_size!r}; expected an integer >= 1")
        if last not in LAST_BATCH_RULES:
            raise ConfigError(f"calibration last-batch rule {last!r}; expected pad or drop")
        if max_images is not None and (not isinstance(max_images, int) or max_images < 1):
            raise ConfigError(f"calibration max_images is {max_images!r}; expected an integer >= 1 or None")
        array = _stack_images(images, max_images)
        if last == "drop" and len(array) < batch_size:
            raise ConfigError(
                f"{len(array)} calibration images cannot fill one batch of {batch_size} with last='drop'; "
                "use last='pad' or a smaller batch"
            )
        self.images = array
        self.batch_size = batch_size
        self.last = last

    @property
    def n_images(self) -> int:
        """Images in the set (before padding or dropping)."""
        return int(self.images.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(S, S, 1)."""
        return tuple(int(d) for d in self.images.shape[1:])  # type: ignore[return-value]

    def __len__(self) -> int:
        """Number of batches :meth:`batches` yields."""
        full, rest = divmod(self.n_images, self.batch_size)
        return full + (1 if rest and self.last == "pad" else 0)

    def batches(self) -> Iterator[np.ndarray]:
        """Yield (batch_size, S, S, 1) float32 C-contiguous batches, :meth:`__len__` of them."""
        n, b = self.n_images, self.batch_size
        for k in range(len(self)):
            start = k * b
            if start + b <= n:
                yield self.images[start : start + b]
            else:
                # Wrap around to the first images (repeatedly when n < b).
                idx = np.arange(start, start + b) % n
                yield np.ascontiguousarray(self.images[idx])

    def rebatched(self, batch_size: int) -> CalibrationSource:
        """The same images cut into batches of ``batch_size`` (same last-batch rule)."""
        if batch_size == self.batch_size:
            return self
        return CalibrationSource(self.images, batch_size=batch_size, last=self.last)  # type: ignore[arg-type]

    def sha256(self) -> str:
        """Hex SHA-256 of exactly what the calibrator will feed: batch size, rule, shape and every batch."""
        digest = hashlib.sha256()
        header = {"v": 1, "batch_size": self.batch_size, "last": self.last, "shape": list(self.images.shape)}
        digest.update(json.dumps(header, sort_keys=True).encode())
        for batch in self.batches():
            digest.update(batch.tobytes())
        return digest.hexdigest()

    def describe(self) -> dict[str, Any]:
        """For build details and manifests."""
        return {
            "images": self.n_images,
            "batches": len(self),
            "batch_size": self.batch_size,
            "last": self.last,
            "shape": list(self.image_shape),
        }


def _stack_images(images: Any, max_images: int | None) -> np.ndarray:
    """(N, S, S, 1) float32 C-contiguous from any accepted form (see :class:`CalibrationSource`)."""
    if hasattr(images, "images") and not isinstance(images, np.ndarray):
        images = images.images  # training.data.ArraySet (not imported: it pulls in Keras)
    if isinstance(images, np.ndarray):
        array = images if max_images is None else images[:max_images]
        if array.ndim == 3:
            array = array[..., None]
    else:
        if isinstance(images, (str, bytes)) or not isinstance(images, Iterable):
            raise ConfigError(f"calibration images: expected an array or an iterable of arrays, got {type(images)}")
        items = []
        for i, item in enumerate(images):
            if max_images is not None and i >= max_images:
                break
            a = np.asarray(item)
            if a.ndim == 4 and a.shape[0] == 1:
                a = a[0]
            if a.ndim == 2:
                a = a[..., None]
            if a.ndim != 3:
                raise ConfigError(
                    f"calibration image {i} has shape {a.shape}; expected (S, S, 1), (S, S) or (1, S, S, 1)"
                )
            if items and a.shape != items[0].shape:
                raise ConfigError(f"calibration image {i} has shape {a.shape}; image 0 has {items[0].shape}")
            items.append(a)
        if not items:
            raise ConfigError("no calibration images (the calibration set is empty)")
        array = np.stack(items)
    if array.ndim != 4 or array.shape[3] != 1 or array.shape[1] != array.shape[2] or array.shape[0] == 0:
        raise ConfigError(f"calibration images have shape {array.shape}; expected (N, S, S, 1) with N >= 1")
    if array.dtype.kind not in "fiu":
        raise ConfigError(f"calibration images have dtype {array.dtype}; expected float32 in [0, 1]")
    array = np.ascontiguousarray(array, dtype=np.float32)
    lo, hi = float(array.min()), float(array.max())
    if not (lo >= 0.0 and hi <= 1.0):  # also catches NaN
        raise ConfigError(
            f"calibration images span [{lo:.6g}, {hi:.6g}]; expected preprocessed images in [0, 1] "
            "(bcedge.preprocess output, not raw pixels)"
        )
    return array


# --------------------------------------------------------------------------- caches


@dataclass(frozen=True)
class CalibrationCache:
    """A TensorRT calibration cache file keyed by what produced it.

    The file name carries short hashes (``calib.minmax.<onnx12>.<calib12>.cache``) and a
    JSON sidecar (same name + ``.json``) the full ones. A cache is reused only when the
    ONNX file, the calibration batches and the calibrator all match; anything else
    (another model, other images, another calibrator, a missing or edited sidecar)
    means a new calibration. TensorRT itself also checks the version header inside
    the cache and recalibrates when it does not match.

    Attributes:
        path: the cache file.
        onnx_sha256, calib_sha256: full hex hashes of the ONNX file and of
            :meth:`CalibrationSource.sha256`.
        calibrator: ``minmax`` or ``entropy2``.
    """

    path: Path
    onnx_sha256: str
    calib_sha256: str
    calibrator: str

    @classmethod
    def for_key(cls, cache_dir: str | Path, onnx_sha256: str, calib_sha256: str, calibrator: str) -> CalibrationCache:
        """The cache for this key in ``cache_dir`` (whether or not it exists yet)."""
        if calibrator not in CALIBRATORS:
            raise ConfigError(f"calibrator {calibrator!r}; expected one of {', '.join(CALIBRATORS)}")
        name = f"calib.{calibrator}.{onnx_sha256[:12]}.{calib_sha256[:12]}.cache"
        return cls(Path(cache_dir) / name, onnx_sha256, calib_sha256, calibrator)

    @property
    def meta_path(self) -> Path:
        """The JSON sidecar."""
        return self.path.with_name(self.path.name + ".json")

    def _meta(self) -> dict[str, str]:
        return {"onnx_sha256": self.onnx_sha256, "calib_sha256": self.calib_sha256, "calibrator": self.calibrator}

    def is_valid(self) -> bool:
        """True when the cache file is non-empty and its sidecar records this exact key."""
        try:
            meta = json.loads(self.meta_path.read_text(encoding="utf-8"))
            size = self.path.stat().st_size
        except (OSError, ValueError):
            return False
        return size > 0 and isinstance(meta, dict) and all(meta.get(k) == v for k, v in self._meta().items())

    def read(self) -> bytes | None:
        """The cache bytes when :meth:`is_valid`, else None (and a stale pair is removed)."""
        if self.is_valid():
            return self.path.read_bytes()
        self.invalidate()
        return None

    def write(self, data: bytes, **extra: Any) -> None:
        """Store ``data`` and the sidecar (both atomically; the sidecar last, so a torn write is invalid)."""
        atomic_write_bytes(self.path, bytes(data))
        meta = {**self._meta(), **extra}
        atomic_write_bytes(self.meta_path, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())

    def invalidate(self) -> None:
        """Remove the cache and its sidecar if present."""
        for p in (self.meta_path, self.path):
            p.unlink(missing_ok=True)


def timing_cache_path(cache_dir: str | Path, trt_version: str, gpu_name: str) -> Path:
    """Default timing-cache file: ``timing.trt<version>.<gpu>.cache`` (tactic timings are per version and GPU)."""
    return Path(cache_dir) / f"timing.trt{sanitize_version(trt_version)}.{sanitize_gpu_name(gpu_name)}.cache"


def read_timing_cache(path: Path) -> bytes:
    """Bytes of a timing cache, or ``b""`` (TensorRT's "start empty") when there is none."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


# --------------------------------------------------------------------------- trtexec


def _shape_spec(shapes: Mapping[str, Sequence[int]]) -> str:
    parts = []
    for name, dims in shapes.items():
        # trtexec splits on ':' and ','; a name with either is wrapped in single quotes.
        quoted = f"'{name}'" if any(c in name for c in ":,'") else name
        parts.append(f"{quoted}:{'x'.join(str(int(d)) for d in dims)}")
    return ",".join(parts)


def trtexec_command(
    onnx_path: str | Path,
    engine_path: str | Path,
    precision: Precision,
    workspace_mb: int = 1024,
    calib_cache: str | Path | None = None,
    timing_cache: str | Path | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
    *,
    trt_version: str | None = None,
) -> str:
    """The ``trtexec`` line that builds the same engine, shell-quoted (paths may contain spaces).

    Args:
        onnx_path, engine_path: input model and engine to write.
        precision: ``fp32``, ``fp16`` or ``int8`` (INT8 adds ``--fp16`` like :func:`build_engine`).
        workspace_mb: workspace limit in MiB: ``--memPoolSize=workspace:<N>`` on TensorRT >= 8.4
            (an unsuffixed size is MiB on 8.4-10.x; NVIDIA's 8.x->10.x trtexec migration page uses
            this form), ``--workspace=<N>`` before 8.4 (removed in 10).
        calib_cache: INT8 only, required: trtexec cannot calibrate from images, it reads the
            cache :func:`build_engine` wrote (``--calib=``).
        timing_cache: ``--timingCacheFile=`` (read and updated by trtexec).
        shapes: ``{input: dims}`` for a dynamic-shape model only (``--shapes=``); a static
            model must not get one (trtexec refuses it).
        trt_version: the target TensorRT version (default: assume >= 8.4).

    Raises:
        ConfigError: unknown precision, or INT8 without a calibration cache.
    """
    if precision not in ("fp32", "fp16", "int8"):
        raise ConfigError(f"precision {precision!r}; expected fp32, fp16 or int8")
    args = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}"]
    if precision in ("fp16", "int8"):
        args.append("--fp16")
    if precision == "int8":
        if calib_cache is None:
            raise ConfigError("trtexec --int8 needs the calibration cache written by build_engine (--calib=...)")
        args += ["--int8", f"--calib={calib_cache}"]
    version = _version_tuple(trt_version) if trt_version else (8, 4)
    if version >= (8, 4):
        args.append(f"--memPoolSize=workspace:{int(workspace_mb)}")
    else:
        args.append(f"--workspace={int(workspace_mb)}")
    if timing_cache is not None:
        args.append(f"--timingCacheFile={timing_cache}")
    if shapes:
        args.append(f"--shapes={_shape_spec(shapes)}")
    return shlex.join(args)


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", str(version))[:3])


# --------------------------------------------------------------------------- ONNX readiness


@dataclass(frozen=True)
class TensorInfo:
    """A graph input or output: name, shape (ints, or the symbolic dim's name / ``?``) and ONNX dtype name."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str

    @property
    def symbolic(self) -> list[str]:
        """Names of the dims that are not fixed positive integers."""
        return [str(d) for d in self.shape if not (isinstance(d, int) and d > 0)]


@dataclass
class OnnxReport:
    """What :func:`check_onnx_for_tensorrt` found.

    Attributes:
        path: the ONNX file.
        opset: default-domain opset (None when the model declares none).
        inputs, outputs: graph I/O (initializers excluded).
        op_counts: ``{op_type: count}`` over the graph and its subgraphs; ops of other
            domains as ``domain::op_type``.
        unsupported: op types TensorRT cannot parse (sorted).
        problems: everything that stops a build on TensorRT 8.6/10.x, one line each.
        notes: things worth knowing that do not stop it.
    """

    path: Path
    opset: int | None
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    op_counts: dict[str, int]
    unsupported: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No problems."""
        return not self.problems

    def summary(self) -> str:
        """One line: ``ready`` or the problems."""
        if self.ok:
            return f"{self.path.name}: ready for TensorRT (opset {self.opset}, {sum(self.op_counts.values())} nodes)"
        return f"{self.path.name} is not ready for TensorRT: " + "; ".join(self.problems)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "path": str(self.path),
            "ok": self.ok,
            "opset": self.opset,
            "inputs": [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype} for t in self.inputs],
            "outputs": [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype} for t in self.outputs],
            "op_counts": dict(sorted(self.op_counts.items())),
            "unsupported": list(self.unsupported),
            "problems": list(self.problems),
            "notes": list(self.notes),
        }


def _tensor_info(value: Any, onnx: Any) -> TensorInfo:
    ttype = value.type.tensor_type
    dims: list[int | str] = []
    for d in ttype.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        else:
            dims.append(d.dim_param or "?")
    dtype = onnx.TensorProto.DataType.Name(ttype.elem_type) if ttype.elem_type else "UNDEFINED"
    return TensorInfo(value.name, tuple(dims), dtype)


def _walk_nodes(graph: Any, onnx: Any) -> Iterator[Any]:
    """Every node of ``graph`` and of its subgraphs (If/Loop/Scan bodies)."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _walk_nodes(attr.g, onnx)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _walk_nodes(sub, onnx)


def _attr(node: Any, name: str, default: Any, onnx: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            value = onnx.helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default


def check_onnx_for_tensorrt(
    onnx_path: str | Path,
    *,
    profile: Mapping[str, tuple[Sequence[int], Sequence[int], Sequence[int]]] | None = None,
    max_opset: int = MAX_OPSET_TRT8,
) -> OnnxReport:
    """Check statically (no TensorRT needed) that TensorRT 8.6 and 10.x can build an engine from an ONNX file.

    Checks: the default-domain opset is within [:data:`MIN_OPSET`, ``max_opset``]; every
    op is in :data:`SUPPORTED_OPS` and of the default domain (a custom-domain op needs a
    plugin); ``Resize`` uses a mode TensorRT documents; inputs and outputs are float32;
    inputs have static shapes unless ``profile`` gives (min, opt, max) shapes for them;
    and bcedge's own contract: one input (N, S, S, 1) NHWC and one output.

    Args:
        onnx_path: the model (weights may be external; they are not loaded).
        profile: ``{input_name: (min, opt, max)}`` optimisation-profile shapes for inputs
            with symbolic dimensions.
        max_opset: highest opset accepted (17 for TensorRT 8.6; :data:`MAX_OPSET_TRT10` for 10.x only).

    Returns:
        An :class:`OnnxReport`; ``report.ok`` is False when anything would stop the build.

    Raises:
        MissingDependencyError: ``onnx`` is not installed.
        InputError: the file is missing or not an ONNX model.
    """
    try:
        import onnx
    except ImportError:
        from bcedge.errors import MissingDependencyError

        raise MissingDependencyError("checking an ONNX model", "train", "onnx") from None
    path = Path(onnx_path)
    if not path.is_file():
        raise InputError(f"ONNX model {path} does not exist")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends from protobuf
        raise InputError(f"{path} is not an ONNX model: {exc}") from exc
    graph = model.graph

    opsets = {imp.domain: imp.version for imp in model.opset_import}
    opset = next((opsets[d] for d in _DEFAULT_DOMAINS if d in opsets), None)
    initializers = {init.name for init in graph.initializer}
    inputs = [_tensor_info(v, onnx) for v in graph.input if v.name not in initializers]
    outputs = [_tensor_info(v, onnx) for v in graph.output]

    op_counts: dict[str, int] = {}
    unsupported: set[str] = set()
    problems: list[str] = []
    notes: list[str] = []
    resize_issues: set[str] = set()
    for node in _walk_nodes(graph, onnx):
        custom = node.domain not in _DEFAULT_DOMAINS
        key = f"{node.domain}::{node.op_type}" if custom else node.op_type
        op_counts[key] = op_counts.get(key, 0) + 1
        if custom or node.op_type not in SUPPORTED_OPS:
            unsupported.add(key)
        if node.op_type == "Resize" and not custom:
            mode = _attr(node, "mode", "nearest", onnx)
            coord = _attr(node, "coordinate_transformation_mode", "half_pixel", onnx)
            nearest = _attr(node, "nearest_mode", "round_prefer_floor", onnx)
            if mode not in RESIZE_MODES:
                resize_issues.add(f"Resize mode {mode!r}")
            if coord not in RESIZE_COORDINATE_MODES:
                resize_issues.add(f"Resize coordinate_transformation_mode {coord!r}")
            if mode == "nearest" and nearest not in RESIZE_NEAREST_MODES:
                resize_issues.add(f"Resize nearest_mode {nearest!r}")
            if _attr(node, "antialias", 0, onnx):
                resize_issues.add("Resize antialias=1")

    if opset is None:
        problems.append("the model declares no default-domain opset")
    elif not MIN_OPSET <= opset <= max_opset:
        problems.append(
            f"opset {opset} is outside {MIN_OPSET}..{max_opset} (TensorRT 8.6 parses up to 17; export with 17)"
        )
    if unsupported:
        problems.append("ops TensorRT cannot parse: " + ", ".join(sorted(unsupported)))
    problems.extend(f"{issue} is not supported by TensorRT" for issue in sorted(resize_issues))

    for t in inputs:
        if t.dtype != "FLOAT":
            problems.append(f"input {t.name!r} is {t.dtype}; expected FLOAT (float32)")
        if t.symbolic:
            if profile is None or t.name not in profile:
                problems.append(
                    f"input {t.name!r} has symbolic dims {t.symbolic} (shape {list(t.shape)}); export with a static "
                    "shape or give an optimisation profile (min, opt, max)"
                )
            else:
                problems.extend(_check_profile(t, profile[t.name]))
                notes.append(f"input {t.name!r} is dynamic; profile {[list(s) for s in profile[t.name]]}")
    if profile:
        for name in profile:
            if name not in {t.name for t in inputs}:
                problems.append(f"profile names input {name!r}, which the model does not have")
    for t in outputs:
        if t.dtype != "FLOAT":
            problems.append(f"output {t.name!r} is {t.dtype}; expected FLOAT (float32)")

    # bcedge's runtime contract (backends/base.py): one (N, S, S, 1) NHWC input, one output.
    if len(inputs) != 1 or len(outputs) != 1:
        problems.append(f"{len(inputs)} inputs and {len(outputs)} outputs; bcedge models have 1 and 1")
    elif len(inputs[0].shape) != 4 or inputs[0].shape[3] != 1 or inputs[0].shape[1] != inputs[0].shape[2]:
        problems.append(f"input {inputs[0].name!r} has shape {list(inputs[0].shape)}; expected (N, S, S, 1) NHWC")
    for op in ("Loop", "If", "Scan"):
        if op in op_counts:
            notes.append(f"{op} is supported with restrictions (onnx-tensorrt docs/operators.md)")
    return OnnxReport(path, opset, inputs, outputs, op_counts, sorted(unsupported), problems, notes)


def _check_profile(t: TensorInfo, shapes: tuple[Sequence[int], Sequence[int], Sequence[int]]) -> list[str]:
    problems = []
    if len(shapes) != 3:
        return [f"profile for {t.name!r} must be (min, opt, max); got {len(shapes)} shapes"]
    lo, opt, hi = (tuple(int(d) for d in s) for s in shapes)
    for label, s in (("min", lo), ("opt", opt), ("max", hi)):
        if len(s) != len(t.shape):
            problems.append(
                f"profile {label} shape {list(s)} for {t.name!r} has rank {len(s)}; the input has {len(t.shape)}"
            )
            return problems
        for d, model_d in zip(s, t.shape, strict=True):
            if d < 1 or (isinstance(model_d, int) and model_d > 0 and d != model_d):
                problems.append(f"profile {label} shape {list(s)} does not fit input {t.name!r} {list(t.shape)}")
                break
    if not all(a <= b <= c for a, b, c in zip(lo, opt, hi, strict=True)):
        problems.append(
            f"profile for {t.name!r} must satisfy min <= opt <= max; got {list(lo)}, {list(opt)}, {list(hi)}"
        )
    return problems


# --------------------------------------------------------------------------- TensorRT


class EngineBuildError(EngineError):
    """TensorRT could not parse the model or build the engine."""


@dataclass(frozen=True)
class TrtFeatures:
    """The version-dependent choices for one ``tensorrt`` module (see the module docstring's table).

    Attributes:
        version: ``tensorrt.__version__``.
        major: its major number.
        network_flags: for ``builder.create_network``.
        max_opset: highest opset the parser takes.
    """

    version: str
    major: int
    network_flags: int
    max_opset: int

    @classmethod
    def from_module(cls, trt: Any) -> TrtFeatures:
        """Decide from the module's version (and attributes where a version is not enough)."""
        major = trt_major(trt)
        flags = 0
        if major < 10:
            # 8.x: without EXPLICIT_BATCH the network is implicit-batch, which the ONNX parser refuses.
            flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        return cls(str(trt.__version__), major, flags, MAX_OPSET_TRT10 if major >= 10 else MAX_OPSET_TRT8)


def set_workspace(trt: Any, config: Any, workspace_mb: int) -> str:
    """Limit the builder's workspace; returns the API used (``set_memory_pool_limit`` or ``max_workspace_size``)."""
    nbytes = int(workspace_mb) << 20
    if hasattr(config, "set_memory_pool_limit"):  # TensorRT 8.4+, the only form in 10
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, nbytes)
        return "set_memory_pool_limit"
    config.max_workspace_size = nbytes  # before 8.4
    return "max_workspace_size"


def build_serialized(builder: Any, network: Any, config: Any) -> bytes | None:
    """Build and serialise: ``build_serialized_network`` (8.0+, 10) or ``build_engine().serialize()`` (older)."""
    if hasattr(builder, "build_serialized_network"):
        plan = builder.build_serialized_network(network, config)
    else:  # pragma: no cover - TensorRT 7.x, outside the supported range
        engine = builder.build_engine(network, config)
        plan = None if engine is None else engine.serialize()
    return None if plan is None else bytes(plan)  # IHostMemory exposes the buffer protocol


def make_calibrator(
    trt: Any, cuda: CudaRuntime, source: CalibrationSource, cache: CalibrationCache, kind: CalibratorKind
) -> Any:
    """An INT8 calibrator feeding ``source``'s batches to TensorRT, reading/writing ``cache``.

    The class derives from ``trt.IInt8MinMaxCalibrator`` (``minmax``) or
    ``trt.IInt8EntropyCalibrator2`` (``entropy2``), which exist with the same methods in
    8.6 and 10.x. Each batch is copied into one device buffer allocated at the first
    batch; call ``.free()`` after the build.
    """
    bases = {"minmax": "IInt8MinMaxCalibrator", "entropy2": "IInt8EntropyCalibrator2"}
    if kind not in bases:
        raise ConfigError(f"calibrator {kind!r}; expected one of {', '.join(CALIBRATORS)}")
    base = getattr(trt, bases[kind])

    class Calibrator(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            # pybind11 trampoline classes must be initialised explicitly (Polygraphy's calibrator.py).
            base.__init__(self)
            self._batches = source.batches()
            self._ptr: int | None = None
            self.batches_fed = 0
            self.cache_used = False
            self.cache_written = False

        def get_batch_size(self) -> int:
            # Explicit-batch networks take the batch from the input shape; the batch dimension of
            # every buffer is already the network's. Polygraphy returns 1 here for the same reason;
            # getBatchSize is deprecated from 10.1.
            return 1

        def get_batch(self, names: list[str], *_: Any) -> list[int] | None:
            try:
                batch = next(self._batches)
            except StopIteration:
                return None
            if self._ptr is None:
                self._ptr = cuda.malloc(batch.nbytes)
            cuda.htod(self._ptr, batch)
            self.batches_fed += 1
            return [self._ptr]  # one input (checked by check_onnx_for_tensorrt)

        def read_calibration_cache(self, *_: Any) -> bytes | None:
            data = cache.read()
            # TensorRT may read again after calibrating and writing; only a read before any batch is reuse.
            if data is not None and self.batches_fed == 0 and not self.cache_written:
                self.cache_used = True
            return data

        def write_calibration_cache(self, data: Any, *_: Any) -> None:
            cache.write(bytes(data), trt_version=str(trt.__version__), **source.describe())
            self.cache_written = True

        def free(self) -> None:
            if self._ptr is not None:
                cuda.free(self._ptr)
                self._ptr = None

    return Calibrator()


@dataclass(frozen=True)
class EngineResult:
    """A built engine.

    Attributes:
        path: the engine file (name from :func:`bcedge.backends.tensorrt.engine_filename`).
        trt_version: ``tensorrt.__version__`` of the builder.
        gpu_name: CUDA device name of the builder.
        build_seconds: wall time of parse + build.
        details: precision, calibrator, cache use, workspace, I/O, the trtexec equivalent...
    """

    path: Path
    trt_version: str
    gpu_name: str
    build_seconds: float
    details: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (for a manifest's artifact details)."""
        return {
            "path": str(self.path),
            "trt_version": self.trt_version,
            "gpu_name": self.gpu_name,
            "build_seconds": round(self.build_seconds, 3),
            **self.details,
        }


class _CapturingLogger:
    """Factory for a ``trt.ILogger`` that keeps warnings and errors for the error message."""

    @staticmethod
    def create(trt: Any) -> Any:
        class Logger(trt.ILogger):  # type: ignore[misc, valid-type]
            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self.messages: list[tuple[str, str]] = []

            def log(self, severity: Any, msg: str) -> None:
                sev = getattr(severity, "name", str(severity))
                if sev in ("INTERNAL_ERROR", "ERROR", "WARNING"):
                    self.messages.append((sev, str(msg)))

        return Logger()


def build_engine(
    onnx_path: str | Path,
    out_dir: str | Path,
    *,
    precision: Precision,
    calibration: CalibrationSource | np.ndarray | None,
    calibrator: CalibratorKind = "minmax",
    cache_dir: str | Path,
    workspace_mb: int = 1024,
    timing_cache: str | Path | None = None,
    profile: Mapping[str, tuple[Sequence[int], Sequence[int], Sequence[int]]] | None = None,
    stem: str | None = None,
) -> EngineResult:
    """Build a TensorRT engine from an ONNX file on this machine's GPU.

    Args:
        onnx_path: the model (from :mod:`export.onnx`: ``image`` (1, S, S, 1) -> ``mask``).
        out_dir: where the engine goes, named
            ``{stem}_{precision}.trt{version}.{gpu}.engine`` and written atomically.
        precision: ``fp16``, ``int8`` (FP16 fallback for layers without INT8 kernels) or ``fp32``.
        calibration: INT8 only, required: preprocessed calibration images, as a
            :class:`CalibrationSource` or anything it takes (e.g. the (N, S, S, 1) array of
            :func:`export.calibration.calibration_images`).
        calibrator: ``minmax`` (default, see module docstring) or ``entropy2``.
        cache_dir: calibration and (default) timing caches live here.
        workspace_mb: builder workspace limit in MiB.
        timing_cache: timing-cache file; None uses :func:`timing_cache_path` in ``cache_dir``.
            Loaded when present (a cache TensorRT rejects is replaced), saved after the build.
        profile: optimisation profile ``{input: (min, opt, max)}`` for a dynamic-batch model.
        stem: engine name stem (default: the ONNX file's stem).

    Returns:
        An :class:`EngineResult`.

    Raises:
        ConfigError: bad precision/calibrator/workspace, or INT8 without calibration images.
        InputError: the ONNX file is missing or unreadable.
        EngineBuildError: the model is not TensorRT-ready (:func:`check_onnx_for_tensorrt`),
            or parsing/building failed (with TensorRT's last error).
        MissingDependencyError: TensorRT or a CUDA binding is not installed.
    """
    if precision not in ("fp32", "fp16", "int8"):
        raise ConfigError(f"engine precision {precision!r}; expected fp16, int8 or fp32")
    if calibrator not in CALIBRATORS:
        raise ConfigError(f"calibrator {calibrator!r}; expected one of {', '.join(CALIBRATORS)}")
    if isinstance(workspace_mb, bool) or not isinstance(workspace_mb, int) or workspace_mb < 1:
        raise ConfigError(f"workspace_mb is {workspace_mb!r}; expected a positive integer (MiB)")
    if precision == "int8" and calibration is None:
        raise ConfigError("an INT8 engine needs calibration images (preprocessed, e.g. from the train split)")
    if calibration is not None and not isinstance(calibration, CalibrationSource):
        calibration = CalibrationSource(calibration)
    onnx_path, out_dir, cache_dir = Path(onnx_path), Path(out_dir), Path(cache_dir)

    trt = import_tensorrt()
    features = TrtFeatures.from_module(trt)
    report = check_onnx_for_tensorrt(onnx_path, profile=profile, max_opset=features.max_opset)
    if not report.ok:
        raise EngineBuildError(report.summary())
    cuda = load_cuda()
    gpu = cuda.device_name()
    engine_path = out_dir / engine_filename(stem or onnx_path.stem, precision, features.version, gpu)
    timing_path = (
        Path(timing_cache) if timing_cache is not None else timing_cache_path(cache_dir, features.version, gpu)
    )
    onnx_sha = sha256_file(onnx_path)
    inp = report.inputs[0]
    details: dict[str, Any] = {
        "onnx": str(onnx_path),
        "onnx_sha256": onnx_sha,
        "precision": precision,
        "workspace_mb": workspace_mb,
        "network_flags": features.network_flags,
        "input": {"name": inp.name, "shape": list(inp.shape), "dtype": "float32"},
        "output": {"name": report.outputs[0].name, "shape": list(report.outputs[0].shape), "dtype": "float32"},
        "cuda_binding": cuda.kind,
    }

    started = time.perf_counter()
    logger = _CapturingLogger.create(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(features.network_flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(f"TensorRT {features.version} could not parse {onnx_path.name}: {'; '.join(errors)}")
    config = builder.create_builder_config()
    details["workspace_api"] = set_workspace(trt, config, workspace_mb)
    if precision in ("fp16", "int8"):
        details["platform_has_fast_fp16"] = getattr(builder, "platform_has_fast_fp16", None)
        config.set_flag(trt.BuilderFlag.FP16)

    trt_profile = None
    if profile:
        trt_profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in profile.items():
            trt_profile.set_shape(name, tuple(lo), tuple(opt), tuple(hi))
        config.add_optimization_profile(trt_profile)
        details["profile"] = {k: [list(s) for s in v] for k, v in profile.items()}

    calib = None
    calib_cache = None
    if precision == "int8":
        assert calibration is not None  # checked above
        source = _fit_calibration(calibration, inp, profile)
        calib_cache = CalibrationCache.for_key(cache_dir, onnx_sha, source.sha256(), calibrator)
        details["platform_has_fast_int8"] = getattr(builder, "platform_has_fast_int8", None)
        config.set_flag(trt.BuilderFlag.INT8)
        calib = make_calibrator(trt, cuda, source, calib_cache, calibrator)
        config.int8_calibrator = calib
        if trt_profile is not None:
            config.set_calibration_profile(trt_profile)
        details["calibrator"] = calibrator
        details["calibration"] = {**source.describe(), "sha256": calib_cache.calib_sha256}

    timing_bytes = read_timing_cache(timing_path)
    try:
        cache = config.create_timing_cache(timing_bytes)
        accepted = cache is not None and config.set_timing_cache(cache, False) is not False
    except Exception:  # a truncated or foreign cache file
        accepted = False
    if not accepted:
        # A cache from another TensorRT build or GPU: start empty and overwrite it after the build.
        details["timing_cache_rejected"] = True
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)

    try:
        plan = build_serialized(builder, network, config)
    finally:
        if calib is not None:
            calib.free()
    build_seconds = time.perf_counter() - started
    if plan is None:
        errors = [m for s, m in logger.messages if s in ("ERROR", "INTERNAL_ERROR")]
        last = errors[-1] if errors else "no error message (raise workspace_mb?)"
        raise EngineBuildError(f"TensorRT {features.version} could not build {engine_path.name}: {last}")

    atomic_write_bytes(engine_path, plan)
    saved = bytes(config.get_timing_cache().serialize())
    atomic_write_bytes(timing_path, saved)
    details["timing_cache"] = {"path": str(timing_path), "loaded_bytes": len(timing_bytes), "saved_bytes": len(saved)}
    if calib is not None and calib_cache is not None:
        details["calibration"].update(
            cache=str(calib_cache.path), reused=calib.cache_used, batches_fed=calib.batches_fed
        )
    details["warnings"] = [m for s, m in logger.messages if s == "WARNING"][-20:]
    details["trtexec"] = trtexec_command(
        onnx_path,
        engine_path,
        precision,
        workspace_mb,
        calib_cache=calib_cache.path if calib_cache else None,
        timing_cache=timing_path,
        shapes={k: v[1] for k, v in profile.items()} if profile else None,
        trt_version=features.version,
    )
    return EngineResult(engine_path, features.version, gpu, build_seconds, details)


def _fit_calibration(
    source: CalibrationSource,
    inp: TensorInfo,
    profile: Mapping[str, tuple[Sequence[int], Sequence[int], Sequence[int]]] | None,
) -> CalibrationSource:
    """Check the images fit the network input and cut them to the batch TensorRT will expect."""
    if source.image_shape != tuple(inp.shape[1:]):
        raise ConfigError(
            f"calibration images are {list(source.image_shape)}; the model input {inp.name!r} is {list(inp.shape)}"
        )
    batch = inp.shape[0]
    if isinstance(batch, int) and batch > 0:
        # Static batch: every calibration buffer must have exactly the network's input shape.
        return source.rebatched(batch)
    if profile and inp.name in profile:
        # Dynamic batch: TensorRT calibrates at the calibration profile's opt shape.
        return source.rebatched(int(profile[inp.name][1][0]))
    return source
