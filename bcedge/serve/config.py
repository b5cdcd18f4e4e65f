"""The ``serve.toml`` file: dataclasses with defaults, loading, validation and a description.

Every mistake a user can make in the file raises :class:`~bcedge.errors.ConfigError` with one
line naming the file, the ``[section] key``, what was found and what was expected. Relative
paths are resolved against the folder holding the config file, so a config and its
certificates can move together.

Why one module: every ``serve.toml`` setting with its default, description and check, so a key
is defined, documented and validated in one place.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from bcedge.errors import ConfigError

#: Output kinds the worker can write; ``seg`` is always written (it is what the node sends).
OUTPUT_KINDS = ("seg", "json", "overlay", "mask")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

_AE_CHARS = set(" !\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[]^_`abcdefghijklmnopqrstuvwxyz{|}~")


@dataclass
class NodeConfig:
    """``[node]``: the listening Storage SCP.

    Attributes:
        ae_title: the node's AE title (1-16 characters, no backslash or control characters).
        bind: address to listen on (``0.0.0.0`` all IPv4 interfaces, ``127.0.0.1`` local only).
        port: TCP port (1-65535; 0 picks a free port, for tests).
        allowed_calling_ae_titles: calling AE titles accepted at association; others are rejected
            (A-ASSOCIATE-RJ, "calling AE title not recognised"). Must not be empty unless
            ``allow_any_calling_ae_title`` is true.
        allow_any_calling_ae_title: accept every caller (for a closed test network only).
        allowed_addresses: optional IP addresses or networks (``10.1.2.0/24``); a connection from
            elsewhere is closed before association. Empty: any address (the AE list still applies).
        max_associations: associations served at once.
        acse_timeout_s / dimse_timeout_s / network_timeout_s: pynetdicom timeouts (seconds).
        max_pdu: maximum PDU length the node receives (0: unlimited).
        handshake_timeout_s: a connection that has not sent its association request (and finished
            its TLS handshake) within this many seconds is closed; until then it holds no
            association slot, so idle connections cannot lock real senders out.
        max_pending_connections: connections waiting for their association request at once; more
            are closed at once.
        max_dataset_mb: largest dataset (as received, and a deflated one once inflated) the node
            keeps; a larger one is answered 0xA700. The default fits a 100-megapixel 16-bit image,
            the reader's own size limit, with room for its header.
    """

    ae_title: str = "BCEDGE"
    bind: str = "0.0.0.0"
    port: int = 11112
    allowed_calling_ae_titles: list[str] = field(default_factory=list)
    allow_any_calling_ae_title: bool = False
    allowed_addresses: list[str] = field(default_factory=list)
    max_associations: int = 8
    acse_timeout_s: float = 30.0
    dimse_timeout_s: float = 60.0
    network_timeout_s: float = 60.0
    max_pdu: int = 65536
    handshake_timeout_s: float = 5.0
    max_pending_connections: int = 64
    max_dataset_mb: int = 256


@dataclass
class StorageConfig:
    """``[storage]``: where scans and results live (one file system, so moves are atomic).

    Attributes:
        root: folder holding ``spool/``, ``outbox/``, ``done/``, ``quarantine/`` and ``state.json``.
        min_free_mb: a C-STORE is refused with 0xA700 (out of resources) when the spool's file
            system would keep less than this many MiB free after storing the scan.
        done_retention_days: delivered items older than this are deleted from ``done/`` (0: keep).
        done_max_items: at most this many delivered items are kept, oldest deleted first (0: no cap).
        max_process_attempts: a scan whose processing failed, or was cut short by a worker process
            that died or a node that was killed, this many times is quarantined (at the latest
            when the node starts again) instead of being retried for ever.
    """

    root: Path = Path("/var/lib/bcedge")
    min_free_mb: int = 500
    done_retention_days: float = 7.0
    done_max_items: int = 10000
    max_process_attempts: int = 2


@dataclass
class WorkerConfig:
    """``[worker]``: the processes that decode and segment scans (untrusted pixels never touch the node).

    Attributes:
        processes: worker processes, each with the model loaded once; a scan that hangs one of
            them does not hold back the scans the others take.
        timeout_s: wall-clock seconds one scan may take (decode, segment, write); a worker over it
            is killed and the scan quarantined (``reason.txt`` names the limit).
        memory_mb: address space (``RLIMIT_AS``, MiB) a worker may add to its size once its model
            is loaded; an allocation beyond it fails, the scan is quarantined and the worker replaced.
            The default is 5.4x the measured peak of a 28-megapixel scan (377 MiB with the demo
            model; benchmarks/bench_worker_memory.py).
            0: no limit.
    """

    processes: int = 2
    timeout_s: float = 60.0
    memory_mb: int = 2048


@dataclass
class ModelConfig:
    """``[model]``: the Segmenter the worker runs (as ``bcedge infer``).

    Attributes:
        bundle: model bundle folder; None: the bundled real-data model (bcedge/mass_model).
        backend: ``auto`` or a backend name (``tflite``, ``onnx``, ``tensorrt``, ``keras``).
        threads: CPU threads for the backend of each worker; None: the usable CPUs divided among
            the ``[worker] processes`` (:attr:`ServeConfig.model_threads`).
        threshold / min_area_mm2: override the bundle's values; None: the bundle's.
        outputs: output kinds written to the outbox; ``seg`` is always included and is the only
            one sent to PACS (the others stay with the item, for audit).
    """

    bundle: Path | None = None
    backend: str = "auto"
    threads: int | None = None
    threshold: float | None = None
    min_area_mm2: float | None = None
    outputs: list[str] = field(default_factory=lambda: ["seg"])


@dataclass
class ClientTLSConfig:
    """``[destination.tls]``: TLS towards PACS.

    Attributes:
        enabled: use TLS for the outgoing association.
        ca: CA bundle that signs PACS's certificate; None: the system's trust store.
        cert / key: the node's client certificate and key, when PACS asks for one.
        server_hostname: name checked against PACS's certificate; None: ``destination.host``.
        check_hostname: verify the certificate's host name.
    """

    enabled: bool = False
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_hostname: str | None = None
    check_hostname: bool = True


@dataclass
class DestinationConfig:
    """``[destination]``: the PACS that receives the SEGs.

    Attributes:
        ae_title / host / port: PACS's called AE title and address.
        calling_ae_title: the node's AE title towards PACS; None: ``node.ae_title``.
        max_attempts: consecutive failed sends after which an item is marked failed (a
            ``reason.txt`` is written next to it; it stays in the outbox).
        backoff_initial_s / backoff_max_s: the wait after the n-th failure is
            ``min(backoff_max_s, backoff_initial_s * 2 ** (n - 1))``.
        retry_failed_every_s: items marked failed are tried again this often, at every start,
            and as soon as any other item is delivered (PACS is back) (0: only at start and on
            a delivery).
        timeout_s: connection, ACSE and DIMSE timeout of the outgoing association.
        batch_size: items sent per association.
    """

    ae_title: str = "PACS"
    host: str = "127.0.0.1"
    port: int = 104
    calling_ae_title: str | None = None
    max_attempts: int = 8
    backoff_initial_s: float = 5.0
    backoff_max_s: float = 600.0
    retry_failed_every_s: float = 3600.0
    timeout_s: float = 30.0
    batch_size: int = 16
    tls: ClientTLSConfig = field(default_factory=ClientTLSConfig)


@dataclass
class TLSConfig:
    """``[tls]``: DICOM TLS on the listening port.

    Attributes:
        enabled: wrap every incoming connection in TLS.
        cert / key: the node's certificate chain and private key (PEM).
        ca: CA bundle that signs the callers' certificates (needed when ``require_client_cert``).
        require_client_cert: refuse a TLS caller without a certificate signed by ``ca``.
    """

    enabled: bool = False
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    require_client_cert: bool = True


@dataclass
class LoggingConfig:
    """``[logging]``.

    Attributes:
        level: ``DEBUG``, ``INFO``, ``WARNING`` or ``ERROR`` (pynetdicom's own log stays at
            WARNING unless this is DEBUG).
        file: also append the log to this file; None: stderr only (journald under systemd).
    """

    level: str = "INFO"
    file: Path | None = None


@dataclass
class ServeConfig:
    """The whole ``serve.toml``; ``source`` is the file it came from (None when built in code)."""

    node: NodeConfig = field(default_factory=NodeConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    destination: DestinationConfig = field(default_factory=DestinationConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    source: Path | None = None

    @property
    def calling_ae_title(self) -> str:
        """The AE title the node uses towards PACS."""
        return self.destination.calling_ae_title or self.node.ae_title

    @property
    def model_threads(self) -> int:
        """Backend threads of each worker: ``[model] threads``, else the usable CPUs shared by the workers.

        Every worker may be busy at once, so each gets its share of the CPUs
        (:func:`bcedge.cpus.default_threads` with ``share = [worker] processes``), at least one.
        """
        from bcedge.cpus import default_threads

        return default_threads(self.model.threads, share=self.worker.processes)

    def validate(self) -> ServeConfig:
        """Check values that depend on each other; returns self. Raises ConfigError."""
        where = str(self.source) if self.source else "serve config"
        n, d = self.node, self.destination
        for key, value in (("[node] ae_title", n.ae_title), ("[destination] ae_title", d.ae_title)):
            _check_ae(where, key, value)
        if d.calling_ae_title is not None:
            _check_ae(where, "[destination] calling_ae_title", d.calling_ae_title)
        for aet in n.allowed_calling_ae_titles:
            _check_ae(where, "[node] allowed_calling_ae_titles", aet)
        if not n.allowed_calling_ae_titles and not n.allow_any_calling_ae_title:
            raise ConfigError(
                f"{where}: [node] allowed_calling_ae_titles is empty; list the modalities' AE titles "
                "(or set allow_any_calling_ae_title = true on a closed test network)"
            )
        for text in n.allowed_addresses:
            try:
                ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise ConfigError(
                    f"{where}: [node] allowed_addresses has {text!r}; expected an IP address or a network (10.1.2.0/24)"
                ) from None
        _check_port(where, "[node] port", n.port, allow_zero=True)
        _check_port(where, "[destination] port", d.port, allow_zero=False)
        if not d.host.strip():
            raise ConfigError(f"{where}: [destination] host is empty; expected PACS's host name or IP address")
        for key, value in (
            ("[node] max_associations", n.max_associations),
            ("[destination] max_attempts", d.max_attempts),
            ("[destination] batch_size", d.batch_size),
            ("[storage] max_process_attempts", self.storage.max_process_attempts),
            ("[worker] processes", self.worker.processes),
            ("[node] max_pending_connections", n.max_pending_connections),
            ("[node] max_dataset_mb", n.max_dataset_mb),
        ):
            if value < 1:
                raise ConfigError(f"{where}: {key} is {value}; expected an integer >= 1")
        for key, value in (
            ("[node] acse_timeout_s", n.acse_timeout_s),
            ("[node] dimse_timeout_s", n.dimse_timeout_s),
            ("[node] network_timeout_s", n.network_timeout_s),
            ("[destination] timeout_s", d.timeout_s),
            ("[destination] backoff_initial_s", d.backoff_initial_s),
            ("[worker] timeout_s", self.worker.timeout_s),
            ("[node] handshake_timeout_s", n.handshake_timeout_s),
        ):
            if value <= 0:
                raise ConfigError(f"{where}: {key} is {value}; expected a number of seconds > 0")
        if d.backoff_max_s < d.backoff_initial_s:
            raise ConfigError(
                f"{where}: [destination] backoff_max_s ({d.backoff_max_s}) is below backoff_initial_s "
                f"({d.backoff_initial_s})"
            )
        for key, value in (
            ("[destination] retry_failed_every_s", d.retry_failed_every_s),
            ("[storage] min_free_mb", self.storage.min_free_mb),
            ("[storage] done_retention_days", self.storage.done_retention_days),
            ("[storage] done_max_items", self.storage.done_max_items),
            ("[node] max_pdu", n.max_pdu),
            ("[worker] memory_mb", self.worker.memory_mb),
        ):
            if value < 0:
                raise ConfigError(f"{where}: {key} is {value}; expected a number >= 0")
        unknown = [k for k in self.model.outputs if k not in OUTPUT_KINDS]
        if unknown:
            raise ConfigError(
                f"{where}: [model] outputs has {unknown[0]!r}; expected some of {', '.join(OUTPUT_KINDS)}"
            )
        if "seg" not in self.model.outputs:
            self.model.outputs = ["seg", *self.model.outputs]
        if self.model.threads is not None and self.model.threads < 1:
            raise ConfigError(f"{where}: [model] threads is {self.model.threads}; expected an integer >= 1")
        if self.logging.level.upper() not in LOG_LEVELS:
            raise ConfigError(
                f"{where}: [logging] level is {self.logging.level!r}; expected one of {', '.join(LOG_LEVELS)}"
            )
        self.logging.level = self.logging.level.upper()
        if self.tls.enabled:
            for key in ("cert", "key"):
                _check_file(where, f"[tls] {key}", getattr(self.tls, key), required=True)
            _check_file(where, "[tls] ca", self.tls.ca, required=self.tls.require_client_cert)
        if d.tls.enabled:
            _check_file(where, "[destination.tls] ca", d.tls.ca, required=False)
            if (d.tls.cert is None) != (d.tls.key is None):
                raise ConfigError(f"{where}: [destination.tls] needs both cert and key, or neither")
            _check_file(where, "[destination.tls] cert", d.tls.cert, required=False)
            _check_file(where, "[destination.tls] key", d.tls.key, required=False)
        if self.model.bundle is not None and not (self.model.bundle / "manifest.json").is_file():
            raise ConfigError(
                f"{where}: [model] bundle {self.model.bundle} has no manifest.json; expected a bcedge model bundle "
                "folder (or remove the key to use the bundled real-data model)"
            )
        return self

    def describe(self) -> list[str]:
        """What the node would do with this config, one line each (for ``--check-config``)."""
        n, s, m, d = self.node, self.storage, self.model, self.destination
        callers = "any calling AE title" if n.allow_any_calling_ae_title else ", ".join(n.allowed_calling_ae_titles)
        lines = [
            f"listen: AE '{n.ae_title}' on {n.bind}:{n.port}"
            + (" with TLS" if self.tls.enabled else "")
            + f", up to {n.max_associations} associations at once; association request within "
            + f"{n.handshake_timeout_s:g} s; datasets up to {n.max_dataset_mb} MiB",
            "accept: Digital Mammography X-Ray Image Storage (For Presentation, For Processing), Verification",
            f"callers: {callers}" + (f"; from {', '.join(n.allowed_addresses)} only" if n.allowed_addresses else ""),
            f"storage: {s.root} (spool/, outbox/, done/, quarantine/, state.json); "
            f"refuse C-STORE (0xA700) below {s.min_free_mb} MiB free",
            f"model: {m.bundle or 'bundled real-data model'} on backend '{m.backend}'"
            + f", {self.model_threads} thread(s) per worker"
            + ("" if m.threads else " (the usable CPUs shared by the workers)")
            + f"; outputs {', '.join(m.outputs)}",
            f"work: {self.worker.processes} worker processes, each scan at most {self.worker.timeout_s:g} s and "
            + (f"{self.worker.memory_mb} MiB above the loaded model" if self.worker.memory_mb else "no memory limit")
            + f"; quarantined after {s.max_process_attempts} unfinished attempts",
            f"send: SEG to AE '{d.ae_title}' at {d.host}:{d.port} as '{self.calling_ae_title}'"
            + (" with TLS" if d.tls.enabled else "")
            + f"; {d.max_attempts} attempts, backoff {d.backoff_initial_s:g}s doubling to {d.backoff_max_s:g}s",
            "keep: delivered items "
            + (f"{s.done_retention_days:g} days" if s.done_retention_days else "without age limit")
            + (f", at most {s.done_max_items}" if s.done_max_items else ""),
            f"log: {self.logging.level}"
            + (f" to {self.logging.file} and stderr" if self.logging.file else " to stderr"),
        ]
        return lines


def _check_ae(where: str, key: str, value: Any) -> None:
    if not isinstance(value, str) or not value.strip() or len(value) > 16 or not set(value) <= _AE_CHARS:
        raise ConfigError(
            f"{where}: {key} is {value!r}; expected an AE title of 1-16 printable characters without backslash"
        )


def _check_port(where: str, key: str, value: int, *, allow_zero: bool) -> None:
    low = 0 if allow_zero else 1
    if not low <= value <= 65535:
        raise ConfigError(f"{where}: {key} is {value}; expected a TCP port {low}-65535")


def _check_file(where: str, key: str, value: Path | None, *, required: bool) -> None:
    if value is None:
        if required:
            raise ConfigError(f"{where}: {key} is missing; expected the path of a PEM file")
        return
    if not value.is_file():
        raise ConfigError(f"{where}: {key} {value} does not exist or is not a file")


# --------------------------------------------------------------------------- loading

_SECTIONS = {
    "node": NodeConfig,
    "storage": StorageConfig,
    "worker": WorkerConfig,
    "model": ModelConfig,
    "destination": DestinationConfig,
    "tls": TLSConfig,
    "logging": LoggingConfig,
}


def _toml_loads(text: str) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10 (the serve extra brings tomli there)
        try:
            import tomli as tomllib
        except ImportError:
            from bcedge.errors import MissingDependencyError

            raise MissingDependencyError("reading serve.toml on Python 3.10", "serve", "tomli") from None
    return tomllib.loads(text)


def _expected_kind(hint: str) -> str:
    """The field's kind from its annotation (a string under ``from __future__ import annotations``)."""
    if "Path" in hint:
        return "path"
    if "list" in hint:
        return "list"
    if "bool" in hint:
        return "bool"
    if "float" in hint:
        return "float"
    if "int" in hint:
        return "int"
    return "str"


def _coerce(where: str, key: str, value: Any, kind: str, base: Path, optional: bool) -> Any:
    """Turn a TOML value into the field's type, or raise a one-line ConfigError."""
    if optional and (value is None or value == ""):
        return None
    bad = ConfigError(f"{where}: {key} is {value!r}; expected {'a ' + kind if kind != 'int' else 'an integer'}")
    if kind == "bool":
        if not isinstance(value, bool):
            raise bad
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: {key} is {value!r}; expected a number")
        return float(value)
    if kind == "list":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: {key} is {value!r}; expected a list of strings")
        return [v.strip() for v in value]
    if kind == "path":
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{where}: {key} is {value!r}; expected a path string")
        path = Path(os.path.expanduser(value))
        return path if path.is_absolute() else (base / path)
    if not isinstance(value, str):
        raise ConfigError(f"{where}: {key} is {value!r}; expected a string")
    return value.strip()


def _build(cls: type, data: Any, section: str, where: str, base: Path) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: [{section}] is {type(data).__name__}; expected a table")
    names = {f.name: f for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key == "tls" and cls is DestinationConfig:
            kwargs["tls"] = _build(ClientTLSConfig, value, "destination.tls", where, base)
            continue
        if key not in names:
            known = ", ".join(n for n in names if n != "tls")
            raise ConfigError(f"{where}: [{section}] has unknown key {key!r}; expected one of {known}")
        hint = str(names[key].type)
        optional = "None" in hint
        kind = _expected_kind(hint)
        kwargs[key] = _coerce(where, f"[{section}] {key}", value, kind, base, optional)
    return cls(**kwargs)


def parse_config(text: str, *, source: Path | None = None) -> ServeConfig:
    """Parse and validate the text of a ``serve.toml``.

    Args:
        text: TOML text.
        source: the file it came from; relative paths resolve against its folder (else the
            current folder) and error messages name it.

    Raises:
        ConfigError: invalid TOML, unknown section or key, wrong type or value.
    """
    where = str(source) if source else "serve config"
    base = source.parent.resolve() if source else Path.cwd()
    try:
        data = _toml_loads(text)
    except ValueError as exc:  # tomllib.TOMLDecodeError is a ValueError
        raise ConfigError(f"{where}: not valid TOML ({str(exc).splitlines()[0]})") from None
    sections: dict[str, Any] = {}
    for name, value in data.items():
        if name not in _SECTIONS:
            raise ConfigError(f"{where}: unknown section [{name}]; expected some of {', '.join(_SECTIONS)}")
        sections[name] = _build(_SECTIONS[name], value, name, where, base)
    return ServeConfig(**sections, source=source).validate()


def load_config(path: str | os.PathLike[str]) -> ServeConfig:
    """Read, parse and validate a ``serve.toml``. Raises ConfigError (missing file included)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found; expected a serve.toml (see bcedge/examples/serve.toml)")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read the config ({exc})") from None
    return parse_config(text, source=p)
