"""Print the export table (size, Dice, delta per format) from bundle manifests.

    python benchmarks/report_export.py benchmarks/results/export_*.json

Each file is a bundle's ``manifest.json`` (``bcedge export`` writes it); Dice is
measured at export time through each artifact's runtime backend on the run's
validation lesion images, delta against the Keras model.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> int:
    paths = [Path(p) for p in sys.argv[1:]]
    if not paths:
        print(__doc__)
        return 2
    print("| model | format | precision | size (MB) | Dice | delta | gate |")
    print("|---|---|---|---:|---:|---:|---|")
    for path in paths:
        doc = json.loads(path.read_text())
        name = doc["model"]["name"]
        for art in doc["artifacts"]:
            m = art.get("metrics", {})
            dice = "-" if m.get("dice") is None else f"{m['dice']:.4f}"
            delta = "-" if m.get("delta_dice") is None else f"{m['delta_dice']:+.4f}"
            size = art["size_bytes"] / 1e6
            print(f"| {name} | {art['format']} | {art['precision']} | {size:.2f} | {dice} | {delta} | {art['gate']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
