"""CDD-CESM reader: names, colour -> pathology, layouts, laterality policy, real data."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from bcedge.datasets.base import read_mask_file
from bcedge.datasets.cdd_cesm import CddCesm, mask_colour_pathology, parse_name
from bcedge.errors import ConfigError, DatasetError

RED, GREEN, WHITE = (0, 0, 255), (0, 255, 0), (255, 255, 255)  # BGR, as OpenCV writes


def _image(path: Path, shape: tuple[int, int] = (64, 48)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.zeros((*shape, 3), np.uint8)
    img[:, : shape[1] // 2] = 120  # breast on the left half
    cv2.imwrite(str(path), img)


def _mask(path: Path, discs: list[tuple[tuple[int, int, int], tuple[int, int], int]], shape=(64, 48)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.zeros((*shape, 3), np.uint8)
    for colour, centre, radius in discs:
        # Anti-aliased edges like the published masks.
        cv2.circle(img, centre, radius, colour, thickness=-1, lineType=cv2.LINE_AA)
    cv2.imwrite(str(path), img)


@pytest.fixture()
def sets_tree(tmp_path: Path) -> Path:
    root = tmp_path / "cdd cesm"
    a, b = root / "setA", root / "setB"
    _image(a / "images" / "flipped_P10_L_DM_CC.jpg")
    _mask(a / "masks" / "flipped_P10_L_DM_CC.png", [(RED, (10, 20), 6)])
    _image(a / "images" / "flipped_P9_R_DM_MLO.jpg")
    _mask(a / "masks" / "flipped_P9_R_DM_MLO.png", [(GREEN, (30, 40), 8)])
    _image(a / "images" / "flipped_P10_L_CM_CC.jpg")
    _mask(a / "masks" / "flipped_P10_L_CM_CC.png", [(GREEN, (30, 40), 8), (RED, (10, 10), 5)])
    _image(b / "images" / "flipped_P11_R_DM_CC.jpg")
    _mask(b / "masks" / "flipped_P11_R_DM_CC.jpg", [(WHITE, (20, 20), 9)])
    (a / "images" / "notes.txt").write_text("not an image")
    return root


def test_parse_name() -> None:
    assert parse_name("flipped_P108_L_DM_CC") == {
        "copy": "flipped",
        "flipped": "true",
        "patient": "108",
        "lat": "L",
        "kind": "DM",
        "view": "CC",
    }
    assert parse_name("P7_R_CM_MLO")["flipped"] == "false"
    assert parse_name("P7_X_CM_MLO") is None and parse_name("mdb001") is None


def test_colour_decides_pathology(sets_tree: Path) -> None:
    a = sets_tree / "setA" / "masks"
    assert mask_colour_pathology(a / "flipped_P10_L_DM_CC.png") == ("malignant", "red")
    assert mask_colour_pathology(a / "flipped_P9_R_DM_MLO.png") == ("benign", "green")
    assert mask_colour_pathology(a / "flipped_P10_L_CM_CC.png") == ("malignant", "red+green")
    assert mask_colour_pathology(sets_tree / "setB" / "masks" / "flipped_P11_R_DM_CC.jpg") == (None, "grey")


def test_sets_layout_dm_default_sorted_numerically(sets_tree: Path) -> None:
    reader = CddCesm(sets_tree)
    assert reader.layout == "sets"
    samples = list(reader.samples())
    assert [s.id for s in samples] == ["P9_R_DM_MLO", "P10_L_DM_CC", "P11_R_DM_CC"]
    first = samples[0]
    assert first.patient_id == "cdd-cesm-P9" and first.view == "MLO" and first.mask_kind == "pixel"
    assert first.pathology == "benign" and first.extra["set"] == "setA"
    assert samples[2].pathology is None and samples[2].extra["set"] == "setB"
    assert {s.extra["kind"] for s in samples} == {"DM"}


def test_kind_selects_low_energy_or_contrast(sets_tree: Path) -> None:
    assert [s.id for s in CddCesm(sets_tree, kind="CM").samples()] == ["P10_L_CM_CC"]
    assert len(list(CddCesm(sets_tree, kind="both").samples())) == 4
    with pytest.raises(ConfigError):
        CddCesm(sets_tree, kind="XX")  # type: ignore[arg-type]


def test_masks_threshold_anti_aliased_and_jpeg(sets_tree: Path) -> None:
    samples = {s.id: s for s in CddCesm(sets_tree).samples()}
    red = read_mask_file(samples["P10_L_DM_CC"].mask_paths[0], (64, 48))
    hard = np.zeros((64, 48), np.uint8)
    cv2.circle(hard, (10, 20), 6, 1, thickness=-1)
    # Thresholding the anti-aliased disc at half intensity gives the hard disc up to its rim.
    assert red[hard == 1].mean() > 0.95 and np.logical_xor(red, hard).sum() <= 2 * np.pi * 6
    jpeg = read_mask_file(samples["P11_R_DM_CC"].mask_paths[0], (64, 48))
    hard = np.zeros((64, 48), np.uint8)
    cv2.circle(hard, (20, 20), 9, 1, thickness=-1)
    assert np.logical_xor(jpeg, hard).sum() <= 2 * np.pi * 9 and jpeg[20, 20] == 1 and jpeg[0, 0] == 0


def test_flipped_files_keep_their_laterality_and_record_the_flip(sets_tree: Path) -> None:
    sample = next(iter(CddCesm(sets_tree).samples()))
    assert sample.laterality == "R"
    assert sample.extra["image_flipped"] == "true" and sample.extra["name_laterality"] == "R"
    untrusted = next(iter(CddCesm(sets_tree, trust_laterality=False).samples()))
    assert untrusted.laterality is None and untrusted.extra["name_laterality"] == "R"


def test_missing_mask_in_sets_layout_is_an_error(sets_tree: Path) -> None:
    (sets_tree / "setA" / "masks" / "flipped_P9_R_DM_MLO.png").unlink()
    with pytest.raises(DatasetError, match="no mask"):
        list(CddCesm(sets_tree).samples())


def test_a_view_in_two_sets_is_counted_once_from_the_first(sets_tree: Path) -> None:
    _image(sets_tree / "setB" / "images" / "flipped_P9_R_DM_MLO.jpg")
    _mask(sets_tree / "setB" / "masks" / "flipped_P9_R_DM_MLO.png", [(WHITE, (5, 5), 3)])
    views = [s for s in CddCesm(sets_tree).samples() if s.id == "P9_R_DM_MLO"]
    assert len(views) == 1 and views[0].extra["set"] == "setA"
    assert views[0].extra["other_copies"] == "setB/flipped_P9_R_DM_MLO.jpg"


def _asymmetric(path: Path, mask_path: Path, transform=lambda a: a) -> np.ndarray:
    """An image with a bright top-left corner and its mask (a disc), as ``transform`` stores them."""
    img = np.zeros((64, 48), np.uint8)
    img[:, :30] = 100
    img[:10, :10] = 250
    mask = np.zeros((64, 48), np.uint8)
    cv2.circle(mask, (12, 40), 6, 255, thickness=-1)
    path.parent.mkdir(parents=True, exist_ok=True)
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), transform(img))
    cv2.imwrite(str(mask_path), transform(mask))
    return img


def test_copies_merge_to_one_view_in_the_acquired_orientation(tmp_path: Path) -> None:
    """``flipped_`` is upside down, ``mirrored_`` left-right: each is undone on load."""
    first, extra = tmp_path / "cdd", tmp_path / "extra"
    truth = _asymmetric(
        first / "images" / "flipped_P1_L_DM_CC.png", first / "masks" / "flipped_P1_L_DM_CC.png", np.flipud
    )
    _asymmetric(extra / "images" / "mirrored_P2_L_DM_CC.png", extra / "masks" / "mirrored_P2_L_DM_CC.png", np.fliplr)
    _asymmetric(extra / "images" / "P2_L_DM_CC.png", extra / "masks" / "P2_L_DM_CC.png")
    _asymmetric(extra / "images" / "mirrored_P3_L_DM_CC.png", extra / "masks" / "mirrored_P3_L_DM_CC.png", np.fliplr)
    _asymmetric(extra / "images" / "P1_L_DM_CC.png", extra / "masks" / "P1_L_DM_CC.png")  # also in the first root
    samples = {s.id: s for s in CddCesm(first, roots=[extra]).samples()}
    assert sorted(samples) == ["P1_L_DM_CC", "P2_L_DM_CC", "P3_L_DM_CC"]
    assert samples["P1_L_DM_CC"].undo == "vflip" and samples["P1_L_DM_CC"].extra["copy"] == "flipped"
    assert (
        samples["P2_L_DM_CC"].undo == ""
        and "extra/mirrored_P2_L_DM_CC.png" in samples["P2_L_DM_CC"].extra["other_copies"]
    )
    assert samples["P3_L_DM_CC"].undo == "hflip"
    for sample in samples.values():
        pixels = sample.load_image().pixels
        np.testing.assert_allclose(pixels, truth / 255.0, atol=1e-6)
        mask = sample.load_mask(pixels.shape)
        assert mask[40, 12] == 1 and mask[40, 35] == 0 and mask[23, 12] == 0, sample.id
        assert sample.laterality == "L" and sample.patient_id == f"cdd-cesm-{sample.id.split('_')[0]}"
    # As stored (session 1's reader): no undo, and only flipped_ copies trust the name.
    stored = {s.id: s for s in CddCesm(first, roots=[extra], restore_orientation=False).samples()}
    assert stored["P3_L_DM_CC"].undo == "" and stored["P3_L_DM_CC"].laterality is None


@pytest.fixture()
def tcia_tree(tmp_path: Path) -> Path:
    root = tmp_path / "CDD CESM tcia"
    low = root / "Low energy images of CDD-CESM"
    _image(low / "P1_L_DM_MLO.jpg")
    _image(low / "P1_R_DM_MLO.jpg")
    _image(low / "P2_L_DM_CC.jpg")
    _image(low / "P3_R_DM_CC.jpg")
    _image(root / "Subtracted images of CDD-CESM" / "P1_L_CM_MLO.jpg")
    rows = [
        ("P1_L_DM_MLO.jpg", 0, {"name": "polygon", "all_points_x": [5, 20, 20, 5], "all_points_y": [5, 5, 20, 20]}),
        ("P1_L_DM_MLO.jpg", 1, {"name": "circle", "cx": 35, "cy": 50, "r": 4}),
        ("P2_L_DM_CC.jpg", 0, {"name": "ellipse", "cx": 20, "cy": 30, "rx": 8, "ry": 4, "theta": 0.0}),
        ("P3_R_DM_CC.jpg", 0, {"name": "point", "cx": 20, "cy": 30}),
    ]
    with open(root / "Radiology_hand_drawn_segmentations_v2.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["#filename", "file_size", "region_id", "region_shape_attributes", "region_attributes"])
        for name, rid, shape in rows:
            writer.writerow([name, 1, rid, json.dumps(shape), "{}"])
    with open(root / "annotations.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["Image_name", "Patient_ID", "Pathology Classification/ Follow up"])
        writer.writerows(
            [
                ["P1_L_DM_MLO", 1, "Malignant"],
                ["P1_R_DM_MLO", 1, "Normal"],
                ["P2_L_DM_CC", 2, "Benign"],
                ["P3_R_DM_CC", 3, "Benign"],
            ]
        )
    return root


def test_tcia_layout_renders_via_regions_and_reads_the_label_table(tcia_tree: Path) -> None:
    reader = CddCesm(tcia_tree, render_dir=tcia_tree.parent / "rendered masks")
    assert reader.layout == "tcia"
    samples = {s.id: s for s in reader.samples()}
    assert list(samples) == ["P1_L_DM_MLO", "P1_R_DM_MLO", "P2_L_DM_CC", "P3_R_DM_CC"]
    p1 = samples["P1_L_DM_MLO"]
    assert p1.pathology == "malignant" and p1.mask_kind == "pixel"
    mask = read_mask_file(p1.mask_paths[0], (64, 48))
    assert mask[5:21, 5:21].all() and mask[50, 35] == 1 and mask.sum() == 16 * 16 + (mask[44:57, 29:42].sum())
    assert mask[30, 30] == 0
    ellipse = read_mask_file(samples["P2_L_DM_CC"].mask_paths[0], (64, 48))
    ys, xs = np.nonzero(ellipse)
    assert xs.max() - xs.min() == 16 and ys.max() - ys.min() == 8  # rx along columns, ry along rows
    normal = samples["P1_R_DM_MLO"]
    assert normal.pathology == "normal" and normal.mask_kind == "none" and not normal.lesion_unlocated
    # Benign with only a point annotation: a lesion without an extent.
    point_only = samples["P3_R_DM_CC"]
    assert point_only.lesion_unlocated and point_only.extra["point_annotations"] == "1"
    # Originals are not verified for orientation: laterality left to the image.
    assert p1.laterality is None and p1.extra["name_laterality"] == "L" and p1.extra["image_flipped"] == "false"
    # Rendered masks are reused, not redrawn.
    before = p1.mask_paths[0].stat().st_mtime_ns
    again = {s.id: s for s in reader.samples()}["P1_L_DM_MLO"]
    assert again.mask_paths == p1.mask_paths and p1.mask_paths[0].stat().st_mtime_ns == before


def test_tcia_layout_with_a_mask_folder(tcia_tree: Path) -> None:
    masks = tcia_tree / "masks"
    masks.mkdir()
    _mask(masks / "P3_R_DM_CC_1.png", [(WHITE, (10, 10), 3)])
    _mask(masks / "P3_R_DM_CC_2.png", [(WHITE, (30, 30), 3)])
    sample = {s.id: s for s in CddCesm(tcia_tree).samples()}["P3_R_DM_CC"]
    assert [p.name for p in sample.mask_paths] == ["P3_R_DM_CC_1.png", "P3_R_DM_CC_2.png"]
    assert not sample.lesion_unlocated
    cm = list(CddCesm(tcia_tree, kind="CM").samples())
    assert [s.id for s in cm] == ["P1_L_CM_MLO"]


def test_empty_root_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no CDD-CESM"):
        list(CddCesm(tmp_path).samples())
    with pytest.raises(DatasetError, match="not found"):
        CddCesm(tmp_path / "absent")


# --------------------------------------------------------------------------- real data

_DATA = os.environ.get("BCEDGE_DATA")
needs_data = pytest.mark.skipif(not _DATA, reason="BCEDGE_DATA is not set (path to the shared real data)")


def _root() -> Path:
    root = Path(_DATA or "") / "cdd-cesm"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    return root


@needs_data
def test_real_counts_and_pathology() -> None:
    dm = list(CddCesm(_root()).samples())
    assert len(dm) == 25 and len({s.patient_id for s in dm}) == 25
    assert all(s.has_lesion and s.mask_kind == "pixel" for s in dm)
    path = {p: sum(s.pathology == p for s in dm) for p in ("malignant", "benign", None)}
    assert path == {"malignant": 9, "benign": 7, None: 9}
    assert all(s.pathology is None for s in dm if s.extra["set"] == "setB")
    assert len(list(CddCesm(_root(), kind="CM").samples())) == 19
    both = list(CddCesm(_root(), kind="both").samples())
    assert len(both) == 44 and len({s.patient_id for s in both}) == 41


@needs_data
def test_real_chest_wall_is_on_the_side_the_laterality_says() -> None:
    """After the source's flip, L images have the chest wall on the left edge, R on the right.

    This is what makes it safe to keep the file-name laterality for ``flipped_`` files.
    The chest wall is the tissue edge that is straight (tissue fills the column); the
    nipple side tapers off.
    """
    for sample in CddCesm(_root(), kind="both").samples():
        grey = cv2.imread(str(sample.image_path), cv2.IMREAD_GRAYSCALE)
        fill = (grey > 15).mean(axis=0)
        cols = np.flatnonzero(fill > 0.05)
        left, right = fill[cols[0] + 3], fill[cols[-1] - 3]
        assert ("L" if left > right else "R") == sample.laterality, sample.id


@needs_data
def test_real_two_folders_count_each_view_once_and_restore_orientation() -> None:
    """The counts of the shared data's README: 90 views in the extra folder, 72 DM views in all."""
    extra = Path(_DATA or "") / "cdd-cesm-extra"
    if not extra.is_dir():
        pytest.skip(f"{extra} not found")
    only_extra = list(CddCesm(extra, kind="both").samples())
    assert len(only_extra) == 90 and sum(s.extra["kind"] == "DM" for s in only_extra) == 50
    both = list(CddCesm(_root(), kind="both", roots=[extra]).samples())
    assert len(both) == 44 + 87 and sum(s.extra["kind"] == "DM" for s in both) == 25 + 47
    # P119_L_DM_MLO exists as itself and as mirrored_: the restored copy equals the original.
    mirrored = CddCesm(extra, kind="DM", trust_laterality=None)
    view = next(s for s in mirrored.samples() if s.id == "P119_L_DM_MLO")
    assert view.undo == "" and "cdd-cesm-extra/mirrored_P119_L_DM_MLO.jpg" in view.extra["other_copies"]
    from dataclasses import replace

    alt = replace(view, image_path=extra / "images" / "mirrored_P119_L_DM_MLO.jpg", undo="hflip")
    assert np.abs(alt.load_image().pixels - view.load_image().pixels).mean() < 2 / 255


@needs_data
def test_real_masks_match_their_images() -> None:
    for sample in CddCesm(_root(), kind="both").samples():
        mask = read_mask_file(sample.mask_paths[0], (512, 512))
        assert mask.any(), sample.id
