"""The one table of artifact kinds, and the one chooser of the artifact a bundle runs.

Every exported model file of a bundle is one *kind*, a row of :data:`KINDS`:

==============  ========  =========  ======================  ========  =============================  ==========
name            format    precision  file                    backend   builder needs                  hardware
==============  ========  =========  ======================  ========  =============================  ==========
keras           keras     fp32       model.keras             keras     Keras model                    CPU
tflite-fp32     tflite    fp32       model_fp32.tflite       tflite    SavedModel                     CPU
tflite-fp16     tflite    fp16       model_fp16.tflite       tflite    SavedModel                     CPU
tflite-dynamic  tflite    dynamic    model_dynamic.tflite    tflite    SavedModel                     CPU
tflite-int8     tflite    int8       model_int8.tflite       tflite    SavedModel, calibration        CPU
onnx            onnx      fp32       model.onnx              onnx      Keras model                    CPU
onnx-int8       onnx      int8       model_int8.onnx         onnx      ONNX model, calibration        CPU
tensorrt-fp16   tensorrt  fp16       model_fp16.engine       tensorrt  ONNX model                     NVIDIA GPU
tensorrt-int8   tensorrt  int8       model_int8.engine       tensorrt  ONNX model, calibration        NVIDIA GPU
==============  ========  =========  ======================  ========  =============================  ==========

(``tests/test_formats.py`` checks that this docstring lists every row.) Everything that
knows about formats reads this table:

* bundle validation: :data:`FORMATS` and :data:`PRECISIONS` (:mod:`bcedge.bundle`);
* backend opening: which formats each backend runs (:data:`bcedge.backends.BACKENDS`);
* ``bcedge export``: its ``--formats`` values, what can be built here (:func:`build_availability`),
  the converter of each row (``builder``, a ``"module:function"`` string, so :mod:`bcedge`
  never imports :mod:`export`), calibration, and the accuracy-gate tolerances (:data:`PRECISION_SPECS`);
* ``bcedge benchmark --formats`` (:func:`parse_filter`) and the help texts of ``export`` and
  ``benchmark`` (:func:`export_formats_help`, :func:`formats_help`);
* ``--backend auto``: :func:`choose_artifact` with a ranking. The runtime passes the measured one
  (:func:`bcedge.choice.ranking_for`: the on-device acceptance check, then the fastest measured
  on this machine); :func:`preference_rank` (:data:`AUTO_PREFERENCE`) is only the order in which
  candidates are measured, the tie-break, and the whole ranking under ``BCEDGE_CHOICE=static``.

Some runtimes also read another backend's files (:data:`ALTERNATE_RUNTIMES`: OpenVINO reads the
float ``.tflite``). Each such (artifact, runtime) pair is a candidate of its own for the chooser
(:func:`runtime_candidates`, named by :func:`candidate_key`: ``model_fp16.tflite@openvino``), with
the tolerance of the arithmetic it ran in when that is below the file's (:data:`COMPUTE_SPECS`).

Adding a format is one row here plus one builder: append an :class:`ArtifactKind` to
:data:`KINDS` (a new ``format`` or ``precision`` value becomes valid in manifests at once)
and write ``builder(kind, context) -> (file, details)`` in the module its ``builder`` names
(see ``export/builders.py``: the context hands it the Keras model, the SavedModel, the ONNX
file or the calibration images, whichever its ``needs`` name). A new *backend* also needs a
row in :data:`bcedge.backends.BACKENDS`; where ``--backend auto`` should place the new kind
is a row of :data:`AUTO_PREFERENCE` (unranked kinds come after the ranked ones).
``tests/test_formats.py`` then checks the row is buildable (its builder imports and takes
``(kind, context)``), loadable (its backend's module exists) and listed in the CLI help.

Standard library only (the runtime imports this on every start).

Why one module: the kinds, the precisions' tolerances, the alternate runtimes and the chooser are
one table read four ways (export, bundle validation, backends, ``--backend auto``); split up, each
reader would need the others' rows to stay consistent (a kind's backend, its precision's tolerance,
which runtimes may also read its file).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Collection, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from bcedge.errors import BackendError, BundleError, ConfigError

if TYPE_CHECKING:
    from bcedge.bundle import ArtifactRecord, Bundle


@dataclass(frozen=True)
class PrecisionSpec:
    """The accuracy allowed to one numeric precision (a row of :data:`PRECISION_SPECS`).

    Attributes:
        name: ``fp32`` | ``fp16`` | ``dynamic`` | ``int8`` (``ArtifactRecord.precision``).
        tolerance: largest Dice loss (reference minus artifact, per-image mean over lesion
            images) the export gate allows an artifact of this precision.
        output_tolerance: ``(max |p - p_keras|, mean |p - p_keras|)`` over every pixel of the
            probability maps on preprocessed images; tests hold every format to it (the gate
            itself judges Dice).
    """

    name: str
    tolerance: float
    output_tolerance: tuple[float, float]


#: Every precision bcedge knows, in listing order.
#: Dice tolerances: FP32/FP16 should reproduce the reference up to rounding; quantised models may
#: lose a little. Output tolerances: FP32 differs by float reordering only. FP16 rounds weights to
#: 11 significant bits. Dynamic range and INT8 quantise weights (and INT8 activations, output step
#: 1/256); near a steep sigmoid edge one pixel may move by a tenth (seen on the plain VGG19 encoder,
#: which has no batch norm), while the mean stays an order of magnitude below 0.01 on 64 px test
#: models (measured 0.0005-0.0016).
PRECISION_SPECS: dict[str, PrecisionSpec] = {
    p.name: p
    for p in (
        PrecisionSpec("fp32", 0.001, (1e-4, 1e-5)),
        PrecisionSpec("fp16", 0.001, (1e-2, 1e-3)),
        PrecisionSpec("dynamic", 0.01, (0.25, 0.01)),
        PrecisionSpec("int8", 0.01, (0.25, 0.01)),
    )
}

#: Arithmetic a runtime may compute an artifact in below the artifact's own precision (no artifact is
#: stored so; :data:`PRECISIONS` stays the manifest's list). OpenVINO runs FP16/FP32 ``.tflite`` files
#: in BF16 on CPUs with AVX-512 BF16 / AMX (:mod:`bcedge.backends.openvino`); the on-device acceptance
#: check then holds the run to BF16's tolerance, not the file's (:func:`acceptance_spec`). BF16 keeps 8
#: significant bits against FP16's 11, so its probability tolerances are FP16's times 2**3; the Dice
#: tolerance is the quantised precisions'. The acceptance check's mask Dice >= 0.98 against the reference
#: is the same for every precision.
COMPUTE_SPECS: dict[str, PrecisionSpec] = {"bf16": PrecisionSpec("bf16", 0.01, (8e-2, 8e-3))}


def acceptance_spec(precision: str, compute: str | None = None) -> PrecisionSpec:
    """The tolerances an artifact of ``precision`` is held to when a runtime computed it in ``compute``
    (``Backend.details["compute_precision"]``; None or a precision without a row here: the artifact's own)."""
    return COMPUTE_SPECS.get(compute or "") or PRECISION_SPECS[precision]


#: What a builder may ask its context for (``ArtifactKind.needs``).
NEEDS = ("keras_model", "saved_model", "onnx_model")


@dataclass(frozen=True)
class ArtifactKind:
    """One row of :data:`KINDS`: a kind of model file a bundle may hold.

    Attributes:
        name: ``bcedge export --formats`` value, e.g. ``tflite-int8`` (``keras`` is the
            reference, written unless ``--no-keras``).
        format: ``ArtifactRecord.format``: the file type (``tflite``, ``onnx``...).
        precision: ``ArtifactRecord.precision``, a key of :data:`PRECISION_SPECS`.
        file: file name in the bundle; TensorRT engines are named by :mod:`export.tensorrt`
            after the stem of this name, the TensorRT version and the GPU (engines are not portable).
        backend: registry name of the runtime backend that runs (and gates) it
            (:data:`bcedge.backends.BACKENDS`).
        builder: ``"module:function"`` that writes it, called as ``builder(kind, context)``
            and returning ``(file relative to the bundle, details for the manifest)``.
        needs: what the builder takes from its context, among :data:`NEEDS`.
        requires: importable modules the builder needs on the exporting machine.
        install: how to get ``requires`` (shown when one is missing).
        calibrated: needs calibration images (preprocessed training images).
        hardware: where it is built and runs.
        option: a ``--formats`` value of ``bcedge export`` (False for the Keras reference).
    """

    name: str
    format: str
    precision: str
    file: str
    backend: str
    builder: str
    needs: tuple[str, ...]
    requires: tuple[str, ...]
    install: str = "pip install 'bcedge[train]'"
    calibrated: bool = False
    hardware: str = "CPU"
    option: bool = True

    @property
    def tolerance(self) -> float:
        """Default Dice tolerance of the export gate (:data:`PRECISION_SPECS`)."""
        return PRECISION_SPECS[self.precision].tolerance

    @property
    def output_tolerance(self) -> tuple[float, float]:
        """``(max, mean)`` allowed probability difference from the Keras model (:data:`PRECISION_SPECS`)."""
        return PRECISION_SPECS[self.precision].output_tolerance


_TRT_INSTALL = "it ships with JetPack / NVIDIA's pip index"

#: Every artifact kind, in build order: the ONNX file is written before the TensorRT engines built from it.
KINDS: dict[str, ArtifactKind] = {
    k.name: k
    for k in (
        ArtifactKind(
            "keras", "keras", "fp32", "model.keras", "keras", "export.builders:build_keras",
            needs=("keras_model",), requires=("keras",), option=False,
        ),
        ArtifactKind(
            "tflite-fp32", "tflite", "fp32", "model_fp32.tflite", "tflite", "export.builders:build_tflite",
            needs=("saved_model",), requires=("tensorflow",),
        ),
        ArtifactKind(
            "tflite-fp16", "tflite", "fp16", "model_fp16.tflite", "tflite", "export.builders:build_tflite",
            needs=("saved_model",), requires=("tensorflow",),
        ),
        ArtifactKind(
            "tflite-dynamic", "tflite", "dynamic", "model_dynamic.tflite", "tflite", "export.builders:build_tflite",
            needs=("saved_model",), requires=("tensorflow",),
        ),
        ArtifactKind(
            "tflite-int8", "tflite", "int8", "model_int8.tflite", "tflite", "export.builders:build_tflite",
            needs=("saved_model",), requires=("tensorflow",), calibrated=True,
        ),
        ArtifactKind(
            "onnx", "onnx", "fp32", "model.onnx", "onnx", "export.builders:build_onnx",
            needs=("keras_model",), requires=("tensorflow", "tf2onnx", "onnx"),
        ),
        ArtifactKind(
            "onnx-int8", "onnx", "int8", "model_int8.onnx", "onnx", "export.builders:build_onnx_int8",
            needs=("onnx_model",), requires=("tensorflow", "tf2onnx", "onnx", "onnxruntime"),
            install="pip install 'bcedge[train,onnx]'", calibrated=True,
        ),
        ArtifactKind(
            "tensorrt-fp16", "tensorrt", "fp16", "model_fp16.engine", "tensorrt", "export.builders:build_tensorrt",
            needs=("onnx_model",), requires=("tensorrt",), install=_TRT_INSTALL, hardware="NVIDIA GPU",
        ),
        ArtifactKind(
            "tensorrt-int8", "tensorrt", "int8", "model_int8.engine", "tensorrt", "export.builders:build_tensorrt",
            needs=("onnx_model",), requires=("tensorrt",), install=_TRT_INSTALL, calibrated=True,
            hardware="NVIDIA GPU",
        ),
    )
}  # fmt: skip

#: Every ``ArtifactRecord.format`` a manifest may name, in table order.
FORMATS: tuple[str, ...] = tuple(dict.fromkeys(k.format for k in KINDS.values()))
#: Every ``ArtifactRecord.precision`` a manifest may name, in listing order.
PRECISIONS: tuple[str, ...] = tuple(PRECISION_SPECS)
#: ``bcedge export --formats`` values, in build order.
EXPORT_KINDS: tuple[str, ...] = tuple(name for name, k in KINDS.items() if k.option)


#: Artifacts a second runtime also runs, read from the same file: ``{(format, precision): (backend, ...)}``.
#: ``--backend auto`` measures each such (artifact, backend) pair as a candidate of its own (its own
#: acceptance check and timing, :func:`candidate_key`); ``--backend NAME`` picks among them too.
#: OpenVINO reads ``.tflite`` files (its TFLite frontend) and runs float models in BF16 on CPUs with
#: AVX-512 BF16 / AMX: the mass model's FP16 artifact at 18.6 ms per call against 36.5 for LiteRT's
#: dynamic INT8 (2-core Xeon, benchmarks/results/openvino_check.json). Only the float artifacts: on
#: the dynamic one it is no faster than on FP16 (19.6 ms) and agrees less; full INT8 in OpenVINO was
#: wrong on an AVX2 CPU (issue #14).
ALTERNATE_RUNTIMES: dict[tuple[str, str], tuple[str, ...]] = {
    ("tflite", "fp16"): ("openvino",),
    ("tflite", "fp32"): ("openvino",),
}


def backend_formats(backend: str) -> tuple[str, ...]:
    """The formats ``backend`` runs, in table order (``BackendSpec.formats``): its kinds' formats,
    then those it runs as an alternate runtime (:data:`ALTERNATE_RUNTIMES`)."""
    own = [k.format for k in KINDS.values() if k.backend == backend]
    alternate = [fmt for (fmt, _), names in ALTERNATE_RUNTIMES.items() if backend in names]
    return tuple(dict.fromkeys(own + alternate))


def alternate_backends() -> tuple[str, ...]:
    """Every backend named in :data:`ALTERNATE_RUNTIMES`, sorted."""
    return tuple(sorted({b for names in ALTERNATE_RUNTIMES.values() for b in names}))


def alternate_runtime(record: ArtifactRecord) -> bool:
    """Whether ``record`` is an :data:`ALTERNATE_RUNTIMES` copy (the file on a second runtime)."""
    return record.backend in ALTERNATE_RUNTIMES.get((record.format, record.precision), ())


def candidate_key(record: ArtifactRecord) -> str:
    """The name of one (artifact, backend) candidate: the file on its own backend, ``file@backend``
    on an alternate runtime (the choice's cache entries and reports are keyed by it)."""
    return f"{record.file}@{record.backend}" if alternate_runtime(record) else record.file


def runtime_candidates(artifacts: Sequence[ArtifactRecord]) -> list[ArtifactRecord]:
    """``artifacts`` (manifest order), each on its kind's own backend followed by a copy per
    :data:`ALTERNATE_RUNTIMES` backend (the same file, sha256 and gate; ``backend`` replaced)."""
    out: list[ArtifactRecord] = []
    for record in artifacts:
        out.append(record)
        if any(k.backend == record.backend for k in KINDS.values() if k.format == record.format):
            out += [replace(record, backend=b) for b in ALTERNATE_RUNTIMES.get((record.format, record.precision), ())]
    return out


def _found(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def build_availability(names: Collection[str] | None = None) -> dict[str, tuple[bool, str]]:
    """``{kind name: (buildable here, reason)}`` without importing TensorFlow or TensorRT.

    Args:
        names: kinds to check (default: every ``--formats`` value, :data:`EXPORT_KINDS`).
    """
    out: dict[str, tuple[bool, str]] = {}
    for name in EXPORT_KINDS if names is None else names:
        kind = KINDS[name]
        missing = [m for m in kind.requires if not _found(m)]
        builder_module = kind.builder.partition(":")[0]
        if missing:
            verb = "is" if len(missing) == 1 else "are"
            out[name] = (False, f"{', '.join(missing)} {verb} not installed: {kind.install}")
        elif not _found(builder_module):
            out[name] = (False, f"{builder_module} is missing from this bcedge")
        else:
            out[name] = (True, ", ".join(kind.requires))
    return out


def parse_filter(token: str) -> tuple[str, str]:
    """One ``bcedge benchmark --formats`` token as ``(format, precision)``, ``""`` meaning any.

    ``tflite`` -> ``("tflite", "")``; ``int8`` -> ``("", "int8")``; ``tflite/int8`` and the
    kind name ``tflite-int8`` -> ``("tflite", "int8")``.

    Raises:
        ConfigError: a format or precision this table does not know.
    """
    fmt, _, prec = token.strip().lower().replace("-", "/").partition("/")
    if fmt in PRECISIONS and not prec:
        fmt, prec = "", fmt
    if (fmt and fmt not in FORMATS) or (prec and prec not in PRECISIONS):
        raise ConfigError(
            f"format {token!r}; expected a format ({', '.join(FORMATS)}), a precision ({', '.join(PRECISIONS)}) "
            "or FORMAT/PRECISION such as tflite/int8"
        )
    return fmt, prec


def formats_help() -> str:
    """The ``bcedge benchmark --formats`` help: formats, precisions and FORMAT/PRECISION pairs."""
    return (
        f"Artifacts to measure, comma-separated: a format ({', '.join(FORMATS)}), a precision "
        f"({', '.join(PRECISIONS)}) or both (tflite/int8, tflite-int8); an alternate runtime "
        f"({', '.join(alternate_backends())}) adds the artifacts "
        "it also reads, run on it. Default: every artifact on its own backend."
    )


def export_formats_help() -> str:
    """The ``bcedge export --formats`` help: every kind ``bcedge export`` can build."""
    return f"Comma-separated: {', '.join(EXPORT_KINDS)} (default: every format buildable here)."


# --------------------------------------------------------------------------- choosing the artifact

#: Pseudo backend name for ``--backend auto``: onnxruntime with a GPU execution provider
#: (CUDA or TensorRT). :func:`bcedge.backends.auto_backend_names` adds it to the usable
#: names when onnxruntime has one; the artifact still runs on ``onnx``.
ONNX_GPU = "onnx-gpu"

#: ``--backend auto`` preference, best first: (availability key, artifact backend, artifact precision).
#: GPU paths first (a TensorRT engine, then onnxruntime on a GPU); then LiteRT on the CPU,
#: where INT8 with XNNPACK is the fastest and FP16 weights are the next smallest; then
#: onnxruntime on the CPU; the Keras reference last (desktop only, slowest to load).
#: Static, so not what decides on a device: :func:`bcedge.choice.ranking_for` measures the candidates
#: (acceptance check + timing) in this order and picks the fastest that agrees; this order decides
#: ties and ``BCEDGE_CHOICE=static`` runs.
AUTO_PREFERENCE: tuple[tuple[str, str, str], ...] = (
    ("tensorrt", "tensorrt", "int8"),
    ("tensorrt", "tensorrt", "fp16"),
    ("tensorrt", "tensorrt", "fp32"),
    (ONNX_GPU, "onnx", "fp16"),
    (ONNX_GPU, "onnx", "fp32"),
    (ONNX_GPU, "onnx", "int8"),
    (ONNX_GPU, "onnx", "dynamic"),
    ("tflite", "tflite", "int8"),
    ("tflite", "tflite", "fp16"),
    ("tflite", "tflite", "fp32"),
    ("tflite", "tflite", "dynamic"),
    ("openvino", "openvino", "fp16"),
    ("openvino", "openvino", "fp32"),
    ("onnx", "onnx", "fp32"),
    ("onnx", "onnx", "dynamic"),
    ("onnx", "onnx", "int8"),
    ("onnx", "onnx", "fp16"),
    ("keras", "keras", "fp32"),
    ("keras", "keras", "fp16"),
)

#: A ranking: ``rank(candidates, usable)`` -> the candidates that can run with the ``usable``
#: backend names, best first (those left out cannot run here).
Ranking = Callable[["Sequence[ArtifactRecord]", AbstractSet[str]], "list[ArtifactRecord]"]
#: The usable backend names here (plus :data:`ONNX_GPU`), or a function ``(probe_gpu) -> names``
#: called only when needed (probing onnxruntime for GPU providers imports it, ~0.2 s).
Available = AbstractSet[str] | Callable[[bool], AbstractSet[str]]


def preference_rank(candidates: Sequence[ArtifactRecord], usable: AbstractSet[str]) -> list[ArtifactRecord]:
    """Today's static ranking: the candidates in :data:`AUTO_PREFERENCE` order.

    A candidate is ranked at the first (key, backend, precision) row whose key is in
    ``usable`` and whose backend and precision it has (manifest order among equals).
    Candidates of a (backend, precision) missing from the table follow, in manifest order,
    when their backend is usable. Candidates that can run nowhere here are left out.

    Args:
        candidates: artifact records, in manifest order.
        usable: backend names usable here, plus :data:`ONNX_GPU`.
    """
    ranked: list[ArtifactRecord] = []
    seen: set[int] = set()  # by identity: two records may be equal field by field
    for key, backend, precision in AUTO_PREFERENCE:
        if key in usable:
            for r in candidates:
                if r.backend == backend and r.precision == precision and id(r) not in seen:
                    ranked.append(r)
                    seen.add(id(r))
    listed = {(b, p) for _, b, p in AUTO_PREFERENCE}
    ranked += [r for r in candidates if (r.backend, r.precision) not in listed and r.backend in usable]
    return ranked


class RefusedError(BundleError):
    """Every candidate artifact failed the on-device acceptance check (or failed to run) here.

    Raised by a ranking (:func:`bcedge.choice.ranking_for`); :func:`choose_artifact` lets it through
    instead of trying artifacts whose gate was not measured. Exit code 3.
    """


@dataclass(frozen=True)
class Choice:
    """What :func:`choose_artifact` picked.

    Attributes:
        record: the artifact to run.
        warnings: one-line notes for the user (e.g. its accuracy gate was not measured).
    """

    record: ArtifactRecord
    warnings: tuple[str, ...] = field(default_factory=tuple)


def _usable(available: Available, probe_gpu: bool) -> AbstractSet[str]:
    return available(probe_gpu) if callable(available) else available


def _best(bundle: Bundle, usable: AbstractSet[str], rank: Ranking, allow_unmeasured: bool = False) -> ArtifactRecord:
    """The first of ``rank``'s order among the gated artifacts; BundleError saying why each was skipped."""
    gates = ("passed", "not-measured") if allow_unmeasured else ("passed",)
    artifacts = bundle.manifest.artifacts
    ranked = rank(runtime_candidates([a for a in artifacts if a.gate in gates]), usable)
    if ranked:
        return ranked[0]
    skipped = "; ".join(
        f"{a.format}/{a.precision} on {a.backend}: "
        + (f"gate {a.gate}" if a.gate not in gates else f"backend {a.backend} not available")
        for a in artifacts
    )
    have = ", ".join(sorted(usable)) or "none"
    raise BundleError(f"bundle {bundle.dir} has no usable artifact (available backends: {have}): {skipped}")


def _holds(bundle: Bundle) -> str:
    return ", ".join(a.describe() for a in bundle.manifest.artifacts) or "nothing"


def choose_artifact(
    bundle: Bundle,
    backend: str,
    available: Available,
    *,
    known: Collection[str],
    artifact: ArtifactRecord | str | None = None,
    rank: Ranking = preference_rank,
) -> Choice:
    """The artifact of ``bundle`` to run for ``--backend backend`` (the one chooser).

    * ``artifact`` given: that record, or the one it names (:func:`candidate_key`: the file, or
      ``file@backend`` for an :data:`ALTERNATE_RUNTIMES` one).
    * ``auto``: the best-ranked artifact whose accuracy gate passed, among those a usable
      backend runs (``available`` is probed for GPU providers only when the bundle holds an
      onnx artifact).
    * a backend name: the best-ranked artifact of that backend whose gate passed, else the
      best one not measured (with a warning); its library need not be installed (opening
      says so). For ``onnx`` the GPU order applies when onnxruntime has a GPU provider.

    Args:
        bundle: the loaded bundle.
        backend: ``auto`` or a name in ``known``.
        available: usable backend names (:func:`bcedge.backends.auto_backend_names`, which may be
            passed itself so the GPU probe runs only when needed).
        known: every backend name bcedge knows (:data:`bcedge.backends.BACKENDS`).
        artifact: run this artifact instead of choosing one.
        rank: the ranking (default :func:`preference_rank`, today's static order).

    Raises:
        BackendError: ``backend`` is not a string, or not ``auto`` nor a known name.
        BundleError: ``artifact`` is not in the bundle, or no artifact qualifies (the message
            says what was skipped and why).
    """
    if artifact is not None:
        if not isinstance(artifact, str):
            return Choice(artifact)
        for record in runtime_candidates(bundle.manifest.artifacts):
            if candidate_key(record) == artifact:
                return Choice(record)
        raise BundleError(f"bundle {bundle.dir} has no artifact {artifact!r}; it holds {_holds(bundle)}")
    if not isinstance(backend, str):
        raise BackendError(f"backend is {backend!r}; expected 'auto' or a backend name")
    if backend == "auto":
        probe = any(a.backend == "onnx" for a in bundle.manifest.artifacts)
        return Choice(_best(bundle, _usable(available, probe), rank))
    if backend not in known:
        raise BackendError(f"unknown backend {backend!r}; expected one of {', '.join(known)} (or auto)")
    names: AbstractSet[str] = {backend}
    if backend == "onnx":
        # onnxruntime on a GPU prefers the fp16 artifact, on the CPU the fp32 one (AUTO_PREFERENCE).
        names = set(_usable(available, True)) & {"onnx", ONNX_GPU} or names
    try:
        return Choice(_best(bundle, names, rank))
    except RefusedError:
        raise  # the artifacts ran here and disagreed with the reference: no fallback to unmeasured ones
    except BundleError:
        pass
    if any(a.backend == backend and a.gate == "not-measured" for a in bundle.manifest.artifacts):
        record = _best(bundle, names, rank, allow_unmeasured=True)
        return Choice(record, (f"{record.file}: accuracy gate not measured at export; its Dice is unknown",))
    raise BundleError(
        f"bundle {bundle.dir} has no {backend} artifact that passed its accuracy gate; it holds {_holds(bundle)}"
    )


__all__ = [
    "ALTERNATE_RUNTIMES",
    "AUTO_PREFERENCE",
    "COMPUTE_SPECS",
    "EXPORT_KINDS",
    "FORMATS",
    "KINDS",
    "NEEDS",
    "ONNX_GPU",
    "PRECISIONS",
    "PRECISION_SPECS",
    "ArtifactKind",
    "Choice",
    "PrecisionSpec",
    "Ranking",
    "RefusedError",
    "acceptance_spec",
    "alternate_backends",
    "alternate_runtime",
    "backend_formats",
    "build_availability",
    "candidate_key",
    "choose_artifact",
    "export_formats_help",
    "formats_help",
    "parse_filter",
    "preference_rank",
    "runtime_candidates",
]
