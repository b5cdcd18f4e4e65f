"""Reproduce the study's table: train the three models on preprocessed arrays, evaluate on test.

Runs wherever Keras runs (TensorFlow, JAX or PyTorch backend; CPU or GPU): the
input is an ``.npz`` written by ``bcedge train --export-arrays`` (the committed
real-data split, preprocessed by ``bcedge.preprocess``), so the machine needs
neither the source images nor pydicom.

    KERAS_BACKEND=jax python benchmarks/train_reproduction.py --arrays data.npz \\
        --out runs/gpu --epochs 60 --batch 8 --time-budget-min 3 --results benchmarks/results/train_gpu.json

Each model's run folder is resumable (``training.train``); the results JSON holds
the per-group table (pixel masks, circle masks, normal images), the history,
wall time, images/s and the machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bcedge import bench
from bcedge.bench.machine import keras_machine_info
from training.data import load_arrays
from training.evaluate import format_row, predict, table
from training.run import best_model, write_json
from training.train import TrainConfig, train

MODELS = ("unet", "unet-mobilenetv2", "unet-vgg19")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arrays", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path, help="folder of the run folders")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--loss", default="bce-dice")
    ap.add_argument("--base-filters", type=int, default=64)
    ap.add_argument("--width", type=float, default=1.0, help="encoder UNets: decoder width and MobileNetV2 alpha")
    ap.add_argument("--patience", type=int, default=20)
    ap.add_argument("--time-budget-min", type=float, default=None, help="per model; resumable")
    ap.add_argument("--mixed-precision", action="store_true")
    ap.add_argument("--results", type=Path, required=True, help="JSON file to write")
    ap.add_argument(
        "--train-on",
        choices=("all", "lesions"),
        default="all",
        help="'lesions' trains and selects on lesion images only, as the study's CBIS-DDSM mass set "
        "(every image has a mass); test is scored on every group either way",
    )
    args = ap.parse_args()

    from training.losses import dice_loss, get_loss
    from training.models import load_trained

    host = bench.machine_info()  # CPU model and GPU names (nvidia-smi) of this machine
    sets, meta = load_arrays(args.arrays)
    if args.train_on == "lesions":
        sets = {k: (v if k == "test" else v.subset(v.positive)) for k, v in sets.items()}
    results: dict = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "arrays": {"file": args.arrays.name, "meta": meta, "counts": {k: len(v) for k, v in sets.items()}},
        "train_on": args.train_on,
        "args": {k: str(v) for k, v in vars(args).items()},
        "machine": {**keras_machine_info(), "cpu": host["cpu_model"], "gpu": "; ".join(host["gpu"]) or None},
        "models": {},
    }
    for name in args.models.split(","):
        config = TrainConfig(
            model=name,
            data=tuple(meta.get("datasets", ["arrays"])),
            root="",
            split=str(meta.get("split", "")),
            size=int(sets["train"].images.shape[1]),
            epochs=args.epochs,
            batch=args.batch,
            lr=args.lr,
            loss=args.loss,
            base_filters=args.base_filters,
            width=args.width if name != "unet" else 1.0,
            patience=args.patience,
            mixed_precision=args.mixed_precision,
            time_budget_s=None if args.time_budget_min is None else args.time_budget_min * 60,
            preprocess=meta.get("preprocess", {}),
            preprocess_hash=str(meta.get("preprocess_hash", "")),
        )
        run_dir = args.out / name
        t0 = time.time()

        def show(kind: str, index: int, logs: dict, name: str = name) -> None:
            if kind == "epoch":
                print(
                    f"{name} epoch {logs['epoch']} loss {logs.get('loss', 0):.4f}"
                    f" val_dice_pos {logs.get('val_dice_positive', 0):.4f}"
                    f" {logs['seconds']:.1f}s",
                    flush=True,
                )

        state = train(config, run_dir, sets["train"], sets["val"], progress=show)
        best = load_trained(best_model(run_dir))
        test = sets["test"]
        t1 = time.time()
        probs = predict(best, test.images)
        infer_s = time.time() - t1
        groups = table(probs, test.masks, test.mask_kinds, {"dice": dice_loss, args.loss: get_loss(args.loss)})
        results["models"][name] = {
            "epochs_run": state["epoch"],
            "best_epoch": state.get("best_epoch"),
            "best_val_dice_positive": state.get("best_val_dice"),
            "stopped_early": bool(state.get("stopped_early")),
            "bn_recalibration": state.get("bn_recalibration"),
            "wall_seconds": round(time.time() - t0, 1),
            "train_images_per_second": state.get("images_per_second"),
            "test_inference_images_per_second": round(len(test) / max(infer_s, 1e-9), 2),
            "params": int(best.count_params()),
            "test": groups,
            "rows": {g: format_row(name, r) for g, r in groups.items()},
            "history": state.get("history", []),
        }
        write_json(args.results, results)
        rows = results["models"][name]["rows"]
        print(name, json.dumps({g: rows[g] for g in rows}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
