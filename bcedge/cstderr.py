"""Send what C/C++ libraries write straight to file descriptor 2 to the debug log.

Python's ``sys.stderr`` does not see them: libpng's "libpng error: ...", libjpeg's "Corrupt JPEG
data: ...", a Rust decoder's panic message, LiteRT's "INFO: Created TensorFlow Lite XNNPACK
delegate for CPU." are written by the library itself. The user's terminal should get one
``error:`` line per failure and nothing on success, so the chatter goes to the debug log
(the ``bcedge`` logger at debug level, for a program that configures logging) instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
from collections.abc import Iterator

_log = logging.getLogger("bcedge")

#: Per thread: whether this thread may capture file descriptor 2 (see :func:`allow_capture_here`).
_ALLOWED = threading.local()


def allow_capture_here() -> None:
    """Let the calling thread capture descriptor 2 as the main thread does.

    For a thread that works on the main thread's behalf (the pipelined scan job's reader) while
    the main thread cannot write to stderr at the same time: the descriptor is process-wide, so
    the caller must keep its own stderr writes out of the capturing windows.
    """
    _ALLOWED.allowed = True


@contextlib.contextmanager
def c_stderr_to_debug_log(who: str) -> Iterator[None]:
    """Inside the block, descriptor 2 goes to a temporary file; its first 4 KiB are logged at
    debug level afterwards as ``"<who> said: ..."``.

    Only in the main thread, or a thread that :func:`allow_capture_here` allowed: the descriptor
    is process-wide, and a server's other threads must keep their stderr.
    """
    if threading.current_thread() is not threading.main_thread() and not getattr(_ALLOWED, "allowed", False):
        yield
        return
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    with tempfile.TemporaryFile() as sink:
        try:
            os.dup2(sink.fileno(), 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            said = sink.read(4096).decode("utf-8", "replace").strip()
            if said:
                _log.debug("%s said: %s", who, " | ".join(said.splitlines()))
