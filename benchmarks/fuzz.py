"""Fuzz bcedge's scan reader with time and memory caps, and run the hostile corpus the same way.

::

    python benchmarks/fuzz.py mutate --mutants 50000 --seed 1 [--out benchmarks/results/fuzz_reader.json]
    python benchmarks/fuzz.py corpus [--out FILE.json]          # benchmarks/hostile.py's cases

Each input runs in a child forked from a warm parent (pydicom, the decoders and OpenCV already
imported: a fork costs ~1 ms, a fresh Python ~100 ms), under ``RLIMIT_AS`` = the parent's
address space + the cap, and a wall-time alarm. The cap is twice what reading the largest
legitimate scan needs, measured at start the same way: a 5928x4728 12-bit MG, the size of the
largest real detector (Fujifilm, 50 um). Every outcome is counted by class:

- ``ok``: read; ``error:<Type>``: a documented :class:`~bcedge.errors.BcedgeError`;
- ``uncaught:<Type>``: any other exception (a bug: the CLI would exit 1);
- ``memory``: MemoryError under the cap, or a peak above it; ``timeout``: killed by the alarm;
- ``crash:<signal>``: the child died (e.g. a decoder's segfault).

Mutations of the seed scans (``benchmarks/hostile.py: write_seeds``): bit flips, interesting
byte values, chunk cuts, chunk duplications, truncation, tag value edits and length-field edits
(explicit VR elements found by walking the seed), and codestream header edits (JPEG SOF, JPEG-LS
SOF55, JPEG 2000 SIZ, RLE header); one to three per mutant. The same ``--seed`` gives the same
mutants. The JSON result records the machine, the command, the caps, the counts per class and
per seed, the slowest inputs and the first examples of every class that is not ``ok``/``error``.
"""

from __future__ import annotations

import os

# Before NumPy/OpenCV load: one thread each, so a forked child holds no pool it cannot use.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import resource  # noqa: E402
import select  # noqa: E402
import signal  # noqa: E402
import struct  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections import Counter  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hostile  # noqa: E402

#: Wall-time limit per input (seconds): issue 15 counts a hang as over 10 s.
TIME_LIMIT_S = 10.0
INTERESTING_16 = (0, 1, 2, 7, 8, 15, 16, 17, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFE, 0xFFFF)
INTERESTING_32 = (0, 1, 2, 3, 0x7F, 0xFF, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF)
_LONG_VR = {b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"OD", b"OL", b"OV", b"UC", b"UR", b"SV", b"UV"}


@dataclass
class Outcome:
    """How one input ended. ``klass``: ok, error:<T>, uncaught:<T>, memory, timeout, crash:<sig>."""

    klass: str
    message: str
    seconds: float
    peak_mb: float


# --------------------------------------------------------------------------- the capped child


def _vm_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _target(entry: str):  # -> Callable[[str], object]
    if entry == "bundle":
        from bcedge.bundle import load_bundle

        return load_bundle
    from bcedge.dicom import read_mammogram

    return read_mammogram


def _memory_related(exc: BaseException) -> bool:
    """Whether a documented error came from a failed allocation (a MemoryError, or a library's
    "Insufficient memory" / "Cannot allocate" in the chain): under the cap that is a refused read,
    without it the same file would have taken the memory, so it counts as over the cap."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        text = str(seen).lower()
        if isinstance(seen, MemoryError) or "memory" in text or "cannot allocate" in text:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def run_capped(path: str, *, entry: str = "reader", cap_bytes: int, time_limit: float = TIME_LIMIT_S) -> Outcome:
    """Read ``path`` in a forked child under an address-space cap and an alarm; classify the end.

    ``peak_mb`` is the child's peak resident memory above its own at the fork (what the read
    itself allocated and touched).
    """
    from bcedge.errors import BcedgeError

    target = _target(entry)
    limit = _vm_kb("VmSize") * 1024 + cap_bytes
    r, w = os.pipe()
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 0
        try:
            os.close(r)
            os.write(w, f"{_vm_kb('VmRSS')}\n".encode())
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            signal.setitimer(signal.ITIMER_REAL, time_limit)
            t0 = time.perf_counter()
            try:
                target(path)
                klass, message = "ok", ""
            except BcedgeError as exc:
                klass, message = f"error:{type(exc).__name__}", str(exc)
                if _memory_related(exc):  # refused only because the cap made an allocation fail
                    klass = "memory"
            except MemoryError as exc:
                klass, message = "memory", f"MemoryError {exc}"
            except BaseException as exc:  # the bug class: everything the reader should have converted
                frames = traceback.extract_tb(exc.__traceback__)
                where = " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in frames[::-1][:4])
                klass, message = f"uncaught:{type(exc).__name__}", f"{str(exc)[:300]} at {where}"
            payload = json.dumps({"klass": klass, "message": message[:600], "seconds": time.perf_counter() - t0})
            os.write(w, payload.encode("utf-8", "replace"))
        except BaseException:
            code = 3
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    deadline = start + time_limit + 5.0
    killed = False
    while True:
        left = deadline - time.perf_counter()
        if left <= 0:
            os.kill(pid, signal.SIGKILL)
            killed = True
            break
        ready, _, _ = select.select([r], [], [], left)
        if ready:
            chunk = os.read(r, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    os.close(r)
    _, status, usage = os.wait4(pid, 0)
    seconds = time.perf_counter() - start
    first, _, rest = b"".join(chunks).partition(b"\n")
    base_rss_kb = int(first) if first.strip().isdigit() else usage.ru_maxrss
    peak_mb = max(0.0, (usage.ru_maxrss - base_rss_kb) / 1024.0)
    if killed or (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGALRM):
        return Outcome("timeout", f"no result within {time_limit:g} s", seconds, peak_mb)
    if os.WIFSIGNALED(status):
        return Outcome(f"crash:{signal.Signals(os.WTERMSIG(status)).name}", "", seconds, peak_mb)
    try:
        data = json.loads(rest.decode("utf-8", "replace"))
    except ValueError:
        return Outcome("crash:no-result", f"exit status {status}", seconds, peak_mb)
    klass = data["klass"]
    if (klass == "ok" or klass.startswith("error:")) and peak_mb * (1 << 20) > cap_bytes:
        klass = "memory"
    return Outcome(klass, data["message"], float(data["seconds"]), peak_mb)


def legitimate_peak(folder: Path) -> dict[str, float]:
    """Peak memory (MB above the parent) of reading full-field legitimate scans, per encoding."""
    from bcedge.dicom_write import MGTags, build_mg_dataset

    rng = np.random.default_rng(0)
    # The largest real detector: Fujifilm Amulet Innovality, 50 um, 4728 x 5928 (28 MP).
    stored = (rng.integers(0, 4096, (5928, 4728))).astype(np.uint16)
    out: dict[str, float] = {}
    # Native only: its peak (the file's bytes + the float32 image) is the larger one; a compressed
    # scan of this size takes seconds to encode, and the peak is within a few MB of native.
    for name, ts in (("native", None),):
        ds = build_mg_dataset(stored, MGTags(bits_stored=12, windows=[(2048, 4096)]))
        path = folder / f"legit_{name}.dcm"
        path.write_bytes(hostile.encode(ds, ts))
        got = run_capped(str(path), cap_bytes=8 << 30, time_limit=300)
        if got.klass != "ok":
            raise SystemExit(f"the legitimate full-field scan ({name}) did not read: {got.klass} {got.message}")
        out[name] = round(got.peak_mb, 1)
        path.unlink()
    return out


# --------------------------------------------------------------------------- mutations


def explicit_elements(data: bytes) -> list[tuple[int, int, bytes, int]]:
    """(offset, tag, VR, length) of the top-level explicit-VR LE elements (file meta and data set)."""
    out: list[tuple[int, int, bytes, int]] = []
    at = 132 if data[128:132] == b"DICM" else 0
    while at + 8 <= len(data):
        group, elem = struct.unpack("<HH", data[at : at + 4])
        vr = data[at + 4 : at + 6]
        if not (vr.isalpha() and vr.isupper()):
            break
        if vr in _LONG_VR:
            if at + 12 > len(data):
                break
            length = struct.unpack("<I", data[at + 8 : at + 12])[0]
            out.append((at, group << 16 | elem, vr, length))
            if length == 0xFFFFFFFF:
                break  # undefined length (sequence, encapsulated pixels): stop the walk here
            at += 12 + length
        else:
            length = struct.unpack("<H", data[at + 6 : at + 8])[0]
            out.append((at, group << 16 | elem, vr, length))
            at += 8 + length
    return out


def _bitflip(rng: random.Random, data: bytearray, _: list) -> str:
    for _i in range(rng.randint(1, 8)):
        pos = rng.randrange(len(data))
        data[pos] ^= 1 << rng.randrange(8)
    return "bitflip"


def _byteset(rng: random.Random, data: bytearray, _: list) -> str:
    for _i in range(rng.randint(1, 4)):
        data[rng.randrange(len(data))] = rng.choice((0, 1, 0x7F, 0x80, 0xFE, 0xFF))
    return "byteset"


def _cut(rng: random.Random, data: bytearray, _: list) -> str:
    start = rng.randrange(len(data))
    del data[start : start + rng.randint(1, max(1, len(data) // 4))]
    return "cut"


def _dup(rng: random.Random, data: bytearray, _: list) -> str:
    start = rng.randrange(len(data))
    chunk = data[start : start + rng.randint(1, 512)]
    at = rng.randrange(len(data) + 1)
    data[at:at] = chunk * rng.choice((1, 1, 2, 8))
    return "duplicate"


def _truncate(rng: random.Random, data: bytearray, _: list) -> str:
    del data[rng.randrange(1, len(data)) :]
    return "truncate"


def _tag_value(rng: random.Random, data: bytearray, elements: list) -> str:
    if not elements:
        return _byteset(rng, data, elements)
    at, _, vr, length = rng.choice(elements)
    head = 12 if vr in _LONG_VR else 8
    if length in (0, 0xFFFFFFFF) or at + head + length > len(data):
        return _bitflip(rng, data, elements)
    if vr in (b"US", b"SS") and length >= 2:
        data[at + head : at + head + 2] = struct.pack("<H", rng.choice(INTERESTING_16))
    elif vr in (b"UL", b"SL") and length >= 4:
        data[at + head : at + head + 4] = struct.pack("<I", rng.choice(INTERESTING_32))
    else:
        junk = rng.choice(
            (b"", b"\x00" * length, b"\xff" * length, b"1e999", b"-0", b"nan", b"\\" * length, b"\x1b$B", b"A" * 70)
        )
        value = (junk + b" " * length)[:length] if rng.random() < 0.7 else junk
        new_len = len(value)
        if vr in _LONG_VR:
            data[at + 8 : at + 12 + length] = struct.pack("<I", new_len) + value
        else:
            data[at + 6 : at + 8 + length] = struct.pack("<H", new_len) + value
    return "tag-value"


def _length(rng: random.Random, data: bytearray, elements: list) -> str:
    if not elements:
        return _bitflip(rng, data, elements)
    at, _, vr, length = rng.choice(elements)
    if vr in _LONG_VR:
        choices = (*INTERESTING_32, len(data), len(data) - at, length + 1, length * 2, max(0, length - 2))
        data[at + 8 : at + 12] = struct.pack("<I", rng.choice(choices) & 0xFFFFFFFF)
    else:
        choices = (*INTERESTING_16, length + 1, length + 2, max(0, length - 1))
        data[at + 6 : at + 8] = struct.pack("<H", rng.choice(choices) & 0xFFFF)
    return "length"


def _codestream(rng: random.Random, data: bytearray, elements: list) -> str:
    dims = (0, 1, 2, 255, 4096, 20000, 65535)
    for marker, offset, fmt in ((b"\xff\xf7", 5, ">HH"), (b"\xff\xc0", 5, ">HH"), (b"\xff\x51", 6, ">II")):
        at = data.find(marker)
        if at >= 0:
            values = (rng.choice(dims), rng.choice(dims))
            size = struct.calcsize(fmt)
            data[at + offset : at + offset + size] = struct.pack(fmt, *values)
            return "codestream"
    rle = data.find(b"\xfe\xff\x00\xe0")
    if rle >= 0:
        nxt = data.find(b"\xfe\xff\x00\xe0", rle + 4)
        if nxt >= 0 and nxt + 8 + 64 <= len(data):
            slot = rng.randrange(16)
            value = rng.choice((0, 1, 2, 15, 16, 64, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF))
            data[nxt + 8 + 4 * slot : nxt + 12 + 4 * slot] = struct.pack("<I", value)
            return "codestream"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        data[16:24] = struct.pack(">II", rng.choice(dims), rng.choice(dims))
        return "codestream"
    return _bitflip(rng, data, elements)


MUTATORS = (_bitflip, _byteset, _cut, _dup, _truncate, _tag_value, _tag_value, _length, _length, _codestream)


def mutate(rng: random.Random, seed: bytes, elements: list) -> tuple[bytes, str]:
    """One mutant of ``seed``: one to three mutations; returns (bytes, "op+op")."""
    data = bytearray(seed)
    ops = []
    for _ in range(rng.choice((1, 1, 2, 3))):
        if not data:
            break
        ops.append(rng.choice(MUTATORS)(rng, data, elements))
    return bytes(data), "+".join(ops)


# --------------------------------------------------------------------------- runs


def _machine() -> dict[str, object]:
    from bcedge.bench import library_versions, machine_info

    return {"machine": machine_info(), "libraries": library_versions(extra=("pydicom", "pylibjpeg", "pyjpegls"))}


def _warm(paths: list[Path]) -> None:
    """Read every seed once in the parent, so lazy imports (decoders) happen before the forks."""
    from bcedge.dicom import read_mammogram
    from bcedge.errors import BcedgeError

    for path in paths:
        with contextlib.suppress(BcedgeError):  # a real header without pixels is still a useful seed
            read_mammogram(path)


def _summary(counts: Counter, extra: dict[str, object]) -> dict[str, object]:
    bad = {k: v for k, v in counts.items() if not (k == "ok" or k.startswith("error:"))}
    return {**extra, "counts": dict(sorted(counts.items())), "not_documented": sum(bad.values())}


def run_mutants(args: argparse.Namespace) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="bcedge-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    data_dir = Path(os.environ["BCEDGE_DATA"]) if os.environ.get("BCEDGE_DATA") else None
    seed_paths = hostile.write_seeds(work / "seeds", data_dir)
    _warm(seed_paths)
    legit = legitimate_peak(work) if args.cap_mb is None else {}
    cap_mb = args.cap_mb if args.cap_mb is not None else 2.0 * max(legit.values())
    cap = int(cap_mb * (1 << 20))
    seeds = [(p.name, p.read_bytes(), p.suffix) for p in seed_paths]
    elements = {name: explicit_elements(data) for name, data, _ in seeds}
    rng = random.Random(args.seed)
    counts: Counter = Counter()
    per_seed: dict[str, Counter] = {name: Counter() for name, _, _ in seeds}
    per_op: dict[str, Counter] = {}
    examples: dict[str, list[dict[str, object]]] = {}
    slowest: list[tuple[float, str, str]] = []
    peak = 0.0
    start = time.perf_counter()
    done = 0
    for i in range(args.mutants):
        if args.budget_s and time.perf_counter() - start > args.budget_s:
            break
        name, seed, suffix = seeds[i % len(seeds)]
        data, ops = mutate(rng, seed, elements[name])
        path = work / f"mutant{suffix}"
        path.write_bytes(data)
        got = run_capped(str(path), cap_bytes=cap, time_limit=args.time_limit)
        done += 1
        klass = got.klass
        counts[klass] += 1
        per_seed[name][klass.split(":")[0]] += 1
        per_op.setdefault(ops.split("+")[0], Counter())[klass.split(":")[0]] += 1
        peak = max(peak, got.peak_mb)
        slowest = sorted([*slowest, (got.seconds, name, ops)], reverse=True)[:5]
        if not (klass == "ok" or klass.startswith("error:")):
            keep = examples.setdefault(klass, [])
            if len(keep) < 5:
                keep.append({"index": i, "seed": name, "ops": ops, "message": got.message})
                if args.keep_dir:
                    Path(args.keep_dir).mkdir(parents=True, exist_ok=True)
                    (Path(args.keep_dir) / f"{klass.replace(':', '_')}_{i}{suffix}").write_bytes(data)
        if args.progress and done % args.progress == 0:
            rate = done / (time.perf_counter() - start)
            print(f"{done} mutants, {rate:.0f}/s, {dict(counts)}", file=sys.stderr, flush=True)
    elapsed = time.perf_counter() - start
    for p in work.rglob("*"):
        if p.is_file():
            p.unlink()
    return _summary(
        counts,
        {
            "kind": "mutants",
            "command": "python benchmarks/fuzz.py " + " ".join(sys.argv[1:]),
            "mutants": done,
            "requested": args.mutants,
            "seed": args.seed,
            "seconds": round(elapsed, 1),
            "per_second": round(done / elapsed, 1) if elapsed else None,
            "time_limit_s": args.time_limit,
            "cap_mb": round(cap_mb, 1),
            "legitimate_peak_mb": legit,
            "max_peak_mb": round(peak, 1),
            "slowest": [{"seconds": round(s, 3), "seed": n, "ops": o} for s, n, o in slowest],
            "seeds": {n: dict(c) for n, c in per_seed.items()},
            "per_first_op": {n: dict(c) for n, c in sorted(per_op.items())},
            "examples": examples,
            **_machine(),
        },
    )


def run_corpus(args: argparse.Namespace) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="bcedge-hostile-"))
    data_dir = Path(os.environ["BCEDGE_DATA"]) if os.environ.get("BCEDGE_DATA") else None
    _warm(hostile.write_seeds(work / "seeds", data_dir))
    legit = legitimate_peak(work) if args.cap_mb is None else {}
    cap_mb = args.cap_mb if args.cap_mb is not None else 2.0 * max(legit.values())
    cases = hostile.build_corpus(work / "corpus")
    counts: Counter = Counter()
    wrong: list[dict[str, object]] = []
    rows = []
    for case in cases:
        got = run_capped(case.path, entry=case.entry, cap_bytes=int(cap_mb * (1 << 20)), time_limit=args.time_limit)
        counts[got.klass] += 1
        documented = got.klass == "ok" or got.klass.startswith("error:")
        expected = {"accept": got.klass == "ok", "reject": got.klass.startswith("error:"), "either": documented}
        row = {
            "name": case.name[:80],
            "class": case.klass,
            "expect": case.expect,
            "outcome": got.klass,
            "seconds": round(got.seconds, 3),
            "peak_mb": round(got.peak_mb, 1),
            "message": got.message[:300],
        }
        rows.append(row)
        if not expected[case.expect]:
            wrong.append(row)
    return _summary(
        counts,
        {
            "kind": "corpus",
            "command": "python benchmarks/fuzz.py " + " ".join(sys.argv[1:]),
            "cases": len(cases),
            "classes": dict(Counter(c.klass for c in cases)),
            "cap_mb": round(cap_mb, 1),
            "legitimate_peak_mb": legit,
            "max_peak_mb": max(r["peak_mb"] for r in rows),
            "max_seconds": max(r["seconds"] for r in rows),
            "unexpected": wrong,
            "rows": rows,
            "work_dir": str(work),
            **_machine(),
        },
    )


def merge(paths: list[Path], command: str) -> dict[str, object]:
    """One result from several ``mutate`` runs (other seeds, run side by side): counts summed."""
    runs = [json.loads(p.read_text()) for p in paths]
    counts: Counter = Counter()
    examples: dict[str, list] = {}
    for run in runs:
        counts.update(run["counts"])
        for klass, items in run["examples"].items():
            examples.setdefault(klass, []).extend(items)
    first = runs[0]
    return _summary(
        counts,
        {
            "kind": "mutants",
            "command": command,
            "mutants": sum(r["mutants"] for r in runs),
            "requested": sum(r["requested"] for r in runs),
            "runs": [
                {k: r[k] for k in ("command", "seed", "mutants", "seconds", "per_second", "counts", "max_peak_mb")}
                for r in runs
            ],
            "time_limit_s": first["time_limit_s"],
            "cap_mb": first["cap_mb"],
            "max_peak_mb": max(r["max_peak_mb"] for r in runs),
            "slowest": sorted((s for r in runs for s in r["slowest"]), key=lambda s: -s["seconds"])[:5],
            "examples": examples,
            "machine": first["machine"],
            "libraries": first["libraries"],
        },
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    for mode in ("mutate", "corpus"):
        p = sub.add_parser(mode)
        p.add_argument("--out", type=Path, help="write the JSON result here (default: stdout)")
        p.add_argument("--time-limit", type=float, default=TIME_LIMIT_S, help="seconds per input")
        p.add_argument("--cap-mb", type=float, help="memory cap (default: 2x the legitimate full-field peak)")
    m = sub.choices["mutate"]
    m.add_argument("--mutants", type=int, default=2000)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--budget-s", type=float, default=0.0, help="stop after this many seconds (0: no limit)")
    m.add_argument("--progress", type=int, default=0, help="print counts every N mutants")
    m.add_argument("--keep-dir", help="keep the inputs of every non-documented outcome here")
    g = sub.add_parser("merge", help="sum the counts of several mutate results")
    g.add_argument("results", nargs="+", type=Path)
    g.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.mode == "merge":
        result = merge(args.results, "python benchmarks/fuzz.py " + " ".join(sys.argv[1:] if argv is None else argv))
        text = json.dumps(result, indent=1) + "\n"
        if args.out:
            args.out.write_text(text)
        else:
            sys.stdout.write(text)
        return 0 if result["not_documented"] == 0 else 1
    import cv2

    cv2.setNumThreads(0)
    result = run_mutants(args) if args.mode == "mutate" else run_corpus(args)
    text = json.dumps(result, indent=1, default=str) + "\n"
    if args.out:
        from bcedge.imageio import atomic_write_bytes

        atomic_write_bytes(args.out, text.encode())
    else:
        sys.stdout.write(text)
    summary = {k: result[k] for k in ("counts", "not_documented", "cap_mb", "max_peak_mb") if k in result}
    print(json.dumps(summary), file=sys.stderr)
    return 0 if result["not_documented"] == 0 and not result.get("unexpected") else 1


if __name__ == "__main__":
    sys.exit(main())
