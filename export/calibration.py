"""The images export measures and calibrates with: always outputs of :mod:`bcedge.preprocess`.

* Calibration (TFLite full INT8's representative dataset, TensorRT's INT8 calibrator)
  draws up to ``n`` images from the run's **train** split, or from another dataset
  named with ``--calib`` whose images go through the run's own preprocessing config.
  Never random data: a quantiser calibrated on noise picks activation ranges the real
  images never reach, and UNets lose their thin foreground first.
* The accuracy gate (:mod:`export.verify`) scores on the run's **val** split.

Both come from :func:`training.data.prepare_split_sets` (the preprocessed-array cache),
so the tensors are bit-identical to what training used and what the runtime computes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from bcedge.errors import ConfigError
from training.run import RunInfo  # the run folder's one reader (load_run) is there too

DEFAULT_N_CALIB = 200
#: Fixed seed of the calibration draw: the same run exports the same artifacts.
CALIB_SEED = 0


def choose(n_total: int, n: int, seed: int = CALIB_SEED) -> np.ndarray:
    """Sorted indices of ``min(n, n_total)`` images drawn without replacement (seeded, deterministic)."""
    if n < 1:
        raise ConfigError(f"--n-calib is {n}; expected at least 1")
    if n >= n_total:
        return np.arange(n_total)
    return np.sort(np.random.default_rng(seed).choice(n_total, size=n, replace=False))


def split_sets(
    run: RunInfo,
    cache_dir: str | os.PathLike[str],
    *,
    data: tuple[str, ...] | None = None,
    root: str | os.PathLike[str] | None = None,
    split: str | os.PathLike[str] | None = None,
    options: dict | None = None,
    arrays: str | os.PathLike[str] | None = None,
    progress=None,
):
    """The run's split arrays (train/val/test), preprocessed with the run's config.

    Args:
        run: from :func:`training.run.load_run`.
        cache_dir: preprocessed-array cache folder.
        data, root, split: overrides of the run's ``data``, ``root`` and ``split``.
        options: reader options.
        arrays: an ``.npz`` of split arrays (``bcedge train --export-arrays``) to use instead of
            the source data, e.g. for a run trained from arrays on another machine. Its
            preprocessing hash must be the run's.
        progress: ``progress(done, total, reused)``.

    Returns:
        ``({"train"|"val"|"test": training.data.ArraySet}, meta)``.

    Raises:
        ConfigError: the run names no data/root/split and none was given, or the arrays were
            preprocessed with another config.
    """
    from training.data import load_arrays, prepare_split_sets

    if arrays is not None:
        if not Path(arrays).is_file():
            raise ConfigError(f"--arrays {arrays} does not exist")
        sets, meta = load_arrays(arrays)
        expected = run.preprocess_config().hash()
        if meta.get("preprocess_hash") != expected:
            raise ConfigError(
                f"--arrays {arrays} was preprocessed with config {meta.get('preprocess_hash')!r}; "
                f"the run was trained with {expected!r}"
            )
        return sets, {**meta, "arrays": str(arrays)}
    datasets = tuple(data) if data else tuple(run.config.get("data") or ())
    # A run trained from an arrays file records an empty root.
    root = root if root is not None else (run.config.get("root") or None)
    split = split if split is not None else (run.config.get("split") or None)
    if not datasets or root is None or split is None:
        raise ConfigError(
            f"{run.run_dir}/config.json names no data/root/split; pass --data, --root and --split (or --arrays)"
        )
    if not Path(split).is_file():
        raise ConfigError(f"split file {split} (from the run config) does not exist; pass --split")
    return prepare_split_sets(
        datasets, Path(root), Path(split), run.preprocess_config(), Path(cache_dir), options=options, progress=progress
    )


def calibration_images(
    run: RunInfo,
    n: int,
    cache_dir: str | os.PathLike[str],
    *,
    train_images: np.ndarray | None = None,
    dataset: str | None = None,
    root: str | os.PathLike[str] | None = None,
    options: dict | None = None,
    seed: int = CALIB_SEED,
    progress=None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Up to ``n`` preprocessed calibration images and a description of where they came from.

    Args:
        run: the training run (its preprocessing config applies to every image).
        n: how many images at most.
        cache_dir: preprocessed-array cache folder.
        train_images: (N, S, S, 1) float32: the run's train split (used when ``dataset`` is None).
        dataset: another registry dataset to calibrate on (``--calib``); needs ``root``.
        root: that dataset's root (default: the run's root).
        options: its reader options.
        seed: seed of the draw.
        progress: ``progress(done, total, reused)`` while preprocessing ``dataset``.

    Returns:
        ``(images, info)``: images (n', S, S, 1) float32 in [0, 1] (n' <= n), info
        ``{"source", "n", "seed", "ids" (dataset only)}`` for the manifest.

    Raises:
        ConfigError: nothing to draw from.
    """
    if dataset is None:
        if train_images is None or len(train_images) == 0:
            raise ConfigError("the run's split has no train images to calibrate on; pass --calib DATASET")
        idx = choose(len(train_images), n, seed)
        images = np.ascontiguousarray(train_images[idx], dtype=np.float32)
        return images, {"source": "train split", "n": len(images), "seed": seed}

    from bcedge.datasets import open_dataset
    from bcedge.datasets.cache import prepare

    root = root if root is not None else run.config.get("root")
    if root is None:
        raise ConfigError(f"--calib {dataset} needs --root (the run names no data root)")
    samples = list(open_dataset(dataset, root, **(options or {})).samples())
    if not samples:
        raise ConfigError(f"--calib {dataset}: no images under {root}")
    picked = [samples[i] for i in choose(len(samples), n, seed)]
    # Own index name: a partial prepare must not replace the dataset's full cache index.
    cache = prepare(picked, run.preprocess_config(), cache_dir, dataset=f"calib-{dataset}", progress=progress)
    arrays = cache.arrays([s.id for s in picked])
    info = {"source": f"dataset {dataset}", "root": str(root), "n": len(picked), "seed": seed}
    return arrays["images"], info
