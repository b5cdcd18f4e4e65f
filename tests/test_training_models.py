"""The three models build, run on every installed Keras backend, and fail clearly on bad options."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from bcedge.errors import BcedgeError, ConfigError  # noqa: E402
from training import models  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", models.MODEL_NAMES)
@pytest.mark.parametrize("size", [64, 128])
def test_model_shapes_and_range(name: str, size: int) -> None:
    kwargs = {"base_filters": 8} if name == "unet" else {}
    model = models.build_model(name, size, "none", **kwargs)
    x = np.random.default_rng(0).random((2, size, size, 1)).astype(np.float32)
    y = np.asarray(model(x))
    assert model.input_shape == (None, size, size, 1)
    assert y.shape == (2, size, size, 1)
    assert y.dtype == np.float32
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


def test_layer_names_are_deterministic() -> None:
    a = [layer.name for layer in models.build_model("unet-mobilenetv2", 64).layers]
    b = [layer.name for layer in models.build_model("unet-mobilenetv2", 64).layers]
    assert a == b
    assert "grey_to_rgb" in a and "mask" in a


@pytest.mark.parametrize("backbone", sorted(models.ENCODERS))
def test_grey_to_rgb_applies_the_encoder_normalisation(backbone: str) -> None:
    spec = models.ENCODERS[backbone]
    model = models.build_model(f"unet-{backbone}", 64)
    layer = model.get_layer("grey_to_rgb")
    assert not layer.trainable
    probe = keras.Model(model.input, layer.output)
    out = np.asarray(probe(np.full((1, 64, 64, 1), 0.5, np.float32)))[0, 0, 0]
    assert np.allclose(out, 0.5 * spec.scale + np.asarray(spec.offsets), atol=1e-4)


def test_skip_table_names_exist_in_the_application() -> None:
    for spec in models.ENCODERS.values():
        app = getattr(keras.applications, spec.application)(include_top=False, weights=None, input_shape=(64, 64, 3))
        names = {layer.name for layer in app.layers}
        assert set(spec.skips) | {spec.bottleneck} <= names


def test_upsampling_variants() -> None:
    nearest = models.build_model("unet", 32, base_filters=4)
    transpose = models.build_model("unet", 32, base_filters=4, upsampling="transpose")
    kinds = lambda m: {type(layer).__name__ for layer in m.layers}  # noqa: E731
    assert "UpSampling2D" in kinds(nearest) and "Conv2DTranspose" not in kinds(nearest)
    assert "Conv2DTranspose" in kinds(transpose)


def test_width_shrinks_the_encoder_unets() -> None:
    full = models.build_model("unet-mobilenetv2", 64)
    small = models.build_model("unet-mobilenetv2", 64, width=0.25)
    assert small.count_params() < full.count_params() / 3
    assert small.get_layer("decoder_stage4a_conv").filters == 4  # 16 * 0.25
    assert small.predict(np.zeros((1, 64, 64, 1), np.float32), verbose=0).shape == (1, 64, 64, 1)
    with pytest.raises(ConfigError, match="--base-filters"):
        models.build_model("unet", 64, width=0.5)
    with pytest.raises(ConfigError, match="width"):
        models.build_model("unet-vgg19", 64, width=0.0)


def test_freeze_encoder_trains_the_decoder_only() -> None:
    """--freeze-encoder: a training step moves decoder weights and leaves every encoder weight as it was."""
    frozen = models.build_model("unet-mobilenetv2", 64, decoder_width=0.25, freeze_encoder=True)
    free = models.build_model("unet-mobilenetv2", 64, decoder_width=0.25)
    # The same weights in the same order, so --init-weights loads either way.
    assert [w.shape for w in frozen.get_weights()] == [w.shape for w in free.get_weights()]
    owners = {w.path.split("/")[0] for w in frozen.trainable_weights}
    assert owners and all(o.startswith("decoder_") or o == "mask" for o in owners)
    assert len(free.trainable_weights) > len(frozen.trainable_weights)
    before = {w.path: np.array(w) for w in frozen.weights}
    frozen.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.random((2, 64, 64, 1), dtype=np.float32)
    y = (rng.random((2, 64, 64, 1)) > 0.5).astype(np.float32)
    frozen.fit(x, y, epochs=1, verbose=0)
    moved = {w.path for w in frozen.weights if not np.array_equal(np.array(w), before[w.path])}
    trainable = {w.path for w in frozen.trainable_weights}
    assert moved & trainable and moved <= trainable | {
        w.path
        for w in frozen.weights
        if w.path.split("/")[0].startswith("decoder_")  # decoder BN statistics
    }
    with pytest.raises(ConfigError, match="no encoder"):
        models.build_model("unet", 64, freeze_encoder=True)
    # The run's config (bcedge train --freeze-encoder) reaches the model it builds.
    from training.train import TrainConfig, _build

    config = TrainConfig(model="unet-mobilenetv2", data=("x",), root="r", split="s", decoder_width=0.25)
    assert len(_build(replace(config, freeze_encoder=True), 64).trainable_weights) == len(frozen.trainable_weights)
    assert len(_build(config, 64).trainable_weights) == len(free.trainable_weights)


def test_bad_options_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown model"):
        models.build_model("resnet", 64)
    with pytest.raises(ConfigError, match="multiple of 32"):
        models.build_model("unet-vgg19", 100)
    with pytest.raises(ConfigError, match="no pretrained encoder"):
        models.build_model("unet", 64, "imagenet")
    with pytest.raises(ConfigError, match="existing weights file"):
        models.build_model("unet-vgg19", 64, tmp_path / "missing.h5")
    junk = tmp_path / "with space" / "junk.h5"
    junk.parent.mkdir()
    junk.write_bytes(b"not hdf5")
    with pytest.raises(ConfigError, match="cannot load"):
        models.build_model("unet-mobilenetv2", 64, junk)


def test_encoder_weights_from_a_file(tmp_path: Path) -> None:
    donor = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(64, 64, 3))
    path = tmp_path / "with space" / "mnv2.weights.h5"
    path.parent.mkdir()
    donor.save_weights(str(path))
    model = models.build_model("unet-mobilenetv2", 64, path)
    encoder = model.get_layer("encoder_mobilenetv2")
    got = encoder.get_layer("Conv1").get_weights()[0]
    assert np.array_equal(got, donor.get_layer("Conv1").get_weights()[0])


def test_imagenet_download_failure_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    real = keras.applications.VGG19

    def offline(*args, weights=None, **kwargs):
        if weights == "imagenet":
            raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -3]")
        return real(*args, weights=weights, **kwargs)

    monkeypatch.setattr(keras.applications, "VGG19", offline)
    with pytest.raises(BcedgeError) as info:
        models.build_model("unet-vgg19", 64, "imagenet")
    message = str(info.value)
    assert "\n" not in message
    assert "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert "--encoder-weights" in message


_STEP = textwrap.dedent(
    """
    import numpy as np, keras
    from training.models import build_model
    from training.train import TrainConfig, compile_model
    cfg = TrainConfig(model="unet", data=("x",), root="", split="", size=32, batch=2, base_filters=4)
    for name in ("unet", "unet-mobilenetv2"):
        model = build_model(name, 32, base_filters=4)
        compile_model(model, cfg)
        x = np.random.default_rng(0).random((4, 32, 32, 1)).astype("float32")
        y = (x > 0.7).astype("float32")
        before = [w.copy() for w in model.get_weights()]
        hist = model.fit(x, y, batch_size=2, epochs=1, verbose=0)
        loss = hist.history["loss"][-1]
        assert np.isfinite(loss), loss
        assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    print("BACKEND", keras.backend.backend())
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tensorflow", "torch", "jax"])
def test_one_training_step_per_backend(backend: str) -> None:
    module = {"tensorflow": "tensorflow", "torch": "torch", "jax": "jax"}[backend]
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"Keras backend {backend} is not installed ({module} missing)")
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", _STEP], capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"BACKEND {backend}" in proc.stdout


_MIRRORED = textwrap.dedent(
    """
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import numpy as np
    from training.models import build_model
    from training.train import TrainConfig, _distribution_scope, compile_model
    scope, replicas = _distribution_scope(["cpu:0", "cpu:1"])
    assert replicas == 2, replicas
    with scope:
        model = build_model("unet", 32, base_filters=4)
        compile_model(model, TrainConfig(model="unet", data=("x",), root="", split=""))
    x = np.random.default_rng(0).random((8, 32, 32, 1)).astype("float32")
    hist = model.fit(x, (x > 0.7).astype("float32"), batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(hist.history["loss"][-1])
    print("REPLICAS", replicas)
    """
)


@pytest.mark.slow
def test_data_parallel_on_two_logical_cpus() -> None:
    if importlib.util.find_spec("tensorflow") is None:
        pytest.skip("TensorFlow is not installed")
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", _MIRRORED], capture_output=True, text=True, env=env, timeout=600, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "REPLICAS 2" in proc.stdout


def test_encoder_batch_norm_momentum_suits_training_from_scratch() -> None:
    model = models.build_model("unet-mobilenetv2", 64)
    encoder = model.get_layer("encoder_mobilenetv2")
    momenta = {layer.momentum for layer in encoder.layers if isinstance(layer, keras.layers.BatchNormalization)}
    assert momenta == {models.BN_MOMENTUM}


def test_batch_norm_recalibration_matches_batch_statistics() -> None:
    from training.batchnorm import recalibrate

    model = models.build_model("unet", 32, base_filters=4)
    x = np.random.default_rng(3).random((8, 32, 32, 1)).astype(np.float32)
    trained_mode = np.asarray(model(x, training=True))
    assert not np.allclose(np.asarray(model(x, training=False)), trained_mode, atol=1e-3)
    assert recalibrate(model, x, batch=8) > 0
    # One batch: the moving statistics are now exactly that batch's statistics.
    assert np.allclose(np.asarray(model(x, training=False)), trained_mode, atol=1e-3)
    assert {layer.momentum for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)} == {
        models.BN_MOMENTUM
    }
