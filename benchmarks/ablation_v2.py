"""Issue #12 ablation table: each recipe choice as a training run, compared on VALIDATION only.

For every run folder given, loads ``best.keras`` (the checkpoint the run selected by its
own validation Dice over lesion images; ``RUN_DIR:last`` scores ``last.keras``, the final
epoch, instead), predicts the validation split of the run's
dataset on the model grid, and scores it with :mod:`bcedge.evaluation` (the functions
``bcedge evaluate`` and ``bcedge benchmark`` use) after the runtime's post-processing
rule on the model grid: threshold, then components smaller than ``min_area`` model
pixels dropped. Every run is scored on the same validation images (the full dataset's
val split, whatever reader options narrowed its training data). Reported per run: the
recipe (from ``config.json``), epochs, wall time,
validation Dice on CDD-CESM low-energy (DM) pixel-mask images (the images the shipped
model is for), detection rate, false-positive components per normal image, each with n
and a bootstrap 95 % interval; at threshold 0.5 and at the operating point
chosen on validation (among the thresholds 0.3-0.9 that find >= 80 % of the DM lesions
with <= 0.5 false-positive components per normal image, those within 0.005 of the best DM
Dice; the middle one of them, so the operating point does not sit at the edge of a Dice
cliff; see :func:`choose`; the minimum area is the runtime's default).
``--postprocess-grid`` also scores, at each row's chosen threshold, larger minimum areas and
seed thresholds (hysteresis: keep a component only when its peak reaches the seed), reported
in a second table; the runtime adopts one only when it beats the default rule on validation.

Usage::

    python benchmarks/ablation_v2.py RUN_DIR [RUN_DIR ...] --cache CACHE --out benchmarks/results/ablation_v2.json
    # an output ensemble (mean of the members' probability maps) is one row:
    python benchmarks/ablation_v2.py /work/runs/P512L+/work/runs/U512:last --cache CACHE --out ENS.json
    # a run scored on its own (e.g. while another trains), then added to the committed table:
    python benchmarks/ablation_v2.py --merge benchmarks/results/ablation_v2.json --add SCORED.json \
        --out benchmarks/results/ablation_v2.json --markdown benchmarks/results/ablation_v2.md

The test split is never read here.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

THRESHOLDS = tuple(round(0.3 + 0.025 * i, 3) for i in range(25))  # 0.3 .. 0.9
# The runtime's rule for scans without a pixel spacing (CDD-CESM, mini-MIAS PNGs): components
# under default_min_area_model_px(size) model pixels are dropped (5 at 256 px, 20 at 512 px);
# only the threshold is chosen here, since the bundle's manifest carries the threshold and the
# runtime owns the area rule.
from bcedge.postprocess import default_min_area_model_px  # noqa: E402

FP_LIMIT = 0.5
#: The post-processing grid (``--postprocess-grid``), scored at each run's chosen threshold:
#: minimum component areas in model pixels (besides the runtime default) and seed thresholds (a
#: component is kept only when its peak probability reaches the seed; None: no seed, the
#: runtime's rule). Reported, not used by :func:`choose`.
PP_MIN_AREAS = (5, 20, 60, 150, 400)
PP_SEEDS = (None, 0.7, 0.75, 0.8)
#: Share of validation DM lesions an operating point must find (the issue's ">= 80 % found").
MIN_FOUND = 0.8
#: Thresholds whose DM Dice is within TIE of the best count as equally good (see score_run).
TIE = 0.005


def _postprocess(prob: np.ndarray, threshold: float, min_area: int, seed: float | None = None) -> np.ndarray:
    """(S, S) uint8 mask: ``prob >= threshold``, components under ``min_area`` pixels dropped.

    With ``seed``, also components whose peak probability is under ``seed`` (hysteresis: the
    outline at ``threshold``, the decision at ``seed``).
    """
    import cv2

    mask = (prob >= threshold).astype(np.uint8)
    if (min_area <= 0 and seed is None) or not mask.any():
        return mask
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    keep = np.zeros(n, bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_area
    if seed is not None:
        peak = np.zeros(n)
        np.maximum.at(peak, labels.ravel(), prob.ravel())
        keep &= peak >= seed
    return keep[labels].astype(np.uint8)


def _val_arrays(config: dict, cache: Path):
    from bcedge.preprocess import PreprocessConfig
    from training.data import prepare_split_sets

    pre = PreprocessConfig.from_dict(config["preprocess"])
    sets, _ = prepare_split_sets(
        tuple(config["data"]),
        config["root"],
        config["split"],
        pre,
        cache,
        # Every run is scored on the same validation images, whatever reader options narrowed
        # its training data (no contrast views, no mini-MIAS): the full dataset's val split.
        options=None,
    )
    return sets["val"]


#: Test-time options (``--tta``): ``vflip``, and ``zoomF``: the mean with the prediction on the image
#: enlarged F times (bilinear), brought back to the model grid by area averaging. Why zoom: small lesions
#: (an 8 mm mass is ~14 px of the 512 px grid) appear at the sizes the model learned from (CDD-CESM's
#: median ~70 px); the model is fully convolutional, so it runs on the larger grid as it is, at F^2 x the
#: convolution work.
TTA_MODES = ("none", "vflip", "zoom1.5", "zoom2")


def tta_predict(model, images: np.ndarray, tta: str) -> np.ndarray:
    """(N, S, S, 1) probabilities; ``vflip`` averages with the prediction of the upside-down image.

    Only the vertical flip: images are turned to one chest-wall side before the model, and
    the training augmentation never mirrors them left-right, so a left-right flip would show
    the model a breast on the side it never saw; up-down differs between views and patients.
    ``zoomF`` averages with the prediction at F times the size (see :data:`TTA_MODES`).
    """
    import cv2

    from training.evaluate import predict

    probs = predict(model, images, 8)
    if tta == "vflip":
        flipped = predict(model, np.ascontiguousarray(images[:, ::-1]), 8)[:, ::-1]
        probs = (probs + flipped) / 2.0
    elif tta.startswith("zoom"):
        size = images.shape[1]
        big = round(size * float(tta[4:]))
        up = np.stack([cv2.resize(im[..., 0], (big, big), interpolation=cv2.INTER_LINEAR) for im in images])
        large = predict(model, up[..., None], 4)
        down = np.stack([cv2.resize(q[..., 0], (size, size), interpolation=cv2.INTER_AREA) for q in large])
        probs = (probs + down[..., None]) / 2.0
    return probs


def _value(estimate: dict | None, missing: float) -> float:
    """An estimate's value; ``missing`` when there is none (0.0 is a value, not a missing one)."""
    value = (estimate or {}).get("value")
    return missing if value is None else float(value)


def choose(grid: list[dict]) -> tuple[dict, bool]:
    """The operating point of one run's threshold grid, and whether it meets the FP limit.

    Candidates: thresholds that meet the issue's other two targets on the validation DM views
    and normal films, finding >= MIN_FOUND of the lesions with <= FP_LIMIT false-positive
    components per normal film. Without any (a run that marks too many normal films, or one
    validated without them), the thresholds that find >= MIN_FOUND (or all), flagged. Among
    the candidates, those within TIE of the best DM Dice; the middle one of them, not the
    band's edge: a threshold just under the level where a model's lesion probabilities stop
    (a cliff in Dice) would not survive quantisation or a new scanner, and Dice differences
    under TIE are far inside the n=9 intervals.
    """
    finds = [g for g in grid if _value(g["dm_detection"], 0.0) >= MIN_FOUND]
    ok = [g for g in finds if _value(g["normal_fp_per_image"], 1e9) <= FP_LIMIT]
    pool = ok or finds or grid
    top = max(_value(g["dm_dice"], 0.0) for g in pool)
    band = sorted((g for g in pool if _value(g["dm_dice"], 0.0) >= top - TIE), key=lambda g: g["threshold"])
    return band[(len(band) - 1) // 2], bool(ok)


def rechoose(doc: dict) -> dict:
    """Apply :func:`choose` again to the grids of a written result (no model is run)."""
    for row in doc["rows"]:
        row["chosen"], row["chosen_under_fp_limit"] = choose(row["grid"])
    return doc


def _val_key(config: dict) -> tuple:
    """What decides a run's validation arrays: datasets, split and preprocessing."""
    return (tuple(config["data"]), config["split"], json.dumps(config["preprocess"], sort_keys=True))


def parse_spec(spec: str) -> list[tuple[Path, str]]:
    """``RUN[:ckpt][+RUN[:ckpt]...]`` as (run folder, checkpoint) pairs; ``+`` joins an ensemble."""
    members = []
    for part in spec.split("+"):
        run, _, checkpoint = part.partition(":")
        members.append((Path(run), checkpoint or "best"))
    return members


def score_run(
    run: Path,
    cache: Path,
    val_cache: dict,
    tta: str = "none",
    checkpoint: str = "best",
    pp_grid: bool = False,
    ensemble: tuple[tuple[Path, str], ...] = (),
) -> dict:
    """One row of the table. With ``ensemble`` (more (run, checkpoint) pairs), the row scores
    the mean of the members' probability maps (an output ensemble, unlike weight_soup.py's
    weight average); every member must have been validated on the same arrays."""
    from bcedge.evaluation import find_group, score_image, summarize
    from training.models import load_trained
    from training.run import read_config, read_state, refuse_scoring_on_fitted

    config = read_config(run)
    for member in (run, *(r for r, _ in ensemble)):
        refuse_scoring_on_fitted(read_config(member), "val", str(member))
    state = read_state(run) or {}
    key = _val_key(config)
    for other, _ in ensemble:
        if _val_key(read_config(other)) != key:
            raise SystemExit(f"error: {other} was trained on other data or preprocessing than {run}")
    if key not in val_cache:
        val_cache[key] = _val_arrays(config, cache)
    val = val_cache[key]
    probs = np.zeros(val.images.shape[:3], np.float32)
    for member, ckpt in ((run, checkpoint), *ensemble):
        probs += tta_predict(load_trained(member / f"{ckpt}.keras"), val.images, tta)[..., 0]
    probs /= 1 + len(ensemble)
    # The shipped model is for standard mammograms: score CDD-CESM DM pixel masks and normals.
    keep = [
        i
        for i, (sid, kind) in enumerate(zip(val.ids, val.mask_kinds, strict=True))
        if kind == "none" or (kind == "pixel" and "_DM_" in sid) or kind == "circle"
    ]

    def report(threshold: float, min_area: int, seed: float | None = None) -> dict:
        scores = [
            score_image(
                _postprocess(probs[i], threshold, min_area, seed),
                val.masks[i, :, :, 0],
                probability=probs[i],
                id=val.ids[i],
                source=val.sources[i],
                mask_kind=val.mask_kinds[i],
            )
            for i in keep
        ]
        return summarize(scores, grid="model", resamples=1000)

    def brief(rep: dict) -> dict:
        pixel = find_group(rep, "pixel", "cdd-cesm") or {}
        normal = find_group(rep, "normal", "mini-mias") or {}
        circle = find_group(rep, "circle", "mini-mias") or {}
        return {
            "dm_dice": pixel.get("dice"),
            "dm_detection": pixel.get("detection_rate"),
            "dm_fp_per_image": pixel.get("fp_per_image"),
            "normal_fp_per_image": normal.get("fp_per_image"),
            "mias_circle_dice": circle.get("dice"),
        }

    grid = []
    min_area = round(default_min_area_model_px(int(config["size"])))
    for t in THRESHOLDS:
        b = brief(report(t, min_area))
        grid.append({"threshold": t, "min_area_model_px": min_area, **b})
    best, ok = choose(grid)
    default = next(g for g in grid if g["threshold"] == 0.5)
    postprocess_grid = [
        {"threshold": best["threshold"], "min_area_model_px": a, "seed": s, **brief(report(best["threshold"], a, s))}
        for a in (sorted({min_area, *PP_MIN_AREAS}) if pp_grid else ())
        for s in PP_SEEDS
    ]
    recipe = {
        k: config.get(k)
        for k in (
            "model",
            "size",
            "encoder_weights",
            "decoder_width",
            "augment_preset",
            "freeze_encoder",
            "paste_lesions",
            "loss",
            "positive_fraction",
            "epoch_negatives",
            "lr",
            "batch",
            "epochs",
            "reader_options",
        )
    }
    if ensemble:  # the table's model and wall columns name every member
        members = [config, *(read_config(r) for r, _ in ensemble)]
        recipe["model"] = " + ".join(str(c.get("model")) for c in members)
        walls = [state.get("wall_seconds"), *((read_state(r) or {}).get("wall_seconds") for r, _ in ensemble)]
        state = {**state, "wall_seconds": sum(walls) if None not in walls else None}
    name = "+".join(r.name if c == "best" else f"{r.name}:{c}" for r, c in ((run, checkpoint), *ensemble))
    return {
        "run": ("ENS " if ensemble else "") + name + ("" if tta == "none" else f" +{tta}"),
        "checkpoint": checkpoint,
        "ensemble": [f"{r}:{c}" for r, c in ((run, checkpoint), *ensemble)] if ensemble else None,
        "tta": tta,
        "recipe": recipe,
        "epochs_run": state.get("epoch"),
        "best_epoch": state.get("best_epoch"),
        "best_val_dice_positive_keras": state.get("best_val_dice"),
        "wall_seconds": state.get("wall_seconds"),
        "n_val_dm": sum(1 for i in keep if val.mask_kinds[i] == "pixel"),
        "n_val_normal": sum(1 for i in keep if val.mask_kinds[i] == "none"),
        "at_0.5": default,
        "chosen": best,
        "chosen_under_fp_limit": ok,
        "grid": grid,
        "postprocess_grid": postprocess_grid,
    }


def _fmt(est: dict | None, digits: int = 3) -> str:
    if not est or est.get("value") is None:
        return "-"
    if est.get("low") is None:
        return f"{est['value']:.{digits}f}"
    return f"{est['value']:.{digits}f} ({est['low']:.{digits}f}-{est['high']:.{digits}f})"


def markdown(rows: list[dict]) -> str:
    """The ablation as a Markdown table (one row per run, the chosen operating point)."""
    head = (
        "| run | model | encoder | loss | augment | CM views | MIAS | lr | epochs (best) | threshold | "
        "val DM Dice (n) | found | FP / normal film (n) | targets met | wall min |\n" + "|---" * 15 + "|"
    )
    lines = [head]
    for r in rows:
        rec, c = r["recipe"], r["chosen"]
        opts = " ".join(rec.get("reader_options") or [])
        enc = "ImageNet" if str(rec.get("encoder_weights", "none")).endswith(".tflite") else "scratch"
        wall = f"{r['wall_seconds'] / 60:.0f}" if r.get("wall_seconds") else "-"
        augment = (rec.get("augment_preset") or "-") + (
            f" + paste {rec['paste_lesions']}" if rec.get("paste_lesions") else ""
        )
        lines.append(
            f"| {r['run']} | {rec.get('model') or '-'} | {enc} | {rec.get('loss') or '-'} | "
            f"{augment} | {'no' if 'cdd_kind=DM' in opts else 'yes'} | "
            f"{'no' if 'mias=none' in opts else 'yes'} | {rec.get('lr')} | {r['epochs_run']} ({r['best_epoch']}) | "
            f"{c['threshold']} | {_fmt(c['dm_dice'])} ({r['n_val_dm']}) | {_fmt(c['dm_detection'], 2)} | "
            f"{_fmt(c['normal_fp_per_image'], 2)} ({r['n_val_normal']}) | "
            f"{'yes' if r['chosen_under_fp_limit'] else 'no'} | {wall} |"
        )
    return "\n".join(lines) + "\n"


def merge(old: dict, new: dict) -> dict:
    """``old``'s rows with ``new``'s added (a row of the same name is replaced in place).

    The result keeps every command that produced a row (``commands``: the earlier ones, then
    ``new["command"]``) and the newer machine record; each row stays as its own run scored it.
    """
    fresh = {r["run"]: r for r in new["rows"]}
    rows = [fresh.pop(r["run"], r) for r in old["rows"]] + list(fresh.values())
    commands = list(old.get("commands") or [old["command"]])
    commands += [c for c in (old.get("rechosen_with"),) if c and c not in commands]
    latest = {k: v for k, v in new.items() if k != "rows"}
    return {**old, **latest, "commands": [*commands, new["command"]], "rows": rows}


def markdown_postprocess(rows: list[dict]) -> str:
    """The post-processing grid of every row that has one, as a Markdown table."""
    lines = [
        "| run | threshold | min area (model px) | seed | val DM Dice | found | FP / DM view | FP / normal film |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for g in r.get("postprocess_grid") or ():
            lines.append(
                f"| {r['run']} | {g['threshold']} | {g['min_area_model_px']} | {g['seed'] or '-'} | "
                f"{_fmt(g['dm_dice'])} | {_fmt(g['dm_detection'], 2)} | {_fmt(g['dm_fp_per_image'], 2)} | "
                f"{_fmt(g['normal_fp_per_image'], 2)} |"
            )
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "runs",
        nargs="*",
        help="run folders; RUN_DIR:last scores the final epoch; RUN_A+RUN_B:last scores their output ensemble",
    )
    parser.add_argument(
        "--rechoose", type=Path, default=None, help="re-apply the operating-point rule to this result's grids"
    )
    parser.add_argument("--cache", type=Path, default=None, help="preprocessed-array cache (required with runs)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table as Markdown")
    parser.add_argument(
        "--tta",
        choices=TTA_MODES,
        default="none",
        help="also score each run with test-time flips (vflip) or a zoomed second pass (zoom1.5, zoom2)",
    )
    parser.add_argument(
        "--merge",
        type=Path,
        default=None,
        help="add the new rows to this earlier result (a re-scored run replaces its row); both commands are kept",
    )
    parser.add_argument(
        "--add",
        type=Path,
        default=None,
        help="with --merge and no runs: add the rows of this earlier result (scored by its own command) instead",
    )
    parser.add_argument(
        "--postprocess-grid",
        action="store_true",
        help="also score minimum areas and seed thresholds at each run's chosen threshold (reported only)",
    )
    args = parser.parse_args()
    from bcedge.bench import machine_info
    from bcedge.errors import ConfigError
    from bcedge.imageio import atomic_write_bytes

    if args.rechoose is not None:
        doc = rechoose(json.loads(args.rechoose.read_text()))
        doc["rechosen_with"] = " ".join(["python", "benchmarks/ablation_v2.py", *sys.argv[1:]])
        atomic_write_bytes(args.out, (json.dumps(doc, indent=1, default=str) + "\n").encode())
        if args.markdown is not None:
            atomic_write_bytes(args.markdown, markdown(doc["rows"]).encode())
        print(markdown(doc["rows"]))
        return
    if args.add is not None:
        if args.merge is None or args.runs:
            parser.error("--add needs --merge and no run folders")
        doc = merge(json.loads(args.merge.read_text()), json.loads(args.add.read_text()))
        atomic_write_bytes(args.out, (json.dumps(doc, indent=1, default=str) + "\n").encode())
        if args.markdown is not None:
            atomic_write_bytes(
                args.markdown, (markdown(doc["rows"]) + "\n" + markdown_postprocess(doc["rows"])).encode()
            )
        print(markdown(doc["rows"]))
        return
    if args.cache is None or not args.runs:
        parser.error("give run folders and --cache (or --rechoose RESULT.json)")
    val_cache: dict = {}
    rows = []
    for spec in args.runs:
        (run, checkpoint), *ensemble = parse_spec(spec)
        missing = [f"{r}/{c}.keras" for r, c in parse_spec(spec) if not (r / f"{c}.keras").is_file()]
        if missing:
            print(f"skip {spec}: no {', '.join(missing)}", file=sys.stderr)
            continue
        for tta in ("none", args.tta) if args.tta != "none" else ("none",):
            try:
                row = score_run(run, args.cache, val_cache, tta, checkpoint, args.postprocess_grid, tuple(ensemble))
            except ConfigError as exc:  # e.g. a train+val refit: no validation figure to give
                print(f"error: {exc}", file=sys.stderr)
                raise SystemExit(2) from None
            rows.append(row)
            c, d = row["chosen"], row["at_0.5"]
            print(
                f"{row['run']:28s} DM Dice@0.5 {_fmt(d['dm_dice'])} n={row['n_val_dm']}  "
                f"FP/normal {_fmt(d['normal_fp_per_image'], 2)}  | chosen t={c['threshold']}: "
                f"Dice {_fmt(c['dm_dice'])} found {_fmt(c['dm_detection'], 2)} "
                f"FP/normal {_fmt(c['normal_fp_per_image'], 2)}  wall {row['wall_seconds']} s"
            )
    command = " ".join(["python", "benchmarks/ablation_v2.py", *sys.argv[1:]])
    doc = {
        "what": "issue #12 ablation on the validation split (model grid); test split not used",
        "command": command,
        "machine": machine_info(),
        "python": platform.python_version(),
        "fp_limit_per_normal_image": FP_LIMIT,
        "rows": rows,
    }
    if args.merge is not None:
        doc = merge(json.loads(args.merge.read_text()), doc)
        rows = doc["rows"]
    atomic_write_bytes(args.out, (json.dumps(doc, indent=1, default=str) + "\n").encode())
    if args.markdown is not None:
        atomic_write_bytes(args.markdown, (markdown(rows) + "\n" + markdown_postprocess(rows)).encode())
    print(markdown_postprocess(rows))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
