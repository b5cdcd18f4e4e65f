"""The runtime pipeline: a bundle and a backend in, ``segment(scan) -> Result`` out.

::

    with Segmenter("models/my-bundle") as seg:          # backend "auto": best artifact here
        result = seg.segment("scan.dcm")                 # read, preprocess, infer, postprocess
        for item in seg.segment_many(paths, batch_size=4):
            ...                                          # Result, or ScanFailure for a bad scan

Each scan is independent: an exam's four views (L/R x CC/MLO) are four scans, each
flipped to the canonical side from its own laterality and mapped back onto its own
grid. :meth:`Segmenter.segment_many` runs the model on batches of scans (one call for
``batch_size`` images on backends with a dynamic batch), and a bad scan becomes a
:class:`ScanFailure` without stopping the others.

Errors: a bad scan raises an :class:`~bcedge.errors.InputError` subclass (exit code 2);
a bundle or backend problem (missing or tampered bundle, unknown backend, backend
library missing, a model that fails to load or run) raises
:class:`~bcedge.errors.BundleError` or :class:`BackendError` (exit code 3).

Runtime-light: nothing here imports TensorFlow; the backend's library is imported
when the model is opened (``ai_edge_litert`` for TFLite artifacts).

Why one module: :class:`Segmenter` owns one lifecycle, choosing and opening the artifact,
the interpreters it lends the scan job (:meth:`Segmenter._model_pool`, the same artifact
and options), the stages that run on them and closing them all; its results and failures
are the types every front end reads. Split, each part would reach into the others' state.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from bcedge.errors import (
    BackendError,
    BcedgeError,
    BundleError,
    ConfigError,
    InputError,
    MissingDependencyError,
    first_line,
)
from bcedge.postprocess import DEFAULT_MIN_AREA_MM2, Finding, check_min_area, check_threshold, postprocess

if TYPE_CHECKING:
    from bcedge.backends.base import Backend
    from bcedge.bundle import ArtifactRecord, Bundle
    from bcedge.dicom import Mammogram
    from bcedge.preprocess import Geometry, PreprocessConfig

#: Stages timed for every scan, in order. ``write`` is added by :func:`bcedge.outputs.write_outputs`,
#: ``total`` (wall clock from the start of the scan to the end of its outputs) by the caller.
STAGES = ("decode", "preprocess", "infer", "postprocess", "write")


def default_bundle_path() -> Path:
    """The real-data bundle shipped inside the package (``bcedge/mass_model/``): what
    ``bcedge infer``, ``serve``, ``batch`` and ``benchmark`` use without ``--model``.

    A UNet+MobileNetV2 (ImageNet encoder) trained on real mammograms (CDD-CESM, mini-MIAS);
    research use only, not for clinical use (its manifest records the data terms and the
    figures measured on the held-out test split).
    """
    return Path(__file__).resolve().parent / "mass_model"


def demo_bundle_path() -> Path:
    """The demo bundle shipped inside the package (``bcedge/demo_model/``), for ``bcedge demo``.

    A small UNet+MobileNetV2 trained on synthetic phantoms: it shows the pipeline working on
    the bundled synthetic scan; not for real scans.
    """
    return Path(__file__).resolve().parent / "demo_model"


def _ms(ns: int) -> float:
    return ns / 1e6


@dataclass
class Result:
    """What :meth:`Segmenter.segment` found in one scan.

    Attributes:
        source: the input path as given ('' for an in-memory :class:`~bcedge.dicom.Mammogram`).
        mammogram: displayed pixels (H, W) float32 in [0, 1] and the scan's metadata.
        probability: (S, S) float32 in [0, 1] on the model grid (chest wall on the canonical side).
        geometry: the preprocessing geometry (maps the model grid onto the original grid).
        mask: (H, W) uint8 in {0, 1} on the original grid.
        findings: kept components, labelled 1..n by descending maximum probability.
        threshold: probability threshold used.
        timing_ms: milliseconds per stage of :data:`STAGES` that ran (``decode`` is absent for an
            in-memory mammogram; ``infer`` is the batch's time divided by its size); ``write`` and
            ``total`` are added by the outputs writer and the caller.
        outputs: output kind -> path written (filled by :func:`bcedge.outputs.write_outputs`).
        model: what ran: bundle directory, model name, artifact file, format, precision, backend, sha256.
    """

    source: str
    mammogram: Mammogram
    probability: np.ndarray
    geometry: Geometry
    mask: np.ndarray
    findings: list[Finding]
    threshold: float
    timing_ms: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: input, findings, outputs, timing_ms, threshold, model, image metadata, geometry.

        The arrays (pixels, probability, mask) are left out; the outputs hold them.
        """
        meta = self.mammogram.meta
        image = {
            key: getattr(meta, key)
            for key in (
                "rows",
                "columns",
                "modality",
                "laterality",
                "laterality_source",
                "view",
                "photometric",
                "pixel_spacing_mm",
                "spacing_source",
                "presentation_intent",
                "window_source",
                "study_uid",
                "series_uid",
                "sop_uid",
            )
        }
        if image["pixel_spacing_mm"] is not None:
            image["pixel_spacing_mm"] = list(image["pixel_spacing_mm"])
        return {
            "input": self.source,
            "findings": [f.to_dict() for f in self.findings],
            "outputs": {k: str(v) for k, v in self.outputs.items()},
            "timing_ms": {k: round(float(v), 3) for k, v in self.timing_ms.items()},
            "threshold": self.threshold,
            "model": dict(self.model),
            "image": image,
            "geometry": self.geometry.to_dict(),
        }


@dataclass
class ScanFailure:
    """A scan :meth:`Segmenter.segment_many` could not process; the others went on.

    Attributes:
        source: the input as given.
        error: why (its message is one line; ``error.exit_code`` is 2 for a bad scan).
    """

    source: str
    error: BcedgeError

    def to_dict(self) -> dict[str, Any]:
        """``{"input", "error", "error_type"}``."""
        return {"input": self.source, "error": str(self.error), "error_type": type(self.error).__name__}


@dataclass
class _Prepared:
    index: int
    source: str
    mammogram: Mammogram
    tensor: np.ndarray
    geometry: Geometry
    timing: dict[str, float]


_for_processing_warned = threading.Event()


def _warn_for_processing(model: str) -> None:
    """Log that a FOR PROCESSING image reached the model: a warning the first time in a process, then debug.

    Why: a FOR PROCESSING image is the detector's raw signal, before the vendor's processing that
    every image the models were trained and tested on went through (CDD-CESM's exported views,
    digitised film); it carries no display window, so the reader's robust window stands in and the
    model sees an image unlike its data. No identifiers (the JSON names the scan:
    ``image.presentation_intent``).
    """
    level = logging.DEBUG if _for_processing_warned.is_set() else logging.WARNING
    _for_processing_warned.set()
    logging.getLogger(__name__).log(
        level,
        "a FOR PROCESSING (raw detector) image: %s was trained and tested on processed images only, so its "
        "output on raw images is unvalidated; send the FOR PRESENTATION image%s",
        model,
        "" if level == logging.DEBUG else " (further such scans are logged at debug level)",
    )


class Segmenter:
    """A bundle opened on a backend, ready to segment scans.

    Args:
        bundle: a loaded :class:`~bcedge.bundle.Bundle` or its directory.
        backend: ``auto`` (the bundle's best artifact whose accuracy gate passed, on the
            fastest backend available here: see :func:`bcedge.formats.choose_artifact`) or a
            backend name (``tflite``, ``openvino``, ``onnx``, ``tensorrt``, ``keras``): the bundle's best
            artifact for that backend (gate passed first, else one not measured, with a warning).
        threads: CPU threads for the backend (None: the library's default).
        threshold: probability threshold in (0, 1); None: the bundle's.
        min_area_mm2: components smaller than this many mm² are dropped (None:
            :data:`~bcedge.postprocess.DEFAULT_MIN_AREA_MM2`); without a pixel spacing
            ``min_area_px`` (or a default of a few model pixels) applies instead.
        min_area_px: minimum area in original pixels for scans without a pixel spacing.
        artifact: run this artifact (a record, its ``file``, or ``file@backend`` for an alternate
            runtime: :func:`bcedge.formats.candidate_key`) instead of choosing one.
        verify: check the artifact's size and SHA-256 against the manifest before loading (default).
        scans: how many scans this Segmenter will run, when known (``bcedge infer``): ``auto`` then
            counts each candidate's start-up (a runtime that compiles slowly wins only long jobs);
            None: the fastest per call (:func:`bcedge.choice.ranking_for`).
        **backend_options: passed to the backend (``providers`` for onnx, ``xnnpack`` for tflite...).

    Attributes:
        bundle: the bundle.
        artifact: the artifact record that runs.
        backend_name: the backend that runs it.
        backend: the open backend.
        config: the bundle's preprocessing config.
        threshold: the threshold in use.
        warnings: one-line notes for the user (e.g. an artifact whose gate was not measured).

    Raises:
        BundleError: missing or invalid bundle, no usable artifact, tampered artifact.
        BackendError: unknown backend, its library missing, or the model fails to load.
        ConfigError: invalid threshold, minimum area or thread count.
    """

    def __init__(
        self,
        bundle: Bundle | str | os.PathLike[str],
        backend: str = "auto",
        *,
        threads: int | None = None,
        threshold: float | None = None,
        min_area_mm2: float | None = None,
        min_area_px: float | None = None,
        artifact: ArtifactRecord | str | None = None,
        verify: bool = True,
        scans: int | None = None,
        **backend_options: Any,
    ) -> None:
        from bcedge.bundle import Bundle, load_bundle

        self.warnings: list[str] = []
        # The scan job's extra interpreters (_model_pool): opened on first use with the options and
        # verification of the main one, closed by close().
        self._pool: list[Backend] | None = None
        self._pool_lock = threading.Lock()
        self._verify = verify
        self._backend_options = dict(backend_options)
        self.bundle: Bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        self.threshold = check_threshold(self.bundle.threshold if threshold is None else threshold)
        self.min_area_mm2 = check_min_area(DEFAULT_MIN_AREA_MM2 if min_area_mm2 is None else min_area_mm2, "mm²")
        self.min_area_px = None if min_area_px is None else check_min_area(min_area_px, "pixels")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ConfigError(f"threads is {threads!r}; expected a positive integer")
        self.config: PreprocessConfig = self.bundle.preprocess_config()
        #: How the artifact was chosen (bcedge.choice.ChoiceReport.to_dict(): candidates, times, acceptance, why).
        self.choice: dict[str, Any] = {}
        #: Called with each decoded scan and its path (``""`` for an in-memory mammogram) before it is
        #: preprocessed; a BcedgeError it raises fails that scan (a ScanFailure) before it costs a
        #: model call. ``bcedge serve`` checks there that a SEG can reference the scan
        #: (:func:`bcedge.seg_source.check_source_header`); None: no check.
        self.check_source: Callable[[Mammogram, str], None] | None = None
        self.artifact: ArtifactRecord = self._choose(backend, artifact, threads, scans)
        self.backend_name: str = self.artifact.backend
        self.backend: Backend = self._open(threads, verify, backend_options)
        _warm_up()
        if self.backend.input_size != self.bundle.input_size:
            size = self.backend.input_size
            self.close()
            raise BundleError(
                f"{self.artifact.file} takes {size}x{size} images but the manifest says {self.bundle.input_size}"
            )

    # ----------------------------------------------------------------- opening
    def _choose(
        self, backend: str, artifact: ArtifactRecord | str | None, threads: int | None = None, scans: int | None = None
    ) -> ArtifactRecord:
        """The artifact to run (:func:`bcedge.formats.choose_artifact` with the measured ranking of
        :func:`bcedge.choice.ranking_for`: acceptance check, then timing for ``auto``); its warnings
        go to :attr:`warnings`, the report to :attr:`choice`."""
        # BACKENDS is read here, not at import: tests register extra backends in it.
        from bcedge.backends import BACKENDS, auto_backend_names
        from bcedge.choice import explicit_report, ranking_for
        from bcedge.formats import choose_artifact, preference_rank

        if artifact is None:
            rank, report = ranking_for(self.bundle, backend, threads=threads, scans=scans)
        else:
            rank, report = preference_rank, None
        choice = choose_artifact(self.bundle, backend, auto_backend_names, known=BACKENDS, artifact=artifact, rank=rank)
        report = report or explicit_report(choice.record, backend, threads)
        self.warnings.extend(report.warnings)
        self.warnings.extend(choice.warnings)
        self.choice = report.finish(choice.record)
        return choice.record

    def _open(self, threads: int | None, verify: bool, options: dict[str, Any]) -> Backend:
        try:
            return self.bundle.open(self.artifact, verify=verify, threads=threads, **options)
        except BundleError:
            raise
        except (MissingDependencyError, InputError) as exc:
            # The backend library is missing, or the artifact does not load: a model problem, not the scan's.
            raise BackendError(str(exc)) from exc
        except ConfigError as exc:
            raise BackendError(f"{self.artifact.backend} backend: {exc}") from exc

    @property
    def model_info(self) -> dict[str, Any]:
        """What runs, for results and reports (JSON-ready).

        ``threads`` is :attr:`backend`'s. Once the pipelined scan job has borrowed its interpreters
        (:meth:`_model_pool`), ``interpreters`` lists their threads (e.g. ``[1, 1]``: two 1-thread
        LiteRT interpreters ran the batches, not the one ``threads``-thread interpreter); absent otherwise.
        """
        manifest = self.bundle.manifest
        info = {
            "bundle": str(self.bundle.dir),
            "name": manifest.model.get("name"),
            "architecture": manifest.model.get("architecture"),
            "artifact": self.artifact.file,
            "format": self.artifact.format,
            "precision": self.artifact.precision,
            "backend": self.backend_name,
            "sha256": self.artifact.sha256,
            "input_size": self.bundle.input_size,
            "runtime": self.backend.details.get("runtime"),
            "threads": self.backend.details.get("threads"),
            "choice": self.choice,
        }
        pool = getattr(self, "_pool", None)
        if pool:
            info["interpreters"] = [b.details.get("threads") for b in pool]
        return info

    # ----------------------------------------------------------------- stages
    def _prepare(self, index: int, scan: str | os.PathLike[str] | Mammogram) -> _Prepared:
        """Decode (for a path) and preprocess one scan, timed."""
        from bcedge.dicom import Mammogram, read_mammogram
        from bcedge.preprocess import preprocess

        timing: dict[str, float] = {}
        if isinstance(scan, Mammogram):
            source, mammo = "", scan
        elif isinstance(scan, (str, os.PathLike)):
            source = os.fspath(scan)
            t0 = time.perf_counter_ns()
            try:
                mammo = read_mammogram(scan)
            except OSError as exc:
                raise InputError(f"{source}: cannot read the file ({exc.strerror or exc})") from exc
            timing["decode"] = _ms(time.perf_counter_ns() - t0)
        else:
            raise InputError(f"scan is a {type(scan).__name__}; expected a file path or a bcedge.dicom.Mammogram")
        if self.check_source is not None:
            self.check_source(mammo, source)
        if mammo.meta.presentation_intent == "FOR PROCESSING":
            _warn_for_processing(str(self.bundle.manifest.model.get("name") or self.bundle.dir.name))
        t0 = time.perf_counter_ns()
        tensor, geometry = preprocess(mammo, self.config)
        timing["preprocess"] = _ms(time.perf_counter_ns() - t0)
        return _Prepared(index, source, mammo, tensor, geometry, timing)

    def _infer(self, batch: np.ndarray, backend: Backend | None = None) -> tuple[np.ndarray, float]:
        """(N, S, S, 1) float32 probabilities of an (N, S, S, 1) float32 batch and the elapsed milliseconds.

        ``backend``: one of :meth:`_model_pool`'s interpreters (default: :attr:`backend`); the same
        artifact and options, so the same probabilities, and the same errors.
        """
        if self.backend.closed:
            raise BackendError(f"the segmenter for {self.artifact.file} is closed")
        t0 = time.perf_counter_ns()
        try:
            out = (backend or self.backend).predict(batch)
        except BcedgeError as exc:
            raise BackendError(f"{self.artifact.describe()}: {exc}") from exc
        except Exception as exc:  # RuntimeError and friends from the backend library
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BackendError(f"{self.artifact.describe()} failed to run: {first}") from exc
        return out, _ms(time.perf_counter_ns() - t0)

    def _finish(self, item: _Prepared, probability: np.ndarray, infer_ms: float) -> Result:
        t0 = time.perf_counter_ns()
        meta = item.mammogram.meta
        mask, findings = postprocess(
            probability,
            item.geometry,
            threshold=self.threshold,
            min_area_mm2=self.min_area_mm2,
            spacing_mm=meta.pixel_spacing_mm,
            min_area_px=self.min_area_px,
        )
        timing = dict(item.timing)
        timing["infer"] = infer_ms
        timing["postprocess"] = _ms(time.perf_counter_ns() - t0)
        return Result(
            source=item.source,
            mammogram=item.mammogram,
            probability=probability,
            geometry=item.geometry,
            mask=mask,
            findings=findings,
            threshold=self.threshold,
            timing_ms={k: timing[k] for k in STAGES if k in timing},
            model=self.model_info,
        )

    # ----------------------------------------------------------------- public
    def segment(self, scan: str | os.PathLike[str] | Mammogram) -> Result:
        """Segment one scan.

        Args:
            scan: a DICOM/raster file path, or a :class:`~bcedge.dicom.Mammogram` already read.

        Returns:
            The :class:`Result` (outputs not written; see :func:`bcedge.outputs.write_outputs`).

        Raises:
            InputError: the scan cannot be read or preprocessed (exit code 2).
            BackendError: the model failed to run (exit code 3).
        """
        item = self._prepare(0, scan)
        probs, infer_ms = self._infer(item.tensor)
        return self._finish(item, probs[0, :, :, 0], infer_ms)

    def segment_many(
        self, scans: Iterable[str | os.PathLike[str] | Mammogram], batch_size: int = 4
    ) -> Iterator[Result | ScanFailure]:
        """Segment several scans, ``batch_size`` images per model call, in input order.

        A scan that cannot be read or preprocessed yields a :class:`ScanFailure` and the
        others go on. A backend failure is not the scan's fault and is raised.

        Args:
            scans: paths and/or mammograms.
            batch_size: images per model call, >= 1 (each batch's decoded scans are held in
                memory: ~34 MB per full-field scan).

        Yields:
            One :class:`Result` or :class:`ScanFailure` per scan, in input order. A result's
            ``timing_ms["infer"]`` is its batch's model time divided by the batch size.

        Raises:
            ConfigError: batch_size is not a positive integer.
            BackendError: the model failed to run.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size is {batch_size!r}; expected a positive integer")
        pending: list[str | os.PathLike[str] | Mammogram] = []
        for scan in scans:
            pending.append(scan)
            if len(pending) == batch_size:
                yield from self._run_batch(pending)
                pending = []
        if pending:
            yield from self._run_batch(pending)

    def _run_batch(self, scans: list[str | os.PathLike[str] | Mammogram]) -> Iterator[Result | ScanFailure]:
        out: list[Result | ScanFailure | None] = [None] * len(scans)
        ready: list[_Prepared] = []
        for i, scan in enumerate(scans):
            try:
                ready.append(self._prepare(i, scan))
            except BcedgeError as exc:
                out[i] = ScanFailure(_source_of(scan), exc)
            except Exception as exc:  # one scan's unforeseen failure must not stop the others
                out[i] = ScanFailure(_source_of(scan), _unexpected(scan, exc))
        if ready:
            probs, infer_ms = self._infer(np.concatenate([item.tensor for item in ready]))
            share = infer_ms / len(ready)
            for k, item in enumerate(ready):
                try:
                    out[item.index] = self._finish(item, probs[k, :, :, 0], share)
                except BcedgeError as exc:
                    out[item.index] = ScanFailure(item.source, exc)
                except Exception as exc:
                    out[item.index] = ScanFailure(item.source, _unexpected(item.source, exc))
        for item in out:
            assert item is not None  # every index was filled above
            yield item

    def _model_pool(self) -> list[Backend]:
        """Interpreters for the pipelined scan job (:func:`bcedge.scanjob.process_scans`): two LiteRT
        interpreters with half of :attr:`backend`'s threads each, or ``[]`` (the job uses :attr:`backend`).

        Why: on a 2-core AMD EPYC (AVX2, FP16 model, batch 4, quiet) two 1-thread interpreters each
        taking a batch in turn ran the 16-scan job at 4.72 scans/s against 4.30 with one 2-thread
        interpreter (read and write stages fill the gaps of a 1-thread model instead of stalling a
        2-thread one). Only for ``tflite`` with at least 2 threads; opened on the first call (the
        bundle's bytes read and verified again), kept until :meth:`close`; ``[]`` when a second
        interpreter cannot be opened (memory), so the job falls back to the one it has.
        """
        with self._pool_lock:
            if self._pool is None:
                self._pool = []
                threads = getattr(self.backend, "threads", None)
                if self.backend_name == "tflite" and isinstance(threads, int) and threads >= 2:
                    try:
                        for share in (threads // 2, threads - threads // 2):
                            self._pool.append(
                                self.bundle.open(
                                    self.artifact, verify=self._verify, threads=share, **self._backend_options
                                )
                            )
                    except Exception as exc:  # any failure (memory...): keep the one interpreter that works
                        for backend in self._pool:
                            backend.close()
                        self._pool = []
                        logging.getLogger(__name__).warning(
                            "%s: a second interpreter did not open (%s); the scans run on one",
                            self.artifact.file,
                            first_line(exc),
                        )
            return self._pool

    def close(self) -> None:
        """Release the backend and the scan job's interpreters. Safe to call twice."""
        backend = getattr(self, "backend", None)
        if backend is not None:
            backend.close()
        lock = getattr(self, "_pool_lock", None)
        if lock is not None:
            with lock:
                for extra in self._pool or []:
                    extra.close()
                self._pool = []  # closed: no interpreter is opened again (the job then reports it closed)

    def __enter__(self) -> Segmenter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Segmenter({str(self.bundle.dir)!r}, artifact={self.artifact.file!r}, backend={self.backend_name!r})"


def _warm_up() -> None:
    """Import what the first scan would otherwise import inside its timed stages.

    pydicom alone takes ~0.1 s to import; without this, a one-scan run would book it as
    ``decode``. Cold start is unchanged, the per-stage timings stay about the stages. (Running
    it on a thread while the model loads was measured, benchmarks/results/ab_warm_up_thread.json:
    no gain on the 2-core machine, 1443 vs 1437 ms median wall; so it runs here.)
    """
    import cv2

    from bcedge.decoders import import_pydicom

    import_pydicom()  # first, so pydicom comes in without its downloader's extras (cold start)
    import pydicom.filereader
    import pydicom.pixels  # noqa: F401

    # OpenCV sets up its thread pool and SIMD dispatch on the first call.
    cv2.resize(np.zeros((8, 8), np.float32), (4, 4), interpolation=cv2.INTER_AREA)


def _unexpected(scan: object, exc: Exception) -> InputError:
    """A scan's unforeseen exception as its one-line error (exit code 2; "unexpected" marks a bug to fix)."""
    error = InputError(f"{_source_of(scan) or 'scan'}: unexpected {type(exc).__name__}: {first_line(exc)}")
    error.__cause__ = exc
    return error


def _source_of(scan: object) -> str:
    """The input path as given, '' for anything else (as :attr:`Result.source`)."""
    return os.fspath(scan) if isinstance(scan, (str, os.PathLike)) else ""


__all__ = ["STAGES", "BackendError", "Result", "ScanFailure", "Segmenter", "default_bundle_path", "demo_bundle_path"]
