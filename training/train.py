"""``bcedge train``: fit one model on preprocessed arrays, checkpointing so it can resume.

Run folder layout (everything written atomically)::

    RUN_DIR/config.json       the run's full configuration (model, data, split, preprocessing
                              config and hash, hyper-parameters, Keras backend and versions)
    RUN_DIR/last.keras        model + optimizer state after the last finished epoch (resume)
    RUN_DIR/state.json        last finished epoch, best validation Dice and its epoch
    RUN_DIR/best.keras        the model with the best validation Dice (what export uses)
    RUN_DIR/history.csv/.json per-epoch loss and metrics, training and validation

Resuming: ``bcedge train --out RUN_DIR`` on a folder with ``state.json`` loads
``last.keras`` and continues at the next epoch with the same seed-derived batch
order and learning-rate schedule (both are functions of the epoch). The run
configuration must match the saved one, except ``epochs`` (which may grow).
Early stopping counts epochs since the best validation Dice from ``state.json``,
so it survives a resume too.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import time
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bcedge.bench.machine import keras_machine_info
from bcedge.errors import ConfigError
from bcedge.imageio import atomic_write, atomic_write_bytes

if TYPE_CHECKING:
    from training.data import ArraySet
    from training.paste import LesionBank

# The run folder's layout and its readers/writers live in training.run (its one owner).
from training.run import (
    BEST,
    HISTORY_CSV,
    HISTORY_JSON,
    LAST,
    STATE,
    read_config,
    read_state,
    write_config,
    write_json,
    write_state,
)

#: Fields that may differ between a run folder and the command that resumes it.
RESUMABLE_CHANGES = {"epochs", "patience", "workers", "time_budget_s"}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (saved as ``config.json``)."""

    model: str
    data: tuple[str, ...]
    root: str
    split: str
    reader_options: tuple[str, ...] = ()
    size: int = 256
    epochs: int = 50
    batch: int = 8
    lr: float = 1e-3
    min_lr: float = 1e-5
    loss: str = "bce-dice"
    encoder_weights: str = "none"
    #: sha256 of the ``--encoder-weights`` file ("" for none/imagenet): which weights, not just which path.
    encoder_weights_sha256: str = ""
    base_filters: int = 64
    upsampling: str = "nearest"
    width: float = 1.0
    decoder_width: float = 0.0
    positive_fraction: float | None = 0.5
    epoch_negatives: int = 0
    #: Train on ``patch`` x ``patch`` crops of the ``size`` images (0: whole images); see training.data.
    patch: int = 0
    #: A trained model (same architecture) whose weights start this run, and the sha256 of that file.
    init_weights: str = ""
    init_weights_sha256: str = ""
    #: Share of the patches not centred on a lesion that are centred on a false-positive pixel of the
    #: ``init_weights`` model on the training images (hard negatives, mined once; training.data).
    hard_negatives: float = 0.0
    #: Train the decoder only; the encoder keeps the weights it starts with (ImageNet or ``init_weights``).
    freeze_encoder: bool = False
    #: Share of the lesion-free training draws that get one real training lesion pasted on (training.paste;
    #: the DM views' pixel-mask lesions); 0 leaves the data stream exactly as before.
    paste_lesions: float = 0.0
    augment: bool = True
    augment_preset: str = "basic"
    patience: int = 15
    seed: int = 0
    mixed_precision: bool = False
    workers: int = 1
    time_budget_s: float | None = None
    preprocess: dict = field(default_factory=dict)
    preprocess_hash: str = ""
    #: The splits fitted (training.run.FIT_ON): "train", or "train+val" for the final refit of a
    #: recipe already chosen on validation; such a run's validation figures are not validation.
    fit_on: str = "train"

    @classmethod
    def from_saved(cls, saved: dict) -> TrainConfig:
        """The configuration a run folder's ``config.json`` records (its extra keys, e.g. machine, dropped)."""
        fields = {k: v for k, v in saved.items() if k in cls.__dataclass_fields__}
        fields.update(data=tuple(saved["data"]), reader_options=tuple(saved.get("reader_options") or ()))
        return cls(**fields)

    def comparable(self) -> dict:
        """The fields a resume must keep identical."""
        return {k: v for k, v in asdict(self).items() if k not in RESUMABLE_CHANGES}


def lr_at(epoch: int, config: TrainConfig) -> float:
    """Cosine decay from ``lr`` to ``min_lr`` over ``epochs`` (a function of the epoch alone)."""
    t = min(max(epoch, 0), max(config.epochs - 1, 1)) / max(config.epochs - 1, 1)
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1.0 + math.cos(math.pi * t))


def check_resume(run_dir: Path, config: TrainConfig) -> dict | None:
    """The saved state when ``run_dir`` holds a resumable run with the same configuration.

    Raises:
        ConfigError: the folder holds a different run.
    """
    if not (run_dir / STATE).exists():
        return None
    saved_cfg = TrainConfig.from_saved(read_config(run_dir))
    mine, theirs = config.comparable(), saved_cfg.comparable()
    diff = sorted(k for k in mine if mine[k] != theirs.get(k))
    if diff:
        detail = ", ".join(f"{k}: saved {theirs.get(k)!r} vs now {mine[k]!r}" for k in diff[:3])
        raise ConfigError(f"{run_dir} holds a different run ({detail}); use a new --out folder")
    return read_state(run_dir)


def _distribution_scope(devices: list[str]):
    """A context for building/compiling on several accelerators, or a null context.

    JAX: Keras' own ``DataParallel`` distribution. TensorFlow: ``MirroredStrategy``.
    PyTorch: Keras has no multi-device trainer for it; one device is used.
    """
    import keras

    backend = keras.backend.backend()
    if len(devices) < 2:
        return contextlib.nullcontext(), 1
    if backend == "jax":
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        return contextlib.nullcontext(), len(devices)
    if backend == "tensorflow":
        import tensorflow as tf

        kind = "GPU" if any("gpu" in d.lower() for d in devices) else "CPU"
        names = [d for d in (x.name for x in tf.config.list_logical_devices(kind))]
        strategy = tf.distribute.MirroredStrategy(names)
        return strategy.scope(), strategy.num_replicas_in_sync
    return contextlib.nullcontext(), 1


class _RunState:
    """Keras callback: saves last.keras, state.json, history and best.keras after each epoch."""

    def __new__(cls, *args, **kwargs):  # built lazily so importing this module needs no Keras
        import keras

        class Callback(keras.callbacks.Callback):
            def __init__(self, run_dir: Path, config: TrainConfig, state: dict, progress: Callable | None) -> None:
                super().__init__()
                self.run_dir, self.config, self.state, self.progress = run_dir, config, state, progress
                self.t0 = self.started = time.time()

            def on_epoch_begin(self, epoch, logs=None):
                self.model.optimizer.learning_rate.assign(lr_at(epoch, self.config))
                self.t0 = time.time()

            def on_train_batch_end(self, batch, logs=None):
                if self.progress:
                    self.progress("batch", batch, logs or {})

            def on_epoch_end(self, epoch, logs=None):
                logs = {k: float(v) for k, v in (logs or {}).items()}
                logs.update(epoch=epoch + 1, lr=lr_at(epoch, self.config), seconds=round(time.time() - self.t0, 2))
                history = self.state.setdefault("history", [])
                history.append(logs)
                # Dice over lesion images: the per-image mean over all images is maximised by
                # predicting nothing when most images are normal.
                score = logs.get("val_dice_positive", logs.get("dice_positive", 0.0))
                if score > self.state.get("best_val_dice", -1.0):
                    self.state.update(best_val_dice=score, best_epoch=epoch + 1)
                    atomic_write(self.run_dir / BEST, lambda p: self.model.save(p))
                atomic_write(self.run_dir / LAST, lambda p: self.model.save(p))
                self.state["epoch"] = epoch + 1
                write_json(self.run_dir / HISTORY_JSON, history)
                atomic_write_bytes(self.run_dir / HISTORY_CSV, _history_csv(history).encode())
                write_state(self.run_dir, self.state)
                if self.progress:
                    self.progress("epoch", epoch, logs)
                if epoch + 1 - self.state.get("best_epoch", 0) >= self.config.patience:
                    self.model.stop_training = True
                    self.state["stopped_early"] = True
                    write_state(self.run_dir, self.state)
                budget = self.config.time_budget_s
                if budget is not None and time.time() - self.started >= budget:
                    # Out of time, not converged: a later call with a budget resumes from here.
                    self.model.stop_training = True

        return Callback(*args, **kwargs)


def _history_csv(history: list[dict]) -> str:
    keys = sorted({k for row in history for k in row}, key=lambda k: (k != "epoch", k))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(history)
    return buf.getvalue()


def compile_model(model, config: TrainConfig) -> None:
    """Compile with Adam, the configured loss and the table metrics."""
    import keras

    from training.losses import default_metrics, get_loss

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=config.lr),
        loss=get_loss(config.loss),
        metrics=default_metrics(),
    )


def train(
    config: TrainConfig,
    run_dir: Path,
    train_set,
    val_set,
    *,
    progress: Callable | None = None,
) -> dict:
    """Train (or resume) a run; returns the final ``state.json`` content.

    Args:
        config: the run configuration.
        run_dir: the run folder (created; resumed when it holds this run).
        train_set, val_set: :class:`training.data.ArraySet` of each split.
        progress: optional ``progress(kind, index, logs)`` callback for the CLI's display.
    """
    import keras

    from training.augment import AugmentConfig
    from training.data import SegmentationData
    from training.models import load_trained

    run_dir.mkdir(parents=True, exist_ok=True)
    state = check_resume(run_dir, config)
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    keras.utils.set_random_seed(config.seed)
    devices = [d for d in keras.distribution.list_devices() if "cpu" not in d.lower()] or ["cpu"]
    scope, replicas = _distribution_scope(devices)
    with scope:
        if state is not None:
            model = load_trained(run_dir / LAST, compile=True)
        else:
            state = {"epoch": 0, "best_val_dice": -1.0, "best_epoch": 0, "history": []}
            write_config(run_dir, {**asdict(config), "machine": keras_machine_info()})
            # Patch training feeds crops and validates on whole images: one model, any input size.
            model = _build(config, None if config.patch else config.size)
            if config.init_weights:
                _load_init_weights(model, config.init_weights)
            if config.hard_negatives > 0:
                _save_hard_negatives(run_dir, model, train_set)
            compile_model(model, config)
    state["replicas"] = replicas
    if state["epoch"] >= config.epochs or state.get("stopped_early"):
        return state
    train_data = SegmentationData(
        train_set,
        config.batch * replicas,
        seed=config.seed,
        augment_config=AugmentConfig.preset(config.augment_preset) if config.augment else None,
        positive_fraction=config.positive_fraction,
        negatives=config.epoch_negatives,
        patch=config.patch,
        hard=_load_hard_negatives(run_dir, train_set) if config.hard_negatives > 0 else None,
        hard_share=config.hard_negatives,
        paste=_lesion_bank(train_set) if config.paste_lesions > 0 else None,
        paste_share=config.paste_lesions,
        shuffle=True,
        epoch=state["epoch"],
        workers=config.workers,
        use_multiprocessing=False,
    )
    val_data = SegmentationData(val_set, config.batch * replicas)
    train_data_start = state["epoch"]
    started = time.time()
    model.fit(
        train_data,
        validation_data=val_data,
        epochs=config.epochs,
        initial_epoch=state["epoch"],
        callbacks=[_RunState(run_dir, config, state, progress)],
        verbose=0,
    )
    elapsed = time.time() - started
    if state["epoch"] > train_data_start:
        state["bn_recalibration"] = finalise_best(run_dir, config, train_set, val_set)
        fix_input_size(run_dir, config)
    epochs_run = state["epoch"] - train_data_start
    state["wall_seconds"] = round(state.get("wall_seconds", 0.0) + elapsed, 1)
    if epochs_run > 0:
        # Training draws per second over this invocation (validation time included).
        state["images_per_second"] = round(epochs_run * len(train_data.order_at(train_data_start)) / elapsed, 3)
    write_state(run_dir, state)
    return state


def _lesion_bank(train_set: ArraySet) -> LesionBank:
    """The lesions ``--paste-lesions`` pastes: a :class:`training.paste.LesionBank` of ``train_set``
    (a :class:`training.data.ArraySet`).

    Raises:
        ConfigError: the training split holds no lesion to paste (no pixel masks outside contrast
            views): the option would silently do nothing.
    """
    from training.paste import LesionBank

    bank = LesionBank.from_set(train_set)
    if not len(bank):
        raise ConfigError(
            "--paste-lesions: the training split has no pixel-mask lesion to paste (contrast views aside)"
        )
    return bank


#: The mined hard-negative maps of a run (kept so a resumed run uses the start model's, not the last one's).
HARD_NEGATIVES = "hard_negatives.npz"


def _save_hard_negatives(run_dir: Path, model, train_set) -> None:
    """Mine the start model's false positives on the training images (:func:`training.data.mine_hard_negatives`)
    and keep them in the run folder (bit-packed, with the shape and the training ids they belong to)."""
    from training.data import mine_hard_negatives

    hard = mine_hard_negatives(model, train_set)
    buf = io.BytesIO()
    packed = np.packbits(hard, axis=-1)
    np.savez_compressed(buf, hard=packed, shape=np.asarray(hard.shape), ids=np.asarray(train_set.ids))
    atomic_write_bytes(run_dir / HARD_NEGATIVES, buf.getvalue())


def _load_hard_negatives(run_dir: Path, train_set) -> np.ndarray:
    """The (N, S, S) bool maps :func:`_save_hard_negatives` kept, checked against the training images.

    Raises:
        ConfigError: the file is missing or unreadable, or holds maps of other images or another size
            (its recorded shape is checked against the training masks before anything is unpacked).
    """
    path = run_dir / HARD_NEGATIVES
    expected = tuple(int(v) for v in train_set.masks.shape[:3])
    try:
        with np.load(path) as saved:
            shape = tuple(int(v) for v in saved["shape"])
            ids = tuple(str(i) for i in saved["ids"])
            if shape != expected or ids != tuple(train_set.ids):
                raise ConfigError(f"{path}: mined on other training images than this run's")
            packed = saved["hard"]
            if packed.shape != (*shape[:2], (shape[2] + 7) // 8):
                raise ConfigError(f"{path}: holds {packed.shape} packed maps; expected {shape} unpacked")
            return np.unpackbits(packed, axis=-1, count=shape[2]).astype(bool)
    except ConfigError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise ConfigError(f"{path}: unreadable hard-negative maps ({type(exc).__name__}: {exc})") from exc


def _build(config: TrainConfig, size: int | None, encoder_weights: bool = True):
    """The run's architecture for (size, size, 1) inputs (None: any multiple of 32)."""
    from training.models import build_model

    return build_model(
        config.model,
        size,
        None if config.model == "unet" or not encoder_weights else config.encoder_weights,
        base_filters=config.base_filters,
        upsampling=config.upsampling,  # type: ignore[arg-type]
        width=config.width,
        decoder_width=config.decoder_width or None,
        freeze_encoder=config.freeze_encoder,
    )


def _load_init_weights(model, path: str) -> None:
    """Copy every weight of the trained model at ``path`` into ``model`` (same architecture).

    Raises:
        ConfigError: the file holds another architecture.
    """
    from training.models import load_trained

    source = load_trained(path)
    theirs, mine = source.get_weights(), model.get_weights()
    if len(theirs) != len(mine) or any(a.shape != b.shape for a, b in zip(theirs, mine, strict=True)):
        raise ConfigError(f"--init-weights {path}: holds {source.name} with other layers than this run's model")
    model.set_weights(theirs)


def fix_input_size(run_dir: Path, config: TrainConfig, source: Path | None = None) -> bool:
    """Write ``best.keras`` as a (size, size, 1) model when it (or ``source``) takes any input size.

    Patch training saves models for any input side; export, evaluation and the bundle need
    the fixed one. The weights are the same (every layer is convolutional). ``source`` (e.g.
    the run's ``last.keras``) is read instead of ``best.keras`` when given. Returns True when
    ``best.keras`` was written.
    """
    from training.models import load_trained

    model = load_trained(source or run_dir / BEST)
    if model.inputs[0].shape[1] is not None:
        if source is not None:
            atomic_write(run_dir / BEST, lambda p: model.save(p))
            return True
        return False
    fixed = _build(config, config.size, encoder_weights=False)
    fixed.set_weights(model.get_weights())
    compile_model(fixed, config)
    atomic_write(run_dir / BEST, lambda p: fixed.save(p))
    return True


def lesion_dice(model, data, batch: int = 8) -> float:
    """Per-image mean Dice (bcedge.metrics) over the lesion images of ``data``; 0 when none."""
    from bcedge.metrics import evaluate
    from training.evaluate import predict

    pos = data.subset(data.positive)
    if len(pos) == 0:
        return 0.0
    return float(evaluate(list(predict(model, pos.images, batch)), list(pos.masks))["mean"]["dice"])


def finalise_best(run_dir: Path, config: TrainConfig, train_set, val_set) -> dict:
    """Recalibrate best.keras's batch-norm statistics on the training images; keep it if val Dice holds.

    See :mod:`training.batchnorm`. The comparison uses Dice over validation lesion
    images, the checkpoint criterion; the result is recorded in ``state.json``.
    """

    from training.batchnorm import recalibrate
    from training.models import load_trained

    model = load_trained(run_dir / BEST)
    before = lesion_dice(model, val_set, config.batch)
    layers = recalibrate(model, train_set.images, config.batch)
    after = lesion_dice(model, val_set, config.batch) if layers else before
    kept = layers > 0 and after >= before
    if kept:
        atomic_write(run_dir / BEST, lambda p: model.save(p))
    return {"layers": layers, "val_dice_positive_before": before, "val_dice_positive_after": after, "kept": kept}


def backend_name() -> str:
    """KERAS_BACKEND as Keras will see it (without importing Keras)."""
    return os.environ.get("KERAS_BACKEND", "tensorflow")
