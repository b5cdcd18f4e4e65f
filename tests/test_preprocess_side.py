"""Chest-wall side: header (Patient Orientation, else laterality) confirmed by the image.

Synthetic breasts (a half-ellipse on one edge, see ``test_preprocess.synth_breast``)
stored with the chest wall on a known side, described by headers that agree,
disagree or say nothing.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from test_preprocess import mammogram, synth_breast

import bcedge.preprocess as pre
from bcedge.dicom import Mammogram, read_dicom
from bcedge.preprocess import SIDE_CONFIDENCE, PreprocessConfig, decide_flip, header_chest_wall_side, preprocess

CONFIG = PreprocessConfig(size=128)


def _scan(side: str, *, laterality: str | None = None, orientation_side: str | None = None) -> Mammogram:
    img, _, _ = synth_breast(side=side, label=False)
    return mammogram(img, laterality, orientation_side)


@pytest.fixture(autouse=True)
def _fresh_warning() -> None:
    """Each test sees the process's first disagreement (the warning is once per process)."""
    pre._conflict_warned.clear()


# --------------------------------------------------------------------------- decision table


@pytest.mark.parametrize(
    ("laterality", "orientation", "image", "confidence", "flip", "side", "why"),
    [
        # header agrees with the image
        ("R", None, "R", 0.6, True, "R", "laterality R (ImageLaterality), confirmed by the image"),
        ("L", "L", "L", 0.6, False, "L", "header PatientOrientation, confirmed by the image"),
        # Patient Orientation wins over laterality: a right breast stored A\L has its chest wall on the left
        ("R", "L", None, 0.0, False, "L", "header PatientOrientation"),
        # header disagrees with a confident image: the pixels win
        ("R", None, "L", 0.6, False, "L", "overruling laterality R"),
        ("L", "R", "L", 0.6, False, "L", "overruling header PatientOrientation"),
        # ... but not with an image too unsure to tell (a breast filling the film)
        ("R", None, "L", SIDE_CONFIDENCE / 2, True, "R", "weakly suggests L"),
        # no header: the image decides
        (None, None, "R", 0.05, True, "R", "header states no side"),
        (None, None, None, 0.0, False, None, "not flipped"),
    ],
)
def test_decide_flip_header_then_image(
    laterality: str | None,
    orientation: str | None,
    image: str | None,
    confidence: float,
    flip: bool,
    side: str | None,
    why: str,
) -> None:
    decision = decide_flip(
        laterality,
        "ImageLaterality" if laterality else None,
        image,
        confidence,
        "L",
        "laterality",
        orientation_side=orientation,
        orientation_source="PatientOrientation" if orientation else None,
    )
    assert (decision.flip, decision.side) == (flip, side)
    assert why in decision.reason
    assert decision.header_side == (orientation or laterality)


def test_header_side_prefers_patient_orientation() -> None:
    assert header_chest_wall_side("R", "ImageLaterality", "L", "PatientOrientation") == (
        "L",
        "header PatientOrientation",
    )
    assert header_chest_wall_side("r", None) == ("R", "laterality R")
    assert header_chest_wall_side(None, None) == (None, "")
    assert header_chest_wall_side("B", "ImageLaterality") == (None, "")


# --------------------------------------------------------------------------- through preprocess()


@pytest.mark.parametrize("stored", ["L", "R"])
@pytest.mark.parametrize("canonical", ["L", "R"])
def test_chest_wall_lands_on_the_canonical_side_whatever_the_header_says(stored: str, canonical: str) -> None:
    """Agreeing, disagreeing, orientation-only and absent headers all put the chest wall on ``canonical``."""
    other = "R" if stored == "L" else "L"
    config = PreprocessConfig(size=128, canonical_side=canonical)
    for kwargs in (
        {},
        {"laterality": stored},
        {"laterality": other},
        {"orientation_side": stored},
        {"orientation_side": other},
    ):
        tensor, geometry = preprocess(_scan(stored, **kwargs), config)
        assert geometry.chest_wall_side == stored, kwargs
        assert geometry.flipped == (stored != canonical), kwargs
        cols = (tensor[0, :, :, 0] > 0).sum(axis=0)
        edge = cols[:12].sum() if canonical == "L" else cols[-12:].sum()
        far = cols[-40:].sum() if canonical == "L" else cols[:40].sum()
        assert edge > 3 * far, kwargs
        assert geometry.side_conflict == (kwargs.get("laterality", kwargs.get("orientation_side", stored)) != stored)


def test_disagreement_warns_once_without_identifiers(caplog: pytest.LogCaptureFixture) -> None:
    scan = _scan("R", laterality="L")
    with caplog.at_level(logging.DEBUG, logger="bcedge.preprocess"):
        _, first = preprocess(scan, CONFIG)
        _, second = preprocess(scan, CONFIG)
    assert first.side_conflict and second.side_conflict and first.flipped and second.flipped
    records = [r for r in caplog.records if "chest-wall side" in r.getMessage()]
    assert [r.levelno for r in records] == [logging.WARNING, logging.DEBUG]
    assert "following the image" in records[0].getMessage()
    assert "synthetic" not in records[0].getMessage()  # no source path, no patient data


def test_agreement_does_not_warn(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="bcedge.preprocess"):
        _, geometry = preprocess(_scan("R", laterality="R"), CONFIG)
    assert not geometry.side_conflict and geometry.flipped
    assert not [r for r in caplog.records if "chest-wall side" in r.getMessage()]


def test_geometry_round_trips_the_header_side() -> None:
    _, geometry = preprocess(_scan("R", laterality="L"), CONFIG)
    again = pre.Geometry.from_dict(geometry.to_dict())
    assert again == geometry and again.header_side == "L" and again.side_conflict


# --------------------------------------------------------------------------- DICOM headers


def _stored(side: str) -> np.ndarray:
    img, _, _ = synth_breast(side=side, label=False)
    return np.round(img * 4000).astype(np.uint16)


@pytest.mark.parametrize(
    ("orientation", "laterality", "stored_side", "expected_side"),
    [
        (["A", "R"], "L", "L", "L"),  # standard left CC
        (["A", "FR"], "L", "L", "L"),  # standard left MLO
        (["P", "L"], "R", "R", "R"),  # standard right CC
        (["P", "FL"], "R", "R", "R"),  # standard right MLO
        (["A", "L"], "R", "L", "L"),  # right breast stored mirrored: chest wall on the left
        (["P", "R"], "L", "R", "R"),  # left breast stored mirrored
        (["A", "HL"], "R", "L", "L"),  # mirrored and upside down: the column direction moves no chest wall
        (["H", "R"], "L", "L", None),  # rotated by 90 degrees: the header states no side
    ],
)
def test_patient_orientation_gives_the_chest_wall_side(
    write_mg, orientation: list[str], laterality: str, stored_side: str, expected_side: str | None
) -> None:
    path = write_mg(
        _stored(stored_side),
        "o.dcm",
        laterality=laterality,
        windows=[(2000, 4000)],
        extra={"PatientOrientation": orientation},
    )
    mammo = read_dicom(path)
    assert mammo.meta.laterality == laterality  # laterality stays laterality (the findings report it)
    assert mammo.meta.chest_wall_side == expected_side
    assert mammo.meta.chest_wall_source == ("PatientOrientation" if expected_side else None)
    _, geometry = preprocess(mammo, CONFIG)
    assert geometry.chest_wall_side == stored_side
    assert geometry.flipped == (stored_side == "R")
    # With Patient Orientation the header agrees with the pixels; without it (rotated) the
    # laterality stands in, and agrees here because these scans keep the standard hanging.
    assert not geometry.side_conflict


def test_right_breast_stored_a_l_was_flipped_the_wrong_way_by_laterality_alone(write_mg) -> None:
    """The reported bug: laterality R alone flips a scan whose chest wall is already on the left."""
    path = write_mg(
        _stored("L"), "al.dcm", laterality="R", windows=[(2000, 4000)], extra={"PatientOrientation": ["A", "L"]}
    )
    mammo = read_dicom(path)
    _, geometry = preprocess(mammo, CONFIG)
    assert not geometry.flipped and geometry.chest_wall_side == "L"
    # The same scan without Patient Orientation: laterality R says right, the image says left; the image wins.
    bare = mammogram(mammo.pixels, "R")
    _, by_laterality = preprocess(bare, CONFIG)
    assert not by_laterality.flipped and by_laterality.side_conflict
