"""Keras data pipeline over preprocessed arrays (from :mod:`bcedge.datasets.cache`).

The arrays come out of the one preprocessing (:func:`bcedge.preprocess.preprocess`),
so what the model trains on is exactly what the runtime feeds it. This module
only batches, oversamples lesion-positive images and augments.

Determinism: the order of epoch ``e`` and the augmentation of batch ``i`` are
drawn from generators seeded with ``(seed, e)`` and ``(seed, e, i)``, so a run
resumed at epoch ``e`` sees the same batches as an uninterrupted one, whatever
the number of data-loading workers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras
import numpy as np

from training.augment import AugmentConfig, augment
from training.paste import BREAST_LEVEL, LesionBank, paste_lesion


@dataclass(frozen=True)
class ArraySet:
    """Preprocessed images and masks of one split.

    Attributes:
        images: (N, S, S, 1) float32 in [0, 1].
        masks: (N, S, S, 1) uint8 in {0, 1}.
        ids: N sample ids.
        mask_kinds: N of ``pixel``/``circle``/``none``.
        sources: N dataset names.
    """

    images: np.ndarray
    masks: np.ndarray
    ids: tuple[str, ...]
    mask_kinds: tuple[str, ...]
    sources: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def positive(self) -> np.ndarray:
        """(N,) bool: images whose mask holds a lesion."""
        return self.masks.reshape(len(self), -1).any(axis=1)

    def subset(self, keep: np.ndarray) -> ArraySet:
        """The images where ``keep`` (bool (N,) or indices) selects."""
        idx = np.flatnonzero(keep) if np.asarray(keep).dtype == bool else np.asarray(keep)
        return ArraySet(
            self.images[idx],
            self.masks[idx],
            tuple(self.ids[i] for i in idx),
            tuple(self.mask_kinds[i] for i in idx),
            tuple(self.sources[i] for i in idx),
        )


def epoch_order(
    n: int,
    positive: np.ndarray,
    rng: np.random.Generator,
    positive_fraction: float | None,
    negatives: int = 0,
) -> np.ndarray:
    """Shuffled indices of one epoch, oversampling positives to ``positive_fraction``.

    Args:
        n: number of images.
        positive: (n,) bool, lesion present.
        rng: seeded generator.
        positive_fraction: target share of lesion-positive draws per epoch (e.g. 0.5);
            None keeps the natural share. Positives are repeated, never dropped.
        negatives: when > 0 and fewer than the negatives available, draw only this many
            negatives (a fresh random subset each epoch): every normal image is still seen
            over the run, but an epoch is not dominated by them.
    """
    idx = np.arange(n)
    pos = idx[positive]
    neg = idx[~positive]
    if 0 < negatives < neg.size:
        idx = np.sort(np.concatenate([pos, rng.choice(neg, size=negatives, replace=False)]))
        n = idx.size
    if positive_fraction and 0 < pos.size < n:
        neg_count = n - pos.size  # n counts the drawn negatives
        want = math.ceil(positive_fraction * neg_count / max(1e-9, 1.0 - positive_fraction))
        if want > pos.size:
            extra = rng.choice(pos, size=want - pos.size, replace=True)
            idx = np.concatenate([idx, extra])
    return rng.permutation(idx)


#: Share of lesion-image draws whose patch is centred (with jitter) on a lesion pixel; the
#: rest, and every normal image, get a patch centred on a random breast pixel, so dense
#: tissue is seen as a negative at full resolution.
LESION_CENTRED = 0.7


#: Value marking a mined false-positive pixel in a mask while it is augmented and cropped
#: (:class:`SegmentationData` with ``hard``); lesion pixels are 1. Nearest-neighbour warps and
#: flips carry it; the mask handed to the model is ``== 1``.
HARD_VALUE = 2

#: Fourth seed word of the lesion-paste generator (:class:`SegmentationData` with ``paste``).
PASTE_STREAM = 7


def crop_patch(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, patch: int, hard_share: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """A ``patch`` x ``patch`` window of an (S, S, 1) image and its mask.

    The centre is a random lesion pixel for :data:`LESION_CENTRED` of lesion images, else a
    random breast pixel (the image centre when there is none), moved by up to a quarter
    patch so a lesion is not always in the middle, then clamped inside the image. With
    ``hard_share`` > 0, that share of the patches not centred on a lesion is centred on a pixel
    the mask marks :data:`HARD_VALUE` (a false positive of an earlier model) when it has one.
    """
    s = image.shape[0]
    if patch <= 0 or patch >= s:
        return image, mask
    points = np.argwhere(mask[..., 0] == 1) if rng.random() < LESION_CENTRED else np.empty((0, 2))
    # The extra draw only when asked for, so runs without hard negatives keep their patches.
    if points.size == 0 and hard_share > 0 and rng.random() < hard_share:
        points = np.argwhere(mask[..., 0] == HARD_VALUE)
    if points.size == 0:
        points = np.argwhere(image[..., 0] > BREAST_LEVEL)
    cy, cx = points[rng.integers(len(points))] if len(points) else (s // 2, s // 2)
    jitter = rng.integers(-(patch // 4), patch // 4 + 1, size=2)
    y0 = int(np.clip(cy + jitter[0] - patch // 2, 0, s - patch))
    x0 = int(np.clip(cx + jitter[1] - patch // 2, 0, s - patch))
    return image[y0 : y0 + patch, x0 : x0 + patch], mask[y0 : y0 + patch, x0 : x0 + patch]


class SegmentationData(keras.utils.PyDataset):
    """Batches of (image, mask) for ``model.fit``.

    Args:
        data: the split's arrays.
        batch_size: images per batch.
        seed: base seed.
        augment_config: augmentation ranges, or None for none (validation).
        positive_fraction: oversampling target (training), or None.
        shuffle: reshuffle every epoch (training).
        epoch: first epoch (set when resuming).
        negatives: normal images drawn per epoch (see :func:`epoch_order`).
        patch: crop each draw to ``patch`` x ``patch`` after augmentation (:func:`crop_patch`); 0: whole images.
        hard: (N, S, S) bool false-positive pixels of an earlier model (:func:`mine_hard_negatives`), or None.
        hard_share: share of the non-lesion-centred patches centred on one of them (needs ``patch``).
        paste: lesions to paste onto lesion-free draws (:mod:`training.paste`), or None.
        paste_share: share of the lesion-free draws that get one pasted lesion (before augmentation).
    """

    def __init__(
        self,
        data: ArraySet,
        batch_size: int,
        *,
        seed: int = 0,
        augment_config: AugmentConfig | None = None,
        positive_fraction: float | None = None,
        shuffle: bool = False,
        epoch: int = 0,
        negatives: int = 0,
        patch: int = 0,
        hard: np.ndarray | None = None,
        hard_share: float = 0.0,
        paste: LesionBank | None = None,
        paste_share: float = 0.0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if len(data) == 0:
            raise ValueError("no images in this split")
        self.data = data
        self.batch_size = batch_size
        self.seed = seed
        self.augment_config = augment_config
        self.positive_fraction = positive_fraction
        self.negatives = negatives
        self.patch = patch
        if hard is not None and hard.shape != data.masks.shape[:3]:
            raise ValueError(f"hard-negative maps {hard.shape} do not match the masks {data.masks.shape[:3]}")
        self.hard = hard if hard_share > 0 and patch else None
        self.hard_share = hard_share
        self.paste = paste if paste_share > 0 and paste is not None and len(paste) else None
        self.paste_share = paste_share
        self.shuffle = shuffle
        self.epoch = epoch
        self._order = self._make_order()

    def order_at(self, epoch: int) -> np.ndarray:
        """Indices drawn in ``epoch`` (a pure function of seed and epoch)."""
        if not self.shuffle:
            return np.arange(len(self.data))
        rng = np.random.default_rng([self.seed, epoch])
        return epoch_order(len(self.data), self.data.positive, rng, self.positive_fraction, self.negatives)

    def _make_order(self) -> np.ndarray:
        return self.order_at(self.epoch)

    def __len__(self) -> int:
        return math.ceil(len(self._order) / self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        sel = self._order[index * self.batch_size : (index + 1) * self.batch_size]
        images = self.data.images[sel].astype(np.float32, copy=True)
        masks = self.data.masks[sel].astype(np.float32, copy=True)
        if self.hard is not None:
            masks[..., 0][self.hard[sel] & (masks[..., 0] == 0)] = HARD_VALUE
        if self.paste is not None:
            # Its own stream, so the augmentation and patches of runs without pasting are unchanged.
            paste_rng = np.random.default_rng([self.seed, self.epoch, index, PASTE_STREAM])
            for k in range(len(sel)):
                if not (masks[k] == 1).any() and paste_rng.random() < self.paste_share:
                    images[k], masks[k], _ = paste_lesion(images[k], masks[k], paste_rng, self.paste)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        if self.augment_config is not None:
            for k in range(len(sel)):
                images[k], masks[k] = augment(images[k], masks[k], rng, self.augment_config)
        if self.patch and self.patch < images.shape[1]:
            share = self.hard_share if self.hard is not None else 0.0
            pairs = [crop_patch(images[k], masks[k], rng, self.patch, share) for k in range(len(sel))]
            images = np.stack([p[0] for p in pairs])
            masks = np.stack([p[1] for p in pairs])
        if self.hard is not None:
            masks = (masks == 1).astype(np.float32)
        return images, masks

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self._order = self._make_order()


def mine_hard_negatives(model, data: ArraySet, threshold: float = 0.5, batch: int = 8) -> np.ndarray:
    """Pixels ``model`` calls lesion (probability >= ``threshold``) where the mask has none, inside the breast.

    Args:
        model: a Keras segmentation model taking (B, S, S, 1) float32 in [0, 1].
        data: the training arrays (unaugmented).

    Returns:
        (N, S, S) bool: the false-positive pixels of each image, the places a patch centred on
        one (``SegmentationData(hard=...)``) teaches the model to leave alone: dense tissue it
        called a mass, on normal images and beside the lesion on lesion images.
    """
    out = np.zeros(data.masks.shape[:3], bool)
    for start in range(0, len(data), batch):
        prob = np.asarray(model.predict(data.images[start : start + batch], verbose=0))[..., 0]
        images = data.images[start : start + batch, ..., 0]
        masks = data.masks[start : start + batch, ..., 0]
        out[start : start + batch] = (prob >= threshold) & (masks == 0) & (images > BREAST_LEVEL)
    return out


def concat_sets(parts: list[ArraySet]) -> ArraySet:
    """One :class:`ArraySet` holding ``parts`` in order (e.g. train then val for a refit).

    Raises:
        ValueError: no parts, or parts of different image sizes.
    """
    if not parts:
        raise ValueError("no sets to join")
    if len({p.images.shape[1:] for p in parts}) > 1:
        raise ValueError("sets of different image sizes: " + ", ".join(str(p.images.shape[1:]) for p in parts))
    return ArraySet(
        np.concatenate([p.images for p in parts]),
        np.concatenate([p.masks for p in parts]),
        tuple(i for p in parts for i in p.ids),
        tuple(k for p in parts for k in p.mask_kinds),
        tuple(s for p in parts for s in p.sources),
    )


def save_arrays(path, sets: dict[str, ArraySet], meta: dict) -> None:
    """Write split arrays to one compressed ``.npz`` (atomically) for training elsewhere.

    Images are stored as uint16 (``round(x * 65535)``: 1.5e-5 resolution, half the
    bytes of float32) so a GPU machine without the source data can train on exactly
    the preprocessed tensors. ``meta`` (preprocessing config, hash, split file) is
    stored as JSON.
    """
    import io
    import json

    from bcedge.imageio import atomic_write_bytes

    payload: dict[str, np.ndarray] = {"meta": np.frombuffer(json.dumps(meta).encode(), np.uint8)}
    for name, s in sets.items():
        payload[f"{name}/images"] = np.rint(np.clip(s.images, 0, 1) * 65535).astype(np.uint16)
        payload[f"{name}/masks"] = s.masks.astype(np.uint8)
        payload[f"{name}/ids"] = np.asarray(s.ids)
        payload[f"{name}/mask_kinds"] = np.asarray(s.mask_kinds)
        payload[f"{name}/sources"] = np.asarray(s.sources)
    buf = io.BytesIO()
    np.savez_compressed(buf, **payload)
    atomic_write_bytes(path, buf.getvalue())


def load_arrays(path) -> tuple[dict[str, ArraySet], dict]:
    """Read what :func:`save_arrays` wrote: ``({split: ArraySet}, meta)``."""
    import json

    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(bytes(z["meta"]).decode())
        names = sorted({k.split("/")[0] for k in z.files if "/" in k})
        sets = {
            n: ArraySet(
                (z[f"{n}/images"].astype(np.float32) / np.float32(65535)),
                z[f"{n}/masks"],
                tuple(str(v) for v in z[f"{n}/ids"]),
                tuple(str(v) for v in z[f"{n}/mask_kinds"]),
                tuple(str(v) for v in z[f"{n}/sources"]),
            )
            for n in names
        }
    return sets, meta


def prepare_split_sets(
    datasets: tuple[str, ...],
    root,
    split_path,
    config,
    cache_dir,
    *,
    options: dict | None = None,
    progress=None,
) -> tuple[dict[str, ArraySet], dict]:
    """Preprocess (through the cache) every split of a split file into arrays.

    Args:
        datasets: registry names whose samples together make the split's dataset.
        root: data root passed to each reader.
        split_path: the split JSON (``bcedge data split``).
        config: :class:`bcedge.preprocess.PreprocessConfig`.
        cache_dir: preprocessed-array cache folder.
        options: reader options (``-o KEY=VALUE``).
        progress: ``progress(done, total, reused)`` per sample (see ``bcedge.datasets.cache.prepare``).

    Returns:
        ``({"train"|"val"|"test": ArraySet}, meta)``; samples whose lesion has no
        location (``Sample.lesion_unlocated``) are left out, since their empty mask
        is not ground truth. ``meta`` records datasets, split file, preprocessing
        config and hash, and the ids left out.
    """
    from bcedge.datasets import open_dataset
    from bcedge.datasets.cache import prepare
    from bcedge.datasets.splits import filter_samples, load_split

    split = load_split(split_path)
    samples = [s for name in datasets for s in open_dataset(name, root, **(options or {})).samples()]
    chosen: dict[str, list] = {}
    dropped: list[str] = []
    for name in split.splits:
        # Reader options may narrow the dataset the split was made for (e.g. no contrast views).
        members = filter_samples(samples, split, name, strict=not options)
        dropped += [s.id for s in members if s.lesion_unlocated]
        chosen[name] = [s for s in members if not s.lesion_unlocated]
    # One prepare over every split keeps one complete cache index for these datasets.
    everything = [s for members in chosen.values() for s in members]
    cache = prepare(everything, config, cache_dir, dataset="+".join(datasets), progress=progress)
    sets = {name: ArraySet(**cache.arrays([s.id for s in members])) for name, members in chosen.items() if members}
    meta = {
        "datasets": list(datasets),
        "split": str(split_path),
        "split_dataset": split.dataset,
        "preprocess": config.to_dict(),
        "preprocess_hash": config.hash(),
        "left_out_unlocated": sorted(dropped),
    }
    return sets, meta
