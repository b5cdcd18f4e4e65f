"""``bcedge export``: a training run folder -> a bundle of gated artifacts.

The artifact-kind table (:data:`bcedge.formats.KINDS`; :data:`EXPORT_FORMATS` is its
``--formats`` rows) says what each format is (file, backend, precision, builder, what the
builder needs, where it can be built); :func:`build_bundle` walks it:

1. read the run (``best.keras``, ``config.json``) and its split arrays, preprocessed
   with the run's config through the cache (:mod:`export.calibration`);
2. write the Keras reference (``model.keras``) and convert each requested format by
   calling the builder its row names (:mod:`export.builders`: TFLite through one
   SavedModel, ONNX through tf2onnx, TensorRT engines from the ONNX file);
3. measure every artifact through its runtime backend on the validation split and
   gate it against the Keras model (:mod:`export.verify`);
4. write the on-device acceptance data (``acceptance.npz``, :mod:`export.acceptance`: a few
   validation images with the Keras reference's probabilities) and ``manifest.json`` last
   (:func:`bcedge.bundle.write_manifest`).

Every file is written to a temporary name in the bundle folder and renamed, and the
manifest comes last, so an interrupted export never leaves a bundle that loads with
missing or half-written artifacts. Re-exporting into an existing bundle first removes
its manifest for the same reason.

Why one module: the export run's steps (options, run folder, one row of the format table after
another, the gate, the manifest) share the ExportOptions/ExportResult records and the write-
then-rename order above; the converters themselves are in export/builders.py and the modules it
calls.
"""

from __future__ import annotations

import importlib
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bcedge.errors import ConfigError
from bcedge.formats import EXPORT_KINDS, KINDS, PRECISIONS, ArtifactKind, build_availability
from export.builders import BuildContext, Built, Log

if TYPE_CHECKING:
    from training.run import RunInfo

#: A row of the artifact-kind table (the name export used before the table moved to bcedge.formats).
ExportFormat = ArtifactKind

#: The ``--formats`` rows of :data:`bcedge.formats.KINDS`, in build order (ONNX before the engines built from it).
EXPORT_FORMATS: dict[str, ArtifactKind] = {name: KINDS[name] for name in EXPORT_KINDS}
KERAS_FILE = KINDS["keras"].file


def format_availability() -> dict[str, tuple[bool, str]]:
    """``{format name: (buildable here, reason)}`` without importing TensorFlow or TensorRT."""
    return build_availability(EXPORT_FORMATS)


def parse_formats(text: str | None) -> tuple[list[str], dict[str, str]]:
    """Formats to build and those left out: ``(names, {name: reason})``.

    Args:
        text: comma-separated ``--formats`` value; None: every format buildable here.

    Raises:
        ConfigError: an unknown name, or a named format that cannot be built here.
    """
    available = format_availability()
    if text is None:
        chosen = [n for n, (ok, _) in available.items() if ok]
        skipped = {n: f"not available here: {why}" for n, (ok, why) in available.items() if not ok}
        return chosen, skipped
    names = [t.strip().lower() for t in text.split(",") if t.strip()]
    if not names:
        raise ConfigError("--formats names no format")
    unknown = [n for n in names if n not in EXPORT_FORMATS]
    if unknown:
        raise ConfigError(
            f"unknown export format(s) {', '.join(unknown)}; expected some of {', '.join(EXPORT_FORMATS)}"
        )
    for n in names:
        ok, why = available[n]
        if not ok:
            raise ConfigError(f"format {n} cannot be built here: {why}")
    # Table order: ONNX is written before the TensorRT engines built from it.
    return [n for n in EXPORT_FORMATS if n in names], {}


def parse_tolerances(items: list[str] | None) -> dict[str, float]:
    """Default tolerances (:data:`bcedge.formats.PRECISION_SPECS`) updated by ``PRECISION=VALUE`` items
    (``--tolerance int8=0.02``)."""
    from export.verify import DEFAULT_TOLERANCES

    out = dict(DEFAULT_TOLERANCES)
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip().lower()
        if not sep or key not in out:
            raise ConfigError(f"--tolerance {item!r}: expected PRECISION=VALUE with PRECISION one of {', '.join(out)}")
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"--tolerance {item!r}: {value!r} is not a number") from None
        if not 0.0 <= number <= 1.0:
            raise ConfigError(f"--tolerance {item!r}: expected a Dice difference in [0, 1]")
        out[key] = number
    return out


#: What every bundle says of itself: bcedge's models are research artifacts.
INTENDED_USE = "research use only; not a medical device; not for clinical use or diagnosis"


def data_terms(datasets: list[str]) -> dict[str, str]:
    """The licence / terms of each training dataset, from :data:`bcedge.datasets.registry.DATA_TERMS`."""
    from bcedge.datasets.registry import DATA_TERMS

    out: dict[str, str] = {}
    for name in datasets:
        for part in DATA_TERMS.get(name, {"?": f"dataset {name!r}: terms not recorded; check its licence"}).items():
            out[part[0]] = part[1]
    return out


@dataclass
class ExportOptions:
    """Everything ``bcedge export`` takes (CLI options map one to one)."""

    run_dir: Path
    out: Path
    formats: str | None = None
    calib: str | None = None
    n_calib: int = 200
    int8_io: str = "float"
    int8_float_layers: int = 0
    strict: bool = False
    data: tuple[str, ...] | None = None
    root: Path | None = None
    split: Path | None = None
    cache: Path = Path(".bcedge-cache")
    threshold: float = 0.5
    tolerances: dict[str, float] = field(default_factory=dict)
    threads: int | None = 1
    opset: int = 17
    onnx_dynamic_batch: bool = False
    tflite_any_width: bool = True
    overwrite: bool = False
    reader_options: dict | None = None
    arrays: Path | None = None
    include_keras: bool = True


@dataclass
class ArtifactResult:
    """One row of the export report."""

    name: str
    file: str | None
    format: str
    precision: str
    backend: str
    status: str  # passed | failed | not-measured | build-failed | skipped
    size_bytes: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    tolerance: float | None = None
    ms_per_image: float | None = None
    build_seconds: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    message: str = ""


@dataclass
class ExportResult:
    """What :func:`build_bundle` did."""

    out: Path
    rows: list[ArtifactResult]
    reference: dict[str, Any]
    manifest_written: bool
    calibration: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> list[ArtifactResult]:
        """Rows whose gate failed or whose build failed."""
        return [r for r in self.rows if r.status in ("failed", "build-failed")]


def load_keras_model(path: Path):
    """Load ``best.keras`` without its training configuration (custom objects registered)."""
    from training.models import load_trained

    return load_trained(path)


def _prepare_out(out: Path, overwrite: bool) -> None:
    from bcedge.bundle import MANIFEST_NAME

    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; expected a folder for the bundle")
    manifest = out / MANIFEST_NAME
    if manifest.exists():
        if not overwrite:
            raise ConfigError(f"{out} already holds a bundle; pass --overwrite to replace it or choose another --out")
        listed = _listed_files(out, manifest)
        # Without a manifest the folder is not a bundle while its artifacts are being replaced.
        manifest.unlink()
        for path in listed:  # the old bundle's artifacts: a format not re-exported must not linger unlisted
            path.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def _listed_files(out: Path, manifest: Path) -> list[Path]:
    """Artifact files an existing manifest lists (only those inside ``out``; a damaged manifest lists none)."""
    import json

    try:
        doc = json.loads(manifest.read_text(encoding="utf-8"))
        files = [str(a["file"]) for a in doc.get("artifacts", [])]
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return []
    root = out.resolve()
    paths = []
    for name in files:
        path = (out / name).resolve()
        if path.parent == root or root in path.parents:
            paths.append(path)
    return paths


#: Distributions whose versions the manifest records under ``exported_with`` (the converters).
EXPORTED_WITH = (
    "tensorflow",
    "tensorflow-cpu",
    "keras",
    "tf2onnx",
    "onnx",
    "onnxruntime",
    "ai-edge-litert",
    "tensorrt",
)


def _versions() -> dict[str, str]:
    """Installed versions of :data:`EXPORTED_WITH` (absent ones left out), read by the one provenance module."""
    from bcedge.bench.machine import distribution_versions

    return distribution_versions(EXPORTED_WITH)


def builder_of(kind: ArtifactKind) -> Callable[[ArtifactKind, BuildContext], Built]:
    """The function a row's ``builder`` string names (imported now: :mod:`bcedge` never imports export)."""
    module, _, function = kind.builder.partition(":")
    return getattr(importlib.import_module(module), function)


def _build_row(kind: ArtifactKind, context: BuildContext, calib_info: dict[str, Any]) -> ArtifactResult:
    """Build one artifact through its row's builder; a failure becomes a ``build-failed`` row, not an exception."""
    log = context.log
    row = ArtifactResult(kind.name, kind.file, kind.format, kind.precision, kind.backend, "not-measured")
    start, untimed = time.perf_counter(), context.untimed_seconds
    try:
        row.file, row.details = builder_of(kind)(kind, context)
    except Exception as exc:  # one failed converter must not lose the others; reported, fails --strict
        row.status = "build-failed"
        row.file = None
        row.message = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}"
        log(f"{kind.name}: build failed: {row.message}")
        return row
    context.built[kind.name] = context.out / row.file
    # Shared intermediates (the SavedModel) are logged on their own, not charged to the row that made them.
    row.build_seconds = time.perf_counter() - start - (context.untimed_seconds - untimed)
    if row.details.get("trtexec"):
        log(f"{kind.name}: trtexec equivalent: {row.details['trtexec']}")
    if context.calibration is not None and kind.calibrated:
        row.details["calibration"] = calib_info
    note = ""
    if "float_ops" in row.details:
        ops = row.details["float_ops"]
        note = f"; ops left in float: {', '.join(ops) if ops else 'none'}"
    log(f"{kind.name}: converted in {row.build_seconds:.1f} s{note}")
    return row


def check_options(opts: ExportOptions) -> tuple[list[str], dict[str, str]]:
    """Validate the options that need no data (cheap; call before any progress display).

    Returns:
        ``parse_formats(opts.formats)``: formats to build and formats left out with the reason.

    Raises:
        ConfigError: a bad option, or a run folder without ``best.keras``/``config.json``.
    """
    names, skipped, _run = _checked(opts)
    return names, skipped


def _checked(opts: ExportOptions) -> tuple[list[str], dict[str, str], RunInfo]:
    """:func:`check_options`, plus the run folder it read (so :func:`build_bundle` reads it once)."""
    from training.run import load_run

    if opts.int8_io not in ("float", "int8"):
        raise ConfigError(f"--int8-io {opts.int8_io!r}: expected float or int8")
    if not 0 <= opts.int8_float_layers <= 1000:
        raise ConfigError(f"--int8-float-layers {opts.int8_float_layers}: expected 0-1000")
    if not 0.0 < opts.threshold < 1.0:
        raise ConfigError(f"--threshold {opts.threshold}: expected a probability in (0, 1)")
    unknown = sorted(set(opts.tolerances) - set(PRECISIONS))
    if unknown:
        raise ConfigError(f"tolerances for unknown precision(s) {unknown}; expected {', '.join(PRECISIONS)}")
    names, skipped = parse_formats(opts.formats)
    run = load_run(opts.run_dir)
    import keras

    if keras.backend.backend() != "tensorflow":
        # Under JAX/PyTorch, model.export goes through jax2tf-like tracing that keeps batch-norm updates and
        # variable reads in the graph (seen: READ_VARIABLE/ASSIGN_VARIABLE/NEG left in float in an INT8
        # model, tf2onnx failing). The .keras file is backend-independent, so only this process must change.
        raise ConfigError(
            f"export needs the TensorFlow Keras backend; this process uses {keras.backend.backend()!r}: "
            "rerun with KERAS_BACKEND=tensorflow (models trained on JAX or PyTorch load fine)"
        )
    return names, skipped, run


def build_bundle(opts: ExportOptions, log: Log = print, progress=None) -> ExportResult:
    """Export a training run to a bundle (see the module doc).

    Args:
        opts: the export options.
        log: receives one line per step (conversion times, float ops left, skipped formats).
        progress: ``progress(done, total, reused)`` while preprocessing (cache).

    Returns:
        The report; ``manifest_written`` is False only when ``opts.strict`` stopped a
        failing export before the manifest (then :class:`export.verify.GateError` is raised
        by :func:`check_strict`, which the CLI calls).

    Raises:
        ConfigError: bad options, a run folder without model/config/data, a split without val images.
    """
    from bcedge.bundle import ArtifactRecord, Manifest, io_specs, write_manifest
    from export.acceptance import baselines, machine_label, make_acceptance, write_acceptance
    from export.calibration import calibration_images, split_sets
    from export.verify import DEFAULT_TOLERANCES, measure, score

    names, skipped, run = _checked(opts)
    tolerances = {**DEFAULT_TOLERANCES, **opts.tolerances}
    config = run.preprocess_config()
    size = int(config.size)

    # The run's own reader options (``bcedge train -o``) unless the export names others.
    reader_options = opts.reader_options
    if not reader_options and run.config.get("reader_options") and opts.data is None:
        from bcedge.datasets.registry import parse_options

        reader_options = parse_options(list(run.config["reader_options"]))
    sets, meta = split_sets(
        run,
        opts.cache,
        data=opts.data,
        root=opts.root,
        split=opts.split,
        options=reader_options,
        arrays=opts.arrays,
        progress=progress,
    )
    if "val" not in sets or len(sets["val"]) == 0:
        raise ConfigError(f"{meta['split']}: the split has no val images; the accuracy gate scores on val")
    val = sets["val"]
    calib_images, calib_info = None, {}
    if any(EXPORT_FORMATS[n].calibrated for n in names):
        calib_images, calib_info = calibration_images(
            run,
            opts.n_calib,
            opts.cache,
            train_images=sets["train"].images if "train" in sets else None,
            dataset=opts.calib,
            root=opts.root if opts.calib else None,
            options=opts.reader_options if opts.calib else None,
            progress=progress,
        )
        log(f"calibration: {calib_info['n']} preprocessed images from the {calib_info['source']}")

    model = load_keras_model(run.model_path)
    model_size = int(model.inputs[0].shape[1])
    if model_size != size:
        raise ConfigError(f"{run.model_path} takes {model_size}px inputs but the run's preprocessing makes {size}px")

    _prepare_out(opts.out, opts.overwrite)
    out = opts.out
    rows: list[ArtifactResult] = []
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out) as tmp:
        context = BuildContext(
            model=model,
            size=size,
            out=out,
            work=Path(tmp),
            calibration=calib_images,
            int8_io=opts.int8_io,
            int8_float_layers=opts.int8_float_layers,
            opset=opts.opset,
            onnx_dynamic_batch=opts.onnx_dynamic_batch,
            tflite_any_width=opts.tflite_any_width,
            cache=Path(opts.cache),
            log=log,
        )
        # The reference travels with the bundle (unless left out to keep a device bundle small).
        if opts.include_keras:
            kind = KINDS["keras"]
            file, _ = builder_of(kind)(kind, context)
            rows.append(ArtifactResult(kind.name, file, kind.format, kind.precision, kind.backend, "not-measured"))

        from training.evaluate import predict

        reference_probs = predict(model, val.images)
        reference = score(reference_probs, val.masks, opts.threshold)
        log(
            f"reference (Keras, in memory): Dice {reference['dice']:.4f} on {reference['n_lesion_images']} "
            f"lesion images, {reference['dice_all_images']:.4f} on all {reference['n_images']} val images"
        )
        # The on-device acceptance check's data (bcedge.acceptance): a few of the gate's images with the
        # reference's probabilities, so each machine can check an artifact before it first runs there.
        acceptance_bytes, acceptance = make_acceptance(
            val.images,
            lambda x: predict(model, x),
            opts.threshold,
            reference_probs=reference_probs,
            ids=val.ids,
            source="val split",
            split=str(meta.get("split")),
            reference="Keras model (in memory; the accuracy gate's reference)",
        )
        write_acceptance(out, acceptance_bytes)
        log(f"acceptance data: {acceptance['n_images']} val images, {len(acceptance_bytes)} bytes")

        for name in names:
            rows.append(_build_row(EXPORT_FORMATS[name], context, calib_info))
        context.close()

    for name, why in skipped.items():
        fmt = EXPORT_FORMATS[name]
        rows.append(ArtifactResult(name, None, fmt.format, fmt.precision, fmt.backend, "skipped", message=why))

    records = []
    for row in rows:
        if row.file is None:
            continue
        path = out / row.file
        row.size_bytes = path.stat().st_size
        m = measure(
            row.backend,
            path,
            val.images,
            val.masks,
            reference=reference,
            tolerance=tolerances[row.precision],
            threshold=opts.threshold,
            threads=opts.threads,
        )
        row.status, row.metrics, row.tolerance, row.ms_per_image = m.gate, m.metrics, m.tolerance, m.ms_per_image
        row.details["runtime"] = m.details
        row.details["ms_per_image"] = round(m.ms_per_image or 0.0, 3)
        if row.build_seconds is not None:
            row.details["build_seconds"] = round(row.build_seconds, 2)
        records.append(
            ArtifactRecord.from_file(
                out,
                row.file,
                format=row.format,
                precision=row.precision,
                backend=row.backend,
                metrics=row.metrics,
                gate=row.status,
                tolerance=row.tolerance,
                details=_jsonable(row.details),
            )
        )

    # Each artifact's agreement with the reference on the acceptance inputs, on this machine: other
    # machines are held to it (bcedge.acceptance.compare).
    acceptance["baseline"] = baselines(out, records, acceptance_bytes, opts.threshold, threads=opts.threads)
    acceptance["baseline_machine"] = machine_label()
    for record in records:
        if record.file not in acceptance["baseline"]:
            log(f"{record.file}: did not run on the acceptance inputs here; no baseline recorded")
    result = ExportResult(out, rows, reference, manifest_written=False, calibration=calib_info)
    if opts.strict and result.failed:
        return result  # no manifest: a strict export that failed leaves no loadable bundle

    from training.run import fitted_splits

    cfg = run.config
    input_spec, output_spec = io_specs(size)
    manifest = Manifest(
        model={
            "name": cfg.get("model", model.name),
            "architecture": model.name,
            "params": int(model.count_params()),
            "upsampling": cfg.get("upsampling"),
            "base_filters": cfg.get("base_filters") if cfg.get("model") == "unet" else None,
            "width": cfg.get("width", 1.0) if cfg.get("model") != "unet" else None,
            "encoder_weights": cfg.get("encoder_weights"),
        },
        input=input_spec,
        output=output_spec,
        preprocess=config.to_dict(),
        preprocess_hash=config.hash(),
        threshold=float(opts.threshold),
        provenance=_jsonable(
            {
                "run_dir": str(run.run_dir.resolve()),
                "run_id": run.run_dir.resolve().name,
                "model_file": run.model_path.name,
                "data": list(meta.get("datasets", [])),
                "root": str(opts.root if opts.root is not None else cfg.get("root")),
                "split": str(meta.get("split")),
                "split_dataset": meta.get("split_dataset"),
                "arrays": meta.get("arrays"),
                "epochs": cfg.get("epochs"),
                "epochs_done": run.state.get("epoch"),
                "best_epoch": run.state.get("best_epoch"),
                "best_val_dice": run.state.get("best_val_dice"),
                # training.promote: which checkpoint was chosen, and why, when not the run's best.
                **(
                    {"selected_checkpoint": run.state["selected_checkpoint"]}
                    if run.state.get("selected_checkpoint")
                    else {}
                ),
                "loss": cfg.get("loss"),
                "seed": cfg.get("seed"),
                # Everything the run was trained with (bcedge train's config.json, minus machine/preprocess).
                "recipe": {k: v for k, v in cfg.items() if k not in ("machine", "preprocess")},
                "intended_use": INTENDED_USE,
                "data_terms": data_terms(list(meta.get("datasets", []))),
                "training_machine": cfg.get("machine"),
                "keras_backend": (cfg.get("machine") or {}).get("backend"),
                "evaluation": {
                    "split": "val",
                    "n_images": reference["n_images"],
                    "n_lesion_images": reference["n_lesion_images"],
                    "gate_metric": reference["gate_metric"],
                    "threshold": float(opts.threshold),
                    "reference_dice": reference["dice"],
                    "reference_dice_all_images": reference["dice_all_images"],
                    "tolerances": tolerances,
                    # A train+val refit saw these images: the gate still measures each artifact's
                    # agreement with Keras, but the reference Dice is not a validation figure.
                    **({"fitted_on_these_images": True} if "val" in fitted_splits(cfg) else {}),
                },
                "reference": "Keras model (model.keras)" if opts.include_keras else "Keras model (not in the bundle)",
                "calibration": calib_info or None,
                "not_built": {r.name: r.message for r in rows if r.status in ("skipped", "build-failed")},
                "exported_with": _versions(),
            }
        ),
        artifacts=records,
        acceptance=acceptance,
    )
    write_manifest(out, manifest)
    result.manifest_written = True
    return result


def check_strict(result: ExportResult) -> None:
    """Raise :class:`export.verify.GateError` (one line) when a strict export had failures."""
    from export.verify import GateError

    if not result.failed:
        return
    parts = []
    for r in result.failed:
        if r.status == "build-failed":
            parts.append(f"{r.name} did not build ({r.message})")
        else:
            parts.append(
                f"{r.name} Dice {r.metrics['dice']:.4f} is {-r.metrics['delta_dice']:.4f} below the Keras "
                f"{r.metrics['reference_dice']:.4f} (tolerance {r.tolerance:g})"
            )
    raise GateError(
        f"--strict: {'; '.join(parts)}; no manifest written in {result.out} (without --strict the artifact is kept "
        "and marked failed)"
    )


def _jsonable(obj: Any) -> Any:
    """Plain JSON types only (numpy scalars and arrays, paths and tuples converted)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj
