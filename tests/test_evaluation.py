"""bcedge.evaluation: per-image scores, lesion detection, false-positive components, bootstrap intervals, groups.

Hand-made masks with known answers; the runtime path and the two commands are in
``test_cli_evaluate.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

from bcedge.errors import InputError
from bcedge.evaluation import (
    bootstrap_interval,
    detection_rows,
    estimate,
    find_group,
    score_image,
    study_rows,
    summarize,
    to_markdown,
)
from bcedge.metrics import dice, iou, soft_dice_loss


def _disc(shape: tuple[int, int], centre: tuple[int, int], radius: int) -> np.ndarray:
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return ((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2).astype(np.uint8)


def test_two_lesions_one_found() -> None:
    truth = _disc((100, 100), (25, 25), 8) | _disc((100, 100), (70, 70), 8)
    pred = _disc((100, 100), (26, 26), 5)  # inside the first lesion, far from the second
    s = score_image(pred, truth, id="a", source="x")
    assert (s.lesions, s.found, s.components, s.false_components) == (2, 1, 1, 0)
    assert s.kind == "pixel"
    assert s.dice == pytest.approx(dice(pred, truth)) and s.iou == pytest.approx(iou(pred, truth))
    assert s.recall < 0.5 and s.precision == 1.0  # the prediction lies inside the first lesion
    # A one-pixel touch counts as found: overlap, not a Dice threshold.
    touch = np.zeros_like(truth)
    touch[70, 70] = 1
    assert score_image(touch, truth).found == 1


def test_false_positive_components() -> None:
    truth = _disc((100, 100), (50, 50), 10)
    pred = _disc((100, 100), (50, 50), 10) | _disc((100, 100), (10, 10), 3) | _disc((100, 100), (85, 20), 4)
    s = score_image(pred, truth)
    assert (s.lesions, s.found, s.components, s.false_components) == (1, 1, 3, 2)
    # A predicted component straddling two lesions is one true component that finds both.
    truth2 = _disc((100, 100), (50, 30), 6) | _disc((100, 100), (50, 70), 6)
    bridge = np.zeros((100, 100), np.uint8)
    bridge[48:53, 25:76] = 1
    s2 = score_image(bridge, truth2)
    assert (s2.lesions, s2.found, s2.components, s2.false_components) == (2, 2, 1, 0)
    # Normal image: every component is a false positive; nothing to find.
    normal = score_image(pred, np.zeros_like(truth), mask_kind="none")
    assert normal.kind == "normal" and (normal.lesions, normal.found, normal.false_components) == (0, 0, 3)
    assert score_image(np.zeros_like(truth), np.zeros_like(truth)).false_components == 0


def test_components_are_eight_connected() -> None:
    diagonal = np.eye(6, dtype=np.uint8)  # six pixels touching at corners only: one component
    s = score_image(diagonal, np.zeros_like(diagonal))
    assert s.components == 1 and s.false_components == 1
    two = np.zeros((6, 6), np.uint8)
    two[0, 0] = two[0, 2] = 1  # a gap of one pixel: two components
    assert score_image(two, np.zeros_like(two)).components == 2


def test_kinds_loss_and_input_checks() -> None:
    truth = _disc((40, 40), (20, 20), 5)
    assert score_image(truth, truth, mask_kind="circle").kind == "circle"
    assert score_image(truth, np.zeros_like(truth), mask_kind="circle").kind == "normal"
    prob = np.where(truth > 0, 0.8, 0.1).astype(np.float32)
    s = score_image(prob >= 0.5, truth[..., None], probability=prob[..., None])
    t, p = truth.astype(np.float64), prob.astype(np.float64)
    expected = 1.0 - (2 * (t * p).sum() + 1.0) / (t.sum() + p.sum() + 1.0)
    assert s.loss == pytest.approx(expected) and soft_dice_loss(prob, truth) == pytest.approx(expected)
    assert score_image(truth, truth).loss is None
    with pytest.raises(InputError, match="ground truth"):
        score_image(truth, truth[:-1])
    with pytest.raises(InputError, match="threshold it first"):
        score_image(prob, truth)
    with pytest.raises(InputError, match="probability"):
        score_image(truth, truth, probability=prob[:-1])


def test_bootstrap_interval_contains_estimate_and_narrows_with_n() -> None:
    rng = np.random.default_rng(1)
    small, large = rng.uniform(size=10), rng.uniform(size=1000)
    widths = []
    for values in (small, large):
        low, high = bootstrap_interval(values)
        assert low <= values.mean() <= high
        widths.append(high - low)
    assert widths[1] < widths[0] / 4  # ~ 1 / sqrt(n): 10x narrower expected
    assert bootstrap_interval(small) == bootstrap_interval(small)  # fixed seed: reproducible
    assert bootstrap_interval(small, seed=5) != bootstrap_interval(small)
    assert bootstrap_interval([0.3]) == pytest.approx((0.3, 0.3))  # one image: no spread to resample
    assert bootstrap_interval([]) is None
    # Ratio of sums (lesions found / lesions), resampling images.
    found, lesions = np.array([1, 0, 2, 1, 1]), np.array([1, 1, 2, 2, 1])
    est = estimate(found, lesions)
    assert est["value"] == pytest.approx(5 / 7) and (est["num"], est["den"], est["n"]) == (5, 7, 5)
    assert est["low"] <= est["value"] <= est["high"] and est["low"] >= 0.0 and est["high"] <= 1.0


def test_bootstrap_interval_matches_a_direct_percentile_bootstrap() -> None:
    values = np.array([0.1, 0.5, 0.9, 0.4, 0.7, 0.2])
    rng = np.random.default_rng(0)
    stats = np.concatenate([values[rng.integers(0, 6, size=(250, 6))].mean(axis=1) for _ in range(8)])
    assert bootstrap_interval(values) == pytest.approx(tuple(np.percentile(stats, [2.5, 97.5])))


def _scores() -> list:
    shape = (60, 60)
    lesion = _disc(shape, (30, 30), 8)
    empty = np.zeros(shape, np.uint8)
    speck = _disc(shape, (5, 5), 1)
    return [
        score_image(lesion, lesion, id="p1", source="cdd-cesm"),
        score_image(empty, lesion, id="p2", source="cdd-cesm"),
        score_image(lesion, lesion, id="c1", source="mini-mias", mask_kind="circle"),
        score_image(speck, empty, id="n1", source="mini-mias", mask_kind="none"),
        score_image(empty, empty, id="n2", source="mini-mias", mask_kind="none"),
        score_image(speck | _disc(shape, (50, 50), 2), empty, id="n3", source="cdd-cesm", mask_kind="none"),
    ]


def test_summarize_groups_by_source_and_kind() -> None:
    report = summarize(_scores())
    keys = [(g["source"], g["kind"]) for g in report["groups"]]
    # Circles are never pooled with pixel masks; "all" appears only for a kind with several sources.
    assert keys == [
        ("cdd-cesm", "pixel"),
        ("cdd-cesm", "normal"),
        ("mini-mias", "circle"),
        ("mini-mias", "normal"),
        ("all", "normal"),
    ]
    pixel = find_group(report, "pixel")
    assert pixel["n_images"] == 2 and pixel["dice"]["value"] == pytest.approx(0.5)
    assert pixel["detection_rate"]["value"] == pytest.approx(0.5) and pixel["fp_per_image"]["value"] == 0.0
    assert pixel["recall"]["value"] == pytest.approx(0.5) and pixel["precision"]["value"] == pytest.approx(1.0)
    assert pixel["dice_global"] == pytest.approx(2 * 201 / (2 * 201 + 201))  # pooled pixels: one lesion missed
    normal = find_group(report, "normal")
    assert normal["source"] == "all" and normal["n_images"] == 3
    assert normal["fp_per_image"]["value"] == pytest.approx(1.0)  # 0 + 1 + 2 components over 3 images
    assert normal["flagged_share"]["value"] == pytest.approx(2 / 3)
    assert find_group(report, "normal", "mini-mias")["fp_per_image"]["value"] == pytest.approx(0.5)
    assert report["grid"] == "original" and len(report["images"]) == 6
    assert "2000 resamples, seed 0" in report["method"]["interval"]


def test_tables() -> None:
    report = summarize(_scores())
    study = study_rows(report)
    assert [r[:3] for r in study] == [["cdd-cesm", "pixel", "2"], ["mini-mias", "circle", "1"]]
    assert study[0][3].startswith("0.500 (")
    det = {(r[0], r[1]): r for r in detection_rows(report)}
    assert det[("cdd-cesm", "pixel")][3:5] == ["2", "1"]
    assert det[("all", "normal")][6].startswith("1.00 (") and det[("all", "normal")][7] == "67%"
    md = to_markdown(report)
    assert md.count("| cdd-cesm | pixel |") == 2 and "Intervals" not in md.splitlines()[0]
