"""`bcedge export` end to end: a 1-epoch phantom run -> a loadable bundle with every CPU format gated."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("ai_edge_litert")

from bcedge.bundle import load_bundle
from bcedge.cli import main
from bcedge.errors import BundleError

CPU_ARTIFACTS = {
    ("keras", "fp32"),
    ("tflite", "fp32"),
    ("tflite", "fp16"),
    ("tflite", "dynamic"),
    ("tflite", "int8"),
    ("onnx", "fp32"),
    ("onnx", "int8"),
}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Phantoms, a split and a plain UNet trained for one epoch at 64 px (as tests/test_training_cli.py does)."""
    base = tmp_path_factory.mktemp("export") / "with space"
    root = base / "phantoms"
    assert main(["phantom", str(root), "--count", "12", "--seed", "3", "--scale", "0.1"]) == 0
    split = base / "split.json"
    assert main(["data", "split", "phantom", "--root", str(root), "--out", str(split)]) == 0
    cache = base / "cache"
    run_dir = base / "run"
    args = ["train", "--model", "unet", "--data", "phantom", "--root", str(root), "--split", str(split)]
    args += ["--out", str(run_dir), "--size", "64", "--batch", "4", "--base-filters", "4", "--epochs", "1"]
    assert main([*args, "--cache", str(cache)]) == 0
    return {"run": run_dir, "cache": cache, "base": base}


@pytest.fixture(scope="module")
def bundle(run: dict[str, Path]) -> tuple[Path, str]:
    """`bcedge export` with default formats (every CPU format here); (bundle dir, stdout)."""
    out = run["base"] / "bundle dir"
    capture = pytest.MonkeyPatch()
    import io
    import sys

    buf = io.StringIO()
    capture.setattr(sys, "stdout", buf)
    try:
        rc = main(["export", str(run["run"]), "--out", str(out), "--cache", str(run["cache"]), "--n-calib", "5"])
    finally:
        capture.undo()
    assert rc == 0, buf.getvalue()[-2000:]
    return out, buf.getvalue()


def test_export_writes_a_loadable_bundle_with_every_cpu_format(bundle: tuple[Path, str], run: dict) -> None:
    out, stdout = bundle
    loaded = load_bundle(out)
    manifest = loaded.manifest
    assert {(a.format, a.precision) for a in manifest.artifacts} == CPU_ARTIFACTS
    config = json.loads((run["run"] / "config.json").read_text())
    assert manifest.preprocess == config["preprocess"] and manifest.preprocess_hash == config["preprocess_hash"]
    assert manifest.input["shape"] == [1, 64, 64, 1] and manifest.threshold == 0.5
    prov = manifest.provenance
    assert prov["run_dir"] == str(run["run"].resolve()) and prov["epochs_done"] == 1 and prov["best_epoch"] == 1
    assert prov["data"] == ["phantom"] and prov["calibration"]["source"] == "train split"
    assert prov["calibration"]["n"] == 5
    val_n = prov["evaluation"]["n_images"]
    assert val_n >= 1 and "fitted_on_these_images" not in prov["evaluation"]  # trained on train only
    for record in manifest.artifacts:
        loaded.artifact_path(record)  # size and SHA-256 as recorded
        m = record.metrics
        assert m["n_images"] == val_n and 0.0 <= m["dice"] <= 1.0 and 0.0 <= m["dice_all_images"] <= 1.0
        assert m["delta_dice"] == pytest.approx(m["dice"] - m["reference_dice"])
        assert m["reference_dice"] == prov["evaluation"]["reference_dice"]
        assert record.gate in ("passed", "failed") and record.tolerance is not None
        assert record.details["ms_per_image"] > 0
    by_kind = {(a.format, a.precision): a for a in manifest.artifacts}
    # float32 artifacts reproduce the reference exactly on this tiny val set
    for kind in (("keras", "fp32"), ("tflite", "fp32"), ("onnx", "fp32")):
        assert by_kind[kind].gate == "passed" and abs(by_kind[kind].metrics["delta_dice"]) <= 0.001
    int8 = by_kind[("tflite", "int8")]
    assert int8.details["float_ops"] == [] and int8.details["int8_io"] == "float"
    assert int8.details["calibration"]["source"] == "train split"
    assert int8.details["runtime"]["input_dtype"] == "float32"
    assert "tensorrt-fp16" in prov["not_built"]
    # the report
    for name in ("keras", "tflite-fp32", "tflite-fp16", "tflite-dynamic", "tflite-int8", "onnx", "onnx-int8"):
        assert name in stdout
    onnx_int8 = by_kind[("onnx", "int8")]  # QDQ, 7-bit per-channel weights, calibrated on the same train images
    assert onnx_int8.details["quant_format"] == "QDQ" and onnx_int8.details["reduce_range"] is True
    assert onnx_int8.details["calibration"]["source"] == "train split" and onnx_int8.details["n_calibration"] == 5
    assert min(onnx_int8.details["weight_int_range"]) >= -64 and max(onnx_int8.details["weight_int_range"]) <= 64
    assert "tflite-int8: ops left in float: none" in stdout
    assert "tensorrt-int8: not available here" in stdout
    assert "wrote" in stdout and "manifest.json" in stdout
    # The on-device acceptance data (bcedge.acceptance): val images with the reference's probabilities,
    # and each artifact's agreement with them here (the baseline other machines are held to).
    from bcedge.acceptance import MIN_DICE, load

    acc = manifest.acceptance
    assert acc["file"] == "acceptance.npz" and acc["source"] == "val split" and acc["n_images"] == min(4, val_n)
    assert load(loaded).images.shape == (acc["n_images"], 64, 64, 1)  # size and SHA-256 as recorded
    assert set(acc["baseline"]) == {a.file for a in manifest.artifacts} and acc["baseline_machine"]
    for kind in (("keras", "fp32"), ("tflite", "fp32"), ("onnx", "fp32")):
        assert acc["baseline"][by_kind[kind].file]["dice"] >= MIN_DICE
    # nothing half-written is left behind
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_a_flipped_byte_is_refused(bundle: tuple[Path, str], tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy of bundle"
    shutil.copytree(bundle[0], copy)
    loaded = load_bundle(copy)
    record = loaded.artifact(format="tflite", precision="int8")
    path = copy / record.file
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="SHA-256"):
        loaded.artifact_path(record)


def test_existing_bundle_needs_overwrite(bundle: tuple[Path, str], run: dict, capsys: pytest.CaptureFixture) -> None:
    capsys.readouterr()
    rc = main(["export", str(run["run"]), "--out", str(bundle[0]), "--cache", str(run["cache"]), "--formats", "onnx"])
    err = capsys.readouterr().err
    assert rc == 2 and "already holds a bundle" in err and "--overwrite" in err


def test_a_train_val_refit_marks_its_gate_images_as_seen(run: dict, tmp_path: Path) -> None:
    """A run made with ``--fit-on train+val`` trained on the gate's validation images: the manifest says so."""
    import shutil

    refit = tmp_path / "refit run"
    shutil.copytree(run["run"], refit)
    config = json.loads((refit / "config.json").read_text())
    (refit / "config.json").write_text(json.dumps({**config, "fit_on": "train+val"}))
    out = tmp_path / "refit bundle"
    args = ["export", str(refit), "--out", str(out), "--cache", str(run["cache"]), "--formats", "tflite-fp32"]
    assert main(args) == 0
    prov = load_bundle(out).manifest.provenance
    assert prov["recipe"]["fit_on"] == "train+val" and prov["evaluation"]["fitted_on_these_images"] is True


def test_bad_options_fail_with_one_line(run: dict, capsys: pytest.CaptureFixture) -> None:
    out = run["base"] / "never"
    for extra, expected in (
        (["--formats", "tflite-int4"], "unknown export format"),
        (["--tolerance", "int8"], "PRECISION=VALUE"),
        (["--formats", "onnx", "--int8-io", "uint8"], "--int8-io"),
    ):
        capsys.readouterr()
        rc = main(["export", str(run["run"]), "--out", str(out), "--cache", str(run["cache"]), *extra])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and expected in err, err
    capsys.readouterr()
    assert main(["export", str(run["base"] / "no run"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not out.exists()


def test_gate_marks_a_damaged_artifact_failed_and_strict_refuses(
    run: dict, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """An INT8 artifact whose runtime output is corrupted (no lesion anywhere) fails its gate."""
    from bcedge.backends.tflite import TFLiteBackend

    manifest = json.loads((run["base"] / "bundle dir" / "manifest.json").read_text())
    reference = manifest["provenance"]["evaluation"]["reference_dice"]
    assert reference > 0.01, "the 1-epoch reference must find some lesion pixels for this test to mean anything"
    monkeypatch.setattr(TFLiteBackend, "_predict", lambda self, batch: np.zeros_like(batch))

    out = run["base"] / "damaged"
    common = ["export", str(run["run"]), "--cache", str(run["cache"]), "--formats", "tflite-int8", "--n-calib", "3"]
    assert main([*common, "--out", str(out), "--no-keras"]) == 0
    loaded = load_bundle(out)
    # --no-keras: gated against the Keras model, which stays out of the bundle
    assert [a.format for a in loaded.manifest.artifacts] == ["tflite"] and not (out / "model.keras").exists()
    assert loaded.manifest.provenance["reference"] == "Keras model (not in the bundle)"
    record = loaded.manifest.artifacts[0]
    assert record.gate == "failed" and record.metrics["dice"] == 0.0
    assert record.metrics["delta_dice"] == pytest.approx(-reference)
    assert "gate failed: tflite-int8" in capsys.readouterr().out

    strict_out = run["base"] / "strict"
    rc = main([*common, "--out", str(strict_out), "--strict"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 3
    assert err[-1].startswith("error: --strict: tflite-int8 Dice 0.0000") and "tolerance 0.01" in err[-1]
    assert not (strict_out / "manifest.json").exists()
    with pytest.raises(BundleError, match=r"no manifest\.json"):
        load_bundle(strict_out)


def test_export_refuses_a_non_tensorflow_keras_backend(
    run: dict, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import keras

    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    out = run["base"] / "jax"
    capsys.readouterr()
    assert main(["export", str(run["run"]), "--out", str(out), "--cache", str(run["cache"])]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "KERAS_BACKEND=tensorflow" in err
    assert not out.exists()
