"""Which artifact runs here: the on-device acceptance check and the measured choice, cached per machine.

``--backend auto`` (``bcedge infer``, ``serve``, ``benchmark``; :class:`bcedge.pipeline.Segmenter`)
goes through :func:`ranking_for`, the ranking it hands to :func:`bcedge.formats.choose_artifact`:

1. the candidates are the bundle's artifacts whose export gate passed and whose backend can run
   here, in the static order of :data:`bcedge.formats.AUTO_PREFERENCE` (only the order in which
   they are tried, and the tie-break);
2. each is opened on this machine and run on the bundle's acceptance inputs
   (:mod:`bcedge.acceptance`): an artifact that disagrees with the reference is **refused**
   (one ``warning:`` line naming the artifact, the machine and the disagreement) and one that
   fails to load or run is skipped; the same calls are timed, plus a few more, within a budget
   (:data:`DEFAULT_BUDGET_S` seconds for all candidates together); then the candidates accepted
   in this run are timed again side by side, interleaved (:data:`INTERLEAVED_ROUNDS`), and those
   medians replace the one-after-the-other ones;
3. the fastest accepted artifact (median milliseconds per image at the thread count in use) runs;
   for a job of known length (``bcedge infer`` of n files: ``scans``) the one with the lowest
   start-up (open plus first call, timed too) plus n - 1 calls.

A candidate is an (artifact, backend) pair: an artifact on its own backend, or on an alternate
runtime that reads its file (:data:`bcedge.formats.ALTERNATE_RUNTIMES`: the FP16 ``.tflite`` on
OpenVINO), keyed :func:`bcedge.formats.candidate_key`.

``--backend NAME`` skips the timing: the first artifact of that backend (static order) that
passes the acceptance check runs; when every one is refused the command stops with exit code 3
(:class:`bcedge.formats.RefusedError`), since a model known to disagree with its reference on this
machine must not produce masks unnoticed. ``BCEDGE_ACCEPTANCE=off`` runs it anyway, with a warning.

The verdicts and timings are cached in ``$XDG_CACHE_HOME/bcedge/choice/`` (default
``~/.cache/bcedge/choice/``), one JSON file per bundle (:attr:`bcedge.bundle.Bundle.digest`, which
covers every artifact's SHA-256) and machine fingerprint (CPU model and flags, GPUs when a
candidate runs on one, the versions of the runtime libraries, bcedge's version): a second run
opens only the chosen artifact. Files are replaced atomically; one that does not parse is
ignored and rewritten; a cache that cannot be written costs a re-measurement next time, never an
error. Concurrent first runs (``bcedge serve``'s workers) take a lock so the timing is not
disturbed by a second measurement. Delete the folder to measure again.

Environment (read when a choice is made, never at import):

* ``BCEDGE_CHOICE``: ``measure`` (default) or ``static`` (no timing: the first candidate in the
  static order that passes the acceptance check; what the test suite uses for speed).
* ``BCEDGE_ACCEPTANCE``: ``on`` (default) or ``off`` (no acceptance check; a warning says so).
* ``BCEDGE_CHOICE_BUDGET_S``: the timing budget in seconds (default 5).

Standard library here; NumPy, the backends and :mod:`bcedge.acceptance` are imported only when
something has to be measured.

Why one module: the settings, the machine fingerprint, the cache file, the measuring and the
ordering are one decision with one cache key; split up, each part would need the others' private
layout (the cache entries' fields, the fingerprint the key is made of).
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Iterator, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bcedge import __version__
from bcedge.errors import BcedgeError, first_line
from bcedge.formats import Ranking, RefusedError, acceptance_spec, candidate_key, preference_rank

if TYPE_CHECKING:
    from bcedge.acceptance import AcceptanceData
    from bcedge.backends.base import Backend
    from bcedge.bundle import ArtifactRecord, Bundle

MODE_ENV = "BCEDGE_CHOICE"
ACCEPTANCE_ENV = "BCEDGE_ACCEPTANCE"
BUDGET_ENV = "BCEDGE_CHOICE_BUDGET_S"
#: Seconds of measuring (opening, acceptance runs, timing) spent on all candidates together.
DEFAULT_BUDGET_S = 5.0
#: Timed calls per candidate: at least this many ...
MIN_RUNS = 5
#: ... and more, up to :data:`MAX_RUNS`, until this many seconds of calls were timed.
MIN_TIMED_S = 0.3
MAX_RUNS = 30
#: Rounds (at least; more while the budget lasts) of the interleaved timing of the candidates
#: accepted in one measuring run: every candidate runs every timing input once per round, the
#: order reversed every other round, and its time is the median over these calls. Why: timed one
#: after the other, a transient load or the first candidate's cold start was enough to mis-rank the
#: mass model's FP16 and dynamic INT8 (session 15: one first use measured 146 vs 123 ms and cached
#: the INT8; benchmarks/bench_any_width.py's interleaved timing: 94 vs 129).
INTERLEAVED_ROUNDS = 2
#: Layout of the cache files (2: timings carry whether the machine was busy; version-1 files,
#: whose timings may have been taken on a busy machine, are measured again. 3: entries are keyed by
#: candidate (:func:`bcedge.formats.candidate_key`) and carry the start-up cost ``start_ms``).
CACHE_VERSION = 3
#: Share of the machine's CPUs other processes may use while a candidate is timed before its time
#: counts as taken on a busy machine (a quarter: half a core of a 2-core device).
BUSY_SHARE = 0.25
#: A busy timing is taken again at the next starts, this many times in all, keeping the quiet one
#: (or the lowest): a choice made while another job held the CPUs must not stay cached for good.
MAX_BUSY_TRIES = 3
#: False inside :func:`cached_timings`: a cached timing marked busy answers as it is.
_RETIME_BUSY: contextvars.ContextVar[bool] = contextvars.ContextVar("bcedge_choice_retime_busy", default=True)
#: Distributions whose versions enter the machine fingerprint (a new runtime may compute differently).
RUNTIME_DISTRIBUTIONS = (
    "ai-edge-litert",
    "tflite-runtime",
    "tensorflow",
    "tensorflow-cpu",
    "onnxruntime",
    "onnxruntime-gpu",
    "openvino",
    "tensorrt",
    "keras",
    "numpy",
)
#: The reference model's backend: timed only when nothing exported was accepted (see :func:`_evaluate`).
REFERENCE_BACKEND = "keras"
#: Backends that run on a GPU: only bundles with such a candidate pay for asking ``nvidia-smi``.
_GPU_BACKENDS = ("tensorrt", "onnx")


# --------------------------------------------------------------------------- settings


def _setting(name: str, allowed: tuple[str, ...]) -> str:
    from bcedge.errors import ConfigError

    value = os.environ.get(name, "").strip().lower() or allowed[0]
    if value not in allowed:
        raise ConfigError(f"{name}={os.environ.get(name)!r}; expected one of {', '.join(allowed)}")
    return value


def choice_mode() -> str:
    """``measure`` or ``static`` (``BCEDGE_CHOICE``). ConfigError for another value."""
    return _setting(MODE_ENV, ("measure", "static"))


def acceptance_enabled() -> bool:
    """False only with ``BCEDGE_ACCEPTANCE=off``. ConfigError for a value other than on/off."""
    return _setting(ACCEPTANCE_ENV, ("on", "off")) == "on"


def budget_s() -> float:
    """The timing budget in seconds (``BCEDGE_CHOICE_BUDGET_S``, default :data:`DEFAULT_BUDGET_S`)."""
    from bcedge.errors import ConfigError

    text = os.environ.get(BUDGET_ENV, "").strip()
    if not text:
        return DEFAULT_BUDGET_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 3600.0:
        raise ConfigError(f"{BUDGET_ENV}={text!r}; expected seconds between 0 and 3600")
    return value


@contextlib.contextmanager
def cached_timings() -> Iterator[None]:
    """Within this block, choices come from the cache without timing anything taken before.

    A timing taken on a busy machine is normally taken again at the next starts
    (:data:`MAX_BUSY_TRIES`). ``bcedge serve`` must not do that when it (re)starts: after a
    ``kill -9`` the spooled scans wait for its workers, and a restart under a burst is busy by
    nature, so each re-timing costs the acceptance runs plus up to :data:`DEFAULT_BUDGET_S` seconds
    of timing (4-5 s of CPU for the 512 px mass model's two artifacts on the 2-core machine) and is
    marked busy again. Inside the block a cached timing answers as it is, busy or not; what was
    never measured on this machine (a new bundle, machine or runtime) is still measured, once.
    ``bcedge infer``, ``bcedge benchmark`` and ``bcedge serve --check-config`` still take busy
    timings again (a busy choice is refreshed by running one of them).
    """
    token = _RETIME_BUSY.set(False)
    try:
        yield
    finally:
        _RETIME_BUSY.reset(token)


def user_cache(name: str) -> Path:
    """``$XDG_CACHE_HOME/bcedge/<name>`` (``~/.cache/bcedge/<name>`` when unset or not absolute)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".cache"
    return root / "bcedge" / name


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/bcedge/choice``: the choice's cache files (:func:`user_cache`)."""
    return user_cache("choice")


# --------------------------------------------------------------------------- the machine


def cpu_identity() -> dict[str, Any]:
    """``{"model", "arch", "flags_sha256", "simd"}``: the CPU model, its flags (hashed), the SIMD ones named."""
    from bcedge.cpus import SIMD_FLAGS, cpu_model_and_flags

    model, flag_set = cpu_model_and_flags()
    flags = sorted(flag_set)
    return {
        "model": model or platform.processor() or platform.machine(),
        "arch": platform.machine(),
        "flags_sha256": hashlib.sha256(" ".join(flags).encode()).hexdigest(),
        # Named in messages; all flags enter the fingerprint, through their hash.
        "simd": [f for f in SIMD_FLAGS if f in flags],
    }


def _gpu_names() -> list[str]:
    """GPU names and driver (:func:`bcedge.bench.machine.gpu_info`), imported only when a GPU candidate runs."""
    from bcedge.bench.machine import gpu_info

    return gpu_info()


def _normalise(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def runtime_versions(names: Sequence[str] = RUNTIME_DISTRIBUTIONS) -> dict[str, str]:
    """Installed versions of ``names`` from the ``*.dist-info`` folder names on ``sys.path``.

    One directory listing per path entry (a few ms) instead of :mod:`importlib.metadata`, which
    reads every distribution's metadata (~60 ms for these nine): this runs on every start.
    """
    wanted = {_normalise(n) for n in names}
    found: dict[str, str] = {}
    for entry in sys.path:
        # Only the package folders: sys.path[0] may be the working directory, e.g. a folder of scans.
        if not entry.rstrip("/\\").endswith(("site-packages", "dist-packages")):
            continue
        try:
            listing = os.listdir(entry)
        except OSError:
            continue
        for item in listing:
            if not item.endswith(".dist-info"):
                continue
            dist, _, version = item[: -len(".dist-info")].partition("-")
            key = _normalise(dist)
            if key in wanted and key not in found and version:
                found[key] = version
    return dict(sorted(found.items()))


def machine_fingerprint(*, with_gpu: bool) -> dict[str, Any]:
    """What decides whether a measured choice still holds: CPU, GPUs (``with_gpu``), runtimes, bcedge."""
    return {
        "cpu": cpu_identity(),
        "gpu": _gpu_names() if with_gpu else None,
        "runtimes": runtime_versions(),
        "bcedge": __version__,
        "python": platform.python_version(),
    }


def describe_machine(fingerprint: dict[str, Any]) -> str:
    """One phrase, e.g. ``AMD EPYC 7B13 (x86_64; avx2, fma; no avx512f, avx512_vnni)``."""
    cpu = fingerprint["cpu"]
    have = cpu["simd"]
    x86 = cpu["arch"] in ("x86_64", "AMD64", "i686")
    missing = [f for f in ("avx512f", "avx512_vnni") if x86 and f not in have]
    simd = ", ".join(have) or "no SIMD flags named"
    text = f"{cpu['model']} ({cpu['arch']}; {simd}" + (f"; no {', '.join(missing)}" if missing else "") + ")"
    if fingerprint.get("gpu"):
        text += f", GPU {', '.join(fingerprint['gpu'])}"
    return text


# --------------------------------------------------------------------------- the cache


class ChoiceCache:
    """One JSON file per (bundle, machine): the verdict and timings of each artifact.

    ``{"version", "key", "artifacts": {candidate key: {"sha256", "status", "acceptance", "reason", "ms": {threads:
    ms}, "runs": {threads: n}, "start_ms": {threads: ms}, ...}}}`` (the candidate key is the file, or
    ``file@backend`` for an alternate runtime: :func:`bcedge.formats.candidate_key`).
    """

    def __init__(self, root: Path, key: dict[str, Any]) -> None:
        self.key = key
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        self.path = root / f"{digest[:32]}.json"
        self.notes: list[str] = []

    def load(self) -> dict[str, dict[str, Any]]:
        """The artifacts' entries; empty when the file is absent, unreadable or not ours (it is rewritten)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError) as exc:
            self.notes.append(f"choice cache {self.path} unreadable ({first_line(exc)}); measuring again")
            return {}
        try:
            doc = json.loads(text)
            ok = doc.get("version") == CACHE_VERSION and doc.get("key") == self.key
            artifacts = doc.get("artifacts")
            ok = ok and isinstance(artifacts, dict) and all(isinstance(v, dict) for v in artifacts.values())
        except (ValueError, AttributeError, RecursionError):
            ok = False
        if not ok:
            self.notes.append(f"choice cache {self.path} is damaged or foreign; measuring again")
            return {}
        return artifacts

    def save(self, artifacts: dict[str, dict[str, Any]]) -> None:
        """Replace the file atomically; a failure is a note, not an error (the next run measures again)."""
        from bcedge.imageio import atomic_write_bytes

        doc = {"version": CACHE_VERSION, "key": self.key, "artifacts": artifacts}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.path, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode("utf-8"))
        except (OSError, BcedgeError) as exc:
            self.notes.append(f"choice cache {self.path} not written ({first_line(exc)}); measuring again next time")

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold an exclusive lock beside the file while measuring (no lock where fcntl or the folder is missing)."""
        try:
            import fcntl

            self.path.parent.mkdir(parents=True, exist_ok=True)
            fh = open(self.path.with_suffix(".lock"), "a+b")  # noqa: SIM115 - held across the yield
        except (ImportError, OSError):
            yield
            return
        try:
            with contextlib.suppress(OSError):
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            yield
        finally:
            fh.close()  # releases the lock


# --------------------------------------------------------------------------- the report


@dataclass
class ChoiceReport:
    """How the artifact was chosen (``model.choice`` in ``--json`` output; JSON-ready via :meth:`to_dict`).

    Attributes:
        mode: ``measured`` (``auto``), ``static`` (``auto`` with ``BCEDGE_CHOICE=static``), ``named``
            (``--backend NAME``) or ``explicit`` (an artifact given by file; nothing checked).
        backend: the ``--backend`` value.
        threads: thread count the candidates were timed with (None: the library default).
        machine: :func:`describe_machine`.
        scans: the job's number of scans the choice was made for (start-up counted), or None
            (a long-running job: time per call only).
        acceptance: ``on`` | ``off`` | ``not-available`` (the bundle carries no acceptance data).
        cache: the cache file, or None.
        candidates: per candidate tried or skipped: ``file``, ``key`` (:func:`bcedge.formats.candidate_key`:
            the file, or ``file@backend`` for an alternate runtime), ``format``, ``precision``, ``backend``,
            ``status`` (``accepted`` | ``refused`` | ``failed`` | ``not-measured``), ``acceptance``
            (:meth:`bcedge.acceptance.Verdict.to_dict` or None), ``ms`` (median per image),
            ``start_ms`` (open plus first call, measured when it was timed) and ``runs``, ``reason``,
            ``cached`` (from an earlier run).
        chosen: the candidate that runs (its ``key``).
        why: one sentence.
        seconds: time spent measuring in this process (0 when everything came from the cache).
        warnings: one-line notes for the user (refusals measured now, a cache that could not be used).
    """

    mode: str
    backend: str
    threads: int | None = None
    machine: str = ""
    acceptance: str = "on"
    scans: int | None = None
    cache: str | None = None
    candidates: list[dict[str, Any]] = field(default_factory=list)
    chosen: str | None = None
    why: str = ""
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (``warnings`` left out: they are printed, and the candidates hold the same facts)."""
        return {
            "mode": self.mode,
            "backend": self.backend,
            "threads": self.threads,
            "scans": self.scans,
            "machine": self.machine,
            "acceptance": self.acceptance,
            "cache": self.cache,
            "candidates": [dict(c) for c in self.candidates],
            "chosen": self.chosen,
            "why": self.why,
            "seconds": round(self.seconds, 3),
        }

    def lines(self) -> list[str]:
        """Human-readable lines: the choice and why, then one per candidate."""
        out = [f"choice: {self.chosen or 'none'} ({self.mode}): {self.why}"]
        for c in self.candidates:
            acc = c.get("acceptance") or {}
            parts = [f"{c['file']} [{c['format']}/{c['precision']} on {c['backend']}]: {c['status']}"]
            if c.get("ms") is not None:
                parts.append(f"{c['ms']:.2f} ms/image ({c.get('runs')} runs)")
            if acc:
                parts.append(f"acceptance Dice {acc['dice']:.4f}, mean |dp| {acc['mean_abs']:.2g}")
            if c.get("reason"):
                parts.append(c["reason"])
            if c.get("cached"):
                parts.append("cached")
            out.append("  " + "; ".join(parts))
        return out

    def finish(self, record: ArtifactRecord) -> dict[str, Any]:
        """Record the chosen artifact and return :meth:`to_dict`."""
        self.chosen = candidate_key(record)
        if not self.why:
            self.why = "chosen"
        return self.to_dict()


def explicit_report(record: ArtifactRecord, backend: str, threads: int | None) -> ChoiceReport:
    """The report of an artifact named by the caller (benchmark rows, ``Segmenter(artifact=...)``)."""
    return ChoiceReport(
        mode="explicit",
        backend=backend,
        threads=threads,
        acceptance="off",
        why="the artifact was named by the caller; no acceptance check, no timing",
    )


# --------------------------------------------------------------------------- measuring


def _probe_images(size: int) -> Any:
    """(1, S, S, 1) float32 in [0, 1]: a fixed input to time a bundle that carries no acceptance data."""
    import numpy as np

    return np.random.default_rng(0).random((1, size, size, 1), dtype=np.float32)


def _measure(
    bundle: Bundle,
    record: ArtifactRecord,
    data: AcceptanceData | None,
    *,
    threads: int | None,
    timed: bool,
    deadline: float,
    keep: dict[str, Backend] | None = None,
) -> dict[str, Any]:
    """Open ``record`` here, run the acceptance inputs (timed), and with ``timed`` a few more calls.

    ``keep``: an accepted exported artifact's open backend is left in it (``{file: backend}``) for
    :func:`_interleave` instead of being closed.

    Returns:
        The cache entry: ``status`` (accepted | refused | failed), ``acceptance`` (verdict dict or
        None), ``reason``, ``ms`` (median milliseconds per image) and ``runs`` (timed calls: the
        acceptance calls, plus more when ``timed``) unless it failed.
    """
    import numpy as np

    from bcedge.acceptance import baseline_of, compare

    entry: dict[str, Any] = {"sha256": record.sha256, "acceptance": None, "reason": None}
    images = data.images if data is not None else _probe_images(bundle.input_size)
    opened = time.perf_counter()
    try:
        backend = bundle.open(record, threads=threads)
    except BcedgeError as exc:
        return {**entry, "status": "failed", "reason": f"failed to load: {first_line(exc)}"}
    except Exception as exc:  # a backend library's own exception: this artifact cannot run here
        return {**entry, "status": "failed", "reason": f"failed to load: {type(exc).__name__}: {first_line(exc)}"}
    times: list[float] = []
    outputs = []
    machine0, own0, wall0 = _machine_cpu_s(), time.process_time(), time.perf_counter()
    try:
        backend.predict(images[:1])  # warm-up: delegate set-up, first allocation
        start_ms = 1000.0 * (time.perf_counter() - opened)
        for i in range(len(images)):
            t0 = time.perf_counter()
            outputs.append(backend.predict(images[i : i + 1]))
            times.append(time.perf_counter() - t0)
        if timed:
            while len(times) < MAX_RUNS and (len(times) < MIN_RUNS or sum(times) < MIN_TIMED_S):
                if time.monotonic() > deadline and len(times) >= 3:
                    break
                t0 = time.perf_counter()
                backend.predict(images[:1])
                times.append(time.perf_counter() - t0)
    except Exception as exc:  # any failure to run is this artifact's, reported, and the next one is tried
        backend.close()
        return {**entry, "status": "failed", "reason": f"failed to run: {type(exc).__name__}: {first_line(exc)}"}
    status = "accepted"
    if data is not None:
        # Every kind's tolerance is its precision's, or that of the arithmetic the runtime chose (BF16).
        tolerance = acceptance_spec(record.precision, backend.details.get("compute_precision")).output_tolerance
        baseline = baseline_of(bundle.manifest.acceptance, record.file, record.sha256)
        try:
            verdict = compare(
                np.concatenate(outputs), data, threshold=bundle.threshold, output_tolerance=tolerance, baseline=baseline
            )
        except BaseException:
            backend.close()
            raise
        entry["acceptance"] = verdict.to_dict()
        if not verdict.passed:
            status, entry["reason"] = "refused", verdict.disagreement()
    entry["status"] = status
    if keep is not None and status == "accepted" and record.backend != REFERENCE_BACKEND:
        keep[candidate_key(record)] = backend
    else:
        backend.close()
    # The acceptance calls are timed too: a lone candidate needs no further runs to report its speed.
    entry["ms"] = 1000.0 * float(sorted(times)[len(times) // 2])
    entry["runs"] = len(times)
    entry["busy"] = _others_share(machine0, own0, wall0) > BUSY_SHARE
    entry["start_ms"] = start_ms
    return entry


def _interleave(
    kept: dict[str, Backend],
    entries: dict[str, dict[str, Any]],
    data: AcceptanceData | None,
    bundle: Bundle,
    *,
    threads: int | None,
    deadline: float,
) -> None:
    """Time the candidates accepted in this run side by side; their ``ms`` become those medians.

    ``kept``: the open backends :func:`_measure` left (exported artifacts accepted now; the Keras
    reference is not among them); nothing happens with fewer than two. Rounds over the timing
    inputs (the acceptance images, else the probe image): :data:`INTERLEAVED_ROUNDS` at least, more
    while within ``deadline`` (a larger budget buys a longer side-by-side timing) and under
    :data:`MAX_RUNS` calls per candidate. A failure here keeps the one-after-the-other timings.
    """
    if len(kept) < 2:
        return
    tkey = _threads_key(threads)
    images = data.images if data is not None else _probe_images(bundle.input_size)
    times: dict[str, list[float]] = {file: [] for file in kept}
    machine0, own0, wall0 = _machine_cpu_s(), time.process_time(), time.perf_counter()
    try:
        k = 0
        while k < INTERLEAVED_ROUNDS or (
            time.monotonic() < deadline and len(next(iter(times.values()))) + len(images) <= MAX_RUNS
        ):
            for file in list(kept) if k % 2 == 0 else list(reversed(kept)):
                for i in range(len(images)):
                    t0 = time.perf_counter()
                    kept[file].predict(images[i : i + 1])
                    times[file].append(time.perf_counter() - t0)
            k += 1
    except Exception:  # any failure here leaves the one-after-the-other timings as they are
        return
    busy = _others_share(machine0, own0, wall0) > BUSY_SHARE
    for file, calls in times.items():
        if not calls:
            continue
        entry = entries[file]
        entry["ms"][tkey] = 1000.0 * float(sorted(calls)[len(calls) // 2])
        entry["runs"][tkey] = len(calls)
        entry["busy"][tkey] = bool(entry["busy"].get(tkey)) or busy


def _machine_cpu_s() -> float | None:
    """CPU seconds every process has used since boot (``/proc/stat``; idle and iowait excluded), or None."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = fh.readline().split()
        ticks = [int(v) for v in fields[1:9]]
    except (OSError, ValueError):
        return None
    return sum(v for i, v in enumerate(ticks) if i not in (3, 4)) / os.sysconf("SC_CLK_TCK")


def _others_share(machine0: float | None, own0: float, wall0: float) -> float:
    """Share (0-1) of every CPU that other processes used since the three readings (0 when unknown)."""
    machine1, own, wall = _machine_cpu_s(), time.process_time() - own0, time.perf_counter() - wall0
    if machine0 is None or machine1 is None or wall <= 0:
        return 0.0
    return max(0.0, (machine1 - machine0 - own) / (wall * (os.cpu_count() or 1)))


def _threads_key(threads: int | None) -> str:
    return "default" if threads is None else str(threads)


def ranking_for(
    bundle: Bundle, backend: str, *, threads: int | None, scans: int | None = None
) -> tuple[Ranking, ChoiceReport]:
    """The ranking :func:`bcedge.formats.choose_artifact` should use for ``--backend backend``, and its report.

    The ranking measures lazily: nothing is opened until :func:`~bcedge.formats.choose_artifact`
    calls it with the candidates, and with a warm cache only the chosen artifact is ever opened
    (by the caller).

    Args:
        bundle: the loaded bundle.
        backend: ``auto`` or a backend name.
        threads: the thread count the chosen artifact will run with (timings are cached per count).
        scans: how many scans the job will run, when known (``bcedge infer`` of n files): the fastest
            is then the one with the lowest start-up plus n calls (:func:`_job_ms`); None (serve,
            batch, a Segmenter kept open): the lowest time per call.

    Raises:
        ConfigError: a bad ``BCEDGE_CHOICE`` / ``BCEDGE_ACCEPTANCE`` / ``BCEDGE_CHOICE_BUDGET_S`` value.
    """
    mode = choice_mode() if backend == "auto" else "named"
    check = acceptance_enabled()
    measured = mode == "measure"
    report = ChoiceReport(
        mode="measured" if measured else mode,
        backend=backend,
        threads=threads,
        acceptance="on" if check else "off",
        scans=scans,
    )
    budget = budget_s()

    def rank(candidates: Sequence[ArtifactRecord], usable: AbstractSet[str]) -> list[ArtifactRecord]:
        order = preference_rank(candidates, usable)
        if not order:
            return []
        has_data = check and bundle.manifest.acceptance is not None
        if check and not has_data:
            report.acceptance = "not-available"
        # One candidate: nothing to compare, so no timing beyond the acceptance calls.
        timed = measured and len(order) > 1
        if not has_data and not timed:
            # Nothing to check and nothing to compare: open nothing (the caller opens the first).
            entries = {candidate_key(r): {"status": "accepted", "reason": _unchecked(report)} for r in order}
            return _order(bundle, order, entries, report, measured=False, backend=backend)
        with_gpu = any(r.backend in _GPU_BACKENDS for r in order)
        fingerprint = machine_fingerprint(with_gpu=with_gpu)
        report.machine = describe_machine(fingerprint)
        key = {"bundle": bundle.digest, "machine": fingerprint, "acceptance": report.acceptance}
        cache = ChoiceCache(cache_root(), key)
        report.cache = str(cache.path)
        entries = _evaluate(bundle, order, has_data, cache, report, threads=threads, timed=timed, budget=budget)
        return _order(bundle, order, entries, report, measured=measured, backend=backend)

    if not check:
        report.warnings.append(f"acceptance check off ({ACCEPTANCE_ENV}=off): artifacts run unchecked on this machine")
    return rank, report


def _unchecked(report: ChoiceReport) -> str:
    if report.acceptance == "off":
        return f"not checked ({ACCEPTANCE_ENV}=off)"
    return "not checked: the bundle carries no acceptance data"


def _acceptance_data(bundle: Bundle) -> AcceptanceData | None:
    from bcedge.acceptance import load

    return load(bundle)


def _complete(entry: dict[str, Any] | None, record: ArtifactRecord, tkey: str, timed: bool) -> bool:
    """A cached entry answers for ``record`` (same bytes; timed at this thread count when timing matters)."""
    # A failure to load or run is tried again next time (it may have been the moment's, e.g. a busy GPU).
    if not entry or entry.get("sha256") != record.sha256 or entry.get("status") not in ("accepted", "refused"):
        return False
    if not timed or entry["status"] != "accepted":
        return True
    busy = (entry.get("busy") or {}).get(tkey) if isinstance(entry.get("busy"), dict) else False
    tries = (entry.get("tries") or {}).get(tkey, 1) if isinstance(entry.get("tries"), dict) else 1
    retime = busy and tries < MAX_BUSY_TRIES and _RETIME_BUSY.get()
    return tkey in (entry.get("ms") or {}) and not retime


def _evaluate(
    bundle: Bundle,
    order: list[ArtifactRecord],
    has_data: bool,
    cache: ChoiceCache,
    report: ChoiceReport,
    *,
    threads: int | None,
    timed: bool,
    budget: float,
) -> dict[str, dict[str, Any]]:
    """Each candidate's entry (from the cache, or measured now and cached): ``{file: entry}``.

    Untimed (static, named): candidates are tried in order until one is accepted. Timed: every
    candidate, until the budget is spent once at least one was accepted.
    """
    tkey = _threads_key(threads)
    entries = cache.load()
    report.warnings += cache.notes
    if _settled(order, entries, tkey, timed):
        return _flatten(entries, tkey, cached=True)
    start = time.monotonic()
    data: AcceptanceData | None = None
    with cache.lock():
        entries = cache.load() or entries  # another process may have measured while this one waited
        deadline = time.monotonic() + budget
        fresh: set[str] = set()
        kept: dict[str, Backend] = {}  # accepted candidates left open for the interleaved timing
        try:
            for record in order:
                entry = entries.get(candidate_key(record))
                if _complete(entry, record, tkey, timed):
                    if not timed and entry["status"] == "accepted":
                        break
                    continue
                accepted_any = any(
                    entries.get(candidate_key(r), {}).get("status") == "accepted"
                    and _complete(entries.get(candidate_key(r)), r, tkey, timed)
                    for r in order
                )
                if timed and accepted_any and (time.monotonic() > deadline or record.backend == REFERENCE_BACKEND):
                    # Over budget: left for the next run. The Keras reference (desktop; importing its framework
                    # alone takes seconds) is timed only when no exported artifact was accepted.
                    continue
                if has_data and data is None:
                    data = _acceptance_data(bundle)  # read (and hash-checked) only when something runs
                new = _measure(
                    bundle, record, data, threads=threads, timed=timed, deadline=deadline, keep=kept if timed else None
                )
                # Timings at other thread counts stay when the verdict did not change.
                same = bool(entry) and entry.get("sha256") == record.sha256 and entry.get("status") == new["status"]
                old = {k: dict(entry.get(k) or {}) if same and isinstance(entry.get(k), dict) else {} for k in _TIMED}
                if "ms" in new:
                    ms, runs, busy = new.pop("ms"), new.pop("runs"), new.pop("busy")
                    old["start_ms"][tkey] = new.pop("start_ms")
                    if tkey in old["ms"] and old["busy"].get(tkey):
                        # Re-timing a busy measurement: a quiet one replaces it, else the lower (load only slows).
                        old["tries"][tkey] = old["tries"].get(tkey, 1) + 1
                        if busy and old["ms"][tkey] < ms:
                            ms, runs = old["ms"][tkey], old["runs"].get(tkey, runs)
                    else:
                        old["tries"][tkey] = 1
                    old["ms"][tkey], old["runs"][tkey], old["busy"][tkey] = ms, runs, busy
                new.update(old)
                entries[candidate_key(record)] = new
                fresh.add(candidate_key(record))
                if not timed and new["status"] == "accepted":
                    break
            if timed:
                _interleave(kept, entries, data, bundle, threads=threads, deadline=deadline)
        finally:
            for backend in kept.values():
                backend.close()
        cache.save(entries)
    report.seconds = time.monotonic() - start
    report.warnings += [n for n in cache.notes if n not in report.warnings]
    flat = _flatten(entries, tkey, cached=False)
    for file, entry in flat.items():
        entry["cached"] = file not in fresh
    for record in order:
        entry = flat.get(candidate_key(record))
        if entry and candidate_key(record) in fresh and entry["status"] in ("refused", "failed"):
            verb = "refused" if entry["status"] == "refused" else "skipped"
            report.warnings.append(
                f"{verb} {record.describe()} on this machine ({report.machine}): {entry['reason']}; "
                "the choice falls to the next artifact"
            )
    return flat


def _settled(order: list[ArtifactRecord], entries: dict[str, dict[str, Any]], tkey: str, timed: bool) -> bool:
    """The cache answers this run without measuring anything.

    Timed: every candidate is complete, the Keras reference excepted once an exported artifact was
    accepted (it is not timed then). Untimed: the first accepted candidate is known.
    """
    if not timed:
        return _first_decided(order, entries, tkey)
    done = {candidate_key(r) for r in order if _complete(entries.get(candidate_key(r)), r, tkey, timed)}
    accepted = any(entries[f]["status"] == "accepted" for f in done)
    return all(candidate_key(r) in done or (accepted and r.backend == REFERENCE_BACKEND) for r in order)


def _first_decided(order: list[ArtifactRecord], entries: dict[str, dict[str, Any]], tkey: str) -> bool:
    """Untimed: the cache already says which candidate is the first accepted one (all before it refused/failed)."""
    for record in order:
        entry = entries.get(candidate_key(record))
        if not _complete(entry, record, tkey, timed=False):
            return False
        if entry["status"] == "accepted":
            return True
    return True  # every candidate decided (none accepted)


#: The per-thread-count fields of a cache entry (``{threads: value}`` each).
_TIMED = ("ms", "runs", "busy", "tries", "start_ms")


def _flatten(entries: dict[str, dict[str, Any]], tkey: str, *, cached: bool) -> dict[str, dict[str, Any]]:
    """Entries with ``ms`` / ``runs`` / ``busy`` / ``tries`` of this thread count only."""
    out = {}
    for file, entry in entries.items():
        flat = {k: v for k, v in entry.items() if k not in _TIMED}
        for key in _TIMED:
            flat[key] = (entry.get(key) or {}).get(tkey) if isinstance(entry.get(key), dict) else None
        flat["cached"] = cached
        out[file] = flat
    return out


def _order(
    bundle: Bundle,
    order: list[ArtifactRecord],
    entries: dict[str, dict[str, Any]],
    report: ChoiceReport,
    *,
    measured: bool,
    backend: str,
) -> list[ArtifactRecord]:
    """The accepted candidates, fastest first (measured) or in static order; RefusedError when none.

    Fastest: the lowest median milliseconds per image, or with ``report.scans`` = n, the lowest
    :func:`_job_ms` (start-up plus n calls), so a runtime that compiles slowly but calls fast wins
    only the jobs long enough to pay for its start.
    """
    report.candidates = []
    for record in order:
        entry = entries.get(candidate_key(record)) or {}
        report.candidates.append(
            {
                "file": record.file,
                "key": candidate_key(record),
                "format": record.format,
                "precision": record.precision,
                "backend": record.backend,
                "status": entry.get("status", "not-measured"),
                "acceptance": entry.get("acceptance"),
                "ms": None if entry.get("ms") is None else round(float(entry["ms"]), 3),
                "start_ms": None if entry.get("start_ms") is None else round(float(entry["start_ms"]), 1),
                "runs": entry.get("runs"),
                "busy": entry.get("busy"),
                "reason": entry.get("reason") or (None if entry else _unmeasured(record)),
                "cached": bool(entry.get("cached")),
            }
        )
    accepted = [r for r in order if (entries.get(candidate_key(r)) or {}).get("status") == "accepted"]
    if not accepted:
        tried = [r for r in order if candidate_key(r) in entries]
        if not tried:
            return []
        which = "every artifact" if backend == "auto" else f"every {backend} artifact"
        reasons = "; ".join(f"{candidate_key(r)}: {entries[candidate_key(r)]['reason']}" for r in tried)
        raise RefusedError(
            f"{which} of bundle {bundle.dir} was refused on this machine ({report.machine}): {reasons} "
            f"({ACCEPTANCE_ENV}=off runs an artifact unchecked)"
        )
    if not measured:
        checked = report.acceptance == "on"
        if report.mode == "named":
            report.why = f"--backend {backend}: the first {backend} artifact in the static order"
        elif report.mode == "static":
            report.why = f"{MODE_ENV}=static: the first artifact in the static order"
        else:
            report.why = "the only candidate here"
        report.why += (" that passed the acceptance check" if checked else f" ({_unchecked(report)})") + "; no timing"
        return accepted
    entry_of = {candidate_key(r): entries[candidate_key(r)] for r in accepted}
    timed = [r for r in accepted if entry_of[candidate_key(r)].get("ms") is not None]
    rank = {candidate_key(r): i for i, r in enumerate(order)}

    def cost(r: ArtifactRecord) -> float:
        return _job_ms(entry_of[candidate_key(r)], report.scans)

    fastest = sorted(timed, key=lambda r: (cost(r), rank[candidate_key(r)]))
    result = fastest + [r for r in accepted if r not in timed]
    best = result[0]
    if len(fastest) >= 2:
        runner = fastest[1]
        b, r = entry_of[candidate_key(best)], entry_of[candidate_key(runner)]
        report.why = (
            f"fastest of {len(fastest)} accepted artifacts measured here: {b['ms']:.2f} ms/image vs "
            f"{r['ms']:.2f} ms for {candidate_key(runner)} ({_threads_text(report.threads)})"
        )
        if report.scans is not None:
            report.why += (
                f"; for {report.scans} scan(s) with start-up: {cost(best):.0f} ms vs {cost(runner):.0f} ms "
                f"(start-up {b.get('start_ms') or 0:.0f} vs {r.get('start_ms') or 0:.0f} ms)"
            )
        if any(entry_of[candidate_key(x)].get("busy") for x in fastest[:2]):
            report.why += (
                f"; timed while other processes kept the CPUs busy (timed again at the next starts, "
                f"{MAX_BUSY_TRIES} times in all)"
            )
    elif len(order) == 1:
        report.why = f"the only candidate here, timed on its acceptance runs ({_threads_text(report.threads)})"
    else:
        report.why = f"the only accepted artifact measured here ({_threads_text(report.threads)})"
    if report.acceptance == "not-available":
        report.why += "; the bundle carries no acceptance data, so agreement with the reference was not checked"
    elif report.acceptance == "off":
        report.why += f"; acceptance check off ({ACCEPTANCE_ENV}=off)"
    return result


def _job_ms(entry: dict[str, Any], scans: int | None) -> float:
    """What a candidate costs: its median ms per image (``scans`` None: a long-running job), or for
    ``scans`` = n its start-up (open plus first call, ``start_ms``) and n - 1 more calls."""
    ms = float(entry["ms"])
    if scans is None:
        return ms
    start = entry.get("start_ms")
    return ms * scans if start is None else float(start) + ms * max(0, scans - 1)


def _unmeasured(record: ArtifactRecord) -> str:
    if record.backend == REFERENCE_BACKEND:
        return "not measured: the Keras reference is timed only when no exported artifact is accepted"
    return "not measured (over the timing budget; the next start measures it)"


def _threads_text(threads: int | None) -> str:
    return "library default threads" if threads is None else f"{threads} thread(s)"


def resolve(
    bundle: Bundle, backend: str = "auto", *, threads: int | None = None
) -> tuple[ArtifactRecord, ChoiceReport]:
    """The artifact ``--backend backend`` runs here and how it was chosen, without keeping a model open
    (``bcedge serve --check-config``, ``bcedge benchmark``).

    Raises:
        BundleError: no usable artifact, or every candidate refused (RefusedError).
        BackendError: an unknown backend name.
    """
    from bcedge.backends import BACKENDS, auto_backend_names
    from bcedge.formats import choose_artifact

    rank, report = ranking_for(bundle, backend, threads=threads)
    choice = choose_artifact(bundle, backend, auto_backend_names, known=BACKENDS, rank=rank)
    report.warnings.extend(choice.warnings)
    report.finish(choice.record)
    return choice.record, report


__all__ = [
    "ACCEPTANCE_ENV",
    "BUDGET_ENV",
    "DEFAULT_BUDGET_S",
    "MODE_ENV",
    "ChoiceCache",
    "ChoiceReport",
    "acceptance_enabled",
    "budget_s",
    "cache_root",
    "cached_timings",
    "choice_mode",
    "cpu_identity",
    "describe_machine",
    "explicit_report",
    "machine_fingerprint",
    "ranking_for",
    "resolve",
    "runtime_versions",
    "user_cache",
]
