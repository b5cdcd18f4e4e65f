"""``bcedge evaluate``: the study's table, lesion detection and false positives, per source, with 95 % intervals.

Two modes:

* ``bcedge evaluate --model BUNDLE --data DATASET --root PATH [--split SPLIT.json --subset test]``:
  every image through :class:`bcedge.pipeline.Segmenter` (the ``bcedge infer`` path) and scored on
  its **original pixel grid** by :mod:`bcedge.evaluation`, the scoring ``bcedge benchmark`` uses,
  so the two report the same numbers for the same bundle, artifact and images. Runtime-light:
  no TensorFlow.
* ``bcedge evaluate RUN_DIR``: a trained Keras model (``best.keras``) on the **model grid** (the
  preprocessed S x S image, as the study scored), same statistics; needs ``bcedge[train]``.

``--json PATH`` writes the report (``-``: standard output). Register with :func:`register`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from bcedge.cli.train import DEFAULT_CACHE
from bcedge.errors import ConfigError
from bcedge.postprocess import check_threshold


def evaluate_command(
    run_dir: Annotated[
        Path | None,
        typer.Argument(help="Run folder (uses best.keras) or a .keras file: scores the MODEL grid. Or use --model."),
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option("--model", help="Bundle folder: scores the ORIGINAL grid through the bcedge infer path."),
    ] = None,
    data: Annotated[str | None, typer.Option("--data", help="Dataset name(s); run folder default: the run's.")] = None,
    root: Annotated[
        Path | None, typer.Option("--root", help="Data root (default: the run's, or $BCEDGE_DATA with --model).")
    ] = None,
    split: Annotated[
        Path | None,
        typer.Option("--split", help="Split file (run folder default: the run's; --model without it: every image)."),
    ] = None,
    subset: Annotated[str, typer.Option("--subset", help="Which split of --split to score.")] = "test",
    option: Annotated[
        list[str] | None,
        typer.Option(
            "--option", "-o", help="Dataset reader option KEY=VALUE (repeatable; run folder default: the run's)."
        ),
    ] = None,
    backend: Annotated[str, typer.Option("--backend", help="--model: backend (as bcedge infer).")] = "auto",
    artifact: Annotated[
        str | None, typer.Option("--artifact", help="--model: artifact file of the bundle (default: the backend's).")
    ] = None,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="--model: inference threads.")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="--model: only the first N images.")] = None,
    cache: Annotated[
        Path, typer.Option("--cache", help="Run folder: preprocessed-array cache folder.")
    ] = DEFAULT_CACHE,
    threshold: Annotated[
        float | None,
        typer.Option("--threshold", help="Probability threshold in (0, 1); default: the bundle's (run folder: 0.5)."),
    ] = None,
    min_area: Annotated[
        float | None,
        typer.Option("--min-area", help="--model: drop predicted components under this many mm² (as bcedge infer)."),
    ] = None,
    json_out: Annotated[
        str | None, typer.Option("--json", help="Write the report as JSON to this file ('-': standard output).")
    ] = None,
) -> None:
    """Per-source Dice, IoU, loss, recall, precision, lesions found and false positives, with 95% intervals."""
    if (run_dir is None) == (model is None):
        raise ConfigError("give either a run folder (model grid) or --model BUNDLE (original grid), not both")
    if model is not None:
        report = _evaluate_bundle(
            model, data, root, split, subset, option, backend, artifact, threads, limit, threshold, min_area
        )
        m = report["model"]
        post = report["postprocess"]
        title = (
            f"{m.get('name')} ({m.get('artifact')}, {m.get('backend')}) on {report['data']['label']}; "
            f"threshold {post['threshold']:g}, minimum area {post['min_area_mm2']:g} mm²"
        )
    else:
        if min_area is not None:
            raise ConfigError("--min-area applies to --model (the model grid keeps every component)")
        threshold = check_threshold(0.5 if threshold is None else threshold)
        report = _evaluate_run(run_dir, data, root, split, subset, option, cache, threshold)  # type: ignore[arg-type]
        title = f"{report['model']} on {subset}; threshold {threshold:g}"
    if json_out is not None:
        _write_json(report, json_out)
        if json_out == "-":
            return
    print_report(report, title)


def _evaluate_bundle(
    model: Path,
    data: str | None,
    root: Path | None,
    split: Path | None,
    subset: str,
    option: list[str] | None,
    backend: str,
    artifact: str | None,
    threads: int | None,
    limit: int | None,
    threshold: float | None,
    min_area: float | None,
) -> dict[str, Any]:
    from bcedge.bench import BenchData
    from bcedge.cli.progress import progress_bar
    from bcedge.evaluation import evaluate_bundle

    if data is None:
        raise ConfigError("--model needs --data (the dataset to score; see 'bcedge data list')")
    bench_data = BenchData.from_command_line(data, root, split, subset, option, limit)
    with progress_bar() as progress:
        task = progress.add_task("evaluating", total=None)
        return evaluate_bundle(
            model,
            bench_data,
            backend=backend,
            artifact=artifact,
            threads=threads,
            threshold=threshold,
            min_area_mm2=min_area,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
        )


def _evaluate_run(
    run_dir: Path,
    data: str | None,
    root: Path | None,
    split: Path | None,
    subset: str,
    option: list[str] | None,
    cache: Path,
    threshold: float,
) -> dict[str, Any]:
    from bcedge.cli.train import _load_sets, _need_keras

    _need_keras()
    from bcedge.preprocess import PreprocessConfig
    from training.evaluate import model_grid_report, predict
    from training.models import load_trained
    from training.run import RUN_CONFIG, best_model, read_config, refuse_scoring_on_fitted

    model_path = best_model(run_dir) if run_dir.is_dir() else run_dir
    if not model_path.is_file():
        raise ConfigError(f"{model_path}: no trained model here (expected a run folder with best.keras)")
    # A bare .keras file has no run config: --data/--root/--split must then be given.
    run_cfg = read_config(model_path.parent) if (model_path.parent / RUN_CONFIG).is_file() else {}
    refuse_scoring_on_fitted(run_cfg, subset, str(model_path))
    datasets = tuple((data or ",".join(run_cfg.get("data", []))).split(","))
    root = root or (Path(run_cfg["root"]) if run_cfg.get("root") else None)
    split = split or (Path(run_cfg["split"]) if run_cfg.get("split") else None)
    if not datasets[0] or root is None or split is None:
        raise ConfigError("say --data, --root and --split (the model has no run config.json to take them from)")
    config = PreprocessConfig.from_dict(run_cfg["preprocess"]) if run_cfg.get("preprocess") else PreprocessConfig()
    keras_model = load_trained(model_path)
    # Reader options: the ones given, else the run's (a split made over e.g. kind=both needs them).
    options = list(option or run_cfg.get("reader_options") or []) or None
    sets, _ = _load_sets(datasets, root, split, config, cache, options)
    if subset not in sets:
        raise ConfigError(f"{split}: no {subset!r} images")
    s = sets[subset]
    probs = predict(keras_model, s.images)
    report = model_grid_report(probs, s.masks, s.mask_kinds, s.sources, s.ids, threshold)
    report.update(model=str(model_path), subset=subset, threshold=threshold)
    return report


def _write_json(report: dict[str, Any], dest: str) -> None:
    from bcedge.imageio import atomic_write_bytes, json_default

    text = json.dumps(report, indent=2, default=json_default, allow_nan=False) + "\n"
    if dest == "-":
        typer.echo(text, nl=False)
    else:
        atomic_write_bytes(dest, text.encode("utf-8"))


def print_report(report: dict[str, Any], title: str) -> None:
    """The report's study table and detection table (rich) on standard output."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from bcedge.evaluation import DETECTION_COLUMNS, STUDY_COLUMNS, detection_rows, study_rows

    console = Console()
    grid = "ORIGINAL pixel grid (bcedge infer path)" if report["grid"] == "original" else "MODEL grid (S x S input)"
    console.print(f"{title}\nscored on the {grid}", highlight=False, markup=False)
    tables = (
        (
            "Lesion images: per-image means, 95% interval below (loss = 1 - soft Dice)",
            STUDY_COLUMNS,
            study_rows(report, "\n"),
        ),
        (
            "Lesions found and false-positive (FP) components, 95% interval below",
            DETECTION_COLUMNS,
            detection_rows(report, "\n"),
        ),
    )
    for caption, columns, rows in tables:
        if not rows:
            continue
        out = Table(title=caption, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
        for i, col in enumerate(columns):
            # Values never wrap (headers do): the interval lines are what the table is for.
            width = max(len(line) for row in rows for line in row[i].splitlines())
            out.add_column(col, justify="left" if i < 2 else "right", min_width=width, no_wrap=True)
        for row in rows:
            out.add_row(*row)
        console.print(out)
    console.print(f"95% intervals: {report['method']['interval']}.", highlight=False)
    for item in report.get("skipped") or []:
        console.print(f"skipped {item['id']}: {item['error']}", highlight=False, markup=False)


def register(app: typer.Typer) -> None:
    """Add ``evaluate`` to the ``bcedge`` app."""
    app.command("evaluate")(evaluate_command)
