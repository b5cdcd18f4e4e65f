"""How tests/data/artifact_choice_today.json was made: run at commit e21fd88 (before issue #13), when
Segmenter._choose still existed; prints the raw cases, which were then compacted (see the JSON's "about").
Kept as the record of the pin; it does not run against the new code."""

import itertools
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, "tests")
from bundle_support import write_test_manifest

import bcedge.backends as backends_mod
from bcedge.bundle import ArtifactRecord, load_bundle
from bcedge.errors import BcedgeError
from bcedge.pipeline import Segmenter
from bcedge.preprocess import PreprocessConfig

ALL = ("keras", "tflite", "onnx", "tensorrt")


def avail_sets():
    out = []
    for r in range(len(ALL) + 1):
        for combo in itertools.combinations(ALL, r):
            out.append(set(combo))
            if "onnx" in combo:
                out.append(set(combo) | {"onnx-gpu"})
    return out


# synthetic bundle: every (format, precision) bcedge validates, with mixed gates, in a scrambled order
SYN = []
gates = ["passed", "failed", "not-measured"]
i = 0
for fmt, precs in (
    ("tensorrt", ("fp32", "fp16", "int8")),
    ("onnx", ("int8", "fp32", "fp16", "dynamic")),
    ("tflite", ("dynamic", "fp32", "fp16", "int8")),
    ("keras", ("fp16", "fp32")),
):
    for p in precs:
        SYN.append((f"{fmt}_{p}.bin", fmt, p, fmt, gates[i % 3]))
        i += 1


def make(root, arts):
    root.mkdir(parents=True)
    recs = []
    for j, (f, fmt, p, b, g) in enumerate(arts):
        (root / f).write_bytes(bytes([j]) * (50 + j))
        recs.append(ArtifactRecord.from_file(root, f, format=fmt, precision=p, backend=b, gate=g))
    write_test_manifest(root, recs, PreprocessConfig(size=32))


tmp = Path(tempfile.mkdtemp())
make(tmp / "syn", SYN)
# all passed
make(tmp / "allpassed", [(f, fmt, p, b, "passed") for f, fmt, p, b, _ in SYN])
# all unmeasured
make(tmp / "unmeasured", [(f, fmt, p, b, "not-measured") for f, fmt, p, b, _ in SYN])
bundles = {
    "bcedge/mass_model": "bcedge/mass_model",
    "bcedge/demo_model": "bcedge/demo_model",
    "models/unet-mobilenetv2-combined256": "models/unet-mobilenetv2-combined256",
    "synthetic:mixed": tmp / "syn",
    "synthetic:passed": tmp / "allpassed",
    "synthetic:unmeasured": tmp / "unmeasured",
}


class Fake:
    pass


result = {"synthetic_artifacts": SYN, "cases": []}
for label, path in bundles.items():
    b = load_bundle(path)
    for avail in avail_sets():

        def names(probe_gpu=True, avail=avail):
            return set(avail) if probe_gpu else set(avail) - {"onnx-gpu"}

        backends_mod.auto_backend_names = names
        for backend in ("auto", *ALL, "nope"):
            f = Fake()
            f.bundle = b
            f.warnings = []
            try:
                rec = Segmenter._choose(f, backend, None)
                out = {"file": rec.file, "warnings": f.warnings}
            except BcedgeError as exc:
                out = {"error": type(exc).__name__, "message": str(exc).replace(str(b.dir), "<bundle>")}
            result["cases"].append({"bundle": label, "available": sorted(avail), "backend": backend, **out})
print(json.dumps(result, indent=1))
