"""Dataset registry: names, aliases, option checking, root errors, the combined recipe."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from bcedge.datasets.combined import CombinedDataset
from bcedge.datasets.registry import DATASETS, dataset_names, open_dataset, parse_options, resolve_name
from bcedge.errors import BcedgeError, ConfigError, DatasetError


def _mias_tree(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "Info.txt").write_text("mdb001 G CIRC B 5 5 2\nmdb002 G NORM\nmdb003 F CIRC B\nmdb004 D NORM\n")
    for n in range(1, 5):
        cv2.imwrite(str(root / "images" / f"mdb{n:03d}.png"), np.zeros((16, 16), np.uint8))
    return root


def _cdd_tree(root: Path) -> Path:
    for stem in ("flipped_P1_L_DM_CC", "flipped_P2_R_DM_MLO", "flipped_P2_R_CM_MLO"):
        (root / "setA" / "images").mkdir(parents=True, exist_ok=True)
        (root / "setA" / "masks").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "setA" / "images" / f"{stem}.jpg"), np.zeros((16, 16, 3), np.uint8))
        mask = np.zeros((16, 16, 3), np.uint8)
        mask[4:8, 4:8] = (0, 0, 255)
        cv2.imwrite(str(root / "setA" / "masks" / f"{stem}.png"), mask)
    return root


def test_names_aliases_and_unknown() -> None:
    assert {"mini-mias", "cdd-cesm", "cbis-ddsm", "cbis-ddsm-jpeg", "folder", "phantom", "combined"} <= set(
        dataset_names()
    )
    assert resolve_name("MIAS").name == "mini-mias" and resolve_name("phantoms").name == "phantom"
    with pytest.raises(DatasetError, match="unknown dataset 'inbreast'"):
        resolve_name("inbreast")


def test_every_entry_imports_its_reader() -> None:
    for entry in DATASETS.values():
        assert callable(entry.factory()), entry.name


def test_open_checks_root_and_options(tmp_path: Path) -> None:
    root = _mias_tree(tmp_path / "mias here")
    reader = open_dataset("mini-mias", root, include_other=True)
    assert reader.name == "mini-mias" and len(list(reader.samples())) == 4
    with pytest.raises(ConfigError, match="no option 'colour'"):
        open_dataset("mini-mias", root, colour=True)
    with pytest.raises(DatasetError, match="root not found"):
        open_dataset("mini-mias", tmp_path / "absent")
    with pytest.raises(DatasetError, match="is a file"):
        open_dataset("mini-mias", root / "Info.txt")
    assert issubclass(DatasetError, BcedgeError) and DatasetError.exit_code == 2


def test_parse_options() -> None:
    assert parse_options(["kind=CM", "include-other=true", "n=3", "x=0.5", "r=none"]) == {
        "kind": "CM",
        "include_other": True,
        "n": 3,
        "x": 0.5,
        "r": None,
    }
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_options(["kind"])


def test_combined_recipe_on_a_small_tree(tmp_path: Path) -> None:
    root = tmp_path / "data dir"
    _mias_tree(root / "mini-mias")
    _cdd_tree(root / "cdd-cesm")
    samples = list(open_dataset("combined", root).samples())
    # DM only from CDD-CESM; the MIAS image with an unlocated mass (mdb003) is dropped.
    assert [s.id for s in samples] == ["P1_L_DM_CC", "P2_R_DM_MLO", "mdb001", "mdb002", "mdb004"]
    assert {s.mask_kind for s in samples if s.source == "cdd-cesm"} == {"pixel"}
    with pytest.raises(DatasetError, match="cdd-cesm"):
        open_dataset("combined", root / "mini-mias")


def test_combined_rejects_clashing_ids(tmp_path: Path) -> None:
    from bcedge.datasets.mias import MiniMias

    reader = MiniMias(_mias_tree(tmp_path / "m"))
    with pytest.raises(DatasetError, match="appears in both"):
        list(CombinedDataset([reader, reader]).samples())


_DATA = os.environ.get("BCEDGE_DATA")


@pytest.mark.skipif(not _DATA, reason="BCEDGE_DATA is not set (path to the shared real data)")
def test_real_combined_counts() -> None:
    samples = list(open_dataset("combined", Path(_DATA or "")).samples())
    by_source = {src: [s for s in samples if s.source == src] for src in ("cdd-cesm", "mini-mias")}
    assert len(by_source["cdd-cesm"]) == 25 and len(by_source["mini-mias"]) == 321
    assert sum(s.has_lesion for s in samples) == 80
    assert not any(s.lesion_unlocated for s in samples)
