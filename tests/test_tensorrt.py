"""TensorRT export and backend: everything around TensorRT, tested without it.

TensorRT cannot be installed here and there is no GPU, so:

* the pure parts run for real: calibration batches (from preprocessed phantom scans),
  cache keys and invalidation, engine names, the trtexec line, the ONNX readiness check
  on ONNX files converted from the tiny Keras models;
* the TensorRT-touching parts (engine build, calibrator, backend) run against fake
  ``tensorrt`` modules with the attribute sets of TensorRT 8.6 and 10.x and a fake
  cuda-python ``cudart`` (and pycuda) whose "device memory" is a dict and whose pinned
  host memory is real ctypes memory, so both version paths and every buffer copy execute;
* tests needing real TensorRT and a GPU are marked ``gpu`` and skip without ``tensorrt``.
"""

from __future__ import annotations

import ctypes
import enum
import json
import shlex
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import bcedge.backends.tensorrt as trt_backend
import export.tensorrt as trt_export
from bcedge.backends.tensorrt import (
    CudaRuntime,
    EngineError,
    TensorRTBackend,
    engine_filename,
    load_cuda,
    parse_engine_filename,
    sanitize_gpu_name,
    sanitize_version,
    select_io_api,
)
from bcedge.errors import ConfigError, InputError, MissingDependencyError
from export.tensorrt import (
    CalibrationCache,
    CalibrationSource,
    EngineBuildError,
    TrtFeatures,
    build_engine,
    check_onnx_for_tensorrt,
    set_workspace,
    timing_cache_path,
    trtexec_command,
)

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

S = 16  # model side for the fake-engine tests: small and fast

# --------------------------------------------------------------------------- fake CUDA


class _CudaErr(enum.Enum):
    cudaSuccess = 0
    cudaErrorMemoryAllocation = 2


class _MemcpyKind(enum.Enum):
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2


class FakeCudart:
    """The cuda-python ``cudart`` calls bcedge uses: (error, result) tuples, int device pointers.

    Device memory is a dict of bytearrays at made-up addresses; pinned host memory is real
    (ctypes buffers) because the backend wraps it in NumPy arrays.
    """

    cudaError_t = _CudaErr
    cudaMemcpyKind = _MemcpyKind

    def __init__(self, gpu: str = "Orin") -> None:
        self.gpu = gpu
        self.device: dict[int, bytearray] = {}
        self.host: dict[int, Any] = {}
        self.streams: set[int] = set()
        self._next = 0x7000_0000

    class Stream:
        def __init__(self, handle: int) -> None:
            self.handle = handle

        def __int__(self) -> int:
            return self.handle

    def cudaGetDevice(self):
        return (_CudaErr.cudaSuccess, 0)

    def cudaGetDeviceProperties(self, device: int):
        return (_CudaErr.cudaSuccess, types.SimpleNamespace(name=self.gpu.encode() + b"\0" * 8))

    def cudaMalloc(self, nbytes: int):
        self._next += 0x10000 + nbytes
        self.device[self._next] = bytearray(nbytes)
        return (_CudaErr.cudaSuccess, self._next)

    def cudaFree(self, ptr: int):
        del self.device[ptr]
        return (_CudaErr.cudaSuccess,)

    def cudaMallocHost(self, nbytes: int):
        buf = ctypes.create_string_buffer(nbytes)
        self.host[ctypes.addressof(buf)] = buf
        return (_CudaErr.cudaSuccess, ctypes.addressof(buf))

    def cudaFreeHost(self, ptr: int):
        del self.host[ptr]
        return (_CudaErr.cudaSuccess,)

    def cudaStreamCreate(self):
        handle = 0x1000 + len(self.streams) + 1
        self.streams.add(handle)
        return (_CudaErr.cudaSuccess, self.Stream(handle))

    def cudaStreamSynchronize(self, stream):
        assert int(stream) in self.streams
        return (_CudaErr.cudaSuccess,)

    def cudaStreamDestroy(self, stream):
        self.streams.remove(int(stream))
        return (_CudaErr.cudaSuccess,)

    def cudaMemcpy(self, dst: int, src: int, nbytes: int, kind):
        if kind is _MemcpyKind.cudaMemcpyHostToDevice:
            mem = self.device[dst]
            assert nbytes <= len(mem), "copy past the end of a device buffer"
            mem[:nbytes] = ctypes.string_at(src, nbytes)
        else:
            mem = self.device[src]
            assert nbytes <= len(mem), "copy past the end of a device buffer"
            ctypes.memmove(dst, bytes(mem[:nbytes]), nbytes)
        return (_CudaErr.cudaSuccess,)

    def cudaMemcpyAsync(self, dst: int, src: int, nbytes: int, kind, stream):
        assert int(stream) in self.streams
        return self.cudaMemcpy(dst, src, nbytes, kind)

    # what the fake TensorRT context uses to "run" the model
    def read(self, ptr: int, shape: tuple[int, ...], dtype) -> np.ndarray:
        count = int(np.prod(shape))
        return np.frombuffer(bytes(self.device[ptr]), dtype=dtype, count=count).reshape(shape)

    def write(self, ptr: int, array: np.ndarray) -> None:
        data = np.ascontiguousarray(array).tobytes()
        self.device[ptr][: len(data)] = data


class FakePycudaDriver:
    """The pycuda.driver calls bcedge uses, over the same fake device memory."""

    def __init__(self, cudart: FakeCudart) -> None:
        self.rt = cudart
        self.freed: list[int] = []
        rt = cudart

        class Allocation:
            def __init__(self, nbytes: int) -> None:
                self.ptr = rt.cudaMalloc(nbytes)[1]

            def __int__(self) -> int:
                return self.ptr

            def free(self) -> None:
                rt.cudaFree(self.ptr)

        class Stream:
            handle = 0x2000

            def synchronize(self) -> None:
                pass

        device = types.SimpleNamespace(name=lambda: rt.gpu)
        self.Context = types.SimpleNamespace(get_device=lambda: device)
        self.Stream = Stream
        self._Allocation = Allocation

    def mem_alloc(self, nbytes: int):
        return self._Allocation(nbytes)

    def pagelocked_empty(self, shape, dtype):
        return np.zeros(shape, dtype)

    def memcpy_htod(self, ptr: int, array: np.ndarray) -> None:
        self.rt.write(ptr, array)

    def memcpy_htod_async(self, ptr: int, array: np.ndarray, stream) -> None:
        self.rt.write(ptr, array)

    def memcpy_dtoh(self, array: np.ndarray, ptr: int) -> None:
        array[...] = self.rt.read(ptr, array.shape, array.dtype)

    def memcpy_dtoh_async(self, array: np.ndarray, ptr: int, stream) -> None:
        self.memcpy_dtoh(array, ptr)


# --------------------------------------------------------------------------- fake TensorRT


class _DataType(enum.Enum):
    FLOAT = "float32"
    HALF = "float16"
    INT8 = "int8"


class _Mode(enum.Enum):
    INPUT = 1
    OUTPUT = 2


class _Severity(enum.Enum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3


_ONNX_TO_TRT = {
    TensorProto.FLOAT: _DataType.FLOAT,
    TensorProto.FLOAT16: _DataType.HALF,
    TensorProto.INT8: _DataType.INT8,
}


def make_fake_trt(version: str, cudart: FakeCudart, *, plan_io_dtype: str | None = None) -> types.ModuleType:
    """A ``tensorrt`` stand-in with the attribute set of 8.6 (``8.*``) or 10.x (``10.*``).

    8.6: EXPLICIT_BATCH flag, binding *and* tensor APIs on engines/contexts, deserialisation
    failure returns None. 10.x: no binding API, no EXPLICIT_BATCH attribute (so any use of it
    fails), deserialisation failure raises. Builds "run" the calibrator and write a JSON plan.
    """
    is10 = version.startswith("10")
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.calls = []  # what the code under test did, for assertions
    trt.fail_parse = False
    trt.fail_build = False
    trt.DataType = _DataType
    trt.TensorIOMode = _Mode
    trt.nptype = lambda dt: np.dtype(dt.value).type
    trt.BuilderFlag = types.SimpleNamespace(FP16="FP16", INT8="INT8")
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    if not is10:
        trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=0)

    class Logger:
        WARNING = _Severity.WARNING

        def __init__(self, severity=None) -> None:
            self.severity = severity

    class ILogger:
        def __init__(self) -> None:
            trt.calls.append(("ILogger.__init__",))

    class _Calibrator:
        def __init__(self) -> None:
            trt.calls.append(("calibrator.__init__", type(self).__mro__[1].__name__))

    class IInt8MinMaxCalibrator(_Calibrator):
        pass

    class IInt8EntropyCalibrator2(_Calibrator):
        pass

    trt.Logger, trt.ILogger = Logger, ILogger
    trt.IInt8MinMaxCalibrator, trt.IInt8EntropyCalibrator2 = IInt8MinMaxCalibrator, IInt8EntropyCalibrator2

    class Network:
        def __init__(self, flags: int) -> None:
            self.flags = flags
            self.inputs: list[dict] = []
            self.outputs: list[dict] = []

    class Parser:
        def __init__(self, network: Network, logger) -> None:
            self.network, self.num_errors = network, 0

        def parse(self, data: bytes) -> bool:
            if trt.fail_parse:
                self.num_errors = 1
                return False
            model = onnx.load_from_string(data)
            init = {i.name for i in model.graph.initializer}

            def io(v):
                t = v.type.tensor_type
                dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
                return {"name": v.name, "shape": dims, "dtype": _ONNX_TO_TRT[t.elem_type].value}

            self.network.inputs = [io(v) for v in model.graph.input if v.name not in init]
            self.network.outputs = [io(v) for v in model.graph.output]
            return True

        def get_error(self, i: int) -> str:
            return "In node 0 (parseGraph): INVALID_NODE: fake parse failure"

    class TimingCache:
        def __init__(self, data: bytes) -> None:
            self.data = bytes(data)

        def serialize(self) -> memoryview:
            return memoryview(b"TIMING|" + version.encode() + b"|" + str(len(trt.calls)).encode())

    class Profile:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple] = {}

        def set_shape(self, name, lo, opt, hi) -> None:
            self.shapes[name] = (list(lo), list(opt), list(hi))

    class Config:
        def __init__(self) -> None:
            self.flags: set[str] = set()
            self.int8_calibrator = None
            self.profiles: list[Profile] = []
            self.calibration_profile = None
            self.timing_cache = None

        def set_memory_pool_limit(self, pool, nbytes: int) -> None:
            trt.calls.append(("set_memory_pool_limit", pool, nbytes))

        def set_flag(self, flag: str) -> None:
            self.flags.add(flag)

        def add_optimization_profile(self, profile: Profile) -> int:
            self.profiles.append(profile)
            return 0

        def set_calibration_profile(self, profile: Profile) -> bool:
            self.calibration_profile = profile
            return True

        def create_timing_cache(self, data: bytes) -> TimingCache:
            trt.calls.append(("create_timing_cache", bytes(data)))
            return TimingCache(data)

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            if cache.data and not cache.data.startswith(b"TIMING|" + version.encode()):
                return False  # another version/GPU
            self.timing_cache = cache
            return True

        def get_timing_cache(self) -> TimingCache:
            return self.timing_cache

    class Builder:
        platform_has_fast_fp16 = True
        platform_has_fast_int8 = True

        def __init__(self, logger) -> None:
            self.logger = logger

        def create_network(self, flags: int) -> Network:
            trt.calls.append(("create_network", flags))
            return Network(flags)

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: Config):
            if trt.fail_build:
                self.logger.log(_Severity.ERROR, "Internal error: could not find any implementation (fake)")
                return None
            calib = config.int8_calibrator
            if "INT8" in config.flags:
                assert calib is not None
                trt.calls.append(("batch_size", calib.get_batch_size()))
                cached = calib.read_calibration_cache()
                if not cached:
                    names = [i["name"] for i in network.inputs]
                    want = config.calibration_profile.shapes[names[0]][1] if config.calibration_profile else None
                    want = want or network.inputs[0]["shape"]
                    seen = []
                    while (ptrs := calib.get_batch(names)) is not None:
                        seen.append(cudart.read(ptrs[0], tuple(want), np.float32).copy())
                    trt.calls.append(("calibrated", seen))
                    calib.write_calibration_cache(memoryview(f"TRT-{version}-Calibration\nimage: 3c010a14\n".encode()))
                    calib.read_calibration_cache()  # a re-read after writing is not "reuse"
            io_dtype = plan_io_dtype
            plan = {
                "version": version,
                "inputs": [dict(i, dtype=io_dtype or i["dtype"]) for i in network.inputs],
                "outputs": [dict(o, dtype=io_dtype or o["dtype"]) for o in network.outputs],
                "profile": config.profiles[0].shapes if config.profiles else {},
                "flags": sorted(config.flags),
            }
            return memoryview(json.dumps(plan).encode())

    trt.Builder, trt.OnnxParser = Builder, Parser

    class Engine:
        def __init__(self, plan: dict) -> None:
            self.plan = plan
            self.io = [(t, True) for t in plan["inputs"]] + [(t, False) for t in plan["outputs"]]

        def _find(self, name):
            return next(t for t, _ in self.io if t["name"] == name)

        def _profile(self, name):
            return [tuple(s) for s in self.plan["profile"][name]]

        # tensor API (8.5+ and 10)
        @property
        def num_io_tensors(self) -> int:
            return len(self.io)

        def get_tensor_name(self, i: int) -> str:
            return self.io[i][0]["name"]

        def get_tensor_shape(self, name: str):
            return tuple(self._find(name)["shape"])

        def get_tensor_dtype(self, name: str):
            return _DataType(self._find(name)["dtype"])

        def get_tensor_mode(self, name: str):
            return _Mode.INPUT if any(t["name"] == name and inp for t, inp in self.io) else _Mode.OUTPUT

        def get_tensor_profile_shape(self, name: str, profile: int):
            return self._profile(name)

        def create_execution_context(self):
            return Context(self)

    class Engine86(Engine):
        # binding API (8.x only)
        @property
        def num_bindings(self) -> int:
            return len(self.io)

        def get_binding_name(self, i: int) -> str:
            return self.io[i][0]["name"]

        def binding_is_input(self, i: int) -> bool:
            return self.io[i][1]

        def get_binding_shape(self, i: int):
            return tuple(self.io[i][0]["shape"])

        def get_binding_dtype(self, i: int):
            return _DataType(self.io[i][0]["dtype"])

        def get_profile_shape(self, profile: int, i: int):
            return self._profile(self.io[i][0]["name"])

    class Context:
        def __init__(self, engine: Engine) -> None:
            self.engine = engine
            self.addresses: dict[str, int] = {}
            self.shape: tuple[int, ...] | None = None

        def _run(self, ptrs: dict[str, int]) -> bool:
            (inp, _), (out, _) = self.engine.io
            shape = self.shape or tuple(inp["shape"])
            x = cudart.read(ptrs[inp["name"]], shape, np.dtype(inp["dtype"]))
            cudart.write(ptrs[out["name"]], (1.0 - x.astype(np.float32)).astype(out["dtype"]))
            return True

        def set_input_shape(self, name: str, shape) -> bool:
            trt.calls.append(("set_input_shape", name, tuple(shape)))
            self.shape = tuple(shape)
            return True

        def set_tensor_address(self, name: str, ptr: int) -> None:
            self.addresses[name] = ptr

        def execute_async_v3(self, stream_handle: int) -> bool:
            trt.calls.append(("execute_async_v3", stream_handle))
            return self._run(self.addresses)

    class Context86(Context):
        def set_binding_shape(self, i: int, shape) -> bool:
            trt.calls.append(("set_binding_shape", i, tuple(shape)))
            self.shape = tuple(shape)
            return True

        def execute_async_v2(self, bindings: list[int], stream_handle: int) -> bool:
            trt.calls.append(("execute_async_v2", stream_handle))
            return self._run({t["name"]: bindings[i] for i, (t, _) in enumerate(self.engine.io)})

    if not is10:
        Engine86.create_execution_context = lambda self: Context86(self)

    class Runtime:
        def __init__(self, logger) -> None:
            self.logger = logger

        def deserialize_cuda_engine(self, data: bytes):
            try:
                plan = json.loads(bytes(data))
            except ValueError:
                plan = None
            if plan is None or plan.get("version") != version:
                if is10:
                    raise RuntimeError("IRuntime::deserializeCudaEngine: Error Code 6: API Usage Error (fake)")
                return None  # 8.x logs the error and returns None
            return Engine(plan) if is10 else Engine86(plan)

    trt.Runtime = Runtime
    return trt


@pytest.fixture(params=["8.6.1.6", "10.3.0.30"])
def fake_stack(request, monkeypatch) -> tuple[types.ModuleType, FakeCudart]:
    """(fake tensorrt, fake cudart) installed where bcedge and export look them up."""
    cudart = FakeCudart("Orin")
    trt = make_fake_trt(request.param, cudart)
    install(monkeypatch, trt, cudart)
    return trt, cudart


def install(monkeypatch, trt: types.ModuleType, cudart: FakeCudart, kind: str = "cuda-python") -> None:
    runtime = CudaRuntime(kind, cudart if kind == "cuda-python" else FakePycudaDriver(cudart))
    for module in (trt_backend, trt_export):
        monkeypatch.setattr(module, "import_tensorrt", lambda: trt)
        monkeypatch.setattr(module, "load_cuda", lambda: runtime)


# --------------------------------------------------------------------------- ONNX helpers


def tiny_onnx(
    path: Path,
    *,
    batch: int | str = 1,
    size: int = S,
    op: str = "Sigmoid",
    domain: str = "",
    opset: int = 17,
    in_type: int = TensorProto.FLOAT,
    layout: str = "NHWC",
) -> Path:
    """A one-node ONNX model ``image`` -> ``mask`` (hand-made, no converter)."""
    shape = [batch, size, size, 1] if layout == "NHWC" else [batch, 1, size, size]
    x = helper.make_tensor_value_info("image", in_type, shape)
    y = helper.make_tensor_value_info("mask", TensorProto.FLOAT, shape)
    node = helper.make_node(op, ["image"], ["mask"], domain=domain)
    imports = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(helper.make_graph([node], "tiny", [x], [y]), opset_imports=imports)
    onnx.save(model, str(path))
    return path


def phantom_tensors(tmp: Path, n: int, size: int = S) -> list[np.ndarray]:
    """``n`` phantom scans written as DICOM, read and preprocessed like the runtime does."""
    from bcedge.dicom import read_mammogram
    from bcedge.phantom import make_phantom
    from bcedge.preprocess import PreprocessConfig, preprocess

    out = []
    for seed in range(n):
        path = make_phantom(seed, scale=0.1).write(tmp / f"scan {seed}.dcm")
        tensor, _ = preprocess(read_mammogram(path), PreprocessConfig(size=size))
        out.append(tensor)
    return out


# --------------------------------------------------------------------------- calibration batches


def test_calibration_batches_pad_with_images_from_the_start() -> None:
    images = np.random.default_rng(0).random((5, S, S, 1), dtype=np.float32)
    source = CalibrationSource(images, batch_size=2)
    batches = list(source.batches())
    assert len(source) == len(batches) == 3
    for b in batches:
        assert b.shape == (2, S, S, 1) and b.dtype == np.float32 and b.flags.c_contiguous
    np.testing.assert_array_equal(np.concatenate(batches)[:5], images)
    np.testing.assert_array_equal(batches[2][1], images[0])  # wrapped, not zeros


def test_calibration_batches_drop_rule_and_small_sets() -> None:
    images = np.random.default_rng(1).random((5, S, S, 1), dtype=np.float32)
    dropped = CalibrationSource(images, batch_size=2, last="drop")
    assert len(dropped) == 2
    np.testing.assert_array_equal(np.concatenate(list(dropped.batches())), images[:4])
    tiny = CalibrationSource(images[:2], batch_size=5)  # fewer images than one batch: wraps repeatedly
    (only,) = tiny.batches()
    np.testing.assert_array_equal(only, images[[0, 1, 0, 1, 0]])
    with pytest.raises(ConfigError, match="cannot fill one batch"):
        CalibrationSource(images[:2], batch_size=5, last="drop")


def test_calibration_batches_come_from_preprocessed_scans(tmp_path: Path) -> None:
    tensors = phantom_tensors(tmp_path, 3)
    source = CalibrationSource(tensors, batch_size=1)  # (1, S, S, 1) each, as preprocess returns them
    assert source.n_images == 3 and source.image_shape == (S, S, 1)
    np.testing.assert_array_equal(np.concatenate(list(source.batches())), np.concatenate(tensors))
    # An ArraySet-like object (training.data.ArraySet has .images) and a bare array give the same batches.
    as_set = CalibrationSource(types.SimpleNamespace(images=np.concatenate(tensors)), batch_size=1)
    assert as_set.sha256() == source.sha256()


@pytest.mark.parametrize(
    ("images", "match"),
    [
        (np.full((2, S, S, 1), 255.0, np.float32), r"expected preprocessed images in \[0, 1\]"),
        (np.full((2, S, S, 1), np.nan, np.float32), r"\[0, 1\]"),
        (np.zeros((2, S, S, 3), np.float32), r"expected \(N, S, S, 1\)"),
        ([np.zeros((S, S, 1)), np.zeros((S + 1, S + 1, 1))], "image 0 has"),
        ([], "empty"),
    ],
)
def test_calibration_rejects_what_is_not_a_preprocessed_set(images: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        CalibrationSource(images)


def test_calibration_hash_follows_what_is_fed() -> None:
    images = np.random.default_rng(2).random((4, S, S, 1), dtype=np.float32)
    base = CalibrationSource(images, batch_size=2)
    assert CalibrationSource(images.copy(), batch_size=2).sha256() == base.sha256()
    changed = images.copy()
    changed[3, 0, 0, 0] = 0.5 if changed[3, 0, 0, 0] != 0.5 else 0.25
    assert CalibrationSource(changed, batch_size=2).sha256() != base.sha256()
    assert base.rebatched(1).sha256() != base.sha256()
    assert CalibrationSource(images, batch_size=2, max_images=3).sha256() != base.sha256()


# --------------------------------------------------------------------------- caches and names


def test_calibration_cache_reuse_and_invalidation(spaced_dir: Path) -> None:
    key = ("a" * 64, "b" * 64)
    cache = CalibrationCache.for_key(spaced_dir, *key, "minmax")
    assert cache.path.name == f"calib.minmax.{'a' * 12}.{'b' * 12}.cache"
    assert cache.read() is None
    cache.write(b"TRT-8601-MinMaxCalibration\nimage: 3c010a14\n", trt_version="8.6.1.6")
    assert cache.is_valid() and cache.read().startswith(b"TRT-8601")
    meta = json.loads(cache.meta_path.read_text())
    assert meta["onnx_sha256"] == key[0] and meta["calib_sha256"] == key[1] and meta["calibrator"] == "minmax"
    # Another calibration set, model or calibrator is another file: nothing to reuse.
    assert CalibrationCache.for_key(spaced_dir, key[0], "c" * 64, "minmax").read() is None
    assert CalibrationCache.for_key(spaced_dir, "d" * 64, key[1], "minmax").read() is None
    assert CalibrationCache.for_key(spaced_dir, *key, "entropy2").read() is None
    # A sidecar that does not record this key invalidates (and removes) the pair.
    meta["calib_sha256"] = "e" * 64
    cache.meta_path.write_text(json.dumps(meta))
    assert cache.read() is None
    assert not cache.path.exists() and not cache.meta_path.exists()
    with pytest.raises(ConfigError, match="calibrator"):
        CalibrationCache.for_key(spaced_dir, *key, "percentile")


def test_engine_and_timing_cache_names_are_sanitised_and_parse_back(spaced_dir: Path) -> None:
    name = engine_filename("model", "int8", "10.3.0.30", "NVIDIA Orin (nvgpu)")
    assert name == "model_int8.trt10.3.0.30.NVIDIA-Orin-nvgpu.engine"
    tag = parse_engine_filename(spaced_dir / name)
    assert (tag.stem, tag.precision, tag.trt_version, tag.gpu) == ("model", "int8", "10.3.0.30", "NVIDIA-Orin-nvgpu")
    odd = engine_filename("unet v2/final", "fp16", "8.6.1", "NVIDIA GeForce RTX 4090")
    assert odd == "unet-v2-final_fp16.trt8.6.1.NVIDIA-GeForce-RTX-4090.engine"
    assert parse_engine_filename(odd).gpu == "NVIDIA-GeForce-RTX-4090"
    assert sanitize_gpu_name("Tesla V100-SXM2-16GB") == "Tesla-V100-SXM2-16GB"
    assert parse_engine_filename("model.engine") is None and parse_engine_filename("model_int8.onnx") is None
    with pytest.raises(ConfigError, match="precision"):
        engine_filename("model", "int4", "10.3.0", "Orin")
    path = timing_cache_path(spaced_dir, "10.3.0.30", "NVIDIA Orin")
    assert path.parent == spaced_dir and path.name == "timing.trt10.3.0.30.NVIDIA-Orin.cache"


# --------------------------------------------------------------------------- trtexec


def test_trtexec_command_quotes_paths_with_spaces(spaced_dir: Path) -> None:
    onnx_path, engine = spaced_dir / "my model.onnx", spaced_dir / "out dir" / "m.engine"
    calib, timing = spaced_dir / "calib.cache", spaced_dir / "timing cache.bin"
    cmd = trtexec_command(onnx_path, engine, "int8", 512, calib_cache=calib, timing_cache=timing)
    assert shlex.split(cmd) == [
        "trtexec",
        f"--onnx={onnx_path}",
        f"--saveEngine={engine}",
        "--fp16",
        "--int8",
        f"--calib={calib}",
        "--memPoolSize=workspace:512",
        f"--timingCacheFile={timing}",
    ]
    fp16 = shlex.split(trtexec_command(onnx_path, engine, "fp16", trt_version="8.2.1"))
    assert "--workspace=1024" in fp16 and "--int8" not in fp16
    dyn = shlex.split(trtexec_command(onnx_path, engine, "fp16", shapes={"input:0": (4, S, S, 1)}))
    assert dyn[-1] == f"--shapes='input:0':4x{S}x{S}x1"
    with pytest.raises(ConfigError, match="calibration cache"):
        trtexec_command(onnx_path, engine, "int8")


# --------------------------------------------------------------------------- ONNX readiness


def test_check_onnx_static_model_is_ready(spaced_dir: Path) -> None:
    report = check_onnx_for_tensorrt(tiny_onnx(spaced_dir / "static.onnx"))
    assert report.ok, report.problems
    assert report.opset == 17 and report.op_counts == {"Sigmoid": 1}
    assert report.inputs[0].shape == (1, S, S, 1) and report.inputs[0].dtype == "FLOAT"
    assert "ready" in report.summary()


def test_check_onnx_flags_dynamic_batch_unless_profiled(spaced_dir: Path) -> None:
    path = tiny_onnx(spaced_dir / "dynamic.onnx", batch="N")
    report = check_onnx_for_tensorrt(path)
    assert not report.ok and "symbolic dims ['N']" in report.summary()
    profile = {"image": ((1, S, S, 1), (2, S, S, 1), (4, S, S, 1))}
    assert check_onnx_for_tensorrt(path, profile=profile).ok
    bad = {"image": ((1, S, S, 1), (8, S, S, 1), (4, S, S, 1))}
    assert "min <= opt <= max" in check_onnx_for_tensorrt(path, profile=bad).summary()
    wrong_size = {"image": ((1, 8, 8, 1), (1, 8, 8, 1), (1, 8, 8, 1))}
    assert "does not fit" in check_onnx_for_tensorrt(path, profile=wrong_size).summary()


def test_check_onnx_lists_unsupported_and_custom_ops(spaced_dir: Path) -> None:
    custom = check_onnx_for_tensorrt(tiny_onnx(spaced_dir / "custom.onnx", op="MassFinder", domain="com.example"))
    assert custom.unsupported == ["com.example::MassFinder"] and not custom.ok
    # An op the TensorRT parser lists as unsupported, hidden inside a Loop body (subgraphs are walked).
    body_in = helper.make_tensor_value_info("b_in", TensorProto.FLOAT, [S])
    body_out = helper.make_tensor_value_info("b_out", TensorProto.FLOAT, [S])
    body = helper.make_graph([helper.make_node("Unique", ["b_in"], ["b_out"])], "body", [body_in], [body_out])
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, S, S, 1])
    y = helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, S, S, 1])
    loop = helper.make_node("Loop", ["", "", "image"], ["mask"], body=body)
    model = helper.make_model(helper.make_graph([loop], "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(spaced_dir / "loop.onnx"))
    report = check_onnx_for_tensorrt(spaced_dir / "loop.onnx")
    assert report.unsupported == ["Unique"]  # Loop itself is supported (with restrictions): noted, not flagged
    assert report.op_counts == {"Loop": 1, "Unique": 1}
    assert any("Loop is supported with restrictions" in n for n in report.notes)


def test_check_onnx_opset_dtypes_layout_and_resize(spaced_dir: Path) -> None:
    opset18 = tiny_onnx(spaced_dir / "o18.onnx", opset=18)
    assert "opset 18 is outside 9..17" in check_onnx_for_tensorrt(opset18).summary()
    assert check_onnx_for_tensorrt(opset18, max_opset=trt_export.MAX_OPSET_TRT10).ok
    int_input = check_onnx_for_tensorrt(tiny_onnx(spaced_dir / "int.onnx", in_type=TensorProto.INT64))
    assert any("is INT64; expected FLOAT" in p for p in int_input.problems)
    nchw = check_onnx_for_tensorrt(tiny_onnx(spaced_dir / "nchw.onnx", layout="NCHW"))
    assert any("expected (N, S, S, 1) NHWC" in p for p in nchw.problems)
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, S, S, 1])
    y = helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 2 * S, 2 * S, 1])
    scales = helper.make_tensor("scales", TensorProto.FLOAT, [4], [1.0, 2.0, 2.0, 1.0])
    node = helper.make_node("Resize", ["image", "", "scales"], ["mask"], mode="cubic")
    graph = helper.make_graph([node], "r", [x], [y], initializer=[scales])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(spaced_dir / "r.onnx"))
    resize = check_onnx_for_tensorrt(spaced_dir / "r.onnx")
    assert resize.inputs == [resize.inputs[0]] and resize.inputs[0].name == "image"  # initializer not an input
    assert resize.problems == ["Resize mode 'cubic' is not supported by TensorRT"]
    with pytest.raises(InputError, match="not an ONNX model"):
        (spaced_dir / "junk.onnx").write_bytes(b"\x00\x01junk")
        check_onnx_for_tensorrt(spaced_dir / "junk.onnx")


# --------------------------------------------------------------------------- real tiny Keras models


def keras_to_onnx(path: Path, name: str, batch: int | None = 1, **kwargs: Any) -> Path:
    """``training.models.build_model(name, 64)`` converted with tf2onnx, input signature (batch, 64, 64, 1)."""
    tf = pytest.importorskip("tensorflow")
    tf2onnx = pytest.importorskip("tf2onnx")
    from training.models import build_model

    model = build_model(name, 64, None, **kwargs)
    spec = (tf.TensorSpec((batch, 64, 64, 1), tf.float32, name="image"),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=17)
    onnx.save(proto, str(path))
    return path


@pytest.fixture(scope="module")
def keras_onnx_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("keras onnx")


def test_tiny_unet_onnx_is_tensorrt_ready(keras_onnx_dir: Path) -> None:
    report = check_onnx_for_tensorrt(keras_to_onnx(keras_onnx_dir / "unet.onnx", "unet", base_filters=4))
    assert report.ok, report.problems
    assert report.inputs[0].shape == (1, 64, 64, 1) and report.outputs[0].shape == (1, 64, 64, 1)
    # Keras 3 nearest UpSampling2D reaches ONNX as Unsqueeze/Tile/Reshape, not Resize.
    assert {"Conv", "MaxPool", "Concat", "Sigmoid", "Tile"} <= set(report.op_counts)
    assert "Resize" not in report.op_counts and "ConvTranspose" not in report.op_counts


def test_tiny_unet_transpose_variant_uses_convtranspose(keras_onnx_dir: Path) -> None:
    path = keras_to_onnx(keras_onnx_dir / "unet-t.onnx", "unet", base_filters=4, upsampling="transpose")
    report = check_onnx_for_tensorrt(path)
    assert report.ok, report.problems
    assert report.op_counts.get("ConvTranspose") == 4 and "Tile" not in report.op_counts


def test_dynamic_batch_keras_export_is_flagged(keras_onnx_dir: Path) -> None:
    path = keras_to_onnx(keras_onnx_dir / "unet-dyn.onnx", "unet", batch=None, base_filters=4)
    report = check_onnx_for_tensorrt(path)
    assert not report.ok and "symbolic dims" in report.summary()
    name = report.inputs[0].name
    assert check_onnx_for_tensorrt(path, profile={name: ((1, 64, 64, 1), (2, 64, 64, 1), (4, 64, 64, 1))}).ok


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "kwargs", "expected"),
    [
        ("unet-mobilenetv2", {}, {"Conv", "Clip", "Pad", "Add", "Sigmoid"}),  # ReLU6 -> Clip
        ("unet-vgg19", {}, {"Conv", "MaxPool", "Sigmoid"}),
        ("unet", {"base_filters": 4, "upsampling": "bilinear"}, {"Resize"}),
    ],
)
def test_encoder_and_bilinear_models_are_tensorrt_ready(keras_onnx_dir: Path, name, kwargs, expected) -> None:
    report = check_onnx_for_tensorrt(keras_to_onnx(keras_onnx_dir / f"{name}-{len(kwargs)}.onnx", name, **kwargs))
    assert report.ok, report.problems
    assert expected <= set(report.op_counts)


# --------------------------------------------------------------------------- version selection


def test_features_follow_the_version(fake_stack) -> None:
    trt, _ = fake_stack
    features = TrtFeatures.from_module(trt)
    if trt.__version__.startswith("8"):
        assert features.major == 8 and features.network_flags == 1 << 0 and features.max_opset == 17
    else:  # the 10.x fake has no EXPLICIT_BATCH attribute: touching it would raise
        assert features.major == 10 and features.network_flags == 0 and features.max_opset == 20


def test_workspace_api_by_attribute() -> None:
    calls = []
    trt = types.SimpleNamespace(MemoryPoolType=types.SimpleNamespace(WORKSPACE="WS"))
    new = types.SimpleNamespace(set_memory_pool_limit=lambda pool, n: calls.append((pool, n)))
    assert set_workspace(trt, new, 256) == "set_memory_pool_limit" and calls == [("WS", 256 << 20)]
    old = types.SimpleNamespace()  # TensorRT < 8.4: only the attribute
    assert set_workspace(trt, old, 256) == "max_workspace_size" and old.max_workspace_size == 256 << 20


def test_io_api_selection(fake_stack) -> None:
    trt, _ = fake_stack
    plan = {"version": trt.__version__, "inputs": [], "outputs": [], "profile": {}}
    engine = trt.Runtime(None).deserialize_cuda_engine(json.dumps(plan).encode())
    if trt.__version__.startswith("8"):
        assert select_io_api(trt, engine) == "binding"
        assert select_io_api(trt, engine, "tensor") == "tensor"  # 8.6 has both
    else:
        assert select_io_api(trt, engine) == "tensor"
        assert select_io_api(trt, engine, "binding") == "tensor"  # gone in 10: falls back
    with pytest.raises(ConfigError, match="io_api"):
        select_io_api(trt, engine, "v2")


def test_load_cuda_prefers_new_cuda_python_then_old_then_pycuda(monkeypatch) -> None:
    new, old = types.ModuleType("cuda.bindings.runtime"), types.ModuleType("cuda.cudart")
    cuda_pkg, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
    bindings.runtime, cuda_pkg.bindings, cuda_pkg.cudart = new, bindings, old
    for name, mod in (("cuda", cuda_pkg), ("cuda.bindings", bindings), ("cuda.bindings.runtime", new)):
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setitem(sys.modules, "cuda.cudart", old)
    chosen = load_cuda()
    assert chosen.kind == "cuda-python" and chosen._m is new
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)  # cuda-python < 12.6
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", None)
    del cuda_pkg.bindings
    assert load_cuda()._m is old
    monkeypatch.setitem(sys.modules, "cuda", None)
    monkeypatch.setitem(sys.modules, "cuda.cudart", None)
    driver, pycuda = types.ModuleType("pycuda.driver"), types.ModuleType("pycuda")
    pycuda.driver = driver
    for name, mod in (("pycuda", pycuda), ("pycuda.driver", driver), ("pycuda.autoinit", types.ModuleType("x"))):
        monkeypatch.setitem(sys.modules, name, mod)
    assert load_cuda().kind == "pycuda"
    monkeypatch.setitem(sys.modules, "pycuda", None)
    monkeypatch.setitem(sys.modules, "pycuda.autoinit", None)
    with pytest.raises(MissingDependencyError, match="cuda-python"):
        load_cuda()


# --------------------------------------------------------------------------- build_engine with fakes


def test_build_fp16_engine_and_timing_cache(fake_stack, spaced_dir: Path) -> None:
    trt, _ = fake_stack
    onnx_path = tiny_onnx(spaced_dir / "tiny model.onnx")
    result = build_engine(
        onnx_path, spaced_dir / "engines", precision="fp16", calibration=None, cache_dir=spaced_dir / "cache"
    )
    assert result.path == spaced_dir / "engines" / f"tiny-model_fp16.trt{trt.__version__}.Orin.engine"
    plan = json.loads(result.path.read_bytes())
    assert plan["flags"] == ["FP16"] and plan["inputs"][0]["shape"] == [1, S, S, 1]
    expected_flags = 1 if trt.__version__.startswith("8") else 0
    assert ("create_network", expected_flags) in trt.calls
    assert ("set_memory_pool_limit", "WORKSPACE", 1024 << 20) in trt.calls
    assert result.trt_version == trt.__version__ and result.gpu_name == "Orin" and result.build_seconds >= 0
    timing = Path(result.details["timing_cache"]["path"])
    assert timing.name == f"timing.trt{trt.__version__}.Orin.cache" and timing.read_bytes().startswith(b"TIMING|")
    assert result.details["timing_cache"]["loaded_bytes"] == 0
    assert shlex.split(result.details["trtexec"])[1:4] == [
        f"--onnx={onnx_path}",
        f"--saveEngine={result.path}",
        "--fp16",
    ]
    again = build_engine(
        onnx_path, spaced_dir / "engines", precision="fp16", calibration=None, cache_dir=spaced_dir / "cache"
    )
    assert again.details["timing_cache"]["loaded_bytes"] > 0 and "timing_cache_rejected" not in again.details
    timing.write_bytes(b"TIMING|7.2.3|0")  # from another TensorRT: rejected, rebuilt, overwritten
    third = build_engine(
        onnx_path, spaced_dir / "engines", precision="fp16", calibration=None, cache_dir=spaced_dir / "cache"
    )
    assert third.details["timing_cache_rejected"] and timing.read_bytes().startswith(
        f"TIMING|{trt.__version__}".encode()
    )


def test_build_int8_calibrates_once_then_reuses_the_cache(fake_stack, spaced_dir: Path) -> None:
    trt, _ = fake_stack
    onnx_path = tiny_onnx(spaced_dir / "m.onnx")
    images = np.random.default_rng(3).random((3, S, S, 1), dtype=np.float32)
    source = CalibrationSource(images, batch_size=2)  # static batch 1: re-cut to 1

    def build(calibrator: str = "minmax", src: Any = source):
        trt.calls.clear()
        return build_engine(
            onnx_path, spaced_dir, precision="int8", calibration=src, calibrator=calibrator, cache_dir=spaced_dir
        )

    first = build()
    assert ("calibrator.__init__", "IInt8MinMaxCalibrator") in trt.calls  # MinMax by default
    assert ("batch_size", 1) in trt.calls
    (seen,) = [c[1] for c in trt.calls if c[0] == "calibrated"]
    np.testing.assert_array_equal(np.concatenate(seen), images)  # exactly the images, via device memory
    cal = first.details["calibration"]
    assert cal["reused"] is False and cal["batches_fed"] == 3 and cal["batch_size"] == 1
    assert json.loads(first.path.read_bytes())["flags"] == ["FP16", "INT8"]
    assert "--int8" in first.details["trtexec"] and Path(cal["cache"]).is_file()
    second = build()
    assert second.details["calibration"]["reused"] is True and second.details["calibration"]["batches_fed"] == 0
    assert not [c for c in trt.calls if c[0] == "calibrated"]
    entropy = build("entropy2")  # another calibrator: its own cache, calibrated afresh
    assert ("calibrator.__init__", "IInt8EntropyCalibrator2") in trt.calls
    assert entropy.details["calibration"]["reused"] is False and entropy.details["calibrator"] == "entropy2"
    plain = build(src=images)  # a bare array is wrapped in a CalibrationSource: same batches, same cache
    assert plain.details["calibration"]["reused"] is True
    assert json.loads(json.dumps(plain.to_dict()))["trt_version"] == trt.__version__
    other = build(src=CalibrationSource(images[:2]))  # other images: recalibrate
    assert other.details["calibration"]["reused"] is False
    assert other.details["calibration"]["cache"] != cal["cache"]


def test_build_dynamic_batch_uses_profile_and_calibration_profile(fake_stack, spaced_dir: Path) -> None:
    trt, _ = fake_stack
    onnx_path = tiny_onnx(spaced_dir / "dyn.onnx", batch="N")
    images = np.random.default_rng(4).random((5, S, S, 1), dtype=np.float32)
    with pytest.raises(EngineBuildError, match="symbolic dims"):
        build_engine(onnx_path, spaced_dir, precision="fp16", calibration=None, cache_dir=spaced_dir)
    profile = {"image": ((1, S, S, 1), (2, S, S, 1), (4, S, S, 1))}
    result = build_engine(
        onnx_path,
        spaced_dir,
        precision="int8",
        calibration=CalibrationSource(images),
        cache_dir=spaced_dir,
        profile=profile,
    )
    (seen,) = [c[1] for c in trt.calls if c[0] == "calibrated"]
    assert [s.shape[0] for s in seen] == [2, 2, 2]  # cut at the profile's opt batch, last one padded
    assert result.details["profile"] == {"image": [[1, S, S, 1], [2, S, S, 1], [4, S, S, 1]]}
    assert "--shapes=image:2x16x16x1" in result.details["trtexec"]


def test_build_errors_are_one_line(fake_stack, spaced_dir: Path) -> None:
    trt, _ = fake_stack
    onnx_path = tiny_onnx(spaced_dir / "m.onnx")
    with pytest.raises(ConfigError, match="calibration images"):
        build_engine(onnx_path, spaced_dir, precision="int8", calibration=None, cache_dir=spaced_dir)
    with pytest.raises(ConfigError, match="calibrator"):
        build_engine(
            onnx_path, spaced_dir, precision="fp16", calibration=None, calibrator="legacy", cache_dir=spaced_dir
        )
    with pytest.raises(ConfigError, match="model input"):
        wrong = CalibrationSource(np.zeros((2, S * 2, S * 2, 1), np.float32))
        build_engine(onnx_path, spaced_dir, precision="int8", calibration=wrong, cache_dir=spaced_dir)
    custom = tiny_onnx(spaced_dir / "c.onnx", op="MassFinder", domain="com.example")
    with pytest.raises(EngineBuildError, match=r"com\.example::MassFinder"):
        build_engine(custom, spaced_dir, precision="fp16", calibration=None, cache_dir=spaced_dir)
    trt.fail_parse = True
    with pytest.raises(EngineBuildError, match=r"could not parse m\.onnx: In node 0") as parse_err:
        build_engine(onnx_path, spaced_dir, precision="fp16", calibration=None, cache_dir=spaced_dir)
    trt.fail_parse, trt.fail_build = False, True
    with pytest.raises(EngineBuildError, match="could not find any implementation") as build_err:
        build_engine(onnx_path, spaced_dir, precision="fp16", calibration=None, cache_dir=spaced_dir)
    for err in (parse_err, build_err):
        assert "\n" not in str(err.value) and err.value.exit_code == 3
    assert not list(spaced_dir.glob("*.engine"))  # nothing half-written


def test_build_without_tensorrt_names_the_missing_dependency(spaced_dir: Path) -> None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("TensorRT is installed here")
    with pytest.raises(MissingDependencyError, match="tensorrt"):
        build_engine(
            tiny_onnx(spaced_dir / "m.onnx"), spaced_dir, precision="fp16", calibration=None, cache_dir=spaced_dir
        )


# --------------------------------------------------------------------------- the backend with fakes


def fake_engine(trt, spaced_dir: Path, *, batch: int | str = 1, profile=None) -> Path:
    """Build a (fake) FP16 engine of :func:`tiny_onnx` with ``build_engine``; returns its path."""
    spaced_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = tiny_onnx(spaced_dir / f"m{batch}.onnx", batch=batch)
    return build_engine(
        onnx_path, spaced_dir, precision="fp16", calibration=None, cache_dir=spaced_dir, profile=profile
    ).path


@pytest.mark.parametrize("binding", ["cuda-python", "pycuda"])
def test_backend_runs_static_engine_and_frees_everything(
    fake_stack, spaced_dir: Path, binding: str, monkeypatch
) -> None:
    trt, cudart = fake_stack
    install(monkeypatch, trt, cudart, kind=binding)
    path = fake_engine(trt, spaced_dir)
    x = np.random.default_rng(5).random((3, S, S, 1), dtype=np.float32)
    with TensorRTBackend(path) as backend:
        assert backend.input_shape == (1, S, S, 1)
        expected_api = "binding" if trt.__version__.startswith("8") else "tensor"
        assert backend.details["io_api"] == expected_api and backend.details["cuda_binding"] == binding
        assert backend.details["gpu"] == "Orin" and backend.details["tensorrt_version"] == trt.__version__
        y = backend.predict(x)
        np.testing.assert_allclose(y, 1.0 - x, atol=1e-6)
        assert y.dtype == np.float32 and y.shape == x.shape
        launches = [c for c in trt.calls if c[0].startswith("execute_async")]
        assert len(launches) == 3 and {c[0] for c in launches} == {
            f"execute_async_v{2 if expected_api == 'binding' else 3}"
        }
    assert cudart.device == {} and cudart.streams == set()  # every device buffer and stream freed
    if binding == "cuda-python":
        assert cudart.host == {}  # pinned host buffers too
    backend.close()  # twice is fine
    with pytest.raises(InputError, match="closed"):
        backend.predict(x)


def test_backend_tensor_api_on_86_and_dynamic_batch(fake_stack, spaced_dir: Path) -> None:
    trt, cudart = fake_stack
    profile = {"image": ((1, S, S, 1), (2, S, S, 1), (4, S, S, 1))}
    path = fake_engine(trt, spaced_dir, batch="N", profile=profile)
    x = np.random.default_rng(6).random((6, S, S, 1), dtype=np.float32)
    with TensorRTBackend(path, io_api="tensor") as backend:
        assert backend.input_shape == (None, S, S, 1) and backend.details["max_batch"] == 4
        trt.calls.clear()
        np.testing.assert_allclose(backend.predict(x), 1.0 - x, atol=1e-6)
        assert [c[2][0] for c in trt.calls if c[0] == "set_input_shape"] == [4, 2]
    if trt.__version__.startswith("8"):
        with TensorRTBackend(path, io_api="binding") as backend:
            trt.calls.clear()
            np.testing.assert_allclose(backend.predict(x[:3]), 1.0 - x[:3], atol=1e-6)
            assert [c[2][0] for c in trt.calls if c[0] == "set_binding_shape"] == [3]
    assert cudart.device == {}


def test_backend_refuses_engine_from_other_version_or_gpu(fake_stack, spaced_dir: Path, monkeypatch) -> None:
    trt, cudart = fake_stack
    path = fake_engine(trt, spaced_dir)
    # The same file opened under another TensorRT: the name says what it needs.
    other = "10.3.0.30" if trt.__version__.startswith("8") else "8.6.1.6"
    install(monkeypatch, make_fake_trt(other, cudart), cudart)
    with pytest.raises(EngineError) as err:
        TensorRTBackend(path)
    message = str(err.value)
    assert "\n" not in message and err.value.exit_code == 3
    assert f"TensorRT {trt.__version__} (here {other})" in message and "rebuild it on this machine" in message
    assert "GPU" not in message.split("according")[0]
    # Same TensorRT, another GPU named in the file.
    install(monkeypatch, trt, cudart)
    renamed = path.with_name(path.name.replace(".Orin.", ".NVIDIA-GeForce-RTX-4090."))
    renamed.write_bytes(json.dumps({"version": "0.0"}).encode())  # unreadable here, as a foreign engine is
    with pytest.raises(EngineError, match=r"GPU NVIDIA-GeForce-RTX-4090 \(here Orin\)"):
        TensorRTBackend(renamed)
    junk = spaced_dir / "custom name.engine"
    junk.write_bytes(b"not an engine")
    with pytest.raises(EngineError, match=f"this machine has TensorRT {trt.__version__} on Orin"):
        TensorRTBackend(junk)
    assert cudart.device == {} and cudart.streams == set()


def test_backend_refuses_integer_io_and_converts_half_io(spaced_dir: Path, monkeypatch) -> None:
    cudart = FakeCudart("Orin")
    trt = make_fake_trt("10.3.0.30", cudart, plan_io_dtype="int8")
    install(monkeypatch, trt, cudart)
    with pytest.raises(InputError, match="is int8; bcedge engines keep float I/O"):
        TensorRTBackend(fake_engine(trt, spaced_dir))
    assert cudart.device == {} and cudart.host == {}
    half = make_fake_trt("10.3.0.30", cudart, plan_io_dtype="float16")
    install(monkeypatch, half, cudart)
    x = np.random.default_rng(7).random((2, S, S, 1), dtype=np.float32)
    with TensorRTBackend(fake_engine(half, spaced_dir / "half io")) as backend:
        assert backend.details["input_dtype"] == "float16"
        np.testing.assert_allclose(backend.predict(x), 1.0 - x, atol=1e-3)


def test_backend_is_in_the_registry() -> None:
    from bcedge.backends import BACKENDS

    assert BACKENDS["tensorrt"].load() is TensorRTBackend


# --------------------------------------------------------------------------- real TensorRT (GPU machines only)


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_real_engine_matches_onnxruntime(tmp_path: Path, precision: str) -> None:
    pytest.importorskip("tensorrt")
    ort = pytest.importorskip("onnxruntime")
    onnx_path = keras_to_onnx(tmp_path / "unet.onnx", "unet", base_filters=4)
    images = np.concatenate(phantom_tensors(tmp_path, 4, size=64))
    calibration = CalibrationSource(images) if precision == "int8" else None
    result = build_engine(
        onnx_path, tmp_path / "engines", precision=precision, calibration=calibration, cache_dir=tmp_path
    )
    tag = parse_engine_filename(result.path)
    assert tag.precision == precision and tag.trt_version == sanitize_version(result.trt_version)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    reference = np.concatenate([session.run(None, {"image": images[i : i + 1]})[0] for i in range(len(images))])
    with TensorRTBackend(result.path) as backend:
        got = backend.predict(images)
    tolerance = 0.02 if precision == "fp16" else 0.1
    assert np.abs(got - reference).max() < tolerance
