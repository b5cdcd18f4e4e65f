"""Helpers for the ``bcedge serve`` tests: free ports, small MG files, dcmtk wrappers, a fake processing step.

Also runnable as a script, to run a node in a subprocess (so a test can ``kill -9`` it)::

    python tests/serve_support.py CONFIG.toml [--delay SECONDS] [--isolated]

runs the node of CONFIG with :class:`FakeSeg` instead of the model (``--isolated``: in the
node's worker processes, as the real model runs; else in the node's own process).
"""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

DCMTK = ("echoscu", "storescu", "storescp")
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
TIMEOUT = 30  # seconds: the upper bound of every wait in these tests


def detach_logging() -> None:
    """Undo :func:`bcedge.serve.node.configure_logging` (its handlers point at a test's captured stderr)."""
    import logging

    from bcedge.serve.redact import LIBRARY_LOGGERS

    logging.captureWarnings(False)
    for name in ("bcedge.serve", "pynetdicom", *LIBRARY_LOGGERS):
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if getattr(h, "_bcedge_serve", False)]:
            logger.removeHandler(handler)
            handler.close()
        logger.propagate = True
        logger.setLevel(logging.NOTSET)


@functools.cache
def dcmtk_tool(name: str) -> str | None:
    """Absolute path of dcmtk's ``name`` (``storescu``, ``storescp``, ``echoscu``), or None.

    The Debian path ``/usr/bin/<name>`` first, then PATH; a candidate counts only when its
    ``--version`` says ``dcmtk``: an activated virtualenv puts pynetdicom's own ``storescu``/
    ``echoscu`` (other options, other output) ahead of dcmtk's on PATH.
    """
    candidates = [f"/usr/bin/{name}", *(os.path.join(d, name) for d in os.get_exec_path())]
    for candidate in dict.fromkeys(candidates):
        if not (os.path.isfile(candidate) and os.access(candidate, os.X_OK)):
            continue
        try:
            out = subprocess.run([candidate, "--version"], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            continue
        if "dcmtk" in (out.stdout + out.stderr).lower():
            return candidate
    return None


def have_dcmtk() -> bool:
    return all(dcmtk_tool(tool) for tool in DCMTK)


def dcmtk(name: str) -> str:
    """:func:`dcmtk_tool` for a test that already checked :func:`have_dcmtk`."""
    path = dcmtk_tool(name)
    if path is None:
        raise FileNotFoundError(f"dcmtk's {name} is not installed (apt-get install dcmtk)")
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_mg(
    path: Path,
    *,
    seed: int = 0,
    patient_name: str = "Phantom^Synthetic",
    patient_id: str = "PHANTOM",
    shape: tuple[int, int] = (96, 80),
    **extra: Any,
) -> Path:
    """A small MG DICOM (For Presentation) with a random SOP Instance UID; ``extra`` sets more tags."""
    from bcedge.dicom_write import MGTags, build_mg_dataset, save_atomic

    rng = np.random.default_rng(seed)
    stored = rng.integers(0, 2**12, size=shape, dtype=np.uint16)
    ds = build_mg_dataset(stored, MGTags(bits_stored=12, patient_id=patient_id, extra=extra))
    ds.PatientName = patient_name
    return save_atomic(ds, path)


REPO = Path(__file__).resolve().parent.parent
PHANTOM_SCAN = REPO / "bcedge" / "examples" / "phantom_lcc.dcm"


def demo_bundle() -> Path | None:
    """A model bundle of this checkout (the bundled demo model first), or None."""
    for bundle in (REPO / "bcedge" / "demo_model", REPO / "models" / "unet-mobilenetv2-combined256"):
        if (bundle / "manifest.json").is_file():
            return bundle
    return None


def phantom_copy(path: Path, index: int, **tags: Any) -> Path:
    """The example phantom mammogram as a new instance (fresh SOP Instance UID); ``tags`` set more attributes."""
    import pydicom
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(PHANTOM_SCAN)
    uid = generate_uid(entropy_srcs=["bcedge test phantom copy", str(path), str(index)])
    ds.SOPInstanceUID = uid
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def hostile_module() -> Any:
    """``benchmarks/hostile.py``: the hostile-input builders (one implementation for tests and fuzzing)."""
    folder = str(REPO / "benchmarks")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    import hostile

    return hostile


def jpegls_bomb(path: Path) -> Path:
    """A small MG file whose JPEG-LS frame header claims 65535x65535 (issue #18's freezing file).

    The DICOM header says 48x40; a decoder that trusts the frame header grows for minutes.
    """
    from pydicom.uid import JPEGLSLossless

    hostile = hostile_module()
    data = hostile.encode(hostile.mg_dataset(), JPEGLSLossless)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(hostile.patch_jpeg_frame(data, b"\xff\xf7", 65535, 65535))
    return path


def deflate_bomb(path: Path, inflated_mb: int = 1536) -> Path:
    """An MG file in Deflated Explicit VR Little Endian whose data set inflates to ``inflated_mb`` MiB.

    As the corpus's ``bomb_deflate_1_5g.dcm``: Pixel Data claims the size, zeros follow (~1 kB per MiB).
    """
    import io
    import struct

    hostile = hostile_module()
    raw = io.BytesIO()
    hostile.mg_dataset().save_as(raw, enforce_file_format=True)
    plain = raw.getvalue()
    meta_end = 132 + 12 + struct.unpack("<I", plain[132 + 8 : 132 + 12])[0]  # (0002,0000) group length
    body = plain[meta_end:]
    pix = hostile.element_offset(body, 0x7FE00010, b"OW", 0)
    head = body[: pix + 8] + struct.pack("<I", inflated_mb << 20)
    meta = hostile.meta_with_transfer_syntax(plain[:meta_end], b"1.2.840.10008.1.2.1.99")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(meta + hostile.deflate_bomb(inflated_mb, head))
    return path


def rss_mb(pid: int | None = None) -> float:
    """Resident memory of a process (default: this one) in MiB, from /proc."""
    from bcedge.serve.isolation import status_mb

    return status_mb("VmRSS", pid or "self")


def broken_factory() -> Any:
    """A processing-step factory whose model cannot be loaded (the worker reports a BundleError)."""
    from bcedge.errors import BundleError

    raise BundleError("simulated: the bundle's manifest does not match its artifacts")


def sop_uid(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def fake_seg_uid(source_uid: str) -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=["bcedge test fake SEG", source_uid]))


class FakeSeg:
    """A processing step without a model: a tiny Segmentation-class DICOM referencing the source.

    Its SOP Instance UID is derived from the source SOP Instance UID (as the real SEG writer's),
    so the tests can check delivery and deduplication. A source whose Manufacturer is ``BAD``
    raises :class:`~bcedge.errors.DicomError` (bad input: quarantined), ``FAIL`` a RuntimeError
    (not the scan's fault: retried), ``HANG`` sleeps for an hour (a scan that hangs its worker),
    ``HOG`` touches 8 GiB (a memory bomb), ``DIE`` kills its own process with SIGKILL.
    """

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.calls: list[Path] = []
        # Imported now, as a model is loaded at start: a worker process's first scan is then as fast as the others.
        import pydicom.dataset  # noqa: F401

        import bcedge.errors  # noqa: F401

    def __call__(self, source: Path, out_dir: Path) -> Mapping[str, Path]:
        import pydicom
        from pydicom.dataset import Dataset, FileMetaDataset
        from pydicom.sequence import Sequence
        from pydicom.uid import ExplicitVRLittleEndian, generate_uid

        from bcedge.errors import DicomError

        self.calls.append(source)
        src = pydicom.dcmread(source, stop_before_pixels=True)
        manufacturer = str(src.get("Manufacturer", ""))
        if manufacturer == "BAD":
            raise DicomError(f"{source}: Manufacturer (0008,0070) says BAD; expected a readable mammogram")
        if manufacturer == "FAIL":
            raise RuntimeError("simulated backend failure")
        if manufacturer == "HANG":
            time.sleep(3600)
        if manufacturer == "HOG":
            np.ones(2**33, np.uint8)
        if manufacturer == "DIE":
            import signal

            os.kill(os.getpid(), signal.SIGKILL)
        if self.delay:
            time.sleep(self.delay)
        uid = fake_seg_uid(str(src.SOPInstanceUID))
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = SEGMENTATION_STORAGE
        meta.MediaStorageSOPInstanceUID = uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = SEGMENTATION_STORAGE
        ds.SOPInstanceUID = uid
        ds.Modality = "SEG"
        ds.StudyInstanceUID = src.StudyInstanceUID
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=["bcedge test fake SEG series", uid])
        ref = Dataset()
        ref.ReferencedSOPClassUID = src.SOPClassUID
        ref.ReferencedSOPInstanceUID = src.SOPInstanceUID
        series = Dataset()
        series.SeriesInstanceUID = src.SeriesInstanceUID
        series.ReferencedInstanceSequence = Sequence([ref])
        ds.ReferencedSeriesSequence = Sequence([series])
        out = out_dir / f"{source.stem}_seg.dcm"
        pydicom.dcmwrite(out, ds, enforce_file_format=True)
        return {"seg": out}


class BarrierLoadSeg(FakeSeg):
    """A :class:`FakeSeg` whose "model" finishes loading only while ``count`` workers load at once.

    Each worker process marks ``folder/loading-<pid>`` when its load starts, then waits until
    ``count`` such marks exist. Workers started one after another never get there (the first one
    waits for the others, which are not started before it is ready): its load fails with a
    :class:`~bcedge.errors.BundleError` after ``timeout_s``. No timing threshold is involved.
    """

    def __init__(self, folder: str, count: int, timeout_s: float = 60.0) -> None:
        super().__init__()
        from bcedge.errors import BundleError

        marks = Path(folder)
        (marks / f"loading-{os.getpid()}").touch()
        deadline = time.monotonic() + timeout_s
        while len(list(marks.glob("loading-*"))) < count:
            if time.monotonic() > deadline:
                seen = len(list(marks.glob("loading-*")))
                raise BundleError(f"simulated: {seen} of {count} workers were loading at the same time")
            time.sleep(0.05)


def referenced_source(seg_path: Path) -> str:
    """The source SOP Instance UID a SEG file (fake or real) references."""
    import pydicom

    ds = pydicom.dcmread(seg_path, stop_before_pixels=True)
    return str(ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID)


def received_segs(folder: Path) -> list[tuple[str, str]]:
    """(SEG SOP Instance UID, referenced source UID) of every complete file the fake PACS wrote.

    storescp writes in place, so a file still being written is skipped (the callers poll).
    """
    import pydicom

    out = []
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.name.startswith("."):
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
                out.append((str(ds.SOPInstanceUID), referenced_source(path)))
            except (pydicom.errors.InvalidDicomError, AttributeError, IndexError, EOFError, OSError, ValueError):
                continue
    return out


def config_text(
    root: Path,
    port: int,
    dest_port: int,
    *,
    callers: Iterable[str] = ("MODALITY",),
    node: Mapping[str, Any] | None = None,
    destination: Mapping[str, Any] | None = None,
    storage: Mapping[str, Any] | None = None,
    model: Mapping[str, Any] | None = None,
    extra: str = "",
) -> str:
    """A serve.toml for tests: node on 127.0.0.1:port, PACS at 127.0.0.1:dest_port, fast retries."""

    def table(values: Mapping[str, Any]) -> str:
        lines = []
        for key, value in values.items():
            if isinstance(value, bool):
                lines.append(f"{key} = {'true' if value else 'false'}")
            elif isinstance(value, (int, float)):
                lines.append(f"{key} = {value}")
            elif isinstance(value, (list, tuple)):
                lines.append(f"{key} = [{', '.join(repr(str(v)).replace(chr(39), chr(34)) for v in value)}]")
            else:
                lines.append(f'{key} = "{value}"')
        return "\n".join(lines)

    node_v = {
        "ae_title": "BCEDGE",
        "bind": "127.0.0.1",
        "port": port,
        "allowed_calling_ae_titles": list(callers),
        "acse_timeout_s": 10,
        "dimse_timeout_s": 20,
        "network_timeout_s": 20,
        **(node or {}),
    }
    dest_v = {
        "ae_title": "PACS",
        "host": "127.0.0.1",
        "port": dest_port,
        "max_attempts": 50,
        "backoff_initial_s": 0.2,
        "backoff_max_s": 1.0,
        "retry_failed_every_s": 1.0,
        "timeout_s": 5,
        **(destination or {}),
    }
    storage_v = {"root": str(root), "min_free_mb": 1, **(storage or {})}
    text = f"[node]\n{table(node_v)}\n\n[storage]\n{table(storage_v)}\n\n[destination]\n{table(dest_v)}\n"
    if model:
        text += f"\n[model]\n{table(model)}\n"
    return text + extra


class Storescp:
    """dcmtk ``storescp`` as the fake PACS (AE ``PACS``), writing every received instance to ``folder``.

    ``+uf`` keeps one file per received C-STORE (a duplicate send shows up as a second file).
    """

    def __init__(self, folder: Path, port: int, *, aet: str = "PACS") -> None:
        self.folder = folder
        self.port = port
        self.aet = aet
        self.proc: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    def start(self) -> Storescp:
        self.proc = subprocess.Popen(
            [
                dcmtk("storescp"),
                "-aet",
                self.aet,
                "-od",
                str(self.folder),
                "+uf",
                "-ta",
                "10",
                "-td",
                "20",
                "-ts",
                "20",
                str(self.port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        wait_for(lambda: port_open(self.port), what=f"storescp listening on {self.port}", timeout=10)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_for(check: Callable[[], Any], *, what: str, timeout: float = TIMEOUT, every: float = 0.05) -> Any:
    """Poll ``check`` until it returns something truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def storescu_command(
    port: int,
    files: Iterable[Path],
    *,
    aet: str = "MODALITY",
    aec: str = "BCEDGE",
    dimse_timeout: int = 20,
    extra: Iterable[str] = (),
) -> list[str]:
    """The dcmtk storescu command line that sends ``files`` to 127.0.0.1:``port``.

    Verbose, so each response is in the output; no halt on a failure. For a sender that runs
    beside the test (``subprocess.Popen``); :func:`storescu` runs it to the end.
    """
    return [
        dcmtk("storescu"),
        "-v",
        "-nh",
        "-aet",
        aet,
        "-aec",
        aec,
        "-to",
        "10",
        "-ta",
        "10",
        "-td",
        str(dimse_timeout),
        *extra,
        "127.0.0.1",
        str(port),
        *map(str, files),
    ]


def storescu(
    port: int,
    files: Iterable[Path],
    *,
    aet: str = "MODALITY",
    aec: str = "BCEDGE",
    timeout: float = TIMEOUT,
    extra: Iterable[str] = (),
) -> subprocess.CompletedProcess[str]:
    """Send ``files`` with :func:`storescu_command` and wait for it to finish."""
    cmd = storescu_command(port, files, aet=aet, aec=aec, extra=extra)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def echoscu(port: int, *, aet: str = "MODALITY", aec: str = "BCEDGE") -> subprocess.CompletedProcess[str]:
    cmd = [dcmtk("echoscu"), "-v", "-aet", aet, "-aec", aec, "-to", "10", "-ta", "10", "127.0.0.1", str(port)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)


def acknowledged(storescu_output: str) -> list[str]:
    """The files storescu got a Success response for, parsed from its ``-v`` log."""
    done, current = [], None
    for line in storescu_output.splitlines():
        if "Sending file:" in line:
            current = line.split("Sending file:", 1)[1].strip()
        elif "Received Store Response" in line and "(Success)" in line and current:
            done.append(current)
            current = None
    return done


def _main(argv: list[str]) -> int:
    import functools

    from bcedge.serve.config import load_config
    from bcedge.serve.node import Node, configure_logging

    delay = float(argv[argv.index("--delay") + 1]) if "--delay" in argv else 0.0
    cfg = load_config(argv[0])
    configure_logging(cfg.logging)
    if "--isolated" in argv:
        node = Node(cfg, factory=functools.partial(FakeSeg, delay))
    else:
        node = Node(cfg, process=FakeSeg(delay))
    node.run_forever(save_every_s=0.2)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.fspath(Path(__file__).resolve().parent.parent))
    sys.exit(_main(sys.argv[1:]))
