"""``bcedge data ...``: dataset listing, statistics, splits and preprocessed caches.

Registered by :mod:`bcedge.cli` as the ``data`` sub-app. Errors are
:class:`~bcedge.errors.BcedgeError`; ``bcedge.cli.main`` prints them on one line (exit 2).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

DatasetArg = Annotated[str, typer.Argument(help="Dataset name (see 'bcedge data list').")]
RootOpt = Annotated[Path, typer.Option("--root", help="The dataset's folder.")]
OptionOpt = Annotated[
    list[str] | None,
    typer.Option("--option", "-o", help="Reader option KEY=VALUE (repeatable), e.g. -o kind=CM."),
]


def _open(dataset: str, root: Path, options: list[str] | None) -> Any:
    from bcedge.datasets.registry import open_dataset, parse_options

    return open_dataset(dataset, root, **parse_options(options))


@app.command("list")
def list_datasets() -> None:
    """List the dataset names and what they read."""
    from bcedge.datasets.registry import DATASETS

    for entry in DATASETS.values():
        typer.echo(f"{entry.name:16s} {entry.description}")


def _stats_table(stats: dict[str, dict[str, Any]], title: str) -> Any:
    from rich.table import Table

    from bcedge.datasets.stats import format_area

    table = Table(title=title)
    table.add_column("")
    for key in stats:
        table.add_column(key, justify="right")

    def row(label: str, fn: Any) -> None:
        table.add_row(label, *(str(fn(group)) for group in stats.values()))

    row("images", lambda g: g["images"])
    row("patients", lambda g: g["patients"])
    row("with masses (mask)", lambda g: g["with_lesion"])
    row("mass without location", lambda g: g["lesion_unlocated"])
    row("no mass (empty mask)", lambda g: g["without_lesion"])
    sources = sorted({src for g in stats.values() for src in g["by_source"]})
    if len(sources) > 1:
        for src in sources:
            row(
                f"  {src}: images / with masses",
                lambda g, s=src: (
                    f"{g['by_source'][s]['images']} / {g['by_source'][s]['with_lesion']}"
                    if s in g["by_source"]
                    else "-"
                ),
            )
    kinds = sorted({k for g in stats.values() for k in g["mask_kinds"]})
    row("mask kinds", lambda g: ", ".join(f"{k} {g['mask_kinds'].get(k, 0)}" for k in kinds))
    row("lesions", lambda g: g["lesions"])
    row("area px: median [IQR] (range)", lambda g: format_area(g["area_px"]))
    row("area mm²: median [IQR] (range)", lambda g: format_area(g["area_mm2"], 1))
    return table


@app.command()
def stats(
    dataset: DatasetArg,
    root: RootOpt,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    split: Annotated[Path | None, typer.Option("--split", help="Split file to report per split.")] = None,
    no_masks: Annotated[
        bool, typer.Option("--no-masks", help="Do not read pixel masks (no pixel-mask areas).")
    ] = False,
    option: OptionOpt = None,
) -> None:
    """Counts (images, patients, with masses) and lesion-area distributions, per split."""
    from bcedge.datasets.splits import load_split
    from bcedge.datasets.stats import dataset_stats

    reader = _open(dataset, root, option)
    split_doc = load_split(split) if split is not None else None
    samples = list(reader.samples())
    if as_json:
        result = dataset_stats(samples, split=split_doc, read_masks=not no_masks)
        typer.echo(json.dumps({"dataset": reader.name, "root": str(root), "groups": result}, indent=2))
        return
    from rich.console import Console
    from rich.progress import Progress

    console = Console()
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("measuring lesions", total=len(samples))
        result = dataset_stats(
            samples,
            split=split_doc,
            read_masks=not no_masks,
            progress=lambda done, total: progress.update(task, completed=done),
        )
    console.print(_stats_table(result, f"{reader.name} ({root})"))


@app.command()
def split(
    dataset: DatasetArg,
    root: RootOpt,
    out: Annotated[Path, typer.Option("--out", help="Split file to write (JSON).")],
    seed: Annotated[int, typer.Option("--seed", help="Seed ordering the patients.")] = 0,
    train: Annotated[float, typer.Option("--train", min=0.0, max=1.0, help="Share of patients in train.")] = 0.7,
    val: Annotated[float, typer.Option("--val", min=0.0, max=1.0, help="Share of patients in val.")] = 0.15,
    test: Annotated[float, typer.Option("--test", min=0.0, max=1.0, help="Share of patients in test.")] = 0.15,
    no_official: Annotated[
        bool, typer.Option("--no-official", help="Ignore the source's own train/test split.")
    ] = False,
    option: OptionOpt = None,
) -> None:
    """Write a patient-level, stratified, deterministic train/val/test split file."""
    from bcedge.datasets.splits import make_split, save_split

    reader = _open(dataset, root, option)
    result = make_split(
        reader.samples(),
        dataset=reader.name,
        seed=seed,
        fractions={"train": train, "val": val, "test": test},
        use_official=not no_official,
    )
    save_split(result, out)
    counts = ", ".join(f"{name} {c['images']} images/{c['patients']} patients" for name, c in result.counts.items())
    typer.echo(f"wrote {out}: {counts}")


@app.command()
def prepare(
    dataset: DatasetArg,
    root: RootOpt,
    out: Annotated[Path, typer.Option("--out", help="Cache folder (shared by configs and datasets).")],
    size: Annotated[int | None, typer.Option("--size", min=16, max=4096, help="Model input size (pixels).")] = None,
    config_file: Annotated[
        Path | None, typer.Option("--config", help="JSON preprocessing config (PreprocessConfig.to_dict()).")
    ] = None,
    split: Annotated[Path | None, typer.Option("--split", help="Split file; with --subset, cache one split.")] = None,
    subset: Annotated[str | None, typer.Option("--subset", help="Split name to cache (train/val/test).")] = None,
    option: OptionOpt = None,
) -> None:
    """Preprocess a dataset into a cache of arrays keyed by config and source-file hashes."""
    from bcedge.datasets.cache import prepare as prepare_cache
    from bcedge.errors import ConfigError, InputError
    from bcedge.preprocess import PreprocessConfig

    if config_file is not None:
        try:
            doc = json.loads(config_file.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise InputError(f"{config_file}: config file not found") from exc
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{config_file}: not a JSON preprocessing config ({exc})") from exc
        config = PreprocessConfig.from_dict(doc.get("config", doc) if isinstance(doc, dict) else doc)
    else:
        config = PreprocessConfig()
    if size is not None:
        config = PreprocessConfig.from_dict({**config.to_dict(), "size": size})
    if (split is None) != (subset is None):
        raise ConfigError("--split and --subset go together (e.g. --split combined.json --subset train)")
    reader = _open(dataset, root, option)
    samples = list(reader.samples())
    if split is not None and subset is not None:
        from bcedge.datasets.splits import filter_samples, load_split

        samples = filter_samples(samples, load_split(split), subset)
    from bcedge.cli.progress import progress_bar

    with progress_bar() as progress:
        task = progress.add_task(f"preprocessing {reader.name} ({config.hash()})", total=len(samples))
        cache = prepare_cache(
            samples,
            config,
            out,
            dataset=reader.name,
            progress=lambda done, total, reused: progress.update(task, completed=done),
        )
    typer.echo(f"{cache.root}: {len(cache)} samples ({cache.built} built, {cache.reused} reused), size {config.size}")
