"""Pixel-data decoders per transfer syntax: every installed pydicom plugin timed on a full-field scan.

The ranking in ``bcedge/decoders.py`` (``PREFERENCE``) comes from this script. The scan is the
2944x1920 12-bit phantom of ``bench_infer.py`` (``bcedge.phantom``, seed 21, left CC), written
uncompressed and then compressed losslessly by dcmtk (``dcmcjpls`` JPEG-LS, ``dcmcjpeg
--encode-lossless-sv1`` lossless JPEG, ``dcmcrle`` RLE) and by pydicom's JPEG 2000 encoder.

Per syntax and plugin: wall and process CPU time of ``decoder.as_array`` (min and median of
``--runs``), and whether the pixels equal the uncompressed file's. Also: CharLS alone
(``jpeg_ls.decode_from_buffer`` on the frame, no pydicom around it), and ``bcedge.dicom.read_dicom``
end to end (the plugin bcedge chooses, plus the display LUT and header work). The load average
and the CPU time of other processes during the run are recorded: on a busy machine compare the
CPU columns, not the wall columns.

    python benchmarks/bench_decoders.py [--runs 7] [--json benchmarks/results/decoders.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

#: name -> (transfer syntax UID, dcmtk command or None for pydicom's encoder)
CODECS: dict[str, tuple[str, list[str] | None]] = {
    "JPEG-LS lossless": ("1.2.840.10008.1.2.4.80", ["dcmcjpls"]),
    "JPEG lossless SV1": ("1.2.840.10008.1.2.4.70", ["dcmcjpeg", "--encode-lossless-sv1"]),
    "RLE lossless": ("1.2.840.10008.1.2.5", ["dcmcrle"]),
    "JPEG 2000 lossless": ("1.2.840.10008.1.2.4.90", None),
}


def _busy_cpu_s() -> float:
    """CPU seconds all processes have used (user + nice + system + irq + softirq + steal), from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = f.readline().split()[1:]
    ticks = sum(int(v) for i, v in enumerate(fields) if i not in (3, 4))  # idle, iowait left out
    return ticks / os.sysconf("SC_CLK_TCK")


def timed(fn: Callable[[], Any], runs: int) -> tuple[dict[str, float], Any]:
    """Run ``fn`` ``runs`` times; wall/CPU ms (min, median) and the share of the CPUs others used."""
    wall, cpu = [], []
    busy0, own0, t0 = _busy_cpu_s(), time.process_time(), time.perf_counter()
    result = None
    for _ in range(runs):
        w, c = time.perf_counter(), time.process_time()
        result = fn()
        wall.append((time.perf_counter() - w) * 1e3)
        cpu.append((time.process_time() - c) * 1e3)
    span = time.perf_counter() - t0
    others = max(0.0, (_busy_cpu_s() - busy0) - (time.process_time() - own0))
    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    stats = {
        "wall_ms_min": round(min(wall), 1),
        "wall_ms_median": round(statistics.median(wall), 1),
        "cpu_ms_min": round(min(cpu), 1),
        "cpu_ms_median": round(statistics.median(cpu), 1),
        "others_cpu_share": round(others / (span * ncpu), 2),
    }
    return stats, result


def make_files(folder: Path) -> tuple[Path, dict[str, Path]]:
    """The uncompressed 2944x1920 phantom and one losslessly compressed copy per codec that can be written."""
    import pydicom
    from bench_infer import make_scans

    plain = next(p for p, info in make_scans(folder) if (info["rows"], info["columns"]) == (2944, 1920))
    packed: dict[str, Path] = {}
    for name, (uid, command) in CODECS.items():
        out = folder / f"{name}.dcm"
        if command is not None:
            if shutil.which(command[0]) is None:
                print(f"skip {name}: {command[0]} not installed (dcmtk)", file=sys.stderr)
                continue
            subprocess.run([*command, str(plain), str(out)], check=True, capture_output=True, timeout=300)
        else:
            from pydicom.pixels import get_encoder

            if not get_encoder(uid).is_available:
                print(f"skip {name}: no encoder installed", file=sys.stderr)
                continue
            ds = pydicom.dcmread(plain)
            ds.compress(uid)
            ds.save_as(out)
        packed[name] = out
    return plain, packed


def measure(plain: Path, packed: dict[str, Path], runs: int) -> list[dict[str, Any]]:
    """One row per (codec, plugin), plus CharLS alone and bcedge's read_dicom per codec."""
    import pydicom
    from pydicom.encaps import generate_frames
    from pydicom.pixels import get_decoder

    from bcedge.decoders import decoding_plugin
    from bcedge.dicom import read_dicom

    reference = pydicom.dcmread(plain).pixel_array
    rows: list[dict[str, Any]] = []
    for name, path in packed.items():
        uid = CODECS[name][0]
        ds = pydicom.dcmread(path)
        decoder = get_decoder(ds.file_meta.TransferSyntaxUID)
        base = {"codec": name, "transfer_syntax": uid, "file_bytes": path.stat().st_size}
        for plugin in decoder.available_plugins:
            try:
                stats, arr = timed(lambda p=plugin, d=decoder, x=ds: d.as_array(x, decoding_plugin=p)[0], runs)
            except Exception as exc:  # a plugin that cannot decode this file: recorded, not fatal
                rows.append({**base, "decoder": plugin, "error": " ".join(str(exc).split())[:200]})
                continue
            rows.append({**base, "decoder": plugin, **stats, "identical": bool(np.array_equal(arr, reference))})
            print(f"{name:20s} {plugin:12s} {stats}", file=sys.stderr)
        if uid.startswith("1.2.840.10008.1.2.4.8"):
            try:
                import jpeg_ls
            except ImportError:
                jpeg_ls = None
            if jpeg_ls is not None:
                frame = next(generate_frames(ds.PixelData, number_of_frames=1))
                stats, out = timed(lambda f=frame, j=jpeg_ls: j.decode_from_buffer(f), runs)
                arr = (
                    np.frombuffer(out, reference.dtype).reshape(reference.shape)
                    if isinstance(out, bytes | bytearray)
                    else out
                )
                rows.append({**base, "decoder": "CharLS alone (jpeg_ls.decode_from_buffer)", **stats,
                             "identical": bool(np.array_equal(arr, reference))})  # fmt: skip
        stats, _ = timed(lambda p=path: read_dicom(p), runs)
        rows.append({**base, "decoder": f"bcedge read_dicom ({decoding_plugin(uid)})", **stats})
    stats, _ = timed(lambda: read_dicom(plain), runs)
    rows.append({"codec": "uncompressed", "decoder": "bcedge read_dicom", **stats})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--json", type=Path, default=None, help="write the rows and the machine here")
    args = parser.parse_args(argv)
    from bcedge.bench.machine import library_versions, machine_info

    with tempfile.TemporaryDirectory(prefix="bench decoders ") as tmp:
        plain, packed = make_files(Path(tmp))
        load_before = os.getloadavg()
        rows = measure(plain, packed, args.runs)
    doc = {
        "script": "benchmarks/bench_decoders.py",
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "runs": args.runs,
        "scan": "bcedge.phantom seed 21, L CC, 70 um, 12 bits, MONOCHROME2, cropped to 2944x1920",
        "machine": {**machine_info([1]), "load_avg_before": [round(v, 2) for v in load_before]},
        "libraries": library_versions(
            (
                "pylibjpeg",
                "pylibjpeg-libjpeg",
                "pylibjpeg-openjpeg",
                "pylibjpeg-rle",
                "pyjpegls",
                "python-gdcm",
                "pillow",
            )
        ),
        "rows": rows,
    }
    text = json.dumps(doc, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
