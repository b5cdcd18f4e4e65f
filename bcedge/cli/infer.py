"""``bcedge infer`` and ``bcedge demo``: segment scans with a bundle and write what was found.

::

    bcedge infer scan.dcm [more.dcm ...] [--model BUNDLE] [--backend auto|tflite|openvino|onnx|tensorrt|keras]
                 [--threads N] [--out DIR] [--threshold T] [--outputs mask,overlay,json,seg] [--json]
    bcedge demo                                   # the bundled demo model on the bundled phantom scan

Exit codes: 0 every scan done; 2 bad input (a scan that cannot be read, a bad option; with
several scans the bad ones are reported on stderr, one line each, the others are still
processed, and the exit code is 2 at the end); 3 model or backend problem (missing,
malformed or tampered bundle, unknown backend, backend library missing, model fails to run).

``--json`` prints exactly one JSON document on stdout; progress, warnings and errors go to
stderr. Cold start matters on a device: this module imports only typer at load time, the
pipeline (NumPy, OpenCV, pydicom, the backend library) inside the command, rich only to print
a table, highdicom only when a SEG is written.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from bcedge.pipeline import Result, ScanFailure, Segmenter

#: Default output folder, relative to the working directory.
DEFAULT_OUT = Path("bcedge-out")
#: Default output folder of ``bcedge demo``.
DEFAULT_DEMO_OUT = Path("bcedge-demo")


def default_kinds() -> tuple[str, ...]:
    """Outputs written when ``--outputs`` is not given: mask, overlay, JSON, and the SEG when highdicom is installed."""
    kinds = ("mask", "overlay", "json")
    return (*kinds, "seg") if importlib.util.find_spec("highdicom") is not None else kinds


def example_scan() -> Path:
    """The synthetic sample scan shipped with the package (a left CC phantom with its mask beside it)."""
    return Path(__file__).resolve().parents[1] / "examples" / "phantom_lcc.dcm"


class _OneLine(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage().strip().splitlines()
        return f"{record.levelname.lower()}: {text[0] if text else ''}"


#: ``warnings.formatwarning``'s first line: ``PATH:LINE: CATEGORY: MESSAGE``.
_WARNING_LINE = re.compile(r"^(?P<path>.*?):\d+: (?P<category>\w+): (?P<message>.*)$")


class _LibraryWarning(logging.Formatter):
    """A Python warning of a library (pydicom's "Invalid value for VR DA: '0'", ...) as one line,
    ``warning: pydicom: MESSAGE``, without the file path, the source line or the help link."""

    def format(self, record: logging.LogRecord) -> str:
        first = (record.getMessage().strip().splitlines() or [""])[0]
        match = _WARNING_LINE.match(first)
        if match is None:
            return f"warning: {first}"
        parts = Path(match["path"]).parts
        # The package's folder under site-packages (pip) or dist-packages (Debian's python3-*).
        roots = [k for k, part in enumerate(parts[:-1]) if part in ("site-packages", "dist-packages")]
        package = parts[roots[-1] + 1] if roots else Path(match["path"]).stem
        message = match["message"].split(" Please see <", 1)[0]
        return f"warning: {package.removesuffix('.py')}: {message}"


@contextlib.contextmanager
def log_to_stderr() -> Iterator[None]:
    """During the block, bcedge's warnings (e.g. "no SEG for a raster input") and libraries' Python
    warnings (a malformed header value pydicom notes) go to stderr, one line each; restored after.

    Why libraries' warnings too: Python prints a warning as its source path, line and code, two
    lines that look like a traceback beside the one ``error:`` line of a bad scan.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine())
    handler.setLevel(logging.WARNING)
    from bcedge.cli import DEBUG_HANDLER

    logger = logging.getLogger("bcedge")
    if any(getattr(h, DEBUG_HANDLER, False) for h in logger.handlers):
        handler = logging.NullHandler()  # ``--debug`` already prints every bcedge record on stderr
    warning_handler = logging.StreamHandler(sys.stderr)
    warning_handler.setFormatter(_LibraryWarning())
    py_warnings = logging.getLogger("py.warnings")
    logger.addHandler(handler)
    py_warnings.addHandler(warning_handler)
    propagate, py_warnings.propagate = py_warnings.propagate, False
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        py_warnings.propagate = propagate
        py_warnings.removeHandler(warning_handler)
        logger.removeHandler(handler)


def _error_line(source: str, exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return f"error: {text}" if not source or source in text else f"error: {source}: {text}"


def run_infer(
    scans: list[Path],
    *,
    model: Path | None,
    backend: str,
    threads: int | None,
    out: Path,
    threshold: float | None,
    kinds: tuple[str, ...],
    min_area_mm2: float | None,
    batch_size: int,
    progress: bool,
    providers: list[str] | None = None,
) -> tuple[Segmenter, list[Result], list[ScanFailure]]:
    """Segment ``scans`` and write their outputs (:func:`bcedge.scanjob.process_scans`).

    Returns:
        (segmenter (closed), results, failures).

    Raises:
        BcedgeError: a problem that concerns every scan (bundle, backend, options); exit code 3 or 2.
    """
    from bcedge.cpus import default_threads
    from bcedge.errors import ConfigError, MissingDependencyError
    from bcedge.pipeline import ScanFailure, Segmenter, default_bundle_path
    from bcedge.scanjob import process_scans, unique_stems

    if "seg" in kinds and importlib.util.find_spec("highdicom") is None:
        raise MissingDependencyError("--outputs seg (a DICOM Segmentation)", "seg", "highdicom")
    bundle_path = default_bundle_path() if model is None else model
    results: list[Result] = []
    failures: list[ScanFailure] = []
    stems = unique_stems(scans)
    options: dict[str, Any] = {}
    if providers:
        if backend != "onnx":
            raise ConfigError(f"--providers applies to --backend onnx (got --backend {backend})")
        options["providers"] = providers
    # No --threads: every usable CPU (the backend libraries' own defaults differ: LiteRT's is one).
    threads = default_threads(threads)
    # scans: the choice counts each candidate's start-up against this job's length (a one-scan infer
    # must not pay a runtime's compile to save milliseconds per call).
    with Segmenter(
        bundle_path,
        backend,
        threads=threads,
        threshold=threshold,
        min_area_mm2=min_area_mm2,
        scans=len(scans),
        **options,
    ) as seg:
        for note in seg.warnings:
            typer.echo(f"warning: {note}", err=True)
        jobs = process_scans(seg, scans, out, kinds, stems=stems, batch_size=batch_size)
        for i, item in enumerate(jobs, start=1):
            if isinstance(item, ScanFailure):
                typer.echo(_error_line(item.source, item.error), err=True)
                failures.append(item)
                continue
            results.append(item)
            if progress:
                typer.echo(f"[{i}/{len(scans)}] {item.source}: {len(item.findings)} finding(s)", err=True)
    return seg, results, failures


def _document(seg: Segmenter, results: list[Result], failures: list[ScanFailure], out: Path) -> dict[str, Any]:
    from bcedge import __version__

    return {
        "bcedge_version": __version__,
        "model": seg.model_info,
        "threshold": seg.threshold,
        "out": str(out),
        "scans": [r.to_dict() for r in results],
        "failures": [f.to_dict() for f in failures],
    }


def _print_plain(results: list[Result]) -> None:
    """One line per scan and one per finding: cheap to import, easy to grep."""
    for r in results:
        typer.echo(f"{r.source}: {len(r.findings)} finding(s), {r.timing_ms.get('total', 0.0):.0f} ms")
        for f in r.findings:
            size = f"{f.area_mm2:.1f} mm², {f.bbox_mm[0]:.1f} x {f.bbox_mm[1]:.1f} mm" if f.area_mm2 else ""
            size = size or f"{f.area_px} px"
            typer.echo(
                f"  #{f.label} bbox (r0, c0, r1, c1) {list(f.bbox_px)}, {size}, "
                f"max p {f.max_probability:.3f}, mean p {f.mean_probability:.3f}"
            )
        for kind, path in r.outputs.items():
            typer.echo(f"  {kind}: {path}")


def _findings_table(results: list[Result], title: str) -> Any:
    """A rich table of the findings; the scan column only when there are several scans."""
    from rich.table import Table

    several = len(results) > 1
    table = Table(title=title)
    columns = [("scan", "left")] if several else []
    columns += [
        ("#", "right"),
        ("bbox px (r0, c0, r1, c1)", "left"),
        ("size (mm)", "right"),
        ("area (mm²)", "right"),
        ("max p", "right"),
        ("mean p", "right"),
    ]
    for name, justify in columns:
        table.add_column(name, justify=justify, no_wrap=name.startswith("bbox"))  # type: ignore[arg-type]
    for r in results:
        scan = [Path(r.source).name] if several else []
        if not r.findings:
            table.add_row(*scan, "-", "no finding", "", "", "", "")
        for f in r.findings:
            table.add_row(
                *scan,
                str(f.label),
                ", ".join(str(v) for v in f.bbox_px),
                f"{f.bbox_mm[0]:.1f} x {f.bbox_mm[1]:.1f}" if f.bbox_mm else "-",
                f"{f.area_mm2:.1f}" if f.area_mm2 is not None else f"{f.area_px} px",
                f"{f.max_probability:.3f}",
                f"{f.mean_probability:.3f}",
            )
    return table


def _parse_kinds(outputs: str | None) -> tuple[str, ...]:
    from bcedge.outputs import parse_kinds

    return default_kinds() if outputs is None else parse_kinds(outputs)


# --------------------------------------------------------------------------- options shared by both commands

ModelOpt = Annotated[
    Path | None,
    typer.Option(
        "--model",
        "-m",
        help="Bundle folder (manifest.json + artifacts). Default: the bundled real-data model (bcedge/mass_model).",
    ),
]
BackendOpt = Annotated[
    str,
    typer.Option(
        "--backend",
        "-b",
        help="auto (the bundle's fastest gated artifact here), or tflite, openvino, onnx, tensorrt, keras.",
    ),
]
ThreadsOpt = Annotated[
    int | None,
    typer.Option("--threads", min=1, help="CPU threads for the backend. Default: every usable CPU."),
]
ThresholdOpt = Annotated[
    float | None,
    typer.Option("--threshold", help="Probability threshold in (0, 1). Default: the bundle's."),
]
OutputsOpt = Annotated[
    str | None,
    typer.Option(
        "--outputs",
        help="Comma-separated subset of mask,overlay,json,seg. Default: mask,overlay,json (+ seg with highdicom).",
    ),
]
MinAreaOpt = Annotated[
    float | None,
    typer.Option(
        "--min-area",
        help="Drop components smaller than this many mm² (default 4; scans without spacing: a few model pixels).",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout (nothing else).")]
ProvidersOpt = Annotated[
    str | None,
    typer.Option(
        "--providers",
        help="--backend onnx: onnxruntime execution providers, best first, comma-separated "
        "(default: TensorRT, CUDA, CPU, those this onnxruntime has).",
    ),
]


def infer_command(
    scans: Annotated[list[Path], typer.Argument(help="MG DICOM (or PNG/PGM/JPEG/TIFF) files.", show_default=False)],
    model: ModelOpt = None,
    backend: BackendOpt = "auto",
    threads: ThreadsOpt = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (created when needed).")] = DEFAULT_OUT,
    threshold: ThresholdOpt = None,
    outputs: OutputsOpt = None,
    min_area: MinAreaOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Scans per model call.")] = 4,
    providers: ProvidersOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Segment breast masses in SCAN(s); write mask, overlay, JSON and DICOM SEG under --out.

    Exit code 0: every scan done; 2: a bad scan or option (other scans still processed);
    3: model or backend problem.
    """
    kinds = _parse_kinds(outputs)
    with log_to_stderr():
        seg, results, failures = run_infer(
            scans,
            model=model,
            backend=backend,
            threads=threads,
            out=out,
            threshold=threshold,
            kinds=kinds,
            min_area_mm2=min_area,
            batch_size=batch_size,
            progress=not as_json and len(scans) > 1,
            providers=[p.strip() for p in providers.split(",") if p.strip()] if providers else None,
        )
    if as_json:
        sys.stdout.write(json.dumps(_document(seg, results, failures, out), indent=2) + "\n")
        sys.stdout.flush()
    else:
        _print_plain(results)
        if failures:
            typer.echo(f"{len(failures)} of {len(scans)} scan(s) failed (see the errors above)", err=True)
    if failures:
        raise typer.Exit(2)


def demo_command(
    backend: BackendOpt = "auto",
    threads: ThreadsOpt = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = DEFAULT_DEMO_OUT,
    outputs: OutputsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run the bundled demo model on the bundled synthetic scan and show what it found.

    The demo model is trained on synthetic phantoms only: it is not for clinical use.
    """
    from bcedge.pipeline import demo_bundle_path

    scan = example_scan()
    kinds = _parse_kinds(outputs)
    with log_to_stderr():
        seg, results, failures = run_infer(
            [scan],
            model=demo_bundle_path(),
            backend=backend,
            threads=threads,
            out=out,
            threshold=None,
            kinds=kinds,
            min_area_mm2=None,
            batch_size=1,
            progress=False,
        )
    if failures:
        raise typer.Exit(failures[0].error.exit_code)
    result = results[0]
    dice = _dice_with_truth(result, scan.with_name(scan.stem + "_mask.png"))
    if as_json:
        doc = _document(seg, results, failures, out)
        doc["dice_vs_truth"] = dice
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return
    info = seg.model_info
    typer.echo(
        f"bcedge demo: {info['name']} ({info['precision']} on {info['backend']}), trained on synthetic phantoms: "
        "a demo, not for clinical use"
    )
    from rich.console import Console

    meta = result.mammogram.meta
    Console().print(_findings_table(results, title=f"{scan.name} ({meta.columns} x {meta.rows} px)"))
    if dice is not None:
        typer.echo(f"Dice against the phantom's true lesion mask: {dice:.3f}")
    typer.echo("time (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in result.timing_ms.items()))
    for kind, path in result.outputs.items():
        typer.echo(f"{kind:8s} {path}")


def _dice_with_truth(result: Result, truth_png: Path) -> float | None:
    """Dice of the predicted mask against the sample's true mask, when it ships beside the scan."""
    if not truth_png.is_file():
        return None
    import cv2

    from bcedge.metrics import dice

    truth = cv2.imread(str(truth_png), cv2.IMREAD_GRAYSCALE)
    if truth is None or truth.shape != result.mask.shape:
        return None
    return round(float(dice(result.mask, truth > 0)), 4)


def register(app: typer.Typer) -> None:
    """Attach ``infer`` and ``demo`` to the bcedge app."""
    app.command("infer")(infer_command)
    app.command("demo")(demo_command)
