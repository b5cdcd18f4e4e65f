"""The real processing step: the same :class:`~bcedge.pipeline.Segmenter` as ``bcedge infer``, then the SEG.

The SEG's SOP Instance UID comes from :func:`bcedge.outputs.seg_sop_instance_uid`: derived from
the source SOP Instance UID and the model artifact, so processing the same scan again (after a
crash before the outbox commit, or when the modality sends it twice) gives the same UID and
PACS keeps one instance.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from bcedge.serve.config import ModelConfig


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
        from bcedge.outputs import preload_seg
        from bcedge.pipeline import Segmenter, default_bundle_path

        # highdicom missing must stop the node at start, not quarantine every scan later.
        preload_seg()
        self.bundle_path = Path(model.bundle) if model.bundle is not None else default_bundle_path()
        self.kinds = list(model.outputs)
        self.segmenter = Segmenter(
            self.bundle_path,
            model.backend,
            threads=model.threads,
            threshold=model.threshold,
            min_area_mm2=model.min_area_mm2,
        )

    def describe(self) -> str:
        """One line: bundle, artifact, backend and backend threads that actually run."""
        artifact = getattr(self.segmenter, "artifact", None)
        file = getattr(artifact, "file", None) or getattr(artifact, "path", None) or "?"
        threads = (getattr(self.segmenter, "model_info", None) or {}).get("threads")
        used = f", {threads} thread(s)" if threads else ""
        return f"{self.bundle_path} ({file}) on {self.segmenter.backend_name}{used}"

    def __call__(self, source: Path, out_dir: Path) -> Mapping[str, Path]:
        from bcedge.errors import InputError
        from bcedge.scanjob import write_scan_outputs

        result = self.segmenter.segment(source)
        try:
            # The same all-or-nothing write as bcedge infer (same SEG UIDs for the same scan and model).
            written = write_scan_outputs(result, out_dir, self.kinds, self.segmenter)
        except InputError as exc:
            if isinstance(exc.__cause__, OSError):
                # The node's own disk, not the scan: retried by the worker instead of quarantining the scan.
                raise OSError(exc.__cause__.errno, f"writing outputs: {exc}") from exc
            raise
        return {kind: Path(os.fspath(path)) for kind, path in written.items()}

    def close(self) -> None:
        self.segmenter.close()
