"""The arm64 scripts' timing helpers: per-step CPU seconds (common.sh) and the cold-CI timer.

No emulation, no root: ``common.sh``'s step timing is run in a plain bash, and
``time_ci_smoke.py``'s pieces on host commands.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ARM64 = Path(__file__).resolve().parents[1] / "benchmarks" / "arm64"
_spec = importlib.util.spec_from_file_location("arm64_time_ci_smoke", ARM64 / "time_ci_smoke.py")
assert _spec and _spec.loader
time_ci_smoke = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(time_ci_smoke)

#: About 0.3 s of CPU in a child Python (a loop no optimiser removes).
BURN = [sys.executable, "-c", "s = 0\nfor i in range(4_000_000): s += i\nprint(s)"]


def _bash_steps(tmp_path: Path, body: str) -> dict[str, float]:
    """Source common.sh in bash, run ``body`` and return the timings.txt it wrote."""
    timings = tmp_path / "timings.txt"
    script = f'timings="{timings}"\nsource "{ARM64 / "common.sh"}"\n{body}\n'
    subprocess.run(["bash", "-c", script], check=True, capture_output=True, text=True)
    return time_ci_smoke._kv(timings)


def test_step_records_wall_and_the_cpu_of_its_children(tmp_path: Path) -> None:
    burn = " ".join(f"'{a}'" for a in BURN)
    got = _bash_steps(tmp_path, f"step_start idle\nsleep 0.3\nstep_end\nstep_start burn\n{burn} >/dev/null\nstep_end")
    assert set(got) == {"idle", "idle_cpu", "burn", "burn_cpu"}
    assert got["idle"] >= 0.3 and got["idle_cpu"] < 0.1  # sleeping costs no CPU
    assert got["burn_cpu"] >= 0.1  # the child's CPU is counted once it has been waited for
    assert got["burn"] >= got["burn_cpu"] * 0.5


def test_step_cpu_is_per_step_not_cumulative(tmp_path: Path) -> None:
    burn = " ".join(f"'{a}'" for a in BURN)
    got = _bash_steps(tmp_path, f"step_start a\n{burn} >/dev/null\nstep_end\nstep_start b\nsleep 0.1\nstep_end")
    assert got["a_cpu"] >= 0.1
    assert got["b_cpu"] < 0.1


def test_run_timed_reports_rc_cpu_and_the_others_share() -> None:
    row = time_ci_smoke.run_timed("burn", BURN, dict(os.environ))
    assert row["rc"] == 0 and row["command"] == "burn"
    assert row["cpu_s"] >= 0.1
    assert row["wall_s"] > 0
    if row["others_cpu_share"] is not None:  # Linux: /proc/stat
        assert 0.0 <= row["others_cpu_share"] <= 1.0
    failing = time_ci_smoke.run_timed("false", [sys.executable, "-c", "raise SystemExit(3)"], dict(os.environ))
    assert failing["rc"] == 3


def test_a_warm_cache_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "debian12-unpacked").mkdir()
    out = tmp_path / "record.json"
    monkeypatch.setattr(sys, "argv", ["time_ci_smoke.py", "--cache", str(tmp_path), "--json", str(out)])
    assert time_ci_smoke.main() == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "not empty" in err[0]
    assert not out.exists()


# --------------------------------------------------------------------------- ci_smoke.sh (.ci/run's step)


def _ci_smoke(tmp_path: Path, cmd: str, cap: int = 60) -> subprocess.CompletedProcess[str]:
    """Run ci_smoke.sh with ``cmd`` in place of make_rootfs.sh + run_suite.sh --quick."""
    env = {
        **os.environ,
        "BCEDGE_ARM64_CACHE": str(tmp_path),
        "BCEDGE_ARM64_CI_CMD": cmd,
        "BCEDGE_ARM64_CI_CAP": str(cap),
    }
    return subprocess.run(["bash", str(ARM64 / "ci_smoke.sh")], env=env, capture_output=True, text=True, timeout=120)


def _write_quick(status: str, summary: str) -> str:
    """A shell snippet that writes a quick run's record, as run_suite.sh --quick does."""
    quick = '"$BCEDGE_ARM64_CACHE/debian12-unpacked/out/quick"'
    return (
        f"rm -rf {quick} && mkdir -p {quick} && printf '{status}' > {quick}/status.txt && "
        f"printf '{summary}\\n' > {quick}/tests.log"
    )


def test_ci_smoke_passes_only_with_this_runs_passing_record(tmp_path: Path) -> None:
    done = _ci_smoke(tmp_path, _write_quick("cpu=0\\ntests=0\\ndemo=0\\n", "44 passed in 47.1s"))
    assert done.returncode == 0
    assert "aarch64 smoke test PASSED" in done.stdout and "44 passed" in done.stdout
    # The commands exit 0 but this run wrote nothing: the earlier run's record proves nothing.
    stale = _ci_smoke(tmp_path, "true")
    assert stale.returncode == 1 and "no smoke-test record of this run" in stale.stdout


@pytest.mark.parametrize(
    ("status", "summary", "why"),
    [
        ("cpu=0\\ntests=0\\n", "44 passed", "step demo"),  # demo did not run
        ("cpu=0\\ntests=0\\ndemo=0\\n", "1 failed, 43 passed", "no passing pytest summary"),
        ("cpu=0\\ntests=0\\ndemo=0\\n", "no tests ran", "no passing pytest summary"),
    ],
)
def test_ci_smoke_fails_on_an_incomplete_record(tmp_path: Path, status: str, summary: str, why: str) -> None:
    done = _ci_smoke(tmp_path, _write_quick(status, summary))
    assert done.returncode == 1
    assert "aarch64 smoke test FAILED" in done.stdout and why in done.stdout


@pytest.mark.parametrize(
    ("rc", "verdict", "ci_rc"),
    [(3, "SKIPPED", 0), (4, "SKIPPED", 0), (5, "SKIPPED", 0), (1, "FAILED", 1), (6, "FAILED", 1), (7, "FAILED", 1)],
)
def test_ci_smoke_skips_only_set_up_failures_that_are_not_bcedges(
    tmp_path: Path, rc: int, verdict: str, ci_rc: int
) -> None:
    done = _ci_smoke(tmp_path, f"exit {rc}")
    assert done.returncode == ci_rc
    assert f"aarch64 smoke test {verdict}" in done.stdout and f"exit {rc}" in done.stdout


def test_ci_smoke_past_its_cap_fails_ci(tmp_path: Path) -> None:
    done = _ci_smoke(tmp_path, "sleep 30", cap=1)
    assert done.returncode == 1
    assert "aarch64 smoke test FAILED: not finished within its 1-s cap (exit 124" in done.stdout
