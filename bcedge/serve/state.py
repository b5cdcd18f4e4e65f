"""Counters, last errors and the small ``state.json`` that ``bcedge serve status`` reads.

Queue lengths are not counted in memory: they are read from the folders, which are the truth
after any crash. Counters are cumulative over restarts (``totals``) and per run (``this_run``).
Error messages stored here name SOP Instance UIDs and item names, never patient data.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from bcedge.serve.fsutil import read_json, write_json_durable
from bcedge.serve.redact import escape_controls
from bcedge.serve.spool import Layout

STATE_VERSION = 1
COUNTERS = (
    "associations_accepted",
    "associations_rejected",
    "echoes",
    "received",
    "refused",
    "processed",
    "quarantined",
    "process_failures",
    "delivered",
    "send_failures",
)
MAX_ERRORS = 20


def _iso(t: float | None) -> str | None:
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


class NodeState:
    """Thread-safe counters and recent errors of a running node, saved to ``state.json``."""

    def __init__(self, layout: Layout, *, info: dict[str, Any] | None = None) -> None:
        self.layout = layout
        self.info = dict(info or {})
        previous = read_json(layout.state_file, {})
        previous = previous if isinstance(previous, dict) else {}
        old_totals = previous.get("totals", {}) if isinstance(previous.get("totals"), dict) else {}
        self.totals = {k: int(old_totals.get(k, 0)) for k in COUNTERS}
        self.this_run = dict.fromkeys(COUNTERS, 0)
        old_errors = previous.get("last_errors", [])
        self.errors: deque[dict[str, Any]] = deque(old_errors if isinstance(old_errors, list) else [], MAX_ERRORS)
        self.started_at = time.time()
        self.last: dict[str, float | None] = {"received": None, "processed": None, "delivered": None}
        self._lock = threading.Lock()
        self._dirty = True
        self._status = "starting"

    def count(self, key: str, n: int = 1) -> None:
        """Add ``n`` to counter ``key`` (one of :data:`COUNTERS`)."""
        with self._lock:
            self.totals[key] += n
            self.this_run[key] += n
            if key in self.last:
                self.last[key] = time.time()
            self._dirty = True

    def error(self, where: str, message: str) -> None:
        """Remember an error (``where``: scp, worker, sender) for the status command."""
        with self._lock:
            self.errors.append({"time": _iso(time.time()), "where": where, "message": escape_controls(message)[:500]})
            self._dirty = True

    def set_status(self, status: str, **info: Any) -> None:
        """``starting``, ``running`` or ``stopped``, plus facts such as the bound port."""
        with self._lock:
            self._status = status
            self.info.update(info)
            self._dirty = True

    def snapshot(self) -> dict[str, Any]:
        """The state as saved: status, pid, counters, queues (from disk), last errors."""
        with self._lock:
            data = {
                "version": STATE_VERSION,
                "status": self._status,
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started_at": _iso(self.started_at),
                "updated_at": _iso(time.time()),
                **self.info,
                "totals": dict(self.totals),
                "this_run": dict(self.this_run),
                "last": {k: _iso(v) for k, v in self.last.items()},
                "last_errors": list(self.errors),
            }
        data["queues"] = self.layout.counts()
        return data

    def save(self, *, force: bool = False) -> None:
        """Write ``state.json`` (atomically) if anything changed since the last save."""
        with self._lock:
            if not (self._dirty or force):
                return
            self._dirty = False
        write_json_durable(self.layout.state_file, self.snapshot())


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user (e.g. the service account)
        return True
    return True


def read_status(root: Path) -> dict[str, Any]:
    """What ``bcedge serve status`` shows: the saved state, live queue lengths and failed items.

    ``running`` is true when the state says so and its process still exists on this host
    (after ``kill -9`` the file still says "running"; the dead pid tells the truth).
    """
    layout = Layout(root)
    saved = read_json(layout.state_file, None)
    data: dict[str, Any] = dict(saved) if isinstance(saved, dict) else {"status": "never started"}
    same_host = data.get("host") in (None, socket.gethostname())
    data["running"] = bool(data.get("status") == "running" and same_host and _pid_alive(data.get("pid")))
    if data.get("status") == "running" and not data["running"]:
        data["status"] = "not running (stopped uncleanly)"
    data["queues"] = layout.counts()
    failed = []
    for item in layout.items(layout.outbox):
        reason = item / "reason.txt"
        if reason.exists():
            try:
                failed.append({"item": item.name, "reason": reason.read_text(encoding="utf-8").strip()[:300]})
            except OSError:
                continue
    data["failed_items"] = failed[:20]
    quarantined = []
    for item in layout.items(layout.quarantine)[-20:]:
        try:
            text = (item / "reason.txt").read_text(encoding="utf-8").strip()[:300]
        except OSError:
            text = "?"
        quarantined.append({"item": item.name, "reason": text})
    data["quarantined_items"] = quarantined
    return data
