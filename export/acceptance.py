"""The acceptance data of a bundle (:mod:`bcedge.acceptance`): written by ``bcedge export``, or added
to an existing bundle without touching its artifacts.

``bcedge export`` calls :func:`make_acceptance` with the validation images the accuracy gate scores
on and the Keras reference; the inputs chosen are the :data:`bcedge.acceptance.DEFAULT_N` whose
reference masks (at the bundle threshold) are largest, so that a wrong artifact cannot agree by
predicting nothing.

For a bundle exported before this existed::

    python -m export.acceptance BUNDLE --reference RUN_DIR/best.keras      # or an FP32 .tflite
        [--data NAME --root DIR --split SPLIT.json --option KEY=VALUE] [--cache DIR] [--n 4]

reads the bundle's validation split (its provenance names the data, root, split and reader
options; the options above override them), preprocesses it with the bundle's own config through
the preprocessed-array cache (the one preprocessing), runs the reference, writes
``acceptance.npz`` and rewrites ``manifest.json`` with its ``acceptance`` entry. The artifacts and
their records are left exactly as they were. It then runs every artifact of the bundle through
the acceptance check here and prints the verdicts.

Exit codes: 0 written; 2 bad options or data; 3 a bundle or reference problem.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bcedge.acceptance import ACCEPTANCE_FILE, DEFAULT_N, encode, quantise_inputs, record_for
from bcedge.errors import BcedgeError, BundleError, ConfigError

#: ``predict(images (N, S, S, 1) float32) -> probabilities (N, S, S, 1) float32``.
Predict = Callable[[np.ndarray], np.ndarray]


def select(reference: np.ndarray, threshold: float, n: int = DEFAULT_N) -> np.ndarray:
    """Indices of the ``n`` images whose reference masks are largest (ties: higher peak, then order).

    Args:
        reference: (N, S, S, 1) float32 reference probabilities.
        threshold: the bundle threshold.
        n: how many to keep (all when fewer).

    Returns:
        (min(n, N),) int64 indices, ascending.
    """
    flat = reference.reshape(len(reference), -1)
    area = (flat >= threshold).sum(axis=1)
    peak = flat.max(axis=1)
    order = sorted(range(len(flat)), key=lambda i: (-int(area[i]), -float(peak[i]), i))
    return np.array(sorted(order[:n]), dtype=np.int64)


def make_acceptance(
    images: np.ndarray,
    predict: Predict,
    threshold: float,
    *,
    reference_probs: np.ndarray | None = None,
    ids: Sequence[str] | None = None,
    n: int = DEFAULT_N,
    **info: Any,
) -> tuple[bytes, dict[str, Any]]:
    """The ``acceptance.npz`` bytes and the manifest's ``acceptance`` entry.

    Args:
        images: (N, S, S, 1) float32 in [0, 1]: the validation images (preprocessed).
        predict: the reference model.
        threshold: the bundle threshold (picks the inputs with the largest reference masks).
        reference_probs: ``predict(images)`` when already computed (the gate computes it).
        ids: the images' sample ids (recorded for the chosen ones).
        n: how many inputs to keep.
        **info: more fields for the manifest entry (``source``, ``reference``...).
    """
    if n < 1:
        raise ConfigError(f"acceptance images: n is {n}; expected at least 1")
    if len(images) == 0:
        raise ConfigError("no validation images to take the acceptance inputs from")
    probs = predict(images) if reference_probs is None else reference_probs
    keep = select(probs, threshold, n)
    chosen = quantise_inputs(images[keep])
    # The reference runs again on the 8-bit inputs: the artifact will see exactly these tensors.
    ref = np.asarray(predict(chosen), dtype=np.float32)
    data = encode(chosen, ref)
    entry = record_for(
        data,
        n_images=len(keep),
        threshold=float(threshold),
        ids=[str(ids[i]) for i in keep] if ids is not None else None,
        reference_mask_pixels=[int((ref[i] >= threshold).sum()) for i in range(len(keep))],
        **info,
    )
    return data, entry


def baselines(
    bundle_dir: str | os.PathLike[str],
    records: Sequence[Any],
    data: bytes,
    threshold: float,
    *,
    threads: int | None = 1,
) -> dict[str, Any]:
    """Each artifact's agreement with the reference on the acceptance inputs, here (the exporting machine).

    Args:
        bundle_dir: the bundle folder holding the artifacts.
        records: their :class:`bcedge.bundle.ArtifactRecord` s.
        data: the ``acceptance.npz`` bytes (:func:`make_acceptance`).
        threshold: the bundle threshold.
        threads: inference threads.

    Returns:
        ``{file: {"sha256", "dice", "mean_abs", "max_abs"}}`` for every artifact that ran (the
        manifest entry's ``baseline``; :func:`bcedge.acceptance.compare` holds each artifact to it
        on other machines). An artifact that fails to run here is left out (and logged by the caller).
    """
    from bcedge.acceptance import agreement, decode
    from bcedge.backends import open_backend

    out: dict[str, Any] = {}
    for record in records:
        path = Path(bundle_dir) / record.file
        try:
            with open_backend(record.backend, path, threads=threads) as model:
                accepted = decode(data, model.input_size, ACCEPTANCE_FILE)
                probs = np.concatenate([model.predict(accepted.images[i : i + 1]) for i in range(len(accepted))])
        except BcedgeError:
            continue
        dice, mean_abs, max_abs = agreement(probs, accepted, threshold)
        out[record.file] = {"sha256": record.sha256, "dice": dice, "mean_abs": mean_abs, "max_abs": max_abs}
    return out


def machine_label() -> str:
    """The exporting machine in one phrase (:func:`bcedge.choice.describe_machine`), for the baseline."""
    from bcedge.choice import describe_machine, machine_fingerprint

    return describe_machine(machine_fingerprint(with_gpu=True))


def write_acceptance(bundle_dir: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``bundle_dir/acceptance.npz`` atomically."""
    from bcedge.imageio import atomic_write_bytes

    return atomic_write_bytes(Path(bundle_dir) / ACCEPTANCE_FILE, data)


# --------------------------------------------------------------------------- an existing bundle


def reference_predictor(path: Path, threads: int | None = None) -> tuple[Predict, str]:
    """A predictor for ``path``: a Keras model (``.keras``) or an FP32 artifact any bcedge backend runs.

    Returns:
        ``(predict, description for the manifest)``.
    """
    if not path.is_file():
        raise ConfigError(f"--reference {path} does not exist")
    if path.suffix == ".keras":
        from training.evaluate import predict as keras_predict
        from training.models import load_trained

        model = load_trained(path)
        return (lambda x: keras_predict(model, x)), f"Keras model ({path.name})"
    from bcedge.backends import open_backend

    backend_name = {".tflite": "tflite", ".onnx": "onnx"}.get(path.suffix)
    if backend_name is None:
        raise ConfigError(f"--reference {path}: expected a .keras model or an FP32 .tflite / .onnx artifact")
    backend = open_backend(backend_name, path, threads=threads)

    def run(x: np.ndarray) -> np.ndarray:
        return np.concatenate([backend.predict(x[i : i + 1]) for i in range(len(x))])

    return run, f"FP32 {backend_name} artifact ({path.name})"


def validation_images(
    bundle: Any,
    *,
    data: Sequence[str] | None,
    root: Path | None,
    split: Path | None,
    options: dict[str, Any] | None,
    cache: Path,
) -> tuple[np.ndarray, tuple[str, ...]]:
    """The bundle's validation split, preprocessed with the bundle's config through the cache.

    Returns:
        ``(images (N, S, S, 1) float32 in [0, 1], ids)``; samples without a lesion location are left out,
        as the export gate leaves them out.
    """
    from bcedge.datasets import open_dataset
    from bcedge.datasets.cache import prepare
    from bcedge.datasets.registry import parse_options
    from bcedge.datasets.splits import filter_samples, load_split

    prov = bundle.manifest.provenance
    names = list(data or prov.get("data") or [])
    root = root or (Path(prov["root"]) if prov.get("root") else None)
    split = split or (Path(prov["split"]) if prov.get("split") else None)
    if options is None:
        options = parse_options(list((prov.get("recipe") or {}).get("reader_options") or []))
    if not names or root is None or split is None:
        raise ConfigError(f"{bundle.dir}: the manifest names no data/root/split; pass --data, --root and --split")
    samples = [s for name in names for s in open_dataset(name, root, **(options or {})).samples()]
    members = [
        s for s in filter_samples(samples, load_split(split), "val", strict=not options) if not s.lesion_unlocated
    ]
    if not members:
        raise ConfigError(f"{split}: no val images")
    prepared = prepare(members, bundle.preprocess_config(), cache, dataset="acceptance-" + "+".join(names))
    arrays = prepared.arrays([s.id for s in members])
    return arrays["images"], tuple(s.id for s in members)


def add_acceptance(
    bundle_dir: Path,
    reference: Path,
    *,
    data: Sequence[str] | None = None,
    root: Path | None = None,
    split: Path | None = None,
    options: dict[str, Any] | None = None,
    cache: Path = Path(".bcedge-cache"),
    n: int = DEFAULT_N,
    label: str | None = None,
    note: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Add acceptance data to an existing bundle (artifacts untouched); return the manifest entry.

    ``label`` describes the reference in the manifest (default: its file name and kind); ``note``
    is recorded as is (e.g. where the split came from)."""
    from bcedge.bundle import load_bundle, write_manifest

    bundle = load_bundle(bundle_dir)
    images, ids = validation_images(bundle, data=data, root=root, split=split, options=options, cache=cache)
    log(f"{len(images)} validation images preprocessed with the bundle's config ({bundle.manifest.preprocess_hash})")
    predict, described = reference_predictor(reference)
    payload, entry = make_acceptance(
        images,
        predict,
        bundle.threshold,
        ids=ids,
        n=n,
        source="val split",
        split=str(split or bundle.manifest.provenance.get("split")),
        reference=label or described,
        **({"note": note} if note else {}),
    )
    write_acceptance(bundle.dir, payload)
    entry["baseline"] = baselines(bundle.dir, bundle.manifest.artifacts, payload, bundle.threshold)
    entry["baseline_machine"] = machine_label()
    bundle.manifest.acceptance = entry
    write_manifest(bundle.dir, bundle.manifest)
    log(f"wrote {bundle.dir / ACCEPTANCE_FILE} ({len(payload)} bytes, {entry['n_images']} images: {entry['ids']})")
    return entry


def check_bundle(bundle_dir: Path, threads: int | None = None) -> list[tuple[str, dict[str, Any] | str]]:
    """Run every artifact of the bundle through the acceptance check here: ``[(file, verdict dict or error)]``."""
    from bcedge.acceptance import baseline_of, compare, load
    from bcedge.bundle import load_bundle
    from bcedge.formats import PRECISION_SPECS

    bundle = load_bundle(bundle_dir)
    data = load(bundle)
    if data is None:
        raise BundleError(f"{bundle_dir} carries no acceptance data")
    out: list[tuple[str, dict[str, Any] | str]] = []
    for record in bundle.manifest.artifacts:
        try:
            with bundle.open(record, threads=threads) as model:
                probs = np.concatenate([model.predict(data.images[i : i + 1]) for i in range(len(data))])
        except BcedgeError as exc:
            out.append((record.file, str(exc)))
            continue
        tol = PRECISION_SPECS[record.precision].output_tolerance
        base = baseline_of(bundle.manifest.acceptance, record.file, record.sha256)
        verdict = compare(probs, data, threshold=bundle.threshold, output_tolerance=tol, baseline=base)
        out.append((record.file, verdict.to_dict()))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m export.acceptance``: see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m export.acceptance", description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--reference", type=Path, required=True, help="best.keras of the run, or an FP32 artifact")
    parser.add_argument("--data", action="append", help="dataset name(s) (default: the manifest's)")
    parser.add_argument("--root", type=Path, help="data root (default: the manifest's)")
    parser.add_argument("--split", type=Path, help="split file (default: the manifest's)")
    parser.add_argument("--option", "-o", action="append", default=None, help="reader option KEY=VALUE")
    parser.add_argument("--cache", type=Path, default=Path(".bcedge-cache"), help="preprocessed-array cache")
    parser.add_argument("--n", type=int, default=DEFAULT_N, help=f"inputs to keep (default {DEFAULT_N})")
    parser.add_argument("--label", help="how the manifest describes the reference (default: its file name)")
    parser.add_argument("--note", help="a note recorded in the manifest entry (e.g. how the split was made)")
    args = parser.parse_args(argv)
    try:
        options = None
        if args.option:
            from bcedge.datasets.registry import parse_options

            options = parse_options(args.option)
        add_acceptance(
            args.bundle,
            args.reference,
            data=args.data,
            root=args.root,
            split=args.split,
            options=options,
            cache=args.cache,
            n=args.n,
            label=args.label,
            note=args.note,
        )
        for file, verdict in check_bundle(args.bundle):
            if isinstance(verdict, str):
                print(f"{file}: could not run here: {verdict}")
            else:
                v = verdict
                print(
                    f"{file}: {v['status']}: mask Dice {v['dice']:.4f}, mean |dp| {v['mean_abs']:.2e} "
                    f"(allowed {v['mean_tolerance']:.2e}), max |dp| {v['max_abs']:.3f}"
                )
    except BcedgeError as exc:
        print(f"error: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
