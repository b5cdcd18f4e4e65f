"""training.run: the one owner of a training run folder (config.json, state.json, best/last.keras).

The readers' errors (missing folder, model, config; unreadable config) are also checked in
``test_export_calibration.py::test_load_run_errors_name_what_is_missing``.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from bcedge.errors import ConfigError
from training.run import (
    BEST,
    LAST,
    RUN_CONFIG,
    STATE,
    best_model,
    last_model,
    load_run,
    read_config,
    read_state,
    write_config,
    write_state,
)

ROOT = Path(__file__).resolve().parents[1]


def test_layout_names() -> None:
    run = Path("runs") / "a run"
    assert (RUN_CONFIG, STATE, BEST, LAST) == ("config.json", "state.json", "best.keras", "last.keras")
    assert best_model(run) == run / "best.keras" and last_model(run) == run / "last.keras"


def test_config_and_state_round_trip(tmp_path: Path) -> None:
    run = tmp_path / "with space"
    run.mkdir()
    config = {"model": "unet", "data": ["phantoms"], "size": 64, "preprocess": {"size": 64}}
    write_config(run, config)
    assert read_config(run) == config
    # sorted keys, 2-space indent, final newline: the format bcedge train has always written
    assert (run / RUN_CONFIG).read_text() == json.dumps(config, indent=2, sort_keys=True) + "\n"
    assert read_state(run) is None  # no epoch finished yet
    write_state(run, {"epoch": 3, "best_epoch": 2, "best_val_dice": 0.5})
    assert read_state(run) == {"epoch": 3, "best_epoch": 2, "best_val_dice": 0.5}


def test_unreadable_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no config\.json"):
        read_config(tmp_path)
    (tmp_path / RUN_CONFIG).write_text("[1, 2]")
    with pytest.raises(ConfigError, match="expected a JSON object"):
        read_config(tmp_path)
    (tmp_path / STATE).write_text("{broken")
    with pytest.raises(ConfigError, match="unreadable"):
        read_state(tmp_path)
    assert read_state(tmp_path, strict=False) == {}  # provenance readers go on without it


def test_load_run_reads_state_leniently(tmp_path: Path) -> None:
    (tmp_path / BEST).write_bytes(b"a model")
    write_config(tmp_path, {"model": "unet"})
    (tmp_path / STATE).write_text("{broken")
    run = load_run(tmp_path)
    assert run.state == {} and run.config == {"model": "unet"} and run.model_path == tmp_path / BEST
    write_state(tmp_path, {"epoch": 1})
    assert load_run(tmp_path).state == {"epoch": 1}


def _gpu_pack():
    spec = importlib.util.spec_from_file_location("gpu_pack", ROOT / "benchmarks" / "gpu_pack.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_pack_round_trip_through_the_run_folder(tmp_path: Path) -> None:
    """benchmarks/gpu_pack.py packs a run folder and unpacks one that load_run reads, same weights."""
    keras = pytest.importorskip("keras")
    from training.models import build_model

    keras.utils.set_random_seed(0)
    source = tmp_path / "trained run"
    source.mkdir()
    config = {"model": "unet", "data": ["phantoms"], "root": "r", "split": "s", "size": 32, "base_filters": 4}
    model = build_model("unet", 32, base_filters=4)
    model.save(best_model(source))
    write_config(source, config)
    write_state(source, {"epoch": 2, "best_epoch": 1, "best_val_dice": 0.25})
    gpu_pack = _gpu_pack()
    parts = gpu_pack.pack(source, tmp_path / "chunks" / "run", chunk_mib=0.05)
    assert len(parts) > 1  # split into chunks
    back = gpu_pack.unpack(tmp_path / "chunks" / "run", tmp_path / "unpacked run")
    run = load_run(back)
    assert run.config == config
    assert run.state == {"epoch": 2, "best_epoch": 1, "best_val_dice": 0.25}
    rebuilt = keras.models.load_model(run.model_path, compile=False)
    for a, b in zip(model.get_weights(), rebuilt.get_weights(), strict=True):
        np.testing.assert_allclose(b, a.astype(np.float16).astype(np.float32))  # float16 storage, as documented
