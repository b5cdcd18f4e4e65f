"""The sender: outbox items' SEGs to PACS with C-STORE, retries with exponential backoff, then ``done/``.

For each due item (oldest first, up to ``batch_size`` per association) the SEG is sent; on a
success status (0x0000, or a warning 0xB000/0xB006/0xB007: PACS stored it) ``delivery.json``
is written into the item and the item folder is renamed to ``done/``. A crash between PACS's
success and that rename makes the node send the same SEG file again after restart: the same
SOP Instance UID, which PACS treats as the same instance (and the SEG UID is derived from the
source SOP Instance UID and the model, so even a re-processed scan gives the same UID).

Failures: an association that cannot be set up (PACS down, rejected, TLS failure) holds back
every item (the destination waits); a failure status for one SEG holds back that item only.
Either way each item tried gets ``attempts + 1`` and waits
``min(backoff_max_s, backoff_initial_s * 2 ** (attempts - 1))``. After ``max_attempts`` the item
is marked failed: ``reason.txt`` next to it, it stays in the outbox and is tried again every
``retry_failed_every_s``, at the next start, and as soon as any other item is delivered.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_context, evt
from pynetdicom.association import Association

from bcedge.serve.config import DestinationConfig
from bcedge.serve.fsutil import fsync_path, move_durable, read_json, remove_tree, write_durable, write_json_durable
from bcedge.serve.redact import escape_controls
from bcedge.serve.spool import Layout
from bcedge.serve.state import NodeState

LOG = logging.getLogger("bcedge.serve")

#: C-STORE statuses after which PACS holds the instance (success and the storage warnings).
STORED_STATUSES = {0x0000, 0xB000, 0xB006, 0xB007}


@dataclass
class _Retry:
    attempts: int = 0
    next_at: float = 0.0
    failed: bool = False


class Sender(threading.Thread):
    """Background thread delivering outbox items.

    Args:
        layout: the node's folders.
        destination: ``[destination]`` of the config.
        calling_ae_title: the node's AE title towards PACS.
        state: counters and errors.
        ssl_context: client TLS context, or None for plain TCP.
        server_hostname: the name checked against PACS's certificate.
        retention_days / retention_items: pruning of ``done/`` (0: no limit).
    """

    def __init__(
        self,
        layout: Layout,
        destination: DestinationConfig,
        calling_ae_title: str,
        state: NodeState,
        *,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        retention_days: float = 0.0,
        retention_items: int = 0,
    ) -> None:
        super().__init__(name="bcedge-serve-sender", daemon=True)
        self.layout = layout
        self.dest = destination
        self.state = state
        self.ssl_context = ssl_context
        self.server_hostname = server_hostname or destination.host
        self.retention_days = retention_days
        self.retention_items = retention_items
        self.ae = AE(ae_title=calling_ae_title)
        for attr in ("acse_timeout", "dimse_timeout", "network_timeout", "connection_timeout"):
            setattr(self.ae, attr, destination.timeout_s)
        self._retry: dict[str, _Retry] = {}
        self._gate = 0.0  # no association before this time (the destination is backing off)
        self._wake = threading.Event()
        self._stop_event = threading.Event()
        self._last_prune = 0.0

    # ------------------------------------------------------------------ thread

    def notify(self) -> None:
        """Wake the thread: a new item is in the outbox."""
        self._wake.set()

    def stop(self) -> None:
        """Ask the thread to finish after the current association."""
        self._stop_event.set()
        self._wake.set()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                busy = self.step()
                if time.time() - self._last_prune > 60.0:
                    self.prune_done()
            except Exception as exc:  # never let the delivery thread die
                LOG.exception("sender: unexpected error")
                self.state.error("sender", f"{type(exc).__name__}: {exc}")
                busy = False
                self._stop_event.wait(5.0)
            if not busy:
                self._wake.wait(self._idle_wait())
                self._wake.clear()

    def _idle_wait(self) -> float:
        now = time.time()
        soonest = max(self._gate, min((r.next_at for r in self._retry.values()), default=now + 1.0))
        return float(min(1.0, max(0.05, soonest - now)))

    # ------------------------------------------------------------------ one round

    def _retry_of(self, item: Path) -> _Retry:
        retry = self._retry.get(item.name)
        if retry is None:
            # First sight in this run: an item marked failed before a restart starts over (a
            # restart is how an operator says "try again"); a plain backoff is carried on.
            saved = read_json(item / "delivery.json", {})
            saved = saved if isinstance(saved, dict) else {}
            failed = (item / "reason.txt").exists()
            retry = _Retry(attempts=0 if failed else int(saved.get("attempts", 0) or 0))
            self._retry[item.name] = retry
        return retry

    def due(self, now: float | None = None) -> list[Path]:
        """Outbox items whose wait is over, oldest first, at most ``batch_size``."""
        now = time.time() if now is None else now
        if now < self._gate:
            return []
        items = self.layout.items(self.layout.outbox)
        names = {p.name for p in items}
        for gone in [n for n in self._retry if n not in names]:
            del self._retry[gone]
        return [p for p in items if self._retry_of(p).next_at <= now][: self.dest.batch_size]

    def step(self) -> bool:
        """Send one batch of due items; returns False when none was due."""
        batch = self.due()
        if not batch:
            return False
        self.send_batch(batch)
        return True

    def send_batch(self, batch: list[Path]) -> None:
        """Open one association, send every item of ``batch``, release."""
        records = []
        for item in batch:
            record = read_json(item / "item.json", None)
            if not isinstance(record, dict) or not isinstance(record.get("outputs"), dict):
                self._item_failed(item, "item.json is missing or unreadable", destination=False)
                continue
            records.append((item, record))
        if not records:
            return
        contexts: dict[str, list[str]] = {}
        for _item, record in records:
            syntaxes = contexts.setdefault(record.get("seg_sop_class_uid") or "1.2.840.10008.5.1.4.1.1.66.4", [])
            for ts in (record.get("seg_transfer_syntax_uid"), ExplicitVRLittleEndian, ImplicitVRLittleEndian):
                if ts and ts not in syntaxes:
                    syntaxes.append(ts)
        tls_args = (self.ssl_context, self.server_hostname) if self.ssl_context is not None else None
        connected: list[bool] = []
        assoc = self.ae.associate(
            self.dest.host,
            self.dest.port,
            contexts=[build_context(uid, syntaxes) for uid, syntaxes in contexts.items()],
            ae_title=self.dest.ae_title,
            tls_args=tls_args,
            evt_handlers=[(evt.EVT_CONN_OPEN, lambda _event: connected.append(True))],
        )
        if not assoc.is_established:
            problem = _association_problem(assoc, self.dest, connected=bool(connected), tls=tls_args is not None)
            self._destination_failed([item for item, _ in records], problem)
            return
        try:
            for index, (item, record) in enumerate(records):
                if self._stop_event.is_set():
                    break
                if not assoc.is_established:
                    self._destination_failed([i for i, _ in records[index:]], "association ended early (aborted)")
                    break
                self._send_one(assoc, item, record)
        finally:
            if assoc.is_established:
                assoc.release()

    def _send_one(self, assoc: Association, item: Path, record: dict[str, Any]) -> None:
        seg_path = item / str(record["outputs"].get("seg", ""))
        try:
            ds = pydicom.dcmread(seg_path)
        except Exception as exc:
            self._item_failed(item, f"cannot read the SEG {seg_path.name}: {type(exc).__name__}", destination=False)
            return
        try:
            status = assoc.send_c_store(ds)
        except (ValueError, RuntimeError) as exc:  # no accepted presentation context for it, and the like
            self._item_failed(item, f"not sent: {str(exc).splitlines()[0]}", destination=False)
            return
        code = getattr(status, "Status", None)
        if code is None:
            self._destination_failed([item], "no C-STORE response (timeout or connection lost)")
            if assoc.is_established:
                assoc.abort()
            return
        if int(code) in STORED_STATUSES:
            self._delivered(item, record, int(code))
            return
        comment = escape_controls(str(getattr(status, "ErrorComment", "") or "").strip())  # PACS's text
        self._item_failed(
            item,
            f"PACS answered C-STORE status 0x{int(code):04X}" + (f" ({comment})" if comment else ""),
            destination=False,
        )

    # ------------------------------------------------------------------ outcomes

    def _delivered(self, item: Path, record: dict[str, Any], code: int) -> None:
        retry = self._retry_of(item)
        delivery = {
            "status": "delivered",
            "status_code": f"0x{code:04X}",
            "delivered_at": time.time(),
            "attempts": retry.attempts + 1,
            "destination": f"{self.dest.ae_title}@{self.dest.host}:{self.dest.port}",
        }
        write_json_durable(item / "delivery.json", delivery)
        (item / "reason.txt").unlink(missing_ok=True)
        move_durable(item, self.layout.done / item.name)
        self._retry.pop(item.name, None)
        self.state.count("delivered")
        LOG.info(
            "delivered %s seg=%s to %s (status 0x%04X)",
            item.name,
            record.get("seg_sop_instance_uid", ""),
            delivery["destination"],
            code,
        )
        # PACS is taking instances again: items that had given up get another go now.
        self._gate = 0.0
        for retry_state in self._retry.values():
            if retry_state.failed:
                retry_state.failed, retry_state.attempts, retry_state.next_at = False, 0, 0.0

    def _backoff(self, attempts: int) -> float:
        return float(min(self.dest.backoff_max_s, self.dest.backoff_initial_s * 2 ** max(0, attempts - 1)))

    def _destination_failed(self, items: list[Path], reason: str) -> None:
        now = time.time()
        waits = [self._item_failed(item, reason, destination=True, now=now) for item in items]
        self._gate = now + min(waits) if waits else now + self.dest.backoff_initial_s

    def _item_failed(self, item: Path, reason: str, *, destination: bool, now: float | None = None) -> float:
        """Count a failed attempt for ``item``; returns how long it now waits."""
        now = time.time() if now is None else now
        retry = self._retry_of(item)
        retry.attempts += 1
        self.state.count("send_failures")
        if retry.attempts >= self.dest.max_attempts:
            retry.failed = True
            wait = self.dest.retry_failed_every_s or float("inf")
            message = f"not delivered after {retry.attempts} attempts; last: {reason}; stays in the outbox"
            write_durable(item / "reason.txt", (message + "\n").encode("utf-8"))
            LOG.error("sender: %s: %s", item.name, message)
            self.state.error("sender", f"{item.name}: {message}")
        else:
            wait = self._backoff(retry.attempts)
            LOG.warning(
                "sender: %s attempt %d/%d failed (%s); next in %.1f s",
                item.name,
                retry.attempts,
                self.dest.max_attempts,
                reason,
                wait,
            )
            if retry.attempts == 1 or not destination:
                self.state.error("sender", f"{item.name}: {reason}")
        retry.next_at = now + wait
        write_json_durable(
            item / "delivery.json",
            {
                "status": "failed" if retry.failed else "retrying",
                "attempts": retry.attempts,
                "last_error": reason,
                "last_attempt_at": now,
                "next_attempt_at": retry.next_at if wait != float("inf") else None,
            },
        )
        return wait

    # ------------------------------------------------------------------ retention

    def prune_done(self, now: float | None = None) -> int:
        """Delete delivered items beyond the retention limits (oldest first); returns how many."""
        now = time.time() if now is None else now
        self._last_prune = now
        items = self.layout.items(self.layout.done)
        doomed: list[Path] = []
        if self.retention_items and len(items) > self.retention_items:
            doomed = items[: len(items) - self.retention_items]
        if self.retention_days:
            cutoff = now - self.retention_days * 86400.0
            for item in items[len(doomed) :]:
                try:
                    if item.stat().st_mtime < cutoff:
                        doomed.append(item)
                except FileNotFoundError:
                    continue
        for item in doomed:
            remove_tree(item)
        if doomed:
            fsync_path(self.layout.done)
            LOG.info("retention: removed %d delivered items from %s", len(doomed), self.layout.done)
        return len(doomed)


def _association_problem(assoc: Association, dest: DestinationConfig, *, connected: bool, tls: bool) -> str:
    where = f"{dest.ae_title}@{dest.host}:{dest.port}"
    if assoc.is_rejected:
        return f"association rejected by {where}"
    if not connected:
        return f"cannot connect to {where}" + (" (connection or TLS handshake failed)" if tls else "")
    if assoc.is_aborted:
        return f"association aborted by {where}"
    return f"no association with {where} (no answer within the timeout)"
