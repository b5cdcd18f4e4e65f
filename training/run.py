"""The training run folder: its layout, and the one place that reads and writes it.

``bcedge train --out RUN_DIR`` writes, and ``bcedge evaluate RUN_DIR``, ``bcedge export RUN_DIR``
and ``benchmarks/gpu_pack.py`` read::

    RUN_DIR/config.json    the run's configuration (training.train.TrainConfig as a dict, plus
                           "machine": where it trained, see bcedge.bench.machine.keras_machine_info)
    RUN_DIR/state.json     last finished epoch, best validation Dice and its epoch, history, notes
    RUN_DIR/last.keras     model + optimizer state after the last finished epoch (resume)
    RUN_DIR/best.keras     the model with the best validation Dice (what evaluate and export use)
    RUN_DIR/history.json   per-epoch metrics (also as history.csv)

Every write is atomic (a temporary file, then a rename): a run killed mid-write keeps the
previous file. Reading errors are :class:`~bcedge.errors.ConfigError` s that name the file.
Standard library only (Keras is needed to load the models, not to find them).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bcedge.errors import ConfigError
from bcedge.imageio import atomic_write_bytes

if TYPE_CHECKING:
    from bcedge.preprocess import PreprocessConfig

RUN_CONFIG = "config.json"
STATE = "state.json"
LAST = "last.keras"
BEST = "best.keras"
HISTORY_JSON = "history.json"
HISTORY_CSV = "history.csv"


def write_json(path: str | os.PathLike[str], obj: object) -> None:
    """Write JSON atomically (sorted keys, 2-space indent, a final newline; unknown types as text)."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def _read_object(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``.

    Raises:
        FileNotFoundError: no such file (callers word that error for their case).
        ConfigError: unreadable, not JSON, or not an object.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return data


def read_config(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``config.json`` of a run folder as a dict.

    Raises:
        ConfigError: missing, unreadable or not a JSON object.
    """
    path = Path(run_dir) / RUN_CONFIG
    try:
        return _read_object(path)
    except FileNotFoundError:
        raise ConfigError(f"{run_dir}: no {RUN_CONFIG}; not a folder written by 'bcedge train --out'") from None


#: ``--fit-on`` values and the splits each trains on.
FIT_ON = {"train": ("train",), "train+val": ("train", "val")}


def fitted_splits(config: dict[str, Any]) -> tuple[str, ...]:
    """The splits a run (its ``config.json`` as a dict) trained on; runs before ``fit_on`` existed: train."""
    return FIT_ON.get(str(config.get("fit_on") or "train"), ("train",))


def refuse_scoring_on_fitted(config: dict[str, Any], subset: str, what: str) -> None:
    """Refuse to report a held-out score on a split the run trained on (a train+val refit on val).

    The training split itself stays scorable (a training figure, as it always was).

    Raises:
        ConfigError: ``subset`` is not ``train`` and is one of :func:`fitted_splits`.
    """
    if subset != "train" and subset in fitted_splits(config):
        raise ConfigError(
            f"{what} was trained on the {subset!r} split (fit_on {config.get('fit_on')!r}): "
            f"a score there is not a validation or test figure"
        )


def write_config(run_dir: str | os.PathLike[str], config: dict[str, Any]) -> None:
    """Write ``config.json`` (atomically)."""
    write_json(Path(run_dir) / RUN_CONFIG, config)


def read_state(run_dir: str | os.PathLike[str], *, strict: bool = True) -> dict[str, Any] | None:
    """``state.json`` of a run folder; None when the run has not finished an epoch (no file).

    Args:
        strict: raise on an unreadable file (resuming depends on it); False returns an empty
            dict instead (provenance readers: the model file is what matters to them).

    Raises:
        ConfigError: unreadable or not a JSON object (``strict`` only).
    """
    try:
        return _read_object(Path(run_dir) / STATE)
    except FileNotFoundError:
        return None
    except ConfigError:
        if strict:
            raise
        return {}


def write_state(run_dir: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Write ``state.json`` (atomically)."""
    write_json(Path(run_dir) / STATE, state)


def best_model(run_dir: str | os.PathLike[str]) -> Path:
    """Path of the run's ``best.keras`` (whether or not it exists yet)."""
    return Path(run_dir) / BEST


def last_model(run_dir: str | os.PathLike[str]) -> Path:
    """Path of the run's ``last.keras`` (whether or not it exists yet)."""
    return Path(run_dir) / LAST


@dataclass(frozen=True)
class RunInfo:
    """A finished training run, as evaluate and export read it.

    Attributes:
        run_dir: the folder.
        model_path: its ``best.keras``.
        config: ``config.json`` as a dict (model, data, root, split, size, preprocess...).
        state: ``state.json`` as a dict (epochs done, best epoch and Dice), or empty.
    """

    run_dir: Path
    model_path: Path
    config: dict[str, Any]
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        """Model input side S."""
        return int(self.preprocess_config().size)

    def preprocess_config(self) -> PreprocessConfig:
        """The run's frozen :class:`bcedge.preprocess.PreprocessConfig`.

        Raises:
            ConfigError: ``config.json`` has no ``preprocess`` entry.
        """
        from bcedge.preprocess import PreprocessConfig

        if not self.config.get("preprocess"):
            raise ConfigError(f"{self.run_dir / RUN_CONFIG} has no 'preprocess' config; re-run training")
        return PreprocessConfig.from_dict(self.config["preprocess"])


def load_run(run_dir: str | os.PathLike[str]) -> RunInfo:
    """Read a finished run folder written by ``bcedge train`` (its ``best.keras`` must exist).

    Raises:
        ConfigError: the folder, ``best.keras`` or ``config.json`` is missing or unreadable.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"run folder {run_dir} does not exist (expected the --out folder of 'bcedge train')")
    model_path = best_model(run_dir)
    if not model_path.is_file():
        raise ConfigError(f"{run_dir}: no {BEST}; not a finished training run (train at least one epoch)")
    try:
        config = _read_object(run_dir / RUN_CONFIG)
    except FileNotFoundError:
        raise ConfigError(f"{run_dir}: no {RUN_CONFIG}; export needs the run's data and preprocessing config") from None
    return RunInfo(run_dir, model_path, config, read_state(run_dir, strict=False) or {})
