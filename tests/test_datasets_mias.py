"""mini-MIAS reader: Info.txt parsing, bottom-left origin, merged discs, unlocated rows, real data."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from bcedge.datasets.mias import MiniMias, mias_patient_and_laterality, parse_info
from bcedge.errors import ConfigError, DatasetError

INFO = """MIAS header prose that mentions CIRC - Well-defined masses
and a NORM line that is not a row.

mdb001 G CIRC B 50 30 10
mdb002 G NORM
mdb003 F SPIC M 20 90 5
mdb003 F MISC B 70 90 6
mdb004 D CALC B 40 40 8
mdb005 F CIRC B
mdb006 D CALC M *NOTE 3*
mdb007 F ASYM B 30 60 12
mdb007 F CIRC M 60 20 7
"""


def _disc(shape: tuple[int, int], circles: tuple[tuple[float, float, float], ...]) -> np.ndarray:
    out = np.zeros(shape, np.uint8)
    for row, col, radius in circles:
        cv2.circle(out, (round(col), round(row)), round(radius), 1, thickness=-1)
    return out


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    """A MIAS-like tree of 7 images, 120 rows x 100 cols (not square, to catch H vs W)."""
    root = tmp_path / "mini mias"
    (root / "images").mkdir(parents=True)
    (root / "Info.txt").write_text(INFO, encoding="latin-1")
    for n in range(1, 8):
        img = np.full((120, 100), 10 * n, np.uint8)
        cv2.imwrite(str(root / "images" / f"mdb{n:03d}.png"), img)
    return root


def test_parse_info_rows_and_missing_coordinates(tree: Path) -> None:
    rows = parse_info(tree / "Info.txt")
    assert [r.refnum for r in rows] == ["mdb001", "mdb002", "mdb003", "mdb003", "mdb004", "mdb005", "mdb006"] + [
        "mdb007"
    ] * 2
    assert rows[0].x == 50 and rows[0].y == 30 and rows[0].radius == 10 and rows[0].severity == "B"
    assert rows[1].cls == "NORM" and rows[1].severity is None and not rows[1].located
    assert rows[5].cls == "CIRC" and not rows[5].located
    assert rows[6].cls == "CALC" and rows[6].severity == "M" and not rows[6].located


def test_parse_info_rejects_a_file_without_rows(tmp_path: Path) -> None:
    bad = tmp_path / "Info.txt"
    bad.write_text("nothing here\n")
    with pytest.raises(DatasetError, match="no 'mdbNNN"):
        parse_info(bad)


def test_bottom_left_origin_uses_the_real_image_height(tree: Path) -> None:
    samples = {s.id: s for s in MiniMias(tree).samples()}
    # y = 30 from the bottom of a 120-row image -> row 89; x is the column.
    assert samples["mdb001"].circles == ((89.0, 50.0, 10.0),)
    mask = _disc((120, 100), samples["mdb001"].circles)
    ys, xs = np.nonzero(mask)
    assert ys.mean() == pytest.approx(89, abs=0.5) and xs.mean() == pytest.approx(50, abs=0.5)
    assert mask[:60].sum() == 0  # nothing in the top half: the origin is not top-left


def test_several_rows_become_several_discs_with_the_worst_severity(tree: Path) -> None:
    sample = {s.id: s for s in MiniMias(tree).samples()}["mdb003"]
    assert sample.circles == ((29.0, 20.0, 5.0), (29.0, 70.0, 6.0))
    assert sample.mask_kind == "circle" and sample.has_lesion
    assert sample.pathology == "malignant"
    assert sample.extra["classes"] == "SPIC,MISC"


def test_normal_and_non_mass_images_have_empty_masks(tree: Path) -> None:
    samples = {s.id: s for s in MiniMias(tree).samples()}
    assert samples["mdb002"].mask_kind == "none" and samples["mdb002"].pathology == "normal"
    calc = samples["mdb004"]
    assert calc.mask_kind == "none" and not calc.has_lesion and calc.extra["classes"] == "CALC"
    # A mass row and an ASYM row: only the mass is drawn by default.
    assert samples["mdb007"].circles == ((99.0, 60.0, 7.0),)


def test_include_other_draws_calc_arch_asym(tree: Path) -> None:
    samples = {s.id: s for s in MiniMias(tree, include_other=True).samples()}
    assert samples["mdb004"].circles == ((79.0, 40.0, 8.0),)
    assert len(samples["mdb007"].circles) == 2
    # The unlocated CALC row now marks an unlocated lesion.
    assert samples["mdb006"].lesion_unlocated


def test_unlocated_mass_is_kept_flagged_or_dropped(tree: Path) -> None:
    kept = {s.id: s for s in MiniMias(tree).samples()}
    unlocated = kept["mdb005"]
    assert unlocated.lesion_unlocated and not unlocated.has_lesion
    assert unlocated.mask_kind == "none" and unlocated.pathology == "benign"
    assert not kept["mdb002"].lesion_unlocated
    dropped = [s.id for s in MiniMias(tree, unlocated="drop").samples()]
    assert "mdb005" not in dropped and len(dropped) == len(kept) - 1
    with pytest.raises(ConfigError):
        MiniMias(tree, unlocated="maybe")  # type: ignore[arg-type]


def test_patients_pair_consecutive_films_odd_right_even_left(tree: Path) -> None:
    assert mias_patient_and_laterality("mdb001") == ("mias-001", "R")
    assert mias_patient_and_laterality("mdb002") == ("mias-001", "L")
    assert mias_patient_and_laterality("mdb322") == ("mias-161", "L")
    samples = list(MiniMias(tree).samples())
    assert [s.id for s in samples] == sorted(s.id for s in samples)
    assert all(s.view == "MLO" and s.source == "mini-mias" for s in samples)
    assert all(s.extra["pixel_spacing_mm"] == "0.2" for s in samples)


def test_pgm_images_in_the_root_are_found(tmp_path: Path) -> None:
    root = tmp_path / "pgm tree"
    root.mkdir()
    (root / "Info.txt").write_text("mdb001 G CIRC B 5 5 2\nmdb002 G NORM\n")
    for n in (1, 2):
        cv2.imwrite(str(root / f"mdb{n:03d}.pgm"), np.zeros((16, 12), np.uint8))
    samples = list(MiniMias(root).samples())
    assert [s.image_path.suffix for s in samples] == [".pgm", ".pgm"]
    assert samples[0].circles == ((10.0, 5.0, 2.0),)


def test_missing_image_or_info_is_a_dataset_error(tree: Path, tmp_path: Path) -> None:
    (tree / "images" / "mdb003.png").unlink()
    with pytest.raises(DatasetError, match="mdb003"):
        list(MiniMias(tree).samples())
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match=r"Info\.txt"):
        MiniMias(empty)


# --------------------------------------------------------------------------- real data

_DATA = os.environ.get("BCEDGE_DATA")
needs_data = pytest.mark.skipif(not _DATA, reason="BCEDGE_DATA is not set (path to the shared real data)")


@pytest.fixture(scope="module")
def real() -> list:
    root = Path(_DATA or "") / "mini-mias"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    return list(MiniMias(root).samples())


@needs_data
def test_real_counts(real: list) -> None:
    assert len(real) == 322
    assert sum(s.has_lesion for s in real) == 55
    assert sum(len(s.circles) for s in real) == 58
    assert [s.id for s in real if s.lesion_unlocated] == ["mdb059"]
    assert len({s.patient_id for s in real}) == 161
    assert sum(s.mask_kind == "none" for s in real) == 267


@needs_data
def test_real_discs_lie_on_the_breast_and_the_top_left_reading_would_not(real: list) -> None:
    """Every disc covers breast tissue; reading y from the top would put some discs off the breast."""
    on_breast: list[float] = []
    flipped: list[float] = []
    for sample in (s for s in real if s.has_lesion):
        img = cv2.imread(str(sample.image_path), cv2.IMREAD_GRAYSCALE)
        tissue = img > 40
        height = img.shape[0]
        for row, col, radius in sample.circles:
            disc = _disc(img.shape, ((row, col, radius),)).astype(bool)
            on_breast.append(tissue[disc].mean())
            wrong = _disc(img.shape, ((height - 1 - row, col, radius),)).astype(bool)
            flipped.append(tissue[wrong].mean() if wrong.any() else 0.0)
    assert min(on_breast) > 0.8
    assert min(flipped) < 0.1


@needs_data
def test_real_laterality_matches_the_breast_side(real: list) -> None:
    """Odd (R) films have the breast on the image's right half, even (L) films on the left."""
    for sample in real[:40]:
        img = cv2.imread(str(sample.image_path), cv2.IMREAD_GRAYSCALE).astype(np.float32)
        half = img.shape[1] // 2
        right_heavier = img[:, half:].mean() > img[:, :half].mean()
        assert right_heavier == (sample.laterality == "R"), sample.id


@needs_data
def test_real_mask_through_sample_load_mask(real: list) -> None:
    pytest.importorskip("bcedge.preprocess")
    sample = next(s for s in real if s.id == "mdb005")  # two overlapping discs
    mask = sample.load_mask((1024, 1024))
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    np.testing.assert_array_equal(mask, _disc((1024, 1024), sample.circles))
