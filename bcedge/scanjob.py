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
- **Pipelined, same results.** With several scans, :func:`process_scans` overlaps the stages of
  different scans on three threads (OpenCV, NumPy and the TFLite/ONNX runtimes release the GIL
  while they work): one reads and preprocesses the next scans, one runs the model on a batch,
  one post-processes and writes the previous ones. Every stage is the same call as in the serial
  path, the batches are the same blocks of ``batch_size`` consecutive inputs, each stage takes
  scans in input order, so results, outputs, failures and their order are those of the serial
  path (``pipelined=False``; one scan always runs serially: nothing to overlap); a model of fixed
  batch 1 gets each scan as soon as it is read (the serial path's calls, one per scan). At most
  ``max_in_flight`` scans (default ``3 * batch_size``: one batch being read, one in the model,
  one being written) are between the start of their reading and their hand-over to the caller,
  which bounds memory (~40 MB per full-field scan). **Two interpreters**: a LiteRT Segmenter
  with 2 threads or more lends the job two interpreters of half its threads each
  (:meth:`~bcedge.pipeline.Segmenter._model_pool`, one more interpreter's memory); each batch
  goes to a free one, the writer takes the batches in input order, and the default bound is
  ``4 * batch_size`` (one batch more in the model). Same artifact, same options: the same
  probabilities (FP16 on XNNPACK: bit-identical, tested), 1.10x the scans per second of one
  2-thread interpreter on a 2-core AVX2 machine (README, issue #14). A model failure still raises, after every
  scan before its batch was handed over; closing the generator early stops the threads.
- **Names.** :func:`unique_stems` gives each input its output stem: the file name without an
  image suffix, cut with a hash suffix when long (:func:`bcedge.outputs.shorten_stem`), with
  ``_2``, ``_3``... when two inputs share one. The same inputs in the same order always give
  the same names.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from bcedge.errors import BcedgeError, ConfigError, InputError, first_line
from bcedge.pipeline import Result, ScanFailure, _source_of, _unexpected

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
    pipelined: bool = True,
    max_in_flight: int | None = None,
) -> Iterator[Result | ScanFailure]:
    """Segment ``scans`` and write each one's outputs; yields one item per scan, in input order.

    Args:
        segmenter: an open :class:`~bcedge.pipeline.Segmenter` (an object with only
            ``segment_many``, such as a test double, runs serially).
        scans: paths (or in-memory mammograms, stem ``mammogram``).
        out_dir: output folder.
        kinds: output kinds; empty (``()`` or ``""``): segment only, write nothing (``bcedge batch``
            without outputs).
        stems: source -> stem (default: :func:`unique_stems` of the path inputs).
        batch_size: scans per model call (blocks of consecutive inputs, failures included).
        pipelined: overlap reading, the model and writing on threads (see the module docstring);
            False: every stage of every scan on the calling thread, one batch after the other.
        max_in_flight: most scans between the start of their reading and their hand-over to
            the caller when pipelined (default ``3 * batch_size``, ``4 * batch_size`` with two
            interpreters; at least ``batch_size``).

    Yields:
        A :class:`~bcedge.pipeline.Result` with its outputs written and ``timing_ms["total"]``
        set (the sum of its stages), or a :class:`~bcedge.pipeline.ScanFailure` (reading or
        post-processing failed) or :class:`WriteFailure` (writing failed); nothing of a failed
        scan was written.

    Raises:
        ConfigError: ``batch_size`` or ``max_in_flight`` is not a positive integer, or
            ``max_in_flight < batch_size`` (a batch could never fill).
        BackendError: the model failed to run (a problem for every scan).
    """
    _check_positive("batch_size", batch_size)
    if max_in_flight is not None:
        _check_positive("max_in_flight", max_in_flight)
        if max_in_flight < batch_size:
            raise ConfigError(f"max_in_flight is {max_in_flight}; it must be at least batch_size ({batch_size})")
    items = list(scans)
    if stems is None:
        stems = unique_stems([s for s in items if isinstance(s, (str, os.PathLike))])
    if pipelined and len(items) > 1 and all(callable(getattr(segmenter, n, None)) for n in _STAGE_METHODS):
        lend = getattr(segmenter, "_model_pool", None)
        pool = list(lend()) if callable(lend) else []
        if max_in_flight is None:  # a batch being read, one being written, one in each interpreter
            max_in_flight = (2 + max(1, len(pool))) * batch_size
        yield from _Pipeline(segmenter, items, out_dir, kinds, stems, batch_size, max_in_flight, pool).run()
        return
    for item in segmenter.segment_many(items, batch_size=batch_size):  # type: ignore[attr-defined]
        if isinstance(item, ScanFailure):
            yield item
            continue
        yield _write_and_total(item, out_dir, kinds, segmenter, stems)  # type: ignore[arg-type]


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


def _check_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} is {value!r}; expected a positive integer")


def _write_and_total(
    item: Result,
    out_dir: str | os.PathLike[str],
    kinds: str | Sequence[str],
    segmenter: ModelRef,
    stems: dict[str, str],
) -> Result | WriteFailure:
    """The last step of every scan, serial or pipelined: write its outputs (when ``kinds``), then its total."""
    if kinds:
        failure = _write(item, out_dir, kinds, segmenter, stems.get(item.source))
        if failure is not None:
            return failure
    item.timing_ms["total"] = sum(v for k, v in item.timing_ms.items() if k != "total")
    return item


#: The Segmenter's stage methods the pipeline drives (the same ones ``segment_many`` runs).
_STAGE_METHODS = ("_prepare", "_infer", "_finish")


class _Raise:
    """A thread's exception, handed to the caller's thread in its place in the stream."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_END = object()  # a stage's last item: the stage before it has finished


class _Block:
    """A batch handed to one of the pool's interpreters: its items (in input order) and the future of
    its model call; the writer waits for the future in the block's turn, so order needs no sorting."""

    def __init__(self, items: list[Any], future: Future[tuple[np.ndarray, float]] | None) -> None:
        self.items = items
        self.future = future  # None when every item of the block is a ScanFailure

    def entries(self) -> Iterator[Any]:
        """Each item as the one-interpreter path hands it on: a ScanFailure, or (prepared, probability, ms).

        Raises:
            BackendError: the model call failed (re-raised from the interpreter's thread).
        """
        if self.future is not None:
            probs, infer_ms = self.future.result()
            share = infer_ms / sum(not isinstance(item, ScanFailure) for item in self.items)
        k = 0
        for item in self.items:
            if isinstance(item, ScanFailure):
                yield item
            else:
                yield (item, probs[k, :, :, 0], share)
                k += 1


class _Pipeline:
    """Three threads over one Segmenter: read+preprocess -> model (per batch) -> post-process+write.

    Each stage is one thread taking its input in order from a FIFO queue, so order needs no
    sorting. With a pool of interpreters the model thread hands each batch to a free one (an
    executor of one worker per interpreter) and passes the batch on as a :class:`_Block`.

    The bound on memory is a semaphore of ``max_in_flight`` slots: the reader takes one
    before it reads a scan, the caller's thread gives it back when it hands the scan over (the
    queues themselves are unbounded; the slots bound what they can hold).
    """

    def __init__(
        self,
        segmenter: Any,
        items: list[str | os.PathLike[str] | Mammogram],
        out_dir: str | os.PathLike[str],
        kinds: str | Sequence[str],
        stems: dict[str, str],
        batch_size: int,
        max_in_flight: int,
        pool: Sequence[Any] = (),
    ) -> None:
        self.seg = segmenter
        self.items = items
        self.out_dir = out_dir
        self.kinds = kinds
        self.stems = stems
        self.batch_size = batch_size
        # A model of fixed batch 1 runs a block as one call per scan anyway (Backend.predict splits it):
        # handing it each scan as soon as it is read makes the same calls, so the same probabilities,
        # without waiting for the whole block (shorter pipeline fill and drain).
        fixed = getattr(getattr(segmenter, "backend", None), "input_shape", (None,))[0]
        self.model_batch = 1 if fixed == 1 else batch_size
        self.slots = threading.Semaphore(max_in_flight)
        # Held by the reader while it reads a scan (its decoders' stderr goes to the debug log,
        # as on the main thread) and by the caller's thread while it has a result (it may print
        # an error line): the stderr descriptor is process-wide, so the two never overlap.
        self.stderr_owner = threading.Lock()
        self.stop = threading.Event()
        self.prepared: queue.Queue[Any] = queue.Queue()  # _Prepared | ScanFailure | _END
        self.inferred: queue.Queue[Any] = queue.Queue()  # (_Prepared, probability, ms) | ScanFailure | _Raise | _END
        self.done: queue.Queue[Any] = queue.Queue()  # Result | ScanFailure | _Raise | _END
        # Two interpreters or more: a worker per interpreter, each call takes a free one (the queue).
        self.free: queue.Queue[Any] = queue.Queue()
        for backend in pool:
            self.free.put(backend)
        self.executor = ThreadPoolExecutor(len(pool), thread_name_prefix="bcedge-model") if len(pool) >= 2 else None

    def run(self) -> Iterator[Result | ScanFailure]:
        threads = [
            threading.Thread(target=self._read, name="bcedge-read", daemon=True),
            threading.Thread(target=self._model, name="bcedge-model", daemon=True),
            threading.Thread(target=self._post, name="bcedge-write", daemon=True),
        ]
        for thread in threads:
            thread.start()
        try:
            while True:
                item = self.done.get()
                if item is _END:
                    return
                if isinstance(item, _Raise):
                    raise item.exc
                with self.stderr_owner:  # the caller may write to stderr until it asks for the next one
                    self.slots.release()  # handed over: the reader may start another scan
                    yield item
        finally:
            # Normal end, a model failure, or the caller closed the generator early (break,
            # Ctrl-C): stop every stage, wake a reader waiting for a slot, wait for the threads
            # (a stage finishes the call it is in; nothing more is read or written).
            self.stop.set()
            self.slots.release()
            for thread in threads:
                thread.join()
            if self.executor is not None:
                self.executor.shutdown(wait=True)  # a model call in progress ends before its interpreter is reused

    def _read(self) -> None:
        """Stage 1: read and preprocess each scan, in input order; a bad scan becomes its ScanFailure."""
        from bcedge.cstderr import allow_capture_here

        allow_capture_here()  # decoder chatter to the debug log, as on the main thread
        try:
            for index, scan in enumerate(self.items):
                self.slots.acquire()
                if self.stop.is_set():
                    return
                try:
                    with self.stderr_owner:
                        prepared = self.seg._prepare(index, scan)
                    self.prepared.put(prepared)
                except BcedgeError as exc:
                    self.prepared.put(ScanFailure(_source_of(scan), exc))
                except Exception as exc:  # one scan's unforeseen failure must not stop the others
                    self.prepared.put(ScanFailure(_source_of(scan), _unexpected(scan, exc)))
        except BaseException as exc:  # not a scan's failure (SystemExit...): the caller raises it, no scan is lost
            self.prepared.put(_Raise(exc))
        finally:
            self.prepared.put(_END)

    def _model(self) -> None:
        """Stage 2: the model on blocks of ``batch_size`` consecutive inputs (as ``segment_many``; one scan
        at a time for a model of fixed batch 1, the same calls)."""
        try:
            block: list[Any] = []
            while not self.stop.is_set():
                item = self.prepared.get()
                if isinstance(item, _Raise):
                    self.inferred.put(item)
                    break
                if item is not _END:
                    block.append(item)
                if block and (item is _END or len(block) == self.model_batch):
                    self._run_block(block)
                    block = []
                if item is _END:
                    break
        except BaseException as exc:  # BackendError (every scan's problem) or a bug: the caller raises it
            self.inferred.put(_Raise(exc))
        finally:
            self.inferred.put(_END)

    def _run_block(self, block: list[Any]) -> None:
        ready = [item for item in block if not isinstance(item, ScanFailure)]
        if self.executor is not None:
            tensors = [item.tensor for item in ready]
            self.inferred.put(_Block(block, self.executor.submit(self._infer_on_free, tensors) if ready else None))
            return
        if ready:
            probs, infer_ms = self.seg._infer(np.concatenate([item.tensor for item in ready]))
            share = infer_ms / len(ready)
        k = 0
        for item in block:
            if isinstance(item, ScanFailure):
                self.inferred.put(item)
            else:
                self.inferred.put((item, probs[k, :, :, 0], share))
                k += 1

    def _infer_on_free(self, tensors: list[np.ndarray]) -> tuple[np.ndarray, float]:
        """One pool worker's model call: (N, S, S, 1) float32 probabilities and ms, on a free interpreter."""
        backend = self.free.get()
        try:
            return self.seg._infer(np.concatenate(tensors), backend)
        finally:
            self.free.put(backend)

    def _post(self) -> None:
        """Stage 3: post-process and write each scan's outputs, in input order."""
        try:
            while True:
                item = self.inferred.get()
                if item is _END:
                    break
                if self.stop.is_set():
                    continue  # the caller is gone: write nothing more
                # A pool's block: its model call's BackendError is raised here, after every earlier scan
                # was handed on (the except below passes it to the caller), as in the one-interpreter path.
                for entry in item.entries() if isinstance(item, _Block) else (item,):
                    self._post_one(entry)
        except BaseException as exc:  # BackendError from a pool's block, or a bug: raised in the caller's thread
            self.done.put(_Raise(exc))
        finally:
            self.done.put(_END)

    def _post_one(self, item: Any) -> None:
        """Hand on a failure, or post-process and write one scan's outputs."""
        if isinstance(item, (ScanFailure, _Raise)):
            self.done.put(item)
            return
        prepared, probability, infer_ms = item
        try:
            result = self.seg._finish(prepared, probability, infer_ms)
        except BcedgeError as exc:
            self.done.put(ScanFailure(prepared.source, exc))
            return
        except Exception as exc:
            self.done.put(ScanFailure(prepared.source, _unexpected(prepared.source, exc)))
            return
        self.done.put(_write_and_total(result, self.out_dir, self.kinds, self.seg, self.stems))


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
