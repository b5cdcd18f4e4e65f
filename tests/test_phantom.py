"""Tests for bcedge.phantom: deterministic synthetic MG phantoms, their masks and the set writer."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest

from bcedge.dicom import read_mammogram
from bcedge.errors import ConfigError, InputError
from bcedge.phantom import DETECTORS, MASS_SHAPES, Phantom, generate, make_phantom

SMALL = 0.15


def _ring(mask: np.ndarray, width_px: int) -> np.ndarray:
    """Pixels within ``width_px`` of ``mask`` but outside it."""
    k = 2 * width_px + 1
    return (cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))) > 0) & (mask == 0)


def _max_feret_mm(mask: np.ndarray, spacing: float) -> float:
    """Largest distance between two pixel centres of ``mask``, in mm (plus one pixel)."""
    pts = np.argwhere(mask > 0).astype(np.float64)
    hull = cv2.convexHull(pts[:, ::-1].astype(np.float32)).reshape(-1, 2)
    d = np.sqrt(((hull[:, None, :] - hull[None, :, :]) ** 2).sum(-1)).max()
    return float((d + 1.0) * spacing)


def test_same_seed_same_pixels_and_tags() -> None:
    a = make_phantom(7, scale=SMALL)
    b = make_phantom(7, scale=SMALL)
    assert a.stored.tobytes() == b.stored.tobytes()
    assert np.array_equal(a.mask, b.mask)
    assert a.tags == b.tags
    assert a.masses == b.masses
    c = make_phantom(8, scale=SMALL)
    assert c.stored.shape != a.stored.shape or not np.array_equal(c.stored, a.stored)


def test_fixing_an_option_keeps_the_rest_of_the_draw() -> None:
    drawn = make_phantom(3, scale=SMALL)
    other = "R" if drawn.tags.laterality == "L" else "L"
    flipped = make_phantom(3, scale=SMALL, laterality=other)
    # Same anatomy, mirrored: the breast silhouettes are left-right images of each other.
    assert np.array_equal(flipped.breast, drawn.breast[:, ::-1])
    assert [m["diameter_mm"] for m in flipped.masses] == [m["diameter_mm"] for m in drawn.masses]
    for n in range(4):
        fixed = make_phantom(3, scale=SMALL, n_masses=n)
        assert np.array_equal(fixed.breast, drawn.breast)
        assert len(fixed.masses) == n


@pytest.mark.parametrize("seed", range(6))
def test_shapes_dtypes_and_masses_inside_breast(seed: int) -> None:
    ph = make_phantom(seed, scale=SMALL, n_masses=3)
    h, w = ph.stored.shape
    assert ph.stored.dtype == np.uint16 and ph.mask.dtype == np.uint8
    for arr in (ph.mask, ph.breast, ph.pectoral, ph.labels):
        assert arr.shape == (h, w) and arr.dtype == np.uint8
        assert set(np.unique(arr)) <= {0, 1}
    assert int(ph.stored.max()) <= 2**ph.tags.bits_stored - 1
    assert 1 <= len(ph.masses) <= 3
    # Masses lie inside the breast and off the pectoral muscle.
    assert ph.mask.any()
    assert not (ph.mask & (1 - ph.breast)).any()
    assert not (ph.mask & ph.pectoral).any()
    spacing = ph.spacing_mm
    for m in ph.masses:
        assert m["shape"] in MASS_SHAPES
        assert 5.0 <= m["diameter_mm"] <= 30.0
        assert m["area_px"] > 0
        r, c = (round(v) for v in m["centre"])
        assert ph.breast[r, c] == 1 and ph.mask[r, c] == 1
        assert m["centre_mm"] == pytest.approx(((r + 0.5) * spacing, (c + 0.5) * spacing), abs=spacing)


def test_mass_diameter_in_mm_matches_mask() -> None:
    """Diameters are in mm: the drawn core spans diameter_mm at two very different scales."""
    shapes = [("round", 8.0), ("oval", 20.0), ("lobulated", 14.0)]
    for scale in (0.15, 0.5):
        ph = make_phantom(21, scale=scale, masses=shapes)
        assert [m["shape"] for m in ph.masses] == [s for s, _ in shapes]
        n, labels = cv2.connectedComponents(ph.mask)
        assert n - 1 == len(shapes)
        for m in ph.masses:
            r, c = (round(v) for v in m["centre"])
            one = (labels == labels[r, c]).astype(np.uint8)
            measured = _max_feret_mm(one, ph.spacing_mm)
            assert measured == pytest.approx(m["diameter_mm"], abs=2.0 * ph.spacing_mm + 0.05 * m["diameter_mm"])


def test_scale_keeps_millimetres() -> None:
    full = make_phantom(5, scale=0.5, detector="70um")
    small = make_phantom(5, scale=0.1, detector="70um")
    assert full.stored.shape == (1664, 1280) and full.spacing_mm == pytest.approx(0.14)
    assert small.stored.shape == (333, 256) and small.spacing_mm == pytest.approx(0.7)
    assert [m["centre_mm"] for m in small.masses] == [m["centre_mm"] for m in full.masses]
    # Breast area in mm^2 agrees within a couple of percent.
    area_full = full.breast.sum() * full.spacing_mm**2
    area_small = small.breast.sum() * small.spacing_mm**2
    assert area_small == pytest.approx(area_full, rel=0.03)


def test_views_pectoral_and_chest_wall_side() -> None:
    for lat in ("L", "R"):
        mlo = make_phantom(2, scale=SMALL, view="MLO", laterality=lat)
        cc = make_phantom(2, scale=SMALL, view="CC", laterality=lat)
        h, w = mlo.stored.shape
        assert not cc.pectoral.any()
        assert mlo.pectoral.sum() > 0.03 * mlo.breast.sum()
        # The pectoral is in the top corner at the chest wall; the chest wall is the breast's side edge.
        rows, _ = np.nonzero(mlo.pectoral)
        assert rows.mean() < 0.4 * h
        wall = 0 if lat == "L" else w - 1
        far = w - 1 if lat == "L" else 0
        assert mlo.pectoral[0, wall] == 1
        for ph in (cc, mlo):
            assert ph.breast[:, wall].sum() > 0.5 * h  # breast leans on the chest wall edge
            assert not ph.breast[:, far].any()  # and does not reach the opposite edge
            orient = ph.tags.extra["PatientOrientation"]
            assert orient[0] == ("A" if lat == "L" else "P")


def test_labels_outside_breast() -> None:
    seen = 0
    for seed in range(4):
        ph = make_phantom(seed, scale=0.2, labels=True)
        assert not (ph.labels & ph.breast).any()
        if ph.labels.any():
            seen += 1
            # Separated from the breast by a gap (the artefact remover can drop them as components).
            assert not (_ring(ph.breast, 3) & (ph.labels > 0)).any()
        assert not make_phantom(seed, scale=0.2, labels=False).labels.any()
    assert seen >= 3


@pytest.mark.parametrize(
    ("photometric", "bits"), [("MONOCHROME1", 12), ("MONOCHROME2", 14), ("MONOCHROME1", 16), ("MONOCHROME2", 12)]
)
def test_read_back_through_reader(tmp_path: Path, photometric: str, bits: int) -> None:
    ph = make_phantom(11, scale=0.2, photometric=photometric, bits_stored=bits, n_masses=2, labels=True)
    path = ph.write(tmp_path / "with space" / "ph.dcm")
    mammo = read_mammogram(path)
    meta = mammo.meta
    assert meta.modality == "MG"
    assert (meta.laterality, meta.view) == (ph.tags.laterality, ph.tags.view)
    assert meta.pixel_spacing_mm == pytest.approx((ph.spacing_mm, ph.spacing_mm), rel=1e-9)
    assert meta.bits_stored == bits and meta.photometric == photometric
    assert meta.inverted == (photometric == "MONOCHROME1")
    assert meta.presentation_lut_shape == ("INVERSE" if photometric == "MONOCHROME1" else "IDENTITY")
    assert meta.window_source == "window"
    px = mammo.pixels
    breast, background = ph.breast > 0, (ph.breast == 0) & (ph.labels == 0)
    assert np.median(px[background]) < 0.03
    assert 0.15 < np.median(px[breast]) < 0.8
    for m in ph.masses:
        r, c = (round(v) for v in m["centre"])
        _, comp = cv2.connectedComponents(ph.mask)
        core = (comp == comp[r, c]).astype(np.uint8)
        ring = _ring(core, max(2, round(4.0 / ph.spacing_mm))) & breast & (ph.mask == 0)
        assert px[core > 0].mean() > px[ring].mean() + 0.03
    # Both photometric layouts display the same image.
    ds = pydicom.dcmread(path)
    assert ds.PatientOrientation[0] in {"A", "P"}
    assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID


def test_photometric_layouts_display_alike(tmp_path: Path) -> None:
    one = make_phantom(4, scale=SMALL, photometric="MONOCHROME1", bits_stored=14)
    two = make_phantom(4, scale=SMALL, photometric="MONOCHROME2", bits_stored=14)
    assert np.array_equal(one.stored, (2**14 - 1) - two.stored.astype(np.int64))
    a = read_mammogram(one.write(tmp_path / "m1.dcm")).pixels
    b = read_mammogram(two.write(tmp_path / "m2.dcm")).pixels
    assert np.abs(a - b).max() < 1e-3


def test_bad_options_raise_config_error() -> None:
    for kwargs in (
        {"laterality": "X"},
        {"view": "ML"},
        {"scale": 0.0},
        {"scale": 1.5},
        {"scale": 0.01},
        {"n_masses": 4},
        {"bits_stored": 10},
        {"photometric": "RGB"},
        {"density": 2.0},
        {"masses": [("star", 10.0)]},
        {"masses": [("round", 40.0)]},
    ):
        with pytest.raises(ConfigError):
            make_phantom(0, **kwargs)
    with pytest.raises(ConfigError):
        make_phantom(-1)
    with pytest.raises(ConfigError):
        generate("unused", count=0)


def test_generate_layout_and_reproducibility(tmp_path: Path) -> None:
    out_a, out_b = tmp_path / "with space" / "a", tmp_path / "b"
    paths = generate(out_a, count=7, seed=3, scale=0.1)
    assert len(paths) == 7 and all(p.parent == out_a / "images" and p.suffix == ".dcm" for p in paths)
    with open(out_a / "phantoms.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["id"] for r in rows] == [p.stem for p in paths]
    assert len({r["id"] for r in rows}) == 7
    for row, path in zip(rows, paths, strict=True):
        mask = cv2.imread(str(out_a / "masks" / f"{path.stem}.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (int(row["rows"]), int(row["cols"])) and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 255}
        assert (mask > 0).any() == (int(row["n_masses"]) > 0)
        meta = read_mammogram(path).meta
        assert (meta.laterality, meta.view, meta.photometric) == (row["laterality"], row["view"], row["photometric"])
        assert (meta.rows, meta.columns, meta.bits_stored) == (
            int(row["rows"]),
            int(row["cols"]),
            int(row["bits_stored"]),
        )
        assert meta.pixel_spacing_mm[0] == pytest.approx(float(row["spacing_mm"]))
        diameters = [float(d) for d in row["mass_diameters_mm"].split(";") if d]
        assert len(diameters) == int(row["n_masses"]) and all(5.0 <= d <= 30.0 for d in diameters)
    # Patients: some have both views of one breast, so patient-level splits mean something.
    by_patient: dict[str, list[tuple[str, str]]] = {}
    for row in rows:
        by_patient.setdefault(row["patient_id"], []).append((row["laterality"], row["view"]))
    assert any(
        {("L", "CC"), ("L", "MLO")} <= set(v) or {("R", "CC"), ("R", "MLO")} <= set(v) for v in by_patient.values()
    )
    assert len(by_patient) < len(rows)
    # Same seed: byte-identical files, UIDs included.
    generate(out_b, count=7, seed=3, scale=0.1)
    for path in paths:
        assert (out_b / "images" / path.name).read_bytes() == path.read_bytes()
        assert (out_b / "masks" / f"{path.stem}.png").read_bytes() == (
            out_a / "masks" / f"{path.stem}.png"
        ).read_bytes()
    assert (out_b / "phantoms.csv").read_bytes() == (out_a / "phantoms.csv").read_bytes()
    uids = {pydicom.dcmread(p).SOPInstanceUID for p in paths}
    assert len(uids) == 7


def test_generate_refuses_a_file_as_folder(tmp_path: Path) -> None:
    target = tmp_path / "file.txt"
    target.write_text("x")
    with pytest.raises(InputError):
        generate(target, count=1, scale=0.1)


def test_cli_phantom(tmp_path: Path) -> None:
    from bcedge.cli import main

    out = tmp_path / "with space"
    assert main(["phantom", str(out), "--count", "3", "--scale", "0.1"]) == 0
    assert len(list((out / "images").glob("*.dcm"))) == 3
    assert len(list((out / "masks").glob("*.png"))) == 3
    assert (out / "phantoms.csv").read_text().count("\n") == 4
    assert main(["phantom", str(out), "--count", "1", "--seed", "-3", "--scale", "0.1"]) == 2


@pytest.mark.slow
def test_full_size_read_back(tmp_path: Path) -> None:
    # No wall-clock bound: speed figures belong in benchmarks, and a 3 s bound here failed only
    # when other work shared the cores (12.7 s in session 6).
    ph: Phantom = make_phantom(1, detector="70um", view="MLO", n_masses=3)
    assert ph.stored.shape == (3328, 2560) and ph.spacing_mm == pytest.approx(DETECTORS["70um"][0])
    mammo = read_mammogram(ph.write(tmp_path / "full.dcm"))
    assert mammo.pixels.shape == (3328, 2560)
    assert np.median(mammo.pixels[ph.breast > 0]) > 0.15
