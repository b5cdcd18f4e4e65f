"""bcedge.bench and bcedge.bench.report: statistics, timing loop, FLOP counts, memory, rows, schema, outputs.

The model is the tiny two-format bundle of :mod:`bench_fixtures` (built without TensorFlow
in ~0.1 s), so the whole file runs in a few seconds.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bench_fixtures import SIZE, make_tiny_bundle, tiny_macs, write_tiny_onnx, write_tiny_tflite

from bcedge import bench
from bcedge.bench import (
    FAILED,
    GATE_FAILED,
    UNAVAILABLE,
    VALIDATED,
    BenchData,
    BenchOptions,
    RowJob,
    count_flops,
    distinct_inputs,
    latency_stats,
    measure_row,
    run_benchmark,
    select_artifacts,
    tflite_op_macs,
    time_calls,
)
from bcedge.bench.report import pareto_front, schema_errors, to_markdown, validate
from bcedge.errors import ConfigError, InputError

pytest.importorskip("ai_edge_litert", reason="the benchmark tests run the tiny model on LiteRT")


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("bench") / "tiny bundle")


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> BenchData:
    """The bundled sample scan plus one phantom (written to a folder with a space)."""
    return bench.sample_data(1, workdir=tmp_path_factory.mktemp("bench") / "sample data")


# --------------------------------------------------------------------------- statistics and timing


def test_latency_stats_against_hand_values() -> None:
    ns = [i * 1_000_000 for i in range(1, 101)]  # 1..100 ms
    stats = latency_stats(ns[::-1])  # order must not matter
    # Linear interpolation on 100 sorted values: p = 1 + 99 * q.
    assert stats["p50"] == pytest.approx(50.5)
    assert stats["p95"] == pytest.approx(95.05)
    assert stats["p99"] == pytest.approx(99.01)
    assert stats["mean"] == pytest.approx(50.5)
    assert (stats["min"], stats["max"]) == (1.0, 100.0)
    with pytest.raises(ValueError, match="no timings"):
        latency_stats([])


def test_distinct_inputs_are_distinct_buffers() -> None:
    rng = np.random.default_rng(0)
    one = rng.random((1, 8, 8, 1), dtype=np.float32)
    out = distinct_inputs([one], minimum=4)
    assert len(out) == 4
    assert np.array_equal(out[0], one)
    for i in range(4):
        for j in range(i + 1, 4):
            assert not np.shares_memory(out[i], out[j])
            assert not np.array_equal(out[i], out[j])  # random content: every flip differs
    many = [rng.random((1, 8, 8, 1), dtype=np.float32) for _ in range(6)]
    assert len(distinct_inputs(many, minimum=4)) == 6


def test_time_calls_rotates_and_excludes_warmup() -> None:
    seen: list[int] = []
    inputs = [np.full(1, k) for k in range(3)]
    ns = time_calls(lambda x: seen.append(int(x[0])), inputs, runs=5, warmup=2)
    assert len(ns) == 5 and all(isinstance(t, int) and t >= 0 for t in ns)
    # Warm-up used inputs 0, 1; timed calls continue the rotation: 2, 0, 1, 2, 0.
    assert seen == [0, 1, 2, 0, 1, 2, 0]


# --------------------------------------------------------------------------- FLOP counting


def test_tflite_op_macs_rules() -> None:
    # 3x3 conv, 8 -> 16 channels, 10x10 output: 10*10*16 outputs x 3*3*8 MACs each.
    assert tflite_op_macs("CONV_2D", [[1, 10, 10, 8], [16, 3, 3, 8], [16]], [[1, 10, 10, 16]]) == 100 * 16 * 72
    # Depthwise 3x3 on 16 channels: 9 MACs per output.
    assert tflite_op_macs("DEPTHWISE_CONV_2D", [[1, 10, 10, 16], [1, 3, 3, 16], [16]], [[1, 10, 10, 16]]) == 1600 * 9
    # Transposed conv 2x2 stride 2, 16 -> 8: every input pixel scatters 2*2*8 MACs per input channel.
    assert tflite_op_macs("TRANSPOSE_CONV", [[4], [8, 2, 2, 16], [1, 5, 5, 16]], [[1, 10, 10, 8]]) == 25 * 16 * 32
    assert tflite_op_macs("FULLY_CONNECTED", [[2, 64], [10, 64], [10]], [[2, 10]]) == 2 * 10 * 64
    assert tflite_op_macs("BATCH_MATMUL", [[1, 3, 4], [1, 4, 5]], [[1, 3, 5]]) == 15 * 4
    assert tflite_op_macs("ADD", [[1, 4], [1, 4]], [[1, 4]]) == 0


@pytest.mark.parametrize("size", [SIZE, 48])
def test_count_flops_matches_hand_count(size: int, tmp_path: Path) -> None:
    tflite = count_flops(write_tiny_tflite(tmp_path / "m.tflite", size), "tflite")
    assert tflite is not None and tflite.macs == tiny_macs(size)
    assert tflite.gflops == pytest.approx(2 * tiny_macs(size) / 1e9)
    assert tflite.by_op["DEPTHWISE_CONV_2D"] == size * size * 4 * 9
    pytest.importorskip("onnx")
    onnx = count_flops(write_tiny_onnx(tmp_path / "m.onnx", size), "onnx")
    assert onnx is not None and onnx.macs == tiny_macs(size)
    assert count_flops(tmp_path / "m.keras", "keras") is None


def test_count_flops_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a model" * 20)
    with pytest.raises(InputError, match="not a TFLite model"):
        count_flops(bad, "tflite")


def test_profile_tflite_ops_times_every_op(tiny_bundle: Path) -> None:
    ops = bench.profile_tflite_ops(tiny_bundle / "model_fp32.tflite", runs=3, warmup=1)
    assert [o.op for o in ops] == ["CONV_2D", "DEPTHWISE_CONV_2D", "CONV_2D", "LOGISTIC"]
    assert [o.macs for o in ops] == [SIZE * SIZE * 36, SIZE * SIZE * 36, SIZE * SIZE * 4, 0]
    assert all(o.ms > 0 and not o.note for o in ops)
    summary = bench.summarise_ops(ops, model_p50_ms=1.0)
    assert sum(t["share"] for t in summary["by_type"]) == pytest.approx(1.0)
    conv = next(t for t in summary["by_type"] if t["op"] == "CONV_2D")
    assert conv["count"] == 2 and conv["ms"] == pytest.approx(ops[0].ms + ops[2].ms)


# --------------------------------------------------------------------------- machine, GEMM, memory


def test_gemm_ceiling_in_a_process_with_limited_threads() -> None:
    local = bench.gemm_gflops(n=128, repeats=2)
    assert local["gflops"] > 0 and local["gflops"] >= local["gflops_median"]
    ceiling = bench.measure_gemm_ceiling(1, n=128, repeats=2)
    assert ceiling["threads"] == 1 and ceiling["gflops"] > 0, ceiling


def test_machine_and_libraries() -> None:
    info = bench.machine_info([1, 2, 1])
    assert info["threads_used"] == [1, 2]
    assert info["usable_cpus"] >= 1 and isinstance(info["cpu_model"], str) and info["cpu_model"]
    assert isinstance(info["gpu"], list)
    libs = bench.library_versions()
    assert libs["numpy"] == np.__version__ and "python" in libs
    more = bench.library_versions(extra=("pytest", "bcedge-no-such-distribution"))
    assert more["pytest"] == pytest.__version__ and "bcedge-no-such-distribution" not in more
    assert "pytest" not in libs


def test_source_state_of_a_checkout(tmp_path: Path) -> None:
    """Commit and uncommitted bcedge/ files of a git checkout; None and [] elsewhere."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "check out"
    (repo / "bcedge").mkdir(parents=True)
    (repo / "bcedge" / "a.py").write_text("x = 1\n")
    (repo / "notes.txt").write_text("not runtime code\n")
    who = {"NAME": "bcedge test", "EMAIL": "test@example.invalid"}
    env = {**os.environ, **{f"GIT_{role}_{k}": v for role in ("AUTHOR", "COMMITTER") for k, v in who.items()}}
    for cmd in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "one"]):
        subprocess.run(["git", *cmd], cwd=repo, env=env, check=True, capture_output=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    assert bench.source_state(repo) == {"git_commit": head, "uncommitted_bcedge_files": []}
    (repo / "bcedge" / "a.py").write_text("x = 2\n")
    (repo / "bcedge" / "new file.py").write_text("y = 1\n")
    (repo / "notes.txt").write_text("changed, but not under bcedge/\n")
    state = bench.source_state(repo)
    assert state["git_commit"] == head
    assert sorted(state["uncommitted_bcedge_files"]) == ["bcedge/a.py", "bcedge/new file.py"]
    subprocess.run(["git", "mv", "bcedge/a.py", "bcedge/b.py"], cwd=repo, check=True, capture_output=True)
    state = bench.source_state(repo)
    assert sorted(state["uncommitted_bcedge_files"]) == ["bcedge/b.py", "bcedge/new file.py"]
    plain = tmp_path / "not a checkout"
    plain.mkdir()
    assert bench.source_state(plain) == {"git_commit": None, "uncommitted_bcedge_files": []}


def test_peak_rss_sees_an_allocation() -> None:
    if not bench.reset_peak_rss():
        pytest.skip("this kernel cannot reset the peak RSS mark")
    before = bench._proc_peak_mb()
    block = np.ones(80_000_000 // 8)  # 80 MB, touched
    after = bench._proc_peak_mb()
    del block
    assert before is not None and after is not None and after - before > 60
    assert bench.peak_rss_mb() >= after - 1  # ru_maxrss never resets: at least the same peak


# --------------------------------------------------------------------------- options and data


def test_options_and_formats_checked(tiny_bundle: Path) -> None:
    for bad in ({"runs": 0}, {"warmup": -1}, {"threads": ()}, {"threads": (0,)}, {"runs": True}, {"e2e_min": 0}):
        with pytest.raises(ConfigError):
            BenchOptions(**bad)
    assert BenchOptions(threads=None).thread_counts() == (bench.usable_cpus(),)
    from bcedge.bundle import load_bundle

    b = load_bundle(tiny_bundle)
    assert [r.file for r in select_artifacts(b, None)] == [r.file for r in b.manifest.artifacts]
    assert [r.file for r in select_artifacts(b, ["tflite"])] == ["model_fp32.tflite"]
    assert [r.file for r in select_artifacts(b, ["onnx-fp32"])] == ["model.onnx"]
    assert len(select_artifacts(b, ["fp32"])) == len(b.manifest.artifacts)
    assert select_artifacts(b, ["tflite/int8"]) == []
    with pytest.raises(ConfigError, match="format 'tflit'"):
        select_artifacts(b, ["tflit"])
    # An alternate runtime is measured only when named: the FP32 .tflite on OpenVINO, after its own row.
    both = select_artifacts(b, ["tflite", "openvino"])
    assert [(r.file, r.backend) for r in both] == [("model_fp32.tflite", "tflite"), ("model_fp32.tflite", "openvino")]
    assert [(r.file, r.backend) for r in select_artifacts(b, ["OpenVINO"])] == [("model_fp32.tflite", "openvino")]
    assert all(r.backend != "openvino" for r in select_artifacts(b, ["fp32"]))


def test_bench_data(tmp_path: Path, sample: BenchData) -> None:
    with pytest.raises(InputError, match="not found"):
        BenchData.from_files([(tmp_path / "missing.dcm", None)])
    with pytest.raises(ConfigError):
        BenchData.from_files([])
    assert BenchData.from_dict(json.loads(json.dumps(sample.to_dict()))) == sample
    items = sample.items()
    assert items[0].id == "phantom_lcc" and len(items) == 2
    mammo = items[0].decode()
    mask = items[0].mask(mammo.pixels.shape)
    assert mask.shape == mammo.pixels.shape and mask.dtype == np.uint8 and mask.any()


def test_dataset_split_data(tmp_path: Path, tiny_bundle: Path) -> None:
    """A registered dataset (a folder of phantoms) restricted to a split file."""
    from bcedge.datasets.registry import open_dataset
    from bcedge.datasets.splits import make_split, save_split
    from bcedge.phantom import generate

    root = tmp_path / "folder data"
    generate(root, count=4, seed=3, scale=0.12)
    split = make_split(open_dataset("folder", root).samples(), dataset="folder", fractions={"train": 0.5, "test": 0.5})
    split_path = tmp_path / "split.json"
    save_split(split, split_path)
    data = BenchData.from_split("folder", root, split_path, "test")
    items = data.items()
    assert sorted(i.id for i in items) == sorted(split.splits["test"])
    assert len(BenchData.from_split("folder", root, split_path, "test", limit=1).items()) == 1
    with pytest.raises(ConfigError):
        BenchData.from_split("folder", root, split_path, limit=0)


# --------------------------------------------------------------------------- rows


def _job(bundle: Path, data: BenchData, file: str = "model_fp32.tflite", backend: str = "tflite", **kw: Any) -> RowJob:
    return RowJob(str(bundle), file, backend, kw.pop("threads", 1), data.to_dict(), kw.pop("runs", 3), 1, **kw)


def test_measure_row_scores_through_the_runtime_path(tiny_bundle: Path, sample: BenchData) -> None:
    from bcedge.metrics import dice, iou
    from bcedge.pipeline import Segmenter

    row = measure_row(_job(tiny_bundle, sample, runs=4))
    assert row["status"] == VALIDATED and row["reason"] is None, row.get("reason")
    lat = row["latency_ms"]
    assert lat["runs"] == 4 and lat["distinct_inputs"] >= bench.MIN_DISTINCT_INPUTS
    assert 0 < lat["min"] <= lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert set(bench.E2E_STAGES) <= set(row["e2e_ms"]) and row["e2e_ms"]["n"] >= bench.MIN_E2E_TIMINGS
    assert row["e2e_ms"]["total"] > row["e2e_ms"]["infer"] > 0
    assert row["throughput_ips"] == pytest.approx(1000 / lat["mean"])
    assert row["peak_rss_mb"] > 0 and row["size_mb"] == pytest.approx((tiny_bundle / row["file"]).stat().st_size / 1e6)
    # The Dice is what the Segmenter's masks score against the ground truth, image by image.
    items = sample.items()
    with Segmenter(tiny_bundle, artifact="model_fp32.tflite") as seg:
        pairs = []
        for item in items:
            mammo = item.decode()
            pairs.append((seg.segment(mammo).mask, item.mask(mammo.pixels.shape)))
    lesion = [(p, t) for p, t in pairs if t.any()]
    assert row["n_images"] == len(items) and row["n_lesion_images"] == len(lesion)
    assert row["dice"] == pytest.approx(np.mean([dice(p, t) for p, t in lesion]))
    assert row["iou"] == pytest.approx(np.mean([iou(p, t) for p, t in lesion]))
    assert 0.0 < row["dice"] < 1.0  # the tiny detector finds part of the masses, not nothing and not all


def test_measure_row_reports_a_broken_artifact(tiny_bundle: Path, sample: BenchData, tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "broken bundle"
    shutil.copytree(tiny_bundle, broken)
    (broken / "model_fp32.tflite").write_bytes(b"\0" * (broken / "model_fp32.tflite").stat().st_size)
    row = measure_row(_job(broken, sample))
    assert row["status"] == FAILED and "SHA-256" in row["reason"]
    assert row["latency_ms"] is None


def test_isolated_row_and_worker_failure(tiny_bundle: Path, sample: BenchData, tmp_path: Path) -> None:
    row = bench.run_isolated(_job(tiny_bundle, sample, runs=2), timeout_s=120)
    assert row["status"] == VALIDATED and row["peak_rss_scope"] == "process per row"
    assert row["latency_ms"]["runs"] == 2
    bad = bench.run_isolated(_job(tmp_path / "no bundle", sample), timeout_s=120)
    assert bad["status"] == FAILED and "does not exist" in bad["reason"]


def test_run_benchmark_rows_statuses_and_schema(
    tiny_bundle: Path, sample: BenchData, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Every artifact gives a row; a missing backend is a row saying so; the document passes its schema."""
    import shutil

    from bcedge.backends import BackendSpec

    pytest.importorskip("onnx")
    failed_gate = make_tiny_bundle(tmp_path / "gate failed", onnx_gate="failed")
    real_available = BackendSpec.available

    def available(self: BackendSpec) -> tuple[bool, str]:
        if self.name == "onnx":
            return False, "onnxruntime hidden by the test"
        return real_available(self)

    monkeypatch.setattr(BackendSpec, "available", available)
    doc = run_benchmark([tiny_bundle, failed_gate], sample, BenchOptions(runs=2, warmup=1, threads=(1,), isolate=False))
    validate(doc)
    by_key = {(Path(r["bundle"]).name, r["format"]): r for r in doc["rows"]}
    assert len(doc["rows"]) == 4
    assert by_key[("tiny bundle", "onnx")]["status"] == UNAVAILABLE
    assert by_key[("tiny bundle", "onnx")]["reason"] == "onnxruntime hidden by the test"
    assert by_key[("gate failed", "onnx")]["status"] == UNAVAILABLE  # availability outranks the gate
    assert by_key[("tiny bundle", "tflite")]["status"] == VALIDATED
    row = by_key[("tiny bundle", "tflite")]
    assert row["gflops"] == pytest.approx(2 * tiny_macs() / 1e9)
    assert row["achieved_gflops"] == pytest.approx(row["gflops"] / (row["latency_ms"]["p50"] / 1000))
    assert row["ceiling_share"] == pytest.approx(row["achieved_gflops"] / doc["gemm_ceiling"]["1"]["gflops"])
    assert doc["machine"]["threads_used"] == [1] and doc["settings"]["runs"] == 2
    # Gate statuses from the manifest, when the backend is there.
    monkeypatch.setattr(BackendSpec, "available", real_available)
    if not real_available(bench_backends()["onnx"])[0]:
        pytest.skip("onnxruntime not installed")
    doc2 = run_benchmark(
        [failed_gate], sample, BenchOptions(runs=2, warmup=0, threads=(1,), isolate=False), formats=["onnx"]
    )
    (onnx_row,) = doc2["rows"]
    assert onnx_row["status"] == GATE_FAILED and "tolerance" in onnx_row["reason"]
    assert onnx_row["latency_ms"] is not None  # measured all the same
    shutil.rmtree(failed_gate)


def test_bounded_benchmark_options(tiny_bundle: Path, sample: BenchData, monkeypatch: pytest.MonkeyPatch) -> None:
    """--e2e-min / --no-auto-choice / --no-gemm-ceiling (the emulated aarch64 suite's bounds): fewer
    model calls per row, the same Dice, and the settings say what was left out."""
    import bcedge.choice
    from bcedge.backends import BackendSpec

    real_available = BackendSpec.available

    def tflite_only(self: BackendSpec) -> tuple[bool, str]:
        return (False, "only tflite in this test") if self.name != "tflite" else real_available(self)

    def no_choice(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("the auto choice ran although it was turned off")

    monkeypatch.setattr(BackendSpec, "available", tflite_only)
    full = run_benchmark([tiny_bundle], sample, BenchOptions(runs=2, warmup=0, threads=(1,), isolate=False))
    monkeypatch.setattr(bcedge.choice, "resolve", no_choice)
    opts = BenchOptions(runs=2, warmup=0, threads=(1,), isolate=False, e2e_min=1, auto_choice=False, gemm_ceiling=False)
    bounded = run_benchmark([tiny_bundle], sample, opts)
    validate(bounded)
    (row,) = [r for r in bounded["rows"] if r["format"] == "tflite"]
    (ref,) = [r for r in full["rows"] if r["format"] == "tflite"]
    # One pass over the images (the sample data has more than one) instead of MIN_E2E_TIMINGS timings.
    assert row["e2e_ms"]["n"] == len(sample.items()) < ref["e2e_ms"]["n"]
    assert ref["e2e_ms"]["n"] >= bench.MIN_E2E_TIMINGS
    assert row["dice"] == pytest.approx(ref["dice"]) and row["latency_ms"]["runs"] == 2
    assert bounded["auto_choice"] == [] and bounded["gemm_ceiling"] == {} and "ceiling_share" not in row
    assert full["auto_choice"] and full["gemm_ceiling"]
    settings = bounded["settings"]
    assert (settings["e2e_min"], settings["auto_choice"], settings["gemm_ceiling"]) == (1, False, False)


def test_benchmark_cli_e2e_default_is_the_library_s() -> None:
    """The CLI spells --e2e-min's default as a literal (the CLI module does not import numpy):
    it must be bcedge.bench's MIN_E2E_TIMINGS."""
    import inspect

    from bcedge.cli.benchmark import benchmark_command

    assert inspect.signature(benchmark_command).parameters["e2e_min"].default == bench.MIN_E2E_TIMINGS


def bench_backends() -> dict[str, Any]:
    from bcedge.backends import BACKENDS

    return BACKENDS


# --------------------------------------------------------------------------- report


def _doc() -> dict[str, Any]:
    row = {
        "model": "m", "format": "tflite", "backend": "tflite", "precision": "int8", "file": "m.tflite",
        "threads": 1, "status": VALIDATED, "reason": None, "size_mb": 1.0, "dice": 0.5, "iou": 0.4,
        "latency_ms": {"p50": 1.0, "p95": 2.0, "p99": 3.0, "mean": 1.5, "runs": 5},
        "e2e_ms": {"decode": 1.0, "preprocess": 1.0, "infer": 1.0, "postprocess": 1.0, "total": 4.0},
        "throughput_ips": 666.7, "peak_rss_mb": 100.0, "gflops": 1.0,
    }  # fmt: skip
    missing = {**row, "status": UNAVAILABLE, "reason": "no onnxruntime", "format": "onnx", "backend": "onnx"}
    for key in ("dice", "iou", "latency_ms", "e2e_ms", "throughput_ips", "peak_rss_mb", "gflops"):
        missing[key] = None
    return {
        "kind": "bcedge.benchmark", "version": 1, "created": "2026-01-01T00:00:00Z",
        "machine": {"cpu_model": "x", "logical_cpus": 2, "usable_cpus": 2, "threads_used": [1], "cpu_flags": [],
                    "gpu": []},
        "libraries": {"python": "3.11", "numpy": "2"},
        "settings": {"runs": 5, "warmup": 1, "threads": [1], "isolate": True, "batch": 1},
        "data": {"kind": "files", "label": "x"}, "gemm_ceiling": {}, "rows": [row, missing],
    }  # fmt: skip


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda d: d.pop("machine"), "report has no 'machine'"),
        (lambda d: d.update(kind="other"), "report.kind"),
        (lambda d: d["rows"][0].pop("dice"), "rows[0] has no 'dice'"),
        (lambda d: d["rows"][0].update(dice=None), "rows[0].dice is null but the row was measured"),
        (lambda d: d["rows"][0].update(dice=1.5), "rows[0].dice is 1.5"),
        (lambda d: d["rows"][0].update(size_mb="big"), "rows[0].size_mb is str"),
        (lambda d: d["rows"][0]["latency_ms"].update(p95=0.5), "percentiles are not ordered"),
        (lambda d: d["rows"][0]["latency_ms"].pop("p99"), "latency_ms has no 'p99'"),
        (lambda d: d["rows"][0]["e2e_ms"].pop("decode"), "e2e_ms has no 'decode'"),
        (lambda d: d["rows"][0].update(status="great"), "rows[0].status"),
        (lambda d: d["rows"][1].update(reason=None), "no reason"),
        (lambda d: d["rows"][0].update(threads=True), "rows[0].threads is bool"),
        (lambda d: d["settings"].update(isolate="yes"), "settings.isolate is str"),
    ],
)
def test_schema_validator_rejects(mutate: Any, needle: str) -> None:
    doc = _doc()
    assert schema_errors(doc) == []
    broken = copy.deepcopy(doc)
    mutate(broken)
    errors = schema_errors(broken)
    assert any(needle in e for e in errors), errors
    with pytest.raises(InputError, match="not a bcedge benchmark report"):
        validate(broken)


def test_pareto_front() -> None:
    points = [(10.0, 0.8), (5.0, 0.7), (20.0, 0.75), (5.0, 0.6), (40.0, 0.9), (1.0, 0.2)]
    # (20, 0.75) is beaten by (10, 0.8); (5, 0.6) by (5, 0.7).
    assert pareto_front(points) == [5, 1, 0, 4]
    assert pareto_front([]) == []


def test_the_terminal_table_names_a_second_runtime() -> None:
    """A row whose backend is not its format's says which runs it (rich must not eat "[openvino]" as markup)."""
    from io import StringIO

    from rich.console import Console

    from bcedge.bench.report import print_table

    doc = _doc()
    doc["rows"][0].update(backend="openvino", precision="fp16")
    out = StringIO()
    print_table(doc, Console(file=out, width=250))
    assert "tflite/fp16 [openvino]" in out.getvalue()


def test_markdown_and_plot(tmp_path: Path) -> None:
    from bcedge.bench.report import plot_pareto, write_json, write_markdown

    doc = _doc()
    text = to_markdown(doc)
    table = [line for line in text.splitlines() if line.startswith("| m |")]
    assert len(table) == 2 and "not available here" in table[1] and "| 0.5000 |" in table[0]
    assert "no onnxruntime" in text
    out = tmp_path / "with space"
    assert json.loads(write_json(doc, out / "r.json").read_text()) == doc
    assert write_markdown(doc, out / "r.md").read_text() == text
    pytest.importorskip("matplotlib")
    import cv2

    png = plot_pareto(doc, out / "r.png")
    image = cv2.imread(str(png))
    assert image is not None and image.shape[0] > 200 and image.shape[1] > 200


def test_int8_speedups_pair_rows_by_model_format_and_threads() -> None:
    from bcedge.bench.report import int8_speedups

    doc = _doc()
    fp32 = copy.deepcopy(doc["rows"][0])
    fp32.update(precision="fp32", dice=0.52, latency_ms={**fp32["latency_ms"], "p50": 3.0, "p95": 3.0, "p99": 3.0})
    slow_int8 = copy.deepcopy(doc["rows"][0])
    slow_int8.update(threads=2, latency_ms={**slow_int8["latency_ms"], "p50": 2.0, "p95": 2.0, "p99": 3.0})
    fp32_2t = copy.deepcopy(fp32)
    fp32_2t.update(threads=2, latency_ms={**fp32["latency_ms"], "p50": 2.5})
    doc["rows"] += [fp32, slow_int8, fp32_2t]
    validate(doc)
    (one, two) = sorted(int8_speedups(doc), key=lambda s: s["threads"])
    # 1 thread: 3.0 ms -> 1.0 ms, Dice 0.52 -> 0.50: 3x, a loss of 0.02 (more than 0.01).
    assert one["speedup"] == pytest.approx(3.0) and one["dice_delta"] == pytest.approx(-0.02)
    assert not one["meets_goal"]
    # 2 threads: 2.5 ms -> 2.0 ms: 1.25x, below 1.5x.
    assert two["speedup"] == pytest.approx(1.25) and not two["meets_goal"]
    doc["rows"][0]["dice"] = 0.515
    assert next(s for s in int8_speedups(doc) if s["threads"] == 1)["meets_goal"]
    assert "## INT8 against FP32" in to_markdown(doc)


def test_bench_models_script_smoke(tiny_bundle: Path, bcedge_data: Path, tmp_path: Path) -> None:
    """benchmarks/bench_models.py on the committed split (two images, one run): JSON, Markdown, plot."""
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_models.py"
    spec = importlib.util.spec_from_file_location("bench_models", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "out dir" / "real"
    args = [str(tiny_bundle), "--root", str(bcedge_data), "--limit", "2", "--runs", "1", "--warmup", "0"]
    args += ["--threads", "1", "--formats", "tflite", "--out", str(out)]
    if importlib.util.find_spec("matplotlib") is None:
        args.append("--no-plot")
    assert module.main(args) == 0
    doc = json.loads(out.with_suffix(".json").read_text())
    validate(doc)
    assert doc["data"]["split"] == "benchmarks/splits/combined.json" and doc["source"]["git_commit"]
    assert [r["n_images"] for r in doc["rows"]] == [2]
    assert "| tiny | tflite | fp32 |" in out.with_suffix(".md").read_text()


def test_unreadable_scan_is_skipped_and_reported(tiny_bundle: Path, sample: BenchData, tmp_path: Path) -> None:
    bad = tmp_path / "broken scan.dcm"
    bad.write_bytes(b"DICM" * 64)
    data = BenchData.from_files([(bad, None), *sample.files])
    row = measure_row(_job(tiny_bundle, data, runs=2))
    assert row["status"] == VALIDATED and row["n_images"] == len(sample.files)
    assert [s["id"] for s in row["skipped_images"]] == ["broken scan"]
    only_bad = measure_row(_job(tiny_bundle, BenchData.from_files([(bad, None)])))
    assert only_bad["status"] == FAILED and "no evaluation image could be read" in only_bad["reason"]
