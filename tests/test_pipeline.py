"""bcedge.pipeline: Segmenter over a bundle, batches, four views, failures, backend choice and errors.

Most tests use an *oracle* backend registered for the test: it returns the phantom's true lesion
mask carried to the model grid, so the whole pipeline (read, preprocess, infer, postprocess,
mapping back) can be checked against known lesion sizes without depending on a model's skill.
The real TFLite bundle checks the backend choice and the real infer path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from bundle_support import write_test_manifest

import bcedge.backends as backends_mod
from bcedge.backends import BackendSpec
from bcedge.backends.base import Backend
from bcedge.bundle import ArtifactRecord, load_bundle
from bcedge.dicom import read_mammogram
from bcedge.errors import BundleError, ConfigError, InputError
from bcedge.phantom import Phantom, make_phantom
from bcedge.pipeline import STAGES, BackendError, Result, ScanFailure, Segmenter, default_bundle_path
from bcedge.preprocess import PreprocessConfig, preprocess

SIZE = 128
REAL_BUNDLE = Path(__file__).resolve().parents[1] / "models" / "unet-mobilenetv2-combined256"

#: tensor digest -> probability map the oracle returns for it
_ORACLE: dict[str, np.ndarray] = {}


def _digest(image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image, dtype=np.float32).tobytes()).hexdigest()


class OracleBackend(Backend):
    """Returns the registered probability map for a known input tensor, zeros for anything else."""

    name = "oracle"
    options = ("fail",)

    def _open(self, fail: bool = False) -> tuple[int | None, int, int, int]:
        self.fail = fail
        self.calls: list[int] = []
        return None, SIZE, SIZE, 1

    def _predict(self, batch: np.ndarray) -> np.ndarray:
        if self.fail:
            raise RuntimeError("simulated accelerator fault\nsecond line")
        self.calls.append(batch.shape[0])
        out = np.zeros_like(batch)
        for i, image in enumerate(batch):
            out[i, :, :, 0] = _ORACLE.get(_digest(image[:, :, 0]), 0.0)
        return out


@pytest.fixture(autouse=True)
def oracle_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    table = dict(backends_mod.BACKENDS)
    table["oracle"] = BackendSpec(
        name="oracle",
        target=f"{__name__}:OracleBackend",
        formats=("tflite",),
        description="test oracle",
        requirement="dev",
        modules=("numpy",),
    )
    table["ghost"] = BackendSpec(
        name="ghost",
        target=f"{__name__}:OracleBackend",
        formats=("tflite",),
        description="a backend whose library is not installed",
        requirement="ghost",
        modules=("bcedge_no_such_module",),
    )
    monkeypatch.setattr(backends_mod, "BACKENDS", table)


def make_bundle(folder: Path, *, backend: str = "oracle", gate: str = "passed", threshold: float = 0.5) -> Path:
    """A bundle whose one artifact runs on ``backend`` (the file's bytes are arbitrary)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.bin").write_bytes(b"oracle model " * 64)
    record = ArtifactRecord.from_file(
        folder, "model.bin", format="tflite", precision="fp32", backend=backend, gate=gate
    )
    model = {"name": "oracle", "architecture": "test", "params": 0}
    write_test_manifest(folder, [record], PreprocessConfig(size=SIZE), model=model, threshold=threshold)
    return folder


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Phantom, Path]]:
    """An exam (four views, one 12 mm round mass each) at half scale, written as DICOM, oracle registered."""
    folder = tmp_path_factory.mktemp("exam with space")
    config = PreprocessConfig(size=SIZE)
    out: dict[str, tuple[Phantom, Path]] = {}
    for lat in "LR":
        for view in ("CC", "MLO"):
            ph = make_phantom(
                11, laterality=lat, view=view, scale=0.5, detector="70um", masses=[("round", 12.0)], labels=False
            )
            path = ph.write(folder / f"{lat}{view}.dcm")
            tensor, geometry = preprocess(read_mammogram(path), config)
            truth = geometry.mask_to_model(ph.mask).astype(np.float32)
            _ORACLE[_digest(tensor[0, :, :, 0])] = cv2.GaussianBlur(truth, (0, 0), 0.6)
            out[f"{lat}{view}"] = (ph, path)
    return out


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    return make_bundle(tmp_path / "bundle with space")


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.logical_and(a, b).sum() / max(1, np.logical_or(a, b).sum()))


def test_segment_finds_the_phantom_lesion_in_mm(bundle_dir: Path, phantoms: dict) -> None:
    ph, path = phantoms["LCC"]
    with Segmenter(bundle_dir) as seg:
        result = seg.segment(path)
    assert isinstance(result, Result)
    assert result.source == str(path)
    assert result.mask.shape == ph.mask.shape and result.mask.dtype == np.uint8
    assert len(result.findings) == 1
    finding = result.findings[0]
    spacing = ph.spacing_mm
    true_area_mm2 = ph.masses[0]["area_px"] * spacing**2
    assert finding.area_mm2 == pytest.approx(true_area_mm2, rel=0.12)
    diameter = ph.masses[0]["diameter_mm"]
    assert max(finding.bbox_mm) == pytest.approx(diameter, abs=2.0)
    assert finding.centroid_px == pytest.approx(ph.masses[0]["centre"], abs=4.0)
    assert iou(result.mask, ph.mask) > 0.8
    assert list(result.timing_ms) == ["decode", "preprocess", "infer", "postprocess"]
    assert all(v >= 0 for v in result.timing_ms.values())
    assert result.threshold == 0.5


def test_four_views_each_mapped_back_onto_its_own_grid(bundle_dir: Path, phantoms: dict) -> None:
    """An exam's four views in one batch: right views are flipped and still land on their lesion."""
    names = ["LCC", "RCC", "LMLO", "RMLO"]
    with Segmenter(bundle_dir) as seg:
        results = list(seg.segment_many([phantoms[n][1] for n in names], batch_size=4))
        assert seg.backend.calls == [4]  # one model call for the whole exam
    for name, result in zip(names, results, strict=True):
        ph, path = phantoms[name]
        assert isinstance(result, Result), result
        assert result.source == str(path)
        assert result.mammogram.meta.laterality == name[0]
        assert result.geometry.flipped == (name[0] == "R")
        assert iou(result.mask, ph.mask) > 0.8, name
        assert len(result.findings) == 1


def test_segment_many_reports_bad_scans_and_goes_on(bundle_dir: Path, phantoms: dict, spaced_dir: Path) -> None:
    empty = spaced_dir / "empty.dcm"
    empty.write_bytes(b"")
    text = spaced_dir / "notes.dcm"
    text.write_text("not a DICOM file at all, just some text that is long enough " * 8)
    good = phantoms["LCC"][1]
    with Segmenter(bundle_dir) as seg:
        items = list(seg.segment_many([good, empty, text, spaced_dir / "missing.dcm", good], batch_size=2))
    kinds = [type(item).__name__ for item in items]
    assert kinds == ["Result", "ScanFailure", "ScanFailure", "ScanFailure", "Result"]
    for failure in items[1:4]:
        assert isinstance(failure, ScanFailure)
        assert isinstance(failure.error, InputError) and failure.error.exit_code == 2
        assert "\n" not in str(failure.error)
        assert failure.to_dict()["input"] == failure.source
    assert items[1].source == str(empty) and "empty" in str(items[1].error)
    assert "not a DICOM file" in str(items[2].error)
    np.testing.assert_array_equal(items[0].mask, items[4].mask)


def test_in_memory_mammogram_and_threshold_override(bundle_dir: Path, phantoms: dict) -> None:
    path = phantoms["RMLO"][1]
    mammo = read_mammogram(path)
    with Segmenter(bundle_dir, threshold=0.9, min_area_mm2=0.0) as seg:
        assert seg.threshold == 0.9
        result = seg.segment(mammo)
    assert result.source == "" and "decode" not in result.timing_ms
    with Segmenter(bundle_dir, threshold=0.1) as seg:
        loose = seg.segment(mammo)
    # a lower threshold grows the blurred lesion
    assert loose.mask.sum() > result.mask.sum() > 0


def test_result_to_dict_is_json(bundle_dir: Path, phantoms: dict) -> None:
    with Segmenter(bundle_dir) as seg:
        result = seg.segment(phantoms["LMLO"][1])
    result.timing_ms["total"] = 1.0
    data = json.loads(json.dumps(result.to_dict()))
    assert data["input"] == str(phantoms["LMLO"][1])
    assert data["findings"][0]["label"] == 1
    assert data["model"]["backend"] == "oracle" and data["model"]["artifact"] == "model.bin"
    assert data["image"]["laterality"] == "L" and data["image"]["view"] == "MLO"
    assert data["image"]["pixel_spacing_mm"] == pytest.approx([0.14, 0.14])
    assert set(data["timing_ms"]) == {"decode", "preprocess", "infer", "postprocess", "total"}
    assert data["outputs"] == {}
    assert set(STAGES) >= set(data["timing_ms"]) - {"total"}


def test_backend_errors_are_exit_code_3(bundle_dir: Path, phantoms: dict, tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="unknown backend 'nope'") as info:
        Segmenter(bundle_dir, backend="nope")
    assert info.value.exit_code == 3
    with pytest.raises(BundleError, match="no tflite artifact") as info:
        Segmenter(bundle_dir, backend="tflite")
    assert info.value.exit_code == 3
    ghost = make_bundle(tmp_path / "ghost", backend="ghost")
    with pytest.raises(BackendError, match="bcedge_no_such_module") as info:
        Segmenter(ghost, backend="ghost")
    assert info.value.exit_code == 3
    with pytest.raises(BackendError, match="has no option"):
        Segmenter(bundle_dir, bogus=1)
    with Segmenter(bundle_dir, fail=True) as seg, pytest.raises(BackendError, match="simulated accelerator fault"):
        seg.segment(phantoms["LCC"][1])
    with Segmenter(bundle_dir, fail=True) as seg, pytest.raises(BackendError) as info:
        list(seg.segment_many([phantoms["LCC"][1]]))
    assert "\n" not in str(info.value)


def test_bundle_problems(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist") as info:
        Segmenter(tmp_path / "no such bundle")
    assert info.value.exit_code == 3
    tampered = make_bundle(tmp_path / "tampered")
    data = bytearray((tampered / "model.bin").read_bytes())
    data[10] ^= 0xFF
    (tampered / "model.bin").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="tampered"):
        Segmenter(tampered)
    unmeasured = make_bundle(tmp_path / "unmeasured", gate="not-measured")
    with pytest.raises(BundleError, match="no usable artifact"):
        Segmenter(unmeasured)  # auto takes gated artifacts only
    with Segmenter(unmeasured, backend="oracle") as seg:  # an explicit backend accepts it, with a warning
        assert seg.artifact.gate == "not-measured"
        assert any("not measured" in w for w in seg.warnings)


def test_option_checks(bundle_dir: Path, phantoms: dict) -> None:
    with pytest.raises(ConfigError, match="threshold"):
        Segmenter(bundle_dir, threshold=1.0)
    with pytest.raises(ConfigError, match="mm²"):
        Segmenter(bundle_dir, min_area_mm2=-2)
    with pytest.raises(ConfigError, match="threads"):
        Segmenter(bundle_dir, threads=0)
    with Segmenter(bundle_dir) as seg:
        with pytest.raises(ConfigError, match="batch_size"):
            list(seg.segment_many([], batch_size=0))
        with pytest.raises(InputError, match="expected a file path"):
            seg.segment(42)  # type: ignore[arg-type]
    with pytest.raises(BackendError, match="closed"):
        seg.segment(phantoms["LCC"][1])


def test_default_and_demo_bundles_are_inside_the_package() -> None:
    """Without --model bcedge serves the real-data model; the phantom model is the demo's."""
    from bcedge.bundle import load_bundle
    from bcedge.pipeline import demo_bundle_path

    path = default_bundle_path()
    assert path.name == "mass_model" and path.parent.name == "bcedge"
    assert demo_bundle_path().name == "demo_model" and demo_bundle_path().parent.name == "bcedge"
    manifest = load_bundle(path).manifest
    assert "not for clinical use" in manifest.provenance["intended_use"]
    assert set(manifest.provenance["data_terms"]) == {"cdd-cesm", "mini-mias"}
    assert manifest.provenance["recipe"]["encoder_weights"].endswith("mobilenet_v2_1.0_224_imagenet_int8.tflite")
    assert manifest.provenance["split"].endswith("combined-v2.json")


# --------------------------------------------------------------------------- the real TFLite bundle


@pytest.fixture(scope="module")
def real() -> Iterator[Segmenter]:
    pytest.importorskip("ai_edge_litert")
    if not (REAL_BUNDLE / "manifest.json").is_file():
        pytest.skip(f"{REAL_BUNDLE} is not there")
    with Segmenter(REAL_BUNDLE, threads=1) as seg:
        yield seg


def test_real_bundle_auto_picks_int8_tflite(real: Segmenter) -> None:
    assert (real.backend_name, real.artifact.precision) == ("tflite", "int8")
    info = real.model_info
    assert info["runtime"] == "ai_edge_litert" and info["threads"] == 1
    with Segmenter(load_bundle(REAL_BUNDLE), backend="tflite") as explicit:
        assert explicit.artifact.file == real.artifact.file


def test_real_bundle_segments_a_full_field_scan(real: Segmenter, spaced_dir: Path) -> None:
    ph = make_phantom(5, laterality="R", view="MLO", detector="70um", bits_stored=12, masses=[("oval", 15.0)])
    path = ph.write(spaced_dir / "full field.dcm")
    result = real.segment(path)
    assert result.mask.shape == (3328, 2560)
    assert result.probability.shape == (256, 256) and result.probability.dtype == np.float32
    assert 0.0 <= float(result.probability.min()) <= float(result.probability.max()) <= 1.0
    # findings and mask agree, whatever the model's skill on synthetic scans
    assert sum(f.area_px for f in result.findings) == int(result.mask.sum())
    assert [f.label for f in result.findings] == list(range(1, len(result.findings) + 1))


def test_tampered_real_artifact_is_refused(tmp_path: Path) -> None:
    if not (REAL_BUNDLE / "manifest.json").is_file():
        pytest.skip(f"{REAL_BUNDLE} is not there")
    copy = tmp_path / "copy"
    shutil.copytree(REAL_BUNDLE, copy)
    target = copy / "model_int8.tflite"
    with open(target, "r+b") as fh:
        fh.seek(os.path.getsize(target) // 2)
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte[0] ^ 0x55]))
    with pytest.raises(BundleError, match="tampered") as info:
        Segmenter(copy, backend="tflite")
    assert info.value.exit_code == 3


def test_a_for_processing_image_is_named_in_the_json_and_warned_once(
    bundle_dir: Path, write_mg, ramp, caplog: pytest.LogCaptureFixture
) -> None:
    """A raw (FOR PROCESSING) image is segmented, its intent and window source are in the JSON, and
    the process warns once that the model's output on raw images is unvalidated (then debug)."""
    import bcedge.pipeline as pipeline_mod

    pipeline_mod._for_processing_warned.clear()
    raw = [
        write_mg(ramp(14, (96, 64)), name=f"raw{i}.dcm", bits_stored=14, presentation_intent="FOR PROCESSING")
        for i in range(2)
    ]
    shown = write_mg(ramp(12, (96, 64)), name="shown.dcm", bits_stored=12, presentation_intent="FOR PRESENTATION")
    caplog.set_level(logging.DEBUG, logger="bcedge.pipeline")
    with Segmenter(bundle_dir) as seg:
        first = seg.segment(raw[0]).to_dict()
        seg.segment(raw[1])
        presented = seg.segment(shown).to_dict()
    assert first["image"]["presentation_intent"] == "FOR PROCESSING"
    assert first["image"]["window_source"] == "robust"
    assert presented["image"]["presentation_intent"] == "FOR PRESENTATION"
    notes = [r for r in caplog.records if "FOR PROCESSING" in r.getMessage()]
    assert [r.levelno for r in notes] == [logging.WARNING, logging.DEBUG]
    assert "oracle was trained and tested on processed images only" in notes[0].getMessage()
    assert str(raw[0]) not in notes[0].getMessage()  # no path: it may name the patient
