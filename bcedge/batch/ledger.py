"""The results table on disk, committed part by part: what makes ``bcedge batch`` resumable and exactly-once.

Layout under ``OUT/results/``::

    scans/part-<run>-<n>.parquet      one row per scan of a committed block (the commit record)
    findings/part-<run>-<n>.parquet   the findings of the same block (written first)
    runs/<run>.json                   each run's record: the artifact it chose and ran, its
                                      fingerprint, workers and threads (written before its first part)
    .lock                             held (flock) by the one run that may write here

Protocol: the driver is the only writer. For each block of scans the workers return, it writes the
findings part and then the scans part, each to a temporary file in the same folder, fsynced, then
renamed (:func:`bcedge.imageio.atomic_write` with ``durable=True``). The scans part is the commit:
a block is in the table exactly when its scans part exists. On open, findings parts without their
scans part (a crash between the two renames) and temporaries left by a killed run are removed.
A scan is done when a committed row holds its key and the run's fingerprint; the next run skips it.

So after a ``kill -9`` of the driver at any instant and a re-run, every scan is in the table
exactly once: a block either committed (its scans are skipped) or not (they are processed again;
their outputs are rewritten atomically under the same names, a SEG with the same UIDs). A worker
killed mid-block makes Ray re-run that block on another actor; the driver has not committed it.
The lock stops two runs on the same folder from processing the same scans twice.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bcedge.errors import InputError, MissingDependencyError

if TYPE_CHECKING:
    import pyarrow as pa

RESULTS = "results"
SCANS = "scans"
FINDINGS = "findings"
RUNS = "runs"
_PART_PREFIX = "part-"
_SUFFIX = ".parquet"


def _pyarrow() -> Any:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingDependencyError("the bcedge batch results table", "batch", "pyarrow") from None
    return pa, pq


class Ledger:
    """The committed parts under ``out/results``; open it with :meth:`open` (takes the lock).

    Attributes:
        root: ``out/results``.
        run_id: this run's id (part names start with it).
    """

    def __init__(self, out: str | os.PathLike[str]) -> None:
        self.root = Path(out) / RESULTS
        self.run_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)
        self._seq = 0
        self._lock_fd: int | None = None

    # ----------------------------------------------------------------- lifecycle
    def open(self) -> Ledger:
        """Create the folders, take the lock, remove what a crashed run left uncommitted.

        Raises:
            InputError: the folder cannot be created, or another run holds the lock.
        """
        try:
            for sub in (SCANS, FINDINGS):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
            fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise InputError(f"cannot create the results folder {self.root}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise InputError(
                f"another bcedge batch run is writing {self.root} (its lock is held); wait for it"
            ) from None
        self._lock_fd = fd
        self._clean()
        return self

    def close(self) -> None:
        """Release the lock (a killed process releases it too: flock dies with the file descriptor)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Ledger:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _clean(self) -> None:
        committed = {p.name for p in self.parts(SCANS)}
        for sub in (SCANS, FINDINGS):
            for path in (self.root / sub).iterdir():
                # atomic_write's temporaries: ".<final name>.<random>.tmp.parquet"
                if path.name.startswith("." + _PART_PREFIX) and ".tmp" in path.name:
                    path.unlink(missing_ok=True)
        for path in self.parts(FINDINGS):
            if path.name not in committed:
                path.unlink(missing_ok=True)

    # ----------------------------------------------------------------- reading
    def parts(self, sub: str) -> list[Path]:
        """Committed-looking part files of ``scans`` or ``findings``, sorted by name."""
        folder = self.root / sub
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.iterdir() if p.name.startswith(_PART_PREFIX) and p.name.endswith(_SUFFIX))

    def done_keys(self, fingerprint: str) -> set[str]:
        """Keys of the scans committed with ``fingerprint`` (done or failed: both are final)."""
        _, pq = _pyarrow()
        keys: set[str] = set()
        for part in self.parts(SCANS):
            table = pq.read_table(part, columns=["key", "fingerprint"])
            for key, fp in zip(table.column("key").to_pylist(), table.column("fingerprint").to_pylist(), strict=True):
                if fp == fingerprint:
                    keys.add(key)
        return keys

    # ----------------------------------------------------------------- writing
    def record_run(self, doc: dict[str, Any]) -> Path:
        """Write this run's record (JSON) to ``runs/<run id>.json``, atomically; returns its path.

        The table's rows name the artifact per scan; the record keeps the rest of the run's model
        (how ``--backend auto`` chose it, at which thread count), which the rows do not hold.
        """
        import json

        from bcedge.imageio import atomic_write, json_default

        if self._lock_fd is None:
            raise RuntimeError("Ledger.record_run before Ledger.open")
        path = self.root / RUNS / f"{self.run_id}.json"
        path.parent.mkdir(exist_ok=True)
        text = json.dumps(doc, indent=1, default=json_default) + "\n"
        atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        return path

    def commit(self, scan_rows: Sequence[dict[str, Any]], finding_rows: Sequence[dict[str, Any]]) -> str | None:
        """Write one block: findings part, then scans part (the commit). Returns the part name (None if empty)."""
        if not scan_rows:
            return None
        from bcedge.batch.table import finding_schema, scan_schema
        from bcedge.imageio import atomic_write

        if self._lock_fd is None:
            raise RuntimeError("Ledger.commit before Ledger.open")
        pa, pq = _pyarrow()
        self._seq += 1
        name = f"{_PART_PREFIX}{self.run_id}-{self._seq:06d}{_SUFFIX}"
        scans = pa.Table.from_pylist([{**r, "part": name} for r in scan_rows], schema=scan_schema())
        if finding_rows:
            findings = pa.Table.from_pylist([{**r, "part": name} for r in finding_rows], schema=finding_schema())
            atomic_write(self.root / FINDINGS / name, lambda tmp: pq.write_table(findings, tmp), durable=True)
        atomic_write(self.root / SCANS / name, lambda tmp: pq.write_table(scans, tmp), durable=True)
        return name


def read_table(out: str | os.PathLike[str]) -> tuple[pa.Table, pa.Table]:
    """(scans, findings) of the committed parts under ``out/results`` (findings of uncommitted parts left out)."""
    from bcedge.batch.table import finding_schema, scan_schema

    pa, pq = _pyarrow()
    ledger = Ledger(out)
    scan_parts = ledger.parts(SCANS)
    committed = {p.name for p in scan_parts}
    finding_parts = [p for p in ledger.parts(FINDINGS) if p.name in committed]
    scans = pa.concat_tables(
        [_conform(pq.read_table(p), scan_schema()) for p in scan_parts] or [scan_schema().empty_table()]
    )
    findings = pa.concat_tables(
        [_conform(pq.read_table(p), finding_schema()) for p in finding_parts] or [finding_schema().empty_table()]
    )
    return scans, findings


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with ``schema``'s columns in its order: a part written by an older bcedge lacks the newer
    columns (they read as nulls); columns this version does not know are dropped."""
    pa, _ = _pyarrow()
    columns = [
        table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)
