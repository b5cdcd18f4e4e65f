"""``ssl.SSLContext`` objects for DICOM TLS (PS3.15 Annex B): the listening port and the PACS link."""

from __future__ import annotations

import ssl

from bcedge.errors import ConfigError
from bcedge.serve.config import ClientTLSConfig, TLSConfig


def server_context(cfg: TLSConfig) -> ssl.SSLContext:
    """TLS for incoming associations: the node's certificate; callers' certificates checked against ``ca``.

    Raises:
        ConfigError: a certificate, key or CA file cannot be loaded.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(certfile=str(cfg.cert), keyfile=str(cfg.key))
        if cfg.ca is not None:
            ctx.load_verify_locations(cafile=str(cfg.ca))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"[tls]: cannot load certificate/key/CA ({exc})") from None
    ctx.verify_mode = ssl.CERT_REQUIRED if cfg.require_client_cert else ssl.CERT_OPTIONAL if cfg.ca else ssl.CERT_NONE
    return ctx


def client_context(cfg: ClientTLSConfig) -> ssl.SSLContext:
    """TLS towards PACS: PACS's certificate checked against ``ca`` (or the system store); optional client cert.

    Raises:
        ConfigError: a certificate, key or CA file cannot be loaded.
    """
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cfg.ca) if cfg.ca else None)
        if cfg.cert is not None:
            ctx.load_cert_chain(certfile=str(cfg.cert), keyfile=str(cfg.key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"[destination.tls]: cannot load certificate/key/CA ({exc})") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = cfg.check_hostname
    return ctx
