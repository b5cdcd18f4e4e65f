"""One scan job: segment scans with an open :class:`~bcedge.pipeline.Segmenter` and write their outputs.

The one implementation behind every front end that turns files into outputs::

    stems = unique_stems(paths)                    # output name per input, unique, < 255 bytes
    for item in process_scans(segmenter, paths, out_dir, kinds, stems=stems):
        ...                                        # Result (outputs written) or ScanFailure
    item = run_scan(segmenter, path, out_dir, kinds)   # the same for one scan

Who calls it: ``bcedge infer`` and ``bcedge demo`` (:mod:`bcedge.cli.infer`, :func:`process_scans`),
``bcedge batch`` (:mod:`bcedge.batch.worker`, :func:`process_scans`), ``bcedge serve``
(:mod:`bcedge.serve.processing`, :func:`run_scan`) and ``benchmarks/bench_infer.py``
(:func:`run_scan`; :func:`write_scan_outputs` to time the write of one result again).

Contract:

- **A bad scan never stops the others.** Reading, decoding, the model's post-processing and
  writing a scan's outputs can fail; each such failure becomes a :class:`ScanFailure` whose
  error is a :class:`~bcedge.errors.BcedgeError` with a one-line message (exit code 2 for a
  scan's own problem); a failure to write is a :class:`WriteFailure` (nothing of that scan was
  written). Only a problem that concerns every scan (the model fails to run:
  :class:`~bcedge.pipeline.BackendError`, exit code 3) is raised.
- **All or nothing per scan, and never a lost file.** :func:`write_scan_outputs` encodes every
  output in memory, then writes them together (:func:`bcedge.imageio.replace_files`): when any
  write fails, every file that was in the folder before is back as it was and no new file is
  left, so a failed re-run keeps the previous run's outputs intact and consistent.
- **A scan is read from disk once.** The reader keeps the DICOM header without its Pixel Data
  (``Result.mammogram.header``); the SEG is built from it (:func:`bcedge.outputs.seg.build_seg`),
  not from the source file read again.
- **Names.** :func:`unique_stems` gives each input its output stem: the file name without an
  image suffix, cut with a hash suffix when long (:func:`bcedge.outputs.shorten_stem`), with
  ``_2``, ``_3``... when two inputs share one. The same inputs in the same order always give
  the same names.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from bcedge.errors import BcedgeError, InputError, first_line
from bcedge.pipeline import Result, ScanFailure

if TYPE_CHECKING:
    from bcedge.bundle import ArtifactRecord, Bundle
    from bcedge.dicom import Mammogram


class ModelRef(Protocol):
    """What writing needs to know about the model: an open Segmenter satisfies it."""

    bundle: Bundle
    artifact: ArtifactRecord | None


@dataclass
class WriteFailure(ScanFailure):
    """A scan that was segmented but whose outputs could not be written; nothing of it was written.

    Its ``error`` is an :class:`~bcedge.errors.InputError` (exit code 2; a
    :class:`~bcedge.errors.DicomError` when the source header cannot make a SEG), or a
    :class:`~bcedge.errors.MissingDependencyError` for ``seg`` without highdicom; when the file
    system refused (disk full, permissions),
    ``error.__cause__`` is the ``OSError``, so a front end can tell its own disk's trouble (the DICOM
    node retries) from the scan's. ``to_dict()`` is that of any :class:`ScanFailure`.
    """


def unique_stems(sources: Sequence[str | os.PathLike[str]]) -> dict[str, str]:
    """Output stem per input (keys: ``os.fspath`` of each source): its :func:`~bcedge.outputs.output_stem`,
    with ``_2``, ``_3``... when two inputs share one. Deterministic for a given input order."""
    from bcedge.outputs import output_stem

    seen: dict[str, int] = {}
    taken: set[str] = set()
    out: dict[str, str] = {}
    for raw in sources:
        source = os.fspath(raw)
        if source in out:
            continue
        stem = output_stem(source)
        n = seen.get(stem, 0) + 1
        candidate = stem if n == 1 else f"{stem}_{n}"
        while candidate in taken:  # "a_2.dcm" given beside two "a.dcm": skip to a free name
            n += 1
            candidate = f"{stem}_{n}"
        seen[stem] = n
        taken.add(candidate)
        out[source] = candidate
    return out


def write_scan_outputs(
    result: Result,
    out_dir: str | os.PathLike[str],
    kinds: str | Sequence[str],
    segmenter: ModelRef,
    stem: str | None = None,
) -> dict[str, Path]:
    """Write one scan's outputs under ``out_dir``, all or nothing (see the module docstring).

    Args:
        result: a :class:`~bcedge.pipeline.Result` from ``segmenter``.
        out_dir: destination folder (created when missing).
        kinds: subset of :data:`bcedge.outputs.OUTPUT_KINDS` (``"mask,json"`` or a sequence).
        segmenter: the open Segmenter (its ``bundle`` and ``artifact`` name the model in the SEG and JSON).
        stem: output name stem; default :func:`~bcedge.outputs.output_stem` of ``result.source``.

    Returns:
        kind -> path written (also in ``result.outputs``; ``result.timing_ms`` gains ``write``).

    Raises:
        BcedgeError: the outputs could not be written (folder, disk, a SEG the source cannot
            support); nothing under ``out_dir`` changed and ``result.outputs`` is as before.
    """
    from bcedge.outputs import write_outputs

    return write_outputs(
        result, out_dir, kinds, bundle=segmenter.bundle, artifact=getattr(segmenter, "artifact", None), stem=stem
    )


def process_scans(
    segmenter: object,
    scans: Iterable[str | os.PathLike[str] | Mammogram],
    out_dir: str | os.PathLike[str],
    kinds: str | Sequence[str],
    *,
    stems: dict[str, str] | None = None,
    batch_size: int = 1,
) -> Iterator[Result | ScanFailure]:
    """Segment ``scans`` and write each one's outputs; yields one item per scan, in input order.

    Args:
        segmenter: an open :class:`~bcedge.pipeline.Segmenter`.
        scans: paths (or in-memory mammograms, stem ``mammogram``).
        out_dir: output folder.
        kinds: output kinds; empty (``()`` or ``""``): segment only, write nothing (``bcedge batch``
            without outputs).
        stems: source -> stem (default: :func:`unique_stems` of the path inputs).
        batch_size: scans per model call.

    Yields:
        A :class:`~bcedge.pipeline.Result` with its outputs written and ``timing_ms["total"]``
        set, or a :class:`~bcedge.pipeline.ScanFailure` (reading or post-processing failed) or
        :class:`WriteFailure` (writing failed); nothing of a failed scan was written.

    Raises:
        BackendError: the model failed to run (a problem for every scan).
    """
    items = list(scans)
    if stems is None:
        stems = unique_stems([s for s in items if isinstance(s, (str, os.PathLike))])
    for item in segmenter.segment_many(items, batch_size=batch_size):  # type: ignore[attr-defined]
        if isinstance(item, ScanFailure):
            yield item
            continue
        if kinds:
            failure = _write(item, out_dir, kinds, segmenter, stems.get(item.source))  # type: ignore[arg-type]
            if failure is not None:
                yield failure
                continue
        item.timing_ms["total"] = sum(v for k, v in item.timing_ms.items() if k != "total")
        yield item


def run_scan(
    segmenter: object,
    scan: str | os.PathLike[str] | Mammogram,
    out_dir: str | os.PathLike[str],
    kinds: str | Sequence[str],
    *,
    stem: str | None = None,
) -> Result | ScanFailure:
    """Segment one scan and write its outputs: :func:`process_scans` for a single scan.

    Args:
        segmenter: an open :class:`~bcedge.pipeline.Segmenter`.
        scan: a path (or an in-memory mammogram).
        out_dir: output folder.
        kinds: output kinds (empty: write nothing).
        stem: output name stem; default :func:`~bcedge.outputs.output_stem` of the path.

    Returns:
        The :class:`~bcedge.pipeline.Result` (``result.outputs``: kind -> path written), or a
        :class:`~bcedge.pipeline.ScanFailure` / :class:`WriteFailure` (nothing written).

    Raises:
        BackendError: the model failed to run.
    """
    stems = {os.fspath(scan): stem} if stem is not None and isinstance(scan, (str, os.PathLike)) else None
    return next(iter(process_scans(segmenter, [scan], out_dir, kinds, stems=stems, batch_size=1)))


def _write(
    item: Result, out_dir: str | os.PathLike[str], kinds: str | Sequence[str], segmenter: ModelRef, stem: str | None
) -> WriteFailure | None:
    """Write ``item``'s outputs; the failure (nothing written) when that was not possible."""
    try:
        write_scan_outputs(item, out_dir, kinds, segmenter, stem)
    except BcedgeError as exc:
        return WriteFailure(item.source, exc)
    except Exception as exc:  # an encoder's own failure: this scan's problem, not the others'
        error = InputError(
            f"{item.source or 'scan'}: writing its outputs failed ({type(exc).__name__}: {first_line(exc)})"
        )
        error.__cause__ = exc
        return WriteFailure(item.source, error)
    return None


__all__ = ["ModelRef", "WriteFailure", "process_scans", "run_scan", "unique_stems", "write_scan_outputs"]
