"""``bcedge benchmark``: outputs that pass their schema, "not available here" rows, option errors, dataset splits."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest
from bench_fixtures import make_tiny_bundle

from bcedge.bench import UNAVAILABLE, VALIDATED
from bcedge.bench.report import load_report
from bcedge.cli import main

pytest.importorskip("ai_edge_litert", reason="the benchmark CLI tests run the tiny model on LiteRT")

FAST = ["--runs", "2", "--warmup", "1", "--threads", "1", "--phantoms", "1"]


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("cli bench") / "tiny bundle")


def _outputs(out: Path) -> list[str]:
    return ["--json", str(out / "r.json"), "--markdown", str(out / "r.md"), "--plot", str(out / "r.png")]


def _check_outputs(out: Path, n_rows: int) -> dict:
    doc = load_report(out / "r.json")  # validates the schema
    assert len(doc["rows"]) == n_rows
    lines = (out / "r.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| model | format | precision | backend |"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    assert end - start == n_rows + 2  # header, rule, one line per row
    image = cv2.imread(str(out / "r.png"))
    assert image is not None and min(image.shape[:2]) > 200
    return doc


def test_benchmark_writes_json_markdown_and_plot(
    tiny_bundle: Path, spaced_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Default settings (each row in its own process) on a two-format bundle."""
    pytest.importorskip("matplotlib")
    rc = main(["benchmark", "--model", str(tiny_bundle), *FAST, *_outputs(spaced_dir)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    artifacts = json.loads((tiny_bundle / "manifest.json").read_text())["artifacts"]
    doc = _check_outputs(spaced_dir, len(artifacts))
    tflite = next(r for r in doc["rows"] if r["format"] == "tflite")
    assert tflite["status"] == VALIDATED and tflite["peak_rss_scope"] == "process per row"
    assert tflite["latency_ms"]["runs"] == 2 and doc["settings"]["isolate"] is True
    assert doc["data"]["kind"] == "files" and len(doc["data"]["files"]) == 2
    assert "bcedge benchmark" in captured.out and "validated" in captured.out
    assert "wrote" in captured.err
    # What --backend auto runs here (bcedge.choice), beside the table; this bundle has no acceptance data.
    (choice,) = doc["auto_choice"]
    assert choice["bundle"] == str(tiny_bundle) and choice["chosen"] in {a["file"] for a in artifacts}
    assert choice["acceptance"] == "not-available" and f"--backend auto for {tiny_bundle}: " in captured.out


def test_demo_bundle_default(spaced_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``bcedge benchmark --runs 2`` with no --model measures the bundled demo model."""
    pytest.importorskip("matplotlib")
    from bcedge.pipeline import default_bundle_path

    if not (default_bundle_path() / "manifest.json").is_file():
        pytest.skip(f"no bundled demo model at {default_bundle_path()}")
    rc = main(["benchmark", "--runs", "2", "--warmup", "1", "--threads", "1", "--phantoms", "0", *_outputs(spaced_dir)])
    assert rc == 0, capsys.readouterr().err
    demo = json.loads((default_bundle_path() / "manifest.json").read_text())
    doc = _check_outputs(spaced_dir, len(demo["artifacts"]))
    assert all(r["status"] != "error" for r in doc["rows"]), [r["reason"] for r in doc["rows"]]


def test_missing_backend_is_a_row(
    tiny_bundle: Path, spaced_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bcedge.backends import BackendSpec

    real = BackendSpec.available

    def available(self: BackendSpec) -> tuple[bool, str]:
        return (False, "pip install 'bcedge[onnx]'") if self.name == "onnx" else real(self)

    monkeypatch.setattr(BackendSpec, "available", available)
    out = spaced_dir / "r.json"
    rc = main(["benchmark", "--model", str(tiny_bundle), *FAST, "--no-isolate", "--json", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    rows = {r["format"]: r for r in load_report(out)["rows"]}
    assert rows["onnx"]["status"] == UNAVAILABLE and "bcedge[onnx]" in rows["onnx"]["reason"]
    assert rows["onnx"]["latency_ms"] is None
    assert rows["tflite"]["status"] == VALIDATED
    assert "not available here" in captured.out


def test_plot_without_matplotlib_fails_before_measuring(
    tiny_bundle: Path, spaced_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import bcedge.bench
    import bcedge.bench.report

    def never(*_a: object, **_k: object) -> None:
        raise AssertionError("measured although the plot could not be written")

    monkeypatch.setattr(bcedge.bench.report, "plot_available", lambda: False)
    monkeypatch.setattr(bcedge.bench, "run_benchmark", never)
    rc = main(["benchmark", "--model", str(tiny_bundle), *FAST, *_outputs(spaced_dir)])
    err = capsys.readouterr().err
    assert rc == 2 and "bcedge[plot]" in err and len(err.strip().splitlines()) == 1
    assert not (spaced_dir / "r.json").exists()


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["--threads", "0"], 2, "--threads 0"),
        (["--threads", "two"], 2, "--threads 'two'"),
        (["--formats", "tflite/int4"], 2, "format 'tflite/int4'"),
        (["--split", "s.json"], 2, "need --data"),
        (["--data", "folder"], 2, "--data needs --split"),
    ],
)
def test_option_errors(
    tiny_bundle: Path, args: list[str], code: int, needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["benchmark", "--model", str(tiny_bundle), "--runs", "1", "--phantoms", "0", "--no-isolate", *args])
    err = capsys.readouterr().err
    assert rc == code and needle in err, err


def test_missing_bundles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["benchmark", "--model", str(tmp_path / "nowhere"), "--runs", "1"]) == 3
    assert "does not exist" in capsys.readouterr().err
    import bcedge.pipeline

    monkeypatch.setattr(bcedge.pipeline, "default_bundle_path", lambda: tmp_path / "no demo")
    assert main(["benchmark", "--runs", "1"]) == 2
    assert "--model" in capsys.readouterr().err


def test_dataset_split_from_bcedge_data(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--data/--split score a registered dataset's split; the root defaults to BCEDGE_DATA."""
    from bcedge.datasets.registry import open_dataset
    from bcedge.datasets.splits import make_split, save_split
    from bcedge.phantom import generate

    root = tmp_path / "phantom folder"
    generate(root, count=4, seed=5, scale=0.12)
    split = make_split(open_dataset("folder", root).samples(), dataset="folder", fractions={"train": 0.5, "test": 0.5})
    save_split(split, tmp_path / "split.json")
    monkeypatch.setenv("BCEDGE_DATA", str(root))
    out = tmp_path / "out dir" / "r.json"
    args = ["benchmark", "--model", str(tiny_bundle), "--formats", "tflite", "--data", "folder"]
    rc = main([*args, "--split", str(tmp_path / "split.json"), *FAST, "--no-isolate", "--json", str(out)])
    assert rc == 0, capsys.readouterr().err
    doc = load_report(out)
    (row,) = doc["rows"]
    assert doc["data"]["kind"] == "dataset" and doc["data"]["root"] == str(root)
    assert row["n_images"] == len(split.splits["test"])


def test_real_data_split(
    tiny_bundle: Path, bcedge_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The committed real-data split reads through the benchmark (three test images, tiny model)."""
    split = Path(__file__).resolve().parents[1] / "benchmarks" / "splits" / "combined.json"
    out = tmp_path / "r.json"
    args = ["benchmark", "--model", str(tiny_bundle), "--formats", "tflite", "--data", "combined"]
    args += ["--root", str(bcedge_data), "--split", str(split), "--limit", "3", *FAST, "--no-isolate"]
    assert main([*args, "--json", str(out)]) == 0, capsys.readouterr().err
    (row,) = load_report(out)["rows"]
    assert row["n_images"] == 3 and row["e2e_ms"]["decode"] > 0
