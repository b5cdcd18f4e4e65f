"""Issue #14 item 3: is the ONNX INT8 artifact (QDQ, per-channel, 7-bit weights) right on this CPU, and fast?

For one model (``mass``: a training run and the bundle ``bcedge export --formats onnx,onnx-int8`` made
of it; ``demo``: the demo bundle's FP32 TFLite twin, converted to ONNX here) it

1. quantises the FP32 ONNX model a second time with **full-range** weights (``reduce_range=False``,
   same calibration images, same code path: :func:`export.onnx.quantize_int8`), the variant issue #14
   reported wrong on AVX2, so that claim is measured on this machine rather than repeated;
2. runs every artifact on the preprocessed **validation split** (the export gate's images, through
   the runtime backends, one image per call, 1 thread) and records, against the FP32 reference (the
   Keras model for ``mass``, the FP32 TFLite for ``demo``): pooled mask Dice at the bundle threshold,
   the per-image mean of it, mean and max ``|p - p_ref|``; and the **task** Dice against the ground
   truth (the gate's metric: per-image mean over lesion images, :func:`export.verify.score`);
3. times the artifacts **interleaved** (rounds; in each round every artifact predicts the same few
   images, the order rotating), recording this process's CPU time per image
   (``time.process_time``, all threads) and wall time, with the other processes' CPU share during
   each call set (:class:`bcedge.bench.load.LoadMeter`). On a busy machine only the CPU times compare;
   the JSON says ``measured under load`` when the others used more than 10 % of the CPUs;
4. writes a bundle folder holding every artifact (``--variants-out``) so ``bcedge evaluate --artifact``
   can score each one end to end on the original pixel grid (run separately; see benchmarks/README.md).

Usage::

    python benchmarks/onnx_int8_accuracy.py mass --run /work/runs/P512L --bundle /tmp/P512L_onnx \\
        --litert-bundle /work/bundles/P512L --cache CACHE --variants-out /tmp/P512L_variants \\
        --out benchmarks/results/onnx_int8_accuracy.json
    python benchmarks/onnx_int8_accuracy.py demo --fp32-tflite model_fp32.tflite --data phantoms \\
        --root PHANTOMS --split SPLIT.json --cache CACHE --variants-out /tmp/demo_variants \\
        --out benchmarks/results/onnx_int8_accuracy.json

The output JSON keeps one entry per model (``mass_model``, ``demo_model``); a run replaces its own.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bcedge.backends import open_backend  # noqa: E402
from bcedge.bench.load import LoadMeter  # noqa: E402
from bcedge.bench.machine import library_versions, machine_info, source_state  # noqa: E402


def mask_agreement(probs: np.ndarray, ref: np.ndarray, threshold: float) -> dict[str, float]:
    """Agreement of ``probs`` with ``ref`` (both (N, S, S, 1) float32 probabilities).

    Returns:
        ``dice_pooled`` (2|A and B| / (|A| + |B|) over all images), ``dice_per_image_mean`` (images where
        either mask is non-empty), ``dice_per_image_min``, ``mean_abs``, ``max_abs``.
    """
    a, b = probs >= threshold, ref >= threshold
    inter = np.logical_and(a, b).reshape(len(a), -1).sum(1)
    total = a.reshape(len(a), -1).sum(1) + b.reshape(len(b), -1).sum(1)
    per_image = [2.0 * i / t for i, t in zip(inter, total, strict=True) if t > 0]
    diff = np.abs(probs.astype(np.float64) - ref.astype(np.float64))
    return {
        "dice_pooled": round(float(2.0 * inter.sum() / max(1, total.sum())), 5),
        "dice_per_image_mean": round(float(np.mean(per_image)), 5) if per_image else 1.0,
        "dice_per_image_min": round(float(np.min(per_image)), 5) if per_image else 1.0,
        "mean_abs": round(float(diff.mean()), 6),
        "max_abs": round(float(diff.max()), 5),
    }


def predict_all(model: Any, images: np.ndarray) -> np.ndarray:
    """(N, S, S, 1) float32 probabilities, one image per call (what the runtime does)."""
    return np.concatenate([model.predict(images[i : i + 1]) for i in range(len(images))])


def interleaved_timing(models: dict[str, Any], images: np.ndarray, rounds: int) -> dict[str, Any]:
    """Per artifact: median CPU ms and wall ms per image over ``rounds`` interleaved rounds (order rotating)."""
    labels = list(models)
    rows: dict[str, list[dict[str, Any]]] = {label: [] for label in labels}
    for label in labels:  # one untimed call each: allocation and kernel set-up are not inference
        models[label].predict(images[:1])
    for r in range(rounds):
        order = labels[r % len(labels) :] + labels[: r % len(labels)]
        for label in order:
            with LoadMeter() as meter:
                for i in range(len(images)):
                    models[label].predict(images[i : i + 1])
            rows[label].append(meter.result)
    out: dict[str, Any] = {}
    for label, got in rows.items():
        n = len(images)
        shares = [g["others_cpu_share"] for g in got if g["others_cpu_share"] is not None]
        out[label] = {
            "cpu_ms_per_image_median": round(float(np.median([g["cpu_ms"] / n for g in got])), 2),
            "cpu_ms_per_image_min": round(float(np.min([g["cpu_ms"] / n for g in got])), 2),
            "wall_ms_per_image_median": round(float(np.median([g["wall_ms"] / n for g in got])), 2),
            "others_cpu_share_mean": round(float(np.mean(shares)), 3) if shares else None,
            "busy_rounds": sum(bool(g["busy"]) for g in got),
            "rounds": len(got),
        }
    return out


def run_subject(
    name: str,
    artifacts: dict[str, tuple[str, Path]],
    reference: np.ndarray,
    reference_label: str,
    images: np.ndarray,
    masks: np.ndarray,
    threshold: float,
    *,
    rounds: int,
    timing_images: int,
    timing_only: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """Accuracy (vs the reference and the ground truth) and interleaved CPU time of every artifact
    (``timing_only``: labels that are timed but not scored, their accuracy being known from their export)."""
    from export.verify import score

    models = {label: open_backend(backend, path, threads=1) for label, (backend, path) in artifacts.items()}
    try:
        ref_task = score(reference, masks, threshold)
        accuracy: dict[str, Any] = {}
        for label, model in models.items():
            if label in timing_only:
                continue
            t0 = time.perf_counter()
            probs = predict_all(model, images)
            task = score(probs, masks, threshold)
            accuracy[label] = {
                "file": artifacts[label][1].name,
                "backend": artifacts[label][0],
                "size_bytes": artifacts[label][1].stat().st_size,
                f"vs_{reference_label}": mask_agreement(probs, reference, threshold),
                "task_dice_lesion_images": round(task["dice"], 5),
                "task_dice_all_images": round(task["dice_all_images"], 5),
                "task_delta_vs_reference": round(task["dice"] - ref_task["dice"], 5),
                "seconds": round(time.perf_counter() - t0, 1),
            }
            print(f"{name} {label}: {accuracy[label]}", flush=True)
        timing = interleaved_timing(models, images[:timing_images], rounds)
    finally:
        for model in models.values():
            model.close()
    busy = any(t["busy_rounds"] for t in timing.values())
    return {
        "reference": reference_label,
        "reference_task_dice_lesion_images": round(ref_task["dice"], 5),
        "reference_task_dice_all_images": round(ref_task["dice_all_images"], 5),
        "threshold": threshold,
        "n_val_images": len(images),
        "n_val_lesion_images": int(ref_task["n_lesion_images"]),
        "accuracy": accuracy,
        "timing": {
            "threads": 1,
            "rounds": rounds,
            "images_per_round": timing_images,
            "label": "measured under load (others > 10 % of the CPUs in some round): compare CPU times only"
            if busy
            else "quiet",
            "per_artifact": timing,
        },
    }


def variants_bundle(src: Path, out: Path, extra: dict[str, tuple[Path, str, str]]) -> Path:
    """A copy of bundle ``src`` plus ``extra`` artifacts ``{file: (path, format, precision)}`` (gate not measured),
    for ``bcedge evaluate --artifact FILE``."""
    from bcedge.bundle import ArtifactRecord, load_bundle, write_manifest

    bundle = load_bundle(src)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(src, out)
    manifest = bundle.manifest
    for file, (path, fmt, precision) in extra.items():
        if not (out / file).exists():
            shutil.copy2(path, out / file)
        manifest.artifacts = [a for a in manifest.artifacts if a.file != file]
        manifest.artifacts.append(
            ArtifactRecord.from_file(out, file, format=fmt, precision=precision, backend=fmt, gate="not-measured")
        )
    write_manifest(out, manifest)
    return out


def mass(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The 512 px mass model: Keras reference, the export's ONNX FP32 / INT8, a full-range INT8, LiteRT for context."""
    from bcedge.bundle import load_bundle
    from bcedge.datasets import open_dataset
    from bcedge.datasets.cache import prepare
    from bcedge.datasets.splits import filter_samples, load_split
    from export.calibration import CALIB_SEED, choose
    from export.onnx import calibration_cache_file, quantize_int8
    from training.run import load_run

    run = load_run(args.run)
    bundle = load_bundle(args.bundle)
    # The export's split arrays and calibration draw (training.data.prepare_split_sets and
    # export.calibration.calibration_images, same order, same bytes) read from the same cache, without
    # importing Keras: the calibration cache key of the export then matches.
    split = load_split(REPO / run.config["split"])
    names = list(run.config["data"])
    samples = [s for name in names for s in open_dataset(name, REPO / run.config["root"]).samples()]
    chosen = {k: [s for s in filter_samples(samples, split, k) if not s.lesion_unlocated] for k in split.splits}
    everything = [s for members in chosen.values() for s in members]
    cache = prepare(everything, run.preprocess_config(), args.cache, dataset="+".join(names))
    val = cache.arrays([s.id for s in chosen["val"]])
    train = cache.arrays([s.id for s in chosen["train"]])["images"]
    calib = np.ascontiguousarray(train[choose(len(train), args.n_calib)], dtype=np.float32)
    calib_info = {"source": "train split", "n": len(calib), "seed": CALIB_SEED}
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    full = work / "model_int8_fullrange.onnx"
    t0 = time.perf_counter()
    # The export kept its activation ranges in the cache: the full-range variant gets the very same ones.
    ranges = calibration_cache_file(args.cache, bundle.dir / "model.onnx", calib)
    full_details = quantize_int8(bundle.dir / "model.onnx", full, calib, reduce_range=False, calibration_cache=ranges)
    exported = next(a for a in bundle.manifest.artifacts if a.file == "model_int8.onnx")
    full_details["calibration_ranges_reused"] = ranges.name == exported.details.get("calibration_cache")
    quantise_s = time.perf_counter() - t0
    images, masks = val["images"], val["masks"]
    if args.subset == "lesion":  # the gate's metric is over the lesion images; the load left no time for the rest
        keep = masks.reshape(len(masks), -1).any(axis=1)
        images, masks = images[keep], masks[keep]
    if args.reference == "keras":
        from training.evaluate import predict
        from training.models import load_trained

        reference = predict(load_trained(run.model_path), images)
    else:  # tf2onnx's FP32 reproduces Keras within 1e-5 (tests/test_export_formats.py; the gate's delta is 0)
        with open_backend("onnx", bundle.dir / "model.onnx", threads=1) as fp32_model:
            reference = predict_all(fp32_model, images)
    artifacts: dict[str, tuple[str, Path]] = {
        "onnx-int8 (7-bit, exported)": ("onnx", bundle.dir / "model_int8.onnx"),
        "onnx-int8 full-range": ("onnx", full),
        "onnx-fp32": ("onnx", bundle.dir / "model.onnx"),
    }
    litert = set()
    if args.litert_bundle:
        for file in ("model_int8.tflite", "model_fp16.tflite"):
            if (Path(args.litert_bundle) / file).is_file():
                artifacts[f"tflite-{file[6:-7]}"] = ("tflite", Path(args.litert_bundle) / file)
                litert.add(f"tflite-{file[6:-7]}")
    if args.reference != "keras":
        litert.add("onnx-fp32")  # it is the reference: timed only
    result = run_subject(
        "mass",
        artifacts,
        reference,
        args.reference,
        images,
        masks,
        bundle.threshold,
        rounds=args.rounds,
        timing_images=args.timing_images,
        timing_only=frozenset(litert),
    )
    result["subset"] = args.subset
    result["exported_bundle"] = {
        a.file: {"gate": a.gate, "metrics": a.metrics, "details": a.details} for a in bundle.manifest.artifacts
    }
    result["acceptance_baseline"] = (bundle.manifest.acceptance or {}).get("baseline")
    result["full_range_quantisation"] = {**full_details, "seconds": round(quantise_s, 1), "calibration": calib_info}
    result["run"] = str(args.run)
    if args.variants_out:
        variants_bundle(bundle.dir, Path(args.variants_out), {full.name: (full, "onnx", "int8")})
    return "mass_model", result


def demo(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The 256 px demo model: its FP32 TFLite twin as reference, converted to ONNX and quantised both ways here."""
    import tf2onnx

    from bcedge.bundle import load_bundle
    from bcedge.datasets import open_dataset
    from bcedge.datasets.cache import prepare
    from bcedge.datasets.splits import filter_samples, load_split
    from export.calibration import choose
    from export.onnx import quantize_int8

    bundle = load_bundle(REPO / "bcedge" / "demo_model")
    # The export's sets (training.data.prepare_split_sets: split members with a located lesion or none),
    # but only the val images and the calibration draw are preprocessed (the whole train split is not needed).
    samples = list(open_dataset(args.data, Path(args.root)).samples())
    split = load_split(args.split)
    val_s, train_s = (
        [s for s in filter_samples(samples, split, n) if not s.lesion_unlocated] for n in ("val", "train")
    )
    picked = [train_s[i] for i in choose(len(train_s), args.n_calib)]
    cache = prepare(val_s + picked, bundle.preprocess_config(), Path(args.cache), dataset="onnx-int8-demo")
    val = cache.arrays([s.id for s in val_s])
    calib = cache.arrays([s.id for s in picked])["images"]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    fp32_onnx = work / "model.onnx"
    proto, _ = tf2onnx.convert.from_tflite(str(args.fp32_tflite), opset=17)
    fp32_onnx.write_bytes(proto.SerializeToString())
    seven = work / "model_int8.onnx"
    full = work / "model_int8_fullrange.onnx"
    calib_cache = work / "calibration_ranges.json"
    calib_cache.unlink(missing_ok=True)
    details = {
        "7-bit": quantize_int8(fp32_onnx, seven, calib, calibration_cache=calib_cache),
        "full-range": quantize_int8(fp32_onnx, full, calib, reduce_range=False, calibration_cache=calib_cache),
    }
    with open_backend("tflite", Path(args.fp32_tflite), threads=1) as ref_model:
        reference = predict_all(ref_model, val["images"])
    artifacts = {
        "tflite-fp32 (reference)": ("tflite", Path(args.fp32_tflite)),
        "tflite-int8 (shipped)": ("tflite", bundle.dir / "model_int8.tflite"),
        "onnx-fp32": ("onnx", fp32_onnx),
        "onnx-int8 (7-bit)": ("onnx", seven),
        "onnx-int8 full-range": ("onnx", full),
    }
    result = run_subject(
        "demo",
        artifacts,
        reference,
        "tflite_fp32",
        val["images"],
        val["masks"],
        bundle.threshold,
        rounds=args.rounds,
        timing_images=args.timing_images,
    )
    result["quantisation"] = details
    result["onnx_from"] = "tf2onnx.convert.from_tflite of the FP32 TFLite twin (the demo run's Keras model is gone)"
    result["fp32_onnx_ops"] = sorted({n.op_type for n in proto.graph.node})
    if args.variants_out:
        extra = {
            "model_fp32.tflite": (Path(args.fp32_tflite), "tflite", "fp32"),
            "model.onnx": (fp32_onnx, "onnx", "fp32"),
            "model_int8.onnx": (seven, "onnx", "int8"),
            "model_int8_fullrange.onnx": (full, "onnx", "int8"),
        }
        variants_bundle(bundle.dir, Path(args.variants_out), extra)
    return "demo_model", result


def main(argv: list[str] | None = None) -> int:
    """Measure one model and merge its entry into ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", choices=("mass", "demo"))
    parser.add_argument("--run", type=Path, help="mass: the training run (best.keras, config.json)")
    parser.add_argument("--bundle", type=Path, help="mass: bcedge export --formats onnx,onnx-int8 of the run")
    parser.add_argument("--litert-bundle", type=Path, help="mass: the run's TFLite export, timed beside it")
    parser.add_argument("--fp32-tflite", type=Path, help="demo: the FP32 TFLite twin of bcedge/demo_model")
    parser.add_argument("--data", default="phantoms")
    parser.add_argument("--root", type=Path)
    parser.add_argument("--split", type=Path)
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/onnx_int8_work"))
    parser.add_argument("--variants-out", type=Path)
    parser.add_argument("--n-calib", type=int, default=200)
    parser.add_argument("--subset", choices=("all", "lesion"), default="all", help="mass: val images scored")
    parser.add_argument("--reference", choices=("keras", "onnx_fp32"), default="keras", help="mass: FP32 reference")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--timing-images", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    args.work = args.work / args.model
    key, result = (mass if args.model == "mass" else demo)(args)
    result["machine"] = machine_info(threads=[1])
    result["versions"] = library_versions(["onnxruntime", "onnx", "tf2onnx"])
    result["source"] = source_state(REPO)
    result["measured_at_utc"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    doc = json.loads(args.out.read_text()) if args.out.is_file() else {}
    doc[key] = result
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    print(f"wrote {args.out} [{key}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
