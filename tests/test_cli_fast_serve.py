"""``bcedge serve --config FILE`` reaches the node without building the typer app (restart latency, issue #18).

The fast path must run exactly what typer runs: the same config, the same node, the same errors
and exit codes. Each test runs a command line both ways (the fast path, and typer with the fast
path switched off) with ``Node.run_forever`` replaced by a recorder, so no node is started.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from serve_support import detach_logging

import bcedge.cli.serve as serve_cli
from bcedge.cli import main
from bcedge.serve.node import Node


@pytest.fixture(autouse=True)
def _undo_node_logging():
    """Both paths run the node's ``configure_logging`` in this process; undo it after each test.

    Left in place, ``bcedge.outputs`` stops propagating to ``bcedge`` and later tests in the same
    session (``bcedge infer``'s one-line warnings) lose their stderr lines.
    """
    yield
    detach_logging()


MINIMAL = """
[node]
allowed_calling_ae_titles = ["MG1"]
[storage]
root = "spool root"
"""


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["serve", "--config", "a b.toml"], Path("a b.toml")),
        (["serve", "-c", "x.toml"], Path("x.toml")),
        (["serve", "--config=x.toml"], Path("x.toml")),
        (["--debug", "serve", "--config", "x.toml"], Path("x.toml")),
        (["serve", "--check-config", "--config", "x.toml"], None),
        (["serve", "--config", "x.toml", "--check-config"], None),
        (["serve", "--config", "x.toml", "status"], None),
        (["serve", "status", "--config", "x.toml"], None),
        (["serve", "--config", "--help"], None),
        (["serve", "--config="], None),
        (["serve", "--help"], None),
        (["serve"], None),
        (["infer", "--config", "x.toml"], None),
    ],
)
def test_only_a_plain_serve_line_takes_the_fast_path(args: list[str], expected: Path | None) -> None:
    assert serve_cli.plain_serve_config(args) == expected


def _run_both(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], args: list[str]
) -> list[tuple[int, list[Path | None], str]]:
    """(exit code, configs the node was started with, stderr) for ``args`` through the fast path, then typer."""
    results = []
    for fast in (True, False):
        started: list[Path | None] = []
        monkeypatch.setattr(Node, "run_forever", lambda self, _s=started, **_kw: _s.append(self.config.source))
        if not fast:
            monkeypatch.setattr(serve_cli, "plain_serve_config", lambda _args: None)
        code = main(args)
        results.append((code, started, capsys.readouterr().err))
    return results


def test_the_fast_path_starts_the_node_typer_would(
    spaced_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = spaced_dir / "serve.toml"
    path.write_text(MINIMAL)
    fast, typer_path = _run_both(monkeypatch, capsys, ["serve", "--config", str(path)])
    assert fast == typer_path == (0, [path], "")


def test_the_fast_path_fails_as_typer_does(
    spaced_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = spaced_dir / "serve.toml"
    path.write_text("[node]\nport = -1\n")
    missing = spaced_dir / "missing.toml"
    for args, expected in (
        (["serve", "--config", str(path)], "[node] allowed_calling_ae_titles is empty"),
        (["serve", f"--config={missing}"], "config file not found"),
    ):
        fast, typer_path = _run_both(monkeypatch, capsys, args)
        assert fast == typer_path
        code, started, err = fast
        assert code == 2 and started == [] and err.startswith("error: ") and err.count("\n") == 1
        assert expected in err
