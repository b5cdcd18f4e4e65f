"""The runtime must import and show its help with no ML framework installed."""

from __future__ import annotations

import subprocess
import sys
import textwrap

BLOCKED = ("tensorflow", "keras", "torch", "jax", "jaxlib", "tf2onnx", "onnxruntime", "tensorrt")

_SCRIPT = textwrap.dedent(
    """
    import importlib, importlib.abc, pkgutil, sys

    BLOCKED = {blocked!r}

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"blocked in this test: {{name}}")
            return None

    sys.meta_path.insert(0, Block())
    import bcedge
    names = [m.name for m in pkgutil.walk_packages(bcedge.__path__, "bcedge.")]
    for name in names:
        importlib.import_module(name)
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not leaked, leaked
    from bcedge.cli import main
    rc = main(["--help"])
    print("MODULES", len(names))
    sys.exit(rc)
    """
)


def test_runtime_imports_without_ml_frameworks() -> None:
    script = _SCRIPT.format(blocked=BLOCKED)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Usage" in proc.stdout
    count = int(proc.stdout.split("MODULES")[1].split()[0])
    assert count >= 5, f"only {count} runtime modules imported"


def test_blocker_really_blocks() -> None:
    """The import blocker itself must fail on a blocked import (guards against a vacuous test)."""
    script = _SCRIPT.format(blocked=BLOCKED).replace("import bcedge\n", "import bcedge\nimport keras\n", 1)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "blocked in this test: keras" in proc.stderr
