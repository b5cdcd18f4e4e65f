"""Preprocessing versions (issue #14 item 6): version 1 gives exactly the old input, version 2 (stored
values resampled first, display table on the small image) stays within its stated tolerance of
version 1 and never makes a full-size float image.

Version 2's tolerance, against version 1 on the same scan (what ``test_version_2_matches_version_1``
checks; measured: mean |difference| 0.0004-0.015, support IoU 0.983-1.0 on mini-MIAS, CDD-CESM and
full-field phantoms at 256 and 512 px):

* the same flip, the crop box grown by less than ``2**j`` pixels a side (its halvings' block);
* the intensity window within 0.005, the content region within one pixel;
* mean |tensor difference| <= 0.02 and the nonzero support's IoU >= 0.98 (the breast outline moves
  by about a model pixel where the working image's threshold moves).

The model-level proof (gate Dice within 0.005 for each shipped bundle) is
``benchmarks/results/preprocess_v2_gate.json``.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from bcedge.dicom import Mammogram, StoredImage, display_table, read_mammogram
from bcedge.errors import ConfigError
from bcedge.preprocess import (
    DEFAULT_PREPROCESS_VERSION,
    PREPROCESS_VERSION,
    PREPROCESS_VERSIONS,
    PreprocessConfig,
    _StoredSource,
    halvings,
    preprocess,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "bcedge" / "examples" / "phantom_lcc.dcm"
_DATA = os.environ.get("BCEDGE_DATA")
needs_data = pytest.mark.skipif(not _DATA, reason="BCEDGE_DATA is not set (path to the shared real data)")

#: The shipped mass model's preprocessing as its manifest recorded it under version 1, and its hash:
#: a bundle made before version 2 must load (same hash) and get the version-1 algorithm.
MASS_MODEL_V1 = {
    "border_crop": 0.01,
    "canonical_side": "L",
    "clahe": True,
    "clahe_clip": 2.0,
    "clahe_tiles": 8,
    "crop_margin": 0.02,
    "normalise": "percentile",
    "open_size": 0.025,
    "percentiles": [1.0, 99.5],
    "remove_artefacts": True,
    "side_source": "laterality",
    "size": 512,
    "threshold_scale": 0.2,
    "version": 1,
    "work_size": 512,
}
MASS_MODEL_V1_HASH = "0b7a81042f2574c2"


@pytest.fixture(scope="module")
def full_field(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3328x2560 12-bit MONOCHROME2 phantom scan (70 um detector), as the speed benchmarks use."""
    from bcedge.dicom_write import build_mg_dataset, save_atomic
    from bcedge.phantom import make_phantom

    ph = make_phantom(
        seed=21, laterality="L", view="CC", detector="70um", bits_stored=12, photometric="MONOCHROME2", n_masses=2
    )
    return save_atomic(build_mg_dataset(ph.stored, ph.tags), tmp_path_factory.mktemp("ffdm") / "scan.dcm")


def old_reader_pixels(path: Path) -> np.ndarray:
    """The displayed pixels exactly as the reader made them before it kept stored values: one table
    lookup of the whole image (``table[stored]``, or ``table[stored - offset]`` for signed data)."""
    import pydicom

    ds = pydicom.dcmread(path)
    stored = ds.pixel_array
    table, offset, _ = display_table(ds, stored)
    return table[stored] if offset == 0 and stored.dtype.kind == "u" else table[stored.astype(np.intp) - offset]


def real_scans() -> list[Path]:
    """A few real scans of each source in ``BCEDGE_DATA``: mini-MIAS (1024 px PNG) and CDD-CESM (JPEG)."""
    if not _DATA:
        return []
    mias = sorted(glob.glob(f"{_DATA}/mini-mias/images/*.png"))[:3]
    cdd = sorted(glob.glob(f"{_DATA}/cdd-cesm/setA/images/*.jpg"))[:3]
    return [Path(p) for p in mias + cdd]


# --------------------------------------------------------------------------- config and bundles


def test_versions_and_defaults() -> None:
    assert PREPROCESS_VERSIONS == (1, 2) and PREPROCESS_VERSION == 2
    assert PreprocessConfig().version == DEFAULT_PREPROCESS_VERSION == 1
    assert PreprocessConfig.from_dict({"size": 320}).version == 1  # a dict without a version predates version 2
    assert PreprocessConfig(version=2).to_dict()["version"] == 2
    assert PreprocessConfig(version=2).hash() != PreprocessConfig().hash()
    for bad in (0, 3, True, "2"):
        with pytest.raises(ConfigError, match="version"):
            PreprocessConfig(version=bad)  # type: ignore[arg-type]


def test_version_1_manifest_keeps_its_hash() -> None:
    """A bundle written before ``version`` was a field loads: its config hashes as recorded."""
    config = PreprocessConfig.from_dict(MASS_MODEL_V1)
    assert config.version == 1
    assert config.hash() == MASS_MODEL_V1_HASH
    assert config.to_dict() == MASS_MODEL_V1


@pytest.mark.parametrize("bundle", ["mass_model", "demo_model"])
def test_shipped_bundle_config_hash_matches(bundle: str) -> None:
    from bcedge.bundle import load_bundle

    loaded = load_bundle(ROOT / "bcedge" / bundle)
    config = loaded.preprocess_config()
    assert config.version in PREPROCESS_VERSIONS
    assert config.hash() == loaded.manifest.preprocess_hash


# --------------------------------------------------------------------------- the reader's stored values


def test_reader_keeps_stored_values_and_makes_pixels_on_first_use(write_mg, ramp) -> None:
    path = write_mg(ramp(12, shape=(60, 50)), bits_stored=12, photometric="MONOCHROME1", windows=[(1800, 2400)])
    m = read_mammogram(path)
    assert m.stored is not None and m.shape == (60, 50)
    assert m.__dict__.get("_pixels") is None  # nothing full-size made yet
    pixels = m.pixels
    assert pixels.dtype == np.float32 and pixels.shape == (60, 50)
    np.testing.assert_array_equal(pixels, old_reader_pixels(path))
    assert m.pixels is pixels  # made once
    np.testing.assert_array_equal(m.stored.display(), pixels)


def test_signed_stored_values_use_the_offset(write_mg, ramp) -> None:
    path = write_mg(ramp(12, shape=(40, 30), signed=True), bits_stored=12, rescale=(1.0, 100.0))
    m = read_mammogram(path)
    assert m.stored is not None and m.stored.offset < 0
    np.testing.assert_array_equal(m.pixels, old_reader_pixels(path))


def test_display_values_interpolates_the_table() -> None:
    table = np.array([0.0, 0.1, 0.4, 1.0], np.float32)
    img = StoredImage(np.array([[10, 13]], np.uint16), table, offset=10)
    np.testing.assert_array_equal(img.display_values(np.array([10, 11, 12, 13])), table)
    np.testing.assert_allclose(img.display_values(np.array([10.5, 12.25])), [0.05, 0.55], rtol=1e-6)
    np.testing.assert_array_equal(img.display_values(np.array([-5.0, 99.0])), [0.0, 1.0])  # clamped to the ends
    np.testing.assert_array_equal(img.display(), [[0.0, 1.0]])


def _display_values_by_definition(img: StoredImage, values: np.ndarray) -> np.ndarray:
    """lo + (hi - lo) * fraction with both neighbours gathered, float32 throughout (before the slope table)."""
    x = np.clip(np.asarray(values, np.float32) - np.float32(img.offset), 0.0, float(img.table.shape[0] - 1))
    i0 = x.astype(np.int32)
    frac = x - i0.astype(np.float32)
    i1 = np.minimum(i0 + 1, img.table.shape[0] - 1)
    lo = img.table[i0]
    return (img.table[i1] - lo) * frac + lo


@pytest.mark.parametrize(("entries", "offset"), [(1, 0), (2, 0), (300, -100), (4096, 0), (65536, 0)])
def test_display_values_slope_table_gives_the_same_bits(entries: int, offset: int) -> None:
    """The kept table of neighbour differences changes no bit of the interpolation, edges included."""
    rng = np.random.default_rng(entries)
    table = np.sort(rng.random(entries).astype(np.float32))
    img = StoredImage(np.zeros((2, 2), np.uint16), table, offset)
    values = (rng.random((97, 61)) * (entries + 40) + offset - 20).astype(np.float32)
    edges = [offset, offset + entries - 1, offset + entries - 1.5, offset - 5, offset + entries + 5, offset + 0.5]
    values.flat[: len(edges)] = edges
    values.flat[len(edges)] = np.nextafter(np.float32(offset + entries - 1), np.float32(0))
    expected = _display_values_by_definition(img, values)
    got = img.display_values(values)
    assert got.dtype == np.float32 and got.shape == values.shape
    assert np.array_equal(got.view(np.uint32), expected.view(np.uint32))
    # The slope table is made once and kept on the image.
    assert img.display_values(values[:3]) is not None and img._slopes() is img._slopes()


def test_given_pixels_win_over_stored_values(write_mg, ramp) -> None:
    m = read_mammogram(write_mg(ramp(12, shape=(20, 30)), bits_stored=12))
    flipped = np.ascontiguousarray(m.pixels[:, ::-1])
    edited = dataclasses.replace(m, pixels=flipped)
    assert edited.stored is None  # the stored values no longer describe these pixels
    assert edited.pixels is flipped
    relabelled = m.with_meta(laterality="R")
    assert relabelled.stored is m.stored and relabelled.meta.laterality == "R"
    with pytest.raises(TypeError):
        Mammogram(None, m.meta)  # type: ignore[arg-type]


def test_sample_undo_flips_the_stored_values(write_mg, ramp) -> None:
    from bcedge.datasets.base import Sample

    path = write_mg(ramp(12, shape=(20, 30)), bits_stored=12)
    plain = read_mammogram(path)
    sample = Sample(id="s", patient_id="p", source="folder", image_path=path, undo="hflip")
    m = sample.load_image()
    assert m.stored is not None
    np.testing.assert_array_equal(m.stored.values, plain.stored.values[:, ::-1])
    np.testing.assert_array_equal(m.pixels, plain.pixels[:, ::-1])


# --------------------------------------------------------------------------- version 1: the old input exactly


def _assert_same(a: tuple[np.ndarray, object], b: tuple[np.ndarray, object]) -> None:
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1] == b[1]


@pytest.mark.parametrize("config", [PreprocessConfig.from_dict(MASS_MODEL_V1), PreprocessConfig(size=256)])
def test_version_1_gives_the_old_input_exactly(config: PreprocessConfig, full_field: Path, write_mg, ramp) -> None:
    """A version-1 config on a scan read now gets the tensor the old reader's pixels gave, bit for bit."""
    assert config.version == 1
    signed = write_mg(ramp(12, shape=(300, 200), signed=True), name="signed.dcm", bits_stored=12, rescale=(1.0, 50.0))
    for path in (full_field, EXAMPLE, signed):
        m = read_mammogram(path)
        old = Mammogram(old_reader_pixels(path), m.meta)
        _assert_same(preprocess(m, config), preprocess(old, config))


def test_version_1_keeps_no_float_image(full_field: Path) -> None:
    """Version 1 makes the float image for its one use and does not keep it on the Mammogram (its
    stored values stay: 2 bytes a pixel, not 6); asking for ``pixels`` afterwards makes the same image."""
    m = read_mammogram(full_field)
    tensor, _ = preprocess(m, PreprocessConfig(size=256))
    assert m.__dict__.get("_pixels") is None and "_display" not in m.stored.__dict__
    np.testing.assert_array_equal(m.pixels, old_reader_pixels(full_field))
    again, _ = preprocess(m, PreprocessConfig(size=256))  # now from the kept image: the same tensor
    np.testing.assert_array_equal(again, tensor)


@needs_data
def test_version_1_gives_the_old_input_exactly_on_real_rasters() -> None:
    """Rasters keep their stored values too; version 1 sees the float image the reader used to make."""
    import cv2

    config = PreprocessConfig.from_dict(MASS_MODEL_V1)
    scans = real_scans()
    assert scans
    for path in scans:
        m = read_mammogram(path)
        img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        old_pixels = img.astype(np.float32) * np.float32(1.0 / 255.0)  # the reader's old float path
        _assert_same(preprocess(m, config), preprocess(Mammogram(old_pixels, m.meta), config))


# --------------------------------------------------------------------------- version 2 against version 1


def _compare(m: Mammogram, size: int) -> dict[str, float]:
    c1 = PreprocessConfig(size=size)
    c2 = dataclasses.replace(c1, version=2)
    (t1, g1), (t2, g2) = preprocess(m, c1), preprocess(m, c2)
    assert g1.flipped == g2.flipped and g1.chest_wall_side == g2.chest_wall_side
    # The crop box moves by its halvings' block (< 2**j <= 8 pixels a side here) and by where the
    # breast outline moves on the working image (a working pixel: 6.5 original pixels at 3328 rows).
    work_px = max(m.shape) / c1.work_size
    assert max(abs(a - b) for a, b in zip(g1.crop, g2.crop, strict=True)) <= 8 + 2 * work_px
    assert max(abs(a - b) for a, b in zip(g1.content, g2.content, strict=True)) <= 1
    assert g1.intensity_window is not None and g2.intensity_window is not None
    assert max(abs(a - b) for a, b in zip(g1.intensity_window, g2.intensity_window, strict=True)) <= 0.005
    a, b = t1[0, :, :, 0], t2[0, :, :, 0]
    support = float(((a > 0) & (b > 0)).sum() / max(1, ((a > 0) | (b > 0)).sum()))
    mean = float(np.abs(a - b).mean())
    assert mean <= 0.02, mean
    assert support >= 0.98, support
    return {"mean": mean, "support_iou": support}


@pytest.mark.parametrize("size", [256, 512])
def test_version_2_matches_version_1_on_full_field_and_example(size: int, full_field: Path) -> None:
    for path in (full_field, EXAMPLE):
        _compare(read_mammogram(path), size)


@needs_data
@pytest.mark.parametrize("size", [256, 512])
def test_version_2_matches_version_1_on_real_scans(size: int) -> None:
    scans = real_scans()
    assert len(scans) >= 4
    for path in scans:
        _compare(read_mammogram(path), size)


# --------------------------------------------------------------------------- version 2: no full-size float image


def test_version_2_makes_no_full_size_float_image(full_field: Path) -> None:
    """Version 2 never allocates anything near a full-size float image; version 1 does (the measure sees it).

    Version 2's largest array is the first 2x2 halving of the stored values: a quarter of the
    pixels at 2 bytes, an eighth of the float image's bytes.
    """
    config = PreprocessConfig(size=512, version=2)
    full_float = 3328 * 2560 * 4

    def peak(fn) -> int:
        tracemalloc.start()
        try:
            fn()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    m = read_mammogram(full_field)
    v2 = peak(lambda: preprocess(m, config))
    assert m.__dict__.get("_pixels") is None  # the float pixels were never made
    v1 = peak(lambda: preprocess(m, dataclasses.replace(config, version=1)))
    assert v1 >= full_float  # the lazy pixels and the float resizes are visible to tracemalloc
    assert v2 < full_float / 3, (v2, full_float)


def test_halvings_counts_exact_2x2_steps() -> None:
    assert halvings((2944, 1920), (512, 334)) == 2  # 736x480 after two halvings, a third would be < 512
    assert halvings((3328, 2560), (512, 394)) == 2
    assert halvings((2294, 1914), (512, 427)) == 1  # 1147 is odd: one halving only
    assert halvings((1001, 777), (256, 199)) == 0  # odd sides
    assert halvings((1001, 777), (256, 199), exact=False) == 1
    assert halvings((400, 300), (512, 384)) == 0  # never below the target


@pytest.mark.parametrize(
    ("shape", "crop", "content"),
    [
        ((2944, 1920), (132, 0, 2789, 1581), (512, 305)),
        ((3328, 2560), (318, 3, 2990, 1592), (256, 153)),
        ((1001, 777), (10, 20, 990, 700), (256, 178)),  # odd sides: grown to a multiple inside the image
        ((2944, 1920), (2000, 1500, 2944, 1920), (512, 229)),  # at the image edge
    ],
)
def test_snapped_crop_contains_the_crop_on_its_blocks(
    shape: tuple[int, int], crop: tuple[int, int, int, int], content: tuple[int, int]
) -> None:
    source = _StoredSource(np.zeros(shape, np.uint16), None)
    box, j = source.snap_crop(crop, content)
    top, left, bottom, right = box
    assert (
        0 <= top <= crop[0] and 0 <= left <= crop[1] and crop[2] <= bottom <= shape[0] and crop[3] <= right <= shape[1]
    )
    k = 1 << j
    assert (bottom - top) % k == 0 and (right - left) % k == 0
    assert max(crop[0] - top, crop[1] - left, bottom - crop[2], right - crop[3]) < 2 * k
    assert (bottom - top) // k >= content[0] and (right - left) // k >= content[1]


@pytest.mark.parametrize(
    "image",
    [
        np.linspace(0, 1, 1001 * 777, dtype=np.float32).reshape(1001, 777),  # float, odd sides
        (np.arange(640 * 480) % 251).astype(np.uint8).reshape(640, 480),
        (np.arange(900 * 700) % 4001).astype(np.uint16).reshape(900, 700),
        np.full((50, 40), 0.5, np.float32),  # smaller than the model grid, flat
    ],
)
def test_version_2_on_bare_arrays(image: np.ndarray) -> None:
    tensor, geometry = preprocess(image, PreprocessConfig(size=128, version=2))
    assert tensor.shape == (1, 128, 128, 1) and tensor.dtype == np.float32
    assert float(tensor.min()) >= 0.0 and float(tensor.max()) <= 1.0
    assert geometry.original_shape == image.shape


def test_segmenter_runs_a_version_2_bundle(tmp_path: Path) -> None:
    """A bundle whose manifest says version 2 runs end to end, and its mask agrees with version 1's."""
    from bcedge.pipeline import Segmenter

    v2 = tmp_path / "demo v2"
    shutil.copytree(ROOT / "bcedge" / "demo_model", v2)
    manifest = json.loads((v2 / "manifest.json").read_text())
    config = dataclasses.replace(PreprocessConfig.from_dict(manifest["preprocess"]), version=2)
    manifest.update(preprocess=config.to_dict(), preprocess_hash=config.hash())
    (v2 / "manifest.json").write_text(json.dumps(manifest))
    masks = []
    for bundle in (ROOT / "bcedge" / "demo_model", v2):
        with Segmenter(bundle, backend="tflite", threads=1) as seg:
            assert seg.config.version == (2 if bundle == v2 else 1)
            result = seg.segment(EXAMPLE)
            masks.append(result.mask > 0)
    assert masks[0].any()
    dice = 2 * (masks[0] & masks[1]).sum() / (masks[0].sum() + masks[1].sum())
    assert dice >= 0.9, dice
