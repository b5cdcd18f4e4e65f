"""Dataset readers that yield :class:`~bcedge.datasets.base.Sample` records.

Readers: mini-MIAS, CDD-CESM, CBIS-DDSM (TCIA and JPEG layouts), plain folders
and synthetic phantoms. Pixels are read lazily through :mod:`bcedge.dicom`.
"""

from __future__ import annotations

from bcedge.datasets.base import DatasetReader, Sample, read_mask_file

__all__ = ["DatasetReader", "Sample", "read_mask_file"]
