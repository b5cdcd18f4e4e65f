"""``bcedge inspect``: show what the reader made of a scan (and, optionally, its model input)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def inspect_command(
    scan: Annotated[Path, typer.Argument(help="MG DICOM (or PNG/PGM/JPEG/TIFF) file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    save_preprocessed: Annotated[
        Path | None, typer.Option("--save-preprocessed", help="Write the model-input image as PNG.")
    ] = None,
    size: Annotated[int | None, typer.Option("--size", min=16, max=4096, help="Model input size (pixels).")] = None,
    allow_non_mg: Annotated[bool, typer.Option("--allow-non-mg", help="Accept a Modality other than MG.")] = False,
) -> None:
    """Show what was read from SCAN and, optionally, save its preprocessed model input."""
    from bcedge.dicom import read_mammogram

    mammo = read_mammogram(scan, allow_non_mg=allow_non_mg)
    info = mammo.meta.to_dict()
    info["pixel_range"] = [float(mammo.pixels.min()), float(mammo.pixels.max())]
    if save_preprocessed is not None or size is not None:
        # Imported only when asked for: reading and showing a scan must not depend on preprocessing.
        from bcedge.preprocess import PreprocessConfig, preprocess

        config = PreprocessConfig() if size is None else PreprocessConfig(size=size)
        tensor, geometry = preprocess(mammo, config)
        info["preprocess"] = {"config_hash": config.hash(), "geometry": geometry.to_dict()}
        if save_preprocessed is not None:
            from bcedge.imageio import write_png

            write_png(save_preprocessed, tensor[0, :, :, 0])
            info["preprocessed_png"] = str(save_preprocessed)
    if as_json:
        typer.echo(json.dumps(info, indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=str(scan), show_header=False)
    shown = {
        "size": f"{mammo.meta.columns} x {mammo.meta.rows} (W x H)",
        "modality": mammo.meta.modality,
        "manufacturer": mammo.meta.manufacturer,
        "laterality": f"{mammo.meta.laterality} ({mammo.meta.laterality_source})" if mammo.meta.laterality else None,
        "view": mammo.meta.view,
        "photometric": mammo.meta.photometric,
        "presentation LUT shape": mammo.meta.presentation_lut_shape,
        "inverted": mammo.meta.inverted,
        "presentation intent": mammo.meta.presentation_intent,
        "pixel spacing (mm)": (
            f"{mammo.meta.pixel_spacing_mm[0]:.4g} x {mammo.meta.pixel_spacing_mm[1]:.4g} ({mammo.meta.spacing_source})"
            if mammo.meta.pixel_spacing_mm
            else None
        ),
        "bits stored": mammo.meta.bits_stored,
        "window": f"{mammo.meta.window_source} {mammo.meta.window or ''} {mammo.meta.voi_function or ''}".strip(),
        "transfer syntax": mammo.meta.transfer_syntax,
    }
    for key, value in shown.items():
        table.add_row(key, "-" if value is None else str(value))
    if "preprocessed_png" in info:
        table.add_row("preprocessed", str(info["preprocessed_png"]))
    Console().print(table)
