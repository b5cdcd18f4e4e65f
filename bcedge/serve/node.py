"""The node: recovery, then the worker, the sender and the Storage SCP, until SIGTERM/SIGINT.

Start order matters: the folders are recovered first (a crash may have left a half-built
item), the model is loaded before the port opens (a bad bundle stops the node before any
scan is acknowledged), and the port opens last. Stop order is the reverse: no new scans,
then the worker and the sender finish what they are doing.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from bcedge.errors import ConfigError, MissingDependencyError
from bcedge.serve.config import LoggingConfig, ServeConfig
from bcedge.serve.spool import Layout, Spool, recover
from bcedge.serve.state import NodeState
from bcedge.serve.worker import Processor, Worker

LOG = logging.getLogger("bcedge.serve")
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(cfg: LoggingConfig) -> None:
    """Log ``bcedge.serve`` to stderr (and ``cfg.file``); pynetdicom's own log stays at WARNING unless DEBUG.

    Calling it again replaces the handlers it added before (tests start several nodes).
    """
    formatter = logging.Formatter(_LOG_FORMAT)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if cfg.file is not None:
        cfg.file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(cfg.file, encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(formatter)
        handler._bcedge_serve = True  # type: ignore[attr-defined]
    for name, level in (("bcedge.serve", cfg.level), ("pynetdicom", "DEBUG" if cfg.level == "DEBUG" else "WARNING")):
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if getattr(h, "_bcedge_serve", False)]:
            logger.removeHandler(old)
            old.close()
        logger.setLevel(level)
        for handler in handlers:
            logger.addHandler(handler)
        logger.propagate = False


class _Lock:
    """An exclusive ``flock`` on ``<root>/node.lock``: one node per storage root (released by the kernel on kill -9)."""

    def __init__(self, root: Path) -> None:
        self.path = root / "node.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            other = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise ConfigError(
                f"{self.path.parent}: another bcedge serve (pid {other}) is using this storage root; stop it first"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Node:
    """One running ``bcedge serve``.

    Args:
        config: the validated config.
        process: the processing step; None builds the real one
            (:class:`~bcedge.serve.processing.SegmenterProcessor`) from ``config.model``.
    """

    def __init__(self, config: ServeConfig, *, process: Processor | None = None) -> None:
        self.config = config
        self.layout = Layout(config.storage.root)
        self._process = process
        self._owned_processor: Any = None
        self._lock = _Lock(config.storage.root)
        self._stopping = threading.Event()
        self.state: NodeState | None = None
        self.scp: Any = None
        self.worker: Worker | None = None
        self.sender: Any = None

    def start(self) -> tuple[str, int]:
        """Recover, load the model, start the threads and listen; returns the bound (host, port).

        Raises:
            ConfigError: the storage root is unusable or locked by another node, TLS files fail to load.
            MissingDependencyError: pynetdicom (the ``serve`` extra) is missing.
            BundleError / BcedgeError: the model cannot be loaded.
        """
        try:
            from bcedge.serve.scp import StorageSCP
            from bcedge.serve.sender import Sender
        except ImportError as exc:
            raise MissingDependencyError("bcedge serve", "serve", "pynetdicom") from exc
        cfg = self.config
        try:
            cfg.storage.root.mkdir(parents=True, exist_ok=True)
            self._lock.acquire()
            self.layout.create()
        except OSError as exc:
            raise ConfigError(f"[storage] root {cfg.storage.root}: cannot use it ({exc.strerror or exc})") from None
        report = recover(self.layout)
        state = NodeState(self.layout, info={"config": str(cfg.source) if cfg.source else None})
        self.state = state
        if any(report.values()):
            state.error("node", f"recovered after an unclean stop: {report}")
        process = self._process
        model = "injected processing step"
        if process is None:
            from bcedge.serve.processing import SegmenterProcessor

            self._owned_processor = SegmenterProcessor(cfg.model)
            process = self._owned_processor
            model = self._owned_processor.describe()
        server_ctx = client_ctx = None
        if cfg.tls.enabled or cfg.destination.tls.enabled:
            from bcedge.serve.tls import client_context, server_context

            server_ctx = server_context(cfg.tls) if cfg.tls.enabled else None
            client_ctx = client_context(cfg.destination.tls) if cfg.destination.tls.enabled else None
        spool = Spool(self.layout, min_free_bytes=cfg.storage.min_free_mb * 2**20)
        self.sender = Sender(
            self.layout,
            cfg.destination,
            cfg.calling_ae_title,
            state,
            ssl_context=client_ctx,
            server_hostname=cfg.destination.tls.server_hostname,
            retention_days=cfg.storage.done_retention_days,
            retention_items=cfg.storage.done_max_items,
        )
        self.worker = Worker(
            self.layout,
            spool,
            process,
            state,
            max_attempts=cfg.storage.max_process_attempts,
            on_item=self.sender.notify,
        )
        self.scp = StorageSCP(cfg.node, spool, state, ssl_context=server_ctx)
        self.worker.start()
        self.sender.start()
        try:
            host, port = self.scp.start()
        except OSError as exc:
            self.stop(timeout=10)
            hint = " (ports below 1024 need privileges: see the systemd unit in README)" if cfg.node.port < 1024 else ""
            raise ConfigError(
                f"[node] bind {cfg.node.bind} port {cfg.node.port}: cannot listen ({exc.strerror or exc}){hint}"
            ) from None
        state.set_status(
            "running",
            ae_title=cfg.node.ae_title,
            listen={"host": host, "port": port, "tls": cfg.tls.enabled},
            destination=f"{cfg.destination.ae_title}@{cfg.destination.host}:{cfg.destination.port}",
            model=model,
        )
        state.save(force=True)
        counts = self.layout.counts()
        LOG.info(
            "listening as '%s' on %s:%d%s; model %s; queues %s",
            cfg.node.ae_title,
            host,
            port,
            " (TLS)" if server_ctx else "",
            model,
            counts,
        )
        return host, port

    def stop(self, timeout: float = 30.0) -> None:
        """Stop listening, let the worker and sender finish their current item, save the state."""
        self._stopping.set()
        if self.scp is not None:
            self.scp.stop()
        for thread in (self.worker, self.sender):
            if thread is not None:
                thread.stop()
        for thread in (self.worker, self.sender):
            if thread is not None and thread.is_alive():
                thread.join(timeout)
        if self.state is not None:
            self.state.set_status("stopped")
            self.state.save(force=True)
        if self._owned_processor is not None:
            self._owned_processor.close()
            self._owned_processor = None
        self._lock.release()
        LOG.info("stopped")

    def request_stop(self, *_args: Any) -> None:
        """Signal handler: ask :meth:`run_forever` to return."""
        self._stopping.set()

    def run_forever(self, *, save_every_s: float = 1.0) -> None:
        """Start, then save the state every ``save_every_s`` until SIGTERM/SIGINT, then stop."""
        self.start()
        previous = {sig: signal.signal(sig, self.request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            while not self._stopping.wait(save_every_s):
                if self.state is not None:
                    self.state.save()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.stop()
