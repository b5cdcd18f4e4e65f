"""The ``bcedge batch`` run: enumerate, skip what is done, segment on Ray Data, commit block by block.

::

    summary = run_batch(BatchOptions(source="archive/", out=Path("out"), workers=2))

Steps: open the bundle once in the driver (a bad bundle fails before Ray starts, exit code 3) and
choose the run's artifact there, once, at the workers' thread count (``--backend auto``:
:mod:`bcedge.choice`; on a cluster the driver's machine is measured); every worker runs that
artifact (:class:`bcedge.batch.worker.WorkerOptions`), and the run's fingerprint, its table rows
and its record ``results/runs/<run id>.json`` name it;
enumerate the source (:mod:`bcedge.batch.sources`), take the results folder's lock and drop the
scans its committed parts already hold with this run's fingerprint (:mod:`bcedge.batch.ledger`),
then ``ray.data.from_arrow(blocks).map_batches(ScanWorker, compute=ActorPoolStrategy(size=workers))``:
one actor per worker, each loading the bundle once and taking one block (its refs only: paths and
keys) at a time; blocks shrink towards the end of the run (:func:`block_sizes`) so that no worker
waits long for the last one. The driver consumes the output blocks as they finish (order not
kept) and commits each one as a Parquet part before it asks for the next.

Ray is started in-process when no address is given (``num_cpus=workers``, a small object store:
only refs and rows travel through it); ``address`` joins an existing cluster (``auto`` or
``ray://host:10001``).

Threads: with no ``threads`` asked for, each worker of a local Ray gets ``usable CPUs // workers``
backend threads (the workers share this machine, as ``bcedge infer`` uses every CPU); on a cluster
each actor holds one Ray CPU (``num_cpus=1``), so it gets one thread.

Cost: a local Ray is ten processes besides the workers (:mod:`bcedge.batch.localray`, which starts
it), each importing Ray: a fixed CPU cost per run, before the first scan, that a 2-core machine
feels, and a smaller one per second while the scans run (``benchmarks/bench_batch.py --counts``
separates the two). It is why ``bcedge batch`` loses to ``bcedge infer`` on a few dozen scans.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bcedge.batch.localray import RayRunError, start_ray
from bcedge.batch.localray import quiet_ray_data as _quiet_ray_data
from bcedge.batch.sources import ScanRef, describe_source
from bcedge.errors import BcedgeError, ConfigError, MissingDependencyError

__all__ = ["BatchOptions", "RayRunError", "Summary", "run_batch", "start_ray"]

if TYPE_CHECKING:
    from bcedge.batch.worker import WorkerOptions

_log = logging.getLogger(__name__)

#: Object store of a local Ray (MiB): refs and rows are small; Ray's default (30 % of RAM) is not needed.
DEFAULT_OBJECT_STORE_MB = 256
#: Restarts of a dead worker (and retries of its block) before the run gives up.
WORKER_RESTARTS = 3
#: Most scans per committed part (a crash redoes at most one part per worker).
MAX_BLOCK = 1024
#: Each block takes 1 / (GUIDED_SHARE * workers) of the scans left (see block_sizes).
GUIDED_SHARE = 4


@dataclass
class BatchOptions:
    """Options of one ``bcedge batch`` run (see the CLI for their meaning)."""

    source: str
    out: Path
    model: Path | None = None
    backend: str = "auto"
    threads: int | None = None
    workers: int = 1
    kinds: tuple[str, ...] = ("mask", "json")
    limit: int | None = None
    address: str | None = None
    batch_size: int = 4
    threshold: float | None = None
    min_area_mm2: float | None = None
    study_date: str | None = None
    modality: str = "MG"
    stow: bool = False
    object_store_mb: int = DEFAULT_OBJECT_STORE_MB
    block_size: int | None = None


@dataclass(frozen=True)
class RunModel:
    """The model of a run, chosen once by the driver and run by every worker.

    Attributes:
        artifact: the artifact's key (:func:`bcedge.formats.candidate_key`: its file in the bundle, or
            ``file@backend`` when an alternate runtime such as OpenVINO runs it).
        backend: its backend.
        sha256: its SHA-256 (the run's fingerprint is made from it).
        threshold, min_area_mm2: the run's post-processing settings (resolved).
        threads: backend threads per worker (the choice was made at this count).
        info: ``Segmenter.model_info`` of the driver's model (with the choice's report).
    """

    artifact: str
    backend: str
    sha256: str
    threshold: float
    min_area_mm2: float
    threads: int
    info: dict[str, Any]

    @property
    def fingerprint(self) -> str:
        """The run's fingerprint (:func:`bcedge.batch.table.fingerprint`): what a resumed run must match."""
        from bcedge.batch.table import fingerprint

        return fingerprint(self.sha256, self.threshold, self.min_area_mm2)


def choose_model(
    bundle: Path, backend: str, threads: int, threshold: float | None, min_area_mm2: float | None
) -> RunModel:
    """Open the bundle once in the driver and choose the run's artifact, at the workers' thread count.

    The choice (``--backend auto``: acceptance check and timing, :mod:`bcedge.choice`) depends on
    the thread count, so it is made at the one the workers use, once, and handed to every worker
    (:func:`worker_options`): a worker choosing for itself could run another artifact than the one
    the run's fingerprint and table name. A missing or tampered bundle, or a backend missing,
    fails here, before Ray starts (exit code 3).
    """
    from bcedge.formats import candidate_key
    from bcedge.pipeline import Segmenter

    with Segmenter(bundle, backend, threads=threads, threshold=threshold, min_area_mm2=min_area_mm2) as seg:
        return RunModel(
            # The key, not the file: the workers must open the same (file, runtime) pair.
            artifact=candidate_key(seg.artifact),
            backend=seg.backend_name,
            sha256=seg.artifact.sha256,
            threshold=seg.threshold,
            min_area_mm2=seg.min_area_mm2,
            threads=threads,
            info=seg.model_info,
        )


@dataclass
class Summary:
    """What a run did. ``scans_per_s`` counts the scans processed this run over the processing time
    (from the dataset's start to the last commit: Ray's start-up and the enumeration are not in it)."""

    source: str
    out: str
    run_id: str
    found: int
    skipped: int
    processed: int = 0
    done: int = 0
    failed: int = 0
    left: int = 0
    parts: int = 0
    enumerate_s: float = 0.0
    ray_start_s: float = 0.0
    processing_s: float = 0.0
    elapsed_s: float = 0.0
    scans_per_s: float | None = None
    workers: int = 1
    model: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _refs(opts: BatchOptions) -> list[ScanRef]:
    from bcedge.batch import sources

    kind = describe_source(opts.source)
    if kind == "dicomweb":
        from bcedge.batch.dicomweb import dicomweb_refs

        refs = dicomweb_refs(opts.source, study_date=opts.study_date, modality=opts.modality)
    elif kind == "manifest":
        refs = sources.manifest_refs(opts.source)
    else:
        out = opts.out.resolve()
        refs = sources.folder_refs(opts.source, exclude=out)
    seen: set[str] = set()
    unique: list[ScanRef] = []
    for ref in refs:
        if ref.key not in seen:  # an instance listed twice (two series queries, a repeated path) is one scan
            seen.add(ref.key)
            unique.append(ref)
    return unique


def check_options(opts: BatchOptions) -> None:
    """Reject impossible option combinations before anything starts (ConfigError, exit code 2)."""
    from bcedge.batch.sources import is_dicomweb_url

    if opts.workers < 1:
        raise ConfigError(f"--workers is {opts.workers}; expected at least 1")
    if opts.limit is not None and opts.limit < 0:
        raise ConfigError(f"--limit is {opts.limit}; expected 0 or more")
    if opts.stow and not is_dicomweb_url(opts.source):
        raise ConfigError("--stow sends SEGs back to a DICOMweb source; SOURCE is not an http(s):// URL")
    if opts.stow and "seg" not in opts.kinds:
        raise ConfigError("--stow needs 'seg' in --outputs")
    if opts.study_date is not None and not is_dicomweb_url(opts.source):
        raise ConfigError("--study-date applies to a DICOMweb source")
    if opts.object_store_mb < 75:
        raise ConfigError(f"--object-store-mb is {opts.object_store_mb}; Ray needs at least 75")
    describe_source(opts.source)  # a missing folder or manifest fails before the model is opened


def _ray_error(exc: BaseException) -> BcedgeError:
    """The BcedgeError a worker raised (BackendError: exit 3), else a RayRunError (exit 4)."""
    seen = exc
    for _ in range(8):
        if isinstance(seen, BcedgeError):
            return seen
        nxt = getattr(seen, "cause", None) or seen.__cause__
        if nxt is None or nxt is seen:
            break
        seen = nxt
    # Ray's messages put the worker's traceback first and the error itself last.
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return RayRunError(f"the Ray run failed: {lines[-1] if lines else type(exc).__name__}")


def worker_threads(threads: int | None, workers: int, address: str | None) -> int:
    """Backend threads per worker: ``threads`` when asked for; else, on a local Ray, this machine's usable
    CPUs split between the ``workers`` (at least 1); on a cluster 1 (each actor reserves one Ray CPU, and
    the driver cannot know how many actors share a node)."""
    if threads is not None:
        return threads
    if address:
        return 1
    from bcedge.cpus import default_threads

    return default_threads(None, share=workers)


def block_sizes(pending: int, workers: int, batch_size: int, requested: int | None) -> list[int]:
    """Scans per block (= per committed part), in the order the blocks are handed out; they sum to ``pending``.

    One worker: about 8 equal blocks (progress and crash granularity: a crash redoes at most one part).
    Several: guided self-scheduling, each block ``1 / (GUIDED_SHARE * workers)`` of the scans left, so
    blocks shrink towards the end: a worker out of blocks waits idle for the others' last ones (with
    equal blocks one of 2 workers sat idle for the whole last block of a 60-scan run, measured under
    load from the table's ``finished_at``). A block holds at least a model batch, at most
    :data:`MAX_BLOCK` scans, and every worker gets one. ``--block-size``: that size, the remainder last.
    """
    if pending <= 0:
        return []
    cap = min(MAX_BLOCK, math.ceil(pending / workers))
    if requested is not None or workers == 1:
        size = max(1, requested) if requested is not None else min(cap, max(batch_size, math.ceil(pending / 8)))
        return [size] * (pending // size) + ([pending % size] if pending % size else [])
    sizes: list[int] = []
    left = pending
    while left > 0:
        size = min(left, cap, max(batch_size, 1, math.ceil(left / (GUIDED_SHARE * workers))))
        sizes.append(size)
        left -= size
    return sizes


def _blocks(refs: list[ScanRef], sizes: list[int]) -> list[Any]:
    """``refs`` cut into Arrow tables of ``sizes`` rows (Ray Data blocks: one ``ScanWorker`` call each)."""
    from itertools import accumulate

    import pyarrow as pa

    rows = [r.to_dict() for r in refs]
    return [pa.Table.from_pylist(rows[end - n : end]) for n, end in zip(sizes, accumulate(sizes), strict=True)]


def run_batch(
    opts: BatchOptions, *, on_block: Callable[[int, int, int], None] | None = None, progress: bool = False
) -> Summary:
    """Run ``opts`` to the end; returns the :class:`Summary`.

    Args:
        opts: the run's options.
        on_block: called after each commit with (scans committed so far, of which failed, total to do).
        progress: show a rich progress bar with ETA on stderr.

    Raises:
        BcedgeError: a problem with every scan (bundle: exit 3; options, source: exit 2; Ray: exit 4).
    """
    t_start = time.perf_counter()
    check_options(opts)
    try:
        import pyarrow  # noqa: F401
        import ray  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError("bcedge batch", "batch", exc.name or "ray[data]") from None
    from bcedge.batch.ledger import Ledger
    from bcedge.pipeline import default_bundle_path

    bundle = (opts.model or default_bundle_path()).resolve()
    threads = worker_threads(opts.threads, opts.workers, opts.address)
    run_model = choose_model(bundle, opts.backend, threads, opts.threshold, opts.min_area_mm2)
    model, fp = run_model.info, run_model.fingerprint
    out = opts.out.resolve()
    with Ledger(out) as ledger:
        t0 = time.perf_counter()
        refs = _refs(opts)
        done = ledger.done_keys(fp)
        pending = [r for r in refs if r.key not in done]
        summary = Summary(
            source=opts.source,
            out=str(out),
            run_id=ledger.run_id,
            found=len(refs),
            skipped=len(refs) - len(pending),
            workers=opts.workers,
            model=model,
        )
        if opts.limit is not None:
            summary.left = max(0, len(pending) - opts.limit)
            pending = pending[: opts.limit]
        summary.enumerate_s = time.perf_counter() - t0
        if pending:
            ledger.record_run(
                {
                    "run_id": ledger.run_id,
                    "source": opts.source,
                    "fingerprint": fp,
                    "workers": opts.workers,
                    "threads_per_worker": threads,
                    "scans": len(pending),
                    "model": model,
                }
            )
            _process(opts, pending, ledger, summary, bundle, run_model, on_block, progress)
    summary.elapsed_s = time.perf_counter() - t_start
    return summary


def worker_options(opts: BatchOptions, bundle: Path, run_model: RunModel, out: str | Path) -> WorkerOptions:
    """What every worker of the run gets: the driver's artifact, backend, threads and settings."""
    from bcedge.batch.sources import is_dicomweb_url
    from bcedge.batch.worker import WorkerOptions

    return WorkerOptions(
        bundle=str(bundle),
        backend=run_model.backend,
        artifact=run_model.artifact,
        artifact_sha256=run_model.sha256,
        model=run_model.info,
        threads=run_model.threads,
        threshold=run_model.threshold,
        min_area_mm2=run_model.min_area_mm2,
        out=str(out),
        kinds=tuple(opts.kinds),
        batch_size=opts.batch_size,
        dicomweb_url=opts.source.rstrip("/") if is_dicomweb_url(opts.source) else None,
        stow=opts.stow,
        fingerprint=run_model.fingerprint,
    )


def _process(
    opts: BatchOptions,
    pending: list[ScanRef],
    ledger: Any,
    summary: Summary,
    bundle: Path,
    run_model: RunModel,
    on_block: Callable[[int, int, int], None] | None,
    progress: bool,
) -> None:
    import ray

    from bcedge.batch.worker import ScanWorker

    t0 = time.perf_counter()
    started = start_ray(opts.address, opts.workers, opts.object_store_mb)
    summary.ray_start_s = time.perf_counter() - t0
    try:
        _quiet_ray_data()
        worker_opts = worker_options(opts, bundle, run_model, summary.out)
        sizes = block_sizes(len(pending), opts.workers, opts.batch_size, opts.block_size)
        t1 = time.perf_counter()
        # One Arrow table per block, so each block has the size block_sizes chose (from_items cuts equal ones).
        ds = ray.data.from_arrow(_blocks(pending, sizes))
        ds = ds.map_batches(
            ScanWorker,
            fn_constructor_kwargs={"options": worker_opts.to_dict()},
            batch_size=None,  # a whole block per call: one committed part
            batch_format="numpy",
            # Several workers: one block at a time each. With Ray Data's default of 2, the run's last block
            # waited queued behind a busy worker while the other sat idle (see block_sizes). Blocks carry
            # only refs, so there is nothing to prefetch; one worker keeps the default (its next block waits
            # at the actor, no round trip to the driver between blocks).
            compute=ray.data.ActorPoolStrategy(
                size=min(opts.workers, len(sizes)), max_tasks_in_flight_per_actor=1 if opts.workers > 1 else None
            ),
            num_cpus=1,
            # Ray Data restarts actors and retries their tasks forever by default: a scan that kills its
            # worker every time (a decoder crash, the OOM killer) would loop. A few restarts cover a
            # worker lost to a node going away; past them the run stops (exit 4) instead of spinning.
            max_restarts=WORKER_RESTARTS,
            max_task_retries=WORKER_RESTARTS,
        )
        _consume(ds, ledger, summary, len(pending), on_block, progress)
        summary.processing_s = time.perf_counter() - t1
        if summary.processed:
            summary.scans_per_s = summary.processed / summary.processing_s
    finally:
        if started:
            ray.shutdown()


def _consume(
    ds: Any,
    ledger: Any,
    summary: Summary,
    total: int,
    on_block: Callable[[int, int, int], None] | None,
    progress: bool,
) -> None:
    from contextlib import nullcontext

    from bcedge.cli.progress import progress_bar

    bar = progress_bar(info=True, transient=False) if progress else None
    t0 = time.perf_counter()
    with bar if bar is not None else nullcontext():
        task = bar.add_task("bcedge batch", total=total, info="") if bar is not None else None
        try:
            for block in ds.iter_batches(batch_size=None, batch_format="numpy"):
                rows = [json.loads(str(r)) for r in block["row"]]
                findings = [f for text in block["findings"] for f in json.loads(str(text))]
                ledger.commit(rows, findings)
                summary.parts += 1
                summary.processed += len(rows)
                failed = [r for r in rows if r["status"] != "done"]
                summary.failed += len(failed)
                summary.done += len(rows) - len(failed)
                summary.errors.extend(f"{r['path']}: {r['error']}" for r in failed)
                if bar is not None:
                    rate = summary.processed / max(time.perf_counter() - t0, 1e-9)
                    bar.update(task, completed=summary.processed, info=f"{rate:.2f} scans/s, {summary.failed} failed")
                if on_block is not None:
                    on_block(summary.processed, summary.failed, total)
        except BcedgeError:
            raise
        except Exception as exc:  # Ray's wrappers around a worker's exception, lost actors...
            raise _ray_error(exc) from exc
