"""``bcedge export``: a training run -> a bundle of gated TFLite/ONNX/TensorRT artifacts (desktop side).

TensorFlow and the converters are imported only inside the command; on a device
without them the command says which extra to install.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bcedge.cli.progress import progress_bar
from bcedge.cli.train import DEFAULT_CACHE
from bcedge.errors import MissingDependencyError
from bcedge.formats import export_formats_help

_STATUS_STYLE = {
    "passed": "green",
    "failed": "bold red",
    "not-measured": "yellow",
    "build-failed": "bold red",
    "skipped": "dim",
}


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.2f}MB" if n >= 1e5 else f"{n / 1e3:.1f}kB"


def _fmt(value: float | None, spec: str) -> str:
    # round then add 0.0: a delta of -1e-17 prints as +0.0000, not -0.0000
    return "-" if value is None else format(round(value, 6) + 0.0, spec)


def _op_summary(ops: list[str]) -> str:
    """``CONV_2D x3, NEG x1`` from ``["CONV_2D#4", ...]`` (the manifest keeps the full list)."""
    if not ops:
        return "none (fully integer)"
    from collections import Counter

    counts = Counter(op.split("#")[0] for op in ops)
    return ", ".join(f"{name} x{n}" for name, n in counts.most_common())


def export_command(
    run_dir: Annotated[Path, typer.Argument(help="Training run folder (best.keras + config.json).")],
    out: Annotated[Path, typer.Option("--out", help="Bundle folder to write.")],
    formats: Annotated[
        str | None,
        typer.Option(
            "--formats",
            help=export_formats_help(),
        ),
    ] = None,
    calib: Annotated[
        str | None,
        typer.Option("--calib", help="Dataset to calibrate INT8 on (default: the run's train split); see --root."),
    ] = None,
    n_calib: Annotated[int, typer.Option("--n-calib", min=1, help="Calibration images (at most).")] = 200,
    int8_io: Annotated[str, typer.Option("--int8-io", help="TFLite INT8 model input/output type: float or int8.")] = (
        "float"
    ),
    int8_float_layers: Annotated[
        int,
        typer.Option(
            "--int8-float-layers",
            min=0,
            max=1000,
            help=(
                "TFLite INT8: keep the N layers the quantisation debugger finds worst quantised in float "
                "(selective quantisation; the manifest lists them). 0: a pure integer model."
            ),
        ),
    ] = 0,
    strict: Annotated[
        bool, typer.Option("--strict", help="Fail (exit 3, no manifest) when an artifact misses its tolerance.")
    ] = False,
    tolerance: Annotated[
        list[str] | None,
        typer.Option(
            "--tolerance", help="PRECISION=DICE, e.g. int8=0.02 (defaults: fp32/fp16 0.001, int8/dynamic 0.01)."
        ),
    ] = None,
    threshold: Annotated[float, typer.Option("--threshold", min=0.0, max=1.0, help="Mask threshold.")] = 0.5,
    data: Annotated[str | None, typer.Option("--data", help="Dataset name(s); default: the run's.")] = None,
    root: Annotated[Path | None, typer.Option("--root", help="Data root; default: the run's.")] = None,
    split: Annotated[Path | None, typer.Option("--split", help="Split file; default: the run's.")] = None,
    cache: Annotated[Path, typer.Option("--cache", help="Preprocessed-array cache folder.")] = DEFAULT_CACHE,
    arrays: Annotated[
        Path | None,
        typer.Option("--arrays", help="Split arrays .npz ('bcedge train --export-arrays') instead of --data/--root."),
    ] = None,
    threads: Annotated[int, typer.Option("--threads", min=1, help="Inference threads while gating/timing.")] = 1,
    opset: Annotated[int, typer.Option("--opset", min=11, help="ONNX opset.")] = 17,
    onnx_dynamic_batch: Annotated[
        bool, typer.Option("--onnx-dynamic-batch", help="Symbolic ONNX batch dimension (default: static 1).")
    ] = False,
    tflite_any_width: Annotated[
        bool,
        typer.Option(
            "--tflite-any-width/--tflite-fixed-width",
            help="TFLite artifacts take any input width, so the runtime runs only the columns that hold the "
            "breast (default), or the fixed square.",
        ),
    ] = True,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a bundle already in --out.")] = False,
    keras: Annotated[
        bool,
        typer.Option(
            "--keras/--no-keras", help="Include the Keras reference model in the bundle (always gated against)."
        ),
    ] = True,
    option: Annotated[list[str] | None, typer.Option("--option", "-o", help="Reader option KEY=VALUE.")] = None,
) -> None:
    """Export RUN_DIR to a bundle: convert, measure every artifact's Dice on val, write manifest.json."""
    import importlib.util

    if importlib.util.find_spec("keras") is None or importlib.util.find_spec("tensorflow") is None:
        raise MissingDependencyError("export", "train", "tensorflow and keras")
    import os

    # TensorFlow's C++ logging would bury the report; set before the first TensorFlow import.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from bcedge.datasets.registry import parse_options
    from export.bundle_builder import ExportOptions, build_bundle, check_options, check_strict, parse_tolerances

    opts = ExportOptions(
        run_dir=run_dir,
        out=out,
        formats=formats,
        calib=calib,
        n_calib=n_calib,
        int8_io=int8_io,
        int8_float_layers=int8_float_layers,
        strict=strict,
        data=tuple(d.strip() for d in data.split(",") if d.strip()) if data else None,
        root=root,
        split=split,
        cache=cache,
        threshold=threshold,
        tolerances=parse_tolerances(tolerance),
        threads=threads,
        opset=opset,
        onnx_dynamic_batch=onnx_dynamic_batch,
        tflite_any_width=tflite_any_width,
        overwrite=overwrite,
        reader_options=parse_options(option),
        arrays=arrays,
        include_keras=keras,
    )
    check_options(opts)  # one-line errors before the progress display starts
    with progress_bar(info=True, transient=False) as progress:
        task = progress.add_task("preprocessing", total=None, info="")
        result = build_bundle(
            opts,
            log=lambda line: progress.console.print(line, markup=False, highlight=False),
            progress=lambda done, total, reused: progress.update(task, completed=done, total=total),
        )

    ref = result.reference
    table = Table(
        title=f"Dice: val lesion images ({ref['n_lesion_images']}, gates) / all ({ref['n_images']})",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        show_edge=False,
    )
    for col in ("format", "size", "Dice", "all", "delta", "tol", "status", "ms/img"):
        table.add_column(col, justify="left" if col in ("format", "status") else "right", no_wrap=True)
    for r in result.rows:
        m = r.metrics
        style = _STATUS_STYLE.get(r.status, "")
        table.add_row(
            r.name,
            _size(r.size_bytes),
            _fmt(m.get("dice"), ".4f"),
            _fmt(m.get("dice_all_images"), ".4f"),
            _fmt(m.get("delta_dice"), "+.4f"),
            _fmt(r.tolerance, "g"),
            f"[{style}]{r.status}[/{style}]" if style else r.status,
            _fmt(r.ms_per_image, ".1f"),
        )
    Console().print(table)
    for r in result.rows:
        if r.message:
            typer.echo(f"{r.name}: {r.message}")
        if "float_ops" in r.details:
            typer.echo(f"{r.name}: ops left in float: {_op_summary(r.details['float_ops'])}")
    if strict:
        check_strict(result)
    failed = [r.name for r in result.rows if r.status == "failed"]
    tail = f"; gate failed: {', '.join(failed)} (kept, marked failed)" if failed else ""
    typer.echo(f"wrote {out / 'manifest.json'} ({sum(1 for r in result.rows if r.size_bytes)} artifacts){tail}")
