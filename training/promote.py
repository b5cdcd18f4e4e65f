"""Make a run's final epoch (``last.keras``) the model that evaluation and export read.

A run keeps as ``best.keras`` the epoch with the highest validation Dice over lesion images
at threshold 0.5; that criterion ignores false positives on normal images. When a later
comparison on the validation split (``benchmarks/ablation_v2.py RUN:last``, which adds the
false-positive limit and chooses the threshold) prefers the final epoch, this copies the
run into a new folder whose ``best.keras`` is that epoch (at the run's fixed input size)
and whose ``state.json`` records the choice, so ``bcedge export`` and ``bcedge evaluate``
take it and the bundle's provenance says so. The source run is left unchanged.

Usage::

    python -m training.promote RUN_DIR OUT_DIR --reason "validation: ..."
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from bcedge.errors import BcedgeError, ConfigError
from training.run import HISTORY_CSV, HISTORY_JSON, LAST, RUN_CONFIG, read_config, read_state, write_state


def promote_last(run_dir: Path, out_dir: Path, reason: str) -> dict:
    """Copy ``run_dir`` to ``out_dir`` with ``last.keras`` as its selected model; returns the new state.

    Raises:
        ConfigError: ``run_dir`` has no finished run, or ``out_dir`` exists.
    """
    from training.train import TrainConfig, fix_input_size

    state = read_state(run_dir)
    if not state or not (run_dir / LAST).is_file():
        raise ConfigError(f"{run_dir}: no state.json/last.keras; expected a bcedge train run folder")
    if out_dir.exists():
        raise ConfigError(f"{out_dir} exists; choose a new folder")
    config = TrainConfig.from_saved(read_config(run_dir))
    out_dir.mkdir(parents=True)
    for name in (RUN_CONFIG, HISTORY_JSON, HISTORY_CSV):
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, out_dir / name)
    fix_input_size(out_dir, config, source=run_dir / LAST)
    last = state["history"][-1] if state.get("history") else {}
    new = {
        **state,
        "best_epoch": state["epoch"],
        "best_val_dice": last.get("val_dice_positive", state.get("best_val_dice")),
        "selected_checkpoint": {
            "file": LAST,
            "epoch": state["epoch"],
            "from_run": str(run_dir),
            "run_best_epoch": state.get("best_epoch"),
            "reason": reason,
        },
    }
    new.pop("bn_recalibration", None)  # it applied to the other checkpoint
    write_state(out_dir, new)
    return new


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--reason", required=True, help="why the final epoch was chosen (recorded)")
    args = parser.parse_args()
    try:
        state = promote_last(args.run_dir, args.out_dir, args.reason)
    except BcedgeError as exc:  # a wrong or unreadable run folder: one line, exit 2 (as bcedge's CLI)
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"wrote {args.out_dir}: best.keras = epoch {state['best_epoch']} of {args.run_dir}")


if __name__ == "__main__":
    main()
