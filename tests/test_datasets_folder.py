"""Plain images/ + masks/ folder reader."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from bcedge.datasets.folder import FolderDataset
from bcedge.errors import ConfigError, DatasetError


def _write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "my folder"
    img = np.full((32, 24), 90, np.uint8)
    lesion = np.zeros((32, 24), np.uint8)
    lesion[4:10, 4:10] = 255
    _write(root / "images" / "case10.png", img)
    _write(root / "images" / "case2.jpg", img)
    _write(root / "images" / "case3.tif", img)
    _write(root / "images" / "case4.png", img)
    _write(root / "masks" / "case10.png", lesion)
    _write(root / "masks" / "case4.png", np.zeros((32, 24), np.uint8))  # an all-background mask
    second = np.zeros((32, 24), np.uint8)
    second[20:25, 10:15] = 255
    _write(root / "masks" / "case3" / "lesion1.png", lesion)
    _write(root / "masks" / "case3" / "lesion2.png", second)
    return root


def test_samples_sorted_and_masks_matched(tree: Path) -> None:
    samples = {s.id: s for s in FolderDataset(tree).samples()}
    assert list(samples) == ["case2", "case3", "case4", "case10"]
    assert samples["case10"].mask_paths == (tree / "masks" / "case10.png",)
    assert samples["case10"].has_lesion and samples["case10"].mask_kind == "pixel"
    # No mask file: no lesion.
    assert samples["case2"].mask_kind == "none" and not samples["case2"].has_lesion
    assert samples["case2"].patient_id == "case2" and samples["case2"].source == "folder"


def test_an_all_background_mask_means_no_lesion(tree: Path) -> None:
    case4 = {s.id: s for s in FolderDataset(tree).samples()}["case4"]
    assert not case4.has_lesion and case4.mask_kind == "none" and case4.extra["empty_mask_files"] == "1"
    unchecked = {s.id: s for s in FolderDataset(tree, check_empty=False).samples()}["case4"]
    assert unchecked.has_lesion


def test_a_mask_folder_holds_one_file_per_lesion(tree: Path) -> None:
    pytest.importorskip("bcedge.preprocess")
    case3 = {s.id: s for s in FolderDataset(tree).samples()}["case3"]
    assert len(case3.mask_paths) == 2
    merged = case3.load_mask((32, 24))
    assert merged.sum() == 36 + 25


def test_missing_mask_can_be_an_error(tree: Path) -> None:
    with pytest.raises(DatasetError, match="case2"):
        list(FolderDataset(tree, missing_mask="error").samples())
    with pytest.raises(ConfigError):
        FolderDataset(tree, missing_mask="ignore")  # type: ignore[arg-type]


def test_samples_csv_gives_patients_laterality_and_split(tree: Path) -> None:
    (tree / "samples.csv").write_text(
        "id,patient_id,laterality,view,split\ncase2,P1,l,cc,train\ncase3,P1,R,MLO,test\n", encoding="utf-8"
    )
    samples = {s.id: s for s in FolderDataset(tree).samples()}
    assert samples["case2"].patient_id == "P1" and samples["case2"].laterality == "L"
    assert samples["case2"].view == "CC" and samples["case2"].split == "train"
    assert samples["case10"].patient_id == "case10" and samples["case10"].split is None
    (tree / "samples.csv").write_text("id,laterality\ncase2,left\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="laterality"):
        list(FolderDataset(tree).samples())
    (tree / "samples.csv").write_text("id\nnope\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="no image"):
        list(FolderDataset(tree).samples())


def test_duplicate_stems_and_missing_images_folder(tree: Path, tmp_path: Path) -> None:
    _write(tree / "images" / "case2.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DatasetError, match="stems must be unique"):
        list(FolderDataset(tree).samples())
    with pytest.raises(DatasetError, match="images/"):
        FolderDataset(tmp_path / "nothing")
