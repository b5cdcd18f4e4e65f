"""``bcedge benchmark``: Dice beside latency for every model, artifact and backend on this machine.

Thin: parse the options, call :func:`bcedge.bench.run_benchmark`, print the table and write
the JSON / Markdown / plot with :mod:`bcedge.bench.report`. Register with :func:`register`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer

from bcedge.errors import ConfigError
from bcedge.formats import formats_help


def _thread_counts(values: list[str] | None) -> tuple[int, ...] | None:
    """``["1,2", "4"]`` -> ``(1, 2, 4)``; None when not given."""
    if not values:
        return None
    out: list[int] = []
    for value in values:
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                n = int(part)
            except ValueError:
                raise ConfigError(f"--threads {value!r}; expected positive integers such as 1 or 1,2") from None
            if n < 1:
                raise ConfigError(f"--threads {n}; expected a positive integer")
            if n not in out:
                out.append(n)
    return tuple(out) or None


def _formats(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [p.strip() for v in values for p in v.split(",") if p.strip()] or None


def benchmark_command(
    model: Annotated[
        list[Path] | None,
        typer.Option("--model", help="Bundle folder (repeat for several; default: the bundled real-data model)."),
    ] = None,
    formats: Annotated[
        list[str] | None,
        typer.Option(
            "--formats",
            help=formats_help(),
        ),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(
            "--data", help="Dataset to score on (see 'bcedge data list'); needs --split. Default: the sample scan."
        ),
    ] = None,
    split: Annotated[Path | None, typer.Option("--split", help="Split file from 'bcedge data split'.")] = None,
    split_name: Annotated[str, typer.Option("--split-name", help="Which split of --split.")] = "test",
    root: Annotated[
        Path | None, typer.Option("--root", help="Dataset folder (default: $BCEDGE_DATA for --data).")
    ] = None,
    option: Annotated[
        list[str] | None, typer.Option("--option", "-o", help="Dataset reader option KEY=VALUE (repeatable).")
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Use only the first N images.")] = None,
    phantoms: Annotated[
        int, typer.Option("--phantoms", min=0, max=64, help="Synthetic phantoms added to the sample scan (no --data).")
    ] = 3,
    runs: Annotated[int, typer.Option("--runs", min=1, help="Timed model calls per row.")] = 50,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Untimed model calls before them.")] = 5,
    threads: Annotated[
        list[str] | None,
        typer.Option("--threads", help="Thread count(s), e.g. 1 or 1,2 (one row each; default: every usable CPU)."),
    ] = None,
    isolate: Annotated[
        bool,
        typer.Option("--isolate/--no-isolate", help="Measure each row in a fresh process (per-artifact peak memory)."),
    ] = True,
    profile_ops: Annotated[
        bool, typer.Option("--profile-ops", help="Add a per-op time breakdown of TFLite artifacts.")
    ] = False,
    e2e_min: Annotated[
        int,
        typer.Option(
            "--e2e-min",
            min=1,
            help="Images timed end to end per row at least (the images are passed over again until then).",
        ),
    ] = 8,  # bcedge.bench.rows.MIN_E2E_TIMINGS (not imported here: it pulls numpy in; a test checks)
    auto_choice: Annotated[
        bool,
        typer.Option(
            "--auto-choice/--no-auto-choice",
            help="Also report what --backend auto picks per bundle (acceptance check + timing of every candidate).",
        ),
    ] = True,
    gemm_ceiling: Annotated[
        bool,
        typer.Option("--gemm-ceiling/--no-gemm-ceiling", help="Measure the FP32 GEMM ceiling per thread count."),
    ] = True,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the report as JSON.")] = None,
    markdown_out: Annotated[Path | None, typer.Option("--markdown", help="Write the report as Markdown.")] = None,
    plot_out: Annotated[
        Path | None, typer.Option("--plot", help="Write the Dice vs latency Pareto plot (PNG; needs bcedge[plot]).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress lines.")] = False,
) -> None:
    """Measure Dice, latency (p50/p95/p99), end-to-end stages, memory and GFLOP/s per model and artifact."""
    from rich.console import Console

    from bcedge.bench import BenchData, BenchOptions, run_benchmark, sample_data
    from bcedge.bench.report import plot_available, print_table, write_json, write_markdown
    from bcedge.errors import MissingDependencyError

    options = BenchOptions(
        runs=runs,
        warmup=warmup,
        threads=_thread_counts(threads),
        isolate=isolate,
        profile_ops=profile_ops,
        e2e_min=e2e_min,
        auto_choice=auto_choice,
        gemm_ceiling=gemm_ceiling,
    )
    if plot_out is not None and not plot_available():
        # Fail before minutes of measuring, not after.
        raise MissingDependencyError("the Pareto plot (--plot)", "plot", "matplotlib")
    bundles = list(model or [])
    if not bundles:
        from bcedge.pipeline import default_bundle_path

        demo = default_bundle_path()
        if not (demo / "manifest.json").is_file():
            raise ConfigError(f"no bundled model at {demo}; give a bundle with --model")
        bundles = [demo]
    if data is None and (split is not None or option):
        raise ConfigError("--split and --option need --data (the dataset to read)")
    err = Console(stderr=True)
    say = (lambda _msg: None) if quiet else (lambda msg: err.print(msg, highlight=False, markup=False))
    with tempfile.TemporaryDirectory(prefix="bcedge-benchmark ") as tmp:
        if data is None:
            bench_data = sample_data(phantoms, workdir=Path(tmp) / "phantoms")
        else:
            if split is None:
                raise ConfigError("--data needs --split (a split file from 'bcedge data split')")
            bench_data = BenchData.from_command_line(data, root, split, split_name, option, limit)
        if limit is not None and data is None:
            bench_data = BenchData.from_dict({**bench_data.to_dict(), "limit": limit})
        report = run_benchmark(bundles, bench_data, options, formats=_formats(formats), progress=say)
    print_table(report, Console())
    for choice in report.get("auto_choice", []):
        # What --backend auto picks here (acceptance check + timing; bcedge.choice), beside the full table.
        head = f"--backend auto for {choice['bundle']}: "
        typer.echo(
            head + (f"error: {choice['error']}" if "error" in choice else f"{choice['chosen']} ({choice['why']})")
        )
    written = []
    if json_out is not None:
        written.append(write_json(report, json_out))
    if markdown_out is not None:
        written.append(write_markdown(report, markdown_out))
    if plot_out is not None:
        from bcedge.bench.report import plot_pareto

        written.append(plot_pareto(report, plot_out))
    for path in written:
        say(f"wrote {path}")


def register(app: typer.Typer) -> None:
    """Add ``benchmark`` to the ``bcedge`` app."""
    app.command("benchmark")(benchmark_command)
