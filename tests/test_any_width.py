"""Any-width TFLite models: exported with an open width, run on the breast's columns only.

A tiny plain UNet at 256 px (wide enough that the column block is narrower than the square:
:data:`bcedge.backends.tflite.MIN_WIDTH` is 128) is exported fixed-width and any-width; the
any-width artifact must give the square's probabilities on a square input, zeros outside the
block it runs, and the same masks inside it on preprocessed phantoms whose breast fills part
of the square.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert")

from bundle_support import phantom_model_inputs

from bcedge.backends.tflite import MIN_WIDTH, WIDTH_STEP, TFLiteBackend, column_block
from export import tflite, tflite_rewrite

SIZE = 256


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """(10, 256, 256, 1) float32 phantoms through the one preprocessing (zero outside the breast)."""
    return phantom_model_inputs(tmp_path_factory.mktemp("phantoms"), SIZE)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory, images: np.ndarray) -> dict[str, Path]:
    """The same model as fixed-width FP32 and any-width FP32 / FP16 / dynamic / INT8 .tflite files."""
    import keras

    from training.models import build_model

    keras.utils.set_random_seed(0)
    model = build_model("unet", SIZE, None, base_filters=4)
    folder = tmp_path_factory.mktemp("any width")
    fixed = tflite.export_saved_model(model, folder / "fixed", SIZE)
    wide = tflite.export_saved_model(model, folder / "any", SIZE, any_width=True)
    files = {"fixed": folder / "fixed.tflite"}
    files["fixed"].write_bytes(tflite.convert(fixed, "fp32"))
    for precision in tflite.TFLITE_PRECISIONS:
        files[precision] = folder / f"any_{precision}.tflite"
        files[precision].write_bytes(tflite.convert(wide, precision, calib_images=images[:4]))
    return files


def test_column_block_covers_the_nonzero_columns_in_whole_steps() -> None:
    x = np.zeros((1, 512, 512, 1), np.float32)
    assert column_block(x) == (0, 512)  # nothing to crop to: the square
    x[0, 10, :150] = 0.5
    assert column_block(x) == (0, 160)
    x[:] = 0
    x[0, 3, :10] = 0.5
    assert column_block(x) == (0, MIN_WIDTH)  # never narrower than measured
    x[:] = 0
    x[0, 3, 400:] = 0.5  # a breast on the right edge: the block starts on a step
    assert column_block(x) == (384, 512)
    x[:] = 0
    x[0, 3, 500:] = 0.5
    assert column_block(x) == (512 - MIN_WIDTH, 512)
    batch = np.zeros((2, 512, 512, 1), np.float32)
    batch[0, 0, :100] = 1
    batch[1, 0, 200:300] = 1
    assert column_block(batch) == (0, 320)  # the union over the batch
    odd = np.ones((1, 100, 100, 1), np.float32)
    assert column_block(odd) == (0, 100)
    assert WIDTH_STEP == 32 and MIN_WIDTH % WIDTH_STEP == 0


def test_any_width_artifact_reports_its_width_and_reproduces_the_square(
    artifacts: dict[str, Path], images: np.ndarray
) -> None:
    fixed = TFLiteBackend(artifacts["fixed"], threads=1)
    wide = TFLiteBackend(artifacts["fp32"], threads=1)
    assert fixed.details["input_width"] == SIZE
    assert wide.details["input_width"].startswith("any")
    assert wide.input_shape == fixed.input_shape == (1, SIZE, SIZE, 1)
    full = np.random.default_rng(1).random((1, SIZE, SIZE, 1), dtype=np.float32)
    np.testing.assert_allclose(wide.predict(full), fixed.predict(full), atol=1e-5)


def test_any_width_model_is_planned_at_its_narrowest_block_until_its_first_call(
    artifacts: dict[str, Path], images: np.ndarray
) -> None:
    """Opened, an any-width interpreter is allocated at MIN_WIDTH columns (planning the square first cost
    XNNPACK a second plan); its contract stays the square, and its first call runs its own block."""
    wide = TFLiteBackend(artifacts["fp32"], threads=1)
    assert wide.input_shape == (1, SIZE, SIZE, 1)
    assert int(wide._interp.get_input_details()[0]["shape"][2]) == MIN_WIDTH
    x = images[:1].copy()
    x[:, :, 200:] = 0
    c0, c1 = column_block(x)
    wide.predict(x)
    assert int(wide._interp.get_input_details()[0]["shape"][2]) == c1 - c0
    square = TFLiteBackend(artifacts["fp32"], threads=1, columns="square")
    assert int(square._interp.get_input_details()[0]["shape"][2]) == SIZE  # run square: planned square


@pytest.mark.parametrize("precision", ["fp32", "fp16", "dynamic", "int8"])
def test_any_width_runs_the_breast_columns_and_keeps_the_masks(
    artifacts: dict[str, Path], images: np.ndarray, precision: str
) -> None:
    fixed = TFLiteBackend(artifacts["fixed"], threads=1)
    wide = TFLiteBackend(artifacts[precision], threads=1)
    narrower = 0
    for i in range(len(images)):
        x = images[i : i + 1]
        c0, c1 = column_block(x)
        narrower += c1 - c0 < SIZE
        got, ref = wide.predict(x), fixed.predict(x)
        assert got.shape == ref.shape
        assert not got[:, :, :c0].any() and not got[:, :, c1:].any()  # zeros outside the block run
        a, b = got[:, :, c0:c1] >= 0.5, ref[:, :, c0:c1] >= 0.5
        if a.sum() + b.sum():
            # The cut-off zeros change the convolutions' borders only; a random tiny UNet's masks
            # are far noisier than a trained model's (0.997 on the mass model's validation images).
            assert 2 * (a & b).sum() / (a.sum() + b.sum()) >= 0.95
        tol = {"fp32": 0.02, "fp16": 0.02, "dynamic": 0.1, "int8": 0.1}[precision]
        inside = np.abs(got - ref)[:, :, c0 : max(c0, c1 - 2 * WIDTH_STEP)]
        assert float(np.median(inside)) <= tol
    assert narrower >= len(images) // 2  # the phantoms' breasts leave columns to skip


def test_changing_widths_gives_each_width_its_own_result(artifacts: dict[str, Path], images: np.ndarray) -> None:
    wide = TFLiteBackend(artifacts["fp32"], threads=1)
    narrow = images[:1].copy()
    narrow[:, :, 150:] = 0  # block (0, 160)
    square = images[1:2].copy()
    square[:, :, -1] = np.maximum(square[:, :, -1], 0.1)  # touches the last column: the whole square
    first = [wide.predict(narrow), wide.predict(square)]
    again = [wide.predict(square), wide.predict(narrow)]
    np.testing.assert_array_equal(first[0], again[1])
    np.testing.assert_array_equal(first[1], again[0])
    assert not first[0][:, :, 160:].any()


def test_manifest_io_shows_the_open_width_and_int8_stays_integer(artifacts: dict[str, Path]) -> None:
    assert tflite.io_details(artifacts["fixed"].read_bytes())["inputs"][0]["shape"] == [1, SIZE, SIZE, 1]
    for precision in tflite.TFLITE_PRECISIONS:
        io = tflite.io_details(artifacts[precision].read_bytes())
        assert io["inputs"][0]["shape"] == [1, SIZE, -1, 1], precision
    # The resize that replaces UpSampling2D has an integer kernel: full INT8 stays integer any-width.
    assert tflite.float_ops(artifacts["int8"].read_bytes()) == []


@pytest.mark.parametrize("precision", ["fp32", "dynamic", "int8"])
def test_depth_to_space_rewrite_is_bit_identical(
    artifacts: dict[str, Path], images: np.ndarray, precision: str
) -> None:
    """The UNet's four computed-size resizes become CONCATENATION + DEPTH_TO_SPACE: no size computation left,
    the same probabilities bit for bit at two widths, and nothing left to rewrite the second time."""
    content = artifacts[precision].read_bytes()
    rewritten, n = tflite_rewrite.depth_to_space_upsampling(content)
    ops = [r["op"] for r in tflite.op_summary(rewritten)]
    assert n == 4 and ops.count("DEPTH_TO_SPACE") == 4, (precision, ops)
    assert not {"SHAPE", "SLICE", "MUL", "RESIZE_NEAREST_NEIGHBOR"} & set(ops), (precision, ops)
    assert tflite_rewrite.depth_to_space_upsampling(rewritten) == (rewritten, 0)
    path = artifacts[precision].with_name(f"d2s_{precision}.tflite")
    path.write_bytes(rewritten)
    before, after = TFLiteBackend(artifacts[precision], threads=1), TFLiteBackend(path, threads=1)
    for batch in (images[:3], np.random.default_rng(2).random((1, SIZE, SIZE, 1), dtype=np.float32)):
        assert np.array_equal(after.predict(batch), before.predict(batch)), precision
    if precision == "int8":
        assert tflite.float_ops(rewritten) == []  # CONCATENATION and DEPTH_TO_SPACE run on int8 too
    # A model with nothing to rewrite comes back as it was.
    assert tflite_rewrite.depth_to_space_upsampling(artifacts["fixed"].read_bytes())[1] == 0


def test_flops_count_the_square_and_op_profiling_refuses_any_width(artifacts: dict[str, Path]) -> None:
    from bcedge.bench.flops import count_tflite
    from bcedge.bench.ops import profile_tflite_ops
    from bcedge.errors import ConfigError

    fixed, wide = count_tflite(artifacts["fixed"]), count_tflite(artifacts["fp32"])
    assert fixed.gflops > 0 and abs(wide.gflops - fixed.gflops) <= 0.01 * fixed.gflops
    pytest.importorskip("flatbuffers")
    with pytest.raises(ConfigError, match="any input width"):
        profile_tflite_ops(artifacts["fp32"], threads=1, runs=1, warmup=0)


def test_a_runtime_that_cannot_resize_falls_back_to_the_square(
    artifacts: dict[str, Path], images: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    fixed = TFLiteBackend(artifacts["fixed"], threads=1)
    wide = TFLiteBackend(artifacts["fp32"], threads=1)
    real_resize = wide._interp.resize_tensor_input
    calls: list[list[int]] = []

    def refuse_narrow(index: int, shape: list[int]) -> None:
        calls.append(list(shape))
        if shape[2] != SIZE:
            raise RuntimeError("delegate failed to prepare")
        real_resize(index, shape)

    wide._interp.resize_tensor_input = refuse_narrow
    x = images[:1].copy()
    x[:, :, 150:] = 0
    with caplog.at_level("WARNING"):
        got = wide.predict(x)
    np.testing.assert_allclose(got, fixed.predict(x), atol=1e-5)  # the square, as a fixed-width model
    assert "cannot change the input width" in caplog.text and wide.details["input_width"].startswith(str(SIZE))
    wide.predict(x)
    assert calls == [[1, SIZE, 160, 1], [1, SIZE, SIZE, 1]]  # no further attempts


def test_columns_square_runs_an_any_width_model_as_the_square(artifacts: dict[str, Path], images: np.ndarray) -> None:
    from bcedge.errors import ConfigError

    fixed = TFLiteBackend(artifacts["fixed"], threads=1)
    square = TFLiteBackend(artifacts["fp32"], threads=1, columns="square")
    assert square.details["input_width"].startswith(f"{SIZE} (any-width")
    x = images[:1].copy()
    x[:, :, 150:] = 0
    np.testing.assert_allclose(square.predict(x), fixed.predict(x), atol=1e-5)
    with pytest.raises(ConfigError, match="columns"):
        TFLiteBackend(artifacts["fp32"], threads=1, columns="left")
