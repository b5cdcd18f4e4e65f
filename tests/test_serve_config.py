"""serve.toml: the sample parses, mistakes give one-line errors naming the key, the CLI checks and reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bcedge.cli import main
from bcedge.errors import ConfigError
from bcedge.serve.config import load_config, parse_config

EXAMPLE = Path(__file__).resolve().parent.parent / "bcedge" / "examples" / "serve.toml"
REPO_BUNDLE = Path(__file__).resolve().parent.parent / "models" / "unet-mobilenetv2-combined256"

MINIMAL = """
[node]
allowed_calling_ae_titles = ["MG1"]
[storage]
root = "spool root"
"""


def test_sample_config_parses_and_describes() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.node.ae_title == "BCEDGE"
    assert cfg.node.allowed_calling_ae_titles == ["MG_UNIT_1", "ROUTER"]
    assert cfg.destination.port == 104 and cfg.destination.tls.enabled is False
    assert cfg.model.outputs == ["seg", "json"]
    assert cfg.calling_ae_title == "BCEDGE"
    text = "\n".join(cfg.describe())
    assert "MG_UNIT_1, ROUTER" in text and "PACS" in text and "0xA700" in text


def test_relative_paths_resolve_against_the_config_folder(spaced_dir: Path) -> None:
    path = spaced_dir / "serve.toml"
    path.write_text(MINIMAL)
    cfg = load_config(path)
    assert cfg.storage.root == spaced_dir.resolve() / "spool root"
    # seg is always produced, even when the list forgets it
    cfg2 = parse_config(MINIMAL + '[model]\noutputs = ["json"]\n', source=path)
    assert cfg2.model.outputs == ["seg", "json"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[node]\nport = 1\n", "allowed_calling_ae_titles is empty"),
        (MINIMAL + "[nodes]\nx = 1\n", "unknown section [nodes]"),
        (MINIMAL.replace("[storage]", "[storage]\nroots = 1"), "[storage] has unknown key 'roots'"),
        (MINIMAL.replace("[node]", '[node]\nport = "eleven"'), "[node] port is 'eleven'; expected an integer"),
        (MINIMAL.replace("[node]", "[node]\nport = 70000"), "[node] port is 70000"),
        (MINIMAL.replace('["MG1"]', '["MG1", "A\\\\B"]'), "allowed_calling_ae_titles is 'A\\\\B'"),
        (MINIMAL.replace('["MG1"]', '["THIS_TITLE_IS_TOO_LONG"]'), "AE title of 1-16"),
        (MINIMAL + "[node]\n", "not valid TOML"),
        (MINIMAL + '[model]\noutputs = ["seg", "pdf"]\n', "[model] outputs has 'pdf'"),
        (MINIMAL + "[destination]\nbackoff_initial_s = 10\nbackoff_max_s = 1\n", "backoff_max_s (1.0) is below"),
        (MINIMAL + "[destination]\nmax_attempts = 0\n", "[destination] max_attempts is 0"),
        (MINIMAL + "[tls]\nenabled = true\n", "[tls] cert is missing"),
        (MINIMAL.replace('["MG1"]', '["MG1"]\nallowed_addresses = ["not-an-ip"]'), "allowed_addresses has 'not-an-ip'"),
        (MINIMAL + '[logging]\nlevel = "LOUD"\n', "[logging] level is 'LOUD'"),
        (MINIMAL + '[model]\nbundle = "nowhere"\n', "has no manifest.json"),
    ],
)
def test_mistakes_are_one_line_config_errors(spaced_dir: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source=spaced_dir / "serve.toml")
    message = str(info.value)
    assert expected in message
    assert "\n" not in message and "serve.toml" in message


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")


def test_check_config_cli(spaced_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if not (REPO_BUNDLE / "manifest.json").is_file():
        pytest.skip(f"{REPO_BUNDLE} is not in this checkout")
    path = spaced_dir / "serve.toml"
    path.write_text(MINIMAL + f'[model]\nbundle = "{REPO_BUNDLE}"\n')
    assert main(["serve", "--check-config", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "callers: MG1" in out and "read and checked" in out
    # a bad file: exit 2 and one line on stderr
    path.write_text("[node]\nport = -1\n")
    assert main(["serve", "--check-config", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


def test_status_of_a_node_that_never_ran(spaced_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = spaced_dir / "serve.toml"
    path.write_text(MINIMAL)
    assert main(["serve", "status", "--config", str(path), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["running"] is False and data["queues"]["spool"] == 0
    assert main(["serve", "--config", str(path), "status"]) == 1  # --config given to the parent works too
    assert "never started" in capsys.readouterr().out


def test_worker_threads_default_to_a_share_of_the_usable_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue #14 item 4: no [model] threads -> usable CPUs / [worker] processes per worker, shown by describe()."""
    from bcedge import cpus

    monkeypatch.setattr(cpus, "usable_cpus", lambda: 8)
    cfg = parse_config(MINIMAL + "[worker]\nprocesses = 2\n")
    assert cfg.model.threads is None and cfg.model_threads == 4
    assert "4 thread(s) per worker (the usable CPUs shared by the workers)" in "\n".join(cfg.describe())
    cfg = parse_config(MINIMAL + "[worker]\nprocesses = 2\n[model]\nthreads = 3\n")
    assert cfg.model_threads == 3
    assert "3 thread(s) per worker;" in "\n".join(cfg.describe())
