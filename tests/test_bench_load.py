"""Benchmark honesty (issue #14 item 9): CPU time and others' load per row, the busy flag, the own peak RSS.

Field tests only: the values are fed or bounded, never compared with a speed.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bench_fixtures import make_tiny_bundle

from bcedge import bench
from bcedge.bench import VALIDATED, BenchData, RowJob, measure_row
from bcedge.bench.load import BUSY_SHARE, LoadMeter, machine_cpu_s
from bcedge.bench.memory import own_peak_rss_mb


def test_machine_cpu_s_parses_proc_stat(tmp_path: Path) -> None:
    import os

    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text("cpu  100 20 30 5000 70 1 2 3 40 5\ncpu0 1 2 3 4 5 6 7 8 9 10\n")
    hz = os.sysconf("SC_CLK_TCK")
    assert machine_cpu_s(stat) == pytest.approx((100 + 20 + 30 + 1 + 2 + 3) / hz)  # idle, iowait, guests out
    stat.write_text("intr 1 2 3\n")
    assert machine_cpu_s(stat) is None
    assert machine_cpu_s(tmp_path / "absent") is None


def test_load_meter_fields_from_counters() -> None:
    meter = LoadMeter()
    # 2 s of wall on 2 CPUs = 4 CPU-s; this process used 1.5, the machine 1.6: others 0.1 / 4 = 2.5 %.
    quiet = meter.fields(2.0, 1.5, 100.0, 101.6, 2, 0.3)
    assert quiet == {
        "wall_ms": 2000.0,
        "cpu_ms": 1500.0,
        "cpu_utilisation": 0.75,
        "others_cpu_share": 0.025,
        "busy": False,
        "load_avg_1min_before": 0.3,
    }
    busy = meter.fields(2.0, 1.5, 100.0, 104.0, 2, 1.9)  # others 2.5 CPU-s of 4
    assert busy["others_cpu_share"] == pytest.approx(0.625) and busy["busy"] is True
    # Counter rounding never makes the others negative or more than the whole machine.
    assert meter.fields(1.0, 1.0, 50.0, 50.99, 2, None)["others_cpu_share"] == 0.0
    assert meter.fields(1.0, 0.0, 50.0, 60.0, 2, None)["others_cpu_share"] == 1.0
    unknown = meter.fields(1.0, 0.5, None, None, 2, None)
    assert unknown["others_cpu_share"] is None and unknown["busy"] is None
    edge = LoadMeter(busy_share=0.5).fields(1.0, 0.0, 0.0, 1.0, 2, None)  # exactly the threshold: not busy
    assert edge["busy"] is False


def test_load_meter_counts_this_process_cpu() -> None:
    with LoadMeter() as meter:
        a = np.random.default_rng(0).random((300, 300))
        for _ in range(20):
            a = a @ a
            a /= np.abs(a).max()
    r = meter.result
    assert r["cpu_ms"] > 0 and r["wall_ms"] > 0
    assert r["others_cpu_share"] is None or 0.0 <= r["others_cpu_share"] <= 1.0
    assert r["busy"] in (True, False, None)


def test_a_workers_peak_rss_is_its_own_not_its_parents() -> None:
    """The 691.65 MB of every isolated row: ru_maxrss of a spawned worker starts at the parent's peak."""
    block = np.ones(300_000_000 // 8)  # this process: >= 300 MB resident
    child = textwrap.dedent(
        """
        import resource
        from bcedge.bench.memory import own_peak_rss_mb
        peak, source = own_peak_rss_mb()
        print(peak, source, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6)
        """
    )
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120, check=True)
    del block
    peak, source, maxrss = out.stdout.split()
    if source != "VmHWM":
        pytest.skip("no /proc/self/status here: only ru_maxrss, which carries the parent's peak")
    assert float(peak) < 200, out.stdout  # the child's own: Python + bcedge.bench, far below 300 MB
    assert float(maxrss) >= 290, out.stdout  # what the old figure read: the parent's peak


def test_own_peak_rss_here() -> None:
    peak, source = own_peak_rss_mb()
    assert peak > 0 and source in ("VmHWM", "ru_maxrss")


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("ai_edge_litert", reason="the row runs the tiny model on LiteRT")
    return make_tiny_bundle(tmp_path_factory.mktemp("bench load") / "tiny bundle")


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> BenchData:
    return bench.sample_data(1, workdir=tmp_path_factory.mktemp("bench load") / "sample data")


def test_a_measured_row_records_cpu_and_load(tiny_bundle: Path, sample: BenchData) -> None:
    job = RowJob(str(tiny_bundle), "model_fp32.tflite", "tflite", 1, sample.to_dict(), 3, 1)
    row = measure_row(job)
    assert row["status"] == VALIDATED, row.get("reason")
    assert row["cpu_ms_per_call"] > 0
    load = row["load"]
    assert set(load) == {"model_calls", "end_to_end"}
    for section in load.values():
        assert section["cpu_ms"] > 0 and section["wall_ms"] > 0
    assert row["cpu_ms_per_call"] == pytest.approx(load["model_calls"]["cpu_ms"] / 4, abs=1e-3)  # 3 runs + 1 warm-up
    if row["others_cpu_share"] is not None:  # Linux: the machine's counters were read
        assert 0.0 <= row["others_cpu_share"] <= 1.0
        shares = [s["others_cpu_share"] for s in load.values()]
        assert row["others_cpu_share"] == max(shares)
        assert row["busy"] == any(s["busy"] for s in load.values())
        assert row["busy"] == (row["others_cpu_share"] > BUSY_SHARE)
    assert row["peak_rss_mb"] > 0 and row["peak_rss_source"] in ("VmHWM", "ru_maxrss")


def _report(busy: bool | None, share: float | None) -> dict[str, Any]:
    row = {
        "model": "m", "format": "tflite", "backend": "tflite", "precision": "int8", "file": "m.tflite",
        "threads": 1, "status": VALIDATED, "reason": None, "size_mb": 1.0, "dice": 0.5, "iou": 0.4,
        "latency_ms": {"p50": 1.0, "p95": 2.0, "p99": 3.0, "mean": 1.5, "runs": 5},
        "e2e_ms": {"decode": 1.0, "preprocess": 1.0, "infer": 1.0, "postprocess": 1.0, "total": 4.0},
        "throughput_ips": 666.7, "peak_rss_mb": 100.0, "gflops": 1.0,
        "cpu_ms_per_call": 1.9, "others_cpu_share": share, "busy": busy,
    }  # fmt: skip
    return {
        "kind": "bcedge.benchmark", "version": 1, "created": "2026-01-01T00:00:00Z",
        "machine": {"cpu_model": "x", "logical_cpus": 2, "usable_cpus": 2, "threads_used": [1],
                    "cpu_flags": ["avx2", "fma"], "gpu": []},
        "libraries": {"python": "3.11", "numpy": "2"},
        "settings": {"runs": 5, "warmup": 1, "threads": [1], "isolate": True, "batch": 1},
        "data": {"kind": "files", "label": "x"}, "gemm_ceiling": {}, "rows": [row, copy.deepcopy(row)],
    }  # fmt: skip


def test_report_marks_busy_rows_and_names_the_cpu_flags() -> None:
    from bcedge.bench.report import schema_errors, to_markdown

    busy = _report(True, 0.62)
    busy["rows"][1].update(busy=False, others_cpu_share=0.01)
    assert schema_errors(busy) == []
    text = to_markdown(busy)
    table = [line for line in text.splitlines() if line.startswith("| m |")]
    assert "validated (busy)" in table[0] and "(busy)" not in table[1]
    assert "1 of 2 timed rows measured on a busy machine" in text and "62 %" in text
    assert "avx2 fma" in text  # the figures carry the CPU flags they were measured with
    quiet = to_markdown(_report(False, 0.02))
    assert "(busy)" not in quiet and "quiet (other processes used at most 2 % of the CPUs)" in quiet
    assert "not recorded" in to_markdown(_report(None, None))
