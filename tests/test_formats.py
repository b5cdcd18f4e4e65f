"""The artifact-kind table (bcedge.formats): every row buildable, loadable, listed in the help; what derives
from it; and the one chooser, pinned to the choices made before the table existed."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import itertools
import json
import re
import subprocess
import sys
from collections.abc import Set as AbstractSet
from pathlib import Path

import pytest
from bundle_support import write_test_manifest

import bcedge.formats as formats
from bcedge.backends import BACKENDS
from bcedge.bundle import ArtifactRecord, load_bundle
from bcedge.errors import BackendError, BcedgeError, BundleError
from bcedge.formats import (
    EXPORT_KINDS,
    FORMATS,
    KINDS,
    NEEDS,
    ONNX_GPU,
    PRECISION_SPECS,
    PRECISIONS,
    choose_artifact,
    preference_rank,
)
from bcedge.preprocess import PreprocessConfig

REPO = Path(__file__).resolve().parents[1]
PINNED = json.loads((Path(__file__).parent / "data" / "artifact_choice_today.json").read_text())
#: The repository's bundles (the pin covers each of them).
SHIPPED = ("bcedge/mass_model", "bcedge/demo_model", "models/unet-mobilenetv2-combined256")


# --------------------------------------------------------------------------- the rows


@pytest.mark.parametrize("name", list(KINDS))
def test_row_is_buildable(name: str) -> None:
    """The builder string names a function of the export package taking (kind, context)."""
    kind = KINDS[name]
    module_name, sep, function = kind.builder.partition(":")
    assert sep and module_name.startswith("export.") and function, kind.builder
    builder = getattr(importlib.import_module(module_name), function)  # export modules import no TF at top
    params = list(inspect.signature(builder).parameters)
    assert params[:2] == ["kind", "context"] and len(params) == 2, params
    assert kind.needs and set(kind.needs) <= set(NEEDS)
    from export.builders import BuildContext

    for need in kind.needs:  # the context offers everything a row may ask for
        assert callable(getattr(BuildContext, need)), need
    assert kind.requires and all(isinstance(m, str) and m for m in kind.requires)
    assert kind.precision in PRECISION_SPECS and kind.tolerance == PRECISION_SPECS[kind.precision].tolerance


@pytest.mark.parametrize("name", list(KINDS))
def test_row_is_loadable(name: str) -> None:
    """The row's backend is registered, runs its format, and the backend's module exists."""
    kind = KINDS[name]
    spec = BACKENDS[kind.backend]
    assert kind.format in spec.formats
    module = spec.target.partition(":")[0]
    assert importlib.util.find_spec(module) is not None, module
    # The manifest validation accepts the row's format and precision.
    assert kind.format in FORMATS and kind.precision in PRECISIONS


def test_rows_are_consistent() -> None:
    assert list(FORMATS) == ["keras", "tflite", "onnx", "tensorrt"]
    assert list(PRECISIONS) == ["fp32", "fp16", "dynamic", "int8"]
    assert list(EXPORT_KINDS) == [n for n in KINDS if n != "keras"]  # the reference is not a --formats value
    assert len({k.file for k in KINDS.values()}) == len(KINDS)
    assert len({(k.format, k.precision) for k in KINDS.values()}) == len(KINDS)
    for kind in KINDS.values():
        assert (kind.precision in kind.file) or kind.precision == "fp32"
        assert kind.calibrated == (kind.precision == "int8")
    # ONNX comes before the engines built from it (the build order is the table order).
    names = list(KINDS)
    assert all(names.index("onnx") < i for i, n in enumerate(names) if KINDS[n].format == "tensorrt")
    assert {f for spec in BACKENDS.values() for f in spec.formats} == set(FORMATS)


def test_module_docstring_lists_every_row() -> None:
    doc = formats.__doc__ or ""
    for kind in KINDS.values():
        line = next((ln for ln in doc.splitlines() if ln.startswith(kind.name + " ")), None)
        assert line is not None, kind.name
        assert line.split()[1:5] == [kind.format, kind.precision, kind.file, kind.backend]


def test_everything_derives_from_the_table() -> None:
    """The old copies are gone or views of the table."""
    import bcedge.bundle as bundle
    from export import bundle_builder, tflite, verify

    assert bundle.FORMATS is FORMATS and bundle.PRECISIONS is PRECISIONS
    assert not hasattr(bundle, "AUTO_PREFERENCE") and not hasattr(bundle, "ONNX_GPU")
    assert not hasattr(bundle.Bundle, "best_artifact")
    assert {p.name: p.tolerance for p in PRECISION_SPECS.values()} == verify.DEFAULT_TOLERANCES
    assert {p.name: p.output_tolerance for p in PRECISION_SPECS.values()} == verify.OUTPUT_TOLERANCES
    assert tuple(k.precision for k in KINDS.values() if k.format == "tflite") == tflite.TFLITE_PRECISIONS
    assert set(bundle_builder.EXPORT_FORMATS) == set(EXPORT_KINDS)
    assert all(bundle_builder.EXPORT_FORMATS[n] is KINDS[n] for n in EXPORT_KINDS)


def test_build_availability_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    present = {"tensorflow", "export.builders"}
    monkeypatch.setattr(formats, "_found", lambda module: module in present)
    got = formats.build_availability()
    assert list(got) == list(EXPORT_KINDS)
    assert got["tflite-int8"] == (True, "tensorflow")
    assert got["onnx"] == (False, "tf2onnx, onnx are not installed: pip install 'bcedge[train]'")
    assert got["tensorrt-fp16"][1] == "tensorrt is not installed: it ships with JetPack / NVIDIA's pip index"
    present.add("tensorrt")
    present.discard("export.builders")
    assert formats.build_availability(["tensorrt-int8"]) == {
        "tensorrt-int8": (False, "export.builders is missing from this bcedge")
    }


def test_rows_are_listed_in_the_cli_help() -> None:
    """``bcedge export --help`` names every --formats value; ``bcedge benchmark --help`` every format/precision."""

    def help_of(command: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "bcedge", command, "--help"],
            capture_output=True,
            text=True,
            timeout=300,
            env={"COLUMNS": "400", "TERM": "dumb", "NO_COLOR": "1", "PATH": ""},
            cwd=REPO,
        )
        assert proc.returncode == 0, proc.stderr
        return re.sub(r"\s+", " ", re.sub(r"[│╭╮╰╯─]", " ", proc.stdout))

    export_help = help_of("export")
    for name in EXPORT_KINDS:
        assert re.search(rf"\b{re.escape(name)}\b", export_help), name
    bench_help = help_of("benchmark")
    for word in (*FORMATS, *PRECISIONS):
        assert re.search(rf"\b{word}\b", bench_help), word


def test_no_import_circle_and_stdlib_only() -> None:
    """formats imports only the standard library and bcedge.errors; backends no longer imports bundle."""
    tree = ast.parse(Path(formats.__file__).read_text())
    imported = {
        (node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    assert imported <= {"__future__", "importlib", "collections", "dataclasses", "typing", "bcedge"}
    bcedge_imports = {
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module.startswith("bcedge")
    }
    assert bcedge_imports == {"bcedge.errors", "bcedge.bundle"}  # bcedge.bundle only under TYPE_CHECKING
    src = (REPO / "bcedge" / "backends" / "__init__.py").read_text()
    assert "bcedge.bundle" not in src
    code = "import sys, bcedge.formats; print(sorted(m for m in sys.modules if m.startswith(('bcedge', 'export'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout
    assert out.strip() == "['bcedge', 'bcedge.errors', 'bcedge.formats']"


# --------------------------------------------------------------------------- the chooser, pinned


def _availability_sets() -> list[set[str]]:
    """The sets the pin was computed for: every subset of the four backends, with and without a GPU for onnx."""
    out: list[set[str]] = []
    names = ("keras", "tflite", "onnx", "tensorrt")
    for r in range(len(names) + 1):
        for combo in itertools.combinations(names, r):
            out.append(set(combo))
            if "onnx" in combo:
                out.append({*combo, ONNX_GPU})
    return out


def _make(root: Path, artifacts: list[tuple[str, str, str, str, str]]) -> Path:
    root.mkdir(parents=True)
    records = []
    for j, (file, fmt, precision, backend, gate) in enumerate(artifacts):
        (root / file).write_bytes(bytes([j]) * (50 + j))
        records.append(
            ArtifactRecord.from_file(root, file, format=fmt, precision=precision, backend=backend, gate=gate)
        )
    write_test_manifest(root, records, PreprocessConfig(size=32))
    return root


@pytest.fixture(scope="module")
def pinned_bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("pinned bundles")
    syn = [tuple(a) for a in PINNED["synthetic_artifacts"]]
    return {
        **{name: REPO / name for name in SHIPPED},
        "synthetic:mixed": _make(tmp / "mixed", syn),
        "synthetic:passed": _make(tmp / "passed", [(*a[:4], "passed") for a in syn]),
        "synthetic:unmeasured": _make(tmp / "unmeasured", [(*a[:4], "not-measured") for a in syn]),
    }


def _outcome(bundle_dir: Path, backend: str, usable: set[str]) -> str:
    bundle = load_bundle(bundle_dir)

    def available(probe_gpu: bool) -> AbstractSet[str]:
        return usable if probe_gpu else usable - {ONNX_GPU}

    try:
        choice = choose_artifact(bundle, backend, available, known=BACKENDS)
    except BcedgeError as exc:
        message = f"{type(exc).__name__}: " + str(exc).replace(str(bundle.dir), "<bundle>")
        return f"!{PINNED['errors'].index(message)}" if message in PINNED["errors"] else message
    note = f"{choice.record.file}: accuracy gate not measured at export; its Dice is unknown"
    assert choice.warnings in ((), (note,))
    return ("~" if choice.warnings else "") + choice.record.file


def test_choice_is_todays_for_every_bundle_backend_and_machine(pinned_bundles: dict[str, Path]) -> None:
    """choose_artifact picks what Segmenter._choose picked before issue #13 (tests/data/artifact_choice_today.json),
    for the shipped bundles and three synthetic ones holding every format/precision, on 24 kinds of machine."""
    assert set(PINNED["cases"]) == set(pinned_bundles) and set(SHIPPED) <= set(pinned_bundles)
    checked = 0
    for label, bundle_dir in pinned_bundles.items():
        for backend, by_set in PINNED["cases"][label].items():
            for usable in _availability_sets():
                key = ",".join(sorted(usable)) or "-"
                assert _outcome(bundle_dir, backend, usable) == by_set[key], (label, backend, key)
                checked += 1
    assert checked == 6 * 6 * 24


def test_segmenter_uses_the_chooser(monkeypatch: pytest.MonkeyPatch) -> None:
    """Segmenter._choose goes through choose_artifact with this machine's usable backends."""
    import bcedge.backends as backends_mod
    from bcedge.pipeline import Segmenter

    class Probe:
        def __init__(self) -> None:
            self.bundle = load_bundle(REPO / "bcedge" / "mass_model")
            self.warnings: list[str] = []

    monkeypatch.setattr(backends_mod, "auto_backend_names", lambda probe_gpu=True: {"tflite", "keras"})
    assert Segmenter._choose(Probe(), "auto", None).file == "model_fp16.tflite"  # type: ignore[arg-type]
    monkeypatch.setattr(backends_mod, "auto_backend_names", lambda probe_gpu=True: {"keras"})
    with pytest.raises(BundleError, match="no usable artifact"):
        Segmenter._choose(Probe(), "auto", None)  # type: ignore[arg-type]
    expected = "unknown backend 'nope'; expected one of keras, tflite, openvino, onnx, tensorrt"
    with pytest.raises(BackendError, match=expected):
        Segmenter._choose(Probe(), "nope", None)  # type: ignore[arg-type]
    assert Segmenter._choose(Probe(), "auto", "model_dynamic.tflite").precision == "dynamic"  # type: ignore[arg-type]


def test_explicit_artifact_and_bad_backend(pinned_bundles: dict[str, Path]) -> None:
    bundle = load_bundle(pinned_bundles["synthetic:mixed"])
    record = bundle.manifest.artifacts[3]
    assert choose_artifact(bundle, "auto", set(), known=BACKENDS, artifact=record).record is record
    assert choose_artifact(bundle, "auto", set(), known=BACKENDS, artifact=record.file).record is record
    with pytest.raises(BundleError, match=r"has no artifact 'nope\.bin'; it holds tensorrt/fp32 on tensorrt"):
        choose_artifact(bundle, "auto", set(), known=BACKENDS, artifact="nope.bin")
    with pytest.raises(BackendError, match="backend is 3; expected 'auto' or a backend name"):
        choose_artifact(bundle, 3, set(), known=BACKENDS)  # type: ignore[arg-type]


def test_auto_probes_the_gpu_only_for_onnx_artifacts() -> None:
    probes: list[bool] = []

    def available(probe_gpu: bool) -> set[str]:
        probes.append(probe_gpu)
        return {"tflite"}

    choose_artifact(load_bundle(REPO / "bcedge" / "demo_model"), "auto", available, known=BACKENDS)
    assert probes == [False]  # no onnx artifact: onnxruntime is not imported to look for a GPU


def test_ranking_is_replaceable(pinned_bundles: dict[str, Path]) -> None:
    """The ranking is a parameter (issue #14 measures it): a reversed order picks the other end."""
    bundle = load_bundle(pinned_bundles["synthetic:passed"])
    usable = {"tflite", "onnx", "keras"}
    order = preference_rank([a for a in bundle.manifest.artifacts if a.gate == "passed"], usable)
    assert [a.file for a in order][:3] == ["tflite_int8.bin", "tflite_fp16.bin", "tflite_fp32.bin"]
    assert {a.backend for a in order} == usable  # nothing of an unusable backend is ranked
    assert choose_artifact(bundle, "auto", usable, known=BACKENDS).record is order[0]
    last = choose_artifact(bundle, "auto", usable, known=BACKENDS, rank=lambda c, u: preference_rank(c, u)[::-1])
    assert last.record is order[-1] and last.record.backend == "keras"
    with pytest.raises(BundleError, match="no usable artifact"):
        choose_artifact(bundle, "auto", usable, known=BACKENDS, rank=lambda c, u: [])
