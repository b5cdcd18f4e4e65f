"""Issue #12 ablation: a "weight soup", the element-wise mean of fine-tuned checkpoints.

Runs fine-tuned from one starting point (here run A's best epoch: P512L, T512, and W512 which
continues P512L) often sit in one basin of the loss, where the mean of their weights can beat
each of them at the cost of one model (Wortsman et al. 2022, "Model soups"). This makes such a
mean into a run folder that ``benchmarks/ablation_v2.py`` scores like any other run:
``OUT/best.keras`` (weights and batch-norm moving statistics averaged), ``config.json`` of the
first ingredient plus ``soup_of``, and its ``state.json`` with ``soup_of`` and, as
``wall_seconds``, the training time of all its ingredient runs together.

``--recalibrate`` then re-estimates the batch-norm statistics on the whole training images
(:mod:`training.batchnorm`), as ``bcedge train`` does for its checkpoint. Measured
(session 8, validation): that recalibration wrecks a model trained on 256 px patches of 512 px
images (P512L alone: 3.1 false components per normal film instead of 0.13): the whole images'
statistics (mostly background) are not the patches' the layers were trained with. So the
default keeps the averaged moving statistics.

Usage::

    python benchmarks/weight_soup.py OUT_RUN RUN[:last] RUN[:last] ... [--recalibrate --cache CACHE]

``RUN`` reads ``RUN/best.keras``, ``RUN:last`` reads ``RUN/last.keras``. Exit 2 with one
``error:`` line when the ingredients do not share one architecture or a folder is not a run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bcedge.errors import BcedgeError, ConfigError, first_line  # noqa: E402


def ingredient_path(spec: str) -> Path:
    """``RUN`` -> ``RUN/best.keras``; ``RUN:last`` -> ``RUN/last.keras``."""
    run, _, checkpoint = spec.partition(":")
    path = Path(run) / f"{checkpoint or 'best'}.keras"
    if checkpoint not in ("", "best", "last") or not path.is_file():
        raise ConfigError(f"{spec}: no such checkpoint (expected RUN or RUN:last with RUN/best.keras or last.keras)")
    return path


def mean_weights(weight_lists: list[list[np.ndarray]]) -> list[np.ndarray]:
    """Element-wise mean of each weight over the ingredients (float64 sum, original dtype).

    Args:
        weight_lists: per ingredient, ``model.get_weights()`` (trainable and not, in layer order).

    Raises:
        ConfigError: the ingredients differ in the number or shapes of their weights.
    """
    first = weight_lists[0]
    for k, weights in enumerate(weight_lists[1:], start=2):
        shapes = [w.shape for w in weights]
        if shapes != [w.shape for w in first]:
            raise ConfigError(f"ingredient {k} has another architecture than ingredient 1 (weight shapes differ)")
    return [
        np.mean([np.asarray(weights[i], np.float64) for weights in weight_lists], axis=0).astype(first[i].dtype)
        for i in range(len(first))
    ]


def make_soup(out: Path, specs: list[str], recalibrate_cache: Path | None = None) -> dict:
    """Write the soup run folder ``out``; returns its ``state.json`` content.

    Raises:
        ConfigError: ``out`` exists, fewer than two ingredients, or they do not match.
    """
    from training.models import load_trained
    from training.run import BEST, read_config, read_state, write_config, write_state

    if out.exists():
        raise ConfigError(f"{out} exists; choose a new folder")
    if len(specs) < 2:
        raise ConfigError("a soup needs at least two ingredients")
    paths = [ingredient_path(s) for s in specs]
    models = []
    for path in paths:
        try:
            models.append(load_trained(path))
        except Exception as exc:  # Keras/zip/h5 errors of a damaged checkpoint: one line, not a traceback
            raise ConfigError(f"{path}: cannot load the checkpoint ({first_line(exc)})") from exc
    soup = models[0]
    soup.set_weights(mean_weights([m.get_weights() for m in models]))
    config = read_config(paths[0].parent)
    state = dict(read_state(paths[0].parent) or {})
    recalibrated = 0
    if recalibrate_cache is not None:
        from bcedge.preprocess import PreprocessConfig
        from training.batchnorm import recalibrate
        from training.data import prepare_split_sets

        sets, _ = prepare_split_sets(
            tuple(config["data"]),
            config["root"],
            config["split"],
            PreprocessConfig.from_dict(config["preprocess"]),
            recalibrate_cache,
        )
        recalibrated = recalibrate(soup, sets["train"].images, int(config.get("batch", 8)))
    out.mkdir(parents=True)
    soup.save(out / BEST)
    soup_of = {"ingredients": [str(p) for p in paths], "bn_recalibrated_layers": recalibrated}
    write_config(out, {**config, "soup_of": soup_of})
    state.pop("bn_recalibration", None)  # it applied to the first ingredient alone
    # What the soup cost to train: every distinct ingredient run's wall time (None if one lacks it).
    walls = [(read_state(run) or {}).get("wall_seconds") for run in dict.fromkeys(p.parent for p in paths)]
    state["wall_seconds"] = None if None in walls else round(sum(walls), 1)
    state["soup_of"] = soup_of
    write_state(out, state)
    return state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="new run folder")
    parser.add_argument("ingredients", nargs="+", help="RUN (best.keras) or RUN:last (last.keras)")
    parser.add_argument("--recalibrate", action="store_true", help="re-estimate BN statistics on the training images")
    parser.add_argument("--cache", type=Path, help="preprocessed-array cache (with --recalibrate)")
    args = parser.parse_args()
    try:
        if args.recalibrate and args.cache is None:
            raise ConfigError("--recalibrate needs --cache")
        make_soup(args.out, args.ingredients, args.cache if args.recalibrate else None)
    except BcedgeError as exc:  # one line, exit 2, as bcedge's CLI
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"wrote {args.out}: mean of {len(args.ingredients)} checkpoints")


if __name__ == "__main__":
    main()
