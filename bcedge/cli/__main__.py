"""``python -m bcedge.cli``: the same as the ``bcedge`` command (the serve tests start nodes this way)."""

from __future__ import annotations

import sys

from bcedge.cli import main

if __name__ == "__main__":  # not when a tool imports every module of the package
    sys.exit(main())
