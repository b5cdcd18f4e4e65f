"""Bundle manifest: schema round trip, atomic write, load errors, artifact verification, --backend auto choice."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bundle_support import write_test_manifest

from bcedge.backends import BACKENDS
from bcedge.bundle import (
    SCHEMA_VERSION,
    ArtifactRecord,
    Manifest,
    load_bundle,
    sha256_file,
    write_manifest,
)
from bcedge.errors import BcedgeError, BundleError
from bcedge.formats import AUTO_PREFERENCE, FORMATS, ONNX_GPU, PRECISIONS, choose_artifact
from bcedge.preprocess import PreprocessConfig

SIZE = 32
# (file, format, precision, backend, gate)
ARTIFACTS = (
    ("model.keras", "keras", "fp32", "keras", "passed"),
    ("model_fp32.tflite", "tflite", "fp32", "tflite", "passed"),
    ("model_fp16.tflite", "tflite", "fp16", "tflite", "passed"),
    ("model_int8.tflite", "tflite", "int8", "tflite", "failed"),
    ("model_dynamic.tflite", "tflite", "dynamic", "tflite", "passed"),
    ("model.onnx", "onnx", "fp32", "onnx", "passed"),
    ("engines/model_fp16.engine", "tensorrt", "fp16", "tensorrt", "passed"),
    ("engines/model_int8.engine", "tensorrt", "int8", "tensorrt", "not-measured"),
)


def make_bundle(root: Path, artifacts: tuple[tuple[str, str, str, str, str], ...] = ARTIFACTS) -> Manifest:
    """Write artifact files with distinct bytes and a valid manifest into ``root``; return the manifest."""
    records = []
    for i, (file, fmt, precision, backend, gate) in enumerate(artifacts):
        path = root / file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bytes([i]) * (100 + 17 * i))
        metrics = {"dice": 0.8 - 0.01 * i, "iou": 0.7, "n_images": 12, "reference_dice": 0.8, "delta_dice": 0.01 * i}
        records.append(
            ArtifactRecord.from_file(
                root,
                file,
                format=fmt,
                precision=precision,
                backend=backend,
                metrics=metrics,
                gate=gate,
                tolerance=0.02,
                details={"note": f"artifact {i}"},
            )
        )
    return write_test_manifest(
        root,
        records,
        PreprocessConfig(size=SIZE),
        model={"name": "unet", "architecture": "unet base_filters=4", "params": 1234},
        threshold=0.4,
        provenance={"run_dir": "runs/x", "epochs": 3, "eval_split": "val"},
    )


def edit_manifest(root: Path, edit: Any) -> None:
    """Apply ``edit(data)`` to ``root/manifest.json`` in place (bypassing write_manifest's checks)."""
    path = root / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.fixture
def bundle_dir(spaced_dir: Path) -> Path:
    root = spaced_dir / "my bundle"
    root.mkdir()
    make_bundle(root)
    return root


def one_line_bundle_error(excinfo: pytest.ExceptionInfo[BundleError], *needles: str) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, msg
    return msg


# --------------------------------------------------------------------------- schema round trip


def test_manifest_round_trip_and_defaults(bundle_dir: Path) -> None:
    manifest = load_bundle(bundle_dir).manifest
    assert Manifest.from_dict(manifest.to_dict()) == manifest
    assert manifest.schema_version == SCHEMA_VERSION
    assert manifest.created.endswith("Z") and manifest.created[4] == "-"
    assert len(manifest.artifacts) == len(ARTIFACTS)
    assert manifest.artifacts[6].file == "engines/model_fp16.engine"
    assert manifest.artifacts[0].details == {"note": "artifact 0"}
    assert manifest.threshold == 0.4


def test_written_json_is_sorted_indented_and_strict(bundle_dir: Path) -> None:
    text = (bundle_dir / "manifest.json").read_text()
    data = json.loads(text)
    assert text == json.dumps(data, sort_keys=True, indent=2) + "\n"
    assert data["schema_version"] == 1
    assert set(data["artifacts"][0]) == {
        "file", "format", "precision", "backend", "sha256", "size_bytes", "metrics", "gate", "tolerance", "details",
    }  # fmt: skip
    # No temp files left beside the manifest by the atomic write.
    assert sorted(p.name for p in bundle_dir.iterdir() if p.name.startswith(".")) == []


def test_load_bundle_accessors(bundle_dir: Path) -> None:
    b = load_bundle(bundle_dir)
    assert b.dir == bundle_dir
    assert b.input_size == SIZE
    assert b.threshold == 0.4
    assert b.preprocess_config() == PreprocessConfig(size=SIZE)
    assert load_bundle(bundle_dir / "manifest.json").manifest == b.manifest
    assert "unet" in repr(b)


def test_sha256_file_matches_hashlib_across_chunks(spaced_dir: Path) -> None:
    data = np.random.default_rng(0).integers(0, 256, (1 << 21) + 3, dtype=np.uint8).tobytes()
    path = spaced_dir / "big.bin"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_artifact_record_from_file(spaced_dir: Path) -> None:
    (spaced_dir / "m.onnx").write_bytes(b"abc")
    rec = ArtifactRecord.from_file(spaced_dir, "m.onnx", format="onnx", precision="fp32", backend="onnx")
    assert rec.sha256 == hashlib.sha256(b"abc").hexdigest() and rec.size_bytes == 3
    assert rec.gate == "not-measured" and rec.tolerance is None and rec.metrics == {}
    with pytest.raises(BundleError, match="does not exist"):
        ArtifactRecord.from_file(spaced_dir, "nope.onnx", format="onnx", precision="fp32", backend="onnx")
    with pytest.raises(BundleError, match="'precision' is 'fp8'"):
        ArtifactRecord.from_file(spaced_dir, "m.onnx", format="onnx", precision="fp8", backend="onnx")


# --------------------------------------------------------------------------- artifact verification


def test_artifact_path_verifies_hash_and_size(bundle_dir: Path) -> None:
    b = load_bundle(bundle_dir)
    rec = b.artifact(format="onnx")
    path = b.artifact_path(rec)
    assert path == bundle_dir / "model.onnx" and path.is_file()

    # Same size, one flipped bit: only the hash catches it.
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError) as excinfo:
        b.artifact_path(rec)
    one_line_bundle_error(excinfo, "model.onnx", "SHA-256", "tampered with or truncated")
    assert b.artifact_path(rec, verify=False) == path  # an explicit opt-out still finds the file

    # Truncated: the size check names both sizes.
    path.write_bytes(bytes(data[:-5]))
    with pytest.raises(BundleError) as excinfo:
        b.artifact_path(rec)
    one_line_bundle_error(excinfo, f"is {rec.size_bytes - 5} bytes", f"records {rec.size_bytes}", "truncated")

    path.unlink()
    with pytest.raises(BundleError, match="file is missing"):
        b.artifact_path(rec, verify=False)


def test_artifact_path_nested_file(bundle_dir: Path) -> None:
    b = load_bundle(bundle_dir)
    rec = b.artifact(backend="tensorrt", precision="fp16")
    assert b.artifact_path(rec) == bundle_dir / "engines" / "model_fp16.engine"


def test_artifact_lookup(bundle_dir: Path) -> None:
    b = load_bundle(bundle_dir)
    assert b.artifact().file == "model.keras"  # first in manifest order
    assert b.artifact(format="tflite").precision == "fp32"
    assert b.artifact(format="tflite", precision="int8").file == "model_int8.tflite"
    with pytest.raises(BundleError) as excinfo:
        b.artifact(format="onnx", precision="int8")
    one_line_bundle_error(excinfo, "format=onnx, precision=int8", "tflite/fp16 on tflite (model_fp16.tflite)")


# --------------------------------------------------------------------------- refusing bad bundles


def test_missing_dir_and_manifest(spaced_dir: Path) -> None:
    with pytest.raises(BundleError) as excinfo:
        load_bundle(spaced_dir / "absent")
    one_line_bundle_error(excinfo, "absent", "does not exist")
    with pytest.raises(BundleError) as excinfo:
        load_bundle(spaced_dir)
    one_line_bundle_error(excinfo, "has no manifest.json")
    (spaced_dir / "model.onnx").write_bytes(b"x")
    with pytest.raises(BundleError, match="not a directory"):
        load_bundle(spaced_dir / "model.onnx")


def test_bad_json(spaced_dir: Path) -> None:
    (spaced_dir / "manifest.json").write_text('{"schema_version": 1,')
    with pytest.raises(BundleError) as excinfo:
        load_bundle(spaced_dir)
    one_line_bundle_error(excinfo, "manifest.json is not valid JSON")
    (spaced_dir / "manifest.json").write_text("[1, 2]")
    with pytest.raises(BundleError, match="manifest is list; expected a JSON object"):
        load_bundle(spaced_dir)


@pytest.mark.parametrize("version", [2, 0, "1", 1.0, None, True])
def test_unknown_schema(bundle_dir: Path, version: Any) -> None:
    edit_manifest(bundle_dir, lambda d: d.update(schema_version=version))
    with pytest.raises(BundleError) as excinfo:
        load_bundle(bundle_dir)
    one_line_bundle_error(excinfo, "unknown schema_version", f"reads schema {SCHEMA_VERSION}")


def test_missing_schema_version(bundle_dir: Path) -> None:
    edit_manifest(bundle_dir, lambda d: d.pop("schema_version"))
    with pytest.raises(BundleError, match="no 'schema_version'"):
        load_bundle(bundle_dir)


@pytest.mark.parametrize("key", ["model", "input", "preprocess_hash", "threshold", "provenance", "artifacts"])
def test_missing_key_is_named(bundle_dir: Path, key: str) -> None:
    edit_manifest(bundle_dir, lambda d: d.pop(key))
    with pytest.raises(BundleError) as excinfo:
        load_bundle(bundle_dir)
    one_line_bundle_error(excinfo, f"has no '{key}'")


@pytest.mark.parametrize("key", ["sha256", "gate", "file"])
def test_missing_artifact_key_is_named(bundle_dir: Path, key: str) -> None:
    edit_manifest(bundle_dir, lambda d: d["artifacts"][2].pop(key))
    with pytest.raises(BundleError) as excinfo:
        load_bundle(bundle_dir)
    one_line_bundle_error(excinfo, "artifact #2", f"has no '{key}'")


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda d: d.update(extra=1), "unknown key(s) ['extra']"),
        (lambda d: d["artifacts"][0].update(format="pt"), "'format' is 'pt'"),
        (lambda d: d["artifacts"][0].update(gate="ok"), "'gate' is 'ok'"),
        (lambda d: d["artifacts"][0].update(sha256="abc"), "'sha256' is 'abc'"),
        (lambda d: d["artifacts"][0].update(size_bytes=-1), "'size_bytes' is -1"),
        (lambda d: d["artifacts"][0].update(file="../outside.onnx"), "inside the bundle directory"),
        (lambda d: d["artifacts"][0].update(file="/etc/passwd"), "inside the bundle directory"),
        (lambda d: d.update(artifacts=[]), "lists no artifacts"),
        (lambda d: d.update(threshold=1.5), "'threshold' is 1.5"),
        (lambda d: d["input"].update(shape=[1, 32, 32, 3]), "input 'shape' is [1, 32, 32, 3]"),
        (lambda d: d["input"].update(dtype="uint8"), "input 'dtype' is 'uint8'"),
        (lambda d: d["output"].update(shape=[1, 64, 64, 1]), "does not match input shape"),
    ],
)
def test_malformed_manifest(bundle_dir: Path, edit: Any, needle: str) -> None:
    edit_manifest(bundle_dir, edit)
    with pytest.raises(BundleError) as excinfo:
        load_bundle(bundle_dir)
    one_line_bundle_error(excinfo, needle)


def test_preprocess_hash_mismatch(bundle_dir: Path) -> None:
    edit_manifest(bundle_dir, lambda d: d["preprocess"].update(clahe_clip=3.0))
    with pytest.raises(BundleError) as excinfo:
        load_bundle(bundle_dir)
    one_line_bundle_error(excinfo, "preprocess config hashes to", "'preprocess_hash' is")


def test_preprocess_version_or_size_mismatch(bundle_dir: Path) -> None:
    edit_manifest(bundle_dir, lambda d: d["preprocess"].update(version=999))
    with pytest.raises(BundleError, match="manifest 'preprocess': preprocess config version is 999"):
        load_bundle(bundle_dir)

    other = PreprocessConfig(size=64)  # consistent hash, but not the model's input side
    edit_manifest(bundle_dir, lambda d: d.update(preprocess=other.to_dict(), preprocess_hash=other.hash()))
    with pytest.raises(BundleError, match="input side 32 differs from the preprocess size 64"):
        load_bundle(bundle_dir)


def test_write_manifest_refuses_what_load_refuses(spaced_dir: Path) -> None:
    manifest = make_bundle(spaced_dir)
    before = (spaced_dir / "manifest.json").read_bytes()
    manifest.preprocess_hash = "0" * 16
    with pytest.raises(BundleError, match="hashes to"):
        write_manifest(spaced_dir, manifest)
    manifest.preprocess_hash = PreprocessConfig(size=SIZE).hash()
    manifest.artifacts[0].metrics["dice"] = float("nan")
    with pytest.raises(BundleError, match="not plain JSON"):
        write_manifest(spaced_dir, manifest)
    assert (spaced_dir / "manifest.json").read_bytes() == before  # the old manifest is untouched


def test_bundle_error_exit_code(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert issubclass(BundleError, BcedgeError)
    assert BundleError.exit_code == 3
    import bcedge.cli as cli

    # A throwaway command on the real app (the list is restored afterwards) that fails like a bad bundle.
    # Register the lazy commands first, or they would land in the temporary list and vanish with it.
    cli._register_subapps()
    monkeypatch.setattr(cli.app, "registered_commands", list(cli.app.registered_commands))

    @cli.app.command("raise-bundle-error", hidden=True)
    def _probe() -> None:
        raise BundleError("bundle x has no manifest.json")

    assert cli.main(["raise-bundle-error"]) == 3
    assert capsys.readouterr().err.strip() == "error: bundle x has no manifest.json"


# --------------------------------------------------------------------------- --backend auto


@pytest.mark.parametrize(
    ("available", "expected"),
    [
        ({"tensorrt", "onnx", ONNX_GPU, "tflite", "keras"}, "engines/model_fp16.engine"),  # int8 engine unmeasured
        ({ONNX_GPU, "onnx", "tflite", "keras"}, "model.onnx"),  # onnxruntime on a GPU beats any CPU path
        ({"onnx", "tflite", "keras"}, "model_fp16.tflite"),  # int8 failed its gate: next is fp16
        ({"onnx", "keras"}, "model.onnx"),
        ({"keras"}, "model.keras"),
    ],
)
def test_auto_choice(bundle_dir: Path, available: set[str], expected: str) -> None:
    assert choose_artifact(load_bundle(bundle_dir), "auto", available, known=BACKENDS).record.file == expected


def test_auto_order_within_tflite(spaced_dir: Path) -> None:
    arts = tuple(
        (f"m_{p}.tflite", "tflite", p, "tflite", "passed") for p in ("dynamic", "fp32", "fp16", "int8")
    )  # manifest order is the reverse of the preference
    make_bundle(spaced_dir, arts)
    b = load_bundle(spaced_dir)
    assert choose_artifact(b, "auto", {"tflite"}, known=BACKENDS).record.precision == "int8"
    b.manifest.artifacts = [a for a in b.manifest.artifacts if a.precision != "int8"]
    assert choose_artifact(b, "auto", {"tflite"}, known=BACKENDS).record.precision == "fp16"
    b.manifest.artifacts = [a for a in b.manifest.artifacts if a.precision != "fp16"]
    assert choose_artifact(b, "auto", {"tflite"}, known=BACKENDS).record.precision == "fp32"


def test_choice_unmeasured_and_none(bundle_dir: Path) -> None:
    b = load_bundle(bundle_dir)
    b.manifest.artifacts = [a for a in b.manifest.artifacts if a.file != "engines/model_fp16.engine"]
    choice = choose_artifact(b, "tensorrt", set(), known=BACKENDS)  # explicit backend: unmeasured, with a warning
    assert choice.record.file == "engines/model_int8.engine" and "not measured" in choice.warnings[0]
    b = load_bundle(bundle_dir)
    assert choose_artifact(b, "auto", {"tensorrt"}, known=BACKENDS).record.file == "engines/model_fp16.engine"
    with pytest.raises(BundleError) as excinfo:
        choose_artifact(b, "auto", set(), known=BACKENDS)
    one_line_bundle_error(
        excinfo, "no usable artifact", "available backends: none", "tflite/int8 on tflite: gate failed"
    )
    b.manifest.artifacts = [a for a in b.manifest.artifacts if a.gate == "failed"]
    with pytest.raises(BundleError, match="gate failed"):
        choose_artifact(b, "auto", {"tflite", "onnx", "keras"}, known=BACKENDS)


def test_preference_table_is_consistent() -> None:
    keys = {key for key, _, _ in AUTO_PREFERENCE}
    assert keys <= set(BACKENDS) | {ONNX_GPU}
    assert {backend for _, backend, _ in AUTO_PREFERENCE} == set(BACKENDS)
    assert {p for _, _, p in AUTO_PREFERENCE} <= set(PRECISIONS)
    assert len(set(AUTO_PREFERENCE)) == len(AUTO_PREFERENCE)
    assert {f for spec in BACKENDS.values() for f in spec.formats} == set(FORMATS)
    # The documented order: tensorrt > onnx on GPU > tflite int8 > fp16 > fp32 > dynamic > openvino > onnx on
    # CPU > keras.
    firsts = list(dict.fromkeys((k, b) if b != "tflite" else (k, p) for k, b, p in AUTO_PREFERENCE))
    assert firsts == [
        ("tensorrt", "tensorrt"), (ONNX_GPU, "onnx"), ("tflite", "int8"), ("tflite", "fp16"),
        ("tflite", "fp32"), ("tflite", "dynamic"), ("openvino", "openvino"), ("onnx", "onnx"), ("keras", "keras"),
    ]  # fmt: skip
