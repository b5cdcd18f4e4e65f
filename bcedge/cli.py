"""The ``bcedge`` command line: parse, call, map errors to exit codes.

Thin on purpose: every command calls a library function and prints its result.
A :class:`~bcedge.errors.BcedgeError` becomes one line on stderr and exit code
2; ``--debug`` shows the traceback instead. Heavy modules are imported inside
the commands so ``bcedge --help`` stays fast and works without optional extras.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from bcedge.errors import BcedgeError, first_line

app = typer.Typer(
    name="bcedge",
    help="Breast-mass segmentation on mammograms: read, preprocess, segment, benchmark.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

_state = {"debug": False}


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks instead of one-line errors.")] = False,
) -> None:
    _state["debug"] = debug


@app.command()
def inspect(
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


@app.command()
def phantom(
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


def _register_subapps() -> None:
    """Attach the sub-apps and desktop commands once (their modules import nothing heavy)."""
    if getattr(app, "_bcedge_registered", False):
        return
    from bcedge.cli_data import app as data_app
    from bcedge.cli_evaluate import register as register_evaluate
    from bcedge.cli_export import export_command
    from bcedge.cli_train import train_command

    app.add_typer(data_app, name="data", help="Dataset statistics, splits and preprocessed caches.")
    app.command("train")(train_command)
    register_evaluate(app)
    app.command("export")(export_command)
    from bcedge.cli_infer import register as register_infer

    register_infer(app)
    from bcedge.cli_benchmark import register as register_benchmark

    register_benchmark(app)
    from bcedge.cli_serve import register as register_serve

    register_serve(app)
    from bcedge.cli_batch import register as register_batch

    register_batch(app)
    app._bcedge_registered = True  # type: ignore[attr-defined]


def _fail(message: str, code: int, as_json: bool) -> int:
    """Print one ``error:`` line on stderr (and, with ``--json``, one JSON document on stdout); return ``code``."""
    line = " ".join(message.split())  # one line, whatever the message held
    typer.echo(f"error: {line}", err=True)
    if as_json:
        from bcedge import __version__

        doc = {"bcedge_version": __version__, "error": line, "exit_code": code, "scans": [], "failures": []}
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        sys.stdout.flush()
    return code


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app; map errors to one ``error:`` line and an exit code.

    Exit codes: 0 done; 2 bad input or usage (click's usage errors too: one line with a hint,
    never its usage block); 3 model or backend problem (:class:`~bcedge.errors.BundleError`);
    130 interrupted; 1 only for a bug (an exception nobody foresaw). With ``--json`` a failure
    before the command could print its own document still prints one JSON document.
    """
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    as_json = "--json" in args
    try:
        _register_subapps()
        # With standalone_mode=False click returns typer.Exit's code instead of raising it.
        rc = app(args=args, standalone_mode=False)
        if isinstance(rc, int) and rc:
            return rc
    except BcedgeError as exc:
        if debug:
            raise
        return _fail(str(exc), exc.exit_code, as_json)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("aborted", err=True)
        return 130
    except Exception as exc:  # click usage errors and the like
        # Recent typer vendors click (typer._click) and `import click` may fail: match by duck type.
        if isinstance(exc, typer.Exit) or type(exc).__name__ == "Exit":
            return int(getattr(exc, "exit_code", 0))
        if callable(getattr(exc, "format_message", None)) and isinstance(getattr(exc, "exit_code", None), int):
            if debug:
                raise
            # A usage error (unknown option, missing argument, a path that does not exist...): the
            # message and where to look, on one line, instead of click's usage block.
            ctx = getattr(exc, "ctx", None)
            command = getattr(ctx, "command_path", None) or "bcedge"
            return _fail(f"{exc.format_message()} (see '{command} --help')", 2, as_json)
        if debug:
            raise
        return _fail(
            f"unexpected {type(exc).__name__}: {first_line(exc)} (rerun with --debug for the traceback)", 1, as_json
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
