"""bcedge/batch/localray.py without starting Ray: a failed start leaves nothing behind; what a local Ray is given.

A real local start with :data:`LOCAL_SYSTEM_CONFIG` (Ray's GCS refuses an unknown key) runs in
``test_batch_kill.py`` (``python -m bcedge batch``).
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'bcedge[batch]')")
psutil = pytest.importorskip("psutil")

from bcedge.batch import localray  # noqa: E402


def test_a_failed_local_start_leaves_none_of_its_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    spawned: list[subprocess.Popen[bytes]] = []

    def failing_init(**kwargs: Any) -> None:
        # What a start that times out leaves: processes it started (here one that would outlive the run).
        spawned.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]))
        raise RuntimeError("The current node timed out during startup.")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", failing_init)
    with pytest.raises(localray.RayRunError, match=r"tried 3 times\): The current node timed out"):
        localray.start_ray(None, 2, 256)
    assert len(spawned) == localray.LOCAL_START_ATTEMPTS
    for proc in spawned:
        assert proc.poll() is not None, f"pid {proc.pid} of a failed attempt is still running"


def test_only_a_local_ray_gets_the_local_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    assert localray.start_ray(None, 2, 256) is True
    assert localray.start_ray("ray://head:10001", 2, 256) is True
    local, cluster = calls
    assert local["address"] == "local" and local["num_cpus"] == 2
    assert local["object_store_memory"] == 256 * 1024 * 1024
    assert local["_system_config"] == localray.LOCAL_SYSTEM_CONFIG
    assert local["_system_config"]["worker_niceness"] == 0
    # A cluster keeps its own settings and size.
    assert cluster["address"] == "ray://head:10001"
    assert "_system_config" not in cluster and "num_cpus" not in cluster


def test_ray_already_up_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "init", lambda **kwargs: pytest.fail("ray.init called although Ray was up"))
    assert localray.start_ray(None, 2, 256) is False
