"""A speed-up for highdicom's first SEG in a process: its 22 MB module table parsed lazily.

highdicom checks a SEG's attributes against a JSON table of the standard
(``highdicom/_standard/module_attribute_map.json``, 22 MB). Parsing that table took ~260 ms on
the first SEG of every process, against ~10 ms for building the SEG itself (profiled with
cProfile; bit packing, per-frame checks and encoding are a few ms each). :func:`install`
replaces the parsed table with a :class:`LazyModuleMap` that indexes the file once (~10 ms) and
parses only the modules highdicom looks up; every lookup returns exactly what the full parse
would, and anything unexpected falls back to the full parse. What remains on a process's first
SEG is mostly ``import highdicom`` itself (~75-100 ms).

This is a patch of highdicom's private internals, so it is guarded:

- **Version check.** It is installed only for the highdicom versions it was tested with
  (:data:`TESTED_VERSIONS`); any other version is left alone (correct, only slower) and
  :func:`install` returns False. Widen the range only after ``tests/test_outputs_highdicom_tables.py``
  passes on the new version.
- **Layout check.** What it patches is looked up, not assumed: highdicom's
  ``_standard_utils.get_module_attribute_map`` and the modules that imported that name
  (:data:`PATCHED_MODULES`); a binding that no longer points at the original function is not
  touched, and a table file that is missing or laid out differently means the full parse.
- **A test that fails when highdicom's internals change** (the test file above): every module of
  the installed highdicom that uses ``get_module_attribute_map`` must be in
  :data:`PATCHED_MODULES`, the table must be where it is read from, and the lazy map must equal
  the full parse for every module.
"""

from __future__ import annotations

import json
import mmap
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

#: highdicom versions (major, minor) the patch was tested with; others are left unpatched.
#: 0.28 (0.28.2) is the version this repository's environment installs (``pip install .[seg]``).
TESTED_VERSIONS = frozenset({(0, 28)})
#: highdicom modules that bind ``get_module_attribute_map`` at import (``from ._standard_utils import ...``).
PATCHED_MODULES = ("highdicom._standard_utils", "highdicom.base", "highdicom.image")
#: Where highdicom reads the table from, inside its package.
TABLE = ("_standard", "module_attribute_map.json")


class LazyModuleMap(Mapping[str, list]):
    """highdicom's module -> attributes table, parsed one module at a time from the raw JSON.

    The file is a pretty-printed JSON object whose top-level keys sit at the start of a line
    indented by exactly two spaces (deeper levels are indented further), so one scan finds
    every module's byte range. A module is parsed on first lookup. If the layout is not the
    expected one, or a slice does not parse, the whole table is parsed as highdicom would.
    """

    _KEY = re.compile(rb'\n  "([^"\n]+)": ')

    def __init__(self, load_raw: Callable[[], bytes | mmap.mmap], load_full: Callable[[], dict[str, list]]) -> None:
        self._load_raw = load_raw
        self._load_full = load_full
        self._lock = threading.Lock()
        self._raw: bytes | mmap.mmap | None = None
        self._spans: dict[str, tuple[int, int]] | None = None
        self._parsed: dict[str, list] = {}
        self._full: dict[str, list] | None = None

    def _index(self) -> dict[str, tuple[int, int]] | None:
        with self._lock:
            if self._spans is None and self._full is None:
                raw = self._load_raw()
                marks = [(m.group(1).decode("utf-8"), m.start(), m.end()) for m in self._KEY.finditer(raw)]
                spans = {}
                for i, (key, _, start) in enumerate(marks):
                    end = marks[i + 1][1] if i + 1 < len(marks) else raw.rfind(b"}")
                    spans[key] = (start, end)
                if not spans:
                    self._full = self._load_full()
                else:
                    self._raw, self._spans = raw, spans
            return self._spans

    def _fallback(self) -> dict[str, list]:
        with self._lock:
            if self._full is None:
                self._full = self._load_full()
                self._raw, self._spans = None, None
            return self._full

    def __getitem__(self, key: str) -> list:
        if key in self._parsed:
            return self._parsed[key]
        spans = self._index()
        if spans is None or self._raw is None:
            return self._fallback()[key]
        start, end = spans[key]  # KeyError for an unknown module, as with the full dict
        try:
            value = json.loads(self._raw[start:end].rstrip().rstrip(b","))
        except ValueError:
            return self._fallback()[key]
        self._parsed[key] = value
        return value

    def __contains__(self, key: object) -> bool:
        spans = self._index()
        return key in (spans if spans is not None else self._fallback())

    def __iter__(self) -> Iterator[str]:
        spans = self._index()
        return iter(list(spans if spans is not None else self._fallback()))

    def __len__(self) -> int:
        spans = self._index()
        return len(spans if spans is not None else self._fallback())


def _map_file(table: Any) -> bytes | mmap.mmap:
    """The table's bytes: memory-mapped when it is a plain file (no 22 MB copy, ~8 ms less), else read."""
    try:
        with open(os.fspath(table), "rb") as f:
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (TypeError, OSError, ValueError):
        return table.read_bytes()


_LOCK = threading.Lock()
#: True once :func:`install` has patched highdicom (or a benchmark set it to keep highdicom's own parse).
_INSTALLED = False


def version_tested(version: str) -> bool:
    """Whether ``version`` (``"0.28.2"``) is one of :data:`TESTED_VERSIONS` (a major.minor match)."""
    match = re.match(r"^(\d+)\.(\d+)", version)
    return match is not None and (int(match.group(1)), int(match.group(2))) in TESTED_VERSIONS


def install() -> bool:
    """Make highdicom parse its module table lazily; True when installed (now or before).

    highdicom reads the table through ``get_module_attribute_map()`` in ``highdicom._standard_utils``
    and the modules that imported the name (:data:`PATCHED_MODULES`). Each binding that still points
    at the original function is replaced by one returning the lazy mapping. A highdicom outside
    :data:`TESTED_VERSIONS`, or one whose layout differs, is left alone (correct, only slower).
    """
    global _INSTALLED
    with _LOCK:
        if _INSTALLED:
            return True
        try:
            import importlib
            from importlib import resources

            import highdicom

            if not version_tested(str(getattr(highdicom, "__version__", ""))):
                return False
            su = importlib.import_module("highdicom._standard_utils")
            original = su.get_module_attribute_map
            table = resources.files("highdicom").joinpath(*TABLE)
            if not table.is_file():
                return False
        except (ImportError, AttributeError, TypeError, OSError):
            return False
        lazy = LazyModuleMap(lambda: _map_file(table), original)

        def get_module_attribute_map() -> Mapping[str, list]:
            return lazy

        get_module_attribute_map.original = original  # type: ignore[attr-defined]  # for tests and debugging

        for name in PATCHED_MODULES:
            module = importlib.import_module(name)
            if getattr(module, "get_module_attribute_map", None) is original:
                module.get_module_attribute_map = get_module_attribute_map
        _INSTALLED = True
        return True


__all__ = ["PATCHED_MODULES", "TABLE", "TESTED_VERSIONS", "LazyModuleMap", "install", "version_tested"]
