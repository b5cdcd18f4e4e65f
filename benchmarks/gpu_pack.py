"""Carry a trained run back from a machine whose file transfer is size-limited.

The lent GPU machine returns at most 16 MiB per file. ``pack`` stores a run's
``best.keras`` as float16 weights plus the run's ``config.json`` in one ``.npz``,
split into numbered chunks; ``unpack`` (on the desktop, TensorFlow backend) rebuilds
the model from the config, loads the weights and writes a run folder that
``bcedge export`` takes. Float16 storage rounds each weight to 11 significant bits;
the exported artifacts and their gate are measured on the rebuilt model, so every
figure downstream describes exactly what was carried back.

A weight that does not fit float16 (batch-norm moving means and variances of VGG19's
0-255-scaled activations exceed 65504) is stored as float32. Chunks written before
that rule hold inf there: ``unpack --recalibrate ARRAYS`` resets such statistics and
re-estimates every batch-norm layer's moving statistics on the training images
(``training.batchnorm.recalibrate``), and records that in ``state.json``.

    python benchmarks/gpu_pack.py pack RUN_DIR OUT_PREFIX [--chunk-mib 15]
    python benchmarks/gpu_pack.py unpack OUT_PREFIX RUN_DIR [--recalibrate ARRAYS.npz [--lesions-only]]
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def pack(run_dir: Path, prefix: Path, chunk_mib: float) -> list[Path]:
    """Write ``PREFIX.partNN`` chunks of an npz holding the run's config and float16 weights."""
    from training.models import load_trained
    from training.run import STATE, best_model, read_config, read_state

    model = load_trained(best_model(run_dir))
    arrays = {}
    for i, w in enumerate(model.get_weights()):
        half = w.astype(np.float16)
        arrays[f"w{i:04d}"] = half if np.isfinite(half).all() == np.isfinite(w).all() else w
    meta = {"config": read_config(run_dir)}
    state = read_state(run_dir)
    if state is not None:
        meta[STATE] = state
    buf = io.BytesIO()
    np.savez(buf, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
    data = buf.getvalue()
    step = int(chunk_mib * 2**20)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(0, len(data), step):
        path = prefix.with_name(f"{prefix.name}.part{i // step:02d}")
        path.write_bytes(data[i : i + step])
        paths.append(path)
    return paths


def unpack(prefix: Path, run_dir: Path, recalibrate_on: Path | None = None, lesions_only: bool = False) -> Path:
    """Rebuild ``RUN_DIR/best.keras`` (+ config.json, state.json) from the chunks.

    Args:
        prefix: chunk prefix (``PREFIX.part00``, ...).
        run_dir: run folder to (re)create.
        recalibrate_on: split arrays (``bcedge train --export-arrays``): re-estimate the
            batch-norm statistics on their train images; needed when a statistic is not finite.
        lesions_only: recalibrate on the train images with a lesion (runs trained with
            ``--train-on lesions``).
    """
    from training.models import build_model
    from training.run import STATE, best_model, write_config, write_state
    from training.train import TrainConfig

    parts = sorted(prefix.parent.glob(f"{prefix.name}.part*"))
    if not parts:
        raise SystemExit(f"no chunks {prefix}.partNN")
    npz = np.load(io.BytesIO(b"".join(p.read_bytes() for p in parts)))
    meta = json.loads(npz["meta"].tobytes().decode())
    cfg = meta["config"]
    known = set(TrainConfig.__dataclass_fields__)
    config = TrainConfig(**{**{k: v for k, v in cfg.items() if k in known}, "data": tuple(cfg["data"])})
    model = build_model(
        config.model,
        config.size,
        None,
        base_filters=config.base_filters,
        upsampling=config.upsampling,  # type: ignore[arg-type]
        width=config.width,
    )
    weights = [npz[f"w{i:04d}"].astype(np.float32) for i in range(len(model.get_weights()))]
    broken = [i for i, w in enumerate(weights) if not np.isfinite(w).all()]
    if broken and recalibrate_on is None:
        raise SystemExit(f"weights {broken} are not finite (float16 overflow): pass --recalibrate ARRAYS.npz")
    for i in broken:  # moving statistics only: recalibration below replaces them
        weights[i] = np.nan_to_num(weights[i], nan=0.0, posinf=0.0, neginf=0.0)
    model.set_weights(weights)
    if recalibrate_on is not None:
        from training.batchnorm import batch_norm_layers, recalibrate
        from training.data import load_arrays

        stats = {id(v) for layer in batch_norm_layers(model) for v in (layer.moving_mean, layer.moving_variance)}
        trainable_broken = [i for i in broken if id(model.weights[i]) not in stats]
        if trainable_broken:
            raise SystemExit(f"weights {trainable_broken} are not finite and are not batch-norm statistics")
        sets, _ = load_arrays(recalibrate_on)
        train = sets["train"].subset(sets["train"].positive) if lesions_only else sets["train"]
        layers = recalibrate(model, train.images, int(cfg.get("batch", 8)))
        meta.setdefault(STATE, {})["gpu_pack_recalibration"] = {
            "arrays": recalibrate_on.name,
            "images": len(train.images),
            "lesions_only": lesions_only,
            "layers": layers,
            "non_finite_weights": broken,
        }
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    write_config(run_dir, cfg)
    if STATE in meta:
        write_state(run_dir, meta[STATE])
    model.save(best_model(run_dir))
    return run_dir


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("run_dir", type=Path)
    p.add_argument("prefix", type=Path)
    p.add_argument("--chunk-mib", type=float, default=15.0)
    u = sub.add_parser("unpack")
    u.add_argument("prefix", type=Path)
    u.add_argument("run_dir", type=Path)
    u.add_argument("--recalibrate", type=Path, default=None, metavar="ARRAYS", help="split arrays .npz")
    u.add_argument("--lesions-only", action="store_true")
    args = ap.parse_args()
    if args.cmd == "pack":
        for path in pack(args.run_dir, args.prefix, args.chunk_mib):
            print(path, path.stat().st_size)
    else:
        print(unpack(args.prefix, args.run_dir, args.recalibrate, args.lesions_only))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
