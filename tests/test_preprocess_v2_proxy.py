"""benchmarks/preprocess_v2_12bit_proxy.py: the 12-bit re-encoding gives back the displayed image, and
version 2 differs from version 1 on it (so the proxy exercises what the 8-bit images do not)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

from bcedge.dicom import ImageMeta, Mammogram
from bcedge.preprocess import PreprocessConfig, preprocess

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import preprocess_v2_12bit_proxy as proxy


def _eight_bit_mammogram() -> Mammogram:
    """A 600x400 8-bit-looking breast: a bright half-disc on the left on a dark background."""
    yy, xx = np.mgrid[0:600, 0:400]
    inside = (yy - 300) ** 2 + xx**2 < 280**2
    rng = np.random.default_rng(0)
    pixels = np.where(inside, 0.35 + 0.4 * rng.random((600, 400)), 0.02).astype(np.float32)
    pixels = np.round(pixels * 255) / np.float32(255)  # 8-bit levels, as a raster reader gives
    return Mammogram(pixels=pixels.astype(np.float32), meta=ImageMeta(source="t", rows=600, columns=400))


def test_sigmoid_table_is_increasing_onto_0_1() -> None:
    table = proxy.sigmoid_table(1600.0)
    assert table.shape == (4096,) and table.dtype == np.float32
    assert table[0] == 0.0 and table[-1] == 1.0 and np.all(np.diff(table) > 0)


def test_the_12_bit_encoding_gives_back_the_displayed_pixels() -> None:
    mammo = _eight_bit_mammogram()
    table = proxy.sigmoid_table(1600.0)
    coded = proxy.as_12_bit(mammo, table)
    assert coded.stored is not None and coded.stored.values.dtype == np.uint16
    back = coded.stored.display()
    step = float(np.diff(table).max())  # the nearest entry is at most half a (largest) step away
    assert np.abs(back - mammo.pixels).max() <= step / 2 + 1e-7
    assert coded.meta == mammo.meta


def test_version_2_differs_on_the_12_bit_encoding() -> None:
    coded = proxy.as_12_bit(_eight_bit_mammogram(), proxy.sigmoid_table(1600.0))
    config = PreprocessConfig(size=128, work_size=128)
    t1, _ = preprocess(coded, config)
    t2, _ = preprocess(coded, dataclasses.replace(config, version=2))
    assert not np.array_equal(t1, t2)  # stored values averaged, then the curve: not the same image
    assert np.abs(t1 - t2).mean() < 0.05  # ... but close to it


def test_the_test_split_is_refused() -> None:
    with pytest.raises(SystemExit, match="not test"):
        proxy.main(["--bundle", "b", "--data", "d", "--root", "r", "--split", "s", "--subset", "test"])


def test_set_version_rewrites_only_the_config_and_hash(tmp_path: Path) -> None:
    """preprocess_v2_gate.set_version / --set-version (training/make_mass_model.sh's last step)."""
    import json
    import shutil

    import preprocess_v2_gate as gate

    from bcedge.bundle import load_bundle

    bundle = tmp_path / "mass"
    shutil.copytree(Path(__file__).resolve().parents[1] / "bcedge" / "mass_model", bundle)
    before = json.loads((bundle / "manifest.json").read_text())
    assert gate.main(["--bundle", str(bundle), "--set-version", "1"]) == 0
    assert load_bundle(bundle).preprocess_config().version == 1
    gate.set_version(bundle, 2)
    after = json.loads((bundle / "manifest.json").read_text())
    assert load_bundle(bundle).preprocess_config().version == 2  # the hash matches the config
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert changed <= {"preprocess", "preprocess_hash"}
    assert after["preprocess"] == {**before["preprocess"], "version": 2}
    source = Path(__file__).resolve().parents[1] / "bcedge" / "mass_model"
    assert sorted(p.name for p in bundle.iterdir()) == sorted(p.name for p in source.iterdir())  # no temporary left
