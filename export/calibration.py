"""The images export measures and calibrates with: always outputs of :mod:`bcedge.preprocess`.

* Calibration (TFLite full INT8's representative dataset, TensorRT's INT8 calibrator,
  onnxruntime's ``CalibrationDataReader`` for ONNX INT8: :func:`onnx_calibration_reader`)
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


def onnx_calibration_reader(images: np.ndarray, input_name: str) -> Any:
    """An onnxruntime ``CalibrationDataReader`` over preprocessed calibration images.

    The ONNX INT8 builder (:func:`export.onnx.quantize_int8`) feeds ``quantize_static`` through this,
    so it calibrates on the same images as TFLite full INT8 and TensorRT INT8
    (:func:`calibration_images`). One image per step: the exported ONNX graph has a static batch of 1
    by default, and onnxruntime's MinMax calibrator keeps only per-tensor min/max per step (the
    graph is augmented with ReduceMin/ReduceMax outputs), so memory does not grow with the image count.

    Args:
        images: (N, S, S, 1) float32 in [0, 1] (:mod:`bcedge.preprocess` output, never raw pixels).
        input_name: the ONNX graph's input name (``image`` for bcedge exports).

    Returns:
        A reader whose ``get_next()`` yields ``{input_name: (1, S, S, 1) float32}`` N times, then None;
        ``rewind()`` starts it over.

    Raises:
        ConfigError: not a non-empty (N, S, S, 1) array of values in [0, 1].
        MissingDependencyError: onnxruntime is not installed.
    """
    from bcedge.errors import MissingDependencyError

    array = np.asarray(images)
    if array.ndim != 4 or array.shape[-1] != 1 or len(array) == 0 or array.shape[1] != array.shape[2]:
        raise ConfigError(f"calibration images must be a non-empty (N, S, S, 1) array; got shape {array.shape}")
    if array.dtype.kind not in "fiu":
        raise ConfigError(f"calibration images have dtype {array.dtype}; expected float32 in [0, 1]")
    array = np.ascontiguousarray(array, dtype=np.float32)
    lo, hi = float(array.min()), float(array.max())
    if not (lo >= 0.0 and hi <= 1.0):  # also catches NaN: a quantiser calibrated on raw pixels clips everything
        raise ConfigError(f"calibration images span [{lo:.6g}, {hi:.6g}]; expected preprocessed images in [0, 1]")
    try:
        from onnxruntime.quantization import CalibrationDataReader
    except ImportError:
        raise MissingDependencyError("ONNX INT8 calibration", "onnx", "onnxruntime") from None

    class _Reader(CalibrationDataReader):
        """Yields the calibration images one by one, as onnxruntime's calibrator asks for them."""

        def __init__(self) -> None:
            self._next = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self._next >= len(array):
                return None
            feed = {input_name: array[self._next : self._next + 1]}
            self._next += 1
            return feed

        def rewind(self) -> None:
            self._next = 0

        def __len__(self) -> int:
            return len(array)

    return _Reader()
