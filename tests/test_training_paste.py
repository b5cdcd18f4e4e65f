"""Lesion copy-paste (``bcedge train --paste-lesions``, :mod:`training.paste`)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

pytest.importorskip("keras")

from training.data import ArraySet, SegmentationData
from training.paste import LesionBank, paste_lesion

SIZE = 128


def _breast(level: float = 0.4) -> np.ndarray:
    """(S, S, 1) float32: breast tissue at ``level`` on the left 3/4, background 0 on the right."""
    image = np.zeros((SIZE, SIZE, 1), np.float32)
    image[:, : 3 * SIZE // 4] = level
    return image


def _lesion_view() -> tuple[np.ndarray, np.ndarray]:
    """A breast at 0.4 with a round lesion at 0.7 (excess 0.3) and a thin arc mask (no mass)."""
    image = _breast()
    mask = np.zeros((SIZE, SIZE), np.uint8)
    cv2.circle(mask, (40, 40), 8, 1, -1)
    image[..., 0][mask == 1] = 0.7
    arc = np.zeros_like(mask)
    cv2.ellipse(arc, (60, 100), (40, 20), 0, 180, 360, 1, 1)  # a 1 px curved outline, as skin-line masks
    mask = np.maximum(mask, arc)
    return image, mask[..., None]


def _set(images, masks, ids, kinds) -> ArraySet:
    return ArraySet(np.stack(images), np.stack(masks), tuple(ids), tuple(kinds), ("syn",) * len(ids))


def test_bank_keeps_solid_dm_pixel_lesions_only() -> None:
    image, mask = _lesion_view()
    data = _set(
        [image, image, image, _breast()],
        [mask, mask, mask, np.zeros_like(mask)],
        ["P1_L_DM_MLO", "P1_L_CM_MLO", "mias-1", "P2_R_DM_CC"],
        ["pixel", "pixel", "circle", "none"],
    )
    bank = LesionBank.from_set(data)
    assert len(bank) == 1  # the DM disc; not the arc, the contrast view, the circle or the normal film
    crop = bank.crops[0]
    assert crop.source_id == "P1_L_DM_MLO"
    assert crop.mask.sum() == cv2.circle(np.zeros((SIZE, SIZE), np.uint8), (40, 40), 8, 1, -1).sum()
    assert crop.ring_mean == pytest.approx(0.4, abs=1e-6)  # the tissue around it, not the lesion
    assert len(LesionBank.from_set(data, exclude_ids_with="")) == 2  # contrast views too when asked


def test_paste_puts_the_lesion_on_the_breast_with_its_contrast() -> None:
    bank = LesionBank.from_set(_set(*[[x] for x in _lesion_view()], ["P1_L_DM_MLO"], ["pixel"]))
    lesion_area = int(bank.crops[0].mask.sum())
    rng = np.random.default_rng(0)
    for _ in range(20):
        target = _breast(0.2)
        image, mask, pasted = paste_lesion(target.copy(), np.zeros((SIZE, SIZE, 1), np.float32), rng, bank)
        assert pasted
        new = mask[..., 0] == 1
        assert 0.6**2 * 0.7 * lesion_area <= new.sum() <= 1.2**2 * 1.3 * lesion_area  # scaled 0.6-1.2
        assert (target[..., 0][new] > 0).all()  # on the breast
        # The source's excess (0.3 over its ring) on the target's level (0.2), not its absolute 0.7.
        assert np.median(image[..., 0][new]) == pytest.approx(0.5, abs=0.02)
        changed = np.abs(image[..., 0] - target[..., 0]) > 1e-6  # float rounding of the level match aside
        assert not changed[target[..., 0] == 0].any()  # never onto the background
        near = cv2.dilate(new.astype(np.uint8), np.ones((11, 11), np.uint8)) > 0
        assert not changed[~near].any()  # only the lesion and its feathered edge


def test_paste_squeezes_the_lesion_under_white_in_dense_tissue() -> None:
    bank = LesionBank.from_set(_set(*[[x] for x in _lesion_view()], ["P1_L_DM_MLO"], ["pixel"]))
    image, mask, pasted = paste_lesion(
        _breast(0.8), np.zeros((SIZE, SIZE, 1), np.float32), np.random.default_rng(1), bank
    )
    assert pasted
    inside = image[..., 0][mask[..., 0] == 1]
    assert inside.max() <= 0.98 + 1e-6 and inside.mean() > 0.85  # brighter than the tissue, not clipped flat
    # No headroom at all: nowhere to paste, nothing changed.
    white = _breast(0.97)
    image, mask, pasted = paste_lesion(
        white.copy(), np.zeros((SIZE, SIZE, 1), np.float32), np.random.default_rng(1), bank
    )
    assert not pasted and np.array_equal(image, white) and not mask.any()


def test_paste_without_breast_or_lesions_changes_nothing() -> None:
    bank = LesionBank.from_set(_set(*[[x] for x in _lesion_view()], ["P1_L_DM_MLO"], ["pixel"]))
    empty = np.zeros((SIZE, SIZE, 1), np.float32)
    image, mask, pasted = paste_lesion(empty.copy(), empty.copy(), np.random.default_rng(0), bank)
    assert not pasted and not image.any() and not mask.any()
    _, _, pasted = paste_lesion(_breast(), empty.copy(), np.random.default_rng(0), LesionBank(()))
    assert not pasted


def test_segmentation_data_pastes_onto_lesion_free_draws_only() -> None:
    view, lesion = _lesion_view()
    data = _set(
        [view, _breast(0.3), _breast(0.3)],
        [lesion, *[np.zeros_like(lesion)] * 2],
        ["P1_L_DM_MLO", "n1", "n2"],
        ["pixel", "none", "none"],
    )
    bank = LesionBank.from_set(data)
    plain = SegmentationData(data, 3, seed=2)
    off = SegmentationData(data, 3, seed=2, paste=bank, paste_share=0.0)
    on = SegmentationData(data, 3, seed=2, paste=bank, paste_share=1.0)
    (x0, y0), (x1, y1), (x2, y2) = plain[0], off[0], on[0]
    assert np.array_equal(x0, x1) and np.array_equal(y0, y1)  # share 0: the stream is unchanged
    assert np.array_equal(x2[0], x0[0]) and np.array_equal(y2[0], y0[0])  # the lesion view is left alone
    for k in (1, 2):  # each normal film got one lesion
        assert y0[k].sum() == 0 and y2[k].sum() > 0 and not np.array_equal(x2[k], x0[k])
    x3, y3 = SegmentationData(data, 3, seed=2, paste=bank, paste_share=1.0)[0]
    assert np.array_equal(x2, x3) and np.array_equal(y2, y3)  # seeded: the same batches again


def test_paste_option_refuses_a_split_without_lesions_to_paste() -> None:
    from bcedge.errors import ConfigError
    from training.train import _lesion_bank

    view, lesion = _lesion_view()
    only_contrast = _set([view], [lesion], ["P1_L_CM_MLO"], ["pixel"])
    with pytest.raises(ConfigError, match="no pixel-mask lesion"):
        _lesion_bank(only_contrast)
    assert len(_lesion_bank(_set([view], [lesion], ["phantom-0001"], ["pixel"]))) == 1  # any non-contrast source
