"""bcedge.cstderr: what C libraries write to descriptor 2 goes to the debug log, not the terminal."""

from __future__ import annotations

import logging
import os
import threading

import pytest

from bcedge.cstderr import allow_capture_here, c_stderr_to_debug_log


def test_fd2_writes_go_to_the_debug_log(capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="bcedge"), c_stderr_to_debug_log("libfoo"):
        os.write(2, b"INFO: Created a delegate.\nsecond line\n")
    os.write(2, b"after\n")  # the descriptor is restored
    assert capfd.readouterr().err == "after\n"
    assert "libfoo said: INFO: Created a delegate. | second line" in caplog.text


def test_other_threads_keep_their_stderr_unless_allowed(capfd: pytest.CaptureFixture[str]) -> None:
    def write(allowed: bool, text: bytes) -> None:
        if allowed:
            allow_capture_here()
        with c_stderr_to_debug_log("libfoo"):
            os.write(2, text)

    for allowed, text in ((False, b"kept\n"), (True, b"captured\n")):
        t = threading.Thread(target=write, args=(allowed, text))
        t.start()
        t.join()
    assert capfd.readouterr().err == "kept\n"
