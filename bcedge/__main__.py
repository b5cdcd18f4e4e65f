"""``python -m bcedge``: the same as the ``bcedge`` command."""

from __future__ import annotations

import sys

from bcedge.cli import main

if __name__ == "__main__":  # not when a tool imports every module of the package
    sys.exit(main())
