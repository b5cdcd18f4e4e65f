"""Runtime backends and the one table of them (shared by the CLI, export and benchmarks).

=========  ================================  ===================  =====================================
name       runs                              extra                notes
=========  ================================  ===================  =====================================
keras      ``.keras`` (the reference)        ``bcedge[train]``    desktop only; Keras 3 on its backend
tflite     ``.tflite`` fp32/fp16/dyn/int8    ``bcedge[tflite]``   LiteRT, else tflite-runtime, else TF;
                                                                  XNNPACK is the default CPU delegate
openvino   ``.tflite`` fp16/fp32             ``bcedge[openvino]`` OpenVINO's CPU plugin; BF16 on AMX /
                                                                  AVX-512 BF16 CPUs (alternate runtime)
onnx       ``.onnx``                         ``bcedge[onnx]``     onnxruntime: TensorRT, CUDA, CPU EPs
tensorrt   ``.engine`` / ``.plan``           ``bcedge[tensorrt]`` NVIDIA GPU (Jetson, desktop)
=========  ================================  ===================  =====================================

Availability is decided without importing the library (``importlib.util.find_spec``),
so listing backends is cheap; :func:`open_backend` imports the backend module, which
imports its library when the model is opened.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass
from typing import Any

from bcedge.backends.base import Backend
from bcedge.errors import ConfigError, MissingDependencyError
from bcedge.formats import ONNX_GPU, backend_formats


@dataclass(frozen=True)
class BackendSpec:
    """One row of :data:`BACKENDS`.

    Attributes:
        name: registry name (``--backend`` value, ``ArtifactRecord.backend``).
        target: ``"module:Class"`` of the :class:`~bcedge.backends.base.Backend` subclass.
        formats: artifact formats it runs (``ArtifactRecord.format``; :func:`bcedge.formats.backend_formats`).
        description: one line for listings.
        requirement: the pip extra that provides it (``pip install 'bcedge[<requirement>]'``).
        modules: importable top-level modules; the backend is available when any one is installed.
        hardware: where it runs, for listings.
    """

    name: str
    target: str
    formats: tuple[str, ...]
    description: str
    requirement: str
    modules: tuple[str, ...]
    hardware: str = "CPU"

    def available(self) -> tuple[bool, str]:
        """(True, what was found) or (False, why not and how to install) without importing anything."""
        for module in self.modules:
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):
                found = False
            if found:
                return True, f"{module} is installed"
        return False, f"none of {', '.join(self.modules)} is installed: pip install 'bcedge[{self.requirement}]'"

    def load(self) -> type[Backend]:
        """Import and return the backend class (its library is imported only when a model is opened)."""
        module, _, cls = self.target.partition(":")
        return getattr(importlib.import_module(module), cls)


#: Every backend bcedge knows, in listing order: ``--backend`` choices and how to open each.
#: Which formats each runs comes from the artifact-kind table (:data:`bcedge.formats.KINDS`).
BACKENDS: dict[str, BackendSpec] = {
    spec.name: spec
    for spec in (
        BackendSpec(
            name="keras",
            target="bcedge.backends.keras:KerasBackend",
            formats=backend_formats("keras"),
            description="Keras 3 reference model (desktop only)",
            requirement="train",
            modules=("keras",),
            hardware="CPU/GPU (Keras backend)",
        ),
        BackendSpec(
            name="tflite",
            target="bcedge.backends.tflite:TFLiteBackend",
            formats=backend_formats("tflite"),
            description="LiteRT / TFLite interpreter, XNNPACK on CPU (fp32, fp16, dynamic, int8)",
            requirement="tflite",
            # tensorflow last: its bundled interpreter is a desktop fallback only.
            modules=("ai_edge_litert", "tflite_runtime", "tensorflow"),
            hardware="CPU (XNNPACK)",
        ),
        BackendSpec(
            name="openvino",
            target="bcedge.backends.openvino:OpenVINOBackend",
            formats=backend_formats("openvino"),
            description="OpenVINO CPU plugin on the float .tflite artifacts (BF16 where the CPU has it)",
            requirement="openvino",
            modules=("openvino",),
            hardware="CPU (x86-64; ARM not measured)",
        ),
        BackendSpec(
            name="onnx",
            target="bcedge.backends.onnx:OnnxBackend",
            formats=backend_formats("onnx"),
            description="onnxruntime (TensorRT / CUDA / CPU execution providers)",
            requirement="onnx",
            modules=("onnxruntime",),
            hardware="CPU/GPU (execution providers)",
        ),
        BackendSpec(
            name="tensorrt",
            target="bcedge.backends.tensorrt:TensorRTBackend",
            formats=backend_formats("tensorrt"),
            description="TensorRT engine (fp32, fp16, int8) on an NVIDIA GPU",
            requirement="tensorrt",
            modules=("tensorrt",),
            hardware="NVIDIA GPU",
        ),
    )
}


def get_spec(name: str) -> BackendSpec:
    """The :data:`BACKENDS` row for ``name``; ConfigError listing the names when unknown."""
    try:
        return BACKENDS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown backend {name!r}; expected one of {', '.join(BACKENDS)}") from None


def open_backend(name: str, path: str | os.PathLike[str], **options: Any) -> Backend:
    """Open the model at ``path`` on backend ``name``.

    Args:
        name: a key of :data:`BACKENDS`.
        path: model file.
        **options: ``threads`` and the backend's own options (see each backend class).

    Raises:
        ConfigError: unknown backend name or option.
        MissingDependencyError: the backend's library is not installed (names the extra).
        InputError: the model file is missing or unusable.
    """
    spec = get_spec(name)
    ok, _ = spec.available()
    if not ok:
        raise MissingDependencyError(f"the {name} backend", spec.requirement, package=spec.modules[0])
    return spec.load()(path, **options)


def available_backends() -> dict[str, tuple[bool, str]]:
    """``{name: (available, reason)}`` for every row of :data:`BACKENDS`, without importing libraries."""
    return {name: spec.available() for name, spec in BACKENDS.items()}


def auto_backend_names(probe_gpu: bool = True) -> set[str]:
    """The backend names usable here, for :func:`bcedge.formats.choose_artifact` (its ``available``):
    the installed backends, plus :data:`bcedge.formats.ONNX_GPU` when onnxruntime offers a CUDA or
    TensorRT provider.

    Args:
        probe_gpu: import onnxruntime to ask for its providers (skip on a CPU-only device to save time).
    """
    names = {name for name, (ok, _) in available_backends().items() if ok}
    if probe_gpu and "onnx" in names:
        from bcedge.backends.onnx import gpu_providers

        if gpu_providers():
            names.add(ONNX_GPU)
    return names


__all__ = [
    "BACKENDS",
    "Backend",
    "BackendSpec",
    "auto_backend_names",
    "available_backends",
    "get_spec",
    "open_backend",
]
