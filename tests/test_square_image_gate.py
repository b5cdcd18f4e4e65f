"""benchmarks/square_image_gate.py: a no-op on the split's square files; --set edits config and hash only."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import square_image_gate as gate

from bcedge.bundle import load_bundle

ROOT = Path(__file__).resolve().parents[1]


def test_set_square_image_rewrites_only_the_config_and_hash(tmp_path: Path) -> None:
    bundle = tmp_path / "mass"
    shutil.copytree(ROOT / "bcedge" / "mass_model", bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["preprocess"].pop("square_image", None)  # as before session 16
    from bcedge.preprocess import PreprocessConfig

    manifest["preprocess_hash"] = PreprocessConfig.from_dict(manifest["preprocess"]).hash()
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    assert load_bundle(bundle).preprocess_config().square_image is False
    gate.set_square_image(bundle)
    after = json.loads((bundle / "manifest.json").read_text())
    assert load_bundle(bundle).preprocess_config().square_image is True  # the hash matches the config
    changed = {k for k in manifest.keys() | after.keys() if manifest.get(k) != after.get(k)}
    assert changed == {"preprocess", "preprocess_hash"}
    assert after["preprocess"] == {**manifest["preprocess"], "square_image": True}


def test_the_validation_files_give_identical_inputs(bcedge_data: Path, tmp_path: Path) -> None:
    config = load_bundle(ROOT / "bcedge" / "mass_model").preprocess_config()
    split = str(ROOT / "benchmarks" / "splits" / "combined-v2.json")
    result = gate.compare(config, "combined-v2", str(bcedge_data), split, "val")
    assert result["images"] == 65 and result["identical"] == 65 and not result["differ"]
    assert set(result["image_shapes"]) == {"512x512", "1024x1024"}  # square files: the option cannot act
