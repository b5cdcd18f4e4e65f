"""The on-device acceptance check: does an artifact agree with the reference model *on this machine*?

The export gate measured every artifact against the Keras reference on the exporting machine.
That says nothing about the next CPU: a full-range INT8 model that is right on an AVX-512 VNNI
CPU gave masks with Dice 0.001-0.48 against FP32 on an AVX2 one (issue #14, integer-multiply
saturation). So a bundle carries a few preprocessed validation inputs with the reference
model's probability maps (``acceptance.npz``, recorded in the manifest's ``acceptance`` entry
with its SHA-256), and before an artifact is first used on a machine it is run on them
(:mod:`bcedge.choice` caches the verdict per bundle and machine).

The file (``np.savez_compressed``, no pickles)::

    images      (N, S, S) uint8    preprocessed inputs, quantised: x = images / 255
    reference   (N, S, S) uint8    the reference's probabilities on exactly those inputs,
                                   p = reference / 255 (rounding error <= 1/510)
    version     ()        int      ACCEPTANCE_VERSION

The inputs are quantised *before* the reference runs on them, so artifact and reference see the
same float32 tensor. 8 bits for both keep four 512 px inputs at ~0.8 MB (zlib; the CLAHE-enhanced
inputs are most of it) and four 256 px ones at ~0.15 MB.

The manifest entry also holds a **baseline** per artifact: its pooled mask Dice and mean
``|p - p_reference|`` on these inputs, measured on the exporting machine (``bcedge export``, or
``python -m export.acceptance`` for an older bundle). A quantised artifact rarely reproduces the
reference's masks exactly: the shipped 512 px model's dynamic-range artifact, gated at export
(-0.003 Dice against the ground truth), agrees with the Keras masks at Dice 0.961 on its four
inputs on the very machine it was exported on. What the check must catch is a machine that
computes the *same* artifact differently (a full-range INT8 at Dice 0.001-0.48 on AVX2 while right
on AVX-512 VNNI), so it holds each artifact to what it did at export. An artifact **agrees** when,
over the N images,

* the mask Dice at the bundle threshold (``p >= threshold``; pooled: twice the summed
  intersection over the summed areas, so an image with a small mask cannot fail it alone)
  is at least :data:`MIN_DICE` (0.98), or, for an artifact whose baseline was already below 0.98,
  at least its baseline minus :data:`DICE_MARGIN` (0.02), never below :data:`DICE_FLOOR` (0.90); and
* the mean ``|p - p_reference|`` over every pixel is at most the baseline's mean (without a
  baseline: the reference's storage error, 1/510) plus the export output tolerance of the
  artifact's precision (:data:`bcedge.formats.PRECISION_SPECS` ``output_tolerance[1]``).

The per-pixel maximum is reported but does not decide: near a steep sigmoid edge one pixel of
a correct quantised model may move by a tenth, and by half on the demo model's INT8 artifact.

NumPy and the standard library only (the runtime imports this when it chooses an artifact).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from bcedge.errors import BundleError

if TYPE_CHECKING:
    from bcedge.bundle import Bundle

#: File name of the acceptance data inside a bundle.
ACCEPTANCE_FILE = "acceptance.npz"
#: Layout version of the ``.npz`` (its ``version`` array).
ACCEPTANCE_VERSION = 1
#: Inputs are stored as ``round(x * 255)``.
INPUT_LEVELS = 255
#: Reference probabilities are stored as ``round(p * 255)``.
PROBABILITY_LEVELS = 255
#: Smallest pooled mask Dice against the reference an artifact must reach (see the module doc for
#: an artifact whose export baseline is lower).
MIN_DICE = 0.98
#: How far below its export baseline an artifact's Dice may fall.
DICE_MARGIN = 0.02
#: The Dice no artifact may fall below, whatever its baseline.
DICE_FLOOR = 0.90
#: How many inputs ``bcedge export`` stores by default.
DEFAULT_N = 4
#: Largest acceptance file read (a real one is a few hundred KB; this bounds a hostile one).
MAX_BYTES = 16 << 20
#: Largest uncompressed content (four 1024 px inputs and references are 8 MB).
MAX_INFLATED_BYTES = 64 << 20


@dataclass(frozen=True)
class AcceptanceData:
    """The decoded acceptance set of a bundle.

    Attributes:
        images: (N, S, S, 1) float32 in [0, 1], multiples of 1/255: the model inputs.
        reference: (N, S, S, 1) float32 in [0, 1]: the reference model's probabilities on them.
    """

    images: np.ndarray
    reference: np.ndarray

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass(frozen=True)
class Verdict:
    """What the acceptance check found for one artifact (JSON-ready through :meth:`to_dict`).

    Attributes:
        status: ``passed`` | ``refused``.
        dice: pooled mask Dice against the reference at ``threshold``.
        mean_abs: mean ``|p - p_reference|`` over every pixel of every image.
        max_abs: largest ``|p - p_reference|`` (reported only).
        min_dice: the Dice required (:data:`MIN_DICE`, or lower for a lower export baseline).
        mean_tolerance: the mean difference allowed (baseline or storage error + the precision's
            output tolerance).
        threshold: probability threshold of the masks (the bundle's).
        n_images: how many inputs were compared.
    """

    status: str
    dice: float
    mean_abs: float
    max_abs: float
    min_dice: float
    mean_tolerance: float
    threshold: float
    n_images: int
    baseline: dict[str, float] | None = None

    @property
    def passed(self) -> bool:
        """True when the artifact agrees with the reference."""
        return self.status == "passed"

    def disagreement(self) -> str:
        """One phrase naming what disagrees, e.g. ``mask Dice 0.412 < 0.98 against the reference``."""
        parts = []
        if not self.dice >= self.min_dice:
            parts.append(f"mask Dice {self.dice:.3f} < {self.min_dice:.3g} against the reference")
        if not self.mean_abs <= self.mean_tolerance:
            parts.append(f"mean |p - p_ref| {self.mean_abs:.4f} > tolerance {self.mean_tolerance:.4g}")
        return "; ".join(parts) or f"mask Dice {self.dice:.3f}, mean |p - p_ref| {self.mean_abs:.4f}"

    def to_dict(self) -> dict[str, Any]:
        """Every field, rounded for reports."""
        out = asdict(self)
        for key in ("dice", "mean_abs", "max_abs", "min_dice", "mean_tolerance"):
            out[key] = round(float(out[key]), 6)
        return out


def quantise_inputs(images: np.ndarray) -> np.ndarray:
    """(N, S, S, 1) float in [0, 1] -> the same shape float32 on the 1/255 grid the file stores.

    The reference must run on these (not the originals) so that both sides see the same tensor.
    """
    return (np.rint(np.clip(images, 0.0, 1.0) * INPUT_LEVELS) / INPUT_LEVELS).astype(np.float32)


def encode(images: np.ndarray, reference: np.ndarray) -> bytes:
    """The ``acceptance.npz`` bytes.

    Args:
        images: (N, S, S, 1) float32 in [0, 1], already :func:`quantise_inputs`-ed.
        reference: (N, S, S, 1) float32 probabilities of the reference on ``images``.
    """
    if images.shape != reference.shape or images.ndim != 4 or images.shape[-1] != 1 or len(images) < 1:
        raise ValueError(f"images {images.shape} and reference {reference.shape}: expected equal (N, S, S, 1)")
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        images=np.rint(np.clip(images[..., 0], 0, 1) * INPUT_LEVELS).astype(np.uint8),
        reference=np.rint(np.clip(reference[..., 0], 0, 1) * PROBABILITY_LEVELS).astype(np.uint8),
        version=np.array(ACCEPTANCE_VERSION),
    )
    return buf.getvalue()


def decode(data: bytes, size: int, where: str) -> AcceptanceData:
    """Parse ``acceptance.npz`` bytes for a model of side ``size``.

    Raises:
        BundleError: not an npz of the expected arrays, dtypes and shapes (message names ``where``).
    """
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            # A compressed member may inflate a thousandfold: check the sizes the zip declares first.
            inflated = sum(info.file_size for info in npz.zip.infolist())
            if inflated > MAX_INFLATED_BYTES:
                raise BundleError(
                    f"{where} inflates to {inflated} bytes; an acceptance file is at most {MAX_INFLATED_BYTES}"
                )
            version = int(npz["version"]) if "version" in npz.files else None
            images, reference = npz["images"], npz["reference"]
    except BundleError:
        raise
    except Exception as exc:  # zipfile, zlib, ValueError, KeyError: all mean a damaged or foreign file
        raise BundleError(f"{where} is not a readable acceptance file ({type(exc).__name__}: {exc})") from exc
    if version != ACCEPTANCE_VERSION:
        raise BundleError(f"{where}: acceptance version {version!r}; this bcedge reads {ACCEPTANCE_VERSION}")
    expected = (images.shape[0], size, size)
    if (
        images.dtype != np.uint8
        or reference.dtype != np.uint8
        or images.ndim != 3
        or images.shape[0] < 1
        or images.shape != expected
        or reference.shape != expected
    ):
        raise BundleError(
            f"{where}: images {images.dtype}{list(images.shape)} and reference {reference.dtype}"
            f"{list(reference.shape)}; expected uint8 arrays of shape [N, {size}, {size}]"
        )
    return AcceptanceData(
        images=(images.astype(np.float32) / INPUT_LEVELS)[..., None],
        reference=(reference.astype(np.float32) / PROBABILITY_LEVELS)[..., None],
    )


def record_for(data: bytes, **info: Any) -> dict[str, Any]:
    """The manifest's ``acceptance`` entry for the file bytes ``data`` (``info``: source, ids, reference...)."""
    return {
        "file": ACCEPTANCE_FILE,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size_bytes": len(data),
        "min_dice": MIN_DICE,
        "input_levels": INPUT_LEVELS,
        "probability_levels": PROBABILITY_LEVELS,
        **info,
    }


def load(bundle: Bundle) -> AcceptanceData | None:
    """The bundle's acceptance data, its bytes checked against the manifest; None when it has none.

    Raises:
        BundleError: the file is missing, too large, tampered with (size or SHA-256) or malformed.
    """
    entry = bundle.manifest.acceptance
    if not entry:
        return None
    path = bundle.dir / entry["file"]
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_BYTES + 1)
    except OSError as exc:
        raise BundleError(
            f"bundle {bundle.dir}: cannot read its acceptance data {path} ({exc.strerror or exc})"
        ) from exc
    if len(data) > MAX_BYTES:
        raise BundleError(f"{path} is larger than {MAX_BYTES} bytes; not an acceptance file")
    digest = hashlib.sha256(data).hexdigest()
    if len(data) != entry["size_bytes"] or digest != entry["sha256"]:
        raise BundleError(
            f"{path} has {len(data)} bytes, SHA-256 {digest[:12]}... but the manifest records "
            f"{entry['size_bytes']} bytes, {entry['sha256'][:12]}...: tampered with or truncated (re-copy the bundle)"
        )
    return decode(data, bundle.input_size, str(path))


def agreement(probs: np.ndarray, data: AcceptanceData, threshold: float) -> tuple[float, float, float]:
    """``(pooled mask Dice, mean |p - p_ref|, max |p - p_ref|)`` of ``probs`` (N, S, S, 1) against the reference."""
    probs = np.asarray(probs, dtype=np.float32).reshape(data.reference.shape)
    diff = np.abs(probs - data.reference)
    mask, ref = probs >= threshold, data.reference >= threshold
    total = int(mask.sum()) + int(ref.sum())
    # Both empty everywhere: the masks agree (Dice 1), as bcedge.metrics counts an empty pair.
    dice = 1.0 if total == 0 else 2.0 * int(np.logical_and(mask, ref).sum()) / total
    return float(dice), float(diff.mean()), float(diff.max())


def baseline_of(entry: dict[str, Any] | None, file: str, sha256: str) -> dict[str, float] | None:
    """The export baseline ``{"dice", "mean_abs"}`` of artifact ``file`` in a manifest ``acceptance`` entry,
    or None when there is none for these bytes (or it is malformed: then the plain limits apply)."""
    try:
        item = (entry or {}).get("baseline", {}).get(file)
        if not item or item.get("sha256") != sha256:
            return None
        dice, mean = float(item["dice"]), float(item["mean_abs"])
    except (AttributeError, KeyError, TypeError, ValueError):
        return None
    if not (0.0 <= dice <= 1.0 and 0.0 <= mean <= 1.0):
        return None
    return {"dice": dice, "mean_abs": mean}


def compare(
    probs: np.ndarray,
    data: AcceptanceData,
    *,
    threshold: float,
    output_tolerance: tuple[float, float],
    baseline: dict[str, float] | None = None,
) -> Verdict:
    """Judge an artifact's probabilities on ``data.images`` against the reference (rule: module doc).

    Args:
        probs: (N, S, S, 1) float32 probabilities of the artifact on ``data.images``.
        data: the acceptance set.
        threshold: the bundle's probability threshold.
        output_tolerance: ``(max, mean)`` of the artifact's precision
            (:attr:`bcedge.formats.ArtifactKind.output_tolerance`); only the mean decides.
        baseline: the artifact's agreement on the exporting machine (:func:`baseline_of`), or None.
    """
    dice, mean_abs, max_abs = agreement(probs, data, threshold)
    if baseline is None:
        min_dice, mean_tolerance = MIN_DICE, 0.5 / PROBABILITY_LEVELS + float(output_tolerance[1])
    else:
        # The 0.98 rule for every artifact that met it at export; the others may not lose more than the margin.
        low = baseline["dice"] < MIN_DICE
        min_dice = max(DICE_FLOOR, baseline["dice"] - DICE_MARGIN) if low else MIN_DICE
        mean_tolerance = baseline["mean_abs"] + float(output_tolerance[1])
    ok = dice >= min_dice and mean_abs <= mean_tolerance
    return Verdict(
        status="passed" if ok else "refused",
        dice=dice,
        mean_abs=mean_abs,
        max_abs=max_abs,
        min_dice=min_dice,
        mean_tolerance=mean_tolerance,
        threshold=float(threshold),
        n_images=len(data),
        baseline=baseline,
    )


__all__ = [
    "ACCEPTANCE_FILE",
    "DEFAULT_N",
    "DICE_FLOOR",
    "DICE_MARGIN",
    "MIN_DICE",
    "AcceptanceData",
    "Verdict",
    "agreement",
    "baseline_of",
    "compare",
    "decode",
    "encode",
    "load",
    "quantise_inputs",
    "record_for",
]
