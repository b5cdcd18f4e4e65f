"""The ``bcedge`` command line: parse, call, map errors to exit codes.

One module per command beside this one (``inspect``, ``phantom``, ``data``, ``train``,
``evaluate``, ``export``, ``infer`` (+ ``demo``), ``benchmark``, ``serve``, ``batch``;
``progress`` is the shared progress bar). This package is the only layer of ``bcedge`` that
may import the desktop packages ``training`` and ``export``, and only inside command
functions (``tests/test_architecture.py`` holds that).

Thin on purpose: every command calls a library function and prints its result.
A :class:`~bcedge.errors.BcedgeError` becomes one line on stderr and exit code
2; ``--debug`` shows the traceback instead and turns on bcedge's debug log on stderr
(:func:`debug_logging`: the decoders' and LiteRT's C-library messages among others). Heavy modules are imported inside
the commands so ``bcedge --help`` stays fast and works without optional extras.
"""

from __future__ import annotations

import errno
import json
import sys
from typing import Annotated, Any, TextIO, cast

import typer

from bcedge.errors import BcedgeError, first_line

_APP_SETTINGS = {
    "name": "bcedge",
    "help": "Breast-mass segmentation on mammograms: read, preprocess, segment, benchmark.",
    "no_args_is_help": True,
    "pretty_exceptions_enable": False,
    "add_completion": False,
}
app = typer.Typer(**_APP_SETTINGS)  # type: ignore[arg-type]

#: Commands run from an app that holds only them (:func:`_app_for`): the per-scan commands,
#: whose cold start counts (issue #14 item 8).
_LIGHT_COMMANDS = frozenset({"infer", "demo"})
_light: dict[str, typer.Typer] = {}

_state = {"debug": False}


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks instead of one-line errors.")] = False,
) -> None:
    _state["debug"] = debug


def _register_subapps() -> None:
    """Attach the sub-apps and desktop commands once (their modules import nothing heavy)."""
    if getattr(app, "_bcedge_registered", False):
        return
    # Registration order is the order of `bcedge --help`: commands first (inspect, phantom, ...), then groups.
    from bcedge.cli.data import app as data_app
    from bcedge.cli.evaluate import register as register_evaluate
    from bcedge.cli.export import export_command
    from bcedge.cli.inspect import inspect_command
    from bcedge.cli.phantom import phantom_command
    from bcedge.cli.train import train_command

    app.command("inspect")(inspect_command)
    app.command("phantom")(phantom_command)
    app.add_typer(data_app, name="data", help="Dataset statistics, splits and preprocessed caches.")
    app.command("train")(train_command)
    register_evaluate(app)
    app.command("export")(export_command)
    from bcedge.cli.infer import register as register_infer

    register_infer(app)
    from bcedge.cli.benchmark import register as register_benchmark

    register_benchmark(app)
    from bcedge.cli.serve import register as register_serve

    register_serve(app)
    from bcedge.cli.batch import register as register_batch

    register_batch(app)
    app._bcedge_registered = True  # type: ignore[attr-defined]


def _command(args: list[str]) -> str | None:
    """The command ``args`` name (``infer``, ``serve``...): the first argument that is not an option
    (the root's only options are flags); None for ``bcedge [--debug]`` alone."""
    return next((a for a in args if not a.startswith("-")), None)


def _app_for(args: list[str]) -> typer.Typer:
    """The app to run ``args`` with: the full ``bcedge`` app, or, for ``infer``/``demo``, one with only those.

    typer turns every registered command into a click command, with a pydantic type adapter
    per parameter, before it runs the one asked for; with all 15 commands that, and importing
    their modules, was ~200 ms of CPU of a cold ``bcedge infer`` (measured on the 2-core
    machine, busy). ``bcedge infer ...`` parses, helps and fails exactly as before: same
    callback, same settings, same command functions.
    """
    command = _command(args)
    if command not in _LIGHT_COMMANDS:
        _register_subapps()
        return app
    if "infer" not in _light:
        from bcedge.cli.infer import register as register_infer

        light = typer.Typer(**_APP_SETTINGS)  # type: ignore[arg-type]
        light.callback()(_root)
        register_infer(light)
        _light["infer"] = light
    return _light["infer"]


def _run(args: list[str]) -> object:
    """Run ``args``: a plain ``bcedge infer`` line through :mod:`bcedge.cli.fast_infer`, a plain ``bcedge serve
    --config FILE`` straight to the node (:func:`bcedge.cli.serve.plain_serve_config`), anything else through typer.

    Returns:
        What typer's ``standalone_mode=False`` returns: the command's return value, or the code of
        a ``typer.Exit`` it raised.
    """
    if "serve" in args[:2]:
        # A restart of the node: launch its workers without building the typer app first.
        from bcedge.cli.serve import plain_serve_config, run_node

        config = plain_serve_config(args)
        if config is not None:
            _state["debug"] = "--debug" in args
            run_node(config)
            return None
    app = _app_for(args)
    if app is _light.get("infer"):
        # Cold start (issue #14 item 8): typer would import pydantic and build a type adapter per
        # parameter; the fast parse gives the same arguments, or None (then typer runs as before).
        from bcedge.cli.fast_infer import parse_infer

        parsed = parse_infer(app, args)
        if parsed is not None:
            return _invoke_like_typer(parsed)
    # With standalone_mode=False click returns typer.Exit's code instead of raising it.
    return app(args=args, standalone_mode=False)


def _invoke_like_typer(parsed: Any) -> object:
    """Run a :class:`~bcedge.cli.fast_infer.FastInfer` with the exception handling of typer's own main
    (``typer.core._main`` with ``standalone_mode=False``), so either path ends the same way."""
    try:
        try:
            return parsed.run()
        except EOFError as exc:
            typer.echo(err=True)
            raise typer.Abort() from exc
        except KeyboardInterrupt as exc:
            raise typer.Exit(130) from exc
        except OSError as exc:
            if exc.errno != errno.EPIPE:
                raise
            from typer._click.utils import PacifyFlushWrapper

            sys.stdout = cast(TextIO, PacifyFlushWrapper(sys.stdout))
            sys.stderr = cast(TextIO, PacifyFlushWrapper(sys.stderr))
            sys.exit(1)
    except typer.Exit as exc:
        return exc.exit_code


#: Marks the stderr handler :func:`debug_logging` installs (the infer path then adds no second one).
DEBUG_HANDLER = "_bcedge_debug"


def debug_logging() -> None:
    """``--debug``: every record of the ``bcedge`` loggers, DEBUG and up, one line each on stderr.

    Why: what bcedge logs at DEBUG (C-library chatter the decoders and the TFLite backend capture from
    fd 2, :mod:`bcedge.cstderr`; the backend choice) is otherwise only seen by a program that
    configures logging itself. Installed once; bcedge's warnings then print through it
    (``WARNING: bcedge...: ...``), once. Not for ``serve``, which logs through its own redacted configuration.
    """
    import logging

    logger = logging.getLogger("bcedge")
    if any(getattr(h, DEBUG_HANDLER, False) for h in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(name)s: %(message)s"))
    setattr(handler, DEBUG_HANDLER, True)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)


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
    if argv is None and _command(args) in _LIGHT_COMMANDS:
        # The scan job's malloc settings, before any thread allocates (bcedge.allocator says why); only
        # for the process's own command line: a program calling main(argv) keeps its allocator as it is.
        from bcedge.allocator import tune_for_scans

        tune_for_scans()
    if debug and _command(args) != "serve":
        # serve logs through its own [logging] configuration, redacted (bcedge.serve.redact).
        debug_logging()
    try:
        rc = _run(args)
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
