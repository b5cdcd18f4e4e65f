"""ImageNet MobileNetV2 from the full-integer TFLite file (training/imagenet_tflite.py).

The file lives in ``../shared/weights`` beside the repository, or where ``BCEDGE_WEIGHTS``
points; every test here skips with a reason when it, Keras or LiteRT is missing.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("ai_edge_litert.interpreter", reason="LiteRT (ai-edge-litert) reads the .tflite")

from bcedge.bundle import sha256_file  # noqa: E402
from bcedge.cli import main  # noqa: E402
from bcedge.errors import ConfigError  # noqa: E402
from training import imagenet_tflite as loader  # noqa: E402
from training.imagenet_tflite import load_mobilenetv2_tflite, read_folded_kernels  # noqa: E402
from training.models import build_model  # noqa: E402

WEIGHTS_NAME = "mobilenet_v2_1.0_224_imagenet_int8.tflite"
#: From ../shared/weights/README.md.
WEIGHTS_SHA256 = "3cb2d53f5b57aea6696724c803db309de8db81270c06f9b05947da711cd7da01"
#: Ten natural photographs shipped inside the scikit-image wheel (no download).
IMAGES = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "camera",
    "coins",
    "moon",
    "retina",
    "hubble_deep_field",
    "stereo_motorcycle",
)


@pytest.fixture(scope="module")
def imagenet_tflite() -> Path:
    """The ImageNet MobileNetV2 int8 ``.tflite``: ``BCEDGE_WEIGHTS`` or ``../shared/weights``."""
    root = os.environ.get("BCEDGE_WEIGHTS")
    folder = Path(root) if root else Path(__file__).resolve().parents[2] / "shared" / "weights"
    path = folder / WEIGHTS_NAME
    if not path.is_file():
        pytest.skip(f"{path} not found (set BCEDGE_WEIGHTS to the folder holding {WEIGHTS_NAME})")
    return path


def _photo(name: str) -> np.ndarray:
    """(224, 224, 3) uint8 RGB: the skimage photo, grey replicated, area-resized (same for both models)."""
    import cv2
    from skimage import data

    image = getattr(data, name)()
    if name == "stereo_motorcycle":
        image = image[0]  # (left, right, disparity)
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return cv2.resize(np.ascontiguousarray(image[..., :3]), (224, 224), interpolation=cv2.INTER_AREA)


def test_keras_rebuilt_with_top_agrees_with_the_tflite_on_imagenet_top1(imagenet_tflite: Path) -> None:
    """The issue's proof: >= 9 of 10 photos get the same ImageNet class from both models."""
    pytest.importorskip("skimage", reason="scikit-image ships the test photographs (dev extra)")
    from ai_edge_litert.interpreter import Interpreter

    model = keras.applications.MobileNetV2(alpha=1.0, weights=None)  # 224x224 with the 1000-class top
    assert load_mobilenetv2_tflite(model, imagenet_tflite) == 53

    interpreter = Interpreter(model_path=str(imagenet_tflite))
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    scale, zero_point = inp["quantization"]
    assert inp["dtype"] == np.uint8 and abs(scale - 2 / 255) < 1e-6 and zero_point == 127
    photos = np.stack([_photo(name) for name in IMAGES])
    tflite_top1 = []
    for photo in photos:
        interpreter.set_tensor(inp["index"], photo[None])
        interpreter.invoke()
        tflite_top1.append(int(np.argmax(interpreter.get_tensor(out["index"])[0])))
    # The float the TFLite input stands for, (q - 127) * 2/255: Keras MobileNetV2's [-1, 1] input.
    keras_probs = model.predict((photos.astype(np.float32) - zero_point) * np.float32(scale), verbose=0)
    keras_top1 = [int(i) for i in np.argmax(keras_probs, axis=1)]
    agree = sum(a == b for a, b in zip(keras_top1, tflite_top1, strict=True))
    detail = {name: (k, t) for name, k, t in zip(IMAGES, keras_top1, tflite_top1, strict=True)}
    assert agree >= 9, f"top-1 agrees on {agree}/10 (keras, tflite): {detail}"
    # And they are ImageNet classes, not just the same wrong ones: 967 espresso, 281-285 cats.
    assert keras_top1[IMAGES.index("coffee")] == 967, detail
    assert 281 <= keras_top1[IMAGES.index("chelsea")] <= 285, detail


def test_encoder_of_the_unet_holds_the_dequantised_kernels(imagenet_tflite: Path) -> None:
    """build_model(..., encoder_weights=PATH): each kernel re-quantises to the file's int8 exactly."""
    from ai_edge_litert.interpreter import Interpreter

    model = build_model("unet-mobilenetv2", 256, encoder_weights=imagenet_tflite)
    encoder = model.get_layer("encoder_mobilenetv2")
    convs = [layer for layer in encoder.layers if type(layer).__name__ in ("Conv2D", "DepthwiseConv2D")]
    assert len(convs) == 52

    # Independent of the loader's dequantisation: the raw int8 kernel of each conv op, in graph order.
    interpreter = Interpreter(model_path=str(imagenet_tflite))
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = [op for op in interpreter._get_ops_details() if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    assert len(ops) == len(convs)
    worst = 0.0
    for layer, op in zip(convs, ops, strict=True):
        kt = tensors[int(op["inputs"][1])]
        assert f"/{layer.name}/" in kt["name"], (layer.name, kt["name"])
        raw = interpreter.get_tensor(kt["index"])  # CONV [out,kh,kw,in]; DEPTHWISE [1,kh,kw,C]
        scales = kt["quantization_parameters"]["scales"]
        kernel = layer.get_weights()[0]  # Keras [kh,kw,in,out] / [kh,kw,C,1]
        back = kernel.transpose(3, 0, 1, 2)  # both layouts -> the TFLite one
        axis = 0 if type(layer).__name__ == "Conv2D" else 3
        shape = [1, 1, 1, 1]
        shape[axis] = scales.size
        steps = back / scales.reshape(shape)
        worst = max(worst, float(np.max(np.abs(steps - raw))))
        np.testing.assert_array_equal(np.rint(steps).astype(np.int8), raw, err_msg=layer.name)
    assert worst < 1e-3, f"kernels are {worst} quantisation steps from the file's int8 values"

    bns = [layer for layer in encoder.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bns) == 52 and not any(bn.trainable for bn in bns)
    gamma, beta, mean, var = encoder.get_layer("bn_Conv1").get_weights()
    np.testing.assert_allclose(np.sqrt(var + encoder.get_layer("bn_Conv1").epsilon), 1.0, rtol=1e-6)
    assert np.all(gamma == 1) and np.all(mean == 0) and np.any(beta != 0)
    # The decoder's own batch norms still train.
    assert model.get_layer("decoder_stage0a_bn").trainable


def test_loader_fails_loudly_and_touches_nothing_on_a_mismatch(
    imagenet_tflite: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    narrow = keras.applications.MobileNetV2(alpha=0.5, weights=None, include_top=False, input_shape=(64, 64, 3))
    with pytest.raises(ConfigError, match=r"alpha 1\.0 only"):
        load_mobilenetv2_tflite(narrow, imagenet_tflite)

    model = keras.applications.MobileNetV2(alpha=1.0, weights=None, include_top=False, input_shape=(64, 64, 3))
    before = model.get_layer("Conv1").get_weights()[0].copy()
    kernels = read_folded_kernels(imagenet_tflite)
    renamed = [dataclasses.replace(kernels[0], kernel_name="m/block_99_expand/Conv2D"), *kernels[1:]]
    monkeypatch.setattr(loader, "read_folded_kernels", lambda path: renamed)
    with pytest.raises(ConfigError, match="is not Keras layer 'Conv1'"):
        load_mobilenetv2_tflite(model, imagenet_tflite)
    np.testing.assert_array_equal(model.get_layer("Conv1").get_weights()[0], before)


def test_a_corrupt_tflite_is_one_config_error(tmp_path: Path) -> None:
    junk = tmp_path / "with space" / "junk.tflite"
    junk.parent.mkdir()
    junk.write_bytes(b"TFL3 but not really" * 10)
    with pytest.raises(ConfigError, match="not a readable TFLite model") as info:
        build_model("unet-mobilenetv2", 64, encoder_weights=junk)
    assert "\n" not in str(info.value)


def test_only_the_width_1_mobilenetv2_unet_takes_the_tflite(imagenet_tflite: Path) -> None:
    with pytest.raises(ConfigError, match="no ImageNet weights reachable for VGG19; train from scratch"):
        build_model("unet-vgg19", 64, encoder_weights=imagenet_tflite)
    with pytest.raises(ConfigError, match="no pretrained encoder"):
        build_model("unet", 64, encoder_weights=imagenet_tflite)
    with pytest.raises(ConfigError, match=r"alpha 1\.0"):
        build_model("unet-mobilenetv2", 64, encoder_weights=imagenet_tflite, width=0.35)


def test_train_cli_refuses_vgg19_and_records_the_sha256(
    imagenet_tflite: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`bcedge train --encoder-weights X.tflite`: VGG19 refused up front; the run config names the file's sha256.

    The training loop itself is replaced (asdict(config) -> config.json is covered by
    test_training_cli); a real 1-epoch run took 150 s here, too long for CI.
    """
    import training.train

    root = tmp_path / "phantoms"
    assert main(["phantom", str(root), "--count", "12", "--seed", "3", "--scale", "0.06"]) == 0
    split = tmp_path / "split.json"
    assert main(["data", "split", "phantom", "--root", str(root), "--out", str(split)]) == 0
    common = ["train", "--data", "phantom", "--root", str(root), "--split", str(split), "--size", "64"]
    common += ["--epochs", "1", "--cache", str(tmp_path / "cache"), "--encoder-weights", str(imagenet_tflite)]

    capsys.readouterr()
    assert main([*common, "--model", "unet-vgg19", "--out", str(tmp_path / "vgg")]) == 2
    assert "no ImageNet weights reachable for VGG19; train from scratch" in capsys.readouterr().err
    assert not (tmp_path / "vgg").exists()  # refused before any work
    assert main([*common, "--model", "unet-mobilenetv2", "--width", "0.35", "--out", str(tmp_path / "w")]) == 2
    assert "alpha 1.0" in capsys.readouterr().err

    seen = []

    def fake_train(config, run_dir, train_set, val_set, progress=None):
        seen.append(config)
        return {"epoch": 0, "best_val_dice": 0.0, "best_epoch": 0}

    monkeypatch.setattr(training.train, "train", fake_train)
    rc = main([*common, "--model", "unet-mobilenetv2", "--out", str(tmp_path / "run")])
    assert rc == 0, capsys.readouterr().err
    (config,) = seen
    assert config.encoder_weights == str(imagenet_tflite)
    assert config.encoder_weights_sha256 == sha256_file(imagenet_tflite)
    if config.encoder_weights_sha256 != WEIGHTS_SHA256:
        pytest.fail(f"{imagenet_tflite} is not the file of ../shared/weights/README.md")


def test_frozen_batch_norms_survive_save_load_and_recalibration(imagenet_tflite: Path, tmp_path: Path) -> None:
    from training.batchnorm import recalibrate
    from training.models import load_trained

    model = build_model("unet-mobilenetv2", 64, encoder_weights=imagenet_tflite)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = load_trained(path)
    encoder = loaded.get_layer("encoder_mobilenetv2")
    bns = [layer for layer in encoder.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bns) == 52 and not any(bn.trainable for bn in bns)
    frozen_before = [w.copy() for bn in bns for w in bn.get_weights()]
    decoder_before = loaded.get_layer("decoder_stage0a_bn").get_weights()[2].copy()
    images = np.random.default_rng(0).random((4, 64, 64, 1), np.float32)
    recalibrate(loaded, images, batch=2)
    for before, after in zip(frozen_before, [w for bn in bns for w in bn.get_weights()], strict=True):
        np.testing.assert_array_equal(before, after)
    assert not np.array_equal(loaded.get_layer("decoder_stage0a_bn").get_weights()[2], decoder_before)
