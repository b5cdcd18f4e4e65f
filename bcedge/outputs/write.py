"""All of one scan's outputs, written together: all or nothing, never a lost file.

Every output is encoded in memory first (the encoders of :mod:`~bcedge.outputs.png`,
:mod:`~bcedge.outputs.overlay`, :mod:`~bcedge.outputs.seg` and :mod:`~bcedge.outputs.json`,
looked up on their modules when called, so a test can replace one), then every file is put in
place by :func:`bcedge.imageio.replace_files`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bcedge.errors import InputError
from bcedge.imageio import replace_files
from bcedge.outputs import json as result_json
from bcedge.outputs import overlay, png, seg
from bcedge.outputs.names import output_paths, output_stem

if TYPE_CHECKING:
    from bcedge.bundle import ArtifactRecord, Bundle
    from bcedge.pipeline import Result

_log = logging.getLogger("bcedge.outputs")


def write_outputs(
    result: Result,
    out_dir: str | os.PathLike[str],
    kinds: str | Sequence[str],
    *,
    bundle: Bundle,
    artifact: ArtifactRecord | None = None,
    stem: str | None = None,
) -> dict[str, Path]:
    """Write the requested outputs of one scan under ``out_dir``, all or nothing.

    Every output is first encoded in memory (mask, overlay, SEG, then the JSON, so it lists every
    other output), then all are written together by :func:`bcedge.imageio.replace_files`: either
    every file has its new content, or (a failure part-way: disk full, permissions, a name the
    file system refuses) every file the folder held before is back as it was and no new file is
    left. A raster input cannot have a SEG: ``seg`` is then skipped with a one-line warning
    (logged), not an error. Adds ``result.timing_ms["write"]`` (ms; the JSON file holds the time
    up to its own encoding) and fills ``result.outputs`` (kind -> path) once the files are there.

    Args:
        result: what :meth:`bcedge.pipeline.Segmenter.segment` returned.
        out_dir: destination folder (created when missing).
        kinds: subset of :data:`~bcedge.outputs.names.OUTPUT_KINDS` (a list or ``"mask,json"``).
        bundle: the bundle that produced ``result`` (SEG algorithm identification, UIDs).
        artifact: the artifact that ran (SEG UIDs and version); default: the one ``result.model``
            names (:func:`~bcedge.outputs.seg.artifact_of`); see :func:`~bcedge.outputs.seg.seg_sop_instance_uid`.
        stem: output name stem; default :func:`~bcedge.outputs.names.output_stem` of ``result.source``.

    Returns:
        kind -> path written.

    Raises:
        ConfigError: unknown kind.
        InputError / DicomError: a file could not be written (the cause is the OSError), or the
            SEG source is unusable; nothing under ``out_dir`` changed.
        MissingDependencyError: ``seg`` asked for without highdicom.
    """
    start = time.perf_counter()
    paths = output_paths(out_dir, stem or output_stem(result.source), kinds)
    try:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output folder {out_dir}: {exc.strerror or exc}") from exc
    content: dict[str, bytes] = {}
    if "mask" in paths:
        content["mask"] = png.encode_mask_png(result.mask)
    if "overlay" in paths:
        content["overlay"] = overlay.encode_overlay_png(result)
    if "seg" in paths:
        if seg.is_dicom_source(result):
            content["seg"] = seg.encode_seg(seg.build_seg(result, bundle=bundle, artifact=artifact))
        else:
            what = seg.source_file(result) or "in-memory image"
            _log.warning("%s: not read from a DICOM file, so no DICOM SEG was written (a SEG references one)", what)
    before = dict(result.outputs)
    if "json" in paths:
        result.outputs.update({kind: str(paths[kind]) for kind in (*content, "json")})
        result.timing_ms["write"] = (time.perf_counter() - start) * 1000.0
        content["json"] = result_json.result_json(result)
    try:
        replace_files({paths[kind]: data for kind, data in content.items()})
    except OSError as exc:
        result.outputs.clear()
        result.outputs.update(before)
        raise InputError(f"cannot write outputs under {out_dir}: {exc.strerror or exc}") from exc
    written = {kind: paths[kind] for kind in content}
    result.outputs.update({kind: str(path) for kind, path in written.items()})
    result.timing_ms["write"] = (time.perf_counter() - start) * 1000.0
    return written
