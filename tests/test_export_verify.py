"""The accuracy gate: scores over lesion images, the pass/fail rule, and a damaged artifact failing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bcedge.metrics import dice
from export.verify import DEFAULT_TOLERANCES, gate, score

SIZE = 64


def _case() -> tuple[np.ndarray, np.ndarray]:
    """Two lesion images (one found, one half found) and two normal images (one clean, one false positive)."""
    masks = np.zeros((4, 16, 16, 1), np.uint8)
    masks[0, 4:8, 4:8] = 1
    masks[1, 8:12, 8:12] = 1
    probs = np.zeros((4, 16, 16, 1), np.float32)
    probs[0, 4:8, 4:8] = 0.9
    probs[1, 8:10, 8:12] = 0.7
    probs[3, 0:2, 0:2] = 0.6
    return probs, masks


def test_score_gates_on_lesion_images_and_records_all_images() -> None:
    probs, masks = _case()
    result = score(probs, masks)
    per_image = [dice(p, m) for p, m in zip(probs, masks, strict=True)]
    assert result["dice"] == pytest.approx(np.mean(per_image[:2]))
    assert result["dice_all_images"] == pytest.approx(np.mean(per_image))
    assert result["n_images"] == 4 and result["n_lesion_images"] == 2
    assert result["gate_metric"] == "dice_lesion_images"
    # predicting nothing: all-image Dice still looks fine (normals score 1), lesion Dice shows the truth
    empty = score(np.zeros_like(probs), masks)
    assert empty["dice"] == 0.0 and empty["dice_all_images"] == 0.5


def test_score_without_lesion_images_falls_back_to_all_images() -> None:
    probs, masks = _case()
    result = score(probs[2:], masks[2:])
    assert result["gate_metric"] == "dice_all_images" and result["dice"] == result["dice_all_images"]
    with pytest.raises(ValueError, match="differ in shape"):
        score(probs[:2], masks)


def test_gate_rule() -> None:
    assert gate(0.80, 0.80, 0.001) == ("passed", 0.0)
    status, delta = gate(0.79, 0.80, 0.01)  # a loss equal to the tolerance passes
    assert status == "passed" and delta == pytest.approx(-0.01)
    assert gate(0.789, 0.80, 0.01)[0] == "failed"
    assert gate(0.85, 0.80, 0.0)[0] == "passed"  # a gain never fails
    assert DEFAULT_TOLERANCES == {"fp32": 0.001, "fp16": 0.001, "dynamic": 0.01, "int8": 0.01}


def test_gate_fails_an_artifact_with_damaged_weights(tmp_path: Path) -> None:
    """A TFLite file converted from a model whose output layer was broken fails; the faithful one passes."""
    pytest.importorskip("tensorflow")
    pytest.importorskip("ai_edge_litert")
    import keras

    from export import tflite
    from export.verify import measure
    from training.models import build_model

    rng = np.random.default_rng(0)
    images = rng.random((6, SIZE, SIZE, 1)).astype(np.float32)
    masks = np.zeros((6, SIZE, SIZE, 1), np.uint8)
    masks[:4, 20:40, 24:44] = 1
    keras.utils.set_random_seed(0)
    model = build_model("unet", SIZE, None, base_filters=4)
    head = model.get_layer("mask")
    kernel, bias = head.get_weights()
    # A reference that finds (more than) every lesion, so its Dice on lesion images is > 0 by construction.
    head.set_weights([kernel * 0.0, bias * 0.0 + 3.0])
    reference = score(model.predict(images, verbose=0), masks)
    assert reference["dice"] > 0.05

    folder = tmp_path / "with space"
    good = folder / "good.tflite"
    folder.mkdir()
    good.write_bytes(tflite.convert(tflite.export_saved_model(model, folder / "sm good", SIZE), "fp32"))
    head.set_weights([kernel * 0.0, bias * 0.0 - 3.0])  # the damage: the output layer now says "no lesion"
    bad = folder / "bad.tflite"
    bad.write_bytes(tflite.convert(tflite.export_saved_model(model, folder / "sm bad", SIZE), "fp32"))

    ok = measure("tflite", good, images, masks, reference=reference, tolerance=DEFAULT_TOLERANCES["fp32"])
    assert ok.gate == "passed" and ok.metrics["delta_dice"] == pytest.approx(0.0, abs=1e-9)
    assert ok.ms_per_image is not None and ok.ms_per_image > 0
    assert ok.details["backend"] == "tflite" and "path" not in ok.details
    broken = measure("tflite", bad, images, masks, reference=reference, tolerance=DEFAULT_TOLERANCES["fp32"])
    assert broken.gate == "failed"
    assert broken.metrics["dice"] == 0.0 and broken.metrics["delta_dice"] == pytest.approx(-reference["dice"])
    assert broken.metrics["reference_dice"] == reference["dice"] and broken.tolerance == 0.001
    unmeasured = measure("tflite", bad, images, masks, reference=None, tolerance=None)
    assert unmeasured.gate == "not-measured" and "delta_dice" not in unmeasured.metrics
