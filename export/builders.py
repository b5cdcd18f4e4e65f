"""The builders the artifact-kind table names (:data:`bcedge.formats.KINDS`, ``builder``).

Each is ``builder(kind, context) -> (file, details)``: it writes one artifact of ``kind``
into the bundle folder ``context.out`` (atomically) and returns its file name relative to
that folder and the details to record in the manifest. What it needs comes from the
:class:`BuildContext`, one method per name of :data:`bcedge.formats.NEEDS`; intermediates
shared by several rows (the SavedModel of every TFLite row, the ONNX file the TensorRT
engines are built from) are made once per export.

Adding a format: a row in :data:`bcedge.formats.KINDS` plus one function here (or in any
module the row's ``builder`` names) with this signature.

TensorFlow, tf2onnx and TensorRT are imported inside the builders, never at import.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bcedge.formats import ArtifactKind

#: Printed in the report; callers may pass a rich console's ``print``.
Log = Callable[[str], None]
#: What every builder returns: (file relative to the bundle folder, details for the manifest).
Built = tuple[str, dict[str, Any]]


@dataclass
class BuildContext:
    """What one export hands its builders.

    Attributes:
        model: the Keras model (input (N, size, size, 1) float32 in [0, 1], sigmoid output).
        size: input side S in pixels.
        out: the bundle folder the artifacts are written into.
        work: a temporary folder inside ``out`` for intermediates (deleted after the export).
        calibration: INT8 rows: (N, S, S, 1) float32 preprocessed calibration images, else None.
        int8_io: TFLite INT8 input/output type, ``float`` or ``int8``.
        int8_float_layers: TFLite INT8: how many layers, worst quantised first
            (:func:`export.tflite.debug_ranking`), stay in float; 0: a pure integer model.
        opset: ONNX opset.
        onnx_dynamic_batch: the ONNX artifact takes any batch size.
        tflite_any_width: the TFLite artifacts take (1, S, W, 1) for any width W (the runtime runs
            only the columns that hold the breast: :mod:`bcedge.backends.tflite`).
        cache: the export cache folder (TensorRT calibration and timing caches live in ``cache/tensorrt``).
        log: receives one line per step.
        built: ``{kind name: path}`` of every artifact written so far in this export.
        untimed_seconds: time spent on intermediates whose cost is reported apart (the SavedModel),
            to leave out of the row that happened to build them.
    """

    model: Any
    size: int
    out: Path
    work: Path
    calibration: np.ndarray | None = None
    int8_io: str = "float"
    int8_float_layers: int = 0
    opset: int = 17
    onnx_dynamic_batch: bool = False
    tflite_any_width: bool = True
    cache: Path = Path(".bcedge-cache")
    log: Log = print
    built: dict[str, Path] = field(default_factory=dict)
    untimed_seconds: float = 0.0
    _saved_model: Path | None = None

    def keras_model(self) -> Any:
        """The Keras model itself."""
        return self.model

    def saved_model(self) -> Path:
        """A static-shape SavedModel of the model (written once, in ``work``; its time is logged apart)."""
        if self._saved_model is None:
            from export.tflite import export_saved_model

            t0 = time.perf_counter()
            self._saved_model = export_saved_model(
                self.model, self.work / "saved_model", self.size, any_width=self.tflite_any_width
            )
            seconds = time.perf_counter() - t0
            self.untimed_seconds += seconds
            self.log(f"SavedModel written in {seconds:.1f} s")
        return self._saved_model

    def onnx_model(self) -> Path:
        """The ONNX model: the bundle's own ONNX artifact when this export wrote one, else a static one in ``work``."""
        for name, path in self.built.items():
            if name == "onnx":
                return path
        path = self.work / "model.onnx"
        if not path.is_file():
            from export.onnx import convert as onnx_convert

            onnx_convert(self.model, path, self.size, opset=self.opset)
        return path

    def close(self) -> None:
        """Remove the SavedModel (the caller removes ``work`` itself)."""
        if self._saved_model is not None:
            shutil.rmtree(self._saved_model, ignore_errors=True)


def build_keras(kind: ArtifactKind, context: BuildContext) -> Built:
    """The Keras reference, saved from the uncompiled model (loading it needs no training custom objects)."""
    from bcedge.imageio import atomic_write

    model = context.keras_model()
    atomic_write(context.out / kind.file, lambda p: model.save(p))
    return kind.file, {}


def build_tflite(kind: ArtifactKind, context: BuildContext) -> Built:
    """A TFLite flatbuffer of ``kind.precision`` converted from the SavedModel (INT8: calibrated)."""
    from bcedge.imageio import atomic_write_bytes
    from export import tflite

    kept: list[dict] = []
    if kind.precision == "int8" and context.int8_float_layers > 0 and context.calibration is not None:
        t0 = time.perf_counter()
        ranking = tflite.debug_ranking(context.saved_model(), context.calibration)
        kept = ranking[: context.int8_float_layers]
        context.log(
            f"quantisation debugger ({time.perf_counter() - t0:.0f} s): keeping {len(kept)} layer(s) in float, "
            + ", ".join(f"{r['op']} {r['rmse_over_scale']:.2f}" for r in kept)
        )
    content = tflite.convert(
        context.saved_model(),
        kind.precision,  # type: ignore[arg-type]
        calib_images=context.calibration,
        int8_io=context.int8_io,  # type: ignore[arg-type]
        float_layers=[r["tensor"] for r in kept],
    )
    atomic_write_bytes(context.out / kind.file, content)
    details: dict[str, Any] = {"io": tflite.io_details(content)}
    if kind.precision == "dynamic":
        # Which ops still run as hybrids (float activations, int8 weights); depthwise ones are not
        # among them (export.tflite_rewrite.float_depthwise_weights).
        details["hybrid_ops"] = tflite.hybrid_ops(content)
    if kind.precision == "int8":
        details["int8_io"] = context.int8_io
        details["float_ops"] = tflite.float_ops(content)
        # The layers kept in float and their debugger error (RMSE in quantisation steps).
        details["float_layers"] = kept
    return kind.file, details


def build_onnx(kind: ArtifactKind, context: BuildContext) -> Built:
    """The ONNX model through tf2onnx (opset and batch from the context)."""
    from export.onnx import convert as onnx_convert

    details = onnx_convert(
        context.keras_model(),
        context.out / kind.file,
        context.size,
        opset=context.opset,
        dynamic_batch=context.onnx_dynamic_batch,
    )
    return kind.file, details


def build_onnx_int8(kind: ArtifactKind, context: BuildContext) -> Built:
    """A QDQ INT8 ONNX model quantised from the ONNX model by onnxruntime (:func:`export.onnx.quantize_int8`):
    per-channel 7-bit weights (right on AVX2 CPUs without VNNI), uint8 activations calibrated on
    ``context.calibration``."""
    from bcedge.errors import ConfigError
    from export.onnx import calibration_cache_file, keeps_calibration_cache, quantize_int8

    if context.calibration is None:
        raise ConfigError(f"{kind.name} needs calibration images")
    fp32 = context.onnx_model()
    # The activation ranges persist in the export cache, keyed by model and images (as TensorRT's calibration cache).
    ranges = calibration_cache_file(Path(context.cache), fp32, context.calibration)
    details = quantize_int8(fp32, context.out / kind.file, context.calibration, calibration_cache=ranges)
    if keeps_calibration_cache():
        details["calibration_cache"] = ranges.name
    return kind.file, details


def build_tensorrt(kind: ArtifactKind, context: BuildContext) -> Built:
    """A TensorRT engine built from the ONNX model with :func:`export.tensorrt.build_engine`.

    The engine is written into ``context.out`` under TensorRT's versioned name (the stem of
    ``kind.file``, the precision, the TensorRT version and the GPU); INT8 is calibrated on
    ``context.calibration``; calibration and timing caches persist in ``context.cache/tensorrt``.
    """
    from export import tensorrt as trt_export

    result = trt_export.build_engine(
        context.onnx_model(),
        context.out,
        precision=kind.precision,  # type: ignore[arg-type]
        calibration=context.calibration if kind.calibrated else None,
        cache_dir=Path(context.cache) / "tensorrt",
        stem=Path(kind.file).stem.rsplit("_", 1)[0],
    )
    details = result.to_dict()
    # Absolute paths of this machine mean nothing once the bundle is copied to the device.
    for key in ("path", "onnx"):
        details.pop(key, None)
    return Path(result.path).resolve().relative_to(context.out.resolve()).as_posix(), details
