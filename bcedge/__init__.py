"""bcedge: breast-mass segmentation on mammograms, from training to the edge.

The runtime package stays light (NumPy, OpenCV, pydicom, typer, rich); heavy
backends are optional extras imported where they are used. Nothing here reads
the environment, prints or changes global state at import time.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
