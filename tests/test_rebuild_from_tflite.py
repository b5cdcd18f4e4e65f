"""Keras models rebuilt from FP32/FP16 TFLite files (training.imagenet_tflite.load_float_tflite) and
the run folder training/rebuild_from_bundle.py writes from a bundle.

One small UNet + MobileNetV2 (width 0.35, 64 px, random weights and random batch-norm statistics so
that folding them into the kernels matters) is exported once through the project's own export code
(export.tflite) to FP32 and FP16; each file is loaded into a freshly built model of the same
architecture and must reproduce both the original Keras model and the TFLite file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert.interpreter", reason="LiteRT (ai-edge-litert) reads the .tflite")

from bundle_support import write_test_manifest  # noqa: E402

from bcedge.errors import ConfigError  # noqa: E402
from training import rebuild_from_bundle as rebuild_mod  # noqa: E402
from training.imagenet_tflite import _layer_name_pattern, load_float_tflite, read_float_kernels  # noqa: E402
from training.models import build_model  # noqa: E402

SIZE = 64
#: The small architecture: (model, width, decoder width).
ARCH = {"name": "unet-mobilenetv2", "width": 0.35, "decoder_width": 0.25}
#: Every conv of that architecture: 35 MobileNetV2 convs + 17 depthwise + grey_to_rgb + 10 decoder + mask.
N_CONVS = 64
SHIPPED_DYNAMIC = Path(__file__).resolve().parents[1] / "bcedge" / "mass_model" / "model_dynamic.tflite"


def _build(seed: int, width: float = ARCH["width"]):
    keras.utils.set_random_seed(seed)
    return build_model(ARCH["name"], SIZE, None, width=width, decoder_width=ARCH["decoder_width"])


def _batch_norms(model) -> list:
    return [
        layer
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]


def _randomise_batch_norms(model, seed: int) -> None:
    """Gamma, beta and moving statistics away from (1, 0, 0, 1), so the converter's fold changes the kernels."""
    rng = np.random.default_rng(seed)
    for bn in _batch_norms(model):
        values = {
            "gamma": lambda n: rng.uniform(0.5, 1.5, n),
            "beta": lambda n: rng.normal(0.0, 0.2, n),
            "moving_mean": lambda n: rng.normal(0.0, 0.2, n),
            "moving_variance": lambda n: rng.uniform(0.5, 2.0, n),
        }
        bn.set_weights([values[w.name](w.shape[0]).astype(np.float32) for w in bn.weights])


def _tflite(path: Path, images: np.ndarray) -> np.ndarray:
    return rebuild_mod.tflite_predict(path, images)


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The original model, its FP32 and FP16 files, check images and the original's outputs on them."""
    from export import tflite

    folder = tmp_path_factory.mktemp("rebuild")
    model = _build(0)
    _randomise_batch_norms(model, 1)
    images = np.random.default_rng(2).random((3, SIZE, SIZE, 1), dtype=np.float32)
    reference = np.asarray(model.predict(images, verbose=0), np.float32)
    # A model whose outputs all saturate would agree with anything: the check needs spread.
    assert reference.std() > 0.01, f"degenerate test model (output std {reference.std():.3g})"
    saved = tflite.export_saved_model(model, folder / "saved_model", SIZE)
    files = {}
    for precision in ("fp32", "fp16"):
        files[precision] = folder / f"model_{precision}.tflite"
        files[precision].write_bytes(tflite.convert(saved, precision))
    return {"model": model, "files": files, "images": images, "reference": reference, "folder": folder}


def test_layer_name_pattern_takes_whole_scopes() -> None:
    def hit(name: str, tensor: str) -> bool:
        return bool(_layer_name_pattern(name).search(tensor))

    assert hit("block_1_expand", "m_1/enc_1/block_1_expand_1/convolution")
    assert not hit("block_1_expand", "m_1/enc_1/block_11_expand_1/convolution")
    assert hit("Conv1", "m_1/enc_1/Conv1_1/convolution1")
    assert not hit("Conv1", "m_1/enc_1/Conv_1_1/convolution1")
    assert hit("Conv_1", "m_1/enc_1/Conv_1_1/convolution1")
    assert not hit("Conv_1", "m_1/enc_1/Conv1_1/convolution1")
    assert not hit("Conv1", "m_1/enc_1/bn_Conv1_1/batchnorm")
    assert not hit("block_16_depthwise", "m_1/block_16_depthwise_relu_1/Relu6")
    # A fused name: the depthwise kernel with its BN and ReLU scopes, joined by ';'.
    fused = "m_1/e_1/block_2_depthwise_relu_1/Relu6;m_1/e_1/block_2_depthwise_BN_1/mul_1;m_1/e_1/block_2_depthwise_1/dw"
    assert hit("block_2_depthwise", fused)
    assert hit("mask", "mask/convolution")  # no suffix, at the start


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_rebuilt_model_reproduces_keras_and_tflite(exported: dict, precision: str) -> None:
    path = exported["files"][precision]
    rebuilt = _build(7)  # other random weights: everything must come from the file
    trainable = [bn.trainable for bn in _batch_norms(rebuilt)]
    assert load_float_tflite(rebuilt, path) == N_CONVS
    out = np.asarray(rebuilt.predict(exported["images"], verbose=0), np.float32)

    assert _max_diff(out, _tflite(path, exported["images"])) <= 1e-4  # the same weights, float32 arithmetic
    # FP32 folds exactly up to rounding; FP16 rounds every weight to 11 significant bits.
    bound = 1e-4 if precision == "fp32" else 1e-2
    assert _max_diff(out, exported["reference"]) <= bound
    for bn in _batch_norms(rebuilt):  # identity + folded shift; trainable left as built
        gamma, _beta, mean, variance = (bn.get_weights()[i] for i in range(4))
        assert np.all(gamma == 1) and np.all(mean == 0) and np.allclose(variance + bn.epsilon, 1)
    assert [bn.trainable for bn in _batch_norms(rebuilt)] == trainable


@pytest.mark.slow
def test_fp16_kernels_are_the_stored_float16_values(exported: dict) -> None:
    kernels = read_float_kernels(exported["files"]["fp16"])
    assert len(kernels) == N_CONVS and {k.op for k in kernels} == {"CONV_2D", "DEPTHWISE_CONV_2D"}
    for k in kernels:
        assert k.kernel.dtype == np.float32 and k.bias.dtype == np.float32
        assert np.array_equal(k.kernel.astype(np.float16).astype(np.float32), k.kernel)
        assert np.array_equal(k.bias.astype(np.float16).astype(np.float32), k.bias)
        assert not np.any(k.step)
    # Each FP16 constant is an FP32 file's kernel rounded to float16 (paired by value: the two files
    # need not name or order their tensors alike).
    fp32 = read_float_kernels(exported["files"]["fp32"])
    for k in kernels:
        twins = [
            t
            for t in fp32
            if t.kernel.shape == k.kernel.shape
            and np.array_equal(t.kernel.astype(np.float16).astype(np.float32), k.kernel)
            and np.array_equal(t.bias.astype(np.float16).astype(np.float32), k.bias)
        ]
        assert len(twins) == 1, k.kernel_name


@pytest.mark.slow
def test_other_width_is_refused_and_leaves_the_model_untouched(exported: dict) -> None:
    other = _build(3, width=0.5)
    before = [w.copy() for w in other.get_weights()]
    with pytest.raises(ConfigError, match="another width or architecture"):
        load_float_tflite(other, exported["files"]["fp16"])
    after = other.get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))


def test_quantised_file_is_refused() -> None:
    if not SHIPPED_DYNAMIC.is_file():
        pytest.skip(f"{SHIPPED_DYNAMIC} not found (the shipped bundle's dynamic-range artifact)")
    with pytest.raises(ConfigError, match="int8: not a float"):
        read_float_kernels(SHIPPED_DYNAMIC)


def test_a_file_that_is_not_tflite_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model_fp16.tflite"
    path.write_bytes(b"not a flatbuffer" * 8)
    with pytest.raises(ConfigError, match="not a readable TFLite model"):
        read_float_kernels(path)


def _bundle(folder: Path, exported: dict) -> Path:
    """A bundle of the FP16 file with a recipe and acceptance data (the original's outputs)."""
    from bcedge import acceptance
    from bcedge.bundle import ArtifactRecord
    from bcedge.preprocess import PreprocessConfig

    folder.mkdir()
    (folder / "model_fp16.tflite").write_bytes(exported["files"]["fp16"].read_bytes())
    inputs = acceptance.quantise_inputs(exported["images"][:2])
    data = acceptance.encode(inputs, np.asarray(exported["model"].predict(inputs, verbose=0), np.float32))
    (folder / acceptance.ACCEPTANCE_FILE).write_bytes(data)
    recipe = {
        "model": ARCH["name"],
        "data": ["phantom"],
        "root": "data",
        "split": "split.json",
        "size": SIZE,
        "width": ARCH["width"],
        "decoder_width": ARCH["decoder_width"],
        "upsampling": "nearest",
        "preprocess_hash": "0123456789abcdef",
        "epochs": 3,
    }
    record = ArtifactRecord.from_file(folder, "model_fp16.tflite", format="tflite", precision="fp16", backend="tflite")
    write_test_manifest(
        folder,
        [record],
        PreprocessConfig(size=SIZE),
        model={"name": ARCH["name"], "architecture": ARCH["name"], "params": 0, "width": ARCH["width"]},
        provenance={"recipe": recipe, "run_dir": "/lost/run", "best_epoch": 3, "training_machine": {"keras": "3"}},
        acceptance=acceptance.record_for(data, n_images=2),
    )
    return folder


@pytest.mark.slow
def test_rebuild_from_bundle_writes_a_run_that_export_reads(exported: dict, tmp_path: Path) -> None:
    from bcedge.preprocess import PreprocessConfig
    from training.models import load_trained
    from training.run import fitted_splits, load_run

    bundle = _bundle(tmp_path / "bundle", exported)
    out = tmp_path / "run"
    lines: list[str] = []
    info = rebuild_mod.rebuild(bundle, out, "model_fp16.tflite", log=lines.append)
    assert info["max_abs_diff"] <= 1e-4 and info["convolutions"] == N_CONVS
    assert info["vs_original_keras_on_acceptance"]["max_abs"] <= 1e-2

    run = load_run(out)
    config = json.loads((out / "config.json").read_text())
    assert run.preprocess_config().hash() == PreprocessConfig(size=SIZE).hash() == config["preprocess_hash"]
    assert fitted_splits(config) == ("train",) and config["machine"] == {"keras": "3"}
    assert config["width"] == ARCH["width"] and config["decoder_width"] == ARCH["decoder_width"]
    assert (
        config["rebuilt_from"]["sha256"] == info["sha256"] and config["rebuilt_from"]["artifact"] == "model_fp16.tflite"
    )
    assert config["rebuilt_from"]["trained_preprocess_hash"] == "0123456789abcdef"
    assert config["rebuilt_from"]["original_run"] == {"run_dir": "/lost/run", "best_epoch": 3}
    for name in ("best.keras", "last.keras"):
        model = load_trained(out / name)
        out_probs = np.asarray(model.predict(exported["images"], verbose=0), np.float32)
        assert _max_diff(out_probs, _tflite(bundle / "model_fp16.tflite", exported["images"])) <= 1e-4
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary left behind

    with pytest.raises(ConfigError, match="not an empty folder"):
        rebuild_mod.rebuild(bundle, out, "model_fp16.tflite", log=lines.append)


@pytest.mark.slow
def test_rebuild_refuses_a_model_that_disagrees_and_writes_nothing(
    exported: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = _bundle(tmp_path / "bundle", exported)
    real = rebuild_mod.tflite_predict
    monkeypatch.setattr(rebuild_mod, "tflite_predict", lambda path, images: real(path, images) + 0.01)
    with pytest.raises(ConfigError, match=r"differs from model_fp16\.tflite"):
        rebuild_mod.rebuild(bundle, tmp_path / "run", "model_fp16.tflite", log=lambda _: None)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="lists no artifact"):
        rebuild_mod.rebuild(bundle, tmp_path / "run", "model_fp32.tflite", log=lambda _: None)


def test_main_turns_errors_into_one_line_and_an_exit_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert rebuild_mod.main([str(tmp_path / "no bundle"), str(tmp_path / "run")]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rebuild_mod, "rebuild", disk_full)
    assert rebuild_mod.main([str(tmp_path / "b"), str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {tmp_path / 'run'}: cannot write the run folder (No space left on device)"]
