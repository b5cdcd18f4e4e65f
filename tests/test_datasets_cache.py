"""Preprocessed cache: training path == runtime path, reuse, rebuild, atomicity, CLI."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("bcedge.preprocess")
phantom = pytest.importorskip("bcedge.phantom")

from bcedge.cli import main  # noqa: E402
from bcedge.datasets.cache import file_fingerprint, open_cache, prepare  # noqa: E402
from bcedge.datasets.phantoms import PhantomDataset  # noqa: E402
from bcedge.dicom import read_mammogram  # noqa: E402
from bcedge.errors import DatasetError  # noqa: E402
from bcedge.preprocess import PreprocessConfig, preprocess, preprocess_mask  # noqa: E402

CONFIG = PreprocessConfig(size=64, work_size=128)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cache") / "phantom set"
    phantom.generate(out, count=4, seed=7, scale=0.1)
    return out


def test_training_path_equals_runtime_path(phantoms: Path, tmp_path: Path) -> None:
    """The cache's arrays are exactly what the runtime computes from the same scan.

    Training reads the cache; the runtime reads the DICOM and calls ``preprocess``.
    Both must give bit-identical tensors and masks.
    """
    samples = list(PhantomDataset(phantoms).samples())
    cache = prepare(samples, CONFIG, tmp_path / "cache dir", dataset="phantom")
    assert cache.built == len(samples) == 4
    for sample in samples:
        image, mask, geometry = cache.load(sample.id)
        # Runtime path: the file as the device would read it.
        runtime_tensor, runtime_geometry = preprocess(read_mammogram(sample.image_path), CONFIG)
        assert image.dtype == np.float32 and image.shape == (64, 64)
        np.testing.assert_array_equal(image, runtime_tensor[0, :, :, 0])
        assert geometry == runtime_geometry.to_dict()
        # Dataset path (laterality/view from the dataset) agrees too.
        mammo = sample.load_image()
        tensor, geom = preprocess(mammo, CONFIG)
        np.testing.assert_array_equal(image, tensor[0, :, :, 0])
        expected_mask = preprocess_mask(sample.load_mask(mammo.pixels.shape), geom)
        np.testing.assert_array_equal(mask, expected_mask)
        assert mask.dtype == np.uint8 and bool(mask.any()) == sample.has_lesion


def test_arrays_stack_for_training(phantoms: Path, tmp_path: Path) -> None:
    samples = list(PhantomDataset(phantoms).samples())
    cache = prepare(samples, CONFIG, tmp_path, dataset="phantom")
    arrays = cache.arrays([samples[1].id, samples[0].id])
    assert arrays["images"].shape == (2, 64, 64, 1) and arrays["images"].dtype == np.float32
    assert arrays["masks"].shape == (2, 64, 64, 1) and arrays["masks"].dtype == np.uint8
    assert arrays["ids"] == (samples[1].id, samples[0].id)
    assert arrays["sources"] == ("phantom", "phantom")
    assert arrays["mask_kinds"] == (samples[1].mask_kind, samples[0].mask_kind)
    np.testing.assert_array_equal(arrays["images"][1, :, :, 0], cache.load(samples[0].id)[0])
    with pytest.raises(DatasetError, match="not in the cache"):
        cache.load("nope")


def test_reused_when_unchanged_rebuilt_when_config_or_source_changes(phantoms: Path, tmp_path: Path) -> None:
    samples = list(PhantomDataset(phantoms).samples())
    first = prepare(samples, CONFIG, tmp_path, dataset="phantom")
    again = prepare(samples, CONFIG, tmp_path, dataset="phantom")
    assert (again.built, again.reused) == (0, 4)
    assert open_cache(tmp_path, CONFIG, "phantom").entries == again.entries

    other = PreprocessConfig(size=64, work_size=128, clahe=False)
    rebuilt = prepare(samples, other, tmp_path, dataset="phantom")
    assert rebuilt.built == 4 and rebuilt.root != first.root

    # Touching a file without changing its bytes re-hashes it and reuses the arrays.
    target = samples[0].image_path
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10**9))
    touched = prepare(samples, CONFIG, tmp_path, dataset="phantom")
    assert (touched.built, touched.reused) == (0, 4)

    # A dataset-level change that steers the flip (laterality) rebuilds that sample only.
    from dataclasses import replace

    flipped = [replace(samples[0], laterality="R" if samples[0].laterality == "L" else "L"), *samples[1:]]
    changed = prepare(flipped, CONFIG, tmp_path, dataset="phantom")
    assert (changed.built, changed.reused) == (1, 3)
    files = sorted((first.root / "samples" / "phantom").glob(f"{samples[0].id}.*.npz"))
    assert len(files) == 1  # the stale file was removed


def test_interrupted_run_resumes(phantoms: Path, tmp_path: Path) -> None:
    samples = list(PhantomDataset(phantoms).samples())
    partial = prepare(samples[:2], CONFIG, tmp_path, dataset="phantom")
    assert partial.built == 2
    # No index for the rest yet, but the finished arrays are found by key.
    full = prepare(samples, CONFIG, tmp_path, dataset="phantom")
    assert (full.built, full.reused) == (2, 2)
    assert not list(tmp_path.rglob("*.tmp*"))


def test_fingerprint_reuses_digest_only_when_size_and_mtime_match(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    fp = file_fingerprint(path)
    fake = type(fp)(fp.path, fp.size, fp.mtime_ns, "0" * 64)
    assert file_fingerprint(path, fake).sha256 == "0" * 64  # trusted: same size and mtime
    path.write_bytes(b"abcd")
    assert file_fingerprint(path, fake).sha256 == hashlib.sha256(b"abcd").hexdigest()
    with pytest.raises(DatasetError):
        file_fingerprint(tmp_path / "missing")


def test_open_cache_without_prepare_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="bcedge data prepare"):
        open_cache(tmp_path, CONFIG, "phantom")


def test_cli_prepare(phantoms: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli cache"
    args = ["data", "prepare", "phantom", "--root", str(phantoms), "--out", str(out), "--size", "32"]
    assert main(args) == 0
    assert "4 built, 0 reused" in capsys.readouterr().out
    assert main(args) == 0
    assert "0 built, 4 reused" in capsys.readouterr().out
    assert main([*args, "--subset", "train"]) == 2
    assert "--split and --subset" in capsys.readouterr().err
    assert main(["data", "prepare", "phantom", "--root", str(tmp_path / "none"), "--out", str(out)]) == 2


_DATA = os.environ.get("BCEDGE_DATA")


@pytest.mark.skipif(not _DATA, reason="BCEDGE_DATA is not set (path to the shared real data)")
def test_real_mias_training_path_equals_runtime_path(tmp_path: Path) -> None:
    """A real screen-film scan (with its dataset laterality) through the cache and directly."""
    from bcedge.datasets.mias import MiniMias

    root = Path(_DATA or "") / "mini-mias"
    samples = [s for s in MiniMias(root).samples() if s.id in {"mdb001", "mdb002"}]
    cache = prepare(samples, CONFIG, tmp_path, dataset="mini-mias")
    for sample in samples:
        image, mask, _ = cache.load(sample.id)
        mammo = sample.load_image()
        tensor, geometry = preprocess(mammo, CONFIG)
        np.testing.assert_array_equal(image, tensor[0, :, :, 0])
        np.testing.assert_array_equal(mask, preprocess_mask(sample.load_mask(mammo.pixels.shape), geometry))
        assert mask.any()
