"""Write what a segmentation produced: mask PNG, overlay PNG, JSON result and a DICOM Segmentation.

One module per output kind, and the writer that puts a scan's outputs in place together:

- :mod:`~bcedge.outputs.names`: the output kinds and file names (``scan_mask.png``,
  ``scan_overlay.png``, ``scan.json``, ``scan_seg.dcm``), stems shortened under 255 bytes;
- :mod:`~bcedge.outputs.png`: the 1-bit mask PNG encoder (~2 ms for a 3328x2560 mask);
- :mod:`~bcedge.outputs.overlay`: contours and finding numbers on the displayed mammogram;
- :mod:`~bcedge.outputs.json`: ``Result.to_dict()`` as JSON;
- :mod:`~bcedge.outputs.seg`: the DICOM SEG (highdicom), built from the header the reader
  already parsed, with name-based UIDs;
- :mod:`~bcedge.outputs.highdicom_tables`: the version-checked patch that makes highdicom parse
  its 22 MB standard table lazily;
- :mod:`~bcedge.outputs.write`: :func:`write_outputs`, every requested output of one scan,
  all or nothing (:func:`bcedge.imageio.replace_files`).

Every file is written atomically (a temporary file in the destination folder, then a rename,
:mod:`bcedge.imageio`): an interrupted run leaves either the previous file or the complete new
one, never a partial PNG, JSON or SEG. Segmenting scans and writing their outputs, with per-scan
failures and unique names, is :mod:`bcedge.scanjob`.

Cold start: importing this package imports NumPy and the standard library only; OpenCV when an
overlay is drawn, highdicom when a SEG is built.
"""

from __future__ import annotations

from bcedge.outputs.json import result_json, write_json
from bcedge.outputs.names import MAX_STEM_BYTES, OUTPUT_KINDS, output_paths, output_stem, parse_kinds, shorten_stem
from bcedge.outputs.overlay import (
    CONTOUR_BGR,
    LABEL_BGR,
    OVERLAY_LONG_SIDE,
    encode_overlay_png,
    render_overlay,
    write_overlay,
)
from bcedge.outputs.png import MASK_PNG_ZLIB_LEVEL, encode_mask_png, write_mask
from bcedge.outputs.seg import (
    SEG_CONTENT_LABEL,
    SEG_MANUFACTURER,
    SEG_SEGMENT_LABEL,
    SEG_SERIES_DESCRIPTION,
    SEG_SERIES_NUMBER,
    artifact_of,
    build_seg,
    encode_seg,
    is_dicom_source,
    preload_seg,
    read_source_header,
    seg_series_instance_uid,
    seg_sop_instance_uid,
    source_file,
    write_seg,
)
from bcedge.outputs.write import write_outputs

__all__ = [
    "CONTOUR_BGR",
    "LABEL_BGR",
    "MASK_PNG_ZLIB_LEVEL",
    "MAX_STEM_BYTES",
    "OUTPUT_KINDS",
    "OVERLAY_LONG_SIDE",
    "SEG_CONTENT_LABEL",
    "SEG_MANUFACTURER",
    "SEG_SEGMENT_LABEL",
    "SEG_SERIES_DESCRIPTION",
    "SEG_SERIES_NUMBER",
    "artifact_of",
    "build_seg",
    "encode_mask_png",
    "encode_overlay_png",
    "encode_seg",
    "is_dicom_source",
    "output_paths",
    "output_stem",
    "parse_kinds",
    "preload_seg",
    "read_source_header",
    "render_overlay",
    "result_json",
    "seg_series_instance_uid",
    "seg_sop_instance_uid",
    "shorten_stem",
    "source_file",
    "write_json",
    "write_mask",
    "write_outputs",
    "write_overlay",
    "write_seg",
]
