"""benchmarks/unseen_source_rule.py: each clause of the paired-seed rule on made-up evaluation files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import unseen_source_rule

UNSEEN, SEEN = "unseen films", "seen validation"


def _est(value: float, n: int = 10, **extra: int) -> dict:
    return {"value": value, "low": value - 0.1, "high": value + 0.1, "n": n, **extra}


def _cross(path: Path, fp: float, found: float, dice: float) -> Path:
    """An eval_cross_dataset JSON holding only what the rule reads."""
    unseen = [
        {
            "kind": "normal",
            "fp_per_image": _est(fp, 266),
            "findings_per_image": _est(fp / 2),
            "flagged_share": _est(0.9),
        },
        {"kind": "circle", "dice": _est(0.2), "detection_rate": _est(found, 55, num=round(found * 57), den=57)},
    ]
    seen = [{"kind": "pixel", "dice": _est(dice, 9), "detection_rate": _est(0.9, 9, num=12, den=13)}]
    images = [{"kind": "normal", "fp": 100 * fp}, {"kind": "normal", "fp": 300 * fp}, {"kind": "circle", "fp": 7}]
    sets = {UNSEEN: {"groups": unseen, "images": images}, SEEN: {"groups": seen}}
    doc = {"runs": [{"bundle": f"/b/{path.stem}", "sets": sets}]}
    path.write_text(json.dumps(doc))
    return path


def _run(tmp_path: Path, base: list[tuple[float, float, float]], cand: list[tuple[float, float, float]]) -> dict:
    args = []
    for seed, (b, c) in enumerate(zip(base, cand, strict=True)):
        args += [
            "--pair",
            str(seed),
            str(_cross(tmp_path / f"b{seed}.json", *b)),
            str(_cross(tmp_path / f"c{seed}.json", *c)),
        ]
    out = tmp_path / "rule"
    assert unseen_source_rule.main([*args, "--unseen", UNSEEN, "--seen", SEEN, "--out", str(out)]) == 0
    doc = json.loads(out.with_suffix(".json").read_text())
    assert "Adopted" in out.with_suffix(".md").read_text()
    # False pixels: the mean over the normal films only (the circle image's 7 is left out).
    assert doc["pairs"][0]["baseline"]["unseen_fp_pixels_per_normal"] == round(200 * base[0][0], 1)
    return doc["verdict"]


def test_a_large_drop_in_every_pair_without_losses_is_adopted(tmp_path: Path) -> None:
    v = _run(tmp_path, [(6.0, 0.84, 0.50), (5.0, 0.80, 0.48)], [(2.0, 0.82, 0.49), (3.0, 0.80, 0.47)])
    assert v["clauses"]["1_false_marks"]["drop"] == round(1 - 2.5 / 5.5, 4)
    assert v["adopted"] and v["means"]["candidate"]["unseen_fp_per_normal"] == 2.5


def test_each_clause_can_fail_on_its_own(tmp_path: Path) -> None:
    # A large mean drop carried by one seed while the other pair goes up: clause 1 fails.
    v = _run(tmp_path, [(6.0, 0.8, 0.5), (2.0, 0.8, 0.5)], [(1.0, 0.8, 0.5), (2.5, 0.8, 0.5)])
    assert v["clauses"]["1_false_marks"]["lower_in_every_pair"] is False and not v["adopted"]
    # A 20 % drop is not enough.
    v = _run(tmp_path, [(5.0, 0.8, 0.5)], [(4.0, 0.8, 0.5)])
    assert not v["clauses"]["1_false_marks"]["pass"]
    # Fewer unseen lesions found (-10 points): clause 2 fails.
    v = _run(tmp_path, [(6.0, 0.9, 0.5)], [(1.0, 0.8, 0.5)])
    assert v["clauses"]["1_false_marks"]["pass"] and not v["clauses"]["2_found"]["pass"] and not v["adopted"]
    # Validation Dice down 0.05: clause 3 fails.
    v = _run(tmp_path, [(6.0, 0.9, 0.5)], [(1.0, 0.9, 0.45)])
    assert v["clauses"]["2_found"]["pass"] and not v["clauses"]["3_seen_dice"]["pass"] and not v["adopted"]
