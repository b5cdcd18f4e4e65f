"""Issue #12 recipe pieces: augmentation presets, negatives per epoch, Tversky loss, decoder width."""

from __future__ import annotations

import numpy as np
import pytest

from bcedge.errors import ConfigError
from training.augment import PRESETS, AugmentConfig, augment
from training.data import epoch_order


def test_strong_preset_keeps_range_background_and_never_mirrors() -> None:
    image = np.zeros((64, 64, 1), np.float32)
    image[:, :32] = 0.5  # tissue on the left (the canonical chest-wall side)
    mask = np.zeros((64, 64, 1), np.uint8)
    mask[20:30, 5:15] = 1
    rng = np.random.default_rng(0)
    strong = AugmentConfig.preset("strong")
    assert strong is not None and strong.vflip > 0 and strong.noise_std[1] > 0
    for _ in range(50):
        out, out_mask = augment(image, mask, rng, strong)
        assert out.dtype == np.float32 and out.min() >= 0.0 and out.max() <= 1.0
        # No left-right mirror: the tissue (and the lesion) stay on the left half.
        assert out[:, :28].mean() > out[:, 36:].mean()
        assert out_mask[:, 40:].sum() == 0
    assert AugmentConfig.preset("none") is None and set(PRESETS) == {
        "basic",
        "strong",
        "strong-zoom",
        "strong-aspect",
        "strong-appearance",
        "none",
    }
    with pytest.raises(ConfigError):
        AugmentConfig.preset("wild")


def test_strong_zoom_shrinks_lesions_about_the_chest_wall() -> None:
    """strong-zoom: strong's intensity changes, scale down to 0.5, the chest-wall edge fixed."""
    from dataclasses import replace

    zoom = AugmentConfig.preset("strong-zoom")
    strong = AugmentConfig.preset("strong")
    assert zoom is not None and strong is not None
    assert zoom.scale == (0.5, 1.25) and zoom.anchor == "chest-wall" and strong.anchor == "centre"
    assert replace(zoom, scale=strong.scale, anchor="centre") == strong
    image = np.zeros((128, 128, 1), np.float32)
    image[:, :80] = 0.5  # a breast filling the height, chest wall on the left edge
    mask = np.zeros((128, 128, 1), np.uint8)
    mask[54:74, 30:50] = 1  # 400 px
    half = replace(
        zoom, rotate_deg=0.0, scale=(0.5, 0.5), probability=1.0, vflip=0.0, noise_std=(0.0, 0.0), blur_sigma=(0.0, 0.0)
    )
    out, out_mask = augment(image, mask, np.random.default_rng(0), half)
    assert out_mask.sum() == 100  # a quarter of the area: half the diameter
    rows, cols = np.nonzero(out[..., 0] > 0)
    assert cols.min() == 0 and 38 <= cols.max() <= 41  # still on the chest-wall edge, half as wide
    assert 30 <= rows.min() <= 33 and 94 <= rows.max() <= 97  # centred on the edge's middle
    centred = replace(half, anchor="centre")
    out_c, _ = augment(image, mask, np.random.default_rng(0), centred)
    assert np.nonzero(out_c[..., 0] > 0)[1].min() >= 30  # about the centre it leaves the edge
    with pytest.raises(ValueError, match="anchor"):
        replace(zoom, anchor="nipple")


def test_strong_aspect_narrows_the_breast_about_the_chest_wall_and_keeps_strongs_draws() -> None:
    """strong-aspect: columns scaled by 1/a (a in 0.9-1.6) after strong's affine, column 0 fixed;
    presets without an aspect range draw exactly what they drew before (runs stay reproducible)."""
    from dataclasses import replace

    aspect = AugmentConfig.preset("strong-aspect")
    strong = AugmentConfig.preset("strong")
    assert aspect is not None and strong is not None
    assert aspect.aspect == (0.9, 1.6) and replace(aspect, aspect=(1.0, 1.0)) == strong
    image = np.zeros((128, 128, 1), np.float32)
    image[:, :80] = 0.5  # a breast filling the height, chest wall on the left edge
    mask = np.zeros((128, 128, 1), np.uint8)
    mask[54:74, 30:50] = 1  # 400 px
    plain = replace(
        aspect,
        rotate_deg=0.0,
        scale=(1.0, 1.0),
        probability=1.0,
        vflip=0.0,
        noise_std=(0.0, 0.0),
        blur_sigma=(0.0, 0.0),
    )
    out, out_mask = augment(image, mask, np.random.default_rng(0), replace(plain, aspect=(2.0, 2.0)))
    rows, cols = np.nonzero(out[..., 0] > 0)
    assert cols.min() == 0 and 38 <= cols.max() <= 41  # half as wide, still on the chest-wall edge
    assert rows.min() == 0 and rows.max() == 127  # the height is kept
    lesion_rows, lesion_cols = np.nonzero(out_mask[..., 0])
    assert out_mask.sum() == 200 and (lesion_rows.min(), lesion_rows.max()) == (54, 73)
    assert (lesion_cols.min(), lesion_cols.max()) == (15, 24)
    # With the range at (1, 1) nothing extra is drawn: strong's random stream is unchanged.
    a = augment(image, mask, np.random.default_rng(3), strong)
    b = augment(image, mask, np.random.default_rng(3), replace(aspect, aspect=(1.0, 1.0)))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_strong_appearance_reshapes_tissue_intensities_and_texture_only() -> None:
    """strong-appearance: strong plus a random monotone curve and an unsharp mask, both on the tissue only;
    geometry and mask as strong's; seeded; presets without them keep their random stream."""
    from dataclasses import replace

    from training.augment import _random_curve

    look = AugmentConfig.preset("strong-appearance")
    strong = AugmentConfig.preset("strong")
    assert look is not None and strong is not None
    assert look.curve == 0.8 and look.unsharp == (-0.6, 1.5)
    assert replace(look, curve=0.0, unsharp=(0.0, 0.0)) == strong
    rng = np.random.default_rng(1)
    image = np.zeros((96, 96, 1), np.float32)
    image[:, :60] = rng.uniform(0.05, 0.95, (96, 60, 1)).astype(np.float32)  # textured tissue, black beyond
    mask = np.zeros((96, 96, 1), np.uint8)
    mask[40:56, 20:36] = 1
    # strong's own blur (applied to the whole image, tissue and background) is left out here.
    still = replace(
        look, rotate_deg=0.0, scale=(1.0, 1.0), vflip=0.0, probability=1.0, noise_std=(0.0, 0.0), blur_sigma=(0.0, 0.0)
    )
    changed = 0
    for seed in range(20):
        out, out_mask = augment(image, mask, np.random.default_rng(seed), still)
        assert out.dtype == np.float32 and out.shape == image.shape and out.min() >= 0.0 and out.max() <= 1.0
        assert np.array_equal(out_mask, mask)  # intensity and texture only
        assert not out[:, 64:].any()  # the background stays black (the blur's halo is cut at the tissue)
        again, _ = augment(image, mask, np.random.default_rng(seed), still)
        assert np.array_equal(out, again)
        base, _ = augment(image, mask, np.random.default_rng(seed), replace(still, curve=0.0, unsharp=(0.0, 0.0)))
        changed += int(np.abs(out - base)[:, :56].mean() > 0.01)
    assert changed >= 15  # the new steps do change the look, most draws visibly
    # The curve alone: monotone, 0 and 1 fixed, order of values kept.
    x = np.linspace(0.0, 1.0, 1001, dtype=np.float32)
    for seed in range(10):
        y = _random_curve(x, np.random.default_rng(seed), 1.0)
        assert y.dtype == np.float32 and abs(float(y[0])) < 1e-6 and abs(float(y[-1]) - 1.0) < 1e-6
        assert np.all(np.diff(y) >= -1e-6)
    # Without a curve or an unsharp range nothing extra is drawn: strong's random stream is unchanged.
    a = augment(image, mask, np.random.default_rng(3), strong)
    b = augment(image, mask, np.random.default_rng(3), replace(look, curve=0.0, unsharp=(0.0, 0.0)))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_epoch_negatives_draws_a_fresh_subset_and_keeps_every_positive() -> None:
    positive = np.zeros(100, bool)
    positive[:10] = True
    seen: set[int] = set()
    for epoch in range(20):
        order = epoch_order(100, positive, np.random.default_rng([0, epoch]), 0.5, negatives=20)
        negatives = {int(i) for i in order if not positive[i]}
        assert len(negatives) == 20 and set(range(10)) <= set(order.tolist())
        assert sum(positive[order]) == 20  # oversampled to half of the draws
        seen |= negatives
    assert len(seen) > 60  # different subsets across epochs
    # 0 keeps every negative (the previous behaviour).
    assert len(epoch_order(100, positive, np.random.default_rng(1), None)) == 100


def test_tversky_weighs_misses_over_false_alarms() -> None:
    pytest.importorskip("keras")
    from training.losses import LOSSES, batch_tversky_loss

    truth = np.zeros((1, 8, 8, 1), np.float32)
    truth[0, 2:6, 2:6] = 1
    miss = truth.copy()
    miss[0, 2:4, 2:6] = 0  # 8 missed pixels
    extra = truth.copy()
    extra[0, 0:2, 0:4] = 1  # 8 false-alarm pixels
    loss_miss = float(np.asarray(batch_tversky_loss(truth, miss))[0])
    loss_extra = float(np.asarray(batch_tversky_loss(truth, extra))[0])
    assert loss_miss > loss_extra > 0
    assert "bce-tversky" in LOSSES
    # The "-fp" variant is the mirror: a false alarm costs more than a miss.
    fp_miss = float(np.asarray(LOSSES["bce-tversky-fp"](truth, miss))[0])
    fp_extra = float(np.asarray(LOSSES["bce-tversky-fp"](truth, extra))[0])
    assert fp_extra > fp_miss > 0


def test_decoder_width_shrinks_the_decoder_only() -> None:
    pytest.importorskip("keras")
    from training.models import build_model

    full = build_model("unet-mobilenetv2", 64)
    half = build_model("unet-mobilenetv2", 64, decoder_width=0.5)
    assert half.get_layer("decoder_stage0a_conv").filters == 128 == full.get_layer("decoder_stage0a_conv").filters // 2
    assert half.count_params() < full.count_params()
    with pytest.raises(ConfigError):
        build_model("unet-mobilenetv2", 64, decoder_width=2.0)
