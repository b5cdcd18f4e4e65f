"""``bcedge evaluate --model``: the bcedge infer path on the original grid; the same numbers as ``bcedge benchmark``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from bench_fixtures import make_tiny_bundle

from bcedge.bench.report import load_report
from bcedge.cli import main

pytest.importorskip("ai_edge_litert", reason="the evaluation tests run the tiny model on LiteRT")

REAL_BUNDLE = Path(__file__).resolve().parents[1] / "models" / "unet-mobilenetv2-combined256"
COMBINED_SPLIT = Path(__file__).resolve().parents[1] / "benchmarks" / "splits" / "combined.json"
BENCH_FAST = ["--runs", "2", "--warmup", "1", "--threads", "1", "--no-isolate"]


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("cli eval") / "tiny bundle")


@pytest.fixture(scope="module")
def phantom_split(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A folder dataset of 8 phantoms (two of them without their mask: normal images) and a split file."""
    from bcedge.datasets.registry import open_dataset
    from bcedge.datasets.splits import make_split, save_split
    from bcedge.phantom import generate

    base = tmp_path_factory.mktemp("cli eval")
    root = base / "phantom folder"
    images = generate(root, count=8, seed=11, scale=0.12)
    for image in images[:2]:
        (root / "masks" / f"{image.stem}.png").unlink()
    samples = open_dataset("folder", root).samples()
    split = make_split(samples, dataset="folder", fractions={"train": 0.25, "test": 0.75})
    save_split(split, base / "split.json")
    return root, base / "split.json"


def _evaluate(args: list[str], out: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    rc = main(["evaluate", *args, "--json", str(out)])
    assert rc == 0, capsys.readouterr().err
    return json.loads(out.read_text())


def _benchmark(args: list[str], out: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    rc = main(["benchmark", *args, *BENCH_FAST, "--json", str(out)])
    assert rc == 0, capsys.readouterr().err
    (row,) = load_report(out)["rows"]
    return row


def test_evaluate_and_benchmark_report_the_same_numbers(
    tiny_bundle: Path, phantom_split: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, split = phantom_split
    data = ["--data", "folder", "--root", str(root), "--split", str(split)]
    report = _evaluate(
        ["--model", str(tiny_bundle), "--artifact", "model_fp32.tflite", *data, "--subset", "test"],
        tmp_path / "e.json",
        capsys,
    )
    row = _benchmark(
        ["--model", str(tiny_bundle), "--formats", "tflite", *data, "--split-name", "test"], tmp_path / "b.json", capsys
    )
    assert report["grid"] == "original" and report["model"]["artifact"] == row["file"] == "model_fp32.tflite"
    assert report["groups"] == row["evaluation"]["groups"]
    assert report["images"] == row["evaluation"]["images"]
    kinds = {g["kind"] for g in report["groups"]}
    assert kinds == {"pixel", "normal"}
    pixel = next(g for g in report["groups"] if g["kind"] == "pixel")
    # Not a degenerate run: the tiny detector finds some masses, partly, and fires elsewhere too.
    assert 0.0 < pixel["dice"]["value"] < 1.0 and pixel["detection_rate"]["den"] >= pixel["n_images"]
    assert pixel["dice"]["low"] <= pixel["dice"]["value"] <= pixel["dice"]["high"]
    # The row's headline Dice is the lesion-image mean of the same per-image scores.
    lesion = [im["dice"] for im in report["images"] if im["kind"] != "normal"]
    assert row["dice"] == pytest.approx(np.mean(lesion))
    assert row["groups"]["pixel"]["detection_rate"] == pixel["detection_rate"]["value"]


def test_evaluate_prints_tables_and_json(
    tiny_bundle: Path, phantom_split: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    root, split = phantom_split
    args = ["evaluate", "--model", str(tiny_bundle), "--data", "folder", "--root", str(root), "--split", str(split)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "ORIGINAL pixel grid" in out and "found rate" in out and "2000 resamples, seed 0" in out
    assert main([*args, "--json", "-"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["data"]["split_name"] == "test" and doc["skipped"] == []
    assert doc["postprocess"] == {"threshold": 0.5, "min_area_mm2": 4.0}  # the bundle's, as bcedge infer
    # A stricter threshold and minimum area reach the Segmenter: fewer predicted pixels.
    assert main([*args, "--threshold", "0.9", "--min-area", "50", "--json", "-"]) == 0
    strict = json.loads(capsys.readouterr().out)
    assert strict["postprocess"] == {"threshold": 0.9, "min_area_mm2": 50.0}
    predicted = [sum(im["tp"] + im["fp"] for im in d["images"]) for d in (doc, strict)]
    assert 0 < predicted[1] < predicted[0]
    # Without a split: every image of the dataset.
    assert main([*args[:-2], "--json", "-"]) == 0
    assert len(json.loads(capsys.readouterr().out)["images"]) == 8


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run_dir", "--model", "bundle"], "not both"),
        ([], "not both"),
        (["--model", "bundle"], "--data"),
        (["run_dir", "--min-area", "5"], "--min-area applies to --model"),
        (["run_dir", "--threshold", "1.5"], "threshold"),
    ],
)
def test_evaluate_option_errors(args: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and needle in err


def test_missing_bundle_and_data(tmp_path: Path, tiny_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--model", str(tmp_path / "nowhere"), "--data", "folder", "--root", str(tmp_path)]) == 3
    assert "error:" in capsys.readouterr().err
    rc = main(["evaluate", "--model", str(tiny_bundle), "--data", "folder", "--root", str(tmp_path / "none")])
    assert rc == 2 and "not found" in capsys.readouterr().err


def test_real_bundle_on_real_images(bcedge_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The shipped real-data bundle on the first 8 test images of the committed split: both commands agree."""
    if not (REAL_BUNDLE / "manifest.json").is_file():
        pytest.skip(f"{REAL_BUNDLE} is not here")
    data = ["--data", "combined", "--root", str(bcedge_data), "--split", str(COMBINED_SPLIT), "--limit", "8"]
    model = ["--model", str(REAL_BUNDLE)]
    report = _evaluate([*model, "--artifact", "model_int8.tflite", *data], tmp_path / "e.json", capsys)
    row = _benchmark([*model, "--formats", "tflite/int8", *data], tmp_path / "b.json", capsys)
    assert report["groups"] == row["evaluation"]["groups"]
    sources = {(g["source"], g["kind"]) for g in report["groups"]}
    assert ("cdd-cesm", "pixel") in sources and len(report["images"]) == 8


def test_cross_dataset_script(
    tiny_bundle: Path, phantom_split: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """benchmarks/eval_cross_dataset.py: one bundle on two sets (a split subset, every image); JSON and Markdown."""
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "eval_cross_dataset.py"
    spec = importlib.util.spec_from_file_location("eval_cross_dataset", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    import dataclasses
    import shutil

    from bcedge.bundle import load_bundle, write_manifest
    from bcedge.datasets.splits import load_split

    root, split = phantom_split
    # The tiny bundle, "trained" on the train subset of the phantom split (as its manifest says).
    trained = tmp_path / "trained bundle"
    shutil.copytree(tiny_bundle, trained)
    manifest = load_bundle(trained).manifest
    write_manifest(
        trained,
        dataclasses.replace(
            manifest, provenance={"data": ["folder"], "split": str(split), "recipe": {"fit_on": "train+val"}}
        ),
    )
    out = tmp_path / "out dir" / "cross"
    args = ["--model", str(trained), "--artifact", "model_fp32.tflite", "--out", str(out)]
    args += ["--set", "phantom test", "folder", str(root), str(split), "test"]
    args += ["--set", "all phantoms", "folder", str(root), "missing_mask=empty"]
    assert module.main(args) == 0
    assert "### all phantoms" in capsys.readouterr().out  # the Markdown is printed too
    doc = json.loads(out.with_suffix(".json").read_text())
    (run,) = doc["runs"]
    assert list(run["sets"]) == ["phantom test", "all phantoms"] and run["model"]["artifact"] == "model_fp32.tflite"
    assert run["trained_on"] == {"data": ["folder"], "split": str(split), "fit_on": "train+val"}
    assert len(run["sets"]["all phantoms"]["images"]) == 8
    # Leakage check: every training image is in "all phantoms", none in the test subset.
    n_train = len(load_split(split).splits["train"])
    assert run["sets"]["all phantoms"]["training_overlap"] == {"split": str(split), "images": n_train, "n": 8}
    assert run["sets"]["phantom test"]["training_overlap"]["images"] == 0
    assert run["sets"]["all phantoms"]["data"]["options"] == {"missing_mask": "empty"}
    # The same images score the same whichever command runs them.
    rc = main(["evaluate", "--model", str(trained), "--data", "folder", "--root", str(root), "--json", "-"])
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["groups"] == run["sets"]["all phantoms"]["groups"]
    md = out.with_suffix(".md").read_text()
    assert "### phantom test" in md and "### all phantoms" in md and "| found rate |" in md
    assert f"train/val in `{split}`: {n_train} of 8" in md
    with pytest.raises(SystemExit):
        module.parse_set(["label", "folder"])


def test_a_bad_mask_is_skipped_by_both_commands(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A mask that does not fit its image is reported and left out by evaluate and benchmark alike."""
    import cv2

    from bcedge.datasets.registry import open_dataset
    from bcedge.datasets.splits import make_split, save_split
    from bcedge.phantom import generate

    root = tmp_path / "phantoms"
    generate(root, count=4, seed=4, scale=0.12)
    split = make_split(
        open_dataset("folder", root).samples(), dataset="folder", fractions={"train": 0.25, "test": 0.75}
    )
    save_split(split, tmp_path / "split.json")
    victim = split.splits["test"][0]
    cv2.imwrite(str(root / "masks" / f"{victim}.png"), np.full((7, 9), 255, np.uint8))
    data = ["--data", "folder", "--root", str(root), "--split", str(tmp_path / "split.json")]
    model = ["--model", str(tiny_bundle)]
    report = _evaluate([*model, "--artifact", "model_fp32.tflite", *data], tmp_path / "e.json", capsys)
    assert [s["id"] for s in report["skipped"]] == [victim] and "9x7" in report["skipped"][0]["error"]
    assert len(report["images"]) == len(split.splits["test"]) - 1
    row = _benchmark([*model, "--formats", "tflite", *data], tmp_path / "b.json", capsys)
    assert [s["id"] for s in row["skipped_images"]] == [victim]
    assert row["evaluation"]["groups"] == report["groups"]


def test_predicted_components_are_the_findings_of_bcedge_infer(
    tiny_bundle: Path, phantom_split: tuple[Path, Path]
) -> None:
    """The components the evaluation counts against the findings bcedge infer reports, scan by scan."""
    from bcedge.bench import BenchData
    from bcedge.evaluation import score_result
    from bcedge.pipeline import Segmenter

    root, _ = phantom_split
    counted = same = 0
    with Segmenter(tiny_bundle, artifact="model_fp32.tflite") as seg:
        for item in BenchData.from_split("folder", root, None).items():
            mammo = item.decode()
            result = seg.segment(mammo)
            score = score_result(result, item.mask(mammo.pixels.shape[:2]), id=item.id)
            # Findings are model-grid components carried to the original grid, where two may touch (one mask
            # component) or one may fall apart (several): the counts usually agree, the pixels always do.
            assert score.findings == len(result.findings), item.id
            assert score.tp + score.fp == sum(f.area_px for f in result.findings), item.id
            counted += score.components
            same += score.components == len(result.findings)
    assert counted > 8  # the tiny detector fires on every phantom, so the check is not vacuous
    assert same >= 5  # of 8: the exception, even for a 32-pixel model upsampled ~10x here


def test_evaluate_a_bundle_without_ml_frameworks(tiny_bundle: Path, phantom_split: tuple[Path, Path]) -> None:
    """``bcedge evaluate --model`` is runtime-side: it runs with TensorFlow, Keras, Torch and JAX blocked."""
    import subprocess
    import sys
    import textwrap

    root, split = phantom_split
    script = textwrap.dedent(
        f"""
        import importlib.abc, sys

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {{"tensorflow", "keras", "torch", "jax", "tf2onnx"}}:
                    raise ImportError("blocked in this test: " + name)
                return None

        sys.meta_path.insert(0, Block())
        from bcedge.cli import main
        sys.exit(main(["evaluate", "--model", {str(tiny_bundle)!r}, "--data", "folder", "--root", {str(root)!r},
                       "--split", {str(split)!r}, "--json", "-"]))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["grid"] == "original"
