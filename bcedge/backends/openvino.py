"""OpenVINO backend: the bundle's float ``.tflite`` artifacts on OpenVINO's CPU plugin.

An *alternate runtime* (:data:`bcedge.formats.ALTERNATE_RUNTIMES`): no artifact of its own, it
reads the same FP16/FP32 ``.tflite`` file LiteRT runs (OpenVINO's TFLite frontend) and compiles it
for this CPU. Its worth is BF16: with ``precision="auto"`` OpenVINO computes in BF16 on CPUs with
AVX-512 BF16 or AMX (its default there) and in FP32 elsewhere. On the 2-core Xeon with AMX the
mass model's 512 x 320 block took 18.6 ms against 36.5 for LiteRT's dynamic INT8 and 73.8 for its
FP16; in FP32 OpenVINO took 47.2 (``benchmarks/results/openvino_check.json``). So ``--backend
auto`` measures it like any candidate (acceptance check against the reference, then timing) and
runs it only where it is the faster one; BF16 agreed with the reference at mask Dice 0.991 on the
bundle's 4 acceptance images.

Any-width models run the breast's column block, as on LiteRT (:func:`bcedge.backends.tflite.column_block`):
the model is compiled once with an open width, and OpenVINO prepares each new width on its first
call (~70 ms, then kept). Compiled models are cached in ``$XDG_CACHE_HOME/bcedge/openvino`` (OpenVINO's
``CACHE_DIR``: a fresh process compiled in ~60 ms instead of ~180); ``cache=False`` turns it off.

OpenVINO reads a TFLite model only from a file named ``*.tflite``, not from memory, so the bytes
:meth:`bcedge.bundle.Bundle.open` verified are written to a private temporary folder (mode 0700),
read from there and deleted: the file that runs is the one that was checked.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bcedge.backends.base import Backend
from bcedge.backends.tflite import column_block
from bcedge.errors import ConfigError, InputError, MissingDependencyError, first_line

#: ``precision`` values: OpenVINO's ``INFERENCE_PRECISION_HINT`` (``auto``: the plugin's default for this CPU).
PRECISIONS = ("auto", "f32", "bf16", "f16")


def _import_openvino() -> Any:
    try:
        import openvino
    except ImportError:
        raise MissingDependencyError("the openvino backend", "openvino", "openvino") from None
    return openvino


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/bcedge/openvino``: OpenVINO's compiled-model cache."""
    from bcedge.choice import user_cache

    return user_cache("openvino")


class OpenVINOBackend(Backend):
    """Run a float ``.tflite`` model with OpenVINO on the CPU.

    Options:
        precision: ``auto`` (default: BF16 where the CPU has it, else FP32), ``f32``, ``bf16`` or ``f16``.
        columns: ``breast`` (default): an any-width model runs only the image's column block;
            ``square``: the whole square.
        cache: True (default): keep compiled models in :func:`cache_dir` (skipped when it cannot be made).

    ``threads`` sets ``INFERENCE_NUM_THREADS``; one stream, latency mode (one scan at a time).
    """

    name = "openvino"
    options = ("precision", "columns", "cache")

    def _open(
        self, precision: str = "auto", columns: str = "breast", cache: bool = True
    ) -> tuple[int | None, int, int, int]:
        if precision not in PRECISIONS:
            raise ConfigError(f"precision is {precision!r}; expected one of {', '.join(PRECISIONS)}")
        if columns not in ("breast", "square"):
            raise ConfigError(f"columns is {columns!r}; expected breast or square")
        ov = _import_openvino()
        core = ov.Core()
        cache_path = None
        if cache:
            try:
                cache_dir().mkdir(parents=True, exist_ok=True)
                cache_path = str(cache_dir())
                core.set_property({"CACHE_DIR": cache_path})
            except (OSError, RuntimeError):
                cache_path = None  # an unwritable cache costs a full compile, never an error
        try:
            content = self.content if self.content is not None else self.path.read_bytes()
        except OSError as exc:
            raise InputError(f"{self.path}: cannot read the model ({exc.strerror or exc})") from exc
        try:
            with tempfile.TemporaryDirectory(prefix="bcedge-ov-") as folder:  # mkdtemp: mode 0700
                model_file = Path(folder) / "model.tflite"
                model_file.write_bytes(content)
                model = core.read_model(str(model_file))
            if len(model.inputs) != 1 or len(model.outputs) != 1:
                raise InputError(
                    f"{self.path} has {len(model.inputs)} inputs and {len(model.outputs)} outputs; "
                    "bcedge models have one of each"
                )
            shape = model.inputs[0].get_partial_shape()
            dims = [d.get_length() if d.is_static else -1 for d in shape] if shape.rank.is_static else []
            if len(dims) != 4 or dims[1] < 1 or dims[3] != 1 or dims[2] not in (-1, dims[1]):
                raise InputError(f"{self.path} input has shape {shape}; expected (N, S, S, 1) with fixed S")
            size = dims[1]
            self._any_width = dims[2] == -1 and columns == "breast"
            # Batch 1: the scan job sends one scan per call (Backend.predict splits larger batches).
            model.reshape([1, size, -1 if self._any_width else size, 1])
            config: dict[str, Any] = {"NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}
            if self.threads is not None:
                config["INFERENCE_NUM_THREADS"] = self.threads
            if precision != "auto":
                config["INFERENCE_PRECISION_HINT"] = precision
            self._compiled = core.compile_model(model, "CPU", config)
            self._request = self._compiled.create_infer_request()
            used = self._compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        except InputError:
            raise
        except (RuntimeError, ValueError, TypeError) as exc:  # OpenVINO raises RuntimeError with its C++ message
            raise InputError(f"{self.path} is not a model OpenVINO can load: {first_line(exc)}") from exc
        self._size = size
        self.details.update(
            runtime="openvino",
            runtime_version=ov.get_version(),
            device="CPU",
            inference_precision=used,
            # The acceptance check's tolerance follows the arithmetic (bcedge.formats.COMPUTE_SPECS).
            compute_precision={"bf16": "bf16", "f16": "fp16"}.get(used),
            precision_option=precision,
            model_cache=cache_path,
            batch=1,
            input_width="any (multiple of 32, the breast's columns)" if self._any_width else size,
        )
        return 1, size, size, 1

    def _predict(self, batch: np.ndarray) -> np.ndarray:
        size = batch.shape[2]
        c0, c1 = column_block(batch) if self._any_width else (0, size)
        part = batch if (c0, c1) == (0, size) else np.ascontiguousarray(batch[:, :, c0:c1])
        self._request.infer({0: part})
        # The output tensor is the request's own memory, overwritten by the next call: copy it out.
        out = np.array(self._request.get_output_tensor(0).data, dtype=np.float32)
        if (c0, c1) == (0, size):
            return out
        full = np.zeros((batch.shape[0], batch.shape[1], size, out.shape[-1]), np.float32)
        full[:, :, c0:c1] = out
        return full

    def _close(self) -> None:
        self._request = None
        self._compiled = None
