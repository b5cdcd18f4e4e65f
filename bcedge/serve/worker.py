"""The worker: spooled scans, in arrival order, through a processing step into the outbox.

The processing step is a callable ``process(source, out_dir) -> {kind: path}`` that writes at
least a ``"seg"`` DICOM file into ``out_dir`` (:func:`bcedge.serve.processing.segmenter_processor`
is the real one; tests inject fakes). For one scan ``spool/<name>.dcm``:

1. count the attempt in ``spool/.attempts.json`` (durably, so a scan that crashes the node is
   seen after the restart);
2. ``process`` into ``work/<name>/``; write ``item.json``; fsync everything;
3. move the scan into ``work/<name>/source.dcm``, then rename ``work/<name>`` to
   ``outbox/<name>`` — the commit. A crash before it rolls back (:func:`~bcedge.serve.spool.recover`
   puts the scan back in the spool), a crash after it leaves a complete outbox item.

Bad input (a :class:`~bcedge.errors.BcedgeError` with exit code 2: unreadable pixels, not a
mammogram bcedge can read, a scan that exceeded its worker's time or memory limit, see
:mod:`bcedge.serve.isolation`) goes to ``quarantine/<name>/`` with ``reason.txt`` and the
worker takes the next scan. Other failures (a backend error, a worker process that died, a
bug) are retried after a pause that belongs to that scan alone (:class:`WorkQueue`): the other
scans go on meanwhile. After ``max_process_attempts`` attempts (counted on disk, so attempts cut
short by a ``kill -9`` of the node count too) the scan is quarantined, at the latest when the
node starts again, so one scan never blocks the queue for ever.

Several workers (one thread each, each with its own worker process) share one
:class:`WorkQueue`, which hands each scan to one of them. A running worker hands step 3 (and the
``item.json`` write and fsyncs of step 2) to its own commit thread and takes the next scan at
once, so its process segments while the disk syncs; the scan stays held (no other worker takes
it) until its commit is done, and one commit at a time is outstanding per worker. A crash in
that moment leaves what a crash before the commit always left: the scan back in the spool.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bcedge.errors import BcedgeError
from bcedge.serve.fsutil import fsync_tree, move_durable, remove_tree, write_durable, write_json_durable
from bcedge.serve.redact import escape_controls
from bcedge.serve.spool import Attempts, Layout, Spool, parse_seq
from bcedge.serve.state import NodeState

LOG = logging.getLogger("bcedge.serve")

#: ``process(source_path, out_dir) -> {output kind: path inside out_dir}``; must include ``"seg"``.
Processor = Callable[[Path, Path], Mapping[str, Path]]


def _one_line(exc: BaseException) -> str:
    """``Type: first line of the message``, control characters escaped (it goes to logs and reason.txt)."""
    text = str(exc).strip().splitlines()
    return escape_controls(f"{type(exc).__name__}: {text[0] if text else ''}".strip())


def read_uids(path: Path) -> dict[str, str]:
    """SOP Class/Instance UID and transfer syntax of a DICOM file (header only), '' when absent.

    For a SEG, also the image it references (``referenced_sop_instance_uid`` and
    ``referenced_sop_class_uid``, from the first item of its Referenced Series Sequence; '' when
    absent): the worker takes the source's UIDs from there, so the scan is not read again.
    """
    import pydicom

    tags = ["SOPClassUID", "SOPInstanceUID", "ReferencedSeriesSequence"]
    ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=tags)
    meta = getattr(ds, "file_meta", None)
    referenced: Any = None
    with contextlib.suppress(AttributeError, IndexError, KeyError, TypeError):  # not a SEG, or no reference
        referenced = ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    return {
        "sop_class_uid": str(ds.get("SOPClassUID", "") or ""),
        "sop_instance_uid": str(ds.get("SOPInstanceUID", "") or ""),
        "transfer_syntax_uid": str(getattr(meta, "TransferSyntaxUID", "") or "") if meta is not None else "",
        "referenced_sop_instance_uid": str(referenced.get("ReferencedSOPInstanceUID", "") or "") if referenced else "",
        "referenced_sop_class_uid": str(referenced.get("ReferencedSOPClassUID", "") or "") if referenced else "",
    }


@dataclass
class _Backoff:
    failures: int = 0
    next_at: float = 0.0


class WorkQueue:
    """Which spooled scan each worker takes next: the oldest one no other worker holds and not waiting.

    A scan whose processing failed waits ``min(max_pause_s, retry_pause_s * 2 ** (failures - 1))``
    before it is taken again; the wait is that scan's own, so the scans behind it are not held.
    Thread-safe.
    """

    def __init__(self, layout: Layout, spool: Spool, *, retry_pause_s: float = 1.0, max_pause_s: float = 60.0) -> None:
        self.spool = spool
        self.retry_pause_s = retry_pause_s
        self.max_pause_s = max_pause_s
        self.attempts = Attempts(layout.attempts_file)
        self.attempts.prune({p.stem for p in spool.pending()})
        self._lock = threading.Lock()
        self._held: set[str] = set()
        self._backoff: dict[str, _Backoff] = {}

    def claim(self, now: float | None = None) -> Path | None:
        """The oldest spooled scan that is free and due, now held by the caller; None when there is none."""
        now = time.monotonic() if now is None else now
        pending = self.spool.pending()
        with self._lock:
            names = {p.stem for p in pending}
            for gone in [n for n in self._backoff if n not in names]:
                del self._backoff[gone]
            for path in pending:
                name = path.stem
                backoff = self._backoff.get(name)
                if name in self._held or (backoff is not None and backoff.next_at > now):
                    continue
                self._held.add(name)
                return path
        return None

    def release(self, name: str) -> None:
        """The caller is done with ``name`` (processed, quarantined, or failed and waiting)."""
        with self._lock:
            self._held.discard(name)

    def failed(self, name: str, now: float | None = None) -> float:
        """Count a failure of ``name``; returns its wait in seconds before it is taken again."""
        now = time.monotonic() if now is None else now
        with self._lock:
            backoff = self._backoff.setdefault(name, _Backoff())
            backoff.failures += 1
            wait = min(self.max_pause_s, self.retry_pause_s * 2 ** min(backoff.failures - 1, 16))
            backoff.next_at = now + wait
            return wait

    def forget(self, name: str) -> None:
        """``name`` left the spool: drop its wait."""
        with self._lock:
            self._backoff.pop(name, None)

    def idle_wait(self, default: float = 1.0, now: float | None = None) -> float:
        """Seconds until the soonest waiting scan is due (at most ``default``)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            soonest = min((b.next_at for b in self._backoff.values()), default=now + default)
        return float(min(default, max(0.01, soonest - now)))


class Worker(threading.Thread):
    """Background thread moving scans from the spool to the outbox (or quarantine).

    Args:
        layout: the node's folders.
        spool: the intake (for its wake-ups).
        process: the processing step (see :data:`Processor`); an
            :class:`~bcedge.serve.isolation.IsolatedProcessor` runs it in a worker process.
        state: counters and errors.
        max_attempts: processing attempts before a scan is quarantined.
        on_item: called after each committed outbox item (wakes the sender).
        retry_pause_s: first pause of a scan after a failure that is not the scan's fault
            (doubles per failure of that scan, max 60 s); ignored when ``queue`` is given.
        queue: shared with the other workers of the node; None: a queue of this worker alone.
        name: thread name.
    """

    def __init__(
        self,
        layout: Layout,
        spool: Spool,
        process: Processor,
        state: NodeState,
        *,
        max_attempts: int = 2,
        on_item: Callable[[], None] | None = None,
        retry_pause_s: float = 1.0,
        queue: WorkQueue | None = None,
        name: str = "bcedge-serve-worker",
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.layout = layout
        self.spool = spool
        self.process = process
        self.state = state
        self.max_attempts = max_attempts
        self.on_item = on_item or (lambda: None)
        self.queue = queue or WorkQueue(layout, spool, retry_pause_s=retry_pause_s)
        self.attempts = self.queue.attempts
        self._stop_event = threading.Event()
        #: The commit thread while :meth:`run` runs (None: commits are done in :meth:`step` itself).
        self._committer: ThreadPoolExecutor | None = None
        self._pending: Future[None] | None = None
        #: The last scan whose processing returned (its attempt count is dropped at the next begin).
        self._finished: str | None = None

    def stop(self) -> None:
        """Ask the thread to finish after the current scan."""
        self._stop_event.set()
        self.spool.wake()

    def run(self) -> None:
        # Commits run on a second thread, so that this worker's process segments the next scan while
        # the last one's files are fsync'd and renamed into the outbox (~13 fsyncs: ~50 ms on the
        # node's disk, 10 % of a 512 px scan's time, during which the process had nothing to do).
        self._committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{self.name}-commit")
        try:
            while not self._stop_event.is_set():
                try:
                    busy = self.step()
                except Exception as exc:  # a bug or a file system error outside one scan; keep the node alive
                    LOG.exception("worker: unexpected error")
                    self.state.error("worker", _one_line(exc))
                    busy = False
                    self._stop_event.wait(1.0)
                if not busy:
                    self.spool.wait(self.queue.idle_wait())
        finally:
            self._wait_commit()
            self._committer.shutdown(wait=True)
            self._committer = None

    def quarantine_poison(self) -> int:
        """Quarantine every spooled scan already tried ``max_attempts`` times (run at start); returns how many."""
        count = 0
        for source in self.spool.pending():
            previous = self.attempts.get(source.stem)
            if previous >= self.max_attempts:
                self._quarantine(source, source.stem, _poison_reason(previous))
                count += 1
        return count

    def step(self) -> bool:
        """Process the oldest free spooled scan, if any; returns False when none was due.

        Called by :meth:`run`, a processed scan's commit into the outbox goes on in the background
        while the next scan is processed (one commit at a time; the scan stays held, so no other
        worker takes it, until its commit is done). Called directly, the commit is done on return.
        """
        source = self.queue.claim()
        if source is None:
            return False
        name = source.stem
        commit = None
        try:
            commit = self._process_one(source, name)
        finally:
            if commit is None:
                self.queue.release(name)
        if commit is not None:
            self._wait_commit()  # the previous scan's commit, done long ago in practice
            if self._committer is None:
                self._commit(name, commit)
            else:
                self._pending = self._committer.submit(self._commit, name, commit)
        return True

    def _wait_commit(self) -> None:
        """Wait until the commit handed to the commit thread (if any) is done."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()  # _commit never raises

    def _commit(self, name: str, commit: Callable[[], None]) -> None:
        """Run one scan's commit, then release the scan; an error is logged (the item is recovered at start)."""
        try:
            commit()
        except Exception as exc:  # a file system error: the next start rolls the work folder back
            LOG.exception("worker: committing %s failed", name)
            self.state.error("worker", f"{name}: commit failed: {_one_line(exc)}")
        finally:
            self.queue.release(name)

    def _process_one(self, source: Path, name: str) -> Callable[[], None] | None:
        """Process one scan; returns its commit into the outbox, or None when it was handled here
        (quarantined, or failed and waiting for its retry)."""
        previous = self.attempts.get(name)
        if previous >= self.max_attempts:
            self._quarantine(source, name, _poison_reason(previous))
            return None
        # The previous scan's processing ended without stopping its worker: its count goes in this write.
        finished, self._finished = self._finished, None
        self.attempts.begin(name, finished=finished)
        work = self.layout.work / name
        remove_tree(work)
        work.mkdir(parents=True)
        received_at = source.stat().st_mtime
        started_at = time.time()
        t0 = time.perf_counter()
        try:
            outputs = dict(self.process(source, work))
        except BcedgeError as exc:
            remove_tree(work)
            if exc.exit_code == 2:  # the scan's fault: quarantine it now
                self._quarantine(source, name, _one_line(exc))
                return None
            self._failed(name, exc)
            return None
        except Exception as exc:
            remove_tree(work)
            self._failed(name, exc)
            return None
        elapsed_ms = (time.perf_counter() - t0) * 1000.0
        seg = outputs.get("seg")
        if seg is None or Path(seg).parent.resolve() != work.resolve() or not Path(seg).is_file():
            remove_tree(work)
            self._failed(name, RuntimeError(f"the processing step wrote no SEG into {work}: {outputs}"))
            return None
        # From here on a crash is not this scan's doing: the next attempts.begin (or the commit) drops
        # its count, so a kill -9 while it commits does not bring it nearer to quarantine.
        self._finished = name
        seg_uids = read_uids(Path(seg))
        # The SEG references the image it was made from (its real SOP class included), so the scan is
        # not read from disk again; only a processing step whose SEG lacks the reference costs a read.
        source_uids = {
            "sop_instance_uid": seg_uids["referenced_sop_instance_uid"],
            "sop_class_uid": seg_uids["referenced_sop_class_uid"],
        }
        if not source_uids["sop_instance_uid"]:
            try:
                source_uids = read_uids(source)
            except Exception:  # the SEG was made from it, so this is unlikely; keep going without the UID
                source_uids = {"sop_instance_uid": "", "sop_class_uid": ""}
        item = {
            "name": name,
            "seq": parse_seq(name),
            "source_sop_instance_uid": source_uids["sop_instance_uid"],
            "source_sop_class_uid": source_uids["sop_class_uid"],
            "seg_sop_instance_uid": seg_uids["sop_instance_uid"],
            "seg_sop_class_uid": seg_uids["sop_class_uid"],
            "seg_transfer_syntax_uid": seg_uids["transfer_syntax_uid"],
            "received_at": received_at,
            "started_at": started_at,
            "processed_at": time.time(),
            "process_ms": round(elapsed_ms, 1),
            # Where process_ms went, measured in the worker process (decode ... write, and "worker":
            # its whole call there; the rest of process_ms is the pipe and this thread).
            "stages_ms": dict(getattr(self.process, "last_timing_ms", None) or {}),
            "worker": self.name,
            "outputs": {kind: Path(path).name for kind, path in outputs.items()},
        }

        def commit() -> None:
            write_json_durable(work / "item.json", item)
            fsync_tree(work)
            move_durable(source, work / "source.dcm")
            move_durable(work, self.layout.outbox / name)  # the commit
            self.attempts.clear(name)
            self.queue.forget(name)
            self.state.count("processed")
            stages = item["stages_ms"]
            LOG.info(
                "processed %s sop=%s seg=%s in %.0f ms (waited %.0f ms since receipt)%s",
                name,
                item["source_sop_instance_uid"],
                item["seg_sop_instance_uid"],
                elapsed_ms,
                max(0.0, started_at - received_at) * 1000.0,
                f"; {', '.join(f'{k} {v:.0f}' for k, v in stages.items())} ms" if stages else "",
            )
            self.on_item()

        return commit

    def _failed(self, name: str, exc: BaseException) -> None:
        """A failure that may not be the scan's fault: this scan waits, then is retried (attempts are counted)."""
        wait = self.queue.failed(name)
        self.state.count("process_failures")
        message = (
            f"{name}: processing failed (attempt {self.attempts.get(name)}/{self.max_attempts}; "
            f"retried in {wait:.1f} s): {_one_line(exc)}"
        )
        LOG.error("worker: %s", message)
        self.state.error("worker", message)

    def _quarantine(self, source: Path, name: str, reason: str) -> None:
        work = self.layout.work / name
        remove_tree(work)
        work.mkdir(parents=True)
        write_durable(work / "reason.txt", (reason + "\n").encode("utf-8"))
        move_durable(source, work / "source.dcm")
        move_durable(work, self.layout.quarantine / name)
        self.attempts.clear(name)
        self.queue.forget(name)
        self.state.count("quarantined")
        LOG.warning("quarantined %s: %s", name, reason)
        self.state.error("worker", f"{name} quarantined: {reason}")


def _poison_reason(attempts: int) -> str:
    return (
        f"processing was started {attempts} times without finishing (it failed, or the node or its worker "
        "process stopped mid-scan); not retried automatically"
    )
