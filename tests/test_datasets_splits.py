"""Patient-level stratified splits: separation, stratification, determinism, official splits, JSON."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

from bcedge.datasets.base import Sample
from bcedge.datasets.splits import (
    SplitDataset,
    check_fractions,
    filter_samples,
    load_split,
    make_split,
    save_split,
)
from bcedge.errors import ConfigError, DatasetError

REPO = Path(__file__).resolve().parents[1]


def _samples(n_patients: int = 200, *, source: str = "src", official: bool = False) -> list[Sample]:
    """Patients with 1-4 images; every third patient has a lesion on one image."""
    out = []
    for p in range(n_patients):
        for i in range(1 + p % 4):
            lesion = p % 3 == 0 and i == 0
            out.append(
                Sample(
                    id=f"{source}-{p:03d}-{i}",
                    patient_id=f"{source}-P{p:03d}",
                    source=source,
                    image_path=Path(f"/nowhere/{p}-{i}.png"),
                    circles=((10.0, 10.0, 3.0),) if lesion else (),
                    mask_kind="circle" if lesion else "none",
                    split=("test" if p % 5 == 0 else "train") if official else None,
                )
            )
    return out


def _patients_by_split(samples: list[Sample], split) -> dict[str, set[str]]:
    of = split.split_of()
    out: dict[str, set[str]] = {}
    for s in samples:
        out.setdefault(of[s.id], set()).add(s.patient_id)
    return out


def test_no_patient_in_two_splits_and_every_sample_assigned() -> None:
    samples = _samples()
    split = make_split(samples, dataset="toy", seed=3)
    assert sorted(sid for ids in split.splits.values() for sid in ids) == sorted(s.id for s in samples)
    groups = _patients_by_split(samples, split)
    assert not (groups["train"] & groups["val"]) and not (groups["train"] & groups["test"])
    assert not (groups["val"] & groups["test"])


def test_fractions_are_met_per_stratum() -> None:
    samples = _samples()
    split = make_split(samples, dataset="toy", seed=0)
    groups = _patients_by_split(samples, split)
    lesion_patients = {s.patient_id for s in samples if s.has_lesion}
    n_lesion = len(lesion_patients)  # 67
    n_total = 200
    for name, frac in {"train": 0.7, "val": 0.15, "test": 0.15}.items():
        assert abs(len(groups[name]) - frac * n_total) <= 2, name
        assert abs(len(groups[name] & lesion_patients) - frac * n_lesion) <= 1, name


def test_stratified_by_source_too() -> None:
    samples = _samples(60, source="a") + _samples(20, source="b")
    split = make_split(samples, dataset="two", seed=0)
    for name in ("train", "val", "test"):
        assert split.counts[name]["by_source"].keys() == {"a", "b"}, name


def test_deterministic_and_seed_dependent() -> None:
    samples = _samples()
    one = make_split(samples, dataset="toy", seed=11)
    two = make_split(list(reversed(samples)), dataset="toy", seed=11)
    assert one.splits == two.splits
    other = make_split(samples, dataset="toy", seed=12)
    assert other.splits != one.splits


def test_official_split_keeps_test_and_carves_val_from_train() -> None:
    samples = _samples(official=True)
    split = make_split(samples, dataset="official", seed=0)
    assert split.official
    official_test = {s.id for s in samples if s.split == "test"}
    assert set(split.splits["test"]) == official_test
    train_val = set(split.splits["train"]) | set(split.splits["val"])
    assert train_val == {s.id for s in samples if s.split == "train"}
    groups = _patients_by_split(samples, split)
    # val is 0.15 / 0.85 of the official-train patients.
    assert abs(len(groups["val"]) - 160 * 0.15 / 0.85) <= 2
    ignored = make_split(samples, dataset="official", seed=0, use_official=False)
    assert not ignored.official and set(ignored.splits["test"]) != official_test


def test_patient_in_both_official_splits_goes_to_test() -> None:
    samples = _samples(10, official=True)
    straddler = Sample(id="extra", patient_id="src-P001", source="src", image_path=Path("/x"), split="test")
    split = make_split([*samples, straddler], dataset="official", seed=0)
    of = split.split_of()
    assert {of[s.id] for s in samples if s.patient_id == "src-P001"} == {"test"}
    assert split.info["moved_to_test"] == 1


def test_partial_official_split_and_duplicates_are_errors() -> None:
    samples = _samples(10, official=True)
    mixed = [*samples, Sample(id="x", patient_id="px", source="src", image_path=Path("/x"))]
    with pytest.raises(DatasetError, match="expected all or none"):
        make_split(mixed, dataset="mixed")
    with pytest.raises(DatasetError, match="appears twice"):
        make_split([*samples, samples[0]], dataset="dup")
    with pytest.raises(DatasetError, match="no samples"):
        make_split([], dataset="empty")


def test_fraction_validation() -> None:
    assert check_fractions({"train": 0.8, "test": 0.2}) == {"train": 0.8, "val": 0.0, "test": 0.2}
    for bad in ({"train": 0.5, "val": 0.2}, {"train": 1.2, "val": -0.2}, {"train": 0.0, "test": 1.0}, {"dev": 1.0}):
        with pytest.raises(ConfigError):
            check_fractions(bad)
    split = make_split(_samples(50), dataset="toy", fractions={"train": 0.8, "test": 0.2})
    assert split.splits["val"] == ()


def test_json_round_trip_and_format(tmp_path: Path) -> None:
    samples = _samples(40)
    split = make_split(samples, dataset="toy", seed=5)
    path = save_split(split, tmp_path / "with space" / "split.json")
    doc = json.loads(path.read_text())
    assert doc["version"] == 1 and doc["dataset"] == "toy" and doc["seed"] == 5
    assert set(doc) >= {"fractions", "created", "splits", "counts"}
    assert doc["counts"]["train"]["images"] == len(doc["splits"]["train"])
    back = load_split(path)
    assert back.splits == split.splits and back.fractions == split.fractions and back.counts == split.counts
    assert not list(path.parent.glob(".*.tmp*"))  # atomic write left no temporary file


def test_filter_and_split_dataset(tmp_path: Path) -> None:
    samples = _samples(40)
    split = make_split(samples, dataset="toy", seed=5)
    val = filter_samples(samples, split, "val")
    assert [s.id for s in val] == [s.id for s in samples if s.id in set(split.splits["val"])]

    class Reader:
        name = "toy"

        def samples(self):
            yield from samples

    path = save_split(split, tmp_path / "s.json")
    assert [s.id for s in SplitDataset(Reader(), path, "val").samples()] == [s.id for s in val]
    with pytest.raises(DatasetError, match="not in the split file"):
        filter_samples(samples, split, "holdout")
    with pytest.raises(DatasetError, match=r"names \d+ ids not in the dataset"):
        filter_samples(samples[:-3], split, "train")


def test_load_split_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        load_split(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DatasetError, match="not a readable JSON"):
        load_split(bad)
    bad.write_text(json.dumps({"version": 2, "splits": {}}))
    with pytest.raises(DatasetError, match="version 2"):
        load_split(bad)
    bad.write_text(json.dumps({"version": 1, "splits": {"train": ["a"], "test": ["a"]}}))
    with pytest.raises(DatasetError, match="in both"):
        load_split(bad)


_DATA = os.environ.get("BCEDGE_DATA")


def _rederive_committed(dataset: str):
    """The committed ``benchmarks/splits/<dataset>.json``, checked: re-derived from the data and patient-level."""
    from bcedge.datasets.registry import open_dataset

    committed = load_split(REPO / "benchmarks" / "splits" / f"{dataset}.json")
    samples = list(open_dataset(dataset, Path(_DATA or "")).samples())
    again = make_split(samples, dataset=dataset, seed=committed.seed, fractions=committed.fractions)
    assert again.splits == committed.splits
    groups = _patients_by_split(samples, committed)
    assert not (groups["train"] & groups["test"]) and not (groups["val"] & groups["test"])
    assert not (groups["train"] & groups["val"])
    return committed, samples


@pytest.mark.skipif(not _DATA, reason="BCEDGE_DATA is not set (path to the shared real data)")
def test_committed_combined_split_is_reproducible_and_patient_level() -> None:
    committed, samples = _rederive_committed("combined")
    by_split = Counter(committed.split_of()[s.id] for s in samples if s.has_lesion)
    assert all(by_split[name] > 0 for name in ("train", "val", "test"))


@pytest.mark.skipif(not _DATA, reason="BCEDGE_DATA is not set (path to the shared real data)")
def test_committed_combined_v2_split_is_reproducible_patient_level_with_25_test_lesion_views() -> None:
    """Issue #12's split: by patient across both CDD-CESM folders, >= 25 DM pixel-mask test images."""
    if not (Path(_DATA or "") / "cdd-cesm-extra").is_dir():
        pytest.skip("cdd-cesm-extra not in BCEDGE_DATA")
    committed, samples = _rederive_committed("combined-v2")
    split_of = committed.split_of()
    test_dm = [
        s
        for s in samples
        if split_of[s.id] == "test"
        and s.extra.get("kind") == "DM"
        and s.mask_kind == "pixel"
        and not s.lesion_unlocated
    ]
    assert len(test_dm) >= 25
    assert sum(split_of[s.id] == "test" and s.mask_kind == "none" for s in samples) >= 50  # normal images
