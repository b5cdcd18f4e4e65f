"""CBIS-DDSM readers on tiny trees built in the published layouts (see cbis_trees.py)."""

from __future__ import annotations

import csv
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from cbis_trees import (
    CROP_SHAPE,
    EXPECTED_CALC_IDS,
    EXPECTED_MASS_IDS,
    EXPECTED_MISMATCHED,
    EXPECTED_MISSING,
    FULL_SHAPE,
    WRONG_SHAPE,
    Tree,
    build_jpeg_tree,
    build_tcia_tree,
    disc,
    expected_mask,
)

from bcedge.datasets.base import Sample, read_mask_file
from bcedge.datasets.cbis_ddsm import (
    Candidate,
    CbisDdsmJpeg,
    CbisDdsmTcia,
    clean_csv_path,
    image_size,
    pick_full_image,
    pick_roi_mask,
)
from bcedge.errors import ConfigError, DatasetError

TCIA_LAYOUTS = ("nbia", "classic", "metadata")


def _merge_masks_available() -> bool:
    try:
        from bcedge.preprocess import merge_masks  # noqa: F401
    except ImportError:
        return False
    return True


needs_merge_masks = pytest.mark.skipif(not _merge_masks_available(), reason="bcedge.preprocess.merge_masks not there")


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Tree]:
    base = tmp_path_factory.mktemp("cbis") / "cbis with space"
    out = {layout: build_tcia_tree(base / f"tcia {layout}", layout) for layout in TCIA_LAYOUTS}
    out["jpeg"] = build_jpeg_tree(base / "kaggle" / "archive")
    return out


def _copy(tree: Tree, tmp_path: Path) -> Path:
    dst = tmp_path / "cbis with space"
    shutil.copytree(tree.root, dst)
    return dst


def _reader(tree: Tree, root: Path | None = None, **kw: object) -> CbisDdsmTcia | CbisDdsmJpeg:
    cls = CbisDdsmJpeg if tree.layout == "kaggle-jpeg" else CbisDdsmTcia
    return cls(root or tree.root, **kw)  # type: ignore[arg-type]


def _list(reader: CbisDdsmTcia | CbisDdsmJpeg) -> list[Sample]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return list(reader.samples())


ALL_LAYOUTS = (*TCIA_LAYOUTS, "jpeg")


# --------------------------------------------------------------------------- listing


@pytest.mark.parametrize("layout", ALL_LAYOUTS)
def test_masses_listed_with_labels_split_and_true_files(trees: dict[str, Tree], layout: str) -> None:
    tree = trees[layout]
    reader = _reader(tree)
    with pytest.warns(UserWarning, match=f"skipped {EXPECTED_MISSING} CSV row"):
        samples = list(reader.samples())
    assert [s.id for s in samples] == EXPECTED_MASS_IDS  # sorted, mass CSVs only by default
    assert reader.missing == EXPECTED_MISSING
    assert any("Mass-Training_P_00009_LEFT_MLO" in m and "ROI mask" in m for m in reader.missing_rows)
    assert any("Mass-Training_P_00011_LEFT_CC" in m and "full mammogram" in m for m in reader.missing_rows)
    assert reader.size_mismatched == EXPECTED_MISMATCHED
    for s in samples:
        case = tree.cases[s.id]
        assert s.source == reader.name
        assert s.patient_id == case.pid
        assert s.split == case.split
        assert s.laterality == case.side[0]
        assert s.view == case.view
        assert s.image_path == tree.fulls[s.id]
        # The masks are the true mask files whatever the file order, series label or CSV path said.
        assert list(s.mask_paths) == tree.masks[s.id]
        assert s.mask_kind == "pixel" and s.has_lesion
        assert s.extra["abnormality_ids"] == ";".join(str(a.abn_id) for a in case.abns)
        assert s.extra["pathologies"] == ";".join(a.pathology for a in case.abns)
        crops = s.extra["crop_paths"].split(";")
        assert len(crops) == len(case.abns) and not set(crops) & {str(p) for p in s.mask_paths}
        assert all(image_size(Path(c)) == CROP_SHAPE for c in crops)
    by_id = {s.id: s for s in samples}
    assert by_id["Mass-Training_P_00001_LEFT_CC"].pathology == "malignant"
    assert by_id["Mass-Training_P_00004_RIGHT_MLO"].pathology == "benign"  # BENIGN + BENIGN_WITHOUT_CALLBACK
    assert len(by_id["Mass-Training_P_00004_RIGHT_MLO"].mask_paths) == 2
    assert by_id["Mass-Test_P_00016_LEFT_CC"].split == "test"
    assert [s.id for s in reader.samples()] == EXPECTED_MASS_IDS  # stable on a second pass


@pytest.mark.parametrize("layout", ALL_LAYOUTS)
def test_mask_files_hold_each_abnormality_disc(trees: dict[str, Tree], layout: str) -> None:
    tree = trees[layout]
    sample = next(s for s in _list(_reader(tree)) if s.id == "Mass-Training_P_00004_RIGHT_MLO")
    case = tree.cases[sample.id]
    for path, abn in zip(sample.mask_paths, case.abns, strict=True):
        got = read_mask_file(path, FULL_SHAPE)
        want = disc(FULL_SHAPE, abn.center, abn.radius)
        # DICOM masks are exact; Kaggle JPEG masks are lossy, thresholded at 127.
        assert np.count_nonzero(got != want) <= (0 if layout != "jpeg" else 0.02 * want.sum())


@needs_merge_masks
@pytest.mark.parametrize("layout", ALL_LAYOUTS)
def test_load_mask_is_union_of_both_discs(trees: dict[str, Tree], layout: str) -> None:
    tree = trees[layout]
    samples = {s.id: s for s in _list(_reader(tree))}
    for image_id, sample in samples.items():
        mammo = sample.load_image()
        assert mammo.pixels.shape == FULL_SHAPE
        assert mammo.meta.laterality == tree.cases[image_id].side[0]  # from the CSV; the files carry none
        mask = sample.load_mask(mammo.pixels.shape)
        want = expected_mask(tree.cases[image_id])
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
        assert np.count_nonzero(mask != want) <= (0 if layout != "jpeg" else 0.02 * want.sum())


@pytest.mark.parametrize("layout", ["nbia", "jpeg"])
def test_calcifications_by_option(trees: dict[str, Tree], layout: str) -> None:
    calc = _list(_reader(trees[layout], abnormality="calc"))
    assert [s.id for s in calc] == EXPECTED_CALC_IDS
    assert [s.split for s in calc] == ["test", "train"]
    assert calc[0].extra["calc_types"] == "PLEOMORPHIC" and "mass_shapes" not in calc[0].extra
    assert calc[0].extra["breast_density"] == "3"  # calc CSV header says 'breast density', mass CSV 'breast_density'
    both = _list(_reader(trees[layout], abnormality="both"))
    assert [s.id for s in both] == sorted(EXPECTED_CALC_IDS + EXPECTED_MASS_IDS)


@pytest.mark.parametrize("layout", ["classic", "jpeg"])
def test_size_mismatch_policies(trees: dict[str, Tree], layout: str) -> None:
    tree = trees[layout]
    kept = {s.id: s for s in _list(_reader(tree, size_mismatch="keep"))}
    odd = kept["Mass-Training_P_00015_RIGHT_CC"]
    assert odd.extra["mask_size_mismatch"] == "true"
    assert image_size(odd.mask_paths[0]) == WRONG_SHAPE
    with pytest.raises(DatasetError, match="mask is 44x60, image is 48x64"):
        read_mask_file(odd.mask_paths[0], FULL_SHAPE)
    with pytest.raises(DatasetError, match=r"P_00015.* is 44x60 but the image is 48x64"):
        _list(_reader(tree, size_mismatch="error"))


@pytest.mark.parametrize("layout", ["nbia", "jpeg"])
def test_strict_raises_on_first_missing_row(trees: dict[str, Tree], layout: str) -> None:
    reader = _reader(trees[layout], strict=True)
    with pytest.raises(
        DatasetError, match=r"mass_case_description_train_set\.csv:7: ROI mask of Mass-Training_P_00009"
    ):
        list(reader.samples())


def test_root_may_be_the_image_tree_or_a_manifest_folder(trees: dict[str, Tree], tmp_path: Path) -> None:
    root = _copy(trees["nbia"], tmp_path)
    # The images folder itself (CSVs one level up) ...
    assert [s.id for s in _list(CbisDdsmTcia(root / "CBIS-DDSM"))] == EXPECTED_MASS_IDS
    # ... or a download folder with NBIA's manifest-<n>/CBIS-DDSM, CSVs kept elsewhere.
    manifest = tmp_path / "download" / "manifest-1654812109500"
    manifest.mkdir(parents=True)
    shutil.move(root / "CBIS-DDSM", manifest / "CBIS-DDSM")
    assert [s.id for s in _list(CbisDdsmTcia(manifest.parent, csv_dir=root))] == EXPECTED_MASS_IDS
    with pytest.raises(DatasetError, match=r"case CSV not found: mass_case_description_train_set\.csv"):
        CbisDdsmTcia(manifest.parent)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("cls", [CbisDdsmTcia, CbisDdsmJpeg])
def test_root_missing(tmp_path: Path, cls: type) -> None:
    with pytest.raises(DatasetError, match="root folder not found"):
        cls(tmp_path / "no such dir")


def test_bad_options_are_config_errors(trees: dict[str, Tree]) -> None:
    with pytest.raises(ConfigError, match="abnormality='masses'"):
        CbisDdsmTcia(trees["nbia"].root, abnormality="masses")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="size_mismatch='resize'"):
        CbisDdsmJpeg(trees["jpeg"].root, size_mismatch="resize")  # type: ignore[arg-type]


@pytest.mark.parametrize("layout", ["nbia", "jpeg"])
def test_case_csv_missing(trees: dict[str, Tree], layout: str, tmp_path: Path) -> None:
    root = _copy(trees[layout], tmp_path)
    next(root.rglob("mass_case_description_test_set.csv")).unlink()
    with pytest.raises(DatasetError, match=r"case CSV not found: mass_case_description_test_set\.csv"):
        _reader(trees[layout], root)
    _reader(trees[layout], root, abnormality="calc")  # the calc CSVs are still all there


@pytest.mark.parametrize("layout", ["nbia", "jpeg"])
def test_malformed_case_csv_header(trees: dict[str, Tree], layout: str, tmp_path: Path) -> None:
    root = _copy(trees[layout], tmp_path)
    path = next(root.rglob("mass_case_description_train_set.csv"))
    path.write_text(path.read_text().replace("ROI mask file path", "roi path", 1))
    reader = _reader(trees[layout], root)
    with pytest.raises(DatasetError, match=r"malformed case-description CSV header, missing column\(s\) 'roi mask"):
        list(reader.samples())


def test_no_image_tree(trees: dict[str, Tree], tmp_path: Path) -> None:
    root = _copy(trees["nbia"], tmp_path)
    shutil.rmtree(root / "CBIS-DDSM")
    with pytest.raises(DatasetError, match="no CBIS-DDSM image tree"):
        CbisDdsmTcia(root)


def test_malformed_metadata_csv(trees: dict[str, Tree], tmp_path: Path) -> None:
    root = _copy(trees["metadata"], tmp_path)
    meta = root / "metadata.csv"
    meta.write_text(meta.read_text().replace("File Location", "Location", 1))
    with pytest.raises(DatasetError, match=r"malformed NBIA metadata\.csv header.*'file location'"):
        CbisDdsmTcia(root)


def test_dicom_info_missing_or_malformed(trees: dict[str, Tree], tmp_path: Path) -> None:
    root = _copy(trees["jpeg"], tmp_path)
    info = root / "csv" / "dicom_info.csv"
    text = info.read_text()
    info.write_text(text.replace("SeriesDescription", "Description", 1))
    with pytest.raises(DatasetError, match=r"malformed dicom_info\.csv header.*'seriesdescription'"):
        CbisDdsmJpeg(root)
    info.unlink()
    with pytest.raises(DatasetError, match=r"dicom_info\.csv not found"):
        CbisDdsmJpeg(root)


def test_jpeg_root_may_hold_a_cbis_ddsm_folder(trees: dict[str, Tree], tmp_path: Path) -> None:
    root = _copy(trees["jpeg"], tmp_path / "outer")
    wrapped = tmp_path / "outer2"
    wrapped.mkdir()
    shutil.move(root, wrapped / "CBIS-DDSM")
    assert [s.id for s in _list(CbisDdsmJpeg(wrapped))] == EXPECTED_MASS_IDS


# --------------------------------------------------------------------------- building blocks


def test_clean_csv_path_strips_blanks_and_line_breaks() -> None:
    assert clean_csv_path(" Mass-Training_P_00004_RIGHT_MLO_1/1.2/1.3/000001.dcm\n") == (
        "Mass-Training_P_00004_RIGHT_MLO_1/1.2/1.3/000001.dcm"
    )
    assert clean_csv_path(".\\CBIS-DDSM\\a\\b") == "CBIS-DDSM/a/b"
    assert clean_csv_path(None) == ""


def test_pick_roi_mask_by_size_not_label() -> None:
    full = (64, 48)
    mask, crop = Candidate(Path("1-2.dcm"), full, "cropped images"), Candidate(Path("1-1.dcm"), (10, 12), "ROI mask")
    assert pick_roi_mask([crop, mask], full) == (mask, "ok")
    odd = Candidate(Path("m.dcm"), (60, 44), "ROI mask images")
    assert pick_roi_mask([crop, odd], full) == (odd, "mismatch")
    # Only a crop (or nothing readable): no mask, not a mismatch.
    assert pick_roi_mask([crop], full) == (None, "none")
    assert pick_roi_mask([Candidate(Path("x.dcm"), None)], full) == (None, "none")
    # Two full-size files: the one labelled as a mask wins.
    twin = Candidate(Path("1-0.dcm"), full, "full")
    assert pick_roi_mask([twin, Candidate(Path("1-3.dcm"), full, "ROI mask images")], full)[0].path.name == "1-3.dcm"


def test_pick_full_image_prefers_label_then_size() -> None:
    small = Candidate(Path("a.dcm"), (10, 10), "full mammogram images")
    big = Candidate(Path("b.dcm"), (64, 48), "")
    assert pick_full_image([small, big]) is small
    assert pick_full_image([Candidate(Path("c.dcm"), (5, 5)), big]) is big
    assert pick_full_image([Candidate(Path("d.dcm"), None)]) is None


def test_image_size_reads_headers_only(trees: dict[str, Tree], tmp_path: Path) -> None:
    assert image_size(trees["nbia"].fulls["Mass-Training_P_00001_LEFT_CC"]) == FULL_SHAPE
    assert image_size(trees["jpeg"].fulls["Mass-Training_P_00001_LEFT_CC"]) == FULL_SHAPE
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"not a dicom")
    assert image_size(bad) is None
    trunc = tmp_path / "t.jpg"
    trunc.write_bytes(b"\xff\xd8\xff\xe0\x00")
    assert image_size(trunc) is None


def test_csv_rows_keep_order_and_line_numbers(trees: dict[str, Tree]) -> None:
    from bcedge.datasets.cbis_ddsm import read_case_csv

    path = trees["nbia"].root / "mass_case_description_train_set.csv"
    rows = read_case_csv(path, "mass", "train")
    with open(path, newline="") as fh:
        assert len(rows) == sum(1 for _ in csv.reader(fh)) - 1
    messy = [r for r in rows if r.image_id == "Mass-Training_P_00004_RIGHT_MLO"]
    assert [r.abnormality_id for r in messy] == ["1", "2"]
    assert all(r.roi_path.endswith("000001.dcm") and r.image_path.startswith("Mass-") for r in messy)
    assert messy[1].roi_subjects[0] == "Mass-Training_P_00004_RIGHT_MLO_2"
