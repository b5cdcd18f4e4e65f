"""Print the study's table from reproduction results (``train_reproduction.py`` JSON files).

    python benchmarks/report_training.py benchmarks/results/train_cpu_*.json

One Markdown table per mask group (``pixel``: CDD-CESM outlines; ``circle``:
mini-MIAS discs), models in the study's order, beside the study's own figures,
then a line per model with epochs, wall time and the machine.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ORDER = ("unet", "unet-mobilenetv2", "unet-vgg19")
SEED = {  # the published CBIS-DDSM table
    "unet": {"dice": 0.4689, "iou": 0.3228, "loss": 0.5377, "recall": 0.3271, "precision": 0.7122},
    "unet-mobilenetv2": {"dice": 0.4851, "iou": 0.3343, "loss": 0.5195, "recall": 0.4015, "precision": 0.5797},
    "unet-vgg19": {"dice": 0.4970, "iou": 0.3447, "loss": 0.5077, "recall": 0.3960, "precision": 0.6271},
}
METRICS = ("dice", "iou", "loss", "recall", "precision")


def load(paths: list[Path]) -> dict[str, dict]:
    """model name -> (result, file) merged over the files (later files win)."""
    models: dict[str, dict] = {}
    for path in paths:
        doc = json.loads(path.read_text())
        for name, result in doc["models"].items():
            models[name] = {**result, "_file": path.name, "_machine": doc.get("machine", {})}
    return models


def table(models: dict[str, dict], group: str) -> str:
    names = [m for m in ORDER if m in models]
    head = "| | " + " | ".join(f"{m} (ours)" for m in names) + " | " + " | ".join(f"{m} (study)" for m in names) + " |"
    lines = [head, "|---" * (1 + 2 * len(names)) + "|"]
    for metric in METRICS:
        ours = []
        for m in names:
            res = models[m]["test"].get(group)
            value = None if res is None else (res["loss"]["dice"] if metric == "loss" else res["mean"][metric])
            ours.append("-" if value is None else f"{value:.4f}")
        label = "Loss (1 - soft Dice)" if metric == "loss" else metric.capitalize() if metric != "iou" else "IoU"
        lines.append(
            f"| {label} | " + " | ".join(ours) + " | " + " | ".join(f"{SEED[m][metric]:.4f}" for m in names) + " |"
        )
    n = {models[m]["test"].get(group, {}).get("n_images", 0) for m in names}
    lines.append(f"\n{group} test images: {', '.join(str(x) for x in sorted(n))}")
    return "\n".join(lines)


def main() -> int:
    paths = [Path(p) for p in sys.argv[1:]]
    if not paths:
        print(__doc__)
        return 2
    models = load(paths)
    for group in ("pixel", "circle"):
        print(f"\n#### {group} masks\n")
        print(table(models, group))
    print()
    for m in [m for m in ORDER if m in models]:
        r = models[m]
        normal = r["test"].get("normal", {})
        machine = r["_machine"]
        print(
            f"- {m}: {r['epochs_run']} epochs (best {r['best_epoch']}), {r['wall_seconds'] / 60:.1f} min, "
            f"{r.get('train_images_per_second')} train img/s, normal test images with any predicted pixel: "
            f"{normal.get('false_positive_rate', float('nan')):.0%}; BN recalibration: {r.get('bn_recalibration')}; "
            f"{machine.get('backend')} on {machine.get('gpu') or machine.get('cpu')} ({r['_file']})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
