"""Backend contract (DESIGN.md invariant 4): every available backend, same inputs, same probabilities.

The models are a tiny plain UNet (32 px, 4 base filters) with random weights,
converted here by the shortest working path (the exporters' own tests cover the
production path). Tolerances against the Keras reference, on sigmoid outputs:

* fp32 TFLite and ONNX: max |diff| <= 1e-4 (observed ~5e-7).
* full-int8 TFLite (int8 input and output, 8 random calibration images):
  max |diff| <= 0.08 and mean |diff| <= 0.01 (observed 0.024-0.048 and ~0.0023
  over 24 random images on x86 XNNPACK; the output step alone is 1/256, and
  ARM int8 kernels round differently).
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bundle_support import write_test_manifest

from bcedge.backends import (
    BACKENDS,
    Backend,
    BackendSpec,
    auto_backend_names,
    available_backends,
    get_spec,
    open_backend,
)
from bcedge.backends.base import RANGE_TOLERANCE
from bcedge.bundle import ArtifactRecord, load_bundle
from bcedge.errors import ConfigError, InputError, MissingDependencyError
from bcedge.formats import FORMATS, ONNX_GPU, choose_artifact

SIZE = 32
FP32_ATOL = 1e-4
INT8_MAX_ATOL = 0.08
INT8_MEAN_ATOL = 0.01


# --------------------------------------------------------------------------- a numpy backend for the base class


class Doubler(Backend):
    """Test double: returns x / 2 (or a wrong shape), records the batches it was given."""

    name = "doubler"
    options = ("batch", "bad_output")

    def _open(self, batch: int | None = None, bad_output: bool = False) -> tuple[int | None, int, int, int]:
        self.calls: list[np.ndarray] = []
        self.bad_output = bad_output
        self.released = False
        return batch, SIZE, SIZE, 1

    def _predict(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append(batch.copy())
        return batch[:, :-1] if self.bad_output else batch / 2

    def _close(self) -> None:
        self.released = True


@pytest.fixture
def model_file(spaced_dir: Path) -> Path:
    path = spaced_dir / "model.bin"
    path.write_bytes(b"weights")
    return path


def images(n: int, seed: int = 0, size: int = SIZE) -> np.ndarray:
    return np.random.default_rng(seed).random((n, size, size, 1), dtype=np.float32)


@pytest.mark.parametrize(
    ("batch", "needle"),
    [
        ([[0.5]], "got list"),
        (np.zeros((1, SIZE, SIZE, 1), np.uint8), "got dtype uint8"),
        (np.zeros((1, SIZE, SIZE, 1), np.float16), "got dtype float16"),
        (np.zeros((SIZE, SIZE, 1), np.float32), "4-D NHWC batch (N, 32, 32, 1); got shape (32, 32, 1)"),
        (np.zeros((1, SIZE, SIZE, 3), np.float32), "one channel"),
        (np.zeros((1, 1, SIZE, SIZE), np.float32), "one channel"),
        (np.zeros((1, 64, 64, 1), np.float32), "takes (N, 32, 32, 1) images; got shape (1, 64, 64, 1)"),
        (np.zeros((0, SIZE, SIZE, 1), np.float32), "empty batch"),
        (np.full((1, SIZE, SIZE, 1), 255.0, np.float32), "values in [0, 1] (preprocessed images); got min 255"),
        (np.full((1, SIZE, SIZE, 1), -0.01, np.float32), "got min -0.01"),
        (np.full((1, SIZE, SIZE, 1), np.nan, np.float32), "got min nan"),
    ],
)
def test_input_checks(model_file: Path, batch: Any, needle: str) -> None:
    with Doubler(model_file) as backend:
        with pytest.raises(InputError) as excinfo:
            backend.predict(batch)
        assert needle in str(excinfo.value) and "\n" not in str(excinfo.value)
        assert backend.calls == []  # nothing reached the model


def test_float64_converted_and_tiny_overshoot_clipped(model_file: Path) -> None:
    x = images(2).astype(np.float64)
    x[0, 0, 0, 0] = 1.0 + RANGE_TOLERANCE / 2
    x[1, 0, 0, 0] = -RANGE_TOLERANCE / 2
    with Doubler(model_file) as backend:
        out = backend.predict(x)
        seen = backend.calls[0]
    assert seen.dtype == np.float32 and seen.min() == 0.0 and seen.max() == 1.0
    assert out.dtype == np.float32 and out.shape == x.shape
    np.testing.assert_array_equal(out, seen / 2)


@pytest.mark.parametrize("n", [1, 2, 5])
def test_fixed_batch_split_and_padded(model_file: Path, n: int) -> None:
    x = images(n)
    with Doubler(model_file, batch=2) as backend:
        assert backend.input_shape == (2, SIZE, SIZE, 1)
        out = backend.predict(x)
        calls = backend.calls
    assert [c.shape[0] for c in calls] == [2] * ((n + 1) // 2)
    np.testing.assert_array_equal(out, x / 2)
    if n % 2:
        assert not calls[-1][1].any()  # the last batch was zero-padded


def test_wrong_output_shape(model_file: Path) -> None:
    with Doubler(model_file, bad_output=True) as backend, pytest.raises(InputError, match="returned shape"):
        backend.predict(images(1))


def test_open_checks(model_file: Path, spaced_dir: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        Doubler(spaced_dir / "absent.bin")
    with pytest.raises(ConfigError, match=r"no option\(s\) \['provider'\]; it accepts threads, batch, bad_output"):
        Doubler(model_file, provider="x")
    for threads in (0, -1, 1.5, True, "2"):
        with pytest.raises(ConfigError, match="threads is"):
            Doubler(model_file, threads=threads)
    assert Doubler(model_file, threads=3).details["threads"] == 3


def test_close_and_context_manager(model_file: Path) -> None:
    with Doubler(model_file) as backend:
        assert not backend.closed
        backend.predict(images(1))
    assert backend.closed and backend.released
    backend.close()  # twice is fine
    with pytest.raises(InputError, match="is closed"):
        backend.predict(images(1))
    assert "closed" in repr(backend)


# --------------------------------------------------------------------------- registry


def test_registry_rows() -> None:
    assert list(BACKENDS) == ["keras", "tflite", "openvino", "onnx", "tensorrt"]
    for name, spec in BACKENDS.items():
        assert spec.name == name
        assert set(spec.formats) <= set(FORMATS)
        module, _, cls = spec.target.partition(":")
        assert module.startswith("bcedge.backends.") and cls.endswith("Backend")
        ok, reason = spec.available()
        assert isinstance(ok, bool) and reason
    assert BACKENDS["tensorrt"].target == "bcedge.backends.tensorrt:TensorRTBackend"
    assert BACKENDS["tensorrt"].modules == ("tensorrt",)
    assert available_backends() == {name: spec.available() for name, spec in BACKENDS.items()}


def test_unknown_backend_name(model_file: Path) -> None:
    with pytest.raises(
        ConfigError, match="unknown backend 'nope'; expected one of keras, tflite, openvino, onnx, tensorrt"
    ):
        open_backend("nope", model_file)
    with pytest.raises(ConfigError, match="unknown backend"):
        get_spec(None)  # type: ignore[arg-type]


def test_missing_dependency_names_the_extra(monkeypatch: pytest.MonkeyPatch, model_file: Path) -> None:
    spec = BackendSpec(
        name="ghost",
        target="bcedge.backends.base:Backend",
        formats=("onnx",),
        description="test row",
        requirement="ghost-extra",
        modules=("no_such_module_bcedge_test",),
    )
    monkeypatch.setitem(BACKENDS, "ghost", spec)
    ok, reason = spec.available()
    assert not ok and "pip install 'bcedge[ghost-extra]'" in reason
    with pytest.raises(MissingDependencyError) as excinfo:
        open_backend("ghost", model_file)
    assert "the ghost backend needs" in str(excinfo.value) and "bcedge[ghost-extra]" in str(excinfo.value)
    assert "ghost" not in auto_backend_names(probe_gpu=False)


def test_auto_backend_names() -> None:
    names = auto_backend_names(probe_gpu=False)
    assert names == {name for name, (ok, _) in available_backends().items() if ok}
    if "onnx" in names:
        from bcedge.backends.onnx import gpu_providers

        assert (ONNX_GPU in auto_backend_names()) == bool(gpu_providers())


# --------------------------------------------------------------------------- real models


@dataclass
class TinyModels:
    dir: Path
    keras_model: Any
    files: dict[str, Path]  # "keras", "tflite", "onnx", "tflite_int8_b1"

    def reference(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.keras_model(x, training=False), dtype=np.float32)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    """A 32-px UNet saved as .keras and converted to TFLite fp32, TFLite int8 (batch 1) and ONNX (~10 s)."""
    keras = pytest.importorskip("keras")
    tf = pytest.importorskip("tensorflow")
    tf2onnx = pytest.importorskip("tf2onnx")
    if keras.backend.backend() != "tensorflow":
        pytest.skip(f"converting to TFLite/ONNX needs KERAS_BACKEND=tensorflow, not {keras.backend.backend()}")
    from training.models import build_model

    out = tmp_path_factory.mktemp("tiny models")
    keras.utils.set_random_seed(0)
    model = build_model("unet", SIZE, base_filters=4)
    # Random init leaves every logit positive; centre them so outputs span both sides of 0.5.
    logits = model.get_layer("mask")
    probe = np.asarray(keras.Model(model.input, logits.input)(images(4, seed=9)))
    kernel, bias = logits.get_weights()
    median = float(np.median(probe.reshape(-1, probe.shape[-1]) @ kernel.reshape(kernel.shape[-2], -1)))
    logits.set_weights([kernel * 3.0, bias - 3.0 * median])
    files = {"keras": out / "model.keras"}
    model.save(files["keras"])

    files["tflite"] = out / "model fp32.tflite"
    files["tflite"].write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())

    inp = keras.Input(shape=(SIZE, SIZE, 1), batch_size=1, name="image")
    converter = tf.lite.TFLiteConverter.from_keras_model(keras.Model(inp, model(inp)))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    calib = images(8, seed=1)
    converter.representative_dataset = lambda: ([calib[i : i + 1]] for i in range(len(calib)))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    files["tflite_int8_b1"] = out / "model int8 b1.tflite"
    with warnings.catch_warnings():
        # "Statistics for quantized inputs were expected": the representative dataset provides them.
        warnings.simplefilter("ignore", UserWarning)
        files["tflite_int8_b1"].write_bytes(converter.convert())

    files["onnx"] = out / "model.onnx"
    signature = (tf.TensorSpec((None, SIZE, SIZE, 1), tf.float32, name="image"),)
    tf2onnx.convert.from_keras(model, input_signature=signature, opset=17, output_path=str(files["onnx"]))
    return TinyModels(out, model, files)


def _tensorrt_artifact(tiny: TinyModels) -> Path:
    pytest.skip("no TensorRT engine is built in this test; TensorRT engines are built and checked by its own tests")


#: format -> how this test gets an artifact of it. A new backend adds one line.
ARTIFACT_FOR: dict[str, Callable[[TinyModels], Path]] = {
    "keras": lambda t: t.files["keras"],
    "tflite": lambda t: t.files["tflite"],
    "onnx": lambda t: t.files["onnx"],
    "tensorrt": _tensorrt_artifact,
}


#: backend -> options for the contract test: OpenVINO computes in BF16 where the CPU has it, so the
#: FP32 tolerance is checked in FP32 (BF16 against the shipped model: tests/test_backend_openvino.py).
CONTRACT_OPTIONS: dict[str, dict[str, str]] = {"openvino": {"precision": "f32"}}


def _skip_unavailable(name: str) -> None:
    ok, reason = BACKENDS[name].available()
    if not ok:
        pytest.skip(f"{name} backend not available: {reason}")


@pytest.mark.parametrize("name", list(BACKENDS))
def test_contract(name: str, tiny: TinyModels) -> None:
    """Same float32 NHWC inputs in, same float32 probabilities out, for every available backend."""
    _skip_unavailable(name)
    spec = BACKENDS[name]
    path = ARTIFACT_FOR[spec.formats[0]](tiny)
    x = images(3, seed=2)
    expected = tiny.reference(x)
    assert expected.min() < 0.4 and expected.max() > 0.6  # a comparison across the threshold, not of constants
    with open_backend(name, path, threads=1, **CONTRACT_OPTIONS.get(name, {})) as backend:
        assert backend.input_shape[1:] == (SIZE, SIZE, 1)
        out = backend.predict(x)
        assert out.dtype == np.float32 and out.shape == x.shape
        assert out.min() >= 0.0 and out.max() <= 1.0
        np.testing.assert_allclose(out, expected, atol=FP32_ATOL, rtol=0)
        # Batch sizes change between calls (resize or split); a single image gives the same answer.
        np.testing.assert_allclose(backend.predict(x[1:2]), expected[1:2], atol=FP32_ATOL, rtol=0)
        np.testing.assert_allclose(backend.predict(x.astype(np.float64)), out, atol=1e-6, rtol=0)
        with pytest.raises(InputError, match="got dtype uint8"):
            backend.predict((x * 255).astype(np.uint8))
        with pytest.raises(InputError, match="got min"):
            backend.predict(x * 255)
        assert backend.details["backend"] == name
    assert backend.closed
    with pytest.raises(InputError, match="closed"):
        backend.predict(x)


@pytest.mark.parametrize("name", list(BACKENDS))
def test_unloadable_file(name: str, spaced_dir: Path) -> None:
    _skip_unavailable(name)
    path = spaced_dir / f"garbage.{BACKENDS[name].formats[0]}"
    path.write_bytes(b"not a model at all" * 10)
    with pytest.raises(InputError) as excinfo:
        open_backend(name, path)
    assert str(path) in str(excinfo.value) and "\n" not in str(excinfo.value)


def test_tflite_int8_quantise_dequantise(tiny: TinyModels) -> None:
    _skip_unavailable("tflite")
    from bcedge.backends.tflite import dequantize, quantize

    x = images(3, seed=3)
    with open_backend("tflite", tiny.files["tflite_int8_b1"]) as backend:
        assert backend.input_shape == (1, SIZE, SIZE, 1)  # fixed batch: predict splits
        assert backend.details["input_dtype"] == "int8" and backend.details["output_dtype"] == "int8"
        out = backend.predict(x)
        interp = backend._interp
        inp, outp = interp.get_input_details()[0], interp.get_output_details()[0]
        # The same arithmetic by hand on the backend's interpreter: the backend adds nothing else.
        for i in range(3):
            interp.set_tensor(inp["index"], quantize(x[i : i + 1], inp))
            interp.invoke()
            np.testing.assert_array_equal(out[i : i + 1], dequantize(interp.get_tensor(outp["index"]), outp))
    scale, zero_point = inp["quantization"]
    q = quantize(np.array([0.0, 0.5, 1.0, 1.0 + 1e-7], np.float32), inp)
    assert q.dtype == np.int8 and q[0] == zero_point and q[-1] == 127
    np.testing.assert_allclose(dequantize(q, inp)[:3], [0.0, 0.5, 1.0], atol=scale)
    diff = np.abs(out - tiny.reference(x))
    assert diff.max() <= INT8_MAX_ATOL and diff.mean() <= INT8_MEAN_ATOL, (diff.max(), diff.mean())
    assert np.unique(out).size > 10  # not a constant map


def test_quantize_rounding_and_clipping() -> None:
    from bcedge.backends.tflite import dequantize, quantize

    i8 = {"dtype": np.int8, "quantization": (0.5, -3)}
    # Half steps round away from zero (TFLite's std::round), out-of-range values clip.
    x = np.array([0.25, 0.75, -0.25, -0.75, 100.0, -100.0], np.float32)
    np.testing.assert_array_equal(quantize(x, i8), [1 - 3, 2 - 3, -1 - 3, -2 - 3, 127, -128])
    u8 = {"dtype": np.uint8, "quantization": (1 / 255, 0)}
    q = quantize(np.linspace(0, 1, 256, dtype=np.float32), u8)
    assert q.dtype == np.uint8
    np.testing.assert_array_equal(q, np.arange(256))
    np.testing.assert_allclose(dequantize(q, u8), np.linspace(0, 1, 256), atol=1e-6)
    f32 = {"dtype": np.float32, "quantization": (0.0, 0)}
    assert quantize(x, f32) is x and dequantize(x, f32) is x


@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated:UserWarning")
def test_tflite_options(tiny: TinyModels) -> None:
    _skip_unavailable("tflite")
    x = images(2, seed=4)
    with open_backend("tflite", tiny.files["tflite"], xnnpack=False) as plain:
        assert plain.details["delegate"].startswith("none")
        np.testing.assert_allclose(plain.predict(x), tiny.reference(x), atol=FP32_ATOL, rtol=0)
    with pytest.raises(ConfigError, match="unknown TFLite runtime 'tvm'"):
        open_backend("tflite", tiny.files["tflite"], runtime="tvm")
    with open_backend("tflite", tiny.files["tflite"], runtime="tensorflow") as fallback:
        assert fallback.details["runtime"] == "tensorflow"
        np.testing.assert_allclose(fallback.predict(x), tiny.reference(x), atol=FP32_ATOL, rtol=0)


def test_onnx_options(tiny: TinyModels) -> None:
    _skip_unavailable("onnx")
    with pytest.raises(ConfigError, match="provider 'NoSuchExecutionProvider' is not available"):
        open_backend("onnx", tiny.files["onnx"], providers=["NoSuchExecutionProvider"])
    with open_backend("onnx", tiny.files["onnx"], providers=["CPUExecutionProvider"], threads=2) as backend:
        assert backend.details["providers"] == ["CPUExecutionProvider"]
        assert (backend.details["input_name"], backend.details["output_name"]) == ("image", "mask")
        assert backend.input_shape == (None, SIZE, SIZE, 1)


def test_bundle_opens_its_best_artifact(tiny: TinyModels, spaced_dir: Path) -> None:
    """A bundle of the tiny artifacts: --backend auto picks the int8 TFLite model and it runs."""
    from bcedge.preprocess import PreprocessConfig

    rows = [
        ("keras", "model.keras", "keras", "fp32"),
        ("tflite", "model_fp32.tflite", "tflite", "fp32"),
        ("tflite_int8_b1", "model_int8.tflite", "tflite", "int8"),
        ("onnx", "model.onnx", "onnx", "fp32"),
    ]
    records = []
    for key, file, fmt, precision in rows:
        shutil.copyfile(tiny.files[key], spaced_dir / file)
        records.append(
            ArtifactRecord.from_file(spaced_dir, file, format=fmt, precision=precision, backend=fmt, gate="passed")
        )
    model = {"name": "unet", "architecture": "unet", "params": int(tiny.keras_model.count_params())}
    write_test_manifest(spaced_dir, records, PreprocessConfig(size=SIZE), model=model)
    bundle = load_bundle(spaced_dir)
    available = auto_backend_names()
    if "tflite" not in available:
        pytest.skip("tflite backend not available")
    record = choose_artifact(bundle, "auto", available, known=BACKENDS).record
    expected = "model.onnx" if ONNX_GPU in available else "model_int8.tflite"
    assert record.file == expected
    x = images(2, seed=5)
    with bundle.open(record, threads=1) as backend:
        diff = np.abs(backend.predict(x) - tiny.reference(x))
    assert diff.max() <= INT8_MAX_ATOL
