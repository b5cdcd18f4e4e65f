"""bcedge.allocator: the scan job's malloc settings, applied once, only where they may be, and by the CLI
before anything else (the effect on speed is measured by benchmarks/ab_allocator.py, not here)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import bcedge.allocator as allocator
import bcedge.cli as cli


class FakeLibc:
    """Records mallopt calls; refuses the parameters in ``refuse``."""

    def __init__(self, refuse: tuple[int, ...] = ()) -> None:
        self.calls: list[tuple[int, int]] = []
        self.refuse = refuse

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return 0 if param in self.refuse else 1


@pytest.fixture(autouse=True)
def fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts as a new process would: nothing applied, no opt-out in the environment."""
    monkeypatch.setattr(allocator, "_applied", None)
    for name in (allocator.ENV_OPT_OUT, "MALLOC_ARENA_MAX", "GLIBC_TUNABLES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(sys, "platform", "linux")


def test_sets_arena_and_thresholds_once() -> None:
    libc = FakeLibc()
    first = allocator.tune_for_scans(lambda: libc)
    assert first == {"applied": {"arena_max": 1, "mmap_threshold": 32 << 20, "trim_threshold": 1 << 30}}
    assert libc.calls == [(-8, 1), (-3, 32 << 20), (-1, 1 << 30)]
    # A second call changes nothing and reports the first result.
    assert allocator.tune_for_scans(lambda: libc) is first
    assert len(libc.calls) == 3


def test_reports_only_what_glibc_accepted() -> None:
    assert allocator.tune_for_scans(lambda: FakeLibc(refuse=(-8,))) == {
        "applied": {"mmap_threshold": 32 << 20, "trim_threshold": 1 << 30}
    }


def test_every_setting_refused_is_a_skip() -> None:
    assert allocator.tune_for_scans(lambda: FakeLibc(refuse=(-8, -3, -1))) == {
        "skipped": "mallopt refused every setting"
    }


@pytest.mark.parametrize(
    ("name", "value", "why"),
    [
        ("BCEDGE_MALLOC", "default", "BCEDGE_MALLOC=default"),
        ("BCEDGE_MALLOC", " Default ", "BCEDGE_MALLOC=default"),
        ("MALLOC_ARENA_MAX", "4", "malloc settings given in the environment"),
        ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1", "malloc settings given in the environment"),
    ],
)
def test_the_environment_wins(monkeypatch: pytest.MonkeyPatch, name: str, value: str, why: str) -> None:
    monkeypatch.setenv(name, value)
    libc = FakeLibc()
    assert allocator.tune_for_scans(lambda: libc) == {"skipped": why}
    assert libc.calls == []


def test_other_tunables_do_not_opt_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.pthread.rseq=0")
    assert "applied" in allocator.tune_for_scans(lambda: FakeLibc())


def test_not_glibc_or_not_linux_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    assert allocator.tune_for_scans(lambda: None) == {"skipped": "not glibc"}
    monkeypatch.setattr(allocator, "_applied", None)
    monkeypatch.setattr(sys, "platform", "darwin")
    libc = FakeLibc()
    assert allocator.tune_for_scans(lambda: libc) == {"skipped": "not Linux (darwin)"}
    assert libc.calls == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_the_real_libc_accepts_the_settings_in_a_fresh_process() -> None:
    """On this (glibc) machine mallopt takes all three; run in a child so the test process keeps its own."""
    if allocator._libc() is None:
        pytest.skip("not glibc")
    code = "import json, bcedge.allocator as a; print(json.dumps(a.tune_for_scans()))"
    env = {k: v for k, v in os.environ.items() if k not in ("BCEDGE_MALLOC", "MALLOC_ARENA_MAX", "GLIBC_TUNABLES")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == (
        '{"applied": {"arena_max": 1, "mmap_threshold": 33554432, "trim_threshold": 1073741824}}'
    )


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["infer", "x.dcm"], True),
        (["--debug", "demo"], True),
        (["serve", "--config", "c.toml"], False),
        (["benchmark"], False),
    ],
)
def test_the_cli_tunes_only_its_own_command_line_of_the_scan_commands(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], expected: bool
) -> None:
    called: list[bool] = []
    monkeypatch.setattr(allocator, "tune_for_scans", lambda: called.append(True) or {})

    def stop(args: list[str]) -> int:
        return 0  # the command itself is not run: only what main() does before it

    monkeypatch.setattr(cli, "_run", stop)
    # --debug would turn on bcedge's debug log for the rest of the test process.
    monkeypatch.setattr(cli, "debug_logging", lambda: None)
    monkeypatch.setattr(sys, "argv", ["bcedge", *argv])
    assert cli.main() == 0
    assert called == ([True] if expected else [])
    # A program passing argv (tests, embedders) keeps its allocator.
    called.clear()
    assert cli.main(argv) == 0
    assert called == []


def test_tuning_happens_before_the_command_imports_anything_heavy() -> None:
    """In a fresh `python -m bcedge infer` process, NumPy is not loaded yet when the settings are made."""
    code = (
        "import sys, bcedge.allocator as a\n"
        "seen = {}\n"
        "real = a.tune_for_scans\n"
        "def spy(*args: object) -> object:\n"
        "    seen['numpy'] = 'numpy' in sys.modules\n"
        "    return real(*args)\n"
        "a.tune_for_scans = spy\n"
        "import bcedge.cli as cli\n"
        "sys.argv = ['bcedge', 'infer', '--help']\n"
        "rc = cli.main()\n"
        "print(seen)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "{'numpy': False}"


def test_the_ab_script_summarises_medians_over_its_children() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import ab_allocator

    def row(rate: float, cpu: float, faults: float = 0.0) -> dict[str, float]:
        return {"scans_per_s": rate, "cpu_ms_per_scan": cpu, "minor_faults_per_scan": faults}

    children = [
        {"rows": {"pipelined": [row(18.0, 100.0, 10.0), row(20.0, 96.0, 30.0)], "model_only": [row(22.0, 70.0)]}},
        {"rows": {"pipelined": [row(19.0, 98.0, 20.0)], "model_only": [row(20.0, 74.0), row(24.0, 72.0)]}},
    ]
    assert ab_allocator.summary(children) == {
        "pipelined_minor_faults_per_scan": 20.0,
        "pipelined_scans_per_s": 19.0,
        "model_only_scans_per_s": 22.0,
        "ratio": round(19.0 / 22.0, 3),
        "pipelined_cpu_ms_per_scan": 98.0,
        "model_only_cpu_ms_per_scan": 72.0,
    }


def test_a_python_without_ctypes_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ctypes module: the loader says 'not glibc' instead of raising (bcedge infer must not exit 1)."""
    import builtins

    real_import = builtins.__import__

    def no_ctypes(name: str, *args: object, **kwargs: object) -> object:
        if name == "ctypes":
            raise ImportError("No module named '_ctypes'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ctypes)
    assert allocator._libc() is None
    assert allocator.tune_for_scans() == {"skipped": "not glibc"}
