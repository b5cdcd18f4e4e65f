"""The node's folders, arrival order and crash recovery.

Layout under ``[storage] root`` (one file system, so every move is an atomic rename)::

    spool/.incoming/*.part        a C-STORE being written (deleted at start: never acknowledged)
    spool/<seq>_<h>.dcm           acknowledged scans waiting for the worker, oldest ``seq`` first
    spool/.attempts.json          processing attempts per scan (a scan that keeps crashing the node
                                  is quarantined instead of blocking the queue)
    work/<seq>_<h>/               an item being built by the worker (deleted or rolled back at start)
    outbox/<seq>_<h>/             processed: source.dcm, the SEG (+ JSON/overlay), item.json;
                                  delivery.json and reason.txt once sends have failed
    done/<seq>_<h>/               delivered (same files + delivery.json), pruned by retention
    quarantine/<seq>_<h>/         bad input: source.dcm + reason.txt
    state.json                    counters and last errors for ``bcedge serve status``

``seq`` is a 12-digit counter assigned when a scan becomes durable, under a lock, so name
order is acknowledgement order even with several associations at once; ``h`` is the first
10 hex digits of SHA-256 of the SOP Instance UID (names carry no patient data).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

from bcedge.serve.fsutil import fsync_path, move_durable, read_json, remove_tree, write_json_durable, write_temp

LOG = logging.getLogger("bcedge.serve")

SEQ_DIGITS = 12
_NAME = re.compile(r"^(\d{12})_([0-9a-f]{10})$")


class SpoolFullError(OSError):
    """The spool cannot take a scan: too little free space (answered with 0xA700)."""


def uid_hash(uid: str) -> str:
    """First 10 hex digits of SHA-256 of a UID: a short, patient-free handle for names and logs."""
    return hashlib.sha256(uid.encode("ascii", "replace")).hexdigest()[:10]


def item_name(seq: int, sop_uid: str) -> str:
    """``<seq, 12 digits>_<uid_hash>``: the name of a scan's spool file (+ ``.dcm``) and item folders."""
    return f"{seq:0{SEQ_DIGITS}d}_{uid_hash(sop_uid)}"


def parse_seq(name: str) -> int | None:
    """The ``seq`` of an item name (a ``.dcm`` suffix allowed), or None for other names."""
    m = _NAME.match(name.removesuffix(".dcm"))
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class Layout:
    """The node's folders under one root."""

    root: Path

    @property
    def spool(self) -> Path:
        return self.root / "spool"

    @property
    def incoming(self) -> Path:
        return self.spool / ".incoming"

    @property
    def attempts_file(self) -> Path:
        return self.spool / ".attempts.json"

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def outbox(self) -> Path:
        return self.root / "outbox"

    @property
    def done(self) -> Path:
        return self.root / "done"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    def create(self) -> Layout:
        """Make the folders (and sync their names to disk); returns self."""
        for folder in (self.incoming, self.work, self.outbox, self.done, self.quarantine):
            folder.mkdir(parents=True, exist_ok=True)
        for folder in (self.spool, self.root):
            fsync_path(folder)
        return self

    @staticmethod
    def items(folder: Path, suffix: str = "") -> list[Path]:
        """Item entries of ``folder`` (files with ``suffix``, or folders when it is empty), oldest seq first."""
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            return []
        out = [
            Path(e.path)
            for e in entries
            if e.name.endswith(suffix)
            and parse_seq(e.name) is not None
            and (e.is_dir(follow_symlinks=False) if not suffix else e.is_file(follow_symlinks=False))
        ]
        return sorted(out, key=lambda p: p.name)

    def counts(self) -> dict[str, int]:
        """Queue lengths read from disk: spool, outbox, failed (outbox items with reason.txt), done, quarantine."""
        outbox = self.items(self.outbox)
        return {
            "spool": len(self.items(self.spool, ".dcm")),
            "outbox": len(outbox),
            "failed": sum(1 for p in outbox if (p / "reason.txt").exists()),
            "done": len(self.items(self.done)),
            "quarantine": len(self.items(self.quarantine)),
        }

    def max_seq(self) -> int:
        """The highest seq on disk in any folder (-1 when there is none)."""
        best = -1
        for folder in (self.spool, self.work, self.outbox, self.done, self.quarantine):
            try:
                names = os.listdir(folder)
            except FileNotFoundError:
                continue
            for name in names:
                seq = parse_seq(name)
                if seq is not None and seq > best:
                    best = seq
        return best


class Spool:
    """Durable intake: :meth:`put` returns only once the scan is on disk under its ordered name.

    Thread-safe; C-STORE handlers of several associations call :meth:`put` at once and the
    worker waits on :meth:`wait`.
    """

    def __init__(self, layout: Layout, *, min_free_bytes: int = 0) -> None:
        self.layout = layout
        self.min_free_bytes = min_free_bytes
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._next = layout.max_seq() + 1

    def put(self, data: bytes, sop_uid: str) -> Path:
        """Store one encoded dataset (DICOM file bytes) durably; returns its spool path.

        Raises:
            SpoolFullError: storing would leave less than ``min_free_bytes`` free.
            OSError: the file system refused (full, read-only, I/O error); nothing is left behind.
        """
        free = shutil.disk_usage(self.layout.incoming).free
        if free - len(data) < self.min_free_bytes:
            raise SpoolFullError(
                f"spool has {free // 2**20} MiB free; a {len(data) // 2**20} MiB scan would leave less than "
                f"{self.min_free_bytes // 2**20} MiB"
            )
        tmp = write_temp(self.layout.incoming, data)
        try:
            with self._lock:
                # The number is taken at the rename, under the lock: name order == acknowledgement order.
                final = self.layout.spool / f"{item_name(self._next, sop_uid)}.dcm"
                os.rename(tmp, final)
                self._next += 1
            fsync_path(self.layout.spool)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        with self._cond:
            self._cond.notify_all()
        return final

    def pending(self) -> list[Path]:
        """Acknowledged scans waiting for the worker, in arrival order."""
        return self.layout.items(self.layout.spool, ".dcm")

    def wait(self, timeout: float) -> None:
        """Block until :meth:`put` stores a scan or ``timeout`` seconds pass."""
        with self._cond:
            self._cond.wait(timeout)

    def wake(self) -> None:
        """Wake threads blocked in :meth:`wait` (used at shutdown)."""
        with self._cond:
            self._cond.notify_all()


def recover(layout: Layout) -> dict[str, int]:
    """Bring the folders back to a consistent state after a crash (run before serving).

    - ``spool/.incoming/*.part``: deleted (the sender never got a success status for them).
    - ``work/<name>/`` with ``source.dcm``: the worker crashed between taking the scan and
      committing the item; the scan goes back to ``spool/`` and will be processed again (the SEG
      UID is deterministic, and nothing of this item was sent).
    - ``work/<name>/`` without it: deleted (the scan is still in ``spool/``).

    Returns:
        What was done: ``{"partial_uploads": n, "rolled_back": n, "work_deleted": n}``.
    """
    report = {"partial_uploads": 0, "rolled_back": 0, "work_deleted": 0}
    for part in layout.incoming.glob("*.part"):
        part.unlink(missing_ok=True)
        report["partial_uploads"] += 1
    for item in sorted(layout.work.iterdir()) if layout.work.is_dir() else []:
        source = item / "source.dcm"
        if source.is_file() and parse_seq(item.name) is not None:
            move_durable(source, layout.spool / f"{item.name}.dcm")
            report["rolled_back"] += 1
        else:
            report["work_deleted"] += 1
        remove_tree(item)
    if any(report.values()):
        fsync_path(layout.work)
        LOG.warning("recovered after an unclean stop: %s", report)
    return report


class Attempts:
    """Processing attempts per spooled scan, on disk, so a scan that crashes the node is noticed after restart."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()  # several worker threads count attempts
        data = read_json(path, {})
        self._counts: dict[str, int] = {
            k: int(v) for k, v in (data.items() if isinstance(data, dict) else []) if isinstance(v, int)
        }

    def get(self, name: str) -> int:
        return self._counts.get(name, 0)

    def begin(self, name: str, *, finished: str | None = None) -> int:
        """Count one more attempt for ``name`` (durably, before the attempt); returns the new count.

        Args:
            name: the scan about to be processed.
            finished: a scan whose processing has just ended (its outputs are being committed):
                its count is dropped in the same write, so one write serves both and a crash
                while it commits does not count against it (it did not stop its worker).
        """
        with self._lock:
            if finished is not None and finished != name:
                self._counts.pop(finished, None)
            self._counts[name] = self._counts.get(name, 0) + 1
            write_json_durable(self.path, self._counts)
            return self._counts[name]

    def prune(self, keep: set[str]) -> None:
        """Forget names no longer in the spool (left over by a crash after an item was committed)."""
        with self._lock:
            stale = [k for k in self._counts if k not in keep]
            for k in stale:
                del self._counts[k]
            if stale:
                write_json_durable(self.path, self._counts)

    def clear(self, name: str) -> None:
        """Forget ``name`` (it left the spool)."""
        with self._lock:
            if self._counts.pop(name, None) is not None:
                write_json_durable(self.path, self._counts)
