"""Provenance: what machine, which libraries and which source a measurement ran on.

One module for every recorder: ``bcedge benchmark`` reports, the scripts under
``benchmarks/``, training's ``config.json`` (:func:`keras_machine_info`) and the export
manifest's ``exported_with`` (:func:`distribution_versions`). Standard library only at import
(NumPy and Keras are imported inside the functions that need them).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def usable_cpus() -> int:
    """CPUs this process may run on (:func:`bcedge.cpus.usable_cpus`: affinity mask, cgroup quota)."""
    from bcedge import cpus

    return cpus.usable_cpus()


def machine_info(threads: Sequence[int] = ()) -> dict[str, Any]:
    """CPU model, core counts, SIMD flags that matter for inference, GPU if any, OS and load.

    Args:
        threads: the thread counts the benchmark used (recorded as ``threads_used``).
    """
    from bcedge.cpus import SIMD_FLAGS, cpu_model_and_flags

    cpu_model, flags = cpu_model_and_flags()
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
        "cpu_flags": [f for f in SIMD_FLAGS if f in flags],
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
    out = {"python": platform.python_version(), **distribution_versions((*LIBRARIES, *extra))}
    blas = blas_name()
    if blas:
        out["numpy_blas"] = blas
    return out


def distribution_versions(names: Sequence[str]) -> dict[str, str]:
    """Installed version of each distribution in ``names`` that is installed, in that order (metadata only).

    The export manifest's ``exported_with`` is this over the converters' distributions.
    """
    out: dict[str, str] = {}
    for dist in names:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[dist] = importlib.metadata.version(dist)
    return out


def blas_name() -> str | None:
    """Name of the BLAS NumPy was built with (``scipy-openblas``...), None where NumPy cannot say."""
    import numpy as np

    try:
        config = np.show_config(mode="dicts")  # NumPy >= 1.26
        return str(config["Build Dependencies"]["blas"]["name"])
    except Exception:  # older NumPy, or a layout change: the name is informative only
        return None


def keras_machine_info() -> dict[str, Any]:
    """Keras version and backend, Python, architecture and the accelerators Keras sees (training's provenance).

    Imports Keras (the caller trains with it anyway). ``devices`` is informational: an empty list
    when Keras cannot list them.

    Returns:
        ``{"keras", "backend", "python", "machine", "devices": [str, ...]}``.
    """
    import keras

    info: dict[str, Any] = {
        "keras": keras.__version__,
        "backend": keras.backend.backend(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "devices": [],
    }
    with contextlib.suppress(Exception):  # device listing is informational only
        info["devices"] = [str(d) for d in keras.distribution.list_devices()]
    return info


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
