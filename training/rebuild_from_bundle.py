"""Rebuild a bundle's Keras model from its FP16 (or FP32) TFLite artifact, as a run folder.

A bundle exported with ``--no-keras`` (the shipped ``bcedge/mass_model``) carries only TFLite
files; when the training run's ``best.keras`` is lost, it cannot be re-exported. This tool
writes a run folder that ``bcedge export`` reads as if ``bcedge train`` had made it::

    OUT_RUN_DIR/best.keras    the rebuilt model (compiled like a training checkpoint)
    OUT_RUN_DIR/last.keras    the same model
    OUT_RUN_DIR/config.json   the bundle's training recipe (provenance.recipe), the bundle's
                              preprocessing config and hash, fit_on, machine, and ``rebuilt_from``

How: build the recipe's architecture at the bundle's input size with no pretrained weights
(:func:`training.models.build_model`), load the artifact's kernels by layer name
(:func:`training.imagenet_tflite.load_float_tflite`: each batch norm becomes identity plus the
bias the converter folded into the conv), and check that the rebuilt Keras model reproduces
the artifact on random [0, 1] images and on the bundle's acceptance inputs (refused above
``--tolerance``, default 1e-3 max |probability difference|). The rebuilt model is the folded
network at the artifact's precision: with an FP16 artifact its weights are float16 values, so
it differs from the lost original by what FP16 export lost (the bundle's acceptance baseline
for that artifact says how much), and its batch-norm statistics are not the original ones
(fine-tuning it updates them from identity).

What is written into ``config.json``: the bundle's preprocessing (what its artifacts run with;
a bundle switched to preprocessing version 2 after export keeps version 2 on re-export), with
the hash the run trained with kept in ``rebuilt_from.trained_preprocess_hash``.

Usage::

    python -m training.rebuild_from_bundle BUNDLE_DIR OUT_RUN_DIR [--artifact model_fp16.tflite]
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from bcedge.errors import BcedgeError, ConfigError

#: Largest max |probability difference| between the rebuilt Keras model and the artifact accepted.
DEFAULT_TOLERANCE = 1e-3
#: Random [0, 1] images added to the acceptance inputs for the check.
N_RANDOM = 2
#: Artifact precisions whose weights are float (what :func:`load_float_tflite` reads).
FLOAT_PRECISIONS = ("fp32", "fp16")


def tflite_predict(path: Path, images: np.ndarray) -> np.ndarray:
    """Run a TFLite model on (N, S, S, 1) float32 images in [0, 1]; (N, S, S, 1) float32 out.

    Through bcedge's own TFLite backend, on the whole square (``columns="square"``: an any-width
    file is compared as the square the Keras model computes, not the runtime's column block).
    """
    from bcedge.backends.tflite import TFLiteBackend

    backend = TFLiteBackend(path, threads=1, columns="square")
    try:
        return backend.predict(np.asarray(images, np.float32))
    finally:
        backend.close()


def _artifact_record(bundle, file: str):
    """The manifest record of ``file``; ConfigError unless it is a float TFLite artifact."""
    for record in bundle.manifest.artifacts:
        if record.file == file:
            if record.format != "tflite" or record.precision not in FLOAT_PRECISIONS:
                raise ConfigError(
                    f"{bundle.dir}/{file} is {record.format}/{record.precision}; "
                    f"the rebuild reads a tflite {' or '.join(FLOAT_PRECISIONS)} artifact"
                )
            return record
    held = ", ".join(a.file for a in bundle.manifest.artifacts) or "nothing"
    raise ConfigError(f"bundle {bundle.dir} lists no artifact {file!r}; it holds {held}")


def _run_config(manifest, size: int) -> dict[str, Any]:
    """``config.json`` of the rebuilt run (before ``rebuilt_from``): bcedge train's layout.

    The recipe's fields (normalised through :class:`training.train.TrainConfig`, so fields added
    after the bundle was made take their defaults; unknown keys kept), the bundle's preprocessing
    config and hash, ``size`` (the bundle's input side), ``fit_on`` and ``machine``.

    Raises:
        ConfigError: the manifest has no recipe, or it names another model or input size.
    """
    from training.train import TrainConfig

    provenance = manifest.provenance
    recipe = provenance.get("recipe")
    if not isinstance(recipe, dict) or not recipe.get("model") or not recipe.get("data"):
        raise ConfigError("the bundle's manifest has no provenance.recipe with model and data; cannot rebuild")
    if recipe["model"] != manifest.model.get("name"):
        raise ConfigError(f"manifest model {manifest.model.get('name')!r} but its recipe trained {recipe['model']!r}")
    if int(recipe.get("size", size)) != size:
        raise ConfigError(f"the recipe trained {recipe['size']}px inputs but the bundle's input is {size}px")
    evaluation = provenance.get("evaluation") or {}
    # Runs before --fit-on trained on train; a refit's bundle says its gate images were fitted.
    fit_on = recipe.get("fit_on") or ("train+val" if evaluation.get("fitted_on_these_images") else "train")
    merged = {
        **recipe,
        "preprocess": manifest.preprocess,
        "preprocess_hash": manifest.preprocess_hash,
        "size": size,
        "fit_on": fit_on,
    }
    normalised = asdict(TrainConfig.from_saved(merged))
    return {**merged, **normalised, "machine": provenance.get("training_machine")}


def _build(config: dict[str, Any], size: int):
    """The recipe's architecture at ``size`` px, without pretrained weights (the file sets them all)."""
    from training.models import build_model

    name = config["model"]
    return build_model(
        name,
        size,
        None,
        base_filters=int(config.get("base_filters") or 64),
        upsampling=config.get("upsampling") or "nearest",
        width=float(config.get("width") or 1.0),
        decoder_width=float(config["decoder_width"]) if config.get("decoder_width") else None,
        freeze_encoder=bool(config.get("freeze_encoder", False)) and name != "unet",
    )


def rebuild(
    bundle_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    artifact: str = "model_fp16.tflite",
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    n_random: int = N_RANDOM,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Rebuild ``bundle_dir``'s Keras model from ``artifact`` into the run folder ``out_dir``.

    Args:
        bundle_dir: the bundle (its manifest and ``artifact`` are verified as the runtime does).
        out_dir: the run folder to create (must not exist, or be empty).
        artifact: file name of an FP32/FP16 TFLite artifact listed in the manifest.
        tolerance: largest max |probability difference| between Keras and the artifact accepted.
        n_random: random [0, 1] check images (seeded) besides the acceptance inputs.
        log: receives one line per step.

    Returns:
        The ``rebuilt_from`` entry written into ``config.json``.

    Raises:
        BundleError: the bundle or artifact does not verify.
        ConfigError: a non-float artifact, no recipe, an architecture the file does not fit, the
            rebuilt model disagreeing with the artifact, or a non-empty ``out_dir``. Nothing is
            written before every check passed.
    """
    from bcedge import acceptance as acceptance_mod
    from bcedge.bundle import load_bundle
    from bcedge.imageio import atomic_write
    from training.evaluate import predict
    from training.imagenet_tflite import load_float_tflite
    from training.run import BEST, LAST, write_config
    from training.train import TrainConfig, compile_model

    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} exists and is not an empty folder; choose a new run folder")
    bundle = load_bundle(bundle_dir)
    record = _artifact_record(bundle, artifact)
    path = bundle.artifact_path(record)  # size and SHA-256 checked against the manifest
    size = bundle.input_size
    config = _run_config(bundle.manifest, size)

    model = _build(config, size)
    n_convs = load_float_tflite(model, path)
    log(f"{path}: {n_convs} convolutions loaded into {model.name} ({model.count_params()} parameters)")

    # The check: random images (any input the model may meet) and the acceptance inputs (real ones).
    rng = np.random.default_rng(0)
    images = [rng.random((n_random, size, size, 1), dtype=np.float32)]
    data = acceptance_mod.load(bundle)
    if data is not None:
        images.append(data.images)
    inputs = np.concatenate(images, axis=0)
    keras_probs = predict(model, inputs, batch=2)
    tflite_probs = tflite_predict(path, inputs)
    diff = np.abs(keras_probs.astype(np.float64) - tflite_probs.astype(np.float64))
    max_diff, mean_diff = float(diff.max()), float(diff.mean())
    log(f"rebuilt Keras vs {artifact} on {len(inputs)} images: max |dp| {max_diff:.3g}, mean {mean_diff:.3g}")
    if not max_diff <= tolerance:
        raise ConfigError(
            f"the rebuilt Keras model differs from {artifact} by up to {max_diff:.3g} (> {tolerance:g}); not written"
        )
    rebuilt_from: dict[str, Any] = {
        "bundle": str(bundle.dir.resolve()),
        "bundle_created": bundle.manifest.created,
        "artifact": record.file,
        "precision": record.precision,
        "sha256": record.sha256,
        "convolutions": n_convs,
        "max_abs_diff": max_diff,
        "mean_abs_diff": mean_diff,
        "tolerance": tolerance,
        "check_inputs": f"{n_random} random [0, 1] images (seed 0)"
        + (f" + {len(data)} acceptance inputs" if data is not None else ""),
        "batch_norm": "identity + the bias folded into each conv (statistics of the original not recoverable)",
        "trained_preprocess_hash": (bundle.manifest.provenance.get("recipe") or {}).get("preprocess_hash"),
        "original_run": {
            k: bundle.manifest.provenance.get(k)
            for k in ("run_dir", "model_file", "epochs_done", "best_epoch", "best_val_dice", "selected_checkpoint")
            if bundle.manifest.provenance.get(k) is not None
        },
    }
    if data is not None:
        # The acceptance reference is the original Keras model's output (stored to 1/255): how far the
        # rebuilt model is from the lost one, next to what the export measured for this artifact.
        ref_diff = np.abs(keras_probs[n_random:] - data.reference)
        baseline = (bundle.manifest.acceptance or {}).get("baseline", {}).get(record.file, {})
        rebuilt_from["vs_original_keras_on_acceptance"] = {
            "max_abs": float(ref_diff.max()),
            "mean_abs": float(ref_diff.mean()),
            "artifact_baseline_max_abs": baseline.get("max_abs"),
            "artifact_baseline_mean_abs": baseline.get("mean_abs"),
        }
        log(
            f"rebuilt Keras vs the original Keras (acceptance reference): max |dp| {ref_diff.max():.3g}, "
            f"mean {ref_diff.mean():.3g} (the artifact's export baseline: max {baseline.get('max_abs')}, "
            f"mean {baseline.get('mean_abs')})"
        )

    # Compiled like a training checkpoint, so every tool that loads best.keras/last.keras finds what it expects.
    compile_model(model, TrainConfig.from_saved(config))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / BEST, lambda p: model.save(p))
    atomic_write(out / LAST, lambda p: model.save(p))
    # config.json last: a folder without it is not a run (load_run refuses it), so an interrupted
    # rebuild never passes for a finished one.
    write_config(out, {**config, "rebuilt_from": rebuilt_from})
    log(f"wrote {out / BEST}, {out / LAST} and {out / 'config.json'}")
    return rebuilt_from


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle_dir", type=Path, help="the bundle folder (manifest.json and its artifacts)")
    parser.add_argument("out_dir", type=Path, help="the run folder to write (new or empty)")
    parser.add_argument("--artifact", default="model_fp16.tflite", help="FP16/FP32 TFLite file of the bundle")
    parser.add_argument(
        "--tolerance", type=float, default=DEFAULT_TOLERANCE, help="largest max |dp| vs the artifact accepted"
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    try:
        rebuild(args.bundle_dir, args.out_dir, args.artifact, tolerance=args.tolerance)
    except BcedgeError as exc:  # a wrong bundle, artifact or folder: one line and its exit code, as bcedge's CLI
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # the run folder cannot be written (disk full, permissions): bcedge's exit 2
        print(f"error: {args.out_dir}: cannot write the run folder ({exc.strerror or exc})", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
