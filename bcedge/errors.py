"""Errors raised by bcedge.

Every error a user can cause is a :class:`BcedgeError` subclass whose message
fits on one line and says what was received, what was expected and, where it
helps, how to fix it. The CLI prints the message and exits with
:attr:`BcedgeError.exit_code`; tracebacks appear only with ``--debug``.
"""

from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type name when the message is empty."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class BcedgeError(Exception):
    """Base class of every user-facing bcedge error."""

    exit_code: int = 2


class InputError(BcedgeError):
    """A path, file or option the user gave cannot be used."""


class DicomError(InputError):
    """A DICOM file is unreadable, or not a mammogram bcedge can handle."""


class UnsupportedImageError(DicomError):
    """The image is valid DICOM but of a kind bcedge does not support (RGB, multi-frame, ...)."""


class MissingDependencyError(BcedgeError):
    """An optional dependency (an extra) is needed for this operation."""

    def __init__(self, what: str, extra: str, package: str | None = None) -> None:
        pkg = package or extra
        super().__init__(f"{what} needs the optional dependency '{pkg}': pip install 'bcedge[{extra}]'")
        self.extra = extra


class DatasetError(InputError):
    """A dataset tree, descriptor CSV or split file is malformed or missing."""


class ConfigError(InputError):
    """A configuration value (preprocessing, CLI option, config file) is invalid."""


class BundleError(BcedgeError):
    """A model bundle is missing, malformed, of an unknown schema, or its artifacts do not match the manifest."""

    exit_code = 3


class BackendError(BundleError):
    """The backend cannot run the bundle's model: unknown backend, library missing, load or run failure.

    A :class:`BundleError` (exit code 3): the scan is not at fault. (Here rather than in
    :mod:`bcedge.pipeline` so the standard-library :mod:`bcedge.formats` can raise it.)
    """
