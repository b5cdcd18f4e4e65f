"""``bcedge batch``: a folder tree, a manifest or a DICOMweb server through the model on Ray Data.

::

    bcedge batch SOURCE --out DIR [--model BUNDLE] [--address ray://...|auto] [--workers N]
                 [--outputs json,mask,seg|none] [--limit N] [--study-date FROM-TO] [--stow] [--json]

Exit codes: 0 every scan done (or already done); 2 bad option or source, or some scans failed
(each is a row with its error in the table, and a line on stderr); 3 model or backend problem;
4 Ray failed (no cluster at --address, workers that keep dying). Re-running the same command
continues where a stopped or killed run left off.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from bcedge.cli.infer import BackendOpt, MinAreaOpt, ModelOpt, ThresholdOpt

#: Per-scan outputs written when --outputs is not given (the table is always written).
DEFAULT_BATCH_OUTPUTS = "mask,json"
#: Failed scans listed on stderr at the end (the table has them all).
MAX_ERRORS_SHOWN = 20


def _kinds(outputs: str) -> tuple[str, ...]:
    from bcedge.outputs import parse_kinds

    return () if outputs.strip().lower() == "none" else parse_kinds(outputs)


def batch_command(
    source: Annotated[
        str, typer.Argument(help="Folder (recursive), manifest (.csv/.parquet with a 'path' column) or DICOMweb URL.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: results/ (Parquet table) + outputs.")],
    model: ModelOpt = None,
    backend: BackendOpt = "auto",
    address: Annotated[
        str | None,
        typer.Option("--address", help="Ray cluster to use: 'auto' or ray://HOST:10001. Default: a local Ray."),
    ] = None,
    workers: Annotated[int, typer.Option("--workers", "-w", min=1, help="Actors, each loading the model once.")] = 1,
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            min=1,
            help="Backend threads per worker. Default: usable CPUs / --workers on a local Ray, 1 on a cluster.",
        ),
    ] = None,
    outputs: Annotated[
        str, typer.Option("--outputs", help="Per-scan outputs: subset of mask,overlay,json,seg, or 'none'.")
    ] = DEFAULT_BATCH_OUTPUTS,
    limit: Annotated[int | None, typer.Option("--limit", min=0, help="Process at most N scans this run.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Scans per model call.")] = 4,
    block_size: Annotated[
        int | None, typer.Option("--block-size", min=1, help="Scans per committed table part (default: automatic).")
    ] = None,
    threshold: ThresholdOpt = None,
    min_area: MinAreaOpt = None,
    study_date: Annotated[
        str | None, typer.Option("--study-date", help="DICOMweb: YYYYMMDD or YYYYMMDD-YYYYMMDD (either side open).")
    ] = None,
    modality: Annotated[str, typer.Option("--modality", help="DICOMweb: modality to fetch.")] = "MG",
    stow: Annotated[bool, typer.Option("--stow", help="DICOMweb: STOW-RS each SEG back to the server.")] = False,
    object_store_mb: Annotated[
        int, typer.Option("--object-store-mb", min=75, help="Object store of a local Ray (MiB).")
    ] = 256,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON document on stdout.")] = False,
) -> None:
    """Segment every scan of SOURCE on Ray Data; resumable (re-run to continue), each scan once in the table.

    Exit code 0: all done; 2: bad option/source or some scans failed; 3: model problem; 4: Ray failed.
    """
    from bcedge.batch.run import BatchOptions, run_batch
    from bcedge.cli.infer import log_to_stderr

    opts = BatchOptions(
        source=source,
        out=out,
        model=model,
        backend=backend,
        threads=threads,
        workers=workers,
        kinds=_kinds(outputs),
        limit=limit,
        address=address,
        batch_size=batch_size,
        threshold=threshold,
        min_area_mm2=min_area,
        study_date=study_date,
        modality=modality,
        stow=stow,
        object_store_mb=object_store_mb,
        block_size=block_size,
    )
    # Ray's driver prints what raylets report (a worker that died, a retried task) on stdout,
    # even with log_to_driver=False; stdout is for the summary (--json: one document), so during
    # the run anything printed goes to stderr. run_batch shuts its Ray down before returning.
    with log_to_stderr(), contextlib.redirect_stdout(sys.stderr):
        summary = run_batch(opts, progress=not as_json)
    for line in summary.errors[:MAX_ERRORS_SHOWN]:
        typer.echo(f"error: {line}", err=True)
    if len(summary.errors) > MAX_ERRORS_SHOWN:
        typer.echo(
            f"... and {len(summary.errors) - MAX_ERRORS_SHOWN} more failed scans (status 'failed' in the table)",
            err=True,
        )
    if as_json:
        sys.stdout.write(json.dumps(summary.to_dict(), indent=2) + "\n")
    else:
        rate = f"{summary.scans_per_s:.2f} scans/s" if summary.scans_per_s else "-"
        typer.echo(
            f"bcedge batch: {summary.found} found, {summary.skipped} already done (skipped), "
            f"{summary.done} done, {summary.failed} failed, {summary.left} left by --limit; {rate} "
            f"on {summary.workers} worker(s), all running {summary.model.get('artifact')} "
            f"({summary.model.get('backend')}, {summary.model.get('threads')} thread(s) each); "
            f"table: {Path(summary.out) / 'results'}"
        )
    if summary.failed:
        raise typer.Exit(2)


def register(app: typer.Typer) -> None:
    """Attach ``batch`` to the bcedge app."""
    app.command("batch")(batch_command)
