"""Test helper: the manifest of a hand-made bundle (artifact files already written by the test)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bcedge.bundle import ArtifactRecord, Manifest, io_specs, write_manifest
from bcedge.preprocess import PreprocessConfig

#: The ``model`` entry when a test does not care what the model is called.
TEST_MODEL = {"name": "test", "architecture": "test", "params": 0}


def write_test_manifest(
    folder: Path,
    records: Sequence[ArtifactRecord],
    config: PreprocessConfig,
    *,
    model: dict[str, Any] | None = None,
    **fields: Any,
) -> Manifest:
    """Write ``folder/manifest.json`` for ``records`` (input/output of side ``config.size``); return it.

    Args:
        folder: the bundle folder, holding the artifact files the records describe.
        records: the artifacts (``ArtifactRecord.from_file``).
        config: the preprocessing the model expects; its size sets the input/output shapes.
        model: the manifest's ``model`` entry (default :data:`TEST_MODEL`).
        **fields: other :class:`bcedge.bundle.Manifest` fields (``threshold``, ``provenance``...).
    """
    inp, out = io_specs(config.size)
    manifest = Manifest(
        model=dict(model or TEST_MODEL),
        input=inp,
        output=out,
        preprocess=config.to_dict(),
        preprocess_hash=config.hash(),
        artifacts=list(records),
        **fields,
    )
    write_manifest(folder, manifest)
    return manifest


def phantom_model_inputs(folder: Path, size: int, count: int = 10, seed: int = 3):
    """(count, size, size, 1) float32 in [0, 1]: phantom mammograms through the one preprocessing.

    The export tests' calibration and comparison images (small phantoms, scale 0.1), made in
    ``folder / "with space"`` (a path with a space, as users have) and cached beside it.
    """
    from bcedge.datasets import open_dataset
    from bcedge.datasets.cache import prepare
    from bcedge.phantom import generate

    root = folder / "with space"
    generate(root, count=count, seed=seed, scale=0.1)
    samples = list(open_dataset("phantom", root).samples())
    cache = prepare(samples, PreprocessConfig(size=size), folder / "cache", dataset="phantom")
    return cache.arrays()["images"]
