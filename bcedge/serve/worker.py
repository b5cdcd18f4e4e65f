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
mammogram bcedge can read, ...) goes to ``quarantine/<name>/`` with ``reason.txt`` and the
worker takes the next scan. Other failures (a backend error, a bug) are retried with a pause;
after ``max_process_attempts`` attempts the scan is quarantined too, so one scan never blocks
the queue for ever.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from bcedge.errors import BcedgeError
from bcedge.serve.fsutil import fsync_tree, move_durable, remove_tree, write_durable, write_json_durable
from bcedge.serve.spool import Attempts, Layout, Spool, parse_seq
from bcedge.serve.state import NodeState

LOG = logging.getLogger("bcedge.serve")

#: ``process(source_path, out_dir) -> {output kind: path inside out_dir}``; must include ``"seg"``.
Processor = Callable[[Path, Path], Mapping[str, Path]]


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()


def read_uids(path: Path) -> dict[str, str]:
    """SOP Class/Instance UID and transfer syntax of a DICOM file (header only), '' when absent."""
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID"])
    meta = getattr(ds, "file_meta", None)
    return {
        "sop_class_uid": str(ds.get("SOPClassUID", "") or ""),
        "sop_instance_uid": str(ds.get("SOPInstanceUID", "") or ""),
        "transfer_syntax_uid": str(getattr(meta, "TransferSyntaxUID", "") or "") if meta is not None else "",
    }


class Worker(threading.Thread):
    """Background thread moving scans from the spool to the outbox (or quarantine).

    Args:
        layout: the node's folders.
        spool: the intake (for its wake-ups).
        process: the processing step (see :data:`Processor`).
        state: counters and errors.
        max_attempts: processing attempts before a scan is quarantined.
        on_item: called after each committed outbox item (wakes the sender).
        retry_pause_s: first pause after a failure that is not the scan's fault (doubles, max 60 s).
    """

    def __init__(
        self,
        layout: Layout,
        spool: Spool,
        process: Processor,
        state: NodeState,
        *,
        max_attempts: int = 3,
        on_item: Callable[[], None] | None = None,
        retry_pause_s: float = 1.0,
    ) -> None:
        super().__init__(name="bcedge-serve-worker", daemon=True)
        self.layout = layout
        self.spool = spool
        self.process = process
        self.state = state
        self.max_attempts = max_attempts
        self.on_item = on_item or (lambda: None)
        self.retry_pause_s = retry_pause_s
        self.attempts = Attempts(layout.attempts_file)
        self.attempts.prune({p.stem for p in spool.pending()})
        self._stop_event = threading.Event()
        self._failures = 0

    def stop(self) -> None:
        """Ask the thread to finish after the current scan."""
        self._stop_event.set()
        self.spool.wake()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                busy = self.step()
            except Exception as exc:  # a bug or a file system error; keep the node alive and retry
                LOG.exception("worker: unexpected error")
                self.state.error("worker", _one_line(exc))
                busy = False
                self._stop_event.wait(min(60.0, self.retry_pause_s * 2 ** min(self._failures, 6)))
                self._failures += 1
            if not busy:
                self.spool.wait(1.0)

    def step(self) -> bool:
        """Process the oldest spooled scan, if any; returns False when the spool was empty."""
        pending = self.spool.pending()
        if not pending:
            return False
        source = pending[0]
        name = source.stem
        previous = self.attempts.get(name)
        if previous >= self.max_attempts:
            self._quarantine(
                source, name, f"processing failed or stopped the node {previous} times; not retried automatically"
            )
            return True
        self.attempts.begin(name)
        work = self.layout.work / name
        remove_tree(work)
        work.mkdir(parents=True)
        received_at = source.stat().st_mtime
        t0 = time.perf_counter()
        try:
            outputs = dict(self.process(source, work))
        except BcedgeError as exc:
            remove_tree(work)
            if exc.exit_code == 2:  # the scan's fault: quarantine it now
                self._quarantine(source, name, _one_line(exc))
                return True
            return self._failed(name, exc)
        except Exception as exc:
            remove_tree(work)
            return self._failed(name, exc)
        elapsed_ms = (time.perf_counter() - t0) * 1000.0
        seg = outputs.get("seg")
        if seg is None or Path(seg).parent.resolve() != work.resolve() or not Path(seg).is_file():
            remove_tree(work)
            return self._failed(name, RuntimeError(f"the processing step wrote no SEG into {work}: {outputs}"))
        try:
            source_uids = read_uids(source)
        except Exception:  # the SEG was made from it, so this is unlikely; keep going without the UID
            source_uids = {"sop_instance_uid": "", "sop_class_uid": "", "transfer_syntax_uid": ""}
        seg_uids = read_uids(Path(seg))
        item = {
            "name": name,
            "seq": parse_seq(name),
            "source_sop_instance_uid": source_uids["sop_instance_uid"],
            "source_sop_class_uid": source_uids["sop_class_uid"],
            "seg_sop_instance_uid": seg_uids["sop_instance_uid"],
            "seg_sop_class_uid": seg_uids["sop_class_uid"],
            "seg_transfer_syntax_uid": seg_uids["transfer_syntax_uid"],
            "received_at": received_at,
            "processed_at": time.time(),
            "process_ms": round(elapsed_ms, 1),
            "outputs": {kind: Path(path).name for kind, path in outputs.items()},
        }
        write_json_durable(work / "item.json", item)
        fsync_tree(work)
        move_durable(source, work / "source.dcm")
        move_durable(work, self.layout.outbox / name)  # the commit
        self.attempts.clear(name)
        self._failures = 0
        self.state.count("processed")
        LOG.info(
            "processed %s sop=%s seg=%s in %.0f ms",
            name,
            item["source_sop_instance_uid"],
            item["seg_sop_instance_uid"],
            elapsed_ms,
        )
        self.on_item()
        return True

    def _failed(self, name: str, exc: BaseException) -> bool:
        """A failure that may not be the scan's fault: pause, then retry (attempts are counted)."""
        self._failures += 1
        self.state.count("process_failures")
        message = f"{name}: processing failed (attempt {self.attempts.get(name)}/{self.max_attempts}): {_one_line(exc)}"
        LOG.error("worker: %s", message)
        self.state.error("worker", message)
        self._stop_event.wait(min(60.0, self.retry_pause_s * 2 ** min(self._failures - 1, 6)))
        return True

    def _quarantine(self, source: Path, name: str, reason: str) -> None:
        work = self.layout.work / name
        remove_tree(work)
        work.mkdir(parents=True)
        write_durable(work / "reason.txt", (reason + "\n").encode("utf-8"))
        move_durable(source, work / "source.dcm")
        move_durable(work, self.layout.quarantine / name)
        self.attempts.clear(name)
        self.state.count("quarantined")
        LOG.warning("quarantined %s: %s", name, reason)
        self.state.error("worker", f"{name} quarantined: {reason}")
