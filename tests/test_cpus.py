"""bcedge.cpus: the usable CPUs and the default thread count shared by infer, serve and benchmark."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bcedge import cpus


def test_usable_cpus_is_the_affinity_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 3, 5}, raising=False)
    monkeypatch.setattr(cpus, "_cgroup_cpu_limit", lambda: None)
    assert cpus.usable_cpus() == 3


def test_usable_cpus_falls_back_to_cpu_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    monkeypatch.setattr(cpus, "_cgroup_cpu_limit", lambda: None)
    assert cpus.usable_cpus() == 6
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert cpus.usable_cpus() == 1


def test_a_cgroup_quota_caps_the_affinity_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(64)), raising=False)
    monkeypatch.setattr(cpus, "_cgroup_cpu_limit", lambda: 2)
    assert cpus.usable_cpus() == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("max 100000\n", None),
        ("200000 100000\n", 2),
        ("150000 100000\n", 2),  # 1.5 CPUs of time: two threads, not one
        ("50000 100000\n", 1),
        ("garbage\n", None),
        ("0 100000\n", None),
        ("-1 100000\n", None),
    ],
)
def test_cgroup_quota_parsing(tmp_path: Path, text: str, expected: int | None) -> None:
    path = tmp_path / "cpu.max"
    path.write_text(text)
    assert cpus._cgroup_cpu_limit(path) == expected


def test_cgroup_quota_missing_file(tmp_path: Path) -> None:
    assert cpus._cgroup_cpu_limit(tmp_path / "absent") is None


def test_default_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpus, "usable_cpus", lambda: 8)
    assert cpus.default_threads() == 8
    assert cpus.default_threads(None) == 8
    assert cpus.default_threads(3) == 3  # what the user asked for wins
    assert cpus.default_threads(None, share=2) == 4  # two serve workers: 4 each
    assert cpus.default_threads(None, share=3) == 2
    assert cpus.default_threads(None, share=16) == 1  # never 0
    assert cpus.default_threads(None, share=0) == 8
