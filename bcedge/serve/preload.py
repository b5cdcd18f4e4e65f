"""What every serve worker imports, imported once by the node's fork server before it forks them.

The node starts its worker processes through :mod:`multiprocessing`'s fork server
(:func:`bcedge.serve.isolation.worker_context`): one fresh interpreter, started by the node, that
imports this module and then forks one worker per request. A worker so starts with numpy,
pydicom, highdicom (its attribute tables indexed), LiteRT, OpenCV and bcedge's scan job already
imported, and only loads the model itself. Spawned one by one, each worker imported all of
that on its own: ~0.8 s of CPU per worker at every (re)start on the 2-core AMD EPYC, paid
twice by a 2-worker node after a ``kill -9`` while its spooled scans waited.

The fork server is single-threaded and has loaded no model, so forking it is safe: no backend
thread pool or open model exists yet; each worker builds its own after the fork.

Nothing here may stop the fork server: a missing extra is left to the worker's own model load,
which reports it as the node's start error (e.g. highdicom missing: ``pip install 'bcedge[serve]'``).
"""

from __future__ import annotations

import contextlib
import importlib


def preload() -> list[str]:
    """Import what a worker's :class:`~bcedge.serve.processing.SegmenterProcessor` needs; returns what failed.

    Returns:
        Names of the steps that raised (a missing optional extra); empty when all loaded.
    """
    failed: list[str] = []
    with contextlib.suppress(Exception):
        from bcedge.decoders import import_pydicom

        # First, without the test-data downloader's extras (highdicom would import pydicom whole).
        import_pydicom()
    for name in (
        "numpy",
        "cv2",
        "ai_edge_litert.interpreter",
        "bcedge.outputs.seg",
        "bcedge.pipeline",
        "bcedge.scanjob",
        "bcedge.serve.processing",
    ):
        try:
            importlib.import_module(name)
        except Exception:  # an extra that is not installed: the worker's model load says so
            failed.append(name)
    try:
        from bcedge.outputs import preload_seg

        preload_seg()  # highdicom and its attribute tables: ~0.3 s CPU per worker otherwise
    except Exception:
        failed.append("bcedge.outputs.preload_seg")
    return failed


def _in_fork_server() -> bool:
    """Whether this import runs inside :func:`multiprocessing.forkserver.main` (the fork server's preload)."""
    import sys

    try:
        from multiprocessing import forkserver
    except ImportError:
        return False
    frame = sys._getframe()
    while frame is not None:
        if frame.f_code is forkserver.main.__code__:
            return True
        frame = frame.f_back
    return False


#: What :func:`preload` could not import in this process (the fork server imports this module).
FAILED = preload()

if _in_fork_server():
    import atexit
    import os

    # The fork server ends when the node does (its "alive" pipe closes); its workers then die
    # with it (PR_SET_PDEATHSIG). Tearing down the interpreter with all of the above imported
    # first kept a busy worker running 0.1-0.4 s longer (under load) beside the restarting node:
    # there is nothing to clean up here, so the first exit handler leaves at once.
    atexit.register(os._exit, 0)
