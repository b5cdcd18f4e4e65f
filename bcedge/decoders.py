"""Which pydicom plugin decodes each compressed transfer syntax: the fastest one installed, chosen once.

pydicom tries its plugins in a fixed order of its own, not by speed: with the ``[dicom]`` extra
installed, a JPEG-LS scan goes to pylibjpeg-libjpeg, about 4x slower than CharLS (pyjpegls) on
the same file, and an RLE scan to pydicom's pure-NumPy decoder when pylibjpeg-rle (5x faster) is
there. :data:`PREFERENCE` lists, per transfer syntax, the plugins fastest first, as measured by
``benchmarks/bench_decoders.py`` (FFDM 2944x1920 12-bit phantom, every plugin decoding to the
uncompressed file's pixels); :func:`decoding_plugin` picks the first one installed, once per
transfer syntax and process. Syntaxes not listed keep pydicom's own order.

Every plugin named here is lossless on lossless syntaxes (the benchmark and
``tests/test_decoders.py`` check pixel identity against the uncompressed scan), so the choice
changes the time, never the pixels. When the chosen plugin cannot decode a file,
:mod:`bcedge.dicom` retries with pydicom's full list before reporting an error.
"""

from __future__ import annotations

import functools
import sys
import threading
from types import ModuleType

#: Transfer syntax UID -> pydicom plugin names, fastest first. Measured with
#: benchmarks/bench_decoders.py's method (process CPU ms per decode of the 2944x1920 12-bit
#: phantom, min of 7, AMD EPYC AVX2 without AVX-512, 2 cores, measured while other processes
#: used ~90 % of the CPUs, so CPU time, not wall time, and only the order is trusted):
#: JPEG-LS pyjpegls 149 / gdcm 259 / pylibjpeg 656 (CharLS alone 160); lossless JPEG gdcm 233 /
#: pylibjpeg 309; RLE pylibjpeg (pylibjpeg-rle) 18 / pydicom 100. JPEG 2000 (pylibjpeg 788,
#: pillow 861, gdcm 922) is within that machine's noise: pylibjpeg, pydicom's own first, stays
#: first. GDCM (python-gdcm) is used where installed but not in the [dicom] extra: 39 MB, and
#: pydicom imports it at start-up whether or not a scan needs it (cold start).
PREFERENCE: dict[str, tuple[str, ...]] = {
    "1.2.840.10008.1.2.4.80": ("pyjpegls", "gdcm", "pylibjpeg"),  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": ("pyjpegls", "gdcm", "pylibjpeg"),  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.57": ("gdcm", "pylibjpeg"),  # JPEG lossless, process 14
    "1.2.840.10008.1.2.4.70": ("gdcm", "pylibjpeg"),  # JPEG lossless, process 14 SV1
    "1.2.840.10008.1.2.4.90": ("pylibjpeg", "pillow", "gdcm"),  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": ("pylibjpeg", "pillow", "gdcm"),  # JPEG 2000
    "1.2.840.10008.1.2.5": ("pylibjpeg", "pydicom"),  # RLE lossless (pylibjpeg: the pylibjpeg-rle plugin)
}


@functools.cache
def decoding_plugin(transfer_syntax: str) -> str | None:
    """The plugin to decode ``transfer_syntax`` with: the first of :data:`PREFERENCE` that pydicom has.

    Looked up once per transfer syntax and process (finding out which plugins are installed
    imports them, tens of milliseconds).

    Args:
        transfer_syntax: a transfer syntax UID string.

    Returns:
        A pydicom plugin name (``"pyjpegls"``, ...) or None: pydicom's own order (a syntax not
        listed, none of the listed plugins installed, or pydicom < 3, which has no plugin choice).
    """
    wanted = PREFERENCE.get(str(transfer_syntax))
    if not wanted:
        return None
    try:
        from pydicom.pixels import get_decoder
        from pydicom.uid import UID

        available = set(get_decoder(UID(str(transfer_syntax))).available_plugins)
    except (ImportError, NotImplementedError, AttributeError):
        return None
    return next((name for name in wanted if name in available), None)


def chosen_decoders() -> dict[str, str | None]:
    """Transfer syntax UID -> the plugin :func:`decoding_plugin` picks here (for reports and ``--json``)."""
    return {ts: decoding_plugin(ts) for ts in PREFERENCE}


#: Optional imports of pydicom's test-data downloader (``pydicom.data.download``), which
#: ``import pydicom`` loads through ``pydicom.pixels`` -> ``pydicom.data``: requests brings
#: urllib3, charset_normalizer, idna and certifi. bcedge never downloads pydicom's test data.
_DOWNLOADER_EXTRAS = ("requests", "tqdm")
_IMPORT_LOCK = threading.Lock()


def import_pydicom() -> ModuleType:
    """``import pydicom``, without loading the optional extras of pydicom's test-data downloader.

    Cold start (issue #14 item 8): those extras are ~135 of the ~430 modules ``import pydicom``
    loads here and ~100-200 ms CPU of it (measured on the busy 2-core machine). While pydicom
    is first imported, ``requests`` and ``tqdm`` are marked absent, so its downloader takes its
    own urllib fallback; the marks are removed at once, and a later ``import requests`` (e.g.
    by dicomweb-client in ``bcedge batch``) works as usual. No effect once pydicom is imported.

    Returns:
        The ``pydicom`` module.
    """
    module = sys.modules.get("pydicom")
    if module is not None:
        return module
    with _IMPORT_LOCK:
        hidden = [name for name in _DOWNLOADER_EXTRAS if name not in sys.modules]
        for name in hidden:
            sys.modules[name] = None  # type: ignore[assignment]  # None: "import name" raises ImportError
        try:
            import pydicom
        finally:
            for name in hidden:
                if name in sys.modules and sys.modules[name] is None:
                    del sys.modules[name]
    return pydicom
