"""The node: recovery, then the worker, the sender and the Storage SCP, until SIGTERM/SIGINT.

Start order matters: the worker processes are launched first (forked by a fork server that
imports what they need once, :mod:`bcedge.serve.isolation`) and load the model together (in
parallel, while this process imports pynetdicom and recovers its folders: a crash may have
left a half-built item); the worker threads and the sender start once every worker has loaded
the model, and the port opens last (a bad bundle stops the node before any scan is
acknowledged). After a ``kill -9`` every scan already in the spool waits for this start, so it
costs about one model load, not one per worker. Stop order is the reverse: no new scans, then
the worker and the sender finish what they are doing.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from bcedge.errors import ConfigError, MissingDependencyError
from bcedge.serve.config import LoggingConfig, ServeConfig
from bcedge.serve.isolation import IsolatedProcessor, Limits, ProcessorFactory
from bcedge.serve.redact import SafeFormatter, route_library_logs
from bcedge.serve.spool import Layout, Spool, recover
from bcedge.serve.state import NodeState
from bcedge.serve.worker import Processor, Worker, WorkQueue

LOG = logging.getLogger("bcedge.serve")
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(cfg: LoggingConfig) -> None:
    """Log ``bcedge.serve`` to stderr (and ``cfg.file``); pynetdicom's own log stays at WARNING unless DEBUG.

    Every line is formatted by :class:`~bcedge.serve.redact.SafeFormatter` (no raw control
    characters; library messages without the values they quote).

    Calling it again replaces the handlers it added before (tests start several nodes).
    """
    formatter = SafeFormatter(_LOG_FORMAT)
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
    # Library warnings (pydicom, highdicom, Python warnings) go to the same handlers, values redacted.
    route_library_logs(handlers)


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
        process: a processing step run in the node's own process by one worker thread (tests);
            None: ``[worker] processes`` worker processes, each running what ``factory`` builds.
        factory: builds the processing step inside each worker process (picklable); None: the
            real one, :class:`~bcedge.serve.processing.SegmenterProcessor` of ``config.model``.
    """

    def __init__(
        self,
        config: ServeConfig,
        *,
        process: Processor | None = None,
        factory: ProcessorFactory | None = None,
    ) -> None:
        self.config = config
        self.layout = Layout(config.storage.root)
        self._process = process
        self._factory = factory
        self._isolated: list[IsolatedProcessor] = []
        self._lock = _Lock(config.storage.root)
        self._stopping = threading.Event()
        self.state: NodeState | None = None
        self.scp: Any = None
        self.workers: list[Worker] = []
        self.sender: Any = None

    @property
    def worker(self) -> Worker | None:
        """The first worker thread (there is one per worker process)."""
        return self.workers[0] if self.workers else None

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the running worker processes (empty when scans run in the node's process)."""
        return [pid for pid in (p.pid for p in self._isolated) if pid is not None]

    def start(self) -> tuple[str, int]:
        """Recover, load the model, start the threads and listen; returns the bound (host, port).

        Raises:
            ConfigError: the storage root is unusable or locked by another node, TLS files fail to load.
            MissingDependencyError: pynetdicom (the ``serve`` extra) is missing.
            BundleError / BcedgeError: the model cannot be loaded.
        """
        import importlib.util

        if importlib.util.find_spec("pynetdicom") is None:
            raise MissingDependencyError("bcedge serve", "serve", "pynetdicom")
        cfg = self.config
        LOG.info("starting: pid %d, storage root %s", os.getpid(), cfg.storage.root)
        try:
            cfg.storage.root.mkdir(parents=True, exist_ok=True)
            self._lock.acquire()
            self.layout.create()
        except OSError as exc:
            raise ConfigError(f"[storage] root {cfg.storage.root}: cannot use it ({exc.strerror or exc})") from None
        # The worker processes start first and load the model all at once while this process
        # imports pynetdicom and recovers its folders: after a kill -9 every scan already in the
        # spool waits for this start, so it costs about one model load, not one per worker.
        if self._process is None:
            factory = self._factory
            if factory is None:
                from bcedge.serve.processing import SegmenterProcessor

                # No [model] threads: each worker gets its share of the usable CPUs (bcedge.cpus).
                factory = functools.partial(SegmenterProcessor, replace(cfg.model, threads=cfg.model_threads))
            limits = Limits(timeout_s=cfg.worker.timeout_s, memory_mb=cfg.worker.memory_mb)
            self._isolated = [
                IsolatedProcessor(factory, limits, name=f"worker-{index + 1}") for index in range(cfg.worker.processes)
            ]
        # Launched from a thread: the first launch waits until the fork server has imported what the
        # workers need (bcedge.serve.preload, ~0.8 s CPU), and meanwhile this process does its own
        # imports and recovery on the other core instead of waiting.
        launcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bcedge-serve-launch")
        launched = launcher.submit(lambda: [isolated.launch() for isolated in self._isolated])
        launcher.shutdown(wait=False)
        try:
            try:
                from bcedge.decoders import import_pydicom

                # pydicom without its test-data downloader's extras (requests, ...): ~80 fewer
                # modules for this process to load while the workers load the model.
                import_pydicom()
                from bcedge.serve.scp import StorageSCP
                from bcedge.serve.sender import Sender
            except ImportError as exc:
                raise MissingDependencyError("bcedge serve", "serve", "pynetdicom") from exc
            report = recover(self.layout)
            state = NodeState(self.layout, info={"config": str(cfg.source) if cfg.source else None})
            self.state = state
            if any(report.values()):
                state.error("node", f"recovered after an unclean stop: {report}")
            launched.result()
            for isolated in self._isolated:
                isolated.wait_ready()  # the model loads before the port opens: a bad bundle stops the node here
        except BaseException:
            with contextlib.suppress(BaseException):
                launched.result()  # no worker may be launched after the close below
            self._close_workers()
            self._lock.release()
            raise
        processes: list[Processor]
        if self._process is not None:
            processes, model = [self._process], "injected processing step (in the node's process)"
        else:
            processes = list(self._isolated)
            model = f"{self._isolated[0].info.get('model', '?')} in {len(processes)} worker processes"
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
        queue = WorkQueue(self.layout, spool)
        self.workers = [
            Worker(
                self.layout,
                spool,
                process,
                state,
                max_attempts=cfg.storage.max_process_attempts,
                on_item=self.sender.notify,
                queue=queue,
                name=f"bcedge-serve-worker-{index + 1}",
            )
            for index, process in enumerate(processes)
        ]
        poison = self.workers[0].quarantine_poison()
        if poison:
            LOG.warning("quarantined %d spooled scans already tried %d times", poison, cfg.storage.max_process_attempts)
        self.scp = StorageSCP(cfg.node, spool, state, ssl_context=server_ctx)
        for worker in self.workers:
            worker.start()
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
            worker_pids=self.worker_pids,
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
        threads = [*self.workers, self.sender]
        for thread in threads:
            if thread is not None:
                thread.stop()
        deadline = time.monotonic() + timeout
        for thread in threads:
            if thread is not None and thread.is_alive():
                thread.join(max(0.0, deadline - time.monotonic()))
        # Killing a worker process mid-scan loses nothing: the scan is still in the spool (or is
        # rolled back from work/ at the next start), and its attempt was counted.
        self._close_workers()
        if self.state is not None:
            self.state.set_status("stopped")
            self.state.save(force=True)
        self._lock.release()
        LOG.info("stopped")

    def _close_workers(self) -> None:
        for isolated in self._isolated:
            isolated.close()

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
                    pids = self.worker_pids  # a worker killed over a limit is replaced under a new pid
                    if self.state.info.get("worker_pids") != pids:
                        self.state.set_status("running", worker_pids=pids)
                    self.state.save()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.stop()
