"""Model bundles: a directory with ``manifest.json`` and the artifacts it lists.

A bundle is the unit the runtime loads (DESIGN.md, invariant 3)::

    my-model/
      manifest.json          schema version, model, input/output, preprocessing, threshold,
                             provenance and one record per artifact (file, format, precision,
                             backend, sha256, size, Dice measured at export, gate)
      model.keras            the Keras reference
      model_fp32.tflite ...  exported artifacts

The runtime refuses a bundle whose manifest is missing, malformed or of an
unknown schema, whose preprocessing config does not hash to the recorded
``preprocess_hash``, or whose artifact bytes do not match the recorded size
and SHA-256 (:meth:`Bundle.artifact_path`).

Runtime-light: only the standard library here; :mod:`bcedge.preprocess` is
imported where the config is checked.

Why one module: the manifest's records, their validation, reading and writing, and the verified
loading of artifact bytes are one format; the checks a writer makes must be the reader's (a
bundle that is written must load), so they live beside each other.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from bcedge import __version__
from bcedge.errors import BcedgeError, BundleError, first_line
from bcedge.formats import FORMATS, PRECISIONS

if TYPE_CHECKING:
    from bcedge.backends.base import Backend
    from bcedge.preprocess import PreprocessConfig

#: Version of the manifest layout this bcedge reads and writes.
SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"

GATES = ("passed", "failed", "not-measured")
#: Manifest keys a bundle may leave out (added after schema 1; absent means "none").
OPTIONAL_MANIFEST_KEYS = ("acceptance",)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20
#: Largest manifest read (a real one is a few kB; this bounds a hostile one's parse).
MAX_MANIFEST_BYTES = 4 << 20


def utc_now() -> str:
    """Current time as ISO 8601 UTC with seconds, e.g. ``2025-01-31T12:00:00Z``."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def io_specs(size: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The manifest ``input`` and ``output`` entries of a bcedge model of side ``size``.

    Returns:
        ``(input, output)``: a (1, size, size, 1) float32 NHWC image in [0, 1] named
        ``image`` and a (1, size, size, 1) float32 sigmoid probability map named ``mask``.
    """
    shape = [1, int(size), int(size), 1]
    return (
        {"name": "image", "shape": shape, "dtype": "float32", "layout": "NHWC", "range": [0.0, 1.0]},
        {"name": "mask", "shape": list(shape), "dtype": "float32", "range": [0.0, 1.0], "activation": "sigmoid"},
    )


# --------------------------------------------------------------------------- records


@dataclass
class ArtifactRecord:
    """One exported model file of a bundle and what was measured on it.

    Attributes:
        file: path relative to the bundle directory (POSIX separators), e.g. ``model_int8.tflite``.
        format: one of :data:`bcedge.formats.FORMATS` (``keras`` | ``tflite`` | ``onnx`` | ``tensorrt``).
        precision: one of :data:`bcedge.formats.PRECISIONS` (``fp32`` | ``fp16`` | ``dynamic`` | ``int8``).
        backend: registry name of the backend that runs it (:data:`bcedge.backends.BACKENDS`).
        sha256: hex SHA-256 of the file's bytes.
        size_bytes: file size in bytes.
        metrics: measured at export on the evaluation split:
            ``{"dice", "iou", "n_images", "reference_dice", "delta_dice"}``.
        gate: ``passed`` | ``failed`` | ``not-measured`` (accuracy gate against the reference).
        tolerance: largest Dice loss the gate allowed, or None when not measured.
        details: free-form (input/output dtypes, quantisation parameters, float ops left,
            TensorRT version and GPU, build time, ...).
    """

    file: str
    format: str
    precision: str
    backend: str
    sha256: str
    size_bytes: int
    metrics: dict[str, Any] = field(default_factory=dict)
    gate: str = "not-measured"
    tolerance: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_file(
        cls, bundle_dir: str | os.PathLike[str], file: str, *, format: str, precision: str, backend: str, **kwargs: Any
    ) -> ArtifactRecord:
        """Record ``bundle_dir/file`` with its current size and SHA-256 (``kwargs``: the other fields)."""
        path = Path(bundle_dir) / file
        if not path.is_file():
            raise BundleError(f"artifact {path} does not exist")
        record = cls(
            file=PurePosixPath(Path(file)).as_posix(),
            format=format,
            precision=precision,
            backend=backend,
            sha256=sha256_file(path),
            size_bytes=path.stat().st_size,
            **kwargs,
        )
        _check_artifact(record, "artifact")
        return record

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str = "artifact") -> ArtifactRecord:
        """Rebuild a record from :meth:`to_dict` output; BundleError naming a missing or bad key."""
        _require_mapping(data, where)
        _check_keys(data, [f.name for f in fields(cls)], where)
        record = cls(**{f.name: data[f.name] for f in fields(cls)})
        _check_artifact(record, where)
        return record

    def describe(self) -> str:
        """Short label, e.g. ``tflite/int8 (model_int8.tflite)``."""
        return f"{self.format}/{self.precision} on {self.backend} ({self.file})"


@dataclass(kw_only=True)
class Manifest:
    """Everything the runtime needs to know about a bundle (``manifest.json``).

    Construct with keywords; ``schema_version``, ``bcedge_version``, ``created``,
    ``threshold``, ``provenance`` and ``artifacts`` have defaults.

    Attributes:
        schema_version: :data:`SCHEMA_VERSION`.
        bcedge_version: version of bcedge that wrote the manifest.
        created: ISO 8601 UTC time of writing.
        model: ``{"name", "architecture", "params"}``.
        input: ``{"name", "shape": [1, S, S, 1], "dtype": "float32", "layout": "NHWC", "range": [0, 1]}``.
        output: ``{"name", "shape": [1, S, S, 1], "dtype": "float32", "range": [0, 1], "activation": "sigmoid"}``.
        preprocess: :meth:`bcedge.preprocess.PreprocessConfig.to_dict` of the training config.
        preprocess_hash: its :meth:`~bcedge.preprocess.PreprocessConfig.hash`; checked on load.
        threshold: probability at or above which a pixel is foreground, in (0, 1).
        provenance: training run, data, split, epochs, best epoch, Keras backend, machine, eval split...
        artifacts: one :class:`ArtifactRecord` per file.
        acceptance: the on-device acceptance data (:mod:`bcedge.acceptance`): ``{"file", "sha256",
            "size_bytes", "min_dice", "input_levels", "probability_levels", "n_images", "source",
            "reference", ...}``, or None for a bundle without it (optional key: left out of
            ``manifest.json`` when None, so bundles without it read as before).
    """

    schema_version: int = SCHEMA_VERSION
    bcedge_version: str = __version__
    created: str = field(default_factory=utc_now)
    model: dict[str, Any]
    input: dict[str, Any]
    output: dict[str, Any]
    preprocess: dict[str, Any]
    preprocess_hash: str
    threshold: float = 0.5
    provenance: dict[str, Any] = field(default_factory=dict)
    artifacts: list[ArtifactRecord] = field(default_factory=list)
    acceptance: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (artifacts as dicts; ``acceptance`` only when set)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["artifacts"] = [a.to_dict() for a in self.artifacts]
        if out["acceptance"] is None:
            del out["acceptance"]
        return out

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        """Rebuild and validate a manifest from :meth:`to_dict` output (or parsed ``manifest.json``).

        Raises:
            BundleError: unknown ``schema_version``, a missing or malformed key, an invalid
                artifact record, or a preprocessing config that does not hash to ``preprocess_hash``.
        """
        _require_mapping(data, "manifest")
        if "schema_version" not in data:
            raise BundleError("manifest has no 'schema_version'; not a bcedge bundle manifest")
        version = data["schema_version"]
        if isinstance(version, bool) or not isinstance(version, int) or version != SCHEMA_VERSION:
            raise BundleError(
                f"unknown schema_version {version!r} in manifest; this bcedge ({__version__}) reads schema "
                f"{SCHEMA_VERSION} (upgrade bcedge or re-export the bundle)"
            )
        names = [f.name for f in fields(cls)]
        _check_keys(data, names, "manifest", optional=OPTIONAL_MANIFEST_KEYS)
        for key in ("model", "input", "output", "preprocess", "provenance"):
            _require_mapping(data[key], f"manifest '{key}'")
        if not isinstance(data["artifacts"], list):
            raise BundleError(f"manifest 'artifacts' is {type(data['artifacts']).__name__}; expected a list")
        artifacts = [ArtifactRecord.from_dict(a, f"manifest artifact #{i}") for i, a in enumerate(data["artifacts"])]
        kwargs = {k: data[k] for k in names if k != "artifacts" and k in data}
        manifest = cls(**kwargs, artifacts=artifacts)
        manifest.validate()
        return manifest

    def validate(self) -> None:
        """Check shapes, threshold and the preprocessing hash; BundleError naming the first problem."""
        for key in ("bcedge_version", "created", "preprocess_hash"):
            if not isinstance(getattr(self, key), str):
                raise BundleError(f"manifest '{key}' is {getattr(self, key)!r}; expected a string")
        size = _check_io(self.input, "input")
        out_size = _check_io(self.output, "output")
        if out_size != size:
            raise BundleError(
                f"manifest output shape {self.output['shape']} does not match input shape {self.input['shape']}"
            )
        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 < t < 1.0:
            raise BundleError(f"manifest 'threshold' is {t!r}; expected a number in (0, 1)")
        config = _preprocess_config(self.preprocess)
        if config.hash() != self.preprocess_hash:
            raise BundleError(
                f"manifest preprocess config hashes to {config.hash()} but 'preprocess_hash' is "
                f"{self.preprocess_hash!r}; the config was edited or the bundle is corrupt"
            )
        if config.size != size:
            raise BundleError(f"manifest input side {size} differs from the preprocess size {config.size}")
        if not self.artifacts:
            raise BundleError("manifest lists no artifacts")
        if self.acceptance is not None:
            _check_acceptance(self.acceptance)


# --------------------------------------------------------------------------- read / write


def write_manifest(bundle_dir: str | os.PathLike[str], manifest: Manifest) -> Path:
    """Validate ``manifest`` and write ``bundle_dir/manifest.json`` atomically (sorted keys, indent 2).

    Raises:
        BundleError: the manifest is invalid (see :meth:`Manifest.from_dict`) or holds NaN/inf.
    """
    from bcedge.imageio import atomic_write_bytes

    data = manifest.to_dict()
    Manifest.from_dict(data)  # the same checks the reader makes: never write what load_bundle refuses
    try:
        text = json.dumps(data, sort_keys=True, indent=2, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise BundleError(f"manifest is not plain JSON: {exc}") from exc
    return atomic_write_bytes(Path(bundle_dir) / MANIFEST_NAME, (text + "\n").encode("utf-8"))


def load_bundle(bundle_dir: str | os.PathLike[str]) -> Bundle:
    """Read and validate a bundle's manifest (``bundle_dir`` or its ``manifest.json``).

    Artifact bytes are checked later, by :meth:`Bundle.artifact_path`, only for the
    artifact that is used.

    Raises:
        BundleError: missing directory or manifest, bad JSON, unknown schema, invalid manifest.
    """
    path = Path(bundle_dir)
    if path.name == MANIFEST_NAME and path.is_file():
        path = path.parent
    if not path.exists():
        raise BundleError(f"bundle {path} does not exist")
    if not path.is_dir():
        raise BundleError(f"bundle {path} is not a directory (a bundle is a folder holding {MANIFEST_NAME})")
    manifest_path = path / MANIFEST_NAME
    if not manifest_path.is_file():
        raise BundleError(f"{path} has no {MANIFEST_NAME}; not a bcedge bundle (create one with 'bcedge export')")
    try:
        size = manifest_path.stat().st_size
        if size > MAX_MANIFEST_BYTES:
            raise BundleError(f"{manifest_path} is {size} bytes; a manifest is at most {MAX_MANIFEST_BYTES} bytes")
        data = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"cannot read {manifest_path}: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise BundleError(f"{manifest_path} is not valid JSON: {exc}") from exc
    except (RecursionError, ValueError) as exc:  # nesting deeper than the parser's stack; huge numbers
        raise BundleError(f"{manifest_path} is not a usable manifest: {first_line(exc)}") from exc
    try:
        manifest = Manifest.from_dict(data)
    except BundleError as exc:
        raise BundleError(f"{manifest_path}: {exc}") from exc
    except Exception as exc:  # a value of a type the checks did not foresee
        raise BundleError(f"{manifest_path}: invalid manifest ({type(exc).__name__}: {first_line(exc)})") from exc
    return Bundle(path, manifest)


class Bundle:
    """A loaded bundle: its directory and validated :class:`Manifest`."""

    def __init__(self, bundle_dir: str | os.PathLike[str], manifest: Manifest) -> None:
        self.dir = Path(bundle_dir)
        self.manifest = manifest

    def __repr__(self) -> str:
        kinds = ", ".join(f"{a.format}/{a.precision}" for a in self.manifest.artifacts)
        return f"Bundle({str(self.dir)!r}, model={self.manifest.model.get('name')!r}, artifacts=[{kinds}])"

    @property
    def digest(self) -> str:
        """Hex SHA-256 of the manifest's canonical JSON: names this bundle (its artifacts' hashes are
        inside), e.g. as the key of the artifact choice cached per machine (:mod:`bcedge.choice`)."""
        text = json.dumps(self.manifest.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    @property
    def input_size(self) -> int:
        """Side S of the square (N, S, S, 1) model input."""
        return int(self.manifest.input["shape"][1])

    @property
    def threshold(self) -> float:
        """Default probability threshold of the bundle."""
        return float(self.manifest.threshold)

    def preprocess_config(self) -> PreprocessConfig:
        """The frozen preprocessing config the model was trained with."""
        return _preprocess_config(self.manifest.preprocess)

    def artifact(
        self, format: str | None = None, precision: str | None = None, backend: str | None = None
    ) -> ArtifactRecord:
        """The first artifact (manifest order) matching every given field.

        Raises:
            BundleError: none matches; the message lists what the bundle holds.
        """
        for record in self.manifest.artifacts:
            if (
                (format is None or record.format == format)
                and (precision is None or record.precision == precision)
                and (backend is None or record.backend == backend)
            ):
                return record
        wanted = ", ".join(f"{k}={v}" for k, v in (("format", format), ("precision", precision), ("backend", backend)))
        raise BundleError(f"bundle {self.dir} has no artifact with {wanted or 'any fields'}; it holds {self._list()}")

    def _artifact_location(self, record: ArtifactRecord) -> Path:
        return self.dir.joinpath(*PurePosixPath(record.file).parts)

    def _artifact_file(self, record: ArtifactRecord) -> Path:
        path = self._artifact_location(record)
        if not path.is_file():
            raise BundleError(f"bundle {self.dir} lists {record.file} but the file is missing")
        return path

    def read_artifact(self, record: ArtifactRecord, verify: bool = True) -> bytes:
        """``record``'s file bytes, read once; with ``verify``, checked against the manifest's size and SHA-256.

        The bytes returned are the bytes hashed: give them to the runtime
        (:meth:`open` does), never the path again, so a file swapped after the check is not
        what runs.

        Raises:
            BundleError: the file is missing or unreadable, or its bytes differ from the manifest.
        """
        path = self._artifact_file(record)
        try:
            with open(path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                if verify and size != record.size_bytes:
                    raise BundleError(
                        self._tampered(path, f"is {size} bytes but the manifest records {record.size_bytes}")
                    )
                # One byte more than expected: a file that grew since fstat shows up as too long.
                data = fh.read(record.size_bytes + 1) if verify else fh.read()
        except OSError as exc:
            raise BundleError(f"cannot read {path}: {exc.strerror or exc}") from exc
        if verify:
            if len(data) != record.size_bytes:
                raise BundleError(
                    self._tampered(path, f"gave {len(data)} bytes but the manifest records {record.size_bytes}")
                )
            digest = hashlib.sha256(data).hexdigest()
            if digest != record.sha256:
                raise BundleError(
                    self._tampered(
                        path, f"has SHA-256 {digest[:12]}... but the manifest records {record.sha256[:12]}..."
                    )
                )
        return data

    @staticmethod
    def _tampered(path: Path, what: str) -> str:
        return f"{path} {what}: the artifact was tampered with or truncated (re-export or re-copy the bundle)"

    def artifact_path(self, record: ArtifactRecord, verify: bool = True) -> Path:
        """Path of ``record``'s file, after checking it exists and (``verify``) its size and SHA-256.

        For reports and tools that need a path; to run the model use :meth:`open`, which loads
        the verified bytes themselves (a path can be swapped between the check and the load).

        Raises:
            BundleError: the file is missing, outside the bundle, or its bytes differ from the manifest.
        """
        path = self._artifact_file(record)
        if verify:
            size = path.stat().st_size
            if size != record.size_bytes:
                raise BundleError(
                    f"{path} is {size} bytes but the manifest records {record.size_bytes}: "
                    "the artifact was tampered with or truncated (re-export or re-copy the bundle)"
                )
            digest = sha256_file(path)
            if digest != record.sha256:
                raise BundleError(
                    f"{path} has SHA-256 {digest[:12]}... but the manifest records {record.sha256[:12]}...: "
                    "the artifact was tampered with or truncated (re-export or re-copy the bundle)"
                )
        return path

    def open(self, record: ArtifactRecord, *, verify: bool = True, **options: Any) -> Backend:
        """Read ``record``'s bytes once, verify them, and open the backend on those bytes (``options``:
        threads, providers, ...). The file is not opened again by path (see :meth:`read_artifact`)."""
        from bcedge.backends import open_backend

        content = self.read_artifact(record, verify=verify)
        # The path only names the model in messages and reports from here on.
        return open_backend(record.backend, self._artifact_location(record), content=content, **options)

    def _list(self) -> str:
        return ", ".join(a.describe() for a in self.manifest.artifacts) or "nothing"


# --------------------------------------------------------------------------- validation helpers


def _require_mapping(value: Any, where: str) -> None:
    if not isinstance(value, dict):
        raise BundleError(f"{where} is {type(value).__name__}; expected a JSON object")


def _check_keys(data: dict[str, Any], names: list[str], where: str, optional: tuple[str, ...] = ()) -> None:
    missing = [k for k in names if k not in data and k not in optional]
    if missing:
        raise BundleError(f"{where} has no '{missing[0]}'" + (f" (also missing: {missing[1:]})" if missing[1:] else ""))
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise BundleError(f"{where} has unknown key(s) {unknown}; schema {SCHEMA_VERSION} allows {sorted(names)}")


def _check_artifact(record: ArtifactRecord, where: str) -> None:
    rel = record.file
    if not isinstance(rel, str) or not rel or "\\" in rel:
        raise BundleError(f"{where} 'file' is {rel!r}; expected a relative path with '/' separators")
    parts = PurePosixPath(rel).parts
    if PurePosixPath(rel).is_absolute() or ".." in parts or re.match(r"^[A-Za-z]:", rel):
        raise BundleError(f"{where} 'file' is {rel!r}; artifacts must lie inside the bundle directory")
    for key, allowed in (("format", FORMATS), ("precision", PRECISIONS), ("gate", GATES)):
        if getattr(record, key) not in allowed:
            raise BundleError(f"{where} '{key}' is {getattr(record, key)!r}; expected one of {', '.join(allowed)}")
    if not isinstance(record.backend, str) or not record.backend:
        raise BundleError(f"{where} 'backend' is {record.backend!r}; expected a backend name")
    if not isinstance(record.sha256, str) or not _SHA256.match(record.sha256):
        raise BundleError(f"{where} 'sha256' is {record.sha256!r}; expected 64 lowercase hex digits")
    size = record.size_bytes
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise BundleError(f"{where} 'size_bytes' is {size!r}; expected a non-negative integer")
    for key in ("metrics", "details"):
        _require_mapping(getattr(record, key), f"{where} '{key}'")
    tol = record.tolerance
    if tol is not None and (isinstance(tol, bool) or not isinstance(tol, (int, float)) or tol < 0):
        raise BundleError(f"{where} 'tolerance' is {tol!r}; expected null or a non-negative number")


def _check_acceptance(entry: Any) -> None:
    """The manifest's ``acceptance`` entry: a file inside the bundle with its size and SHA-256."""
    _require_mapping(entry, "manifest 'acceptance'")
    rel = entry.get("file")
    if not isinstance(rel, str) or not rel or "\\" in rel or "/" in rel or rel in (".", ".."):
        raise BundleError(f"manifest 'acceptance' 'file' is {rel!r}; expected a file name inside the bundle")
    if not isinstance(entry.get("sha256"), str) or not _SHA256.match(entry["sha256"]):
        raise BundleError(
            f"manifest 'acceptance' 'sha256' is {entry.get('sha256')!r}; expected 64 lowercase hex digits"
        )
    size = entry.get("size_bytes")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise BundleError(f"manifest 'acceptance' 'size_bytes' is {size!r}; expected a positive integer")


def _check_io(spec: dict[str, Any], key: str) -> int:
    shape = spec.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) != 4
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in shape)
        or shape[1] != shape[2]
        or shape[3] != 1
    ):
        raise BundleError(f"manifest {key} 'shape' is {shape!r}; expected [N, S, S, 1] (NHWC, one channel)")
    if spec.get("dtype", "float32") != "float32":
        raise BundleError(f"manifest {key} 'dtype' is {spec.get('dtype')!r}; every bcedge backend takes float32")
    return int(shape[1])


def _preprocess_config(data: dict[str, Any]) -> PreprocessConfig:
    from bcedge.preprocess import PreprocessConfig

    try:
        return PreprocessConfig.from_dict(data)
    except BcedgeError as exc:
        raise BundleError(f"manifest 'preprocess': {exc}") from exc
