"""The Ray actor of ``bcedge batch``: opens the bundle once, then segments block after block of scans.

Each actor reads, preprocesses, runs the model (``batch_size`` images per call) and writes the
outputs of its scans itself: a decoded full-field mammogram is ~34 MB, and handing it from a reader
task to a model actor through Ray's object store would copy it twice per scan for nothing. So the
parallelism is one actor per CPU (``--workers``), each doing the whole pipeline for its block, with
one backend thread each by default.

Every actor runs the one artifact the driver chose for the run (``WorkerOptions.artifact``, at the
workers' thread count): an actor never makes its own ``--backend auto`` choice, which at another
thread count or on another node could pick another artifact than the run's fingerprint names. An
actor that cannot load that artifact (a backend library missing on its node, a different bundle
copy) fails each of its scans with the reason instead of running something else.

Outputs are written by the same scan job as ``bcedge infer`` (all or nothing per scan, atomic
files); rows go back to the driver, which alone commits them (:mod:`bcedge.batch.ledger`).
A block's answer is ``{"row": [JSON of the scan row], "findings": [JSON list of finding rows]}``:
JSON strings keep Ray from guessing Arrow types from blocks whose columns happen to be all null.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bcedge.batch.sources import ScanRef
from bcedge.errors import BackendError, BcedgeError, InputError, first_line


@dataclass(frozen=True)
class WorkerOptions:
    """What every actor needs (JSON-able: it is shipped to the actors' processes, maybe on other nodes).

    Attributes:
        bundle: bundle folder (absolute; on a cluster, the same path must exist on every node).
        backend: the backend of ``artifact`` (a backend name, not ``auto``: the driver chose).
        artifact: the run's artifact (its key, :func:`bcedge.formats.candidate_key`), chosen once by the driver.
        artifact_sha256: its SHA-256 as the driver's bundle records it; an actor whose bundle copy
            holds another file under that name fails its scans.
        model: the driver's ``Segmenter.model_info`` (the failed rows of an actor that could not
            load the artifact name the run's model with it).
        threads: backend threads per actor.
        threshold, min_area_mm2: the run's (resolved by the driver: the bundle's / default when not given).
        out: output folder (absolute; shared by every node for a multi-node folder run).
        kinds: output kinds to write (may be empty: the table only).
        batch_size: images per model call.
        dicomweb_url: the DICOMweb root when the source is a server.
        stow: STOW-RS each SEG back to ``dicomweb_url``.
        fingerprint: the run's fingerprint (see :func:`bcedge.batch.table.fingerprint`).
    """

    bundle: str
    backend: str
    artifact: str
    artifact_sha256: str
    model: dict[str, Any]
    threads: int | None
    threshold: float | None
    min_area_mm2: float | None
    out: str
    kinds: tuple[str, ...]
    batch_size: int
    dicomweb_url: str | None
    stow: bool
    fingerprint: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _rows(batch: dict[str, Any]) -> list[dict[str, Any]]:
    """Ray's numpy batch (column -> array) as a list of row dicts."""
    columns = list(batch)
    n = len(batch[columns[0]]) if columns else 0
    return [{c: batch[c][i] for c in columns} for i in range(n)]


class ScanWorker:
    """Callable class for ``Dataset.map_batches``: one instance (one bundle load) per actor."""

    def __init__(self, options: dict[str, Any]) -> None:
        from bcedge.pipeline import Segmenter

        self.options = WorkerOptions(**{**options, "kinds": tuple(options["kinds"])})
        o = self.options
        #: The open model, or None when the run's artifact does not load here (see load_error).
        self.seg: Segmenter | None = None
        #: Why the run's artifact does not load here: every scan of this actor fails with it.
        self.load_error: BcedgeError | None = None
        try:
            seg = Segmenter(
                o.bundle,
                o.backend,
                artifact=o.artifact,
                threads=o.threads,
                threshold=o.threshold,
                min_area_mm2=o.min_area_mm2,
            )
        except Exception as exc:  # any load failure (library, file, delegate): the scans say why, no other artifact
            self.load_error = BackendError(
                f"this worker cannot load the run's artifact {o.artifact} on {o.backend}: {first_line(exc)}"
            )
        else:
            if seg.artifact.sha256 != o.artifact_sha256:
                seg.close()
                self.load_error = BackendError(
                    f"this worker's {o.artifact} has SHA-256 {seg.artifact.sha256[:12]}..., not the run's "
                    f"{o.artifact_sha256[:12]}... (another copy of the bundle on this node)"
                )
            else:
                self.seg = seg
        self.client = None
        if o.dicomweb_url:
            from bcedge.batch.dicomweb import make_client

            self.client = make_client(o.dicomweb_url)
        if "seg" in o.kinds:
            from bcedge.outputs import preload_seg

            preload_seg()
        self.tmp = Path(tempfile.mkdtemp(prefix="bcedge-batch-"))

    def __del__(self) -> None:
        shutil.rmtree(getattr(self, "tmp", ""), ignore_errors=True)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        refs = [ScanRef.from_dict(row) for row in _rows(batch)]
        rows: list[str] = []
        findings: list[str] = []
        for row, finding_rows in self.process(refs):
            rows.append(json.dumps(row))
            findings.append(json.dumps(finding_rows))
        return {"row": rows, "findings": findings}

    # ----------------------------------------------------------------- one block
    def process(self, refs: list[ScanRef]) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
        """Segment ``refs`` and write their outputs; one (scan row, finding rows) per ref, in order.

        A bad scan becomes a failed row; a model or backend failure (not the scan's fault) is raised
        and fails the run.
        """
        from bcedge.pipeline import ScanFailure
        from bcedge.scanjob import process_scans

        o = self.options
        if self.seg is None:
            assert self.load_error is not None
            return [(self._failed(ref, self.load_error, {}), []) for ref in refs]
        out: dict[int, tuple[dict[str, Any], list[dict[str, Any]]]] = {}
        local: list[tuple[int, ScanRef, str, dict[str, float]]] = []
        for i, ref in enumerate(refs):
            timing: dict[str, float] = {}
            try:
                path = self._local_path(ref, timing)
                if o.kinds:
                    # The scan job writes into existing folders; a stem may name a sub-folder (mirrored tree).
                    (Path(o.out) / ref.stem).parent.mkdir(parents=True, exist_ok=True)
            except BcedgeError as exc:
                out[i] = (self._failed(ref, exc, timing), [])
                continue
            except OSError as exc:
                out[i] = (
                    self._failed(ref, InputError(f"cannot create an output folder: {exc.strerror or exc}"), timing),
                    [],
                )
                continue
            local.append((i, ref, path, timing))
        try:
            stems = {path: ref.stem for _, ref, path, _ in local}
            paths = [path for _, _, path, _ in local]
            # No kinds: segment only (findings rows, no files); the same scan job either way.
            items = process_scans(self.seg, paths, o.out, o.kinds, stems=stems, batch_size=o.batch_size)
            for (i, ref, _path, timing), item in zip(local, items, strict=True):
                if isinstance(item, ScanFailure):
                    out[i] = (self._failed(ref, item.error, timing), [])
                else:
                    out[i] = self._finish(ref, item, timing)
        finally:
            for _, ref, path, _ in local:
                if ref.kind == "dicomweb":
                    Path(path).unlink(missing_ok=True)
        return [out[i] for i in range(len(refs))]

    def _local_path(self, ref: ScanRef, timing: dict[str, float]) -> str:
        if ref.kind != "dicomweb":
            return ref.path
        from bcedge.batch.dicomweb import fetch_instance

        t0 = time.perf_counter()
        dest = self.tmp / f"{ref.sop_uid}.dcm"
        fetch_instance(self.client, ref, dest)
        timing["fetch"] = (time.perf_counter() - t0) * 1000.0
        return os.fspath(dest)

    def _finish(
        self, ref: ScanRef, result: Any, timing: dict[str, float]
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Rows of a scan whose outputs are written; STOW-RS its SEG first when asked."""
        from bcedge.batch.table import done_row

        o = self.options
        assert self.seg is not None  # only scans this actor segmented get here
        seg_stored = None
        if o.stow and result.outputs.get("seg"):
            from bcedge.batch.dicomweb import store_instance

            t0 = time.perf_counter()
            try:
                store_instance(self.client, result.outputs["seg"])
            except BcedgeError as exc:
                return self._failed(ref, exc, {**timing, **result.timing_ms}), []
            timing["stow"] = (time.perf_counter() - t0) * 1000.0
            seg_stored = True
        timing.update({k: v for k, v in result.timing_ms.items() if k != "total"})
        timing["total"] = sum(v for k, v in timing.items() if k != "total")
        return done_row(
            ref,
            result,
            fp=o.fingerprint,
            threshold=self.seg.threshold,
            min_area_mm2=self.seg.min_area_mm2,
            timing_ms=timing,
            seg_stored=seg_stored,
        )

    def _failed(self, ref: ScanRef, error: BaseException, timing: dict[str, float]) -> dict[str, Any]:
        from bcedge.batch.table import failed_row

        timing = dict(timing)
        timing["total"] = sum(v for k, v in timing.items() if k != "total")
        o = self.options
        return failed_row(
            ref,
            error,
            fp=o.fingerprint,
            model=self.seg.model_info if self.seg is not None else o.model,
            threshold=self.seg.threshold if self.seg is not None else o.threshold,
            min_area_mm2=self.seg.min_area_mm2 if self.seg is not None else o.min_area_mm2,
            timing_ms=timing,
        )
