"""Helpers for the ``bcedge batch`` tests: a throw-away Orthanc (DICOMweb) server, real scans as MG DICOM.

Orthanc is Debian's (``orthanc`` + ``orthanc-dicomweb``): started on 127.0.0.1 with its own free
ports, a temporary storage folder and no authentication, stopped (SIGTERM, then SIGKILL) afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ORTHANC = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if os.path.exists("/usr/sbin/Orthanc") else None)
DICOMWEB_PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc")
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


def dicomweb_plugin() -> Path | None:
    """The Orthanc DICOMweb plugin library (``libOrthancDicomWeb.so``), or None."""
    for folder in DICOMWEB_PLUGIN_DIRS:
        for path in sorted(Path(folder).glob("libOrthancDicomWeb.so*")) if Path(folder).is_dir() else []:
            return path
    return None


def orthanc_missing() -> str | None:
    """Why Orthanc cannot run here (a skip reason), or None."""
    if ORTHANC is None:
        return "Orthanc is not installed (Debian: apt-get install orthanc orthanc-dicomweb)"
    if dicomweb_plugin() is None:
        return "the Orthanc DICOMweb plugin is not installed (Debian: apt-get install orthanc-dicomweb)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def orthanc_server(folder: Path, timeout: float = 60.0) -> Iterator[str]:
    """Run Orthanc with storage under ``folder``; yields its DICOMweb root URL; stops it on exit."""
    import requests

    http_port, dicom_port = free_port(), free_port()
    config = {
        "Name": "bcedge-test",
        "StorageDirectory": str(folder / "db"),
        "IndexDirectory": str(folder / "db"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [str(dicomweb_plugin())],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "StableAge": 1,
    }
    cfg = folder / "orthanc.json"
    cfg.write_text(json.dumps(config))
    log = open(folder / "orthanc.log", "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen([str(ORTHANC), str(cfg)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"Orthanc exited with {proc.returncode}: {(folder / 'orthanc.log').read_text()[-2000:]}"
                )
            try:
                if requests.get(f"{base}/dicom-web/studies", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("Orthanc did not answer in time")
            time.sleep(0.2)
        yield f"{base}/dicom-web"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def real_scans_as_mg(data: Path, folder: Path, names: list[str]) -> list[Path]:
    """Wrap mini-MIAS PNGs (real screen-film mammograms, 8-bit) as MG DICOM files (pixels unchanged)."""
    import cv2

    from bcedge.dicom_write import MGTags, write_mg_dicom

    out = []
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        pixels = cv2.imread(str(data / "mini-mias" / "images" / name), cv2.IMREAD_GRAYSCALE)
        assert pixels is not None, name
        tags = MGTags(bits_stored=8, laterality=None, view="MLO", pixel_spacing_mm=(0.2, 0.2), patient_id="MIAS")
        out.append(write_mg_dicom(folder / (Path(name).stem + ".dcm"), pixels.astype(np.uint16), tags))
    return out


def dciodvfy_errors(path: Path) -> list[str]:
    """The ``Error`` lines of dciodvfy (dicom3tools) for one file."""
    proc = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]
