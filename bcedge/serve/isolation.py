"""Untrusted pixels are decoded and segmented in worker processes with a wall-time and a memory limit.

A scan's pixel data is the one thing the node cannot check before it runs code on it: a JPEG-LS
frame header claiming 65535x65535 inside a 13 kB file keeps the decoder busy (growing ~40 MB/s)
for minutes. Run in the node's own process, that froze C-ECHO and C-STORE and grew the node to
GBs. Here each scan runs in a child process that

- loads the model once, when it starts (not per scan), then serves scans one at a time over a pipe;
- limits its own address space (``RLIMIT_AS``) to its size once the model is loaded plus
  ``[worker] memory_mb``, so an allocation beyond that fails inside the child
  (:class:`MemoryError`, or a decoder's allocation error) instead of growing the machine;
- is killed by the node when a scan takes longer than ``[worker] timeout_s``, and dies with the
  node (``PR_SET_PDEATHSIG``), so a hung child never outlives a ``kill -9`` of the node.

A child that was killed, or ran out of memory, is replaced by a fresh one before the next scan.
The node's own process only ever reads headers (``stop_before_pixels``), so its memory stays flat.

Children are forked by :mod:`multiprocessing`'s fork server (:func:`worker_context`), a fresh
single-threaded interpreter the node starts, which imports :mod:`bcedge.serve.preload` (numpy,
pydicom, highdicom, LiteRT, the scan job) once and then forks a child per request: each child
loads only its model, instead of importing everything again (~0.8 s of CPU per child on the
2-core AMD EPYC, paid by every worker at each (re)start). The fork server exits when the node
does (its "alive" pipe closes: each child closes its copy at once), and the children die with it.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bcedge.errors import BcedgeError

LOG = logging.getLogger("bcedge.serve")

#: ``factory() -> process``: builds the processing step inside the worker (must be picklable).
ProcessorFactory = Callable[[], Callable[[Path, Path], Mapping[str, Path]]]

#: Seconds a new worker may take to import and load the model before the node gives up on it.
LOAD_TIMEOUT_S = 300.0
_PR_SET_PDEATHSIG = 1


class ScanLimitError(BcedgeError):
    """A scan made its worker exceed the wall-time or memory limit (the scan's fault: quarantined)."""

    exit_code = 2


class WorkerDiedError(RuntimeError):
    """The worker process died without answering (a signal or an exit); the scan is retried up to its limit."""


@dataclass(frozen=True)
class Limits:
    """What one scan may use in its worker.

    Attributes:
        timeout_s: wall-clock seconds for decoding, segmenting and writing one scan.
        memory_mb: address space (MiB) the worker may add to its size after loading the model;
            0 for no limit.
    """

    timeout_s: float
    memory_mb: int


def _address_space() -> int:
    """This process's virtual size in bytes (``/proc/self/statm``, first field)."""
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def status_mb(field: str, pid: int | str = "self") -> float:
    """A memory field of ``/proc/<pid>/status`` (``VmRSS``, ``VmPeak``, ...) in MiB; 0.0 when unavailable."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def peak_address_space_mb() -> float:
    """This process's peak virtual size so far in MiB (``VmPeak``)."""
    return status_mb("VmPeak")


def _die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when the node dies (Linux); elsewhere a no-op."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


#: Environment variable naming the start method (``forkserver`` or ``spawn``) of the worker
#: processes, for comparing them (``benchmarks/bench_serve_restart.py``); unset: the default.
START_METHOD_ENV = "BCEDGE_SERVE_START_METHOD"


def worker_context() -> Any:
    """The :mod:`multiprocessing` context that starts worker processes.

    The fork server with :mod:`bcedge.serve.preload` where the platform has one (Linux): the
    node has threads, so it never forks itself; the fork server it starts is single-threaded and
    has loaded no model when it forks. Elsewhere, or with ``BCEDGE_SERVE_START_METHOD=spawn``,
    ``spawn`` (each child imports everything itself).
    """
    method = os.environ.get(START_METHOD_ENV, "").strip().lower() or "forkserver"
    if method not in ("forkserver", "spawn"):
        LOG.warning("%s=%r is neither 'forkserver' nor 'spawn': using the fork server", START_METHOD_ENV, method[:40])
        method = "forkserver"
    if method == "spawn" or "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    # Takes effect when the fork server starts (the first worker launched by this process).
    ctx.set_forkserver_preload(["bcedge.serve.preload"])
    return ctx


def _leave_fork_server() -> None:
    """Close this child's copy of the fork server's "alive" pipe (a no-op when not forked by it).

    The fork server exits when every copy of that pipe's write end is closed; a child keeping
    its copy would keep the fork server, and so itself (``PR_SET_PDEATHSIG``), alive after a
    ``kill -9`` of the node. Children never start processes of their own, so they need none.
    """
    try:
        from multiprocessing import forkserver
    except ImportError:
        return
    server = forkserver._forkserver
    fd = getattr(server, "_forkserver_alive_fd", None)
    if fd is not None and server.get_inherited_fds() is not None:  # inherited fds: forked by the server
        with contextlib.suppress(OSError):
            os.close(fd)
        server._forkserver_alive_fd = None


class _NodeFd:
    """One of the node's standard file descriptors, handed to a worker whatever starts it.

    A worker forked by the fork server would otherwise write to the fork server's stdout/stderr,
    which are the node's as they were when the fork server started (a test that captures fd 2
    later, or a node whose stderr was redirected meanwhile, would lose the worker's lines).
    Pickled with :func:`multiprocessing.reduction.DupFd`, the worker receives a copy of the
    node's descriptor as it is at launch, as a spawned child would inherit it.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        from multiprocessing import reduction

        return _node_fd, (self.fd, reduction.DupFd(self.fd))


def _node_fd(target: int, dup: Any) -> int:
    """In the worker: put the node's descriptor in place of ``target`` (1 or 2); returns ``target``."""
    fd = dup.detach()
    if fd != target:
        os.dup2(fd, target)
        os.close(fd)
    return target


def _std_fds() -> list[_NodeFd]:
    """The node's stdout and stderr descriptors that are open (a daemon may have closed them)."""
    out = []
    for fd in (1, 2):
        try:
            os.fstat(fd)
        except OSError:
            continue
        out.append(_NodeFd(fd))
    return out


def _describe(exc: BaseException) -> tuple[str, int | None, str]:
    """(class name, exit code for BcedgeErrors else None, first line of the message)."""
    lines = str(exc).strip().splitlines()
    code = exc.exit_code if isinstance(exc, BcedgeError) else None
    return type(exc).__name__, code, lines[0] if lines else ""


def _looks_like_memory(exc: BaseException) -> bool:
    # Under RLIMIT_AS a failed allocation surfaces as MemoryError from Python/NumPy, or as the
    # decoder's own error text ("failed to allocate", "out of memory", std::bad_alloc).
    # A bcedge error is the reader's documented verdict on the file ("... Bits Allocated ..."), not a limit.
    if isinstance(exc, MemoryError):
        return True
    if isinstance(exc, BcedgeError):
        return False
    text = str(exc).lower()
    return any(
        phrase in text
        for phrase in ("out of memory", "failed to allocate", "cannot allocate", "unable to allocate", "bad_alloc")
    )


def _child_main(conn: Any, factory: ProcessorFactory, memory_mb: int, std_fds: Any = ()) -> None:
    """The worker process: load the model, set the memory limit, then serve scans until EOF or None.

    ``std_fds``: the node's stdout/stderr, already in place when this runs (unpickling them put
    them there, :class:`_NodeFd`).
    """
    _die_with_parent()
    _leave_fork_server()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the node, which stops the workers
    from bcedge.serve.redact import worker_logging

    worker_logging()  # library warnings quote header values: redacted, one line each
    try:
        process = factory()
    except BaseException as exc:  # report the load error to the node, which refuses to start
        conn.send(("load-error", _describe(exc)))
        return
    base = _address_space()
    limit = None
    if memory_mb > 0:
        import resource

        limit = base + memory_mb * 2**20
        _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    describe = getattr(process, "describe", None)
    info = {
        "pid": os.getpid(),
        "base_mb": base // 2**20,
        "limit_mb": (limit or 0) // 2**20,
        "model": describe() if callable(describe) else type(process).__name__,
    }
    conn.send(("ready", info))
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        source, out_dir = job
        try:
            t0 = time.perf_counter()
            outputs = process(Path(source), Path(out_dir))
            paths = {kind: os.fspath(path) for kind, path in outputs.items()}
            # The peak address space above the loaded model so far: what [worker] memory_mb must cover.
            # The stage times and the time in here let the node's item.json say where a scan's time went.
            reply: tuple[str, Any] = (
                "ok",
                {
                    "outputs": paths,
                    "peak_mb": peak_address_space_mb() - base / 2**20,
                    "timing_ms": dict(getattr(process, "last_timing_ms", None) or {}),
                    "worker_ms": round((time.perf_counter() - t0) * 1000.0, 1),
                },
            )
        except BaseException as exc:  # everything goes back to the node as a description
            reply = ("memory" if _looks_like_memory(exc) else "error", _describe(exc))
        try:
            conn.send(reply)
        except (OSError, ValueError):
            return
        if reply[0] == "memory":
            return  # a heap that hit the limit may be fragmented: the node starts a fresh worker


def _rebuild(name: str, exit_code: int | None, message: str) -> BaseException:
    """The child's exception in the node: the same bcedge error class when there is one, else RuntimeError."""
    from bcedge import errors

    cls = getattr(errors, name, None)
    if exit_code is not None and isinstance(cls, type) and issubclass(cls, BcedgeError):
        exc = cls.__new__(cls)  # bypass subclass __init__ signatures (MissingDependencyError)
        Exception.__init__(exc, message)
        return exc
    if exit_code is not None:
        err = BcedgeError(message)
        err.exit_code = exit_code
        return err
    if name in ("OSError", "PermissionError", "FileNotFoundError"):
        return OSError(message)
    return RuntimeError(f"{name}: {message}")


class IsolatedProcessor:
    """A processing step (``process(source, out_dir) -> {kind: path}``) run in a worker process.

    Args:
        factory: builds the real processing step in the worker (picklable: a class, a
            ``functools.partial``).
        limits: wall time and memory per scan.
        name: for logs (``worker-1``).

    Calls come from one thread at a time (the node gives each worker thread its own).
    """

    def __init__(self, factory: ProcessorFactory, limits: Limits, *, name: str = "worker") -> None:
        self.factory = factory
        self.limits = limits
        self.name = name
        self.info: dict[str, Any] = {}
        #: Peak address space (MiB) of the worker above its loaded model, after its last scan.
        self.peak_mb = 0.0
        #: The last scan's milliseconds per stage as measured in the worker, plus ``worker`` (its
        #: whole call there); empty when the processing step reports none.
        self.last_timing_ms: dict[str, float] = {}
        self._ctx = worker_context()  # the node has threads: never fork it (its fork server does)
        self._proc: Any = None
        self._conn: Any = None
        self._launched_at = 0.0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        """Start the worker and wait until its model is loaded (:meth:`launch`, then :meth:`wait_ready`).

        Raises:
            BcedgeError (BundleError, MissingDependencyError, ...): the model cannot be loaded.
            RuntimeError: the worker died or did not report within :data:`LOAD_TIMEOUT_S`.
        """
        self.launch()
        self.wait_ready()

    def launch(self) -> None:
        """Start the worker process without waiting for it: it imports and loads the model meanwhile.

        The node launches every worker first and then waits for them together, so N workers load
        in the time of about one (in parallel, on their own cores) instead of N times that, which is
        what a restart after ``kill -9`` costs every scan already in the spool.
        """
        self.close()
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(
            target=_child_main,
            args=(child, self.factory, self.limits.memory_mb, _std_fds()),
            name=f"bcedge-serve-{self.name}",
            daemon=True,
        )
        proc.start()
        child.close()
        self._proc, self._conn = proc, parent
        self._launched_at = time.monotonic()

    def wait_ready(self, timeout: float = LOAD_TIMEOUT_S) -> None:
        """Wait until the worker :meth:`launch` started has loaded its model.

        Raises:
            BcedgeError (BundleError, MissingDependencyError, ...): the model cannot be loaded.
            RuntimeError: the worker was not launched, died, or did not report within ``timeout`` s.
        """
        parent = self._conn
        if parent is None:
            raise RuntimeError(f"{self.name}: wait_ready() without launch()")
        if not parent.poll(timeout):
            self.close()
            raise RuntimeError(f"{self.name}: the worker process did not load the model within {timeout:g} s")
        try:
            kind, payload = parent.recv()
        except (EOFError, OSError):
            code = self._reap()
            raise RuntimeError(f"{self.name}: the worker process died while loading the model ({code})") from None
        if kind == "load-error":
            self.close()
            raise _rebuild(*payload)
        self.info = dict(payload)
        LOG.info(
            "%s: pid %s ready in %.1f s (%d MiB loaded; address-space limit %s)",
            self.name,
            self.info.get("pid"),
            time.monotonic() - self._launched_at,
            self.info.get("base_mb", 0),
            f"{self.info['limit_mb']} MiB" if self.info.get("limit_mb") else "none",
        )

    def __call__(self, source: Path, out_dir: Path) -> Mapping[str, Path]:
        """Process one scan in the worker.

        Raises:
            ScanLimitError: the scan exceeded the wall-time or memory limit (the worker was replaced).
            WorkerDiedError: the worker died without answering (it is replaced at the next call).
            BcedgeError / OSError / RuntimeError: what the processing step raised in the worker.
        """
        if self._proc is None or not self._proc.is_alive():
            self.start()
        self.last_timing_ms = {}
        t0 = time.monotonic()
        try:
            self._conn.send((os.fspath(source), os.fspath(out_dir)))
        except (OSError, ValueError):
            code = self._reap()
            message = f"{self.name}: the worker process was gone before the scan was sent ({code})"
            raise WorkerDiedError(message) from None
        if not self._conn.poll(self.limits.timeout_s):
            self.close()
            raise ScanLimitError(
                f"wall-time limit exceeded: processing took more than {self.limits.timeout_s:g} s "
                "([worker] timeout_s); the worker process was killed"
            )
        try:
            kind, payload = self._conn.recv()
        except (EOFError, OSError):
            code = self._reap()
            raise WorkerDiedError(
                f"the worker process died after {time.monotonic() - t0:.1f} s without an answer ({code})"
            ) from None
        if kind == "ok":
            self.peak_mb = float(payload["peak_mb"])
            self.last_timing_ms = {**payload.get("timing_ms", {}), "worker": payload.get("worker_ms", 0.0)}
            return {k: Path(v) for k, v in payload["outputs"].items()}
        if kind == "memory":
            self._reap(wait=True)
            name, _code, message = payload
            raise ScanLimitError(
                f"memory limit exceeded: the worker's address space is limited to "
                f"{self.info.get('limit_mb', '?')} MiB ([worker] memory_mb = {self.limits.memory_mb} above the "
                f"loaded model); {name}: {message}"
            )
        raise _rebuild(*payload)

    def _reap(self, *, wait: bool = False) -> str:
        """Forget a dead (or dying) worker; returns how it ended, e.g. ``killed by SIGKILL``."""
        proc, self._proc = self._proc, None
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.close()
            self._conn = None
        if proc is None:
            return "no worker"
        proc.join(5.0 if wait or not proc.is_alive() else 0.5)
        if proc.is_alive():
            proc.kill()
            proc.join(5.0)
        code = proc.exitcode
        if code is not None and code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit status {code}"

    def close(self) -> None:
        """Stop the worker (killed at once: it holds nothing that needs a clean exit)."""
        proc = self._proc
        if proc is not None and proc.is_alive():
            proc.kill()
        self._reap()
