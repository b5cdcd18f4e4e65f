"""``bcedge batch`` on Ray Data, end to end: a folder with the real bundle, --limit and resume, Orthanc DICOMweb.

One local Ray (2 CPUs, small object store) serves the whole module: :func:`bcedge.batch.run.run_batch`
joins a Ray that is already up instead of starting its own. The kill -9 test is in
``test_batch_kill.py`` (it needs a driver process of its own).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'bcedge[batch]')")
pytest.importorskip("pyarrow", reason="pyarrow is not installed (pip install 'bcedge[batch]')")

from batch_support import dciodvfy_errors, orthanc_missing, orthanc_server, real_scans_as_mg  # noqa: E402

from bcedge.batch.ledger import read_table  # noqa: E402
from bcedge.batch.run import BatchOptions, run_batch, worker_threads  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
REAL_BUNDLE = ROOT / "models" / "unet-mobilenetv2-combined256"
MIAS = ["mdb001.png", "mdb005.png"]  # mdb001: a benign circumscribed mass; mdb005: another mass case

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    try:
        ray.init(
            address="local",
            num_cpus=2,
            object_store_memory=200 * 1024 * 1024,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.ERROR,
        )
    except Exception as exc:  # Ray's fixed start-up timeouts (15-30 s) pass on a starved machine
        ray.shutdown()
        pytest.skip(f"a local Ray did not start here ({str(exc).splitlines()[0][:120]}); machine overloaded?")
    yield
    ray.shutdown()


@pytest.fixture
def real_bundle() -> Path:
    if not (REAL_BUNDLE / "manifest.json").is_file():
        pytest.skip(f"the real bundle {REAL_BUNDLE} is not in this checkout")
    return REAL_BUNDLE


@pytest.fixture
def archive(tmp_path: Path, bcedge_data: Path) -> tuple[Path, int]:
    """A folder tree: 3 phantoms (DICOM) in a sub-folder, 2 real mini-MIAS PNGs, 1 corrupt DICOM."""
    from bcedge.phantom import generate

    root = tmp_path / "arch ive"
    generate(tmp_path / "ph", count=3, scale=0.2)
    shutil.copytree(tmp_path / "ph" / "images", root / "site A" / "2020")
    (root / "mias").mkdir(parents=True)
    for name in MIAS:
        shutil.copy(bcedge_data / "mini-mias" / "images" / name, root / "mias" / name)
    (root / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x00")
    return root, 6


def _check_exactly_once(out: Path, expected: int) -> tuple[object, object]:
    scans, findings = read_table(out)
    keys = scans.column("key").to_pylist()
    assert len(keys) == expected and len(set(keys)) == expected, Counter(keys).most_common(3)
    assert set(findings.column("key").to_pylist()) <= set(keys)
    return scans, findings


def test_folder_end_to_end_with_the_real_bundle(
    ray_local: None, archive: tuple[Path, int], real_bundle: Path, tmp_path: Path
) -> None:
    root, n = archive
    out = tmp_path / "out"
    opts = BatchOptions(source=str(root), out=out, model=real_bundle, workers=2, kinds=("mask", "json", "seg"))
    summary = run_batch(opts)
    assert (summary.found, summary.processed, summary.done, summary.failed) == (n, n, n - 1, 1)
    assert summary.scans_per_s and summary.scans_per_s > 0 and summary.parts >= 2
    scans, findings = _check_exactly_once(out, n)
    rows = {Path(p).name: r for p, r in zip(scans.column("path").to_pylist(), scans.to_pylist(), strict=True)}
    assert rows["broken.dcm"]["status"] == "failed" and rows["broken.dcm"]["error"]
    assert summary.errors == [f"{rows['broken.dcm']['path']}: {rows['broken.dcm']['error']}"]
    # One artifact for the whole run (issue 17): the driver's choice, at the workers' thread count, in
    # every row (the 2 workers made no choice of their own) and in the run's record.
    (record_path,) = (out / "results" / "runs").iterdir()
    record = json.loads(record_path.read_text())
    assert record["run_id"] == summary.run_id and record["model"]["artifact"] == summary.model["artifact"]
    assert record["threads_per_worker"] == worker_threads(None, 2, None) == summary.model["threads"]
    assert {(r["model_artifact"], r["backend"]) for r in rows.values()} == {
        (summary.model["artifact"], summary.model["backend"])
    }
    for name, row in rows.items():
        assert row["model_sha256"] == summary.model["sha256"] and row["model_name"] == summary.model["name"]
        if name == "broken.dcm":
            continue
        assert row["status"] == "done" and row["n_findings"] is not None and row["total_ms"] > 0
        assert Path(row["mask_path"]).is_file() and Path(row["json_path"]).is_file()
        per_scan = [f for f in findings.to_pylist() if f["key"] == row["key"]]
        assert len(per_scan) == row["n_findings"]
        if per_scan:
            assert row["max_probability"] == max(f["max_probability"] for f in per_scan)
    # The tree is mirrored under --out; DICOM inputs get a SEG, the PNGs none.
    phantom = rows["PH0-0000_L_CC.dcm"]
    assert Path(phantom["mask_path"]).parent == out / "site A" / "2020"
    assert phantom["sop_uid"] and phantom["seg_path"] and rows["mdb001.png"]["seg_path"] is None
    if shutil.which("dciodvfy"):
        assert dciodvfy_errors(Path(phantom["seg_path"])) == []
    # Re-running the same command: everything is skipped, the table is unchanged.
    again = run_batch(opts)
    assert (again.found, again.skipped, again.processed) == (n, n, 0)
    _check_exactly_once(out, n)


def test_limit_then_resume(ray_local: None, archive: tuple[Path, int], tmp_path: Path) -> None:
    root, n = archive
    out = root / "out"  # inside the source: it must not be read as input on the second run
    opts = BatchOptions(source=str(root), out=out, workers=1, kinds=("json",), block_size=1)
    first = run_batch(BatchOptions(**{**opts.__dict__, "limit": 2}))
    assert (first.processed, first.left) == (2, n - 2)
    _check_exactly_once(out, 2)
    second = run_batch(opts)
    assert (second.found, second.skipped, second.processed) == (n, 2, n - 2)
    scans, _ = _check_exactly_once(out, n)
    assert len(set(scans.column("part").to_pylist())) == n  # --block-size 1: one committed part per scan


def test_orthanc_dicomweb_end_to_end_with_stow(
    ray_local: None, tmp_path: Path, bcedge_data: Path, real_bundle: Path
) -> None:
    reason = orthanc_missing()
    if reason:
        pytest.skip(reason)
    import pydicom
    from dicomweb_client.api import DICOMwebClient

    from bcedge.phantom import generate

    generate(tmp_path / "ph", count=3, scale=0.2)
    files = sorted((tmp_path / "ph" / "images").glob("*.dcm")) + real_scans_as_mg(bcedge_data, tmp_path / "mias", MIAS)
    loaded = [pydicom.dcmread(f) for f in files]
    (tmp_path / "pacs").mkdir()
    with orthanc_server(tmp_path / "pacs") as url:
        client = DICOMwebClient(url)
        client.store_instances(loaded)
        out = tmp_path / "out"
        opts = BatchOptions(
            source=url, out=out, model=real_bundle, workers=1, kinds=("seg", "json"), stow=True, study_date="19000101-"
        )
        summary = run_batch(opts)
        assert (summary.found, summary.done, summary.failed) == (len(files), len(files), 0), summary.errors
        scans, _ = _check_exactly_once(out, len(files))
        assert sorted(scans.column("sop_uid").to_pylist()) == sorted(ds.SOPInstanceUID for ds in loaded)
        assert all(scans.column("seg_stored").to_pylist())
        assert all(p.startswith(url + "/studies/") for p in scans.column("path").to_pylist())
        # Every SEG landed in Orthanc, once, referencing its source, and passes dciodvfy.
        segs = client.search_for_instances(search_filters={"Modality": "SEG"})
        assert len(segs) == len(files)
        referenced = set()
        for item in segs:
            study, series, sop = (item[t]["Value"][0] for t in ("0020000D", "0020000E", "00080018"))
            seg = client.retrieve_instance(study, series, sop)
            referenced.add(seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID)
            if shutil.which("dciodvfy"):
                path = tmp_path / f"{sop}.dcm"
                seg.save_as(path, enforce_file_format=True)
                assert dciodvfy_errors(path) == [], sop
        assert referenced == {ds.SOPInstanceUID for ds in loaded}
        # A re-run skips every instance and stores nothing new.
        again = run_batch(opts)
        assert (again.skipped, again.processed) == (len(files), 0)
        assert len(client.search_for_instances(search_filters={"Modality": "SEG"})) == len(files)
