"""``bcedge phantom``: write deterministic synthetic MG DICOM phantoms."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def phantom_command(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write images/, masks/ and phantoms.csv into.")],
    count: Annotated[int, typer.Option("--count", min=1, help="Number of phantoms.")] = 8,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed, same files).")] = 0,
    scale: Annotated[
        float, typer.Option("--scale", min=0.05, max=1.0, help="Size relative to full field (1.0: up to 3328x2560).")
    ] = 1.0,
) -> None:
    """Write deterministic synthetic MG DICOM phantoms with lesion masks."""
    from bcedge.phantom import generate

    paths = generate(out_dir, count=count, seed=seed, scale=scale)
    typer.echo(f"wrote {len(paths)} phantoms to {out_dir}")
