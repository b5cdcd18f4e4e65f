"""The JSON result: ``Result.to_dict()`` as UTF-8 JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from bcedge.imageio import atomic_write_bytes, json_default

if TYPE_CHECKING:
    from bcedge.pipeline import Result


def result_json(result: Result) -> bytes:
    """``result.to_dict()`` as UTF-8 JSON (indent 2, trailing newline)."""
    return (json.dumps(result.to_dict(), indent=2, default=json_default) + "\n").encode("utf-8")


def write_json(path: str | os.PathLike[str], result: Result) -> Path:
    """Write :func:`result_json` atomically."""
    return atomic_write_bytes(path, result_json(result))
