"""The OpenVINO backend (bcedge/backends/openvino.py) on the shipped mass model's FP16 ``.tflite``.

An alternate runtime: the same file LiteRT runs, compiled by OpenVINO (BF16 where the CPU has it).
Checked here: it agrees with LiteRT on the bundle's acceptance images, runs only the breast's column
block, loads the verified bytes (never the path), refuses what it cannot load with an InputError,
and is a candidate of ``--backend auto`` / ``--backend openvino`` under its own key. Skipped where
openvino is not installed (``pip install 'bcedge[openvino]'``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openvino")

from bcedge.acceptance import load as load_acceptance
from bcedge.backends import open_backend
from bcedge.bundle import ArtifactRecord, Bundle, load_bundle
from bcedge.errors import ConfigError, InputError
from bcedge.formats import candidate_key, runtime_candidates
from bcedge.pipeline import Segmenter, default_bundle_path

FP16 = "model_fp16.tflite"


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    return load_bundle(default_bundle_path())


def _record(bundle: Bundle, backend: str) -> ArtifactRecord:
    return next(r for r in runtime_candidates(bundle.manifest.artifacts) if r.file == FP16 and r.backend == backend)


def _dice(a: np.ndarray, b: np.ndarray, threshold: float) -> float:
    ma, mb = a > threshold, b > threshold
    total = int(ma.sum()) + int(mb.sum())
    return 1.0 if total == 0 else 2.0 * int((ma & mb).sum()) / total


def test_the_fp16_file_on_openvino_agrees_with_litert(bundle: Bundle) -> None:
    """Same file, two runtimes: masks agree at Dice >= 0.98 on every acceptance image, in FP32 and in the
    default (BF16 on AVX-512 BF16 / AMX CPUs); FP32 probabilities within float reordering of LiteRT's."""
    data = load_acceptance(bundle)
    assert data is not None and len(data.images) >= 4
    with bundle.open(_record(bundle, "tflite"), threads=2) as litert:
        reference = np.concatenate([litert.predict(data.images[i : i + 1]) for i in range(len(data.images))])
    for precision in ("f32", "auto"):
        with bundle.open(_record(bundle, "openvino"), threads=2, precision=precision) as ov:
            assert ov.details["runtime"] == "openvino" and ov.details["precision_option"] == precision
            out = np.concatenate([ov.predict(data.images[i : i + 1]) for i in range(len(data.images))])
            used = ov.details["inference_precision"]
        assert out.shape == reference.shape and out.dtype == np.float32
        for i in range(len(out)):
            assert _dice(out[i], reference[i], bundle.threshold) >= 0.98, (precision, used, i)
        if precision == "f32":
            assert used == "f32"
            assert float(np.abs(out - reference).mean()) < 1e-3
            assert float(np.abs(out - reference).max()) < 0.05


def test_only_the_breast_columns_run_and_the_rest_is_zero(bundle: Bundle) -> None:
    """An any-width model runs the nonzero column block (multiples of 32); outside it the output is 0."""
    data = load_acceptance(bundle)
    image = data.images[:1].copy()
    image[:, :, 320:] = 0.0  # a breast on the left 320 columns
    with bundle.open(_record(bundle, "openvino"), threads=2, precision="f32") as ov:
        assert "any" in str(ov.details["input_width"])
        out = ov.predict(image)
    with bundle.open(_record(bundle, "tflite"), threads=2) as litert:
        ref = litert.predict(image)
    assert np.all(out[:, :, 320:] == 0.0) and out[:, :, :320].max() > bundle.threshold
    assert _dice(out[0], ref[0], bundle.threshold) >= 0.98
    # columns="square": the whole square, as LiteRT's square run (the cut-off zeros' view differs from the block's).
    with bundle.open(_record(bundle, "tflite"), threads=2, columns="square") as litert:
        ref_square = litert.predict(image)
    with bundle.open(_record(bundle, "openvino"), threads=2, precision="f32", columns="square") as square:
        assert square.details["input_width"] == bundle.input_size
        out_square = square.predict(image)
    assert float(np.abs(out_square - ref_square).mean()) < 1e-3
    assert float(np.abs(out_square[:, :, 320:]).max()) > 0.0  # the zero columns ran too


def test_the_verified_bytes_load_not_the_path(tmp_path: Path, bundle: Bundle, monkeypatch: pytest.MonkeyPatch) -> None:
    """Given ``content``, the backend never opens ``path``; its temporary copy is gone after opening."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    content = (bundle.dir / FP16).read_bytes()
    missing = tmp_path / "not-there.tflite"
    with open_backend("openvino", missing, content=content, threads=1, precision="f32", cache=False) as ov:
        assert ov.predict(np.zeros((1, 512, 512, 1), np.float32)).shape == (1, 512, 512, 1)
        assert ov.details["model_cache"] is None
    assert list((tmp_path / "tmp").iterdir()) == []


def test_what_openvino_cannot_load_is_an_input_error(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(b"TFL3" + bytes(range(256)) * 8)
    with pytest.raises(InputError, match="is not a model OpenVINO can load"):
        open_backend("openvino", garbage, threads=1)
    with pytest.raises(InputError, match="does not exist"):
        open_backend("openvino", tmp_path / "absent.tflite")
    with pytest.raises(ConfigError, match="precision is 'f8'"):
        open_backend("openvino", garbage, precision="f8")
    with pytest.raises(ConfigError, match="columns is 'half'"):
        open_backend("openvino", garbage, columns="half")


def test_named_and_keyed_choice_runs_the_file_on_openvino(bundle: Bundle) -> None:
    """``--backend openvino`` runs the FP16 file on OpenVINO after its acceptance check; the key names it."""
    with Segmenter(bundle, "openvino", threads=2) as seg:
        assert seg.backend_name == "openvino" and seg.artifact.file == FP16
        info = seg.model_info
        assert info["backend"] == "openvino" and info["runtime"] == "openvino"
        assert info["choice"]["chosen"] == f"{FP16}@openvino"
        (candidate,) = [c for c in info["choice"]["candidates"] if c["key"] == f"{FP16}@openvino"]
        assert candidate["status"] == "accepted" and candidate["acceptance"]["dice"] >= 0.98
    assert candidate_key(seg.artifact) == f"{FP16}@openvino"
    with Segmenter(bundle, threads=2, artifact=f"{FP16}@openvino") as seg:
        assert seg.backend_name == "openvino"


def test_a_batch_run_hands_its_workers_the_runtime_too(tmp_path: Path) -> None:
    """The driver's choice reaches the workers as the (file, runtime) key, not the file alone."""
    from bcedge.batch.run import BatchOptions, choose_model, worker_options
    from bcedge.batch.worker import ScanWorker

    run_model = choose_model(default_bundle_path(), "openvino", 1, None, None)
    assert run_model.artifact == f"{FP16}@openvino" and run_model.backend == "openvino"
    options = worker_options(
        BatchOptions(source=str(tmp_path), out=tmp_path / "out"), default_bundle_path(), run_model, tmp_path
    )
    worker = ScanWorker(options.to_dict())
    assert worker.seg is not None and worker.seg.backend_name == "openvino" and worker.seg.artifact.file == FP16
