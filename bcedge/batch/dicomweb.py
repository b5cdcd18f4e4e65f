"""DICOMweb for ``bcedge batch``: QIDO-RS search, WADO-RS retrieval, STOW-RS of the SEGs.

Built on dicomweb-client (the DICOMweb client of the highdicom authors; it speaks QIDO/WADO/STOW
over requests). Search is by study: studies are paged (``limit``/``offset``) with the study date
range and ``ModalitiesInStudy``, then each study's instances of the modality are listed. Paging by
study keeps each answer small on an archive of millions of instances, and every server that
implements QIDO-RS answers study and study-instance queries (a root ``/instances`` query is optional
in the standard).

A hostile or broken server is normal input: a UID that is not a DICOM UID (digits and dots, at most
64 characters) is refused (it would become a file name), an HTTP or connection error becomes one
:class:`DicomWebError` line, and an instance larger than ``max_bytes`` is refused before it is parsed.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bcedge.batch.sources import ScanRef
from bcedge.errors import InputError, MissingDependencyError, first_line

_log = logging.getLogger(__name__)

#: Studies per QIDO-RS page.
PAGE_SIZE = 100
#: Largest instance retrieved (bytes): a full-field 16-bit mammogram is ~17 MB; tomosynthesis is not read.
MAX_INSTANCE_BYTES = 512 * 1024 * 1024
#: Tries per HTTP request (see :func:`make_client`).
ATTEMPTS = 5
#: Seconds before an HTTP request is abandoned.
TIMEOUT_S = 120.0
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_STUDY_UID, _SERIES_UID, _SOP_UID = "0020000D", "0020000E", "00080018"


class DicomWebError(InputError):
    """A DICOMweb request failed (connection, HTTP status, malformed answer)."""


def is_uid(value: object) -> bool:
    """A DICOM UID: digits and dots, no empty component, at most 64 characters."""
    return isinstance(value, str) and 0 < len(value) <= 64 and _UID.match(value) is not None


def make_client(url: str, timeout_s: float = TIMEOUT_S, attempts: int = ATTEMPTS) -> Any:
    """A dicomweb-client ``DICOMwebClient`` for ``url`` (the server's DICOMweb root, e.g. ``.../dicom-web``).

    A request is tried up to ``attempts`` times with exponential back-off (1, 2, 4... s) on connection
    errors and 408/429/503/504 answers (dicomweb-client's retry logic): a PACS under load recovers.
    """
    try:
        import requests
        from dicomweb_client.api import DICOMwebClient
    except ImportError:
        raise MissingDependencyError("a DICOMweb source", "batch", "dicomweb-client") from None

    client = DICOMwebClient(url=url.rstrip("/"), session=requests.Session(), timeout=timeout_s)
    client.set_http_retry_params(retry=attempts > 1, max_attempts=max(1, attempts))
    return client


def _value(item: dict[str, Any], tag: str) -> str:
    values = (item.get(tag) or {}).get("Value") or [""]
    return str(values[0]) if values else ""


def _call(what: str, url: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a dicomweb-client call; every failure becomes one DicomWebError line."""
    try:
        return fn(*args, **kwargs)
    except MissingDependencyError:
        raise
    except Exception as exc:  # requests' HTTPError/ConnectionError, JSON errors, dicomweb-client's ValueError
        raise DicomWebError(f"{url}: {what} failed: {first_line(exc)}") from exc


def dicomweb_refs(
    url: str,
    *,
    study_date: str | None = None,
    modality: str = "MG",
    page_size: int = PAGE_SIZE,
    client: Any = None,
) -> Iterator[ScanRef]:
    """Every instance of ``modality`` in the studies of ``study_date`` (``YYYYMMDD-YYYYMMDD``, either side open).

    Yields refs in the server's order (studies page by page). Instances with a malformed UID are
    logged and skipped.

    Raises:
        DicomWebError: the server cannot be queried.
        ConfigError: a malformed study date range.
    """
    if study_date is not None:
        check_date_range(study_date)
    client = client or make_client(url)
    base = url.rstrip("/")
    filters: dict[str, Any] = {"ModalitiesInStudy": modality}
    if study_date:
        filters["StudyDate"] = study_date
    offset = 0
    while True:
        studies = _call(
            "QIDO-RS study search",
            base,
            client.search_for_studies,
            search_filters=filters,
            limit=page_size,
            offset=offset,
        )
        if not studies:
            return
        for study in studies:
            study_uid = _value(study, _STUDY_UID)
            if not is_uid(study_uid):
                _log.warning("%s: skipped a study with a malformed Study Instance UID %r", base, study_uid[:80])
                continue
            instances = _call(
                "QIDO-RS instance search",
                base,
                client.search_for_instances,
                study_instance_uid=study_uid,
                search_filters={"Modality": modality},
            )
            for item in instances or []:
                series_uid, sop_uid = _value(item, _SERIES_UID), _value(item, _SOP_UID)
                if not (is_uid(series_uid) and is_uid(sop_uid)):
                    _log.warning("%s: skipped an instance of study %s with a malformed UID", base, study_uid)
                    continue
                yield ScanRef(
                    key=f"sop:{sop_uid}",
                    kind="dicomweb",
                    path=f"{base}/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}",
                    stem=f"{study_uid}/{sop_uid}",
                    study_uid=study_uid,
                    series_uid=series_uid,
                    sop_uid=sop_uid,
                )
        if len(studies) < page_size:
            return
        offset += len(studies)


def check_date_range(value: str) -> str:
    """``YYYYMMDD``, ``YYYYMMDD-YYYYMMDD``, ``YYYYMMDD-`` or ``-YYYYMMDD`` (QIDO-RS range matching)."""
    from bcedge.errors import ConfigError

    if not re.fullmatch(r"\d{8}|\d{8}-|-\d{8}|\d{8}-\d{8}", value):
        raise ConfigError(
            f"study date {value!r}; expected YYYYMMDD or a range YYYYMMDD-YYYYMMDD (one side may be open)"
        )
    return value


def fetch_instance(client: Any, ref: ScanRef, dest: Path, max_bytes: int = MAX_INSTANCE_BYTES) -> Path:
    """WADO-RS retrieve one instance into ``dest`` (a DICOM file); returns ``dest``.

    Raises:
        DicomWebError: retrieval failed, or the instance is larger than ``max_bytes``.
    """
    from pydicom import dcmwrite

    # dicomweb-client parses the multipart answer into a pydicom Dataset; the size check runs on the
    # Content-Length the server declares (checked by the response hook before the body is read).
    ds = _call(
        "WADO-RS retrieval",
        ref.path,
        _retrieve_limited,
        client,
        ref,
        max_bytes,
    )
    try:
        dcmwrite(dest, ds, enforce_file_format=False)
    except Exception as exc:  # a dataset pydicom cannot write back
        raise DicomWebError(f"{ref.path}: cannot store the retrieved instance: {first_line(exc)}") from exc
    return dest


def _retrieve_limited(client: Any, ref: ScanRef, max_bytes: int) -> Any:
    session = client._session

    def check_size(response: Any, *args: Any, **kwargs: Any) -> Any:
        declared = response.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            response.close()
            raise DicomWebError(f"the server declares {int(declared)} bytes; the limit is {max_bytes}")
        return response

    session.hooks.setdefault("response", []).append(check_size)
    try:
        return client.retrieve_instance(ref.study_uid, ref.series_uid, ref.sop_uid)
    finally:
        session.hooks["response"].remove(check_size)


def store_instance(client: Any, path: str | os.PathLike[str]) -> None:
    """STOW-RS one DICOM file (a SEG) to the server.

    Raises:
        DicomWebError: the request failed, or the server lists the instance as failed.
    """
    import pydicom

    ds = pydicom.dcmread(path)
    answer = _call("STOW-RS", str(client.base_url), client.store_instances, [ds])
    failed = getattr(answer, "FailedSOPSequence", None) if answer is not None else None
    if failed:
        reason = getattr(failed[0], "FailureReason", "?")
        raise DicomWebError(f"STOW-RS of {ds.SOPInstanceUID}: the server refused it (failure reason {reason})")
