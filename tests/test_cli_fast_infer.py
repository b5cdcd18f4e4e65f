"""The pydantic-free parse of ``bcedge infer`` (cold start, issue #14 item 8): typer's arguments, or typer itself.

For every command line below, :func:`bcedge.cli.fast_infer.parse_infer` either returns exactly
the keyword arguments typer passes to ``infer_command`` (compared on the same app), or None, and
then ``main`` runs typer as before. A cold ``bcedge infer`` on a plain line imports no pydantic.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import bcedge.cli as cli
import bcedge.cli.infer as infer_module
from bcedge.cli.fast_infer import parse_infer
from bcedge.pipeline import demo_bundle_path


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> tuple[Any, list[dict[str, Any]]]:
    """The light app, rebuilt around a recording ``infer_command`` (same signature, runs nothing)."""
    calls: list[dict[str, Any]] = []
    real = infer_module.infer_command

    @functools.wraps(real)
    def recording(**kwargs: Any) -> None:
        calls.append(kwargs)

    monkeypatch.setattr(infer_module, "infer_command", recording)
    monkeypatch.setattr(cli, "_light", {})
    return cli._app_for(["infer"]), calls


def _typer_kwargs(app: Any, calls: list[dict[str, Any]], args: list[str]) -> dict[str, Any]:
    calls.clear()
    app(args=args, standalone_mode=False, prog_name="bcedge")
    assert len(calls) == 1
    return calls[0]


@pytest.mark.parametrize(
    "args",
    [
        ["infer", "scan.dcm"],
        ["--debug", "infer", "a.dcm", "b.dcm"],
        ["infer", "a.dcm", "--threads", "2", "-o", "out dir", "b.dcm", "--outputs=json,mask", "--json"],
        ["infer", "--model", "m", "-b", "tflite", "--threshold", "0.65", "--min-area", "4", "x.dcm"],
        ["infer", "x.dcm", "--batch-size", "16", "--batch-size", "3"],  # a repeated option: the last one
        ["infer", "x.dcm", "--providers", "CPUExecutionProvider", "--threshold", "0.5", "--min-area", "10"],
        ["infer", "x.dcm", "--threads", "007", "--", "-y.dcm"],
        ["infer", "é 漢.dcm", "-m", "."],  # an existing folder as a path (typer's checks pass)
    ],
)
def test_fast_parse_gives_typers_arguments(captured: tuple[Any, list[dict[str, Any]]], args: list[str]) -> None:
    app, calls = captured
    parsed = parse_infer(app, args)
    assert parsed is not None, args
    assert parsed.root_params == {"debug": "--debug" in args}
    expected = _typer_kwargs(app, calls, args)
    calls.clear()
    parsed.run()  # through typer's own callback wrapper, as click calls it
    assert calls == [expected]
    assert {k: type(v) for k, v in calls[0].items()} == {k: type(v) for k, v in expected.items()}
    assert parsed.params.keys() == expected.keys()


@pytest.mark.parametrize(
    "args",
    [
        ["infer", "--help"],
        ["infer", "x.dcm", "-h"],
        ["--help", "infer"],
        ["infer"],
        ["infer", "x.dcm", "--bogus"],
        ["infer", "x.dcm", "--threads", "0"],  # below min: typer's message
        ["infer", "x.dcm", "--threads", "2.0"],
        ["infer", "x.dcm", "--threads", "+2"],
        ["infer", "x.dcm", "--threshold", "1e-1"],
        ["infer", "x.dcm", "--threshold", "nan"],
        ["infer", "x.dcm", "--threshold", ".5"],
        ["infer", "x.dcm", "--outputs"],  # no value
        ["infer", "x.dcm", "--json=1"],
        ["infer", ""],
        ["infer", "x.dcm", "--out", ""],
        ["demo"],
        ["inspect", "x.dcm"],
        ["--debug"],
        [],
    ],
)
def test_unsure_lines_go_to_typer(captured: tuple[Any, list[dict[str, Any]]], args: list[str]) -> None:
    app, _ = captured
    assert parse_infer(app, args) is None


def test_a_shell_completion_request_goes_to_typer(
    captured: tuple[Any, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    app, _ = captured
    monkeypatch.setenv("_BCEDGE_COMPLETE", "bash_complete")
    assert parse_infer(app, ["infer", "x.dcm"]) is None


@pytest.mark.parametrize(("raises", "code"), [(None, 0), ("exit 2", 2), ("interrupt", 130), ("eof", 130)])
def test_main_ends_the_fast_path_as_typer_ends(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], raises: str | None, code: int
) -> None:
    """The command's exit, Ctrl-C and EOF: the same exit code and stderr through either path."""
    import typer

    import bcedge.cli.fast_infer as fast

    real = infer_module.infer_command

    @functools.wraps(real)
    def command(**kwargs: Any) -> None:
        if raises == "exit 2":
            raise typer.Exit(2)
        if raises == "interrupt":
            raise KeyboardInterrupt
        if raises == "eof":
            raise EOFError

    monkeypatch.setattr(infer_module, "infer_command", command)
    monkeypatch.setattr(cli, "_light", {})
    used: list[bool] = []
    monkeypatch.setattr(fast, "parse_infer", lambda app, args: used.append(True) or parse_infer(app, args))
    args = ["infer", "x.dcm", "--json"]
    assert cli.main(args) == code
    fast_streams = capsys.readouterr()
    monkeypatch.setattr(fast, "parse_infer", lambda app, args: None)  # typer's path
    assert cli.main(args) == code
    assert capsys.readouterr() == fast_streams
    assert used == [True]


def test_a_cold_infer_imports_no_pydantic(tmp_path: Path) -> None:
    """A bad scan through the real command: one error line, exit 2, and pydantic never imported."""
    script = "import sys\nfrom bcedge.cli import main\nrc = main(sys.argv[1:])\nprint('pydantic' in sys.modules, rc)\n"
    bad = tmp_path / "bad.dcm"
    bad.write_text("not a DICOM file")
    args = ["infer", str(bad), "--model", str(demo_bundle_path()), "--outputs", "json", "--out", str(tmp_path / "o")]
    env = {k: v for k, v in os.environ.items() if not k.endswith("_COMPLETE")}
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env, timeout=300)
    assert done.stdout.strip().splitlines()[-1] == "False 2", done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(bad) in errors[0]
    # The same line with an option typer must judge: typer's message, exit 2, pydantic imported.
    done = subprocess.run(
        [sys.executable, "-c", script, *args, "--threads", "0"], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.stdout.strip().splitlines()[-1] == "True 2", done.stderr
    assert "--threads" in done.stderr and "error:" in done.stderr
