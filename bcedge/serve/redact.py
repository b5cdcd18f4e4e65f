"""Log lines without patient data or raw control characters, whoever wrote them.

The node's own messages name items by ``<seq>_<uid hash>`` and SOP Instance UIDs, never patient
data. Libraries are another matter: pydicom warns ``Invalid value for VR DA: '19991399'`` (a
birth date) through its logger and :mod:`warnings`, highdicom quotes a person name it finds odd,
and a hostile sender can put control characters (terminal escapes, fake newlines) into an AE
title or a name. So, in the node and in every worker process:

- every record of every logger, once formatted, has its control characters escaped
  (``\\x1b`` -> ``\\x1b`` as text), so one record is one line and cannot drive a terminal;
- records of library loggers (pydicom, highdicom, Python warnings, bcedge's reader and writers,
  which relay library messages) have every quoted value (``'...'``, ``"..."``, ``<...>``)
  replaced by ``<redacted>``; they keep their wording, so the cause stays visible.
"""

from __future__ import annotations

import logging
import re

#: Loggers whose messages may quote values read from a file.
LIBRARY_LOGGERS = ("pydicom", "highdicom", "py.warnings", "bcedge.dicom", "bcedge.outputs", "bcedge.seg_source")

_QUOTED = re.compile(r"""'[^'\n]*'|"[^"\n]*"|<[^<>\n]*>""")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def escape_controls(text: str) -> str:
    """``text`` with every control character (C0, DEL, C1; newlines included) written as ``\\xNN``."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def redact_values(text: str) -> str:
    """``text`` with every quoted value replaced by ``<redacted>``."""
    return _QUOTED.sub("<redacted>", text)


class SafeFormatter(logging.Formatter):
    """A formatter whose message is one line: control characters escaped; library records redacted.

    A traceback (``LOG.exception``) keeps its own lines, since it is code, not data.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:
        message = record.message
        if is_library(record.name):
            message = redact_values(message)
        record.message = escape_controls(message)
        return super().formatMessage(record)


def is_library(name: str) -> bool:
    """Whether a logger's messages may quote file values: a library's, or a bcedge reader/writer's."""
    return name in LIBRARY_LOGGERS or not (name == "bcedge" or name.startswith("bcedge."))


def route_library_logs(handlers: list[logging.Handler], level: int = logging.WARNING) -> None:
    """Send library warnings (and Python warnings) to ``handlers`` instead of stderr's last resort.

    Handlers added by an earlier call (marked ``_bcedge_serve``) are replaced.
    """
    logging.captureWarnings(True)
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if getattr(h, "_bcedge_serve", False)]:
            logger.removeHandler(old)
        for handler in handlers:
            logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False


def worker_logging() -> None:
    """Logging of a worker process: WARNING and up to stderr (the node's), redacted and one line each."""
    handler = logging.StreamHandler()
    handler.setFormatter(SafeFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler._bcedge_serve = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    route_library_logs([handler])
