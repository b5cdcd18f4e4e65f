"""CDD-CESM reader (Categorized Digital Database for Contrast-Enhanced Spectral Mammography).

File names follow ``[flipped_]P<patient>_<L|R>_<DM|CM>_<CC|MLO>.<ext>``: ``DM`` is the
low-energy image (it looks like a standard digital mammogram), ``CM`` the recombined
(subtracted) contrast image. ``kind`` picks one (``DM`` by default) or ``both``.

Layouts read (the first that matches ROOT):

``sets``
    ``ROOT/<set>/images/*.jpg`` + ``ROOT/<set>/masks/<same stem>.png|.jpg`` for each
    sub-folder holding ``images/`` (``setA``, ``setB`` in the shared data), or
    ``ROOT/images`` + ``ROOT/masks`` directly. Every image must have a mask (these
    sets contain lesion images only); a missing mask is an error.

``tcia``
    The TCIA release: images anywhere under ROOT (e.g. ``Low energy images of CDD-CESM/``,
    ``Subtracted images of CDD-CESM/``) without a ``flipped_`` prefix, plus, optionally,

    * a mask folder (``mask_dir``, default ``ROOT/masks`` when present) with ``<stem>.png``
      (any mask format; several per image as ``<stem>_1.png``, ``<stem>_2.png``, ...);
    * the hand-drawn segmentation CSV of the release (``Radiology_hand_drawn_segmentations*.csv``:
      VGG Image Annotator export with ``#filename``, ``region_shape_attributes``). Its polygons,
      ellipses and circles are drawn into PNG masks in ``render_dir`` (default
      ``ROOT/.bcedge-masks``; point annotations have no extent and are ignored);
    * the annotation table (``Radiology_manual_annotations`` sheet ``all`` **exported as CSV**,
      columns ``Image_name`` and ``Pathology Classification/ Follow up``): pathology per image.
      An image labelled Normal has an empty mask; an image labelled Benign/Malignant without
      any segmentation is flagged :attr:`Sample.lesion_unlocated`.

Pathology from mask colour (``sets``): a pixel is lesion when its largest channel exceeds
127 (anti-aliased PNG edges and lossy JPEG masks alike). Lesion pixels that are red
(R > 127 >= G) count as malignant, green (G > 127 >= R) as benign; the majority
colour counts when it covers at least 5 % of the lesion pixels (less is anti-aliasing or
JPEG noise), and malignant wins when both count (a mask with two lesions). White/grey
masks (``setB``) carry no pathology: ``None``.

Copies of a view (``flipped_``, ``mirrored_``). The source published some views more
than once. Compared pixel by pixel on the shared data (``cdd-cesm-extra`` holds views
with two copies): ``flipped_X`` is ``X`` turned **upside down** (vertical flip: mean
absolute difference 0.0 after a vertical flip) and ``mirrored_X`` is ``X`` mirrored
**left-right**. Each view is counted once, as ``P<id>_<L|R>_<kind>_<view>``: the reader
keeps one copy (the unprefixed file, else ``flipped_``, else ``mirrored_``; across
``roots``, the first root that has the view) and, with ``restore_orientation`` (default),
undoes the source's flip on load (:attr:`Sample.undo`), so every view reads in its
acquired orientation. In that orientation the chest wall lies on the edge the file-name
laterality names (standard hanging; checked on the 142 files of the shared data by the
image's own side detection: 113 of the 114 unprefixed and ``flipped_`` files agree, one
unprefixed CM view disagrees, and all 28 ``mirrored_`` files show the other side, as a
mirror should), so the file-name laterality is ``Sample.laterality``. ``extra`` records the copy kept
(``copy``), the others (``other_copies``) and ``name_laterality``.
Without ``restore_orientation`` (the reader of session 1, kept to reproduce the
``combined`` recipe's figures) files are read as stored and only ``flipped_`` files
(whose left-right orientation is untouched) trust the file-name laterality.
For TCIA originals (``tcia`` layout) ``Sample.laterality`` is None by default and
preprocessing's image-based side detection decides; ``trust_laterality=True`` forces
the file-name value. Images are resized copies of unknown pixel spacing: no mm areas.

Mask clean-up: ``mask_rule="skin-line-v1"`` applies :mod:`bcedge.datasets.mask_rules`
(drops components that trace the skin line, and specks); a view whose mask is left
empty is flagged ``lesion_unlocated`` (a lesion without usable location).
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Literal

import numpy as np

from bcedge.datasets._files import IMAGE_SUFFIXES, MASK_SUFFIXES, files_with_suffix, image_size, natural_key
from bcedge.datasets._files import read_colour as _read_colour
from bcedge.datasets.base import Sample
from bcedge.errors import ConfigError, DatasetError

NAME = re.compile(
    r"^(?P<copy>flipped_|mirrored_)?P(?P<patient>\d+)_(?P<lat>[LR])_(?P<kind>DM|CM)_(?P<view>CC|MLO)$", re.I
)
Kind = Literal["DM", "CM", "both"]
#: Share of lesion pixels that must be red for a two-colour mask to count as malignant.
MALIGNANT_SHARE = 0.05


def parse_name(stem: str) -> dict[str, str] | None:
    """Fields of a CDD-CESM file stem, or None when it does not follow the naming.

    ``copy`` is ``flipped``, ``mirrored`` or ``""`` (the source's own copies of a view).

    >>> parse_name("flipped_P108_L_DM_CC")["patient"]
    '108'
    >>> parse_name("mirrored_P119_L_DM_MLO")["copy"]
    'mirrored'
    """
    match = NAME.match(stem)
    if not match:
        return None
    fields = match.groupdict()
    copy = (fields.pop("copy") or "").lower().rstrip("_")
    fields["copy"] = copy
    fields["flipped"] = "true" if copy == "flipped" else "false"
    fields["lat"] = fields["lat"].upper()
    fields["kind"] = fields["kind"].upper()
    fields["view"] = fields["view"].upper()
    return fields


def mask_colour_pathology(mask_path: Path) -> tuple[str | None, str]:
    """Pathology read from a mask's colour, and the colours seen.

    Returns:
        (``malignant``/``benign``/None, colours) where colours is ``red``, ``green``,
        ``red+green``, ``grey`` or ``empty``.
    """
    img = _read_colour(mask_path)
    top = np.iinfo(img.dtype).max // 2 if np.issubdtype(img.dtype, np.integer) else 0.5
    if img.ndim == 2 or img.shape[2] < 3:
        return None, "grey" if img.max() > top else "empty"
    bgr = img[:, :, :3]
    blue, green, red = (bgr[:, :, i] > top for i in range(3))
    lesion = blue | green | red
    total = int(lesion.sum())
    if total == 0:
        return None, "empty"
    # Colours below MALIGNANT_SHARE of the lesion are compression noise or anti-aliasing, not a label.
    floor = MALIGNANT_SHARE * total
    n_red = int((red & ~green).sum())
    n_green = int((green & ~red).sum())
    colours = "+".join(c for c, n in (("red", n_red), ("green", n_green)) if n >= floor)
    if not colours:
        return None, "grey"
    return ("malignant" if n_red >= floor else "benign"), colours


class CddCesm:
    """Reader of CDD-CESM image/mask sets and of the TCIA release.

    Args:
        root: the dataset folder (see the module doc for the layouts).
        kind: ``DM`` (low-energy, default), ``CM`` (contrast) or ``both``.
        layout: ``auto`` (default), ``sets`` or ``tcia``.
        trust_laterality: use the file-name laterality as ``Sample.laterality``; default
            (None): see the module doc.
        roots: more folders of the ``sets`` layout read together with ``root`` (e.g.
            ``cdd-cesm-extra``); a view in several is taken from the first.
        restore_orientation: undo the source's flips (module doc); False reads files as stored.
        mask_rule: a rule of :mod:`bcedge.datasets.mask_rules` (``""``: masks as published).
        mask_dir: TCIA layout: folder of mask files (default ``ROOT/masks`` if present).
        render_dir: TCIA layout: where masks drawn from the segmentation CSV go.
    """

    name = "cdd-cesm"

    def __init__(
        self,
        root: str | Path,
        *,
        kind: Kind = "DM",
        layout: Literal["auto", "sets", "tcia"] = "auto",
        trust_laterality: bool | None = None,
        mask_dir: str | Path | None = None,
        render_dir: str | Path | None = None,
        roots: str | Path | list[str | Path] | tuple[str | Path, ...] = (),
        restore_orientation: bool | str = True,
        mask_rule: str = "",
    ) -> None:
        from bcedge.datasets.mask_rules import RULES

        self.root = Path(root)
        if isinstance(roots, (str, Path)):
            # ``-o roots=a,b`` on the command line arrives as one string.
            roots = [r for r in str(roots).split(",") if r]
        self.roots = [Path(r) for r in roots]
        for extra_root in self.roots:
            if not extra_root.is_dir():
                raise DatasetError(f"{extra_root}: CDD-CESM folder not found")
        self.restore_orientation = str(restore_orientation).lower() not in {"false", "0", "no"}
        if mask_rule not in RULES:
            raise ConfigError(f"mask_rule={mask_rule!r}; expected one of {', '.join(repr(r) for r in RULES)}")
        self.mask_rule = mask_rule
        kind_up = str(kind).upper() if str(kind).lower() != "both" else "both"
        if kind_up not in ("DM", "CM", "both"):
            raise ConfigError(f"kind={kind!r}; expected 'DM' (low energy), 'CM' (contrast) or 'both'")
        if layout not in ("auto", "sets", "tcia"):
            raise ConfigError(f"layout={layout!r}; expected 'auto', 'sets' or 'tcia'")
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: CDD-CESM root folder not found")
        self.kind = kind_up
        self.trust_laterality = trust_laterality
        self.mask_dir = Path(mask_dir) if mask_dir is not None else None
        self.render_dir = Path(render_dir) if render_dir is not None else self.root / ".bcedge-masks"
        self.layout = self._detect_layout() if layout == "auto" else layout

    # ------------------------------------------------------------------ layout

    def _set_dirs(self, root: Path | None = None) -> list[Path]:
        root = self.root if root is None else root
        if (root / "images").is_dir() and (root / "masks").is_dir() and self.mask_dir is None:
            return [root]
        return [d for d in sorted(root.iterdir()) if d.is_dir() and (d / "images").is_dir() and (d / "masks").is_dir()]

    def _detect_layout(self) -> str:
        for folder in self._set_dirs():
            if any(_stem_fields(p) and p.stem.lower().startswith("flipped_") for p in (folder / "images").iterdir()):
                return "sets"
        return "tcia"

    def _keep(self, fields: dict[str, str]) -> bool:
        return self.kind == "both" or fields["kind"] == self.kind

    def _laterality(self, fields: dict[str, str], restored: bool) -> tuple[str | None, dict[str, str]]:
        # Restored views are in their acquired orientation (module doc); unrestored
        # ``flipped_`` copies are upside down, which leaves the chest-wall side as named.
        default = restored or fields["copy"] == "flipped"
        trust = default if self.trust_laterality is None else self.trust_laterality
        extra = {"image_flipped": fields["flipped"], "name_laterality": fields["lat"], "copy": fields["copy"]}
        return (fields["lat"] if trust else None), extra

    # ------------------------------------------------------------------ samples

    def samples(self) -> Iterator[Sample]:
        """Yield the samples of the chosen kind, sorted by id (``P<n>_<L|R>_<kind>_<view>``, numeric order)."""
        found = self._sets_samples() if self.layout == "sets" else self._tcia_samples()
        by_id: dict[str, Sample] = {}
        for sample in found:
            if sample.id in by_id:
                raise DatasetError(
                    f"{self.root}: image {sample.id} appears twice "
                    f"({by_id[sample.id].image_path} and {sample.image_path})"
                )
            by_id[sample.id] = sample
        if not by_id:
            raise DatasetError(
                f"{self.root}: no CDD-CESM {self.kind} images P<id>_<L|R>_<DM|CM>_<CC|MLO> ({self.layout} layout)"
            )
        for key in sorted(by_id, key=natural_key):
            yield by_id[key]

    def _sample(
        self,
        image: Path,
        fields: dict[str, str],
        masks: tuple[Path, ...],
        pathology: str | None,
        extra: dict[str, str],
        undo: str = "",
    ) -> Sample:
        laterality, lat_extra = self._laterality(
            fields, bool(undo) or (self.restore_orientation and self.layout == "sets")
        )
        sample = Sample(
            id=f"P{fields['patient']}_{fields['lat']}_{fields['kind']}_{fields['view']}",
            patient_id=f"cdd-cesm-P{fields['patient']}",
            source=self.name,
            image_path=image,
            mask_paths=masks,
            laterality=laterality,
            view=fields["view"],
            pathology=pathology,
            mask_kind="pixel" if masks else "none",
            extra={"kind": fields["kind"], **lat_extra, **extra},
            undo=undo,  # type: ignore[arg-type]
            mask_rule=self.mask_rule if masks else "",
        )
        if sample.mask_rule and not sample.load_mask(image_size(image)).any():
            # The rule left nothing: the published mask marked no usable lesion location.
            sample = replace(sample, extra={**sample.extra, "lesion_unlocated": "true", "mask_rule_emptied": "true"})
        return sample

    def _sets_samples(self) -> Iterator[Sample]:
        set_dirs = [d for root in (self.root, *self.roots) for d in self._set_dirs(root)]
        if not set_dirs:
            raise DatasetError(f"{self.root}: no <set>/images + <set>/masks folders (sets layout)")
        # view id -> (rank, image, fields, mask, set folder): the preferred copy of each view.
        chosen: dict[str, tuple[tuple[int, int], Path, dict[str, str], Path, Path]] = {}
        copies: dict[str, list[str]] = {}
        for folder_rank, folder in enumerate(set_dirs):
            masks = {p.stem: p for p in files_with_suffix(folder / "masks", MASK_SUFFIXES)}
            for image in files_with_suffix(folder / "images", IMAGE_SUFFIXES):
                fields = _stem_fields(image)
                if fields is None or not self._keep(fields):
                    continue
                mask = masks.get(image.stem)
                if mask is None:
                    raise DatasetError(f"{image}: no mask {folder / 'masks' / image.stem}.* (sets layout needs one)")
                view = f"P{fields['patient']}_{fields['lat']}_{fields['kind']}_{fields['view']}"
                rank = (_root_rank(folder, self.roots, self.root), COPY_PREFERENCE.index(fields["copy"]), folder_rank)
                copies.setdefault(view, []).append(f"{folder.name}/{image.name}")
                if view not in chosen or rank < chosen[view][0]:
                    chosen[view] = (rank, image, fields, mask, folder)
        for view, (_, image, fields, mask, folder) in chosen.items():
            pathology, colours = mask_colour_pathology(mask)
            extra = {"set": folder.name if folder != self.root else "", "mask_colours": colours}
            others = sorted(n for n in copies[view] if n != f"{folder.name}/{image.name}")
            if others:
                extra["other_copies"] = ",".join(others)
            undo = UNDO[fields["copy"]] if self.restore_orientation else ""
            yield self._sample(image, fields, (mask,), pathology, extra, undo)

    # ------------------------------------------------------------------ TCIA

    def _tcia_images(self) -> list[Path]:
        skip = {self.render_dir.resolve()}
        mask_dir = self._tcia_mask_dir()
        if mask_dir is not None:
            skip.add(mask_dir.resolve())
        images = []
        for path in files_with_suffix(self.root, IMAGE_SUFFIXES, recursive=True):
            if any(parent.resolve() in skip for parent in path.parents):
                continue
            images.append(path)
        return images

    def _tcia_mask_dir(self) -> Path | None:
        if self.mask_dir is not None:
            if not self.mask_dir.is_dir():
                raise DatasetError(f"{self.mask_dir}: mask folder not found")
            return self.mask_dir
        default = self.root / "masks"
        return default if default.is_dir() else None

    def _tcia_samples(self) -> Iterator[Sample]:
        labels = _read_pathology_table(self.root)
        regions = _read_segmentation_csv(self.root)
        mask_dir = self._tcia_mask_dir()
        mask_files: dict[str, list[Path]] = {}
        if mask_dir is not None:
            for path in files_with_suffix(mask_dir, MASK_SUFFIXES, recursive=True):
                base = re.sub(r"_\d+$", "", path.stem) if NAME.match(re.sub(r"_\d+$", "", path.stem)) else path.stem
                mask_files.setdefault(base.lower(), []).append(path)
        for image in self._tcia_images():
            fields = _stem_fields(image)
            if fields is None or not self._keep(fields):
                continue
            masks = list(mask_files.get(image.stem.lower(), []))
            shapes = regions.get(image.name.lower()) or regions.get(image.stem.lower()) or []
            drawable = [s for s in shapes if s.get("name") in {"polygon", "polyline", "ellipse", "circle", "rect"}]
            if drawable:
                masks.append(self._render(image, drawable))
            label = labels.get(image.stem.lower())
            pathology = label.lower() if label else None
            extra: dict[str, str] = {}
            if label:
                extra["label"] = label
            if not masks and pathology in {"benign", "malignant"}:
                extra["lesion_unlocated"] = "true"
            if shapes and not drawable:
                extra["point_annotations"] = str(len(shapes))
            yield self._sample(image, fields, tuple(sorted(masks)), pathology, extra)

    def _render(self, image: Path, shapes: list[dict[str, object]]) -> Path:
        """Draw VIA shapes into a PNG mask (cached by image name and annotation content)."""
        import cv2

        from bcedge.imageio import write_png

        digest = hashlib.sha256(json.dumps(shapes, sort_keys=True).encode()).hexdigest()[:12]
        out = self.render_dir / f"{image.stem}.{digest}.png"
        if out.is_file():
            return out
        height, width = image_size(image)
        mask = np.zeros((height, width), np.uint8)
        for shape in shapes:
            name = shape["name"]
            try:
                if name in {"polygon", "polyline"}:
                    pts = np.stack([np.asarray(shape["all_points_x"]), np.asarray(shape["all_points_y"])], axis=1)
                    cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 255)
                elif name == "ellipse":
                    centre = (round(float(shape["cx"])), round(float(shape["cy"])))
                    axes = (max(round(float(shape["rx"])), 1), max(round(float(shape["ry"])), 1))
                    angle = float(np.degrees(float(shape.get("theta", 0.0) or 0.0)))
                    cv2.ellipse(mask, centre, axes, angle, 0, 360, 255, thickness=-1)
                elif name == "circle":
                    centre = (round(float(shape["cx"])), round(float(shape["cy"])))
                    cv2.circle(mask, centre, max(round(float(shape["r"])), 1), 255, thickness=-1)
                elif name == "rect":
                    x, y = round(float(shape["x"])), round(float(shape["y"]))
                    w, h = round(float(shape["width"])), round(float(shape["height"]))
                    cv2.rectangle(mask, (x, y), (x + w - 1, y + h - 1), 255, thickness=-1)
            except (KeyError, TypeError, ValueError) as exc:
                raise DatasetError(f"{image.name}: malformed {name} region in the segmentation CSV ({exc})") from exc
        return write_png(out, mask)


#: Which copy of a view to keep: the file as acquired first, then the source's flipped copies.
COPY_PREFERENCE = ("", "flipped", "mirrored")
#: The flip that restores the acquired orientation of each copy (measured; module doc).
UNDO = {"": "", "flipped": "vflip", "mirrored": "hflip"}


def _root_rank(folder: Path, roots: list[Path], root: Path) -> int:
    """0 for sets under ``root``, 1 + i for sets under ``roots[i]`` (the first root wins a view)."""
    for i, extra_root in enumerate(roots):
        if folder == extra_root or extra_root in folder.parents:
            return i + 1
    return 0


def _stem_fields(path: Path) -> dict[str, str] | None:
    return parse_name(path.stem)


def _find_csv(root: Path, required: str) -> Path | None:
    for path in files_with_suffix(root, (".csv",), recursive=True):
        try:
            with open(path, newline="", encoding="utf-8-sig") as fh:
                header = fh.readline()
        except OSError:
            continue
        if required.lower() in header.lower():
            return path
    return None


def _read_pathology_table(root: Path) -> dict[str, str]:
    """``Image_name`` (lower case) -> pathology label, from the annotation table exported as CSV."""
    path = _find_csv(root, "Image_name")
    if path is None:
        return {}
    out: dict[str, str] = {}
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = {c.strip().lower(): c for c in reader.fieldnames or []}
        label_col = next((columns[c] for c in columns if c.startswith("pathology")), None)
        if label_col is None:
            raise DatasetError(f"{path}: no 'Pathology Classification/ Follow up' column next to Image_name")
        for row in reader:
            name = (row.get(columns["image_name"]) or "").strip()
            label = (row.get(label_col) or "").strip()
            if name and label:
                out[Path(name).stem.lower() if Path(name).suffix else name.lower()] = label
    return out


def _read_segmentation_csv(root: Path) -> dict[str, list[dict[str, object]]]:
    """``#filename`` (lower case) -> VIA region shapes, from the hand-drawn segmentation CSV."""
    path = _find_csv(root, "region_shape_attributes")
    if path is None:
        return {}
    out: dict[str, list[dict[str, object]]] = {}
    with open(path, newline="", encoding="utf-8-sig") as fh:
        for lineno, row in enumerate(csv.DictReader(fh), 2):
            name = (row.get("#filename") or row.get("filename") or "").strip()
            raw = (row.get("region_shape_attributes") or "").strip()
            if not name or raw in {"", "{}"}:
                continue
            try:
                shape = json.loads(raw)
            except json.JSONDecodeError:
                # Some exports write Python dict literals with single quotes.
                try:
                    shape = json.loads(raw.replace("'", '"'))
                except json.JSONDecodeError as exc:
                    raise DatasetError(f"{path}:{lineno}: region_shape_attributes is not JSON: {raw[:60]}") from exc
            if isinstance(shape, dict) and "name" in shape:
                out.setdefault(name.lower(), []).append(shape)
    return out
