"""The highdicom table speed-up (bcedge.outputs.highdicom_tables): same answers as highdicom, version-checked,
and a guard that fails when highdicom's internals change under the patch."""

from __future__ import annotations

import inspect
import json
import pkgutil
from pathlib import Path

import pytest

from bcedge import outputs
from bcedge.outputs import highdicom_tables
from bcedge.outputs.highdicom_tables import LazyModuleMap


def test_lazy_standard_table_matches_highdicom() -> None:
    """The lazily parsed module table gives exactly what highdicom's full parse gives, for every module."""
    pytest.importorskip("highdicom")
    assert highdicom_tables.install()
    import highdicom._standard_utils as su

    lazy = su.get_module_attribute_map()
    full = su.get_module_attribute_map.original()
    assert isinstance(lazy, LazyModuleMap) and len(lazy) == len(full) and list(lazy) == list(full)
    for key, value in full.items():
        assert key in lazy and lazy[key] == value, key
    assert "no-such-module" not in lazy
    with pytest.raises(KeyError):
        lazy["no-such-module"]


def test_preload_seg_installs_the_lazy_table() -> None:
    pytest.importorskip("highdicom")
    outputs.preload_seg()
    import highdicom._standard_utils as su

    assert isinstance(su.get_module_attribute_map(), LazyModuleMap)


def test_lazy_table_falls_back_on_unexpected_layout() -> None:
    table = {"patient": [{"keyword": "PatientName", "type": "2", "path": []}], "x": []}
    loads = []
    lazy = LazyModuleMap(lambda: json.dumps(table).encode(), lambda: loads.append(1) or dict(table))
    assert lazy["patient"] == table["patient"] and "x" in lazy and len(lazy) == 2
    assert loads == [1]  # minified JSON has no two-space keys: parsed once, in full


def test_highdicom_internals_are_what_the_patch_expects() -> None:
    """Fails when an installed highdicom differs from the one the patch was written against.

    A failure here means: re-check :mod:`bcedge.outputs.highdicom_tables` against the new highdicom
    (which modules bind ``get_module_attribute_map``, which file it parses) before widening
    ``TESTED_VERSIONS`` or ``PATCHED_MODULES``.
    """
    highdicom = pytest.importorskip("highdicom")
    assert highdicom_tables.version_tested(highdicom.__version__), (
        f"highdicom {highdicom.__version__} is not one the table patch was tested with "
        f"({sorted(highdicom_tables.TESTED_VERSIONS)}): the patch is skipped there; re-test, then widen"
    )
    assert highdicom_tables.install()
    import highdicom._standard_utils as su

    # Every highdicom module that names the function must be one the patch rebinds: a module added
    # later that imports it would keep parsing the full 22 MB table (slow) unnoticed.
    package = Path(highdicom.__file__).parent
    users = set()
    for info in pkgutil.walk_packages([str(package)], prefix="highdicom."):
        path = package.joinpath(*info.name.split(".")[1:])
        source = path / "__init__.py" if info.ispkg else path.with_suffix(".py")
        if source.is_file() and "get_module_attribute_map" in source.read_text(encoding="utf-8"):
            users.add(info.name)
    assert users == set(highdicom_tables.PATCHED_MODULES)
    import importlib

    for name in highdicom_tables.PATCHED_MODULES:
        module = importlib.import_module(name)
        assert isinstance(module.get_module_attribute_map(), LazyModuleMap), name
    # The lazy map reads the file highdicom's own function parses, and that function returns a plain dict.
    original = su.get_module_attribute_map.original
    assert "/".join(highdicom_tables.TABLE) in inspect.getsource(original)
    assert package.joinpath(*highdicom_tables.TABLE).is_file()
    assert isinstance(original(), dict)


def test_version_check() -> None:
    assert highdicom_tables.version_tested("0.28.2") and highdicom_tables.version_tested("0.28.0rc1")
    assert not highdicom_tables.version_tested("0.29.0")
    assert not highdicom_tables.version_tested("1.0")
    assert not highdicom_tables.version_tested("")


def test_untested_highdicom_is_left_unpatched(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside TESTED_VERSIONS nothing is patched: highdicom keeps its own (slow, correct) parse."""
    highdicom = pytest.importorskip("highdicom")
    import highdicom._standard_utils as su

    before = su.get_module_attribute_map
    monkeypatch.setattr(highdicom_tables, "_INSTALLED", False)
    monkeypatch.setattr(highdicom, "__version__", "0.99.0")
    assert highdicom_tables.install() is False
    assert su.get_module_attribute_map is before
    assert highdicom_tables._INSTALLED is False
