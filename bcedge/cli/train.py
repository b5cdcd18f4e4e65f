"""``bcedge train``: a thin wrapper over :mod:`training` (desktop side; evaluation: :mod:`bcedge.cli.evaluate`).

Keras is imported only inside the commands, so the runtime CLI works on a
device without it; there these commands say which extra to install.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bcedge.cli.progress import progress_bar
from bcedge.errors import ConfigError, MissingDependencyError

DEFAULT_CACHE = Path(".bcedge-cache")


def _need_keras() -> None:
    import importlib.util

    if importlib.util.find_spec("keras") is None:
        raise MissingDependencyError("training and evaluation", "train", "keras>=3 (with tensorflow, jax or torch)")


def _load_sets(datasets: tuple[str, ...], root: Path, split: Path, config, cache: Path, options: list[str] | None):
    from bcedge.datasets.registry import parse_options
    from training.data import prepare_split_sets

    with progress_bar(info=True, transient=False) as progress:
        task = progress.add_task("preprocessing", total=None, info="")
        return prepare_split_sets(
            datasets,
            root,
            split,
            config,
            cache,
            options=parse_options(options),
            progress=lambda done, total, reused: progress.update(task, completed=done, total=total),
        )


def train_command(
    model: Annotated[str, typer.Option("--model", help="unet, unet-mobilenetv2 or unet-vgg19.")],
    data: Annotated[str, typer.Option("--data", help="Dataset name(s), comma-separated (see 'bcedge data list').")],
    root: Annotated[Path, typer.Option("--root", help="Data root (e.g. ../shared/data for 'combined').")],
    split: Annotated[Path, typer.Option("--split", help="Split file from 'bcedge data split'.")],
    out: Annotated[Path, typer.Option("--out", help="Run folder (resumed when it holds this run).")],
    size: Annotated[int, typer.Option("--size", min=32, max=2048, help="Model input size.")] = 256,
    epochs: Annotated[int, typer.Option("--epochs", min=1)] = 50,
    batch: Annotated[int, typer.Option("--batch", min=1)] = 8,
    lr: Annotated[float, typer.Option("--lr", min=0.0)] = 1e-3,
    loss: Annotated[
        str,
        typer.Option(
            "--loss",
            help=(
                "bce-dice (default), dice, batch-dice, focal-dice, bce-tversky (misses cost more), "
                "bce-tversky-fp (false positives cost more) or bce-lesion-dice (Dice per lesion "
                "image, so small lesions' outlines count as much as large ones')."
            ),
        ),
    ] = "bce-dice",
    encoder_weights: Annotated[
        str,
        typer.Option(
            "--encoder-weights",
            help="imagenet (download), none, a Keras weights file, or (unet-mobilenetv2, width 1.0) "
            "the ImageNet MobileNetV2 int8 .tflite.",
        ),
    ] = "none",
    base_filters: Annotated[int, typer.Option("--base-filters", min=4, help="Plain UNet first-stage filters.")] = 64,
    upsampling: Annotated[str, typer.Option("--upsampling", help="nearest, bilinear or transpose.")] = "nearest",
    width: Annotated[
        float,
        typer.Option("--width", min=0.05, max=1.0, help="Encoder UNets: decoder width and MobileNetV2 alpha."),
    ] = 1.0,
    patience: Annotated[int, typer.Option("--patience", min=1, help="Early stopping (epochs).")] = 15,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    mixed_precision: Annotated[bool, typer.Option("--mixed-precision", help="float16 compute on GPUs.")] = False,
    time_budget_min: Annotated[
        float | None, typer.Option("--time-budget-min", min=0.1, help="Stop after this long; resume later.")
    ] = None,
    cache: Annotated[Path, typer.Option("--cache", help="Preprocessed-array cache folder.")] = DEFAULT_CACHE,
    export_arrays: Annotated[
        Path | None, typer.Option("--export-arrays", help="Only write the split arrays (.npz) and exit.")
    ] = None,
    option: Annotated[list[str] | None, typer.Option("--option", "-o", help="Reader option KEY=VALUE.")] = None,
    train_on: Annotated[
        str,
        typer.Option("--train-on", help="all, or lesions: train and select on lesion images (the study)."),
    ] = "all",
    fit_on: Annotated[
        str,
        typer.Option(
            "--fit-on",
            help=(
                "train (default), or train+val: the final refit of a recipe chosen on validation "
                "(validation is then monitored but is no validation figure, and best.keras is picked "
                "on fitted images: take the last epoch with training.promote; evaluate and "
                "ablation_v2 refuse to score the run on val)."
            ),
        ),
    ] = "train",
    augment: Annotated[
        str,
        typer.Option(
            "--augment",
            help="Augmentation preset: basic, strong, strong-zoom, strong-aspect, strong-appearance "
            "or none (training/augment.py).",
        ),
    ] = "basic",
    positive_fraction: Annotated[
        float,
        typer.Option(
            "--positive-fraction",
            min=0.0,
            max=1.0,
            help="Share of lesion images among training draws (lesion images are repeated; 0 keeps the natural share).",
        ),
    ] = 0.5,
    epoch_negatives: Annotated[
        int,
        typer.Option("--epoch-negatives", min=0, help="Normal images drawn per epoch (a fresh subset; 0: all)."),
    ] = 0,
    decoder_width: Annotated[
        float,
        typer.Option("--decoder-width", min=0.0, max=1.0, help="Encoder UNets: decoder filters x this (0: --width)."),
    ] = 0.0,
    patch: Annotated[
        int,
        typer.Option(
            "--patch",
            min=0,
            max=2048,
            help="Train on PATCH x PATCH crops of the --size images (lesion-centred for most lesion draws); "
            "validate on whole images. 0: whole images.",
        ),
    ] = 0,
    init_weights: Annotated[
        Path | None,
        typer.Option(
            "--init-weights",
            help="Start from a trained model of the same architecture (a run's best.keras): fine-tuning.",
        ),
    ] = None,
    hard_negatives: Annotated[
        float,
        typer.Option(
            "--hard-negatives",
            min=0.0,
            max=1.0,
            help=(
                "Share of the patches not centred on a lesion that are centred on a false positive of the "
                "--init-weights model on the training images (mined once; needs --patch)."
            ),
        ),
    ] = 0.0,
    paste_lesions: Annotated[
        float,
        typer.Option(
            "--paste-lesions",
            min=0.0,
            max=1.0,
            help=(
                "Share of the lesion-free training draws that get one real training lesion (pixel masks, "
                "contrast views left out) pasted at a random breast position, intensity matched to its surroundings."
            ),
        ),
    ] = 0.0,
    freeze_encoder: Annotated[
        bool,
        typer.Option(
            "--freeze-encoder",
            help="Train the decoder only; the encoder keeps its starting weights (encoder UNets).",
        ),
    ] = False,
) -> None:
    """Train a model on a dataset split; checkpoints every epoch and resumes from --out."""
    _need_keras()
    from bcedge.preprocess import PreprocessConfig
    from training.losses import LOSSES
    from training.models import MODEL_NAMES, check_encoder_weights, check_freeze_encoder
    from training.train import TrainConfig, backend_name, train

    # Check the options before minutes of preprocessing.
    if model not in MODEL_NAMES:
        raise ConfigError(f"unknown model {model!r}; expected one of {', '.join(MODEL_NAMES)}")
    if loss not in LOSSES:
        raise ConfigError(f"unknown loss {loss!r}; expected one of {', '.join(LOSSES)}")
    if upsampling not in ("nearest", "bilinear", "transpose"):
        raise ConfigError(f"unknown upsampling {upsampling!r}; expected nearest, bilinear or transpose")
    from training.run import FIT_ON

    if fit_on not in FIT_ON:
        raise ConfigError(f"--fit-on {fit_on!r}; expected one of {', '.join(FIT_ON)}")
    if train_on not in ("all", "lesions"):
        raise ConfigError(f"--train-on {train_on!r}; expected all or lesions")
    from training.augment import AugmentConfig

    AugmentConfig.preset(augment)  # refuses an unknown preset before any preprocessing
    weights = check_encoder_weights(model, encoder_weights, width)
    weights_sha256 = ""
    if isinstance(weights, Path):
        from bcedge.bundle import sha256_file

        weights_sha256 = sha256_file(weights)

    if patch and (patch % 32 or patch > size):
        raise ConfigError(f"--patch {patch}: expected 0 or a multiple of 32 no larger than --size {size}")
    check_freeze_encoder(model, freeze_encoder)  # before the run folder is made
    if hard_negatives > 0 and (init_weights is None or not patch):
        raise ConfigError(
            "--hard-negatives needs --init-weights (the model whose false positives are mined) and --patch"
        )
    init_sha256 = ""
    if init_weights is not None:
        from bcedge.bundle import sha256_file

        if not init_weights.is_file():
            raise ConfigError(f"--init-weights {init_weights}: no such file")
        init_sha256 = sha256_file(init_weights)

    config = PreprocessConfig(size=size)
    datasets = tuple(d.strip() for d in data.split(",") if d.strip())
    if not datasets:
        raise ConfigError("--data names no dataset")
    sets, meta = _load_sets(datasets, root, split, config, cache, option)
    if export_arrays is not None:
        from training.data import save_arrays

        save_arrays(export_arrays, sets, meta)
        typer.echo(f"wrote {export_arrays}: " + ", ".join(f"{k} {len(v)}" for k, v in sets.items()))
        return
    if train_on == "lesions":
        sets = {k: (v if k == "test" else v.subset(v.positive)) for k, v in sets.items()}
    for name in ("train", "val"):
        if name not in sets or len(sets[name]) == 0:
            raise ConfigError(f"{split}: the split has no {name!r} images; training needs train and val")
    if fit_on != "train":
        from training.data import concat_sets

        sets = {**sets, "train": concat_sets([sets[name] for name in FIT_ON[fit_on]])}
    run = TrainConfig(
        model=model,
        data=datasets,
        root=str(root),
        split=str(split),
        reader_options=tuple(option or ()),
        size=size,
        epochs=epochs,
        batch=batch,
        lr=lr,
        loss=loss,
        encoder_weights=encoder_weights,
        encoder_weights_sha256=weights_sha256,
        base_filters=base_filters,
        upsampling=upsampling,
        width=width,
        patience=patience,
        augment=augment != "none",
        augment_preset=augment,
        positive_fraction=positive_fraction or None,
        epoch_negatives=epoch_negatives,
        decoder_width=decoder_width,
        patch=patch,
        init_weights=str(init_weights or ""),
        init_weights_sha256=init_sha256,
        hard_negatives=hard_negatives,
        paste_lesions=paste_lesions,
        freeze_encoder=freeze_encoder,
        seed=seed,
        mixed_precision=mixed_precision,
        time_budget_s=None if time_budget_min is None else time_budget_min * 60,
        preprocess=meta["preprocess"],
        preprocess_hash=meta["preprocess_hash"],
        fit_on=fit_on,
    )
    typer.echo(
        f"training {model} on {'+'.join(datasets)} (fit on {fit_on}: {len(sets['train'])} images; "
        f"val {len(sets['val'])}{', also fitted' if fit_on != 'train' else ''}) "
        f"with the {backend_name()} backend into {out}"
    )
    with progress_bar(info=True, transient=False) as progress:
        steps = progress.add_task("epoch", total=None, info="")

        def report(kind: str, index: int, logs: dict) -> None:
            if kind == "batch":
                progress.update(steps, completed=index + 1, info=f"loss {logs.get('loss', float('nan')):.4f}")
            else:
                progress.update(
                    steps,
                    description=f"epoch {logs['epoch']}/{epochs}",
                    completed=0,
                    info=f"val Dice (lesion images) {logs.get('val_dice_positive', float('nan')):.4f}",
                )
                progress.console.print(
                    f"epoch {logs['epoch']:3d}  loss {logs.get('loss', 0):.4f}  dice {logs.get('dice', 0):.4f}  "
                    f"val_loss {logs.get('val_loss', 0):.4f}  val_dice_pos {logs.get('val_dice_positive', 0):.4f}  "
                    f"lr {logs['lr']:.2e}  {logs['seconds']:.1f}s"
                )

        state = train(run, out, sets["train"], sets["val"], progress=report)
    typer.echo(
        f"done: {state['epoch']} epochs, best val Dice on lesion images {state['best_val_dice']:.4f}"
        f" at epoch {state['best_epoch']}"
        f"{' (stopped early)' if state.get('stopped_early') else ''}; model in {out / 'best.keras'}"
    )
