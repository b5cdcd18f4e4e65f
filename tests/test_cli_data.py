"""``bcedge data ...``: exit codes, one-line errors, JSON stats, split files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from bcedge.cli import main


def _mias_tree(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    rows = ["mdb001 G CIRC B 5 5 2", "mdb002 G NORM", "mdb003 F SPIC M 8 8 3", "mdb004 D NORM"]
    (root / "Info.txt").write_text("\n".join(rows) + "\n")
    for n in range(1, 5):
        cv2.imwrite(str(root / "images" / f"mdb{n:03d}.png"), np.zeros((16, 16), np.uint8))
    return root


def test_bad_root_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["data", "stats", "mini-mias", "--root", str(tmp_path / "no such dir")])
    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and "root not found" in err


def test_unknown_dataset_and_bad_option_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "stats", "inbreast", "--root", str(tmp_path)]) == 2
    assert "unknown dataset" in capsys.readouterr().err
    root = _mias_tree(tmp_path / "mias")
    assert main(["data", "stats", "mini-mias", "--root", str(root), "-o", "colour"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_stats_json_and_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _mias_tree(tmp_path / "mias dir")
    assert main(["data", "stats", "mini-mias", "--root", str(root), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["dataset"] == "mini-mias"
    assert doc["groups"]["all"]["images"] == 4 and doc["groups"]["all"]["with_lesion"] == 2
    assert main(["data", "stats", "mini-mias", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "images" in out and "with masses" in out


def test_split_then_stats_per_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _mias_tree(tmp_path / "mias")
    out = tmp_path / "splits dir" / "s.json"
    args = ["data", "split", "mini-mias", "--root", str(root), "--out", str(out), "--seed", "1"]
    assert main([*args, "--train", "0.5", "--val", "0", "--test", "0.5"]) == 0
    doc = json.loads(out.read_text())
    assert doc["seed"] == 1 and sum(len(v) for v in doc["splits"].values()) == 4
    capsys.readouterr()
    assert main(["data", "stats", "mini-mias", "--root", str(root), "--split", str(out), "--json"]) == 0
    groups = json.loads(capsys.readouterr().out)["groups"]
    assert groups["train"]["images"] + groups["test"]["images"] == 4
    # Fractions that do not sum to 1: a one-line error.
    assert main([*args, "--train", "0.9"]) == 2
    assert "sum to" in capsys.readouterr().err
    # A split file naming ids the dataset lacks.
    (root / "Info.txt").write_text("mdb001 G CIRC B 5 5 2\nmdb002 G NORM\n")
    assert main(["data", "stats", "mini-mias", "--root", str(root), "--split", str(out)]) == 2
    assert "not in the dataset" in capsys.readouterr().err


def test_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "list"]) == 0
    assert "combined" in capsys.readouterr().out


_DATA = os.environ.get("BCEDGE_DATA")


@pytest.mark.skipif(not _DATA, reason="BCEDGE_DATA is not set (path to the shared real data)")
def test_real_mini_mias_stats_cli(capsys: pytest.CaptureFixture[str]) -> None:
    root = Path(_DATA or "") / "mini-mias"
    assert main(["data", "stats", "mini-mias", "--root", str(root), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)["groups"]["all"]
    assert stats["images"] == 322 and stats["with_lesion"] == 55
