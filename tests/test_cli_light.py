"""``bcedge infer`` / ``demo`` run from an app holding only them (cold start, issue #14 item 8): same CLI."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys

import pytest

import bcedge.cli as cli


def _run(app: object, args: list[str]) -> tuple[str, str]:
    """stdout, and the exception's class and message (click's, on a usage error)."""
    out = io.StringIO()
    error = ""
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        try:
            app(args=args, standalone_mode=False, prog_name="bcedge")  # type: ignore[operator]
        except Exception as exc:
            message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
            error = f"{type(exc).__name__}: {message}"
    return out.getvalue(), error


def test_infer_and_demo_get_the_light_app_and_the_rest_the_full_one() -> None:
    light = cli._app_for(["infer", "scan.dcm"])
    assert light is not cli.app
    assert cli._app_for(["--debug", "demo"]) is light
    assert sorted(c.name for c in light.registered_commands) == ["demo", "infer"]
    for args in (["--help"], [], ["inspect", "x"], ["benchmark"], ["infr"]):
        assert cli._app_for(args) is cli.app


@pytest.mark.parametrize(
    "args",
    [
        ["infer", "--help"],
        ["demo", "--help"],
        ["infer", "--bogus"],
        ["infer"],
        ["infer", "x.dcm", "--threads", "0"],
        ["demo", "--outputs"],
    ],
)
def test_the_light_app_parses_helps_and_fails_as_the_full_one(args: list[str]) -> None:
    light = cli._app_for(["infer"])
    cli._register_subapps()
    assert _run(light, args) == _run(cli.app, args)


def test_a_cold_infer_help_builds_no_other_command() -> None:
    """Only infer's and demo's modules are imported by ``bcedge infer --help`` (not evaluate's, train's...)."""
    script = (
        "import sys, io, contextlib\n"
        "from bcedge.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    rc = main(['infer', '--help'])\n"
        "print(rc, sorted(m for m in sys.modules if m.startswith('bcedge.cli.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    rc, modules = out.stdout.split(" ", 1)
    assert rc == "0"
    for other in ("evaluate", "train", "export", "benchmark", "serve", "batch", "data"):
        assert f"bcedge.cli.{other}'" not in modules, modules
