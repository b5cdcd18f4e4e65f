"""``bcedge serve``: run the DICOM node, check its config, show its status.

Exit codes: ``bcedge serve`` 0 after a clean stop (SIGTERM/SIGINT), 2 for a config problem
(including a storage root locked by another node), 3 when the model cannot be loaded.
``bcedge serve status``: 0 running with nothing failed, 1 not running, 4 running with items
marked failed in the outbox (see README, "bcedge serve").
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="serve",
    help="DICOM node: receive mammograms (C-STORE), segment them, send DICOM SEG to PACS.",
    invoke_without_command=True,
    no_args_is_help=False,
    pretty_exceptions_enable=False,
    add_completion=False,
)

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="serve.toml (see bcedge/examples/serve.toml).")
]


def _load(config: Path | None):  # -> ServeConfig
    from bcedge.errors import ConfigError
    from bcedge.serve.config import load_config

    if config is None:
        raise ConfigError("bcedge serve needs --config serve.toml (a sample is in bcedge/examples/serve.toml)")
    return load_config(config)


def _check(cfg) -> list[str]:
    """What --check-config verifies beyond the file itself: pynetdicom, the bundle manifest, TLS files."""
    import importlib.util

    notes = []
    if importlib.util.find_spec("pynetdicom") is None:
        from bcedge.errors import MissingDependencyError

        raise MissingDependencyError("bcedge serve", "serve", "pynetdicom")
    from bcedge.bundle import load_bundle

    bundle = None
    if cfg.model.bundle is not None:
        bundle = load_bundle(cfg.model.bundle)
        notes.append(f"bundle: {cfg.model.bundle} ({len(bundle.manifest.artifacts)} artifacts) read and checked")
    else:
        try:
            from bcedge.pipeline import default_bundle_path
        except ImportError:
            notes.append("bundle: the bundled real-data model (bcedge.pipeline not available in this install)")
        else:
            path = default_bundle_path()
            bundle = load_bundle(path)
            notes.append(f"bundle: {path} read and checked")
    if bundle is not None:
        # The workers' choice: acceptance check and timing now (cached), so the first scan does not pay for it.
        from bcedge.choice import resolve

        # Unlike the workers (bcedge.choice.cached_timings), this also times again what was timed on a
        # busy machine: run by hand, it is how a node's stale busy choice gets refreshed.
        _, report = resolve(bundle, cfg.model.backend, threads=cfg.model_threads)
        notes += [f"warning: {w}" for w in report.warnings] + report.lines()
    root = cfg.storage.root
    existing = next((p for p in (root, *root.parents) if p.exists()), None)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        from bcedge.errors import ConfigError

        raise ConfigError(f"[storage] root {root}: cannot be created or written by this user (checked {existing})")
    notes.append(f"storage: {root} " + ("exists and is writable" if existing == root else "will be created"))
    if cfg.tls.enabled or cfg.destination.tls.enabled:
        from bcedge.serve.tls import client_context, server_context

        if cfg.tls.enabled:
            server_context(cfg.tls)
            notes.append("tls: node certificate, key and CA load")
        if cfg.destination.tls.enabled:
            client_context(cfg.destination.tls)
            notes.append("tls: destination CA and client certificate load")
    return notes


def plain_serve_config(args: list[str]) -> Path | None:
    """The config file of a plain ``bcedge [--debug] serve --config FILE`` line; None for any other line.

    A restart of the node (after ``kill -9``, a power cut) keeps every spooled scan waiting until
    its worker processes have loaded the model, and they are launched only once the node runs.
    Through typer, reaching the node cost ~0.6 s of CPU (every command registered, their modules
    and NumPy imported, pydantic adapters built; measured with ``time.process_time`` on the busy
    2-core machine) before a worker was launched. This line needs none of that: the value is the
    same ``Path`` typer would pass (the option has no checks). ``-c FILE`` and ``--config=FILE``
    are accepted too; anything else (``--check-config``, ``status``, ``--help``, a value that
    starts with ``-``, an extra argument) returns None and goes through typer as before.

    Args:
        args: the command line without the program name.
    """
    rest = args[1:] if args[:1] == ["--debug"] else args
    if rest[:1] != ["serve"]:
        return None
    rest = rest[1:]
    if len(rest) == 1 and rest[0].startswith("--config="):
        value = rest[0][len("--config=") :]
    elif len(rest) == 2 and rest[0] in ("--config", "-c"):
        value = rest[1]
    else:
        return None
    if not value or value.startswith("-"):
        return None
    return Path(value)


def run_node(config: Path | None) -> None:
    """Load ``config`` and run the node until SIGTERM/SIGINT (``bcedge serve --config FILE``).

    Raises:
        ConfigError: the config is missing or invalid, the storage root is locked or unusable.
        BcedgeError: the model cannot be loaded (exit code 3).
    """
    cfg = _load(config)
    from bcedge.serve.node import Node, configure_logging

    configure_logging(cfg.logging)
    Node(cfg).run_forever()


@app.callback(invoke_without_command=True)
def serve(
    ctx: typer.Context,
    config: ConfigOption = None,
    check_config: Annotated[
        bool, typer.Option("--check-config", help="Validate the config, print what the node would do, exit.")
    ] = False,
) -> None:
    """Run the node until SIGTERM/SIGINT (or, with --check-config, only check the config)."""
    ctx.obj = {"config": config}
    if ctx.invoked_subcommand is not None:
        return
    if not check_config:
        run_node(config)
        return
    cfg = _load(config)
    lines = cfg.describe() + _check(cfg)
    typer.echo(f"{cfg.source}: OK")
    for line in lines:
        typer.echo(f"  {line}")


@app.command("status")
def status(
    ctx: typer.Context,
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Queue lengths, counts, last errors and failed items of the node using this config's storage root."""
    from bcedge.serve.state import read_status

    parent = (ctx.obj or {}).get("config") if ctx.obj else None
    cfg = _load(config or parent)
    data = read_status(cfg.storage.root)
    code = 1 if not data["running"] else (4 if data["queues"]["failed"] else 0)
    if as_json:
        typer.echo(json.dumps(data, indent=2, sort_keys=True))
        raise typer.Exit(code)
    queues = data["queues"]
    totals = data.get("totals", {})
    listen = data.get("listen") or {}
    typer.echo(f"node: {data.get('status')}" + (f" (pid {data.get('pid')})" if data.get("pid") else ""))
    if listen:
        typer.echo(f"  listening: '{data.get('ae_title')}' on {listen.get('host')}:{listen.get('port')}")
    if data.get("destination"):
        typer.echo(f"  destination: {data['destination']}")
    typer.echo("queues: " + ", ".join(f"{k} {queues[k]}" for k in ("spool", "outbox", "failed", "done", "quarantine")))
    if totals:
        typer.echo("totals: " + ", ".join(f"{k} {v}" for k, v in totals.items()))
    last = data.get("last") or {}
    if any(last.values()):
        typer.echo("last: " + ", ".join(f"{k} {v}" for k, v in last.items() if v))
    for item in data["failed_items"]:
        typer.echo(f"failed: {item['item']}: {item['reason']}")
    for item in data["quarantined_items"][-5:]:
        typer.echo(f"quarantined: {item['item']}: {item['reason']}")
    for err in (data.get("last_errors") or [])[-5:]:
        typer.echo(f"error: {err.get('time')} [{err.get('where')}] {err.get('message')}")
    raise typer.Exit(code)


def register(root: typer.Typer) -> None:
    """Attach ``serve`` (with ``status``) to the root ``bcedge`` app."""
    root.add_typer(app, name="serve")
