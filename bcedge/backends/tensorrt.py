"""TensorRT backend: a serialised engine (``.engine``) on an NVIDIA GPU (Jetson or desktop).

Thin on purpose: everything TensorRT- or CUDA-specific sits behind a few small
functions, so the version differences are in one place and the rest is tested
without a GPU (``tests/test_tensorrt.py`` drives this module with fake ``tensorrt``
and CUDA modules).

* **Engines are not portable.** An engine runs only on the TensorRT version and GPU
  model that built it. :func:`engine_filename` writes both into the file name
  (``model_int8.trt10.3.0.30.NVIDIA-Orin.engine``); when deserialisation fails,
  :class:`TensorRTBackend` says what the name records and what this machine has.
* **Two I/O APIs.** TensorRT 8.x has the binding API (``engine.get_binding_shape``,
  ``context.execute_async_v2``); TensorRT 10 removed it for the name-based tensor API
  (``engine.num_io_tensors``, ``get_tensor_name``, ``get_tensor_mode``,
  ``context.set_tensor_address``, ``execute_async_v3``), which arrived in 8.5
  (NVIDIA's "TensorRT 8.x to 10.x migration guide", Python section). :func:`select_io_api`
  picks the binding API on 8.x (present on every 8.x release, including JetPack 5.0's
  8.4) and the tensor API on 10.x; :func:`describe_io` and :func:`execute` are the only
  functions that differ.
* **CUDA** through cuda-python (``from cuda.bindings import runtime`` in cuda-python
  >= 12.6 and 13, ``from cuda import cudart`` before) or pycuda, behind
  :class:`CudaRuntime`: pinned host buffers, device buffers and one stream, allocated
  once per engine at its largest batch and freed by :meth:`TensorRTBackend.close`.
* **Float I/O.** Engines built by :mod:`export.tensorrt` keep float32 input and output
  (INT8 only inside the network), so no (de)quantisation is needed here; an engine
  with float16 I/O is fed and read through a cast; integer I/O is refused.

Importing this module imports neither ``tensorrt`` nor any CUDA binding.

Why one module: the version and CUDA-binding differences stay behind the few functions listed
above, in the one file the fake-TensorRT tests drive.
"""

from __future__ import annotations

import ctypes
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bcedge.backends.base import Backend
from bcedge.errors import BcedgeError, ConfigError, InputError, MissingDependencyError

ENGINE_SUFFIX = ".engine"
ENGINE_PRECISIONS = ("fp32", "fp16", "int8")
IO_APIS = ("tensor", "binding")

_FILENAME = re.compile(
    r"^(?P<stem>.+)_(?P<precision>fp32|fp16|int8)"
    r"\.trt(?P<version>[0-9][0-9A-Za-z-]*(?:\.[0-9A-Za-z-]+)*)"
    r"\.(?P<gpu>[A-Za-z0-9-]+)\.engine$"
)


class EngineError(BcedgeError):
    """A TensorRT engine cannot be built or run here (other TensorRT version or GPU, damaged file, no GPU)."""

    exit_code = 3


# --------------------------------------------------------------------------- engine names


def sanitize_gpu_name(name: str) -> str:
    """A GPU name as a file-name token: runs of anything but ASCII letters and digits become one ``-``.

    ``"NVIDIA GeForce RTX 4090"`` -> ``"NVIDIA-GeForce-RTX-4090"``, ``"Orin (nvgpu)"`` -> ``"Orin-nvgpu"``.
    Dots go too, so the name is always the last dot-separated field of an engine file name.
    """
    token = re.sub(r"[^A-Za-z0-9]+", "-", str(name)).strip("-")
    return token or "unknown-gpu"


def sanitize_version(version: str) -> str:
    """A TensorRT version as a file-name token: ``"10.3.0.30"`` stays, anything odd becomes ``-``."""
    token = re.sub(r"[^0-9A-Za-z.]+", "-", str(version)).strip("-.")
    token = re.sub(r"\.{2,}", ".", token)
    if not token or not token[0].isdigit():
        raise ConfigError(f"TensorRT version {version!r} does not start with a digit")
    return token


@dataclass(frozen=True)
class EngineTag:
    """What an engine file name records (see :func:`engine_filename`)."""

    stem: str
    precision: str
    trt_version: str
    gpu: str


def engine_filename(stem: str, precision: str, trt_version: str, gpu_name: str) -> str:
    """``{stem}_{precision}.trt{version}.{gpu}.engine``, e.g. ``model_int8.trt10.3.0.30.NVIDIA-Orin.engine``.

    Args:
        stem: model name (the ONNX file's stem); characters outside ``[A-Za-z0-9_-]`` become ``-``.
        precision: ``fp32``, ``fp16`` or ``int8``.
        trt_version: ``tensorrt.__version__`` of the builder.
        gpu_name: the CUDA device name of the builder (sanitised by :func:`sanitize_gpu_name`).
    """
    if precision not in ENGINE_PRECISIONS:
        raise ConfigError(f"engine precision {precision!r}; expected one of {', '.join(ENGINE_PRECISIONS)}")
    clean_stem = re.sub(r"[^A-Za-z0-9_-]+", "-", stem).strip("-") or "model"
    return f"{clean_stem}_{precision}.trt{sanitize_version(trt_version)}.{sanitize_gpu_name(gpu_name)}{ENGINE_SUFFIX}"


def parse_engine_filename(name: str | Path) -> EngineTag | None:
    """The :class:`EngineTag` in a name written by :func:`engine_filename`, or None for any other name."""
    match = _FILENAME.match(Path(name).name)
    if match is None:
        return None
    return EngineTag(match["stem"], match["precision"], match["version"], match["gpu"])


# --------------------------------------------------------------------------- CUDA


class CudaError(EngineError):
    """A CUDA call failed."""


class CudaRuntime:
    """The few CUDA calls TensorRT inference and calibration need, over cuda-python or pycuda.

    Args:
        kind: ``cuda-python`` or ``pycuda``.
        module: ``cuda.bindings.runtime`` / ``cuda.cudart`` for cuda-python, ``pycuda.driver`` for pycuda.

    Device pointers are plain ints (what TensorRT takes); host buffers are NumPy arrays
    in page-locked memory (needed for truly asynchronous copies).
    """

    def __init__(self, kind: str, module: Any) -> None:
        if kind not in ("cuda-python", "pycuda"):
            raise ConfigError(f"unknown CUDA binding {kind!r}; expected cuda-python or pycuda")
        self.kind = kind
        self._m = module
        self._pycuda_allocs: dict[int, Any] = {}

    # cuda-python returns (error, *results) from every call (NVIDIA samples/python/common_runtime.py).
    def _call(self, result: Any) -> Any:
        if not isinstance(result, tuple):
            return result
        err, rest = result[0], result[1:]
        if err != self._m.cudaError_t.cudaSuccess:
            raise CudaError(f"CUDA call failed: {err}")
        return rest[0] if len(rest) == 1 else (rest or None)

    def device_name(self) -> str:
        """Name of the current CUDA device (e.g. ``Orin``, ``NVIDIA GeForce RTX 4090``)."""
        if self.kind == "pycuda":
            return str(self._m.Context.get_device().name())
        device = self._call(self._m.cudaGetDevice())
        name = self._call(self._m.cudaGetDeviceProperties(device)).name
        if isinstance(name, bytes):
            name = name.split(b"\0", 1)[0].decode("utf-8", "replace")
        return str(name).strip()

    def malloc(self, nbytes: int) -> int:
        """Device buffer of ``nbytes``; returns its address."""
        if self.kind == "pycuda":
            alloc = self._m.mem_alloc(max(int(nbytes), 1))
            self._pycuda_allocs[int(alloc)] = alloc
            return int(alloc)
        return int(self._call(self._m.cudaMalloc(int(nbytes))))

    def free(self, ptr: int) -> None:
        """Free a device buffer from :meth:`malloc`."""
        if self.kind == "pycuda":
            alloc = self._pycuda_allocs.pop(int(ptr), None)
            if alloc is not None:
                alloc.free()
            return
        self._call(self._m.cudaFree(int(ptr)))

    def host_empty(self, shape: Sequence[int], dtype: np.dtype | type) -> np.ndarray:
        """Page-locked host array of ``shape`` and ``dtype``."""
        dtype = np.dtype(dtype)
        if self.kind == "pycuda":
            return self._m.pagelocked_empty(tuple(shape), dtype)
        count = int(np.prod(shape))
        ptr = int(self._call(self._m.cudaMallocHost(max(count * dtype.itemsize, 1))))
        raw = (ctypes.c_byte * (count * dtype.itemsize)).from_address(ptr)
        return np.frombuffer(raw, dtype=dtype, count=count).reshape(tuple(shape))

    def host_free(self, array: np.ndarray) -> None:
        """Free a host array from :meth:`host_empty`."""
        if self.kind == "pycuda":
            free = getattr(array.base, "free", None)
            if callable(free):
                free()
            return
        self._call(self._m.cudaFreeHost(int(array.ctypes.data)))

    def stream_create(self) -> Any:
        """A new CUDA stream."""
        if self.kind == "pycuda":
            return self._m.Stream()
        return self._call(self._m.cudaStreamCreate())

    def stream_handle(self, stream: Any) -> int:
        """The stream as the integer handle TensorRT's ``execute_async_*`` takes."""
        return int(stream.handle) if self.kind == "pycuda" else int(stream)

    def stream_sync(self, stream: Any) -> None:
        """Wait for everything queued on ``stream``."""
        if self.kind == "pycuda":
            stream.synchronize()
        else:
            self._call(self._m.cudaStreamSynchronize(stream))

    def stream_destroy(self, stream: Any) -> None:
        """Destroy a stream from :meth:`stream_create`."""
        if self.kind == "cuda-python":
            self._call(self._m.cudaStreamDestroy(stream))
        # pycuda streams are released by garbage collection.

    def htod(self, ptr: int, array: np.ndarray, stream: Any = None) -> None:
        """Copy a C-contiguous host array to device memory (async on ``stream`` when given)."""
        array = np.ascontiguousarray(array)
        if self.kind == "pycuda":
            if stream is None:
                self._m.memcpy_htod(int(ptr), array)
            else:
                self._m.memcpy_htod_async(int(ptr), array, stream)
            return
        kind = self._m.cudaMemcpyKind.cudaMemcpyHostToDevice
        if stream is None:
            self._call(self._m.cudaMemcpy(int(ptr), array.ctypes.data, array.nbytes, kind))
        else:
            self._call(self._m.cudaMemcpyAsync(int(ptr), array.ctypes.data, array.nbytes, kind, stream))

    def dtoh(self, array: np.ndarray, ptr: int, stream: Any = None) -> None:
        """Copy device memory into a C-contiguous host array (async on ``stream`` when given)."""
        if self.kind == "pycuda":
            if stream is None:
                self._m.memcpy_dtoh(array, int(ptr))
            else:
                self._m.memcpy_dtoh_async(array, int(ptr), stream)
            return
        kind = self._m.cudaMemcpyKind.cudaMemcpyDeviceToHost
        if stream is None:
            self._call(self._m.cudaMemcpy(array.ctypes.data, int(ptr), array.nbytes, kind))
        else:
            self._call(self._m.cudaMemcpyAsync(array.ctypes.data, int(ptr), array.nbytes, kind, stream))


def load_cuda() -> CudaRuntime:
    """The first CUDA binding found: cuda-python (new then old layout), else pycuda.

    Raises:
        MissingDependencyError: none is installed.
    """
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6 (the only layout in 13)

        return CudaRuntime("cuda-python", cudart)
    except ImportError:
        pass
    try:
        from cuda import cudart  # cuda-python 11.x / 12.x before 12.6

        return CudaRuntime("cuda-python", cudart)
    except ImportError:
        pass
    try:
        import pycuda.autoinit  # noqa: F401  (creates the context on device 0)
        import pycuda.driver as driver
    except ImportError:
        raise MissingDependencyError("the tensorrt backend", "tensorrt", "cuda-python (or pycuda)") from None
    return CudaRuntime("pycuda", driver)


def import_tensorrt() -> Any:
    """``import tensorrt``; MissingDependencyError naming where it comes from."""
    try:
        import tensorrt
    except ImportError:
        raise MissingDependencyError(
            "TensorRT (it ships with JetPack, or NVIDIA's pip index on a desktop)", "tensorrt", "tensorrt"
        ) from None
    return tensorrt


def _version_token(version: str) -> str:
    """:func:`sanitize_version` that never raises (for messages)."""
    try:
        return sanitize_version(version)
    except ConfigError:
        return str(version)


def trt_major(trt: Any) -> int:
    """Major version of a ``tensorrt`` module (``8`` for 8.6.1, ``10`` for 10.3.0)."""
    match = re.match(r"\s*(\d+)", str(getattr(trt, "__version__", "")))
    if match is None:
        raise EngineError(f"cannot read the TensorRT version from {getattr(trt, '__version__', None)!r}")
    return int(match.group(1))


# --------------------------------------------------------------------------- the two I/O APIs


@dataclass(frozen=True)
class IOTensor:
    """One engine input or output.

    Attributes:
        name: tensor name (``image``/``mask`` for bcedge's ONNX export).
        index: binding index (binding API) or I/O tensor index (tensor API).
        shape: engine shape; -1 marks a dynamic dimension.
        max_shape: the largest shape of optimisation profile 0 for inputs with dynamic
            dimensions, else ``shape``.
        dtype: NumPy dtype of the buffer.
        is_input: input or output.
    """

    name: str
    index: int
    shape: tuple[int, ...]
    max_shape: tuple[int, ...]
    dtype: np.dtype
    is_input: bool


def select_io_api(trt: Any, engine: Any, prefer: str | None = None) -> str:
    """``binding`` on TensorRT 8.x, ``tensor`` on 10.x (where the binding API is gone), or ``prefer``.

    An engine object lacking the chosen API's entry points gets the other one when it has it.

    Raises:
        ConfigError: ``prefer`` is not ``tensor``/``binding``.
        EngineError: the engine has neither API.
    """
    if prefer is not None and prefer not in IO_APIS:
        raise ConfigError(f"io_api is {prefer!r}; expected tensor or binding")
    has = {"tensor": hasattr(engine, "num_io_tensors"), "binding": hasattr(engine, "get_binding_shape")}
    choice = prefer or ("tensor" if trt_major(trt) >= 10 else "binding")
    if not has[choice]:
        choice = "binding" if choice == "tensor" else "tensor"
    if not has[choice]:
        raise EngineError(f"TensorRT {trt.__version__} engine has neither the tensor nor the binding I/O API")
    return choice


def _np_dtype(trt: Any, trt_dtype: Any, name: str) -> np.dtype:
    try:
        return np.dtype(trt.nptype(trt_dtype))
    except (TypeError, ValueError, KeyError):
        raise EngineError(f"engine tensor {name!r} has type {trt_dtype}, which has no NumPy equivalent") from None


def describe_io(trt: Any, engine: Any, api: str) -> list[IOTensor]:
    """Inputs and outputs of ``engine`` through the binding (8.x) or tensor (8.5+, 10.x) API."""
    tensors = []
    if api == "tensor":
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            shape = tuple(int(d) for d in engine.get_tensor_shape(name))
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            max_shape = shape
            if is_input and any(d < 0 for d in shape):
                # (min, opt, max) of optimisation profile 0.
                max_shape = tuple(int(d) for d in engine.get_tensor_profile_shape(name, 0)[2])
            tensors.append(
                IOTensor(name, i, shape, max_shape, _np_dtype(trt, engine.get_tensor_dtype(name), name), is_input)
            )
    else:
        for i in range(engine.num_bindings):
            name = engine.get_binding_name(i)
            shape = tuple(int(d) for d in engine.get_binding_shape(i))
            is_input = bool(engine.binding_is_input(i))
            max_shape = shape
            if is_input and any(d < 0 for d in shape):
                max_shape = tuple(int(d) for d in engine.get_profile_shape(0, i)[2])
            tensors.append(
                IOTensor(name, i, shape, max_shape, _np_dtype(trt, engine.get_binding_dtype(i), name), is_input)
            )
    return tensors


def execute(
    api: str,
    context: Any,
    tensors: Sequence[IOTensor],
    pointers: Sequence[int],
    input_shape: tuple[int, ...] | None,
    stream_handle: int,
) -> None:
    """Queue one inference on ``stream_handle``.

    Args:
        api: ``tensor`` or ``binding`` (:func:`select_io_api`).
        context: the execution context.
        tensors: from :func:`describe_io`; ``pointers`` holds one device address per tensor, same order.
        input_shape: the shape of this call's input when the engine's input is dynamic, else None.
        stream_handle: integer CUDA stream.

    Raises:
        EngineError: TensorRT rejected the shape or the launch.
    """
    inputs = [t for t in tensors if t.is_input]
    if api == "tensor":
        if input_shape is not None:
            for t in inputs:
                if not context.set_input_shape(t.name, tuple(input_shape)):
                    raise EngineError(f"TensorRT rejected input shape {tuple(input_shape)} for {t.name!r}")
        for t, ptr in zip(tensors, pointers, strict=True):
            context.set_tensor_address(t.name, int(ptr))
        ok = context.execute_async_v3(stream_handle)
    else:
        if input_shape is not None:
            for t in inputs:
                if not context.set_binding_shape(t.index, tuple(input_shape)):
                    raise EngineError(f"TensorRT rejected input shape {tuple(input_shape)} for {t.name!r}")
        bindings = [0] * (max(t.index for t in tensors) + 1)
        for t, ptr in zip(tensors, pointers, strict=True):
            bindings[t.index] = int(ptr)
        ok = context.execute_async_v2(bindings=bindings, stream_handle=stream_handle)
    if ok is False:
        raise EngineError("TensorRT could not launch the inference (execute_async returned False)")


# --------------------------------------------------------------------------- the backend


class TensorRTBackend(Backend):
    """Run a serialised TensorRT engine built by :func:`export.tensorrt.build_engine`.

    Options:
        io_api: ``tensor`` or ``binding`` to override :func:`select_io_api` (e.g. to try the
            tensor API on TensorRT 8.6, which has both).

    ``threads`` has no effect (the GPU runs the model). The engine's input must be
    (B, S, S, 1) NHWC: a fixed batch B (the base class splits and pads batches to it)
    or a dynamic batch with an optimisation profile (batches are split at its maximum).
    """

    name = "tensorrt"
    options = ("io_api",)

    def _open(self, io_api: str | None = None) -> tuple[int | None, int, int, int]:
        if io_api is not None and io_api not in IO_APIS:
            raise ConfigError(f"io_api is {io_api!r}; expected tensor or binding")
        self._trt = import_tensorrt()
        self._cuda = load_cuda()
        self._runtime = self._engine = self._context = self._stream = None
        self._device: list[int] = []
        self._host: list[np.ndarray] = []
        try:
            return self._load(io_api)
        except BaseException:
            # The base class only closes after a shape mismatch; free what was allocated here.
            self._close()
            raise

    def _load(self, io_api: str | None) -> tuple[int | None, int, int, int]:
        trt, cuda = self._trt, self._cuda
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        data = self.content if self.content is not None else self.path.read_bytes()
        try:
            engine = self._runtime.deserialize_cuda_engine(data)
        except Exception as exc:  # some releases raise where others log and return None
            engine, reason = None, (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        else:
            reason = "TensorRT could not deserialise it"
        if engine is None:
            raise EngineError(self._refusal(reason))
        self._engine = engine
        self._context = engine.create_execution_context()
        if self._context is None:
            raise EngineError(f"{self.path}: TensorRT could not create an execution context (out of GPU memory?)")
        self._api = select_io_api(trt, engine, io_api)
        self._tensors = describe_io(trt, engine, self._api)
        inputs = [t for t in self._tensors if t.is_input]
        outputs = [t for t in self._tensors if not t.is_input]
        if len(inputs) != 1 or len(outputs) != 1:
            raise InputError(f"{self.path} has {len(inputs)} inputs and {len(outputs)} outputs; expected 1 and 1")
        inp, out = inputs[0], outputs[0]
        for t in (inp, out):
            if t.dtype.kind != "f":
                raise InputError(
                    f"{self.path}: engine tensor {t.name!r} is {t.dtype}; bcedge engines keep float I/O "
                    "(rebuild without --inputIOFormats/--outputIOFormats)"
                )
        if len(inp.shape) != 4 or any(d < 0 for d in inp.shape[1:]):
            raise InputError(
                f"{self.path} input {inp.name!r} has shape {inp.shape}; expected (N, S, S, 1) with fixed S"
            )
        if any(d < 0 for d in out.shape[1:]):
            raise InputError(f"{self.path} output {out.name!r} has shape {out.shape}; only the batch may be dynamic")
        self._dynamic = inp.shape[0] < 0
        self._capacity = inp.max_shape[0]
        if self._capacity < 1:
            raise InputError(f"{self.path} input {inp.name!r} has no usable batch size (profile max {inp.max_shape})")
        # Buffers at the largest batch, allocated once: pinned host and device, per tensor.
        self._stream = cuda.stream_create()
        for t in self._tensors:
            shape = t.max_shape if t.is_input else (self._capacity, *t.shape[1:])
            host = cuda.host_empty(shape, t.dtype)
            self._host.append(host)
            self._device.append(cuda.malloc(host.nbytes))
        self._in_pos = self._tensors.index(inp)
        self._out_pos = self._tensors.index(out)
        self.details.update(
            tensorrt_version=str(trt.__version__),
            cuda_binding=cuda.kind,
            gpu=cuda.device_name(),
            io_api=self._api,
            input_name=inp.name,
            output_name=out.name,
            input_dtype=inp.dtype.name,
            output_dtype=out.dtype.name,
            batch="dynamic" if self._dynamic else inp.shape[0],
            max_batch=self._capacity,
        )
        return (None if self._dynamic else inp.shape[0]), inp.shape[1], inp.shape[2], inp.shape[3]

    def _refusal(self, reason: str) -> str:
        """One line: why the engine failed, what its file name says it needs, what is here."""
        here_version = str(getattr(self._trt, "__version__", "?"))
        try:
            here_gpu = self._cuda.device_name()
        except Exception:  # the message must not fail because the GPU query did
            here_gpu = "an unknown GPU"
        tag = parse_engine_filename(self.path)
        if tag is None:
            return (
                f"{self.path.name}: {reason}; this machine has TensorRT {here_version} on {here_gpu} "
                "(engines run only on the TensorRT version and GPU that built them: rebuild it here)"
            )
        mismatch = []
        if tag.trt_version != _version_token(here_version):
            mismatch.append(f"TensorRT {tag.trt_version} (here {here_version})")
        if tag.gpu != sanitize_gpu_name(here_gpu):
            mismatch.append(f"GPU {tag.gpu} (here {sanitize_gpu_name(here_gpu)})")
        if mismatch:
            return (
                f"{self.path.name} was built for {' and '.join(mismatch)} according to its file name; "
                "engines are not portable: rebuild it on this machine (bcedge export --formats tensorrt-...)"
            )
        return (
            f"{self.path.name}: {reason}, although its name matches this machine (TensorRT {here_version}, "
            f"{here_gpu}); the file may be damaged or need a plugin"
        )

    def _predict(self, batch: np.ndarray) -> np.ndarray:
        if not self._dynamic:
            return self._run_engine(batch)
        parts = [self._run_engine(batch[i : i + self._capacity]) for i in range(0, batch.shape[0], self._capacity)]
        return np.concatenate(parts)

    def _run_engine(self, batch: np.ndarray) -> np.ndarray:
        """One launch: batch (n, S, S, 1) float32, n <= capacity (n == fixed batch for static engines)."""
        cuda, n = self._cuda, batch.shape[0]
        in_pos, out_pos = self._in_pos, self._out_pos
        host_in, host_out = self._host[in_pos], self._host[out_pos]
        view_in = host_in[:n]
        np.copyto(view_in, batch, casting="same_kind")  # float32 -> the engine's float type
        cuda.htod(self._device[in_pos], view_in, self._stream)
        execute(
            self._api,
            self._context,
            self._tensors,
            self._device,
            batch.shape if self._dynamic else None,
            cuda.stream_handle(self._stream),
        )
        view_out = host_out[:n]
        cuda.dtoh(view_out, self._device[out_pos], self._stream)
        cuda.stream_sync(self._stream)
        return np.array(view_out, dtype=np.float32)

    def _close(self) -> None:
        cuda = getattr(self, "_cuda", None)
        if cuda is not None:
            for ptr in getattr(self, "_device", []):
                cuda.free(ptr)
            for host in getattr(self, "_host", []):
                cuda.host_free(host)
            if getattr(self, "_stream", None) is not None:
                cuda.stream_destroy(self._stream)
        self._device, self._host, self._stream = [], [], None
        # Context before engine before runtime: each depends on the next.
        self._context = None
        self._engine = None
        self._runtime = None
