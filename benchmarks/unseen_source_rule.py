"""Compare training arms on a source the models never saw: paired seeds, a rule fixed before the runs.

Reads :mod:`benchmarks.eval_cross_dataset` outputs (one JSON per bundle, each with a set of every
image of the unseen source and one of the in-distribution validation views) and applies session
18's rule (README, "Appearance augmentation against an unseen source"): the candidate arm counts
as reducing the unseen source's false marks only if

1. the mean over seeds of false components per unseen normal film falls by at least ``--min-drop``
   (default 30 %) against the baseline's mean, and is lower in every seed pair;
2. the mean share of the unseen source's lesions found falls by no more than ``--max-found-loss``
   (default 5 points);
3. the mean validation Dice on the in-distribution lesion views falls by no more than
   ``--max-dice-loss`` (default 0.03).

    python benchmarks/unseen_source_rule.py \\
        --pair 0 cross_NM512.json cross_NA512.json --pair 1 cross_NM512s1.json cross_NA512s1.json \\
        --unseen "mini-MIAS, every image" --seen "CDD-CESM validation DM" \\
        --out benchmarks/results/unseen_source_appearance_s18

Writes ``OUT.json`` (every figure with its interval and n, the means, each clause's verdict) and
``OUT.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bcedge.evaluation import format_estimate


def figures(path: Path, unseen: str, seen: str) -> dict[str, Any]:
    """The figures the rule reads from one ``eval_cross_dataset`` JSON (its first bundle)."""
    run = json.loads(path.read_text())["runs"][0]
    sets = run["sets"]
    by_kind = {g["kind"]: g for g in sets[unseen]["groups"]}
    seen_groups = [g for g in sets[seen]["groups"] if "dice" in g]
    if "normal" not in by_kind or len(seen_groups) != 1:
        raise SystemExit(f"error: {path}: expected normal films in {unseen!r} and one lesion group in {seen!r}")
    lesions = next(g for k, g in by_kind.items() if k != "normal")
    normals = [im for im in sets[unseen]["images"] if im["kind"] == "normal"]
    return {
        "bundle": run["bundle"],
        "unseen_fp_per_normal": by_kind["normal"]["fp_per_image"],
        "unseen_findings_per_normal": by_kind["normal"]["findings_per_image"],
        "unseen_flagged_share": by_kind["normal"]["flagged_share"],
        # Mean marked (all false) pixels per normal film, original grid: how much, besides how many pieces.
        "unseen_fp_pixels_per_normal": round(statistics.fmean(im["fp"] for im in normals), 1),
        "unseen_found": lesions["detection_rate"],
        "unseen_lesion_dice": lesions["dice"],
        "seen_dice": seen_groups[0]["dice"],
        "seen_found": seen_groups[0]["detection_rate"],
    }


def verdict(
    pairs: list[tuple[str, dict[str, Any], dict[str, Any]]],
    min_drop: float,
    max_found_loss: float,
    max_dice_loss: float,
) -> dict[str, Any]:
    """Means over seeds per arm and each clause of the rule."""

    def mean(arm: int, key: str) -> float:
        return statistics.fmean(p[arm][key]["value"] for p in pairs)

    base_fp, cand_fp = mean(1, "unseen_fp_per_normal"), mean(2, "unseen_fp_per_normal")
    drop = 1.0 - cand_fp / base_fp if base_fp > 0 else 0.0
    every_pair = all(c["unseen_fp_per_normal"]["value"] < b["unseen_fp_per_normal"]["value"] for _, b, c in pairs)
    found_change = mean(2, "unseen_found") - mean(1, "unseen_found")
    dice_change = mean(2, "seen_dice") - mean(1, "seen_dice")
    clauses = {
        "1_false_marks": {
            "drop": round(drop, 4),
            "lower_in_every_pair": every_pair,
            "pass": drop >= min_drop and every_pair,
        },
        "2_found": {"change": round(found_change, 4), "pass": found_change >= -max_found_loss},
        "3_seen_dice": {"change": round(dice_change, 4), "pass": dice_change >= -max_dice_loss},
    }
    means = {
        arm: {
            key: round(mean(i, key), 4)
            for key in ("unseen_fp_per_normal", "unseen_found", "unseen_lesion_dice", "seen_dice")
        }
        for i, arm in ((1, "baseline"), (2, "candidate"))
    }
    return {"means": means, "clauses": clauses, "adopted": all(c["pass"] for c in clauses.values())}


def markdown(doc: dict[str, Any]) -> str:
    lines = [
        f"# {doc['what']}",
        "",
        "| seed | arm | bundle | FP / unseen normal film | findings / unseen normal film | "
        "false pixels / normal film | unseen normals flagged | unseen lesions found | unseen lesion Dice | "
        "seen validation Dice |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for pair in doc["pairs"]:
        for arm in ("baseline", "candidate"):
            f = pair[arm]
            lines.append(
                f"| {pair['seed']} | {arm} | `{Path(f['bundle']).name}` | "
                f"{format_estimate(f['unseen_fp_per_normal'], 2)} (n={f['unseen_fp_per_normal']['n']}) | "
                f"{format_estimate(f['unseen_findings_per_normal'], 2)} | "
                f"{f['unseen_fp_pixels_per_normal']:.0f} | {format_estimate(f['unseen_flagged_share'], 2)} | "
                f"{format_estimate(f['unseen_found'], 2)} ({f['unseen_found']['num']}/{f['unseen_found']['den']}) | "
                f"{format_estimate(f['unseen_lesion_dice'])} | {format_estimate(f['seen_dice'])} "
                f"(n={f['seen_dice']['n']}) |"
            )
    v = doc["verdict"]
    lines += ["", f"Means over seeds: {json.dumps(v['means'])}", "", "| clause | figure | pass |", "|---|---|---|"]
    for name, clause in v["clauses"].items():
        figure = {k: val for k, val in clause.items() if k != "pass"}
        lines.append(f"| {name} | {json.dumps(figure)} | {'yes' if clause['pass'] else 'no'} |")
    lines += ["", f"**Adopted as reducing unseen-source false marks: {'yes' if v['adopted'] else 'no'}.**", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pair", nargs=3, action="append", required=True, metavar=("SEED", "BASELINE", "CANDIDATE"))
    parser.add_argument("--unseen", required=True, help="label of the unseen source's set")
    parser.add_argument("--seen", required=True, help="label of the in-distribution validation set")
    parser.add_argument("--min-drop", type=float, default=0.30)
    parser.add_argument("--max-found-loss", type=float, default=0.05)
    parser.add_argument("--max-dice-loss", type=float, default=0.03)
    parser.add_argument("--what", default="Unseen-source false marks: baseline vs candidate training arm")
    parser.add_argument("--out", type=Path, required=True, help="OUT.json and OUT.md are written")
    args = parser.parse_args(argv)
    pairs = [
        (seed, figures(Path(b), args.unseen, args.seen), figures(Path(c), args.unseen, args.seen))
        for seed, b, c in args.pair
    ]
    doc = {
        "what": args.what,
        "command": "python benchmarks/unseen_source_rule.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "rule": {"min_drop": args.min_drop, "max_found_loss": args.max_found_loss, "max_dice_loss": args.max_dice_loss},
        "pairs": [{"seed": s, "baseline": b, "candidate": c} for s, b, c in pairs],
        "verdict": verdict(pairs, args.min_drop, args.max_found_loss, args.max_dice_loss),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
    text = markdown(doc)
    args.out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
