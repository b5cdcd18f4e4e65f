"""``bcedge infer`` and ``bcedge demo`` end to end: phantom DICOMs in, files and one JSON document out.

Runs the real UNet+MobileNetV2 INT8 TFLite bundle from ``models/`` (LiteRT), in process through
``bcedge.cli.main`` (one subprocess test checks the cold path: no TensorFlow, stdout = one JSON).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
from bundle_support import write_test_manifest

from bcedge.bundle import ArtifactRecord
from bcedge.cli import main
from bcedge.phantom import make_phantom
from bcedge.preprocess import PreprocessConfig

pytest.importorskip("ai_edge_litert")

ROOT = Path(__file__).resolve().parents[1]
REAL_BUNDLE = ROOT / "models" / "unet-mobilenetv2-combined256"
STAGES_TOTAL = {"decode", "preprocess", "infer", "postprocess", "write", "total"}

if not (REAL_BUNDLE / "manifest.json").is_file():
    pytest.skip(f"{REAL_BUNDLE} is not there", allow_module_level=True)


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same full-field phantom as MONOCHROME1 and MONOCHROME2, a half-scale right MLO, and bad files."""
    folder = tmp_path_factory.mktemp("scans with space")
    out: dict[str, Path] = {}
    for photometric in ("MONOCHROME1", "MONOCHROME2"):
        ph = make_phantom(
            21,
            laterality="L",
            view="CC",
            detector="70um",
            bits_stored=12,
            photometric=photometric,
            masses=[("round", 14.0)],
        )
        out[photometric] = ph.write(folder / f"lcc {photometric.lower()}.dcm")
    out["rmlo"] = make_phantom(4, laterality="R", view="MLO", scale=0.5).write(folder / "rmlo.dcm")
    (folder / "empty.dcm").write_bytes(b"")
    out["empty"] = folder / "empty.dcm"
    (folder / "notes.dcm").write_text("these are notes, not a mammogram\n" * 10)
    out["text"] = folder / "notes.dcm"
    return out


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def infer_in_subprocess(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m bcedge infer ARGS`` in a fresh process (what a user's terminal would show)."""
    return subprocess.run([sys.executable, "-m", "bcedge", "infer", *args], capture_output=True, text=True, timeout=300)


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_json_end_to_end_monochrome1_equals_monochrome2(
    capsys: pytest.CaptureFixture[str], scans: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out dir"
    rc, stdout, _ = run(
        capsys,
        "infer",
        scans["MONOCHROME1"],
        scans["MONOCHROME2"],
        "--model",
        REAL_BUNDLE,
        "--out",
        out,
        "--outputs",
        "mask,json",
        "--threads",
        "1",
        "--json",
    )
    assert rc == 0
    doc = json.loads(stdout)  # the whole of stdout is one JSON document
    assert doc["model"]["artifact"] == "model_int8.tflite" and doc["model"]["threads"] == 1
    assert doc["failures"] == []
    assert [s["input"] for s in doc["scans"]] == [str(scans["MONOCHROME1"]), str(scans["MONOCHROME2"])]
    for scan in doc["scans"]:
        assert set(scan["timing_ms"]) == STAGES_TOTAL
        assert scan["timing_ms"]["total"] == pytest.approx(
            sum(v for k, v in scan["timing_ms"].items() if k != "total"), abs=0.01
        )
        assert set(scan["outputs"]) == {"mask", "json"}
        for path in scan["outputs"].values():
            assert Path(path).is_file()
        for finding in scan["findings"]:
            assert finding["area_mm2"] == pytest.approx(finding["area_px"] * 0.07 * 0.07, rel=1e-3)
            assert 0.0 < finding["mean_probability"] <= finding["max_probability"] <= 1.0
        assert json.loads(Path(scan["outputs"]["json"]).read_text())["input"] == scan["input"]
    m1, m2 = (cv2.imread(s["outputs"]["mask"], cv2.IMREAD_GRAYSCALE) for s in doc["scans"])
    assert m1.shape == (3328, 2560)
    np.testing.assert_array_equal(m1, m2)
    assert doc["scans"][0]["findings"] == doc["scans"][1]["findings"]
    assert sorted(p.name for p in out.iterdir()) == [
        "lcc monochrome1.json",
        "lcc monochrome1_mask.png",
        "lcc monochrome2.json",
        "lcc monochrome2_mask.png",
    ]


def test_default_outputs_and_plain_text(
    capsys: pytest.CaptureFixture[str], scans: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "default outputs"
    rc, stdout, _ = run(capsys, "infer", scans["rmlo"], "--model", REAL_BUNDLE, "--out", out)
    assert rc == 0
    names = sorted(p.name for p in out.iterdir())
    expected = ["rmlo.json", "rmlo_mask.png", "rmlo_overlay.png"]
    try:
        import highdicom  # noqa: F401

        expected.append("rmlo_seg.dcm")
    except ImportError:
        pass
    assert names == sorted(expected)
    assert stdout.startswith(f"{scans['rmlo']}: ")
    assert f"mask: {out / 'rmlo_mask.png'}" in stdout
    if "rmlo_seg.dcm" in names:
        import pydicom

        seg = pydicom.dcmread(out / "rmlo_seg.dcm")
        assert seg.Modality == "SEG"


def test_several_scans_one_bad(capsys: pytest.CaptureFixture[str], scans: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "mixed"
    rc, stdout, err = run(
        capsys,
        "infer",
        scans["rmlo"],
        scans["empty"],
        scans["MONOCHROME2"],
        "--model",
        REAL_BUNDLE,
        "--out",
        out,
        "--outputs",
        "json,mask",
        "--json",
    )
    assert rc == 2
    lines = error_lines(err)
    assert len(lines) == 1 and str(scans["empty"]) in lines[0] and "empty" in lines[0]
    doc = json.loads(stdout)
    assert [s["input"] for s in doc["scans"]] == [str(scans["rmlo"]), str(scans["MONOCHROME2"])]
    assert doc["failures"] == [
        {"input": str(scans["empty"]), "error": doc["failures"][0]["error"], "error_type": "InputError"}
    ]
    assert sorted(p.name for p in out.iterdir()) == [
        "lcc monochrome2.json",
        "lcc monochrome2_mask.png",
        "rmlo.json",
        "rmlo_mask.png",
    ]


@pytest.mark.parametrize(("key", "needle"), [("empty", "empty file"), ("text", "not a DICOM file")])
def test_bad_scan_alone(
    capsys: pytest.CaptureFixture[str], scans: dict[str, Path], tmp_path: Path, key: str, needle: str
) -> None:
    out = tmp_path / "bad"
    rc, stdout, err = run(capsys, "infer", scans[key], "--model", REAL_BUNDLE, "--out", out, "--json")
    assert rc == 2
    lines = error_lines(err)
    assert len(lines) == 1 and needle in lines[0]
    assert json.loads(stdout)["scans"] == []
    assert not out.exists()  # nothing written, not even the folder


def test_missing_scan(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc, _, err = run(capsys, "infer", tmp_path / "nope.dcm", "--model", REAL_BUNDLE, "--out", tmp_path / "o")
    assert rc == 2 and len(error_lines(err)) == 1 and "nope.dcm" in err


def tiny_bundle(folder: Path) -> Path:
    """A bundle whose TFLite artifact is a few arbitrary bytes (enough to be refused before loading)."""
    folder.mkdir(parents=True)
    (folder / "model.tflite").write_bytes(b"not really a model " * 8)
    record = ArtifactRecord.from_file(folder, "model.tflite", format="tflite", precision="fp32", backend="tflite")
    record.gate = "passed"
    write_test_manifest(
        folder, [record], PreprocessConfig(size=64), model={"name": "tiny", "architecture": "test", "params": 0}
    )
    return folder


@pytest.mark.parametrize("problem", ["tampered", "missing", "unknown backend", "not a model", "absent backend"])
def test_model_problems_exit_3(
    capsys: pytest.CaptureFixture[str], scans: dict[str, Path], tmp_path: Path, problem: str
) -> None:
    out = tmp_path / "out"
    bundle = tiny_bundle(tmp_path / "tiny bundle")
    args: list[str | Path] = ["infer", scans["rmlo"], "--out", out, "--model", bundle]
    if problem == "tampered":
        (bundle / "model.tflite").write_bytes(b"not really a model " * 7 + b"NOT really a model ")
        needle = "tampered"
    elif problem == "missing":
        args[-1] = tmp_path / "no bundle here"
        needle = "does not exist"
    elif problem == "unknown backend":
        args += ["--backend", "warp-drive"]
        needle = "unknown backend 'warp-drive'"
    elif problem == "not a model":
        needle = "not a TFLite model"
    else:
        args += ["--backend", "onnx"]
        needle = "no onnx artifact"
    rc, stdout, err = run(capsys, *args, "--json")
    assert rc == 3, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], err
    doc = json.loads(stdout)  # --json: one JSON document even when nothing could run
    assert doc["exit_code"] == 3 and needle in doc["error"] and doc["scans"] == []
    assert not out.exists()


@pytest.mark.parametrize(
    ("option", "needle"), [(["--threshold", "1.5"], "threshold"), (["--outputs", "mask,pdf"], "unknown output kind")]
)
def test_bad_options_exit_2(
    capsys: pytest.CaptureFixture[str], scans: dict[str, Path], tmp_path: Path, option: list[str], needle: str
) -> None:
    out = tmp_path / "out"
    rc, _, err = run(capsys, "infer", scans["rmlo"], "--model", REAL_BUNDLE, "--out", out, *option)
    assert rc == 2 and needle in err and len(error_lines(err)) == 1
    assert not out.exists()


def test_same_stem_twice_does_not_overwrite(
    capsys: pytest.CaptureFixture[str], scans: dict[str, Path], tmp_path: Path
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    for folder in (a, b):
        (folder / "scan.dcm").write_bytes(scans["rmlo"].read_bytes())
    out = tmp_path / "out"
    rc, _, _ = run(
        capsys,
        "infer",
        a / "scan.dcm",
        b / "scan.dcm",
        "--model",
        REAL_BUNDLE,
        "--out",
        out,
        "--outputs",
        "json",
        "--json",
    )
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["scan.json", "scan_2.json"]
    assert json.loads((out / "scan_2.json").read_text())["input"] == str(b / "scan.dcm")


def test_failed_write_leaves_no_partial_scan(
    capsys: pytest.CaptureFixture[str], scans: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The overlay fails after the mask was encoded: the scan is reported and nothing of it is written."""
    import bcedge.outputs.overlay
    from bcedge.errors import InputError

    def broken(result: object, **_: object) -> None:
        raise InputError("overlay: disk full (simulated)")

    monkeypatch.setattr(bcedge.outputs.overlay, "encode_overlay_png", broken)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("the user's file")
    rc, _, err = run(
        capsys, "infer", scans["rmlo"], "--model", REAL_BUNDLE, "--out", out, "--outputs", "mask,overlay,json"
    )
    assert rc == 2
    assert "disk full" in error_lines(err)[0]
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


_COLD = textwrap.dedent(
    """
    import importlib.abc, json, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("tensorflow", "keras", "torch", "jax", "onnxruntime", "highdicom", "rich"):
                raise ImportError("blocked in this test: " + name)
            return None
    sys.meta_path.insert(0, Block())
    from bcedge.cli import main
    rc = main(sys.argv[1:])
    sys.exit(rc)
    """
)


def test_cold_path_imports_no_tensorflow_and_prints_only_json(scans: dict[str, Path], tmp_path: Path) -> None:
    """The infer path with --outputs json needs neither TensorFlow nor highdicom nor rich; stdout is the JSON."""
    args = [str(scans["rmlo"]), "--model", str(REAL_BUNDLE), "--out", str(tmp_path / "o"), "--outputs", "json"]
    proc = subprocess.run(
        [sys.executable, "-c", _COLD, "infer", *args, "--json"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    assert doc["scans"][0]["outputs"]["json"].endswith("rmlo.json")


def test_demo(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from bcedge.pipeline import demo_bundle_path

    if not (demo_bundle_path() / "manifest.json").is_file():
        pytest.skip("the bundled demo model (bcedge/demo_model) is not there yet")
    out = tmp_path / "demo out"
    rc, stdout, _ = run(capsys, "demo", "--out", out, "--outputs", "mask,json", "--json")
    assert rc == 0
    doc = json.loads(stdout)
    assert doc["scans"][0]["input"].endswith("phantom_lcc.dcm")
    assert 0.0 <= doc["dice_vs_truth"] <= 1.0
    rc, stdout, _ = run(capsys, "demo", "--out", out, "--outputs", "mask")
    assert rc == 0 and "not for clinical use" in stdout and "phantom_lcc_mask.png" in stdout


def test_demo_command_with_a_stand_in_bundle(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The demo's flow (sample scan, table, Dice against the shipped mask) with the real bundle standing in."""
    import bcedge.pipeline

    monkeypatch.setattr(bcedge.pipeline, "demo_bundle_path", lambda: REAL_BUNDLE)
    out = tmp_path / "demo out"
    rc, stdout, _ = run(capsys, "demo", "--out", out, "--outputs", "mask,overlay")
    assert rc == 0, stdout
    assert "not for clinical use" in stdout and "phantom_lcc.dcm" in stdout
    assert "Dice against the phantom's true lesion mask" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["phantom_lcc_mask.png", "phantom_lcc_overlay.png"]
    rc, stdout, _ = run(capsys, "demo", "--out", out, "--outputs", "json", "--json")
    doc = json.loads(stdout)
    assert rc == 0 and doc["model"]["bundle"] == str(REAL_BUNDLE) and 0.0 <= doc["dice_vs_truth"] <= 1.0


def test_raster_input_findings_in_pixels_and_no_seg(
    capsys: pytest.CaptureFixture[str], scans: dict[str, Path], tmp_path: Path
) -> None:
    pytest.importorskip("highdicom")
    from bcedge.dicom import read_mammogram
    from bcedge.imageio import write_png

    png = write_png(tmp_path / "scan.png", read_mammogram(scans["rmlo"]).pixels)
    out = tmp_path / "out"
    rc, stdout, err = run(capsys, "infer", png, "--model", REAL_BUNDLE, "--out", out, "--outputs", "json,seg", "--json")
    assert rc == 0
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and str(png) in warnings[0] and "SEG" in warnings[0]
    scan = json.loads(stdout)["scans"][0]
    assert set(scan["outputs"]) == {"json"}
    assert scan["image"]["pixel_spacing_mm"] is None
    assert all(f["area_mm2"] is None and f["bbox_mm"] is None for f in scan["findings"])
    assert sorted(p.name for p in out.iterdir()) == ["scan.json"]


def test_onnx_providers(capsys: pytest.CaptureFixture[str], scans: dict[str, Path], tmp_path: Path) -> None:
    # The fixture builds its ONNX graph with the onnx package; onnxruntime alone (a device's
    # [onnx] runtime, e.g. the aarch64 root filesystem) cannot make the bundle this test needs.
    pytest.importorskip("onnx", reason="building the test's ONNX model needs the onnx package")
    from bench_fixtures import make_tiny_bundle

    bundle = make_tiny_bundle(tmp_path / "tiny onnx", onnx_gate="passed")
    base: list[str | Path] = ["infer", scans["rmlo"], "--model", bundle, "--outputs", "json", "--json"]
    rc, stdout, err = run(
        capsys, *base, "--out", tmp_path / "a", "--backend", "onnx", "--providers", "CPUExecutionProvider"
    )
    assert rc == 0, err
    assert json.loads(stdout)["model"]["format"] == "onnx"
    # A provider this onnxruntime lacks is a backend problem (3); --providers without --backend onnx a bad option (2).
    rc, _, err = run(
        capsys, *base, "--out", tmp_path / "b", "--backend", "onnx", "--providers", "NoSuchExecutionProvider"
    )
    assert rc == 3 and "NoSuchExecutionProvider" in err and not (tmp_path / "b").exists()
    rc, _, err = run(capsys, *base, "--out", tmp_path / "c", "--providers", "CPUExecutionProvider")
    assert rc == 2 and "--providers applies to --backend onnx" in err


def test_infer_without_model_serves_the_real_data_model(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, bcedge_data: Path
) -> None:
    """``bcedge infer`` without --model runs bcedge/mass_model (not the phantom demo) on a real scan."""
    from bcedge.pipeline import default_bundle_path

    if not (default_bundle_path() / "manifest.json").is_file():
        pytest.skip("bcedge/mass_model is not in this checkout")
    scan = bcedge_data / "cdd-cesm-extra" / "images" / "P111_R_DM_MLO.jpg"  # a test-split view
    if not scan.is_file():
        pytest.skip(f"{scan} not found")
    rc, stdout, _ = run(capsys, "infer", scan, "--out", tmp_path, "--outputs", "mask,json", "--json")
    assert rc == 0
    doc = json.loads(stdout)
    model = doc["scans"][0]["model"]
    assert model["name"] == "unet-mobilenetv2" and Path(model["bundle"]).name == "mass_model"
    assert (tmp_path / "P111_R_DM_MLO_mask.png").is_file()


def test_threads_default_to_every_usable_cpu(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, scans: dict[str, Path], tmp_path: Path
) -> None:
    """Issue #14 item 4: no --threads -> bcedge.cpus.usable_cpus() threads, and the JSON says so."""
    from bcedge import cpus

    monkeypatch.setattr(cpus, "usable_cpus", lambda: 3)  # not LiteRT's own default (1), not this machine's
    out = tmp_path / "threads"
    rc, stdout, _ = run(
        capsys, "infer", scans["rmlo"], "--model", REAL_BUNDLE, "--backend", "tflite", "--out", out, "--outputs",
        "json", "--json",
    )  # fmt: skip
    assert rc == 0
    assert json.loads(stdout)["model"]["threads"] == 3


def test_a_librarys_warning_is_one_line_beside_the_error(scans: dict[str, Path], tmp_path: Path) -> None:
    """pydicom's note on a malformed value ("Invalid value for VR UI") reaches stderr as one
    ``warning: pydicom: ...`` line, not Python's path + source line; the bad scan is one error line."""
    import pydicom
    from serve_support import hostile_module

    ds = pydicom.dcmread(scans["rmlo"])
    ds.SOPInstanceUID = "abc.def.ghi"
    bad = hostile_module().save_unvalidated(ds, tmp_path / "bad uid.dcm")
    args = [str(bad), str(scans["rmlo"]), "--model", str(REAL_BUNDLE), "--out", str(tmp_path / "o")]
    proc = infer_in_subprocess(*args, "--outputs", "json,seg")
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.splitlines()
    assert [line for line in lines if line.startswith("warning: pydicom: Invalid value for VR UI")], proc.stderr
    assert not [line for line in lines if "valuerep.py" in line or "warn_and_log" in line], proc.stderr
    assert len(error_lines(proc.stderr)) == 1 and "SOPInstanceUID" in error_lines(proc.stderr)[0]
    assert (tmp_path / "o" / "rmlo.json").is_file()  # the good scan was still processed


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v/lib/python3.11/site-packages/pydicom/valuerep.py", "warning: pydicom: Invalid value for VR DA: '0'."),
        ("/usr/lib/python3/dist-packages/pydicom/valuerep.py", "warning: pydicom: Invalid value for VR DA: '0'."),
        ("/home/me/tool.py", "warning: tool: Invalid value for VR DA: '0'."),
    ],
)
def test_library_warning_line_names_the_package_without_path_or_link(path: str, expected: str) -> None:
    import logging
    import warnings

    from bcedge.cli.infer import _LibraryWarning

    text = warnings.formatwarning(
        "Invalid value for VR DA: '0'. Please see <https://dicom.nema.org/x> for allowed values for each VR.",
        UserWarning,
        path,
        440,
        "    warn_and_log(msg)",
    )
    record = logging.LogRecord("py.warnings", logging.WARNING, path, 440, "%s", (text,), None)
    assert _LibraryWarning().format(record) == expected


@pytest.mark.parametrize("bundle", ["fixed width", "any width"])
def test_a_successful_infer_leaves_stderr_empty(scans: dict[str, Path], tmp_path: Path, bundle: str) -> None:
    """LiteRT's C++ "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." (written to descriptor
    2 while the interpreter allocates) goes to the debug log: a scan that succeeds prints nothing
    on stderr. The any-width case is the shipped mass model, whose interpreter is planned again at the
    scan's width by its first call: the delegate must still start where descriptor 2 is captured."""
    model = REAL_BUNDLE if bundle == "fixed width" else ROOT / "bcedge" / "mass_model"
    args = [str(scans["rmlo"]), "--model", str(model), "--out", str(tmp_path / "o"), "--outputs", "json"]
    proc = infer_in_subprocess(*args, "--backend", "tflite")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr == "", proc.stderr[-2000:]
    assert (tmp_path / "o" / "rmlo.json").is_file()


def test_debug_shows_the_debug_log_and_each_warning_once(scans: dict[str, Path], tmp_path: Path) -> None:
    """``bcedge --debug infer``: bcedge's debug log reaches stderr (LiteRT's XNNPACK line, captured from
    descriptor 2, among it), and a warning is printed once, not by both the debug and the warning handler."""
    png = tmp_path / "scan.png"
    cv2.imwrite(str(png), (make_phantom(3, scale=0.5).stored >> 4).astype(np.uint8))
    args = [str(png), "--model", str(REAL_BUNDLE), "--out", str(tmp_path / "o"), "--outputs", "json,seg"]
    proc = subprocess.run(
        [sys.executable, "-m", "bcedge", "--debug", "infer", *args, "--backend", "tflite"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stderr.splitlines()
    assert [line for line in lines if line.startswith("DEBUG: bcedge") and "XNNPACK" in line], proc.stderr
    no_seg = [line for line in lines if "no DICOM SEG was written" in line]
    assert len(no_seg) == 1 and no_seg[0].startswith("WARNING: bcedge"), proc.stderr
