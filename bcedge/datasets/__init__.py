"""Dataset readers that yield :class:`~bcedge.datasets.base.Sample` records.

Readers: mini-MIAS, CDD-CESM, CBIS-DDSM (TCIA and JPEG layouts), plain folders
and synthetic phantoms. Pixels are read lazily through :mod:`bcedge.dicom`.
Open one by name with :func:`open_dataset` (see :mod:`bcedge.datasets.registry`).
"""

from __future__ import annotations

from bcedge.datasets.base import DatasetReader, Sample, read_mask_file
from bcedge.datasets.registry import dataset_names, open_dataset

__all__ = ["DatasetReader", "Sample", "dataset_names", "open_dataset", "read_mask_file"]
