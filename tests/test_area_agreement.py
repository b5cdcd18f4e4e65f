"""benchmarks/area_agreement.py: the slope of predicted against true lesion area."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import pytest
from area_agreement import agreement, image_records, main


def _record(true_px: int, pred_px: int, overlap: int, source: str = "cdd-cesm") -> dict:
    tp = overlap
    return {
        "source": source,
        "kind": "pixel",
        "tp": tp,
        "fp": pred_px - tp,
        "fn": true_px - tp,
        "dice": 2 * tp / (true_px + pred_px) if true_px + pred_px else 1.0,
    }


AREAS = (500, 1000, 2000, 4000, 8000, 16000, 32000, 64000)


def test_outlines_that_follow_the_lesion_have_slope_one() -> None:
    a = agreement([_record(t, t, t) for t in AREAS])
    assert a["slope"]["value"] == pytest.approx(1.0)
    assert a["correlation"]["value"] == pytest.approx(1.0)
    assert a["smaller_half"]["pred_over_true_median"] == pytest.approx(1.0)
    assert a["n_images"] == len(AREAS)


def test_one_blob_size_has_slope_near_zero_and_overdraws_small_lesions() -> None:
    recs = [_record(t, 12000 + (7 * i) % 5, min(t, 12000)) for i, t in enumerate(AREAS)]
    recs.append(_record(3000, 0, 0))  # a missed lesion: no predicted pixel, left out of the fit
    recs.append(_record(3000, 3000, 3000, source="mini-mias"))  # another source: not counted
    a = agreement(recs)
    assert abs(a["slope"]["value"]) < 0.01
    assert a["n_images"] == len(AREAS) + 1 and a["n_without_prediction"] == 1
    assert a["slope"]["n"] == len(AREAS)
    assert a["smaller_half"]["pred_over_true_median"] > 4  # 12000 px blobs on 500-4000 px lesions
    assert a["larger_half"]["dice_mean"] > a["smaller_half"]["dice_mean"]


def test_reads_both_report_layouts(tmp_path: Path) -> None:
    recs = [_record(t, 2 * t, t) for t in AREAS]
    evaluate = tmp_path / "evaluate.json"
    evaluate.write_text(json.dumps({"images": recs}))
    cross = tmp_path / "cross.json"
    cross.write_text(json.dumps({"runs": [{"sets": {"a": {"images": recs[:4]}, "b": {"images": recs[4:]}}}]}))
    assert image_records(json.loads(cross.read_text())) == recs
    assert image_records(json.loads(cross.read_text()), "b") == recs[4:]
    out = tmp_path / "out.json"
    assert main([str(evaluate), str(cross), "--out", str(out)]) == 0
    result = json.loads(out.read_text())["reports"]
    assert [r["slope"]["value"] for r in result.values()] == pytest.approx([1.0, 1.0])
    assert [r["smaller_half"]["pred_over_true_median"] for r in result.values()] == pytest.approx([2.0, 2.0])


def test_too_few_images_or_a_bad_report_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="needs 3 or more"):
        agreement([_record(1000, 2000, 1000), _record(3000, 0, 0)])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    few = tmp_path / "few.json"
    few.write_text(json.dumps({"images": [_record(1000, 2000, 1000)]}))
    for path in (bad, few, tmp_path / "missing.json"):
        assert main([str(path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {path}"), err
