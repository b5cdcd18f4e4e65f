"""TFLite and ONNX conversion of tiny (64 px) models of each architecture, checked against Keras.

Each architecture is converted once (module-scoped fixture) to every CPU format; every
artifact then runs through the runtime backend that will serve it (LiteRT, onnxruntime)
on preprocessed phantom images and must stay within the per-precision bounds of
:data:`export.verify.OUTPUT_TOLERANCES`.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("ai_edge_litert")

from bundle_support import phantom_model_inputs

from bcedge.backends import open_backend
from bcedge.errors import ConfigError
from export import onnx as onnx_export
from export import tflite, tflite_rewrite
from export.verify import OUTPUT_TOLERANCES

SIZE = 64
ARCHITECTURES = [
    pytest.param("unet", id="unet"),
    pytest.param("unet-mobilenetv2", id="mobilenetv2", marks=pytest.mark.slow),
    pytest.param("unet-vgg19", id="vgg19", marks=pytest.mark.slow),
]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """(10, 64, 64, 1) float32: phantom mammograms through the one preprocessing."""
    return phantom_model_inputs(tmp_path_factory.mktemp("phantoms"), SIZE)


def _model(name: str):
    import keras

    from training.models import build_model

    keras.utils.set_random_seed(0)
    kwargs = {"base_filters": 4} if name == "unet" else {}
    return build_model(name, SIZE, None, **kwargs)


@pytest.fixture(scope="module", params=ARCHITECTURES)
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, images: np.ndarray) -> dict:
    """One architecture converted to every CPU format: files, Keras reference outputs, conversion times."""
    name = request.param
    folder = tmp_path_factory.mktemp(name) / "with space"
    folder.mkdir()
    model = _model(name)
    reference = model.predict(images, verbose=0)
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    saved = tflite.export_saved_model(model, folder / "saved_model", SIZE)
    times["saved_model"] = time.perf_counter() - t0
    files: dict[str, Path] = {}
    for precision in tflite.TFLITE_PRECISIONS:
        t0 = time.perf_counter()
        content = tflite.convert(saved, precision, calib_images=images[:6])
        times[precision] = time.perf_counter() - t0
        files[precision] = folder / f"model_{precision}.tflite"
        files[precision].write_bytes(content)
    t0 = time.perf_counter()
    onnx_info = onnx_export.convert(model, folder / "model.onnx", SIZE)
    times["onnx"] = time.perf_counter() - t0
    files["onnx"] = folder / "model.onnx"
    print(f"{name} conversion seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in times.items()))
    return {"name": name, "files": files, "reference": reference, "onnx_info": onnx_info, "saved": saved}


def _within(out: np.ndarray, reference: np.ndarray, precision: str, label: str) -> None:
    max_bound, mean_bound = OUTPUT_TOLERANCES[precision]
    diff = np.abs(out.astype(np.float64) - reference.astype(np.float64))
    assert out.shape == reference.shape and out.dtype == np.float32
    assert diff.max() <= max_bound, f"{label}: max |dp| {diff.max():.3g} > {max_bound}"
    assert diff.mean() <= mean_bound, f"{label}: mean |dp| {diff.mean():.3g} > {mean_bound}"


@pytest.mark.parametrize("precision", tflite.TFLITE_PRECISIONS)
def test_tflite_matches_keras_within_tolerance(exported: dict, images: np.ndarray, precision: str) -> None:
    with open_backend("tflite", exported["files"][precision], threads=1) as backend:
        assert backend.input_shape == (1, SIZE, SIZE, 1)  # static shape
        out = backend.predict(images)
    _within(out, exported["reference"], precision, f"{exported['name']} tflite {precision}")


def test_tflite_sizes_shrink_with_precision(exported: dict) -> None:
    size = {p: exported["files"][p].stat().st_size for p in tflite.TFLITE_PRECISIONS}
    assert size["fp16"] < 0.6 * size["fp32"]  # float16 weights: about half
    assert size["int8"] < 0.35 * size["fp32"] and size["dynamic"] < 0.35 * size["fp32"]  # int8 weights: about a quarter


def test_int8_model_is_fully_integer(exported: dict) -> None:
    content = exported["files"]["int8"].read_bytes()
    assert tflite.float_ops(content) == []
    # float I/O: the model quantises its input and dequantises its output, nothing else is float
    boundary = tflite.float_ops(content, include_boundary=True)
    assert boundary and {op.split("#")[0] for op in boundary} <= {"QUANTIZE", "DEQUANTIZE"}
    io = tflite.io_details(content)
    assert io["inputs"][0]["dtype"] == "float32" and io["inputs"][0]["shape"] == [1, SIZE, SIZE, 1]


def test_onnx_matches_keras_with_stable_names(exported: dict, images: np.ndarray) -> None:
    import onnx

    info = exported["onnx_info"]
    assert info["input"] == {"name": "image", "shape": [1, SIZE, SIZE, 1]}
    assert info["output"] == {"name": "mask", "shape": [1, SIZE, SIZE, 1]}
    assert info["opset"] == 17 and info["dynamic_batch"] is False
    proto = onnx.load(str(exported["files"]["onnx"]))
    onnx.checker.check_model(proto)
    assert any(o.domain in ("", "ai.onnx") and o.version == 17 for o in proto.opset_import)
    with open_backend("onnx", exported["files"]["onnx"], threads=1) as backend:
        out = backend.predict(images)
    # The bound: ONNX reproduces Keras within 1e-4.
    assert np.abs(out - exported["reference"]).max() <= 1e-4


# ----------------------------------------------------------------- options and errors (plain UNet only)


@pytest.fixture(scope="module")
def unet_saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path]:
    model = _model("unet")
    folder = tmp_path_factory.mktemp("unet-options")
    return model, tflite.export_saved_model(model, folder / "saved model", SIZE)


def test_int8_with_integer_io(unet_saved: tuple, images: np.ndarray, tmp_path: Path) -> None:
    model, saved = unet_saved
    content = tflite.convert(saved, "int8", calib_images=images[:6], int8_io="int8")
    io = tflite.io_details(content)
    inp, out = io["inputs"][0], io["outputs"][0]
    assert inp["dtype"] == "int8" and out["dtype"] == "int8"
    # [0, 1] images calibrate to 256 steps across the int8 range
    assert inp["scale"] == pytest.approx(1 / 255, rel=1e-3) and inp["zero_point"] == -128
    assert tflite.float_ops(content, include_boundary=True) == []
    path = tmp_path / "with space" / "int8io.tflite"
    path.parent.mkdir()
    path.write_bytes(content)
    with open_backend("tflite", path) as backend:  # the backend quantises and dequantises
        got = backend.predict(images)
    _within(got, model.predict(images, verbose=0), "int8", "unet int8 with int8 I/O")


def test_selective_int8_keeps_the_worst_layers_in_float(unet_saved: tuple, images: np.ndarray, tmp_path: Path) -> None:
    model, saved = unet_saved
    ranking = tflite.debug_ranking(saved, images[:6])
    assert len(ranking) >= 5
    errors = [r["rmse_over_scale"] for r in ranking]
    assert errors == sorted(errors, reverse=True) and all(e >= 0 for e in errors)
    kept = [r["tensor"] for r in ranking[:2]]
    content = tflite.convert(saved, "int8", calib_images=images[:6], float_layers=kept)
    pure = tflite.convert(saved, "int8", calib_images=images[:6])
    assert tflite.float_ops(pure) == []
    # the two denylisted layers (and the QUANTIZE/DEQUANTIZE around them) now compute in float
    floats = tflite.float_ops(content)
    assert len([op for op in floats if not op.startswith(("QUANTIZE", "DEQUANTIZE"))]) >= 2
    path = tmp_path / "selective.tflite"
    path.write_bytes(content)
    with open_backend("tflite", path) as backend:
        got = backend.predict(images)
    _within(got, model.predict(images, verbose=0), "int8", "unet int8 with two float layers")
    with pytest.raises(ConfigError, match="full INT8 only"):
        tflite.convert(saved, "dynamic", float_layers=kept)


def test_float_ops_lists_float_kernels(unet_saved: tuple) -> None:
    _, saved = unet_saved
    dynamic = tflite.convert(saved, "dynamic")
    ops = tflite.float_ops(dynamic)
    # dynamic range keeps float activations: every conv still reads/writes float32
    assert any(op.startswith("CONV_2D#") for op in ops)
    assert len(ops) == len([r for r in tflite.op_summary(dynamic) if r["op"] not in tflite.BOUNDARY_OPS])


@pytest.fixture(scope="module")
def depthwise_saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path]:
    """A small model with a depthwise convolution large enough (128 channels x 3x3 = 1152 weights >= the
    converter's 1024) to be quantised by dynamic-range quantisation, as MobileNetV2's are."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.Conv2D(128, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu")(x)
    outputs = keras.layers.Conv2D(1, 1, activation="sigmoid")(x)
    model = keras.Model(inputs, outputs)
    return model, tflite.export_saved_model(model, tmp_path_factory.mktemp("depthwise") / "saved", SIZE)


def _weights_of(content: bytes, op_name: str) -> np.ndarray:
    """The weight tensor (input 1) of the first ``op_name`` op, as stored (int8 or float32)."""
    interp = tflite._interpreter(content)
    interp.allocate_tensors()
    op = next(o for o in interp._get_ops_details() if o["op_name"] == op_name)
    return interp.get_tensor(int(op["inputs"][1]))


def _scales_of(content: bytes, op_name: str) -> np.ndarray:
    interp = tflite._interpreter(content)
    op = next(o for o in interp._get_ops_details() if o["op_name"] == op_name)
    detail = next(d for d in interp.get_tensor_details() if d["index"] == int(op["inputs"][1]))
    return detail["quantization_parameters"]["scales"]


def test_dynamic_keeps_depthwise_weights_in_float(depthwise_saved: tuple, images: np.ndarray, tmp_path: Path) -> None:
    import tensorflow as tf

    model, saved = depthwise_saved
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    plain = bytes(converter.convert())  # what the converter alone makes: a hybrid depthwise op
    assert tflite.hybrid_ops(plain) == {"CONV_2D": 1, "DEPTHWISE_CONV_2D": 1}
    ours = tflite.convert(saved, "dynamic")
    # The 128-channel convolution stays a hybrid (int8 weights; XNNPACK runs it); the depthwise one is float.
    assert tflite.hybrid_ops(ours) == {"CONV_2D": 1}
    # Its float weights are exactly the int8 values times their per-channel scales (the values the
    # hybrid kernel multiplied by), and the other weights are untouched.
    q, scales = _weights_of(plain, "DEPTHWISE_CONV_2D"), _scales_of(plain, "DEPTHWISE_CONV_2D")
    assert q.dtype == np.int8 and scales.size == q.shape[-1] == 128
    got = _weights_of(ours, "DEPTHWISE_CONV_2D")
    assert got.dtype == np.float32 and np.array_equal(got, q.astype(np.float32) * scales.astype(np.float32))
    assert np.array_equal(_weights_of(ours, "CONV_2D"), _weights_of(plain, "CONV_2D"))
    # Applied again (nothing hybrid left), or to a model without hybrid depthwise ops: unchanged.
    assert tflite_rewrite.float_depthwise_weights(ours) == (ours, 0)
    int8 = tflite.convert(saved, "int8", calib_images=images[:6])
    assert tflite_rewrite.float_depthwise_weights(int8) == (int8, 0)
    # And it runs, as close to Keras as the dynamic-range bounds ask.
    path = tmp_path / "dw.tflite"
    path.write_bytes(ours)
    with open_backend("tflite", path, threads=1) as backend:
        out = backend.predict(images)
    _within(out, model.predict(images, verbose=0), "dynamic", "depthwise model, dynamic with float depthwise")


def test_onnx_dynamic_batch(unet_saved: tuple, images: np.ndarray, tmp_path: Path) -> None:
    import onnxruntime as ort

    model, _ = unet_saved
    path = tmp_path / "with space" / "dyn.onnx"
    info = onnx_export.convert(model, path, SIZE, dynamic_batch=True, opset=15)
    assert info["input"]["shape"] == ["N", SIZE, SIZE, 1] and info["opset"] == 15
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(["mask"], {"image": images[:3]})[0]
    assert out.shape == (3, SIZE, SIZE, 1)
    assert np.abs(out - model.predict(images[:3], verbose=0)).max() <= 1e-4


def test_convert_refuses_bad_requests(unet_saved: tuple) -> None:
    _, saved = unet_saved
    with pytest.raises(ConfigError, match="unknown TFLite precision"):
        tflite.convert(saved, "int4")
    with pytest.raises(ConfigError, match="needs calibration images"):
        tflite.convert(saved, "int8")
    with pytest.raises(ConfigError, match="input/output type"):
        tflite.convert(saved, "int8", calib_images=np.zeros((1, SIZE, SIZE, 1), np.float32), int8_io="uint4")
    with pytest.raises(ConfigError, match=r"\(N, S, S, 1\)"):
        tflite.representative_dataset(np.zeros((SIZE, SIZE), np.float32))


def test_representative_dataset_yields_each_image_once(images: np.ndarray) -> None:
    steps = list(tflite.representative_dataset(images[:4])())
    assert len(steps) == 4
    for i, step in enumerate(steps):
        assert len(step) == 1 and step[0].shape == (1, SIZE, SIZE, 1) and step[0].dtype == np.float32
        assert np.array_equal(step[0][0], images[i])
