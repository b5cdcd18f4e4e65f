"""The measured artifact choice and the on-device acceptance check (bcedge.choice, bcedge.acceptance).

A fake backend registered in the backend table runs "artifacts" whose bytes say how they behave
(how long a call takes, whether the output is right), so the real chooser is exercised end to end:
the bundle's acceptance data, the refusal of a wrong artifact, the timing, the cache.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from bundle_support import write_test_manifest

import bcedge.backends as backends_mod
import bcedge.choice as choice_mod
from bcedge.acceptance import (
    ACCEPTANCE_FILE,
    DICE_FLOOR,
    MIN_DICE,
    agreement,
    baseline_of,
    compare,
    decode,
    encode,
    load,
    quantise_inputs,
    record_for,
)
from bcedge.backends import BackendSpec
from bcedge.backends.base import Backend
from bcedge.bundle import ArtifactRecord, load_bundle
from bcedge.errors import BundleError, ConfigError
from bcedge.formats import RefusedError
from bcedge.pipeline import Segmenter
from bcedge.preprocess import PreprocessConfig

SIZE = 32


class FakeBackend(Backend):
    """Runs a "model" described by the artifact's bytes: ``{"delay_ms": float, "mode": "right"|"wrong"|"crash"}``.

    ``right`` returns the input itself as the probability map (the reference model below),
    ``wrong`` its negative (the masks disagree everywhere), ``crash`` raises on every call.
    Optional ``cold_s`` / ``cold_delay_ms``: calls within ``cold_s`` seconds of the artifact's first
    call in the process take ``cold_delay_ms`` instead (a cold start, per file across openings);
    ``open_delay_ms``: opening takes that long. :class:`FakeAlternate` reads ``alt`` (the same keys)
    from the same file: a second runtime of the same artifact.
    """

    name = "fake"
    opened: ClassVar[list[str]] = []
    first_call: ClassVar[dict[str, float]] = {}

    def _open(self) -> tuple[int | None, int, int, int]:
        spec = self._spec(json.loads((self.content or self.path.read_bytes()).decode()))
        self.delay = float(spec["delay_ms"]) / 1000.0
        self.mode = spec["mode"]
        self.cold_s = float(spec.get("cold_s", 0.0))
        self.cold_delay = float(spec.get("cold_delay_ms", 0.0)) / 1000.0
        time.sleep(float(spec.get("open_delay_ms", 0.0)) / 1000.0)  # a runtime that compiles at open
        FakeBackend.opened.append(self.path.name)
        return None, SIZE, SIZE, 1

    def _spec(self, spec: dict) -> dict:
        return spec

    def _predict(self, batch: np.ndarray) -> np.ndarray:
        if self.mode == "crash":
            raise RuntimeError("simulated kernel fault\nsecond line")
        first = FakeBackend.first_call.setdefault(self.path.name, time.monotonic())
        cold = time.monotonic() - first < self.cold_s
        time.sleep((self.cold_delay if cold else self.delay) * batch.shape[0])
        return batch.copy() if self.mode == "right" else 1.0 - batch


class FakeAlternate(FakeBackend):
    """The same fake artifact on a second runtime: its file's ``alt`` entry describes how it runs."""

    name = "fake-alt"

    def _spec(self, spec: dict) -> dict:
        return spec["alt"]


@pytest.fixture(autouse=True)
def fake_registered(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The fake backend in the table; a private cache folder; the measured mode (the suite default is static)."""
    table = dict(backends_mod.BACKENDS)
    table["fake"] = BackendSpec(
        name="fake",
        target=f"{__name__}:FakeBackend",
        formats=("tflite",),
        description="test backend",
        requirement="dev",
        modules=("numpy",),
    )
    monkeypatch.setattr(backends_mod, "BACKENDS", table)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg cache"))
    monkeypatch.setenv(choice_mod.MODE_ENV, "measure")
    monkeypatch.delenv(choice_mod.ACCEPTANCE_ENV, raising=False)
    monkeypatch.delenv(choice_mod.BUDGET_ENV, raising=False)
    # A quiet machine unless a test says otherwise: a timing taken while other processes are busy
    # is taken again at the next start, which would change what these tests see opened (the
    # busy rule has its own test, which sets the share itself).
    monkeypatch.setattr(choice_mod, "_others_share", lambda *a: 0.0)
    FakeBackend.opened = []
    FakeBackend.first_call = {}


def _inputs(n: int = 4) -> np.ndarray:
    """(n, S, S, 1) float32: smooth blobs, so that about half of each mask is foreground at 0.5."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    out = [0.5 + 0.45 * np.sin(6 * xx + k) * np.cos(5 * yy - k) for k in range(n)]
    return np.stack(out)[..., None].astype(np.float32)


def make_bundle(
    folder: Path,
    artifacts: list[tuple[str, float, str]],
    *,
    acceptance: bool = True,
    backend: str = "fake",
    extra: dict[str, dict] | None = None,
) -> Path:
    """A bundle of fake artifacts ``(file, delay_ms, mode)`` in manifest order, with acceptance data
    from the right model (the identity) unless ``acceptance`` is False."""
    folder.mkdir(parents=True)
    records = []
    for file, delay, mode in artifacts:
        (folder / file).write_text(json.dumps({"delay_ms": delay, "mode": mode, **(extra or {}).get(file, {})}))
        records.append(
            ArtifactRecord.from_file(folder, file, format="tflite", precision="fp32", backend=backend, gate="passed")
        )
    entry = None
    if acceptance:
        images = quantise_inputs(_inputs())
        data = encode(images, images.copy())  # the reference model is the identity
        (folder / ACCEPTANCE_FILE).write_bytes(data)
        entry = record_for(data, n_images=len(images), source="test")
    write_test_manifest(folder, records, PreprocessConfig(size=SIZE), acceptance=entry)
    return folder


THREE = [("wrong.bin", 0.0, "wrong"), ("slow.bin", 25.0, "right"), ("fast.bin", 1.0, "right")]


@pytest.mark.parametrize("interleaved", [True, False])
def test_interleaved_timing_undoes_a_cold_start_mis_ranking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interleaved: bool
) -> None:
    # a.bin is timed first, in its first 0.35 s (cold: 40 ms a call, its one-after-the-other timing
    # stops after ~0.3 s of calls); warm it takes 2 ms against b.bin's steady 15 ms, and b.bin's own
    # timing (~0.3 s) outlasts a.bin's cold start. Timed side by side afterwards, a.bin is the faster.
    if not interleaved:
        monkeypatch.setattr(choice_mod, "_interleave", lambda *args, **kwargs: None)
    cold = {"a.bin": {"cold_s": 0.35, "cold_delay_ms": 40.0}}
    bundle = make_bundle(tmp_path / "b", [("a.bin", 2.0, "right"), ("b.bin", 15.0, "right")], extra=cold)
    with Segmenter(bundle, "auto", threads=1) as seg:
        by_file = {c["file"]: c for c in seg.model_info["choice"]["candidates"]}
        chosen = seg.artifact.file
    if interleaved:
        assert chosen == "a.bin" and by_file["a.bin"]["ms"] < by_file["b.bin"]["ms"]
        runs = by_file["a.bin"]["runs"]
        # Whole rounds, at least INTERLEAVED_ROUNDS, more while the budget lasts, at most MAX_RUNS.
        assert runs == by_file["b.bin"]["runs"] and runs % len(_inputs()) == 0
        assert choice_mod.INTERLEAVED_ROUNDS * len(_inputs()) <= runs <= choice_mod.MAX_RUNS
        # Measured once: each candidate opened once for the measuring (kept open), once more to run.
        assert sorted(FakeBackend.opened) == ["a.bin", "a.bin", "b.bin"]
    else:  # the one-after-the-other timing alone, as before: the cold start decides
        assert chosen == "b.bin" and by_file["a.bin"]["ms"] > 35.0


def test_auto_picks_the_fastest_right_artifact_and_refuses_the_wrong_one(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b", THREE)
    with Segmenter(bundle, "auto", threads=1) as seg:
        assert seg.artifact.file == "fast.bin"
        choice = seg.model_info["choice"]
    assert choice["mode"] == "measured" and choice["chosen"] == "fast.bin" and choice["threads"] == 1
    by_file = {c["file"]: c for c in choice["candidates"]}
    assert [c["file"] for c in choice["candidates"]] == ["wrong.bin", "slow.bin", "fast.bin"]  # the static order
    assert by_file["wrong.bin"]["status"] == "refused" and by_file["wrong.bin"]["acceptance"]["dice"] < 0.1
    assert by_file["slow.bin"]["status"] == by_file["fast.bin"]["status"] == "accepted"
    assert by_file["fast.bin"]["acceptance"] == {**by_file["fast.bin"]["acceptance"], "dice": 1.0, "mean_abs": 0.0}
    # A 25 ms sleep never returns early; the 1 ms one may take far longer on a loaded machine
    # (18.8 ms seen while training shared the cores), so only the order is asserted for it.
    assert by_file["slow.bin"]["ms"] > 20.0 and by_file["slow.bin"]["ms"] > by_file["fast.bin"]["ms"]
    assert by_file["slow.bin"]["runs"] >= choice_mod.MIN_RUNS
    assert "fastest of 2 accepted artifacts" in choice["why"]
    # The refusal: one line naming the artifact, the machine and the disagreement.
    refusals = [w for w in seg.warnings if w.startswith("refused")]
    assert len(refusals) == 1 and "\n" not in refusals[0]
    machine = choice_mod.describe_machine(choice_mod.machine_fingerprint(with_gpu=False))
    assert "wrong.bin" in refusals[0] and f"on this machine ({machine})" in refusals[0]
    assert f"< {MIN_DICE:g} against the reference" in refusals[0]


def test_the_choice_is_cached_per_bundle_and_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = make_bundle(tmp_path / "b", THREE)
    with Segmenter(bundle, "auto", threads=1) as seg:
        first = seg.choice
    assert sorted(FakeBackend.opened) == ["fast.bin", "fast.bin", "slow.bin", "wrong.bin"]  # 3 measured + the run
    cache = Path(first["cache"])
    assert cache.is_file() and cache.parent == tmp_path / "xdg cache" / "bcedge" / "choice"
    FakeBackend.opened = []
    with Segmenter(bundle, "auto", threads=1) as seg:
        again = seg.choice
        assert not [w for w in seg.warnings if w.startswith("refused")]  # said once, when measured
    assert FakeBackend.opened == ["fast.bin"]  # only what runs
    assert again["chosen"] == "fast.bin" and again["seconds"] == 0.0
    assert all(c["cached"] for c in again["candidates"])
    # Another thread count is timed again (the verdicts stay); another machine measures everything again.
    FakeBackend.opened = []
    with Segmenter(bundle, "auto", threads=2) as seg:
        assert seg.choice["chosen"] == "fast.bin"
    assert sorted(FakeBackend.opened) == ["fast.bin", "fast.bin", "slow.bin"]
    real = choice_mod.cpu_identity()
    monkeypatch.setattr(choice_mod, "cpu_identity", lambda: {**real, "flags_sha256": "0" * 64})
    FakeBackend.opened = []
    with Segmenter(bundle, "auto", threads=1) as seg:
        assert seg.choice["cache"] != first["cache"]
    assert sorted(FakeBackend.opened) == ["fast.bin", "fast.bin", "slow.bin", "wrong.bin"]


@pytest.mark.parametrize("garbage", [b"", b"{not json", b'{"version": 1, "key": 3}', b"\xff\xfe", b"[[[[[["])
def test_a_damaged_cache_file_is_ignored_and_rewritten(tmp_path: Path, garbage: bytes) -> None:
    bundle = make_bundle(tmp_path / "b", THREE)
    with Segmenter(bundle, "auto", threads=1) as seg:
        cache = Path(seg.choice["cache"])
    cache.write_bytes(garbage)
    with Segmenter(bundle, "auto", threads=1) as seg:
        assert seg.artifact.file == "fast.bin"
        assert any("damaged or foreign" in w or "unreadable" in w for w in seg.warnings)
    doc = json.loads(cache.read_text())
    assert doc["version"] == choice_mod.CACHE_VERSION and set(doc["artifacts"]) == {f for f, _, _ in THREE}


def test_an_unwritable_cache_costs_a_measurement_not_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "not a folder"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    bundle = make_bundle(tmp_path / "b", THREE)
    with Segmenter(bundle, "auto", threads=1) as seg:
        assert seg.artifact.file == "fast.bin"
        assert any("not written" in w for w in seg.warnings)


def test_a_timing_taken_on_a_busy_machine_is_taken_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A choice timed while another job held the CPUs is not cached for good: the next starts time it
    again (MAX_BUSY_TRIES in all) and a quiet timing replaces it."""
    bundle = make_bundle(tmp_path / "b", THREE)
    monkeypatch.setattr(choice_mod, "_others_share", lambda *a: 0.9)
    with Segmenter(bundle, "auto", threads=1) as seg:
        assert seg.artifact.file == "fast.bin" and "kept the CPUs busy" in seg.choice["why"]
        assert all(c["busy"] for c in seg.choice["candidates"] if c["status"] == "accepted")
    FakeBackend.opened = []
    with Segmenter(bundle, "auto", threads=1) as seg:  # still busy: timed again (try 2)
        pass
    assert sorted(FakeBackend.opened) == ["fast.bin", "fast.bin", "slow.bin"]  # wrong.bin's refusal stays cached
    monkeypatch.setattr(choice_mod, "_others_share", lambda *a: 0.0)
    FakeBackend.opened = []
    with Segmenter(bundle, "auto", threads=1) as seg:  # quiet: the quiet timing replaces the busy one
        assert not any(c["busy"] for c in seg.choice["candidates"] if c["status"] == "accepted")
        assert "busy" not in seg.choice["why"]
    doc = json.loads(Path(seg.choice["cache"]).read_text())
    assert doc["artifacts"]["fast.bin"]["tries"] == {"1": 3} and doc["artifacts"]["fast.bin"]["busy"] == {"1": False}
    FakeBackend.opened = []
    with Segmenter(bundle, "auto", threads=1) as seg:
        assert seg.choice["seconds"] == 0.0
    assert FakeBackend.opened == ["fast.bin"]


def test_cached_timings_use_a_busy_timing_as_it_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a serve worker does at every (re)start: a cached choice answers even when it was timed busy
    (nothing is opened but the chosen artifact), while a bundle never measured here is still measured."""
    bundle = make_bundle(tmp_path / "b", THREE)
    monkeypatch.setattr(choice_mod, "_others_share", lambda *a: 0.9)
    with choice_mod.cached_timings(), Segmenter(bundle, "auto", threads=1) as seg:  # nothing cached: measured
        assert seg.artifact.file == "fast.bin" and "kept the CPUs busy" in seg.choice["why"]
    assert sorted(FakeBackend.opened) == ["fast.bin", "fast.bin", "slow.bin", "wrong.bin"]
    FakeBackend.opened = []
    with choice_mod.cached_timings(), Segmenter(bundle, "auto", threads=1) as seg:  # busy in the cache: kept
        assert seg.artifact.file == "fast.bin" and seg.choice["seconds"] == 0.0
    assert FakeBackend.opened == ["fast.bin"]
    doc = json.loads(Path(seg.choice["cache"]).read_text())
    assert doc["artifacts"]["fast.bin"]["tries"] == {"1": 1}
    FakeBackend.opened = []
    with Segmenter(bundle, "auto", threads=1):  # outside the block the busy timing is taken again
        pass
    assert sorted(FakeBackend.opened) == ["fast.bin", "fast.bin", "slow.bin"]


def test_the_budget_leaves_the_rest_for_the_next_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(choice_mod.BUDGET_ENV, "0")
    bundle = make_bundle(tmp_path / "b", THREE)
    with Segmenter(bundle, "auto", threads=1) as seg:
        # wrong.bin refused, slow.bin accepted: with the budget spent, fast.bin waits for the next run.
        assert seg.artifact.file == "slow.bin"
        status = {c["file"]: c["status"] for c in seg.choice["candidates"]}
    assert status == {"wrong.bin": "refused", "slow.bin": "accepted", "fast.bin": "not-measured"}
    monkeypatch.delenv(choice_mod.BUDGET_ENV)
    with Segmenter(bundle, "auto", threads=1) as seg:
        assert seg.artifact.file == "fast.bin"


def test_static_mode_checks_acceptance_without_timing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(choice_mod.MODE_ENV, "static")
    bundle = make_bundle(tmp_path / "b", THREE)
    with Segmenter(bundle, "auto", threads=1) as seg:
        assert seg.artifact.file == "slow.bin"  # the first in the static order that agrees
        assert seg.choice["mode"] == "static" and "no timing" in seg.choice["why"]
    assert FakeBackend.opened == ["wrong.bin", "slow.bin", "slow.bin"]  # fast.bin never opened


def test_a_named_backend_whose_artifacts_are_all_refused_stops_with_exit_3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = make_bundle(tmp_path / "b", [("wrong.bin", 0.0, "wrong"), ("crash.bin", 0.0, "crash")])
    for backend in ("fake", "auto"):
        with pytest.raises(RefusedError) as excinfo:
            Segmenter(bundle, backend, threads=1)
        message = str(excinfo.value)
        assert excinfo.value.exit_code == 3 and "\n" not in message
        assert "wrong.bin: mask Dice" in message and "crash.bin: failed to run: RuntimeError" in message
        assert "BCEDGE_ACCEPTANCE=off" in message
    monkeypatch.setenv(choice_mod.ACCEPTANCE_ENV, "off")
    with Segmenter(bundle, "fake", threads=1) as seg:
        assert seg.artifact.file == "wrong.bin"
        assert any("acceptance check off" in w for w in seg.warnings)
        assert seg.choice["acceptance"] == "off"


def test_a_bundle_without_acceptance_data_is_timed_but_not_checked(tmp_path: Path) -> None:
    # fast.bin at 10 ms, not THREE's 1 ms: a 0 ms and a 1 ms call swapped places once with training on the
    # same 2 cores (session 18); 10 ms of sleep never returns early, so the order below cannot flip.
    bundle = make_bundle(tmp_path / "b", [*THREE[:2], ("fast.bin", 10.0, "right")], acceptance=False)
    with Segmenter(bundle, "auto", threads=1) as seg:
        # Nothing tells the wrong artifact apart: it is the fastest, so it runs (why the bundles carry the data).
        assert seg.artifact.file == "wrong.bin"
        assert seg.choice["acceptance"] == "not-available" and "no acceptance data" in seg.choice["why"]
    FakeBackend.opened = []
    single = make_bundle(tmp_path / "single", [("fast.bin", 1.0, "right")], acceptance=False)
    with Segmenter(single, "auto", threads=1) as seg:
        assert seg.choice["cache"] is None  # nothing to check, nothing to compare: nothing measured
    assert FakeBackend.opened == ["fast.bin"]


def test_the_keras_reference_is_timed_only_when_nothing_exported_is_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Importing a Keras framework takes seconds: a gated .keras artifact is not timed beside exported ones."""
    # As in a real bundle: TFLite artifacts first in the static order, the Keras reference last (both fakes here).
    monkeypatch.setitem(backends_mod.BACKENDS, "keras", backends_mod.BACKENDS["fake"])
    monkeypatch.setitem(backends_mod.BACKENDS, "tflite", backends_mod.BACKENDS["fake"])
    # The fakes' files are no .tflite models: no OpenVINO copies of them (bcedge.formats.ALTERNATE_RUNTIMES).
    monkeypatch.delitem(backends_mod.BACKENDS, "openvino")
    artifacts = [("fast.bin", 1.0, "right"), ("slow.bin", 25.0, "right")]
    folder = make_bundle(tmp_path / "b", artifacts, backend="tflite")
    (folder / "reference.bin").write_text(json.dumps({"delay_ms": 0.0, "mode": "right"}))
    bundle = load_bundle(folder)
    bundle.manifest.artifacts.append(
        ArtifactRecord.from_file(
            folder, "reference.bin", format="keras", precision="fp32", backend="keras", gate="passed"
        )
    )
    from bcedge.bundle import write_manifest

    write_manifest(folder, bundle.manifest)
    with Segmenter(folder, "auto", threads=1) as seg:
        assert seg.artifact.file == "fast.bin"
        ref = next(c for c in seg.choice["candidates"] if c["file"] == "reference.bin")
    assert ref["status"] == "not-measured" and "Keras reference" in ref["reason"]
    assert "reference.bin" not in FakeBackend.opened
    FakeBackend.opened = []
    with Segmenter(folder, "auto", threads=1) as seg:
        assert seg.choice["seconds"] == 0.0  # settled by the cache: nothing measured again
    assert FakeBackend.opened == ["fast.bin"]


def test_bad_settings_are_config_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = make_bundle(tmp_path / "b", THREE)
    for env, value in (
        (choice_mod.MODE_ENV, "fastest"),
        (choice_mod.ACCEPTANCE_ENV, "maybe"),
        (choice_mod.BUDGET_ENV, "-1"),
    ):
        with monkeypatch.context() as m:
            m.setenv(env, value)
            with pytest.raises(ConfigError, match=env):
                Segmenter(bundle, "auto", threads=1)


def test_the_explicit_artifact_is_not_checked(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b", THREE)
    with Segmenter(bundle, "auto", threads=1, artifact="wrong.bin") as seg:
        assert seg.artifact.file == "wrong.bin" and seg.choice["mode"] == "explicit"
    assert FakeBackend.opened == ["wrong.bin"]


# --------------------------------------------------------------------------- the acceptance data


def test_acceptance_file_round_trip_and_verdicts() -> None:
    images = quantise_inputs(_inputs())
    reference = np.clip(images * 0.9 + 0.05, 0, 1).astype(np.float32)
    data = decode(encode(images, reference), SIZE, "test")
    assert data.images.dtype == np.float32 and data.images.shape == (4, SIZE, SIZE, 1)
    assert np.array_equal(data.images, images)  # the inputs were already on the 1/255 grid
    assert np.abs(data.reference - reference).max() <= 0.5 / 255 + 1e-7
    # The reference is stored to 1/255: its rounding (mean ~1/1020) is within the limit without a baseline.
    same = compare(reference, data, threshold=0.5, output_tolerance=(1e-4, 1e-5))
    assert same.passed and same.dice > 0.999 and same.mean_abs < 0.5 / 255
    shifted = compare(reference + 0.02, data, threshold=0.5, output_tolerance=(0.25, 0.01))
    assert not shifted.passed and "mean |p - p_ref| 0.0200 > tolerance" in shifted.disagreement()
    inverted = compare(1 - reference, data, threshold=0.5, output_tolerance=(0.25, 0.01))
    assert not inverted.passed and inverted.dice < 0.1 and inverted.disagreement().startswith("mask Dice 0.0")


def test_an_artifact_is_held_to_its_export_baseline() -> None:
    """0.98 for an artifact that met it at export; one that agreed less at export (a dynamic-range model)
    may lose at most 0.02 more, never falling below 0.90; the mean difference may grow by the tolerance."""
    images = quantise_inputs(_inputs())
    data = decode(encode(images, images), SIZE, "t")
    # A quantised model whose masks differ from the reference's at export: one column of each image pushed over.
    exported = images.copy()
    exported[:, :, :1] = np.where(exported[:, :, :1] >= 0.5, 0.4, 0.6)
    dice, mean_abs, _ = agreement(exported, data, 0.5)
    assert 0.9 < dice < MIN_DICE
    tol = (0.25, 0.01)
    assert not compare(exported, data, threshold=0.5, output_tolerance=tol).passed  # without a baseline: 0.98
    base = {"dice": dice, "mean_abs": mean_abs}
    same = compare(exported, data, threshold=0.5, output_tolerance=tol, baseline=base)
    assert same.passed and same.min_dice == pytest.approx(dice - 0.02) and same.baseline == base
    worse = exported.copy()
    worse[:, :, 1:3] = np.where(worse[:, :, 1:3] >= 0.5, 0.4, 0.6)  # another machine moves 2 more columns
    assert not compare(worse, data, threshold=0.5, output_tolerance=tol, baseline=base).passed
    assert (
        compare(1 - images, data, threshold=0.5, output_tolerance=tol, baseline={"dice": 0.5, "mean_abs": 0.5}).min_dice
        == DICE_FLOOR
    )
    # An artifact that met 0.98 at export keeps the 0.98 rule.
    assert (
        compare(exported, data, threshold=0.5, output_tolerance=tol, baseline={"dice": 0.995, "mean_abs": 0}).min_dice
        == MIN_DICE
    )
    entry = {"baseline": {"m.bin": {"sha256": "a" * 64, "dice": 0.9, "mean_abs": 0.01}}}
    assert baseline_of(entry, "m.bin", "a" * 64) == {"dice": 0.9, "mean_abs": 0.01}
    assert baseline_of(entry, "m.bin", "b" * 64) is None  # other bytes: no baseline
    assert baseline_of({"baseline": {"m.bin": {"sha256": "a" * 64, "dice": "x"}}}, "m.bin", "a" * 64) is None
    assert baseline_of(None, "m.bin", "a" * 64) is None


@pytest.mark.parametrize(
    "payload",
    [b"", b"PK\x03\x04 not a zip", b"\x93NUMPY"],
)
def test_a_malformed_acceptance_file_is_a_bundle_error(payload: bytes) -> None:
    with pytest.raises(BundleError, match="not a readable acceptance file"):
        decode(payload, SIZE, "x.npz")


def test_a_hostile_acceptance_file_is_refused_before_it_is_inflated_or_unpickled() -> None:
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, images=np.zeros((80, 1024, 1024), np.uint8), reference=np.zeros(1, np.uint8))
    with pytest.raises(BundleError, match="inflates to"):
        decode(buf.getvalue(), 1024, "bomb.npz")  # 80 MB of zeros in ~80 KB
    buf = io.BytesIO()
    np.savez(buf, images=np.array([{"x": 1}], dtype=object), reference=np.zeros(1, np.uint8), version=np.array(1))
    with pytest.raises(BundleError, match="not a readable acceptance file"):
        decode(buf.getvalue(), SIZE, "pickle.npz")


def test_acceptance_arrays_of_the_wrong_size_or_dtype_are_refused() -> None:
    images = quantise_inputs(_inputs())
    with pytest.raises(BundleError, match=r"expected uint8 arrays of shape \[N, 64, 64\]"):
        decode(encode(images, images), 64, "x.npz")


def test_a_tampered_acceptance_file_is_refused(tmp_path: Path) -> None:
    folder = make_bundle(tmp_path / "b", THREE)
    bundle = load_bundle(folder)
    assert load(bundle) is not None
    blob = bytearray((folder / ACCEPTANCE_FILE).read_bytes())
    blob[-30] ^= 0xFF
    (folder / ACCEPTANCE_FILE).write_bytes(bytes(blob))
    with pytest.raises(BundleError, match="tampered with or truncated"):
        load(bundle)
    with pytest.raises(BundleError, match="tampered with or truncated"):
        Segmenter(folder, "auto", threads=1)


def test_manifest_acceptance_entry_is_optional_and_validated(tmp_path: Path) -> None:
    without = make_bundle(tmp_path / "without", THREE, acceptance=False)
    assert "acceptance" not in json.loads((without / "manifest.json").read_text())  # old readers still read it
    assert load_bundle(without).manifest.acceptance is None
    folder = make_bundle(tmp_path / "with", THREE)
    doc = json.loads((folder / "manifest.json").read_text())
    assert doc["acceptance"]["file"] == ACCEPTANCE_FILE and doc["acceptance"]["min_dice"] == MIN_DICE
    for bad, match in (
        ({**doc["acceptance"], "file": "../x.npz"}, "expected a file name inside the bundle"),
        ({**doc["acceptance"], "sha256": "abc"}, "64 lowercase hex digits"),
        ({**doc["acceptance"], "size_bytes": 0}, "positive integer"),
        ("acceptance.npz", "expected a JSON object"),
    ):
        (folder / "manifest.json").write_text(json.dumps({**doc, "acceptance": bad}))
        with pytest.raises(BundleError, match=match):
            load_bundle(folder)


def test_export_selects_the_largest_reference_masks() -> None:
    from export.acceptance import make_acceptance, select

    probs = np.zeros((6, SIZE, SIZE, 1), np.float32)
    for i, area in enumerate((3, 0, 50, 10, 50, 1)):
        probs[i].flat[:area] = 0.9
    assert select(probs, 0.5, 3).tolist() == [2, 3, 4]
    images = _inputs(6)
    data, entry = make_acceptance(images, lambda x: x.copy(), 0.5, ids=[f"s{i}" for i in range(6)], n=2, source="t")
    decoded = decode(data, SIZE, "t")
    expected = select(images, 0.5, 2)
    assert entry["n_images"] == 2 and entry["ids"] == [f"s{i}" for i in expected] and entry["source"] == "t"
    assert np.array_equal(decoded.images, quantise_inputs(images[expected]))
    # The reference ran on the quantised inputs, so the identity model agrees exactly.
    assert np.allclose(decoded.reference, decoded.images, atol=1 / 65535)
    assert entry["sha256"] and entry["size_bytes"] == len(data)


# --------------------------------------------------------------------------- the shipped bundles, real runtimes

REPO = Path(__file__).resolve().parents[1]
#: The shipped bundles' model artifacts (the mass model's re-exported any-width in session 15, its dynamic-range
#: one with float depthwise weights and depth-to-space upsampling since session 20: benchmarks/float_depthwise_gate.py,
#: benchmarks/depth_to_space_check.py): the acceptance data
#: must not change them.
SHIPPED_ARTIFACTS = {
    "bcedge/demo_model": {"model_int8.tflite": "dd71913344d6707fc0290ae0c7ce7bd3e294adf2e2a6e9785ec1c78850691d9f"},
    "bcedge/mass_model": {
        "model_fp16.tflite": "468ef6cdbbd108f3cc30d973be073954af3b2ca0a9f0bfb786a2d04a8b8397fb",
        "model_dynamic.tflite": "cae95976c4184393d144b3008cc0b638679b2b8316f996796b22ee1ca2fed825",
    },
}


def _tflite_available() -> bool:
    return backends_mod.BACKENDS["tflite"].available()[0]


@pytest.mark.parametrize("name", list(SHIPPED_ARTIFACTS))
def test_shipped_bundles_carry_acceptance_data_that_their_artifacts_pass_here(name: str) -> None:
    from export.acceptance import check_bundle

    bundle = load_bundle(REPO / name)
    assert {a.file: a.sha256 for a in bundle.manifest.artifacts} == SHIPPED_ARTIFACTS[name]
    for record in bundle.manifest.artifacts:
        bundle.artifact_path(record)  # the files are the recorded bytes
    data = load(bundle)
    assert data is not None and len(data) == 4 and data.images.shape[1] == bundle.input_size
    entry = bundle.manifest.acceptance
    assert set(entry["baseline"]) == set(SHIPPED_ARTIFACTS[name]) and entry["size_bytes"] < 1 << 20
    if not _tflite_available():
        pytest.skip("LiteRT is not installed: the artifacts cannot run here")
    verdicts = dict(check_bundle(REPO / name))
    assert all(isinstance(v, dict) and v["status"] == "passed" for v in verdicts.values()), verdicts


def _swap_reference(folder: Path) -> None:
    """Make the bundle's acceptance reference disagree with its artifact (as a CPU that computes it wrong would)."""
    from bcedge.bundle import write_manifest

    bundle = load_bundle(folder)
    data = load(bundle)
    assert data is not None
    payload = encode(data.images, 1.0 - data.reference)
    (folder / ACCEPTANCE_FILE).write_bytes(payload)
    bundle.manifest.acceptance = record_for(payload, n_images=len(data), source="test: inverted")
    write_manifest(folder, bundle.manifest)


def test_cli_shows_the_choice_and_refuses_an_artifact_that_disagrees_here(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    from bcedge.cli import main

    if not _tflite_available():
        pytest.skip("LiteRT is not installed")
    scan = REPO / "bcedge" / "examples" / "phantom_lcc.dcm"
    out = tmp_path / "out"
    assert main(["infer", str(scan), "--model", str(REPO / "bcedge" / "demo_model"), "--out", str(out), "--json"]) == 0
    choice = json.loads(capsys.readouterr().out)["model"]["choice"]
    assert choice["chosen"] == "model_int8.tflite" and choice["acceptance"] == "on"
    assert choice["candidates"][0]["acceptance"]["status"] == "passed"
    copy = tmp_path / "demo copy"
    shutil.copytree(REPO / "bcedge" / "demo_model", copy)
    _swap_reference(copy)
    for backend in ("tflite", "auto"):
        args = ["infer", str(scan), "--model", str(copy), "--backend", backend, "--out", str(out)]
        assert main(args) == 3
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error: every") and "was refused on this machine (" in err[-1]
        assert "model_int8.tflite: mask Dice 0.0" in err[-1]


# --------------------------------------------------------------------------- start-up and alternate runtimes


def test_a_job_of_known_length_counts_each_candidates_start_up(tmp_path: Path) -> None:
    """A runtime that opens slowly but calls fast wins long jobs only: ``scans`` counts the start-up."""
    artifacts = [("quick_start.bin", 25.0, "right"), ("slow_start.bin", 2.0, "right")]
    bundle = make_bundle(tmp_path / "b", artifacts, extra={"slow_start.bin": {"open_delay_ms": 400.0}})
    with Segmenter(bundle, "auto", threads=1, scans=1) as seg:
        one = seg.choice
    assert one["chosen"] == "quick_start.bin" and one["scans"] == 1
    starts = {c["key"]: c["start_ms"] for c in one["candidates"]}
    assert starts["slow_start.bin"] >= 400.0 > starts["quick_start.bin"]
    assert "for 1 scan(s) with start-up" in one["why"]
    # The same measurements (cached, nothing measured again) decide a long job and an open-ended one.
    with Segmenter(bundle, "auto", threads=1, scans=100) as seg:
        assert seg.choice["chosen"] == "slow_start.bin" and seg.choice["seconds"] == 0.0
    with Segmenter(bundle, "auto", threads=1) as seg:
        assert seg.choice["chosen"] == "slow_start.bin" and seg.choice["scans"] is None
        assert "start-up" not in seg.choice["why"]


def test_job_cost_is_start_up_plus_the_remaining_calls() -> None:
    entry = {"ms": 20.0, "start_ms": 500.0}
    assert choice_mod._job_ms(entry, None) == 20.0
    assert choice_mod._job_ms(entry, 1) == 500.0
    assert choice_mod._job_ms(entry, 11) == 700.0
    assert choice_mod._job_ms({"ms": 20.0}, 3) == 60.0  # start-up not measured: the calls alone


@pytest.fixture
def alternate(monkeypatch: pytest.MonkeyPatch) -> None:
    """``tflite``/fp32 artifacts run on the fake backend, and on ``fake-alt`` as an alternate runtime."""
    import bcedge.formats as formats_mod

    monkeypatch.setitem(backends_mod.BACKENDS, "tflite", backends_mod.BACKENDS["fake"])
    monkeypatch.setitem(
        backends_mod.BACKENDS,
        "fake-alt",
        BackendSpec(
            name="fake-alt",
            target=f"{__name__}:FakeAlternate",
            formats=("tflite",),
            description="test alternate runtime",
            requirement="dev",
            modules=("numpy",),
        ),
    )
    monkeypatch.setattr(formats_mod, "ALTERNATE_RUNTIMES", {("tflite", "fp32"): ("fake-alt",)})


def test_an_alternate_runtime_is_a_candidate_of_its_own(tmp_path: Path, alternate: None) -> None:
    """The same file on a second runtime is measured, cached and chosen under its own key."""
    extra = {"model.bin": {"alt": {"delay_ms": 1.0, "mode": "right"}}}
    bundle = make_bundle(tmp_path / "b", [("model.bin", 25.0, "right")], backend="tflite", extra=extra)
    with Segmenter(bundle, "auto", threads=1) as seg:
        assert seg.backend_name == "fake-alt" and seg.artifact.file == "model.bin"
        choice = seg.model_info["choice"]
    assert choice["chosen"] == "model.bin@fake-alt"
    keys = {c["key"]: c["backend"] for c in choice["candidates"]}
    assert keys == {"model.bin": "tflite", "model.bin@fake-alt": "fake-alt"}
    cached = json.loads(Path(choice["cache"]).read_text())["artifacts"]
    assert set(cached) == {"model.bin", "model.bin@fake-alt"}
    # Named: --backend tflite runs the file on its own runtime; the key names the pair.
    with Segmenter(bundle, "tflite", threads=1) as seg:
        assert seg.backend_name == "tflite" and seg.choice["chosen"] == "model.bin"
    with Segmenter(bundle, "auto", threads=1, artifact="model.bin@fake-alt") as seg:
        assert seg.backend_name == "fake-alt"
    with pytest.raises(BundleError, match=r"no artifact 'model\.bin@nope'"):
        Segmenter(bundle, "auto", threads=1, artifact="model.bin@nope")


def test_a_wrong_alternate_runtime_is_refused_and_the_file_runs_on_its_own(tmp_path: Path, alternate: None) -> None:
    extra = {"model.bin": {"alt": {"delay_ms": 1.0, "mode": "wrong"}}}
    bundle = make_bundle(tmp_path / "b", [("model.bin", 25.0, "right")], backend="tflite", extra=extra)
    with Segmenter(bundle, "auto", threads=1) as seg:
        assert seg.backend_name == "tflite" and seg.choice["chosen"] == "model.bin"
        refusals = [w for w in seg.warnings if w.startswith("refused")]
    assert len(refusals) == 1 and "on fake-alt (model.bin)" in refusals[0]
    with pytest.raises(RefusedError, match=r"every fake-alt artifact .* was refused"):
        Segmenter(bundle, "fake-alt", threads=1)


def test_the_acceptance_tolerance_follows_the_arithmetic_that_ran() -> None:
    """An FP16 file computed in BF16 is held to BF16's tolerance; otherwise the file's precision decides."""
    from bcedge.formats import COMPUTE_SPECS, PRECISION_SPECS, acceptance_spec

    assert acceptance_spec("fp16") is PRECISION_SPECS["fp16"]
    assert acceptance_spec("fp16", None) is PRECISION_SPECS["fp16"]
    assert acceptance_spec("fp16", "fp16") is PRECISION_SPECS["fp16"]
    assert acceptance_spec("fp16", "bf16") is COMPUTE_SPECS["bf16"]
    # BF16 keeps 8 significant bits to FP16's 11: its probability tolerances are FP16's times 8.
    assert COMPUTE_SPECS["bf16"].output_tolerance == pytest.approx(
        tuple(8 * t for t in PRECISION_SPECS["fp16"].output_tolerance)
    )
