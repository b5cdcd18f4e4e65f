"""The ONNX INT8 artifact (``onnx-int8``): onnxruntime static QDQ quantisation, per-channel 7-bit weights.

A tiny UNet (64 px) quantised through the table's builder must give a valid QDQ model whose weights
fit in 7 bits, that the onnxruntime backend runs within the INT8 output tolerance of Keras. A small
hand-set model whose masks are decisive (a thresholded local mean) then goes into a bundle beside a
deliberately broken copy of its INT8 artifact (weights negated): the export gate fails the broken
one and passes the right one, and the runtime's acceptance check refuses the broken one and runs the
right one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from bundle_support import phantom_model_inputs, write_test_manifest

from bcedge.backends import open_backend
from bcedge.bundle import ArtifactRecord
from bcedge.errors import ConfigError
from bcedge.formats import KINDS
from bcedge.pipeline import Segmenter
from bcedge.preprocess import PreprocessConfig
from export import onnx as onnx_export
from export.builders import BuildContext
from export.bundle_builder import builder_of
from export.calibration import onnx_calibration_reader
from export.verify import OUTPUT_TOLERANCES

SIZE = 64


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """(10, 64, 64, 1) float32: phantom mammograms through the one preprocessing."""
    return phantom_model_inputs(tmp_path_factory.mktemp("phantoms"), SIZE)


def _build(model, folder: Path, calibration: np.ndarray) -> tuple[Path, dict]:
    """The ``onnx-int8`` row's builder on ``model`` (its ONNX FP32 made in the work folder); (file, details)."""
    kind = KINDS["onnx-int8"]
    work = folder / "work"
    work.mkdir(parents=True)
    context = BuildContext(
        model=model, size=SIZE, out=folder, work=work, calibration=calibration, cache=folder / "cache", log=print
    )
    file, details = builder_of(kind)(kind, context)
    assert file == kind.file == "model_int8.onnx"
    if onnx_export.keeps_calibration_cache():  # the activation ranges were kept, named by model and images
        assert (folder / "cache" / "onnx" / details["calibration_cache"]).is_file()
    return folder / file, details


@pytest.fixture(scope="module")
def unet(tmp_path_factory: pytest.TempPathFactory, images: np.ndarray) -> dict:
    """A tiny random UNet, its Keras outputs, and its ONNX INT8 artifact built through the table."""
    import keras

    from training.models import build_model

    keras.utils.set_random_seed(0)
    model = build_model("unet", SIZE, None, base_filters=4)
    folder = tmp_path_factory.mktemp("unet") / "with space"
    path, details = _build(model, folder, images[:6])
    return {"model": model, "reference": model.predict(images, verbose=0), "path": path, "details": details}


def test_the_builder_writes_a_valid_qdq_model_with_7_bit_per_channel_weights(unet: dict) -> None:
    import onnx

    proto = onnx.load(str(unet["path"]))
    onnx.checker.check_model(proto, full_check=True)
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ, not QLinearConv operators
    assert [i.name for i in proto.graph.input] == ["image"] and [o.name for o in proto.graph.output] == ["mask"]
    d = unet["details"]
    assert d["quant_format"] == "QDQ" and d["reduce_range"] is True and d["per_channel"] is True
    assert d["activation_type"] == "QUInt8" and d["weight_type"] == "QInt8" and d["n_calibration"] == 6
    assert d["quantized_ops"].get("Conv", 0) >= 1 and d["per_channel_weights"] >= 1
    lo, hi = d["weight_int_range"]
    assert -64 <= lo < 0 < hi <= 64, d["weight_int_range"]  # 7 bits: no vpmaddubsw saturation on AVX2
    # the summary describes the file that was written
    assert onnx_export.qdq_summary(proto)["weight_int_range"] == d["weight_int_range"]


def test_full_range_weights_use_8_bits(unet: dict, images: np.ndarray, tmp_path: Path) -> None:
    """The comparison variant (reduce_range=False) really is full range: the 7-bit check above means something.
    It reuses the activation ranges of a first quantisation (the calibration cache) and gets the same ones."""
    import onnx

    fp32 = tmp_path / "fp32.onnx"
    onnx_export.convert(unet["model"], fp32, SIZE)
    ranges = onnx_export.calibration_cache_file(tmp_path / "cache", fp32, images[:6])
    assert ranges != onnx_export.calibration_cache_file(tmp_path / "cache", fp32, images[:5])  # other images
    seven = onnx_export.quantize_int8(fp32, tmp_path / "seven.onnx", images[:6], calibration_cache=ranges)
    assert ranges.is_file() or not onnx_export.keeps_calibration_cache()
    details = onnx_export.quantize_int8(
        fp32, tmp_path / "full.onnx", images[:6], reduce_range=False, calibration_cache=ranges
    )
    assert details["reduce_range"] is False and max(abs(v) for v in details["weight_int_range"]) > 64
    assert max(abs(v) for v in seven["weight_int_range"]) <= 64

    def activation_scales(path: Path) -> dict[str, float]:
        proto = onnx.load(str(path))
        inits = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
        return {n.output[0]: float(inits[n.input[1]]) for n in proto.graph.node if n.op_type == "QuantizeLinear"}

    assert activation_scales(tmp_path / "seven.onnx") == activation_scales(tmp_path / "full.onnx")


def test_the_onnx_backend_runs_it_within_the_int8_tolerance(unet: dict, images: np.ndarray) -> None:
    with open_backend("onnx", unet["path"], threads=1) as backend:
        assert backend.input_shape == (1, SIZE, SIZE, 1) and backend.details["input_dtype"] == "float32"
        out = backend.predict(images)
    max_bound, mean_bound = OUTPUT_TOLERANCES["int8"]
    diff = np.abs(out.astype(np.float64) - unet["reference"].astype(np.float64))
    assert out.shape == unet["reference"].shape and out.dtype == np.float32
    assert diff.max() <= max_bound and diff.mean() <= mean_bound, (diff.max(), diff.mean())


def test_calibration_reader_refuses_what_is_not_preprocessed(images: np.ndarray) -> None:
    reader = onnx_calibration_reader(images[:3], "image")
    feeds = []
    while (feed := reader.get_next()) is not None:
        feeds.append(feed)
    assert len(feeds) == 3 and all(f["image"].shape == (1, SIZE, SIZE, 1) for f in feeds)
    assert np.array_equal(feeds[1]["image"][0], images[1])
    reader.rewind()
    assert reader.get_next() is not None
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        onnx_calibration_reader(images[:2] * 255.0, "image")  # raw pixels
    with pytest.raises(ConfigError, match=r"\(N, S, S, 1\)"):
        onnx_calibration_reader(images[0], "image")
    with pytest.raises(ConfigError, match="needs calibration images"):
        kind = KINDS["onnx-int8"]
        builder_of(kind)(kind, BuildContext(model=None, size=SIZE, out=Path("."), work=Path(".")))


# --------------------------------------------------------------------------- gate and acceptance


def _decisive_model():
    """(N, 64, 64, 1) -> sigmoid(16 * (5x5 local mean - ~0.45)), piecewise: masks with clear edges.

    A random tiny UNet's output hovers around 0.5, where any rounding flips mask pixels; this model's
    masks move only where the local mean crosses its threshold, so a right INT8 model agrees with it
    (Dice > 0.98) and a wrong one cannot.
    """
    import keras

    inp = keras.Input((SIZE, SIZE, 1))
    hidden = keras.layers.Conv2D(4, 5, padding="same", activation="relu", name="mean")(inp)
    out = keras.layers.Conv2D(1, 1, activation="sigmoid", name="mask")(hidden)
    model = keras.Model(inp, out)
    steps = np.array([0.2, 0.35, 0.5, 0.65], np.float32)
    model.get_layer("mean").set_weights([np.full((5, 5, 1, 4), 1 / 25, np.float32), -steps])
    # logit = 8 * sum_i relu(m - t_i) - 2.8: zero at m = 0.45, slope 16 there
    model.get_layer("mask").set_weights([np.full((1, 1, 4, 1), 8.0, np.float32), np.array([-2.8], np.float32)])
    return model


def _negate_weights(src: Path, dst: Path) -> None:
    """A deliberately broken INT8 artifact: every integer weight negated (what a kernel that saturates
    to the wrong sign would compute, exaggerated)."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(src))
    weights = {n.input[0] for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    for i, init in enumerate(proto.graph.initializer):
        values = numpy_helper.to_array(init)
        if init.name in weights and values.dtype == np.int8:
            proto.graph.initializer[i].CopyFrom(numpy_helper.from_array(-np.maximum(values, -127), init.name))
    onnx.save(proto, str(dst))


@pytest.fixture(scope="module")
def decisive_bundle(tmp_path_factory: pytest.TempPathFactory, images: np.ndarray) -> dict:
    """A bundle holding the decisive model's broken INT8 (first) and right INT8, with acceptance data and
    baselines as ``bcedge export`` writes them."""
    from export.acceptance import baselines, make_acceptance, write_acceptance

    model = _decisive_model()
    folder = tmp_path_factory.mktemp("decisive") / "bundle dir"
    folder.mkdir()
    good, _ = _build(model, folder, images[:6])
    _negate_weights(good, folder / "broken_int8.onnx")
    reference = model.predict(images, verbose=0)
    masks = (reference >= 0.5).astype(np.uint8)
    assert 0.05 < masks.mean() < 0.95, "reference masks neither empty nor full, or the test means nothing"
    records = [
        ArtifactRecord.from_file(folder, name, format="onnx", precision="int8", backend="onnx", gate="passed")
        for name in ("broken_int8.onnx", "model_int8.onnx")
    ]
    data, entry = make_acceptance(images, lambda x: model.predict(x, verbose=0), 0.5, source="test")
    write_acceptance(folder, data)
    entry["baseline"] = baselines(folder, records, data, 0.5)
    write_test_manifest(folder, records, PreprocessConfig(size=SIZE), acceptance=entry, threshold=0.5)
    return {"folder": folder, "images": images, "masks": masks, "entry": entry}


def test_the_export_gate_passes_the_right_int8_and_fails_the_broken_one(decisive_bundle: dict) -> None:
    from export.verify import measure, score

    folder, images, masks = decisive_bundle["folder"], decisive_bundle["images"], decisive_bundle["masks"]
    reference = score(masks.astype(np.float32), masks)  # the reference's own masks: Dice 1
    tol = KINDS["onnx-int8"].tolerance
    right = measure("onnx", folder / "model_int8.onnx", images, masks, reference=reference, tolerance=tol)
    broken = measure("onnx", folder / "broken_int8.onnx", images, masks, reference=reference, tolerance=tol)
    assert right.gate == "passed" and right.metrics["dice"] >= 1.0 - tol, right.metrics
    assert broken.gate == "failed" and broken.metrics["dice"] < 0.5, broken.metrics


def test_the_acceptance_check_runs_the_right_int8_and_refuses_the_broken_one(decisive_bundle: dict) -> None:
    from bcedge.acceptance import MIN_DICE
    from export.acceptance import check_bundle

    baseline = decisive_bundle["entry"]["baseline"]
    assert baseline["model_int8.onnx"]["dice"] >= MIN_DICE and baseline["broken_int8.onnx"]["dice"] < 0.5
    verdicts = dict(check_bundle(decisive_bundle["folder"], threads=1))
    assert verdicts["model_int8.onnx"]["status"] == "passed", verdicts["model_int8.onnx"]
    assert verdicts["broken_int8.onnx"]["status"] == "refused", verdicts["broken_int8.onnx"]
    # The runtime's choice (static order: the broken one is tried first, in manifest order) falls to the right one.
    with Segmenter(decisive_bundle["folder"], "onnx", threads=1) as seg:
        assert seg.artifact.file == "model_int8.onnx"
        by_file = {c["file"]: c for c in seg.choice["candidates"]}
    assert by_file["broken_int8.onnx"]["status"] == "refused" and by_file["model_int8.onnx"]["status"] == "accepted"
    assert any(w.startswith("refused") and "broken_int8.onnx" in w for w in seg.warnings)
