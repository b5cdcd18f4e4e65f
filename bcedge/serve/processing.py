"""The real processing step: the scan job of ``bcedge infer`` (:func:`bcedge.scanjob.run_scan`) on one scan.

The SEG's SOP Instance UID comes from :func:`bcedge.outputs.seg.seg_sop_instance_uid`: derived from
the source SOP Instance UID and the model artifact, so processing the same scan again (after a
crash before the outbox commit, or when the modality sends it twice) gives the same UID and
PACS keeps one instance.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bcedge.serve.config import ModelConfig


def _seg_can_reference(mammogram: Any, source: str) -> None:
    """:attr:`bcedge.pipeline.Segmenter.check_source` for the node: the SEG's header check, before the model.

    Raises:
        DicomError: a required UID or size attribute of the header is missing or invalid.
    """
    header = getattr(mammogram, "header", None)
    if header is not None:  # no header (a non-DICOM image): the SEG writer says why at write time
        from bcedge.seg_source import check_source_header

        check_source_header(header, source, tuple(mammogram.shape))


class SegmenterProcessor:
    """``process(source, out_dir) -> {kind: path}`` around one loaded Segmenter.

    The model is loaded once, at construction, in each worker process
    (:mod:`bcedge.serve.isolation`; a bad bundle stops the node before it listens), and used by
    that process's one thread.

    Raises:
        BundleError: the bundle is missing, malformed or does not match its manifest.
        BcedgeError: the backend is unavailable (an extra is missing) or an option is invalid.
    """

    def __init__(self, model: ModelConfig) -> None:
        from bcedge.decoders import import_pydicom

        # pydicom first, without its test-data downloader's extras (requests, ...): highdicom below
        # would otherwise import it whole, ~0.1-0.2 s more CPU for each worker a (re)start loads.
        import_pydicom()
        from bcedge.outputs import preload_seg
        from bcedge.pipeline import Segmenter, default_bundle_path

        # highdicom missing must stop the node at start, not quarantine every scan later.
        preload_seg()
        self.bundle_path = Path(model.bundle) if model.bundle is not None else default_bundle_path()
        self.kinds = list(model.outputs)
        #: Milliseconds per stage (decode, preprocess, infer, postprocess, write) of the last scan
        #: processed; the worker process sends them to the node, which records them in item.json.
        self.last_timing_ms: dict[str, float] = {}
        from bcedge.choice import cached_timings

        # A (re)start never times artifacts again: the choice comes from the cache when it has one.
        with cached_timings():
            self.segmenter = Segmenter(
                self.bundle_path,
                model.backend,
                threads=model.threads,
                threshold=model.threshold,
                min_area_mm2=model.min_area_mm2,
            )
        if "seg" in self.kinds:
            # A scan whose SEG cannot reference it (no valid Study/SOP Instance UID) is refused before
            # its model call, not after: after a kill -9 the backlog held two such scans per burst.
            self.segmenter.check_source = _seg_can_reference
        if model.threads is not None:
            import cv2

            # OpenCV's own pool defaults to every CPU; with one worker per CPU that oversubscribes
            # the cores during resizing (~30 ms more CPU per 512 px scan on the 2-core machine:
            # 471 against 440 ms, interleaved, under load).
            cv2.setNumThreads(model.threads)

    def describe(self) -> str:
        """One line: bundle, artifact, backend and backend threads that actually run."""
        artifact = getattr(self.segmenter, "artifact", None)
        file = getattr(artifact, "file", None) or getattr(artifact, "path", None) or "?"
        threads = (getattr(self.segmenter, "model_info", None) or {}).get("threads")
        used = f", {threads} thread(s)" if threads else ""
        return f"{self.bundle_path} ({file}) on {self.segmenter.backend_name}{used}"

    def __call__(self, source: Path, out_dir: Path) -> Mapping[str, Path]:
        """Segment ``source`` and write its outputs into ``out_dir`` (:func:`bcedge.scanjob.run_scan`).

        Returns:
            kind -> path written (``seg`` among them).

        Raises:
            BcedgeError: the scan's own problem (exit code 2: quarantined) or the model's (retried).
            OSError: the outputs could not be written to the node's own disk (retried, not the scan's fault).
        """
        from bcedge.errors import InputError
        from bcedge.pipeline import ScanFailure
        from bcedge.scanjob import WriteFailure, run_scan

        # The same scan job as bcedge infer: one read of the scan, the same all-or-nothing write and SEG UIDs.
        self.last_timing_ms = {}
        item = run_scan(self.segmenter, source, out_dir, self.kinds)
        self.last_timing_ms = {k: round(float(v), 1) for k, v in getattr(item, "timing_ms", {}).items()}
        if (
            isinstance(item, WriteFailure)
            and isinstance(item.error, InputError)
            and isinstance(item.error.__cause__, OSError)
        ):
            # The node's own disk, not the scan: retried by the worker instead of quarantining the scan.
            cause = item.error.__cause__
            raise OSError(cause.errno, f"writing outputs: {item.error}") from item.error
        if isinstance(item, ScanFailure):
            raise item.error
        return {kind: Path(os.fspath(path)) for kind, path in item.outputs.items()}

    def close(self) -> None:
        self.segmenter.close()
