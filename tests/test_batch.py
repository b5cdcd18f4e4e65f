"""``bcedge batch`` without Ray: sources, the results table, the ledger's commit protocol, the worker's rows.

The Ray runs (folder end to end, kill -9 and resume, Orthanc) are in ``test_batch_ray.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow", reason="pyarrow is not installed (pip install 'bcedge[batch]')")
pq = pytest.importorskip("pyarrow.parquet")

from bcedge.batch import dicomweb  # noqa: E402
from bcedge.batch.ledger import Ledger, read_table  # noqa: E402
from bcedge.batch.run import (  # noqa: E402
    BatchOptions,
    _blocks,
    block_sizes,
    check_options,
    choose_model,
    worker_options,
    worker_threads,
)
from bcedge.batch.sources import ScanRef, describe_source, folder_refs, manifest_refs  # noqa: E402
from bcedge.batch.table import fingerprint, scan_schema  # noqa: E402
from bcedge.errors import ConfigError, InputError  # noqa: E402


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------- sources


def test_folder_refs_mirror_the_tree_and_pick_scans(spaced_dir: Path) -> None:
    root = spaced_dir / "archive"
    _touch(root / "b" / "scan.dcm")
    _touch(root / "b" / "scan.png")  # same stem in the same folder: gets _2
    _touch(root / "a" / "deeper" / "1.2.840.99")  # no suffix, DICOM preamble
    (root / "a" / "deeper" / "1.2.840.99").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 10)
    _touch(root / "a" / "notes.txt")  # not a scan
    _touch(root / "a" / "1.2.3")  # no suffix, no preamble: not a scan
    _touch(root / ".hidden" / "x.dcm")
    _touch(root / "a" / ".tmp.dcm")
    _touch(root / "out" / "old_mask.png")  # the output folder inside the source is skipped
    refs = list(folder_refs(root, exclude=root / "out"))
    assert [r.stem for r in refs] == ["a/deeper/1.2.840.99", "b/scan", "b/scan_2"]
    first = refs[1]
    st = os.stat(root / "b" / "scan.dcm")
    assert first.key == f"file:{os.path.abspath(root / 'b' / 'scan.dcm')}:{st.st_size}:{st.st_mtime_ns}"
    assert first.kind == "file" and first.size == 1
    # Same tree, same refs (stems are what a resumed run overwrites).
    assert list(folder_refs(root, exclude=root / "out")) == refs
    # A modified file is a new scan.
    (root / "b" / "scan.dcm").write_bytes(b"xy")
    assert list(folder_refs(root, exclude=root / "out"))[1].key != first.key


def test_manifest_csv_and_parquet(spaced_dir: Path) -> None:
    _touch(spaced_dir / "scans" / "one.dcm")
    _touch(spaced_dir / "other" / "one.dcm")
    csv = spaced_dir / "list.csv"
    csv.write_text("patient,Path\np1,scans/one.dcm\np1,scans/one.dcm\np2,other/one.dcm\np3,missing.dcm\np4,\n")
    refs = list(manifest_refs(csv))
    assert [r.stem for r in refs] == ["one", "one_2", "missing"]
    assert refs[2].size == -1 and refs[2].key.endswith(":-1:-1")  # listed but missing: a failed scan later
    table = pa.table({"file": [str(spaced_dir / "scans" / "one.dcm")]})
    pq.write_table(table, spaced_dir / "list.parquet")
    assert [r.path for r in manifest_refs(spaced_dir / "list.parquet")] == [str(spaced_dir / "scans" / "one.dcm")]


@pytest.mark.parametrize(
    ("content", "message"),
    [("a,b\n1,2\n", "no path column"), (b"\xff\xfe\x00garbage", "not a CSV manifest")],
)
def test_manifest_errors_are_one_line(spaced_dir: Path, content: str | bytes, message: str) -> None:
    path = spaced_dir / "bad.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(InputError, match=message):
        list(manifest_refs(path))
    bad = spaced_dir / "bad.parquet"
    bad.write_bytes(b"not parquet")
    with pytest.raises(InputError, match="not a Parquet manifest"):
        list(manifest_refs(bad))


def test_describe_source(spaced_dir: Path) -> None:
    assert describe_source("http://pacs:8042/dicom-web") == "dicomweb"
    assert describe_source(str(spaced_dir)) == "folder"
    assert describe_source(str(_touch(spaced_dir / "m.csv"))) == "manifest"
    with pytest.raises(InputError, match="manifest"):
        describe_source(str(_touch(spaced_dir / "scan.dcm")))
    with pytest.raises(InputError, match="no such folder"):
        describe_source(str(spaced_dir / "nope"))


def test_options_are_checked() -> None:
    base = {"source": "folder", "out": Path("o")}
    with pytest.raises(ConfigError, match="--stow"):
        check_options(BatchOptions(**base, stow=True, kinds=("seg",)))
    with pytest.raises(ConfigError, match="--study-date"):
        check_options(BatchOptions(**base, study_date="20200101-"))
    with pytest.raises(ConfigError, match="needs 'seg'"):
        check_options(BatchOptions(source="http://x/dicom-web", out=Path("o"), stow=True, kinds=("json",)))
    with pytest.raises(ConfigError, match="study date"):
        dicomweb.check_date_range("2020-01-01")
    assert dicomweb.check_date_range("20200101-") == "20200101-"


def test_block_sizes() -> None:
    huge = block_sizes(10_000_000, 8, 4, None)
    assert sum(huge) == 10_000_000 and max(huge) == 1024  # capped: a crash redoes at most one part per worker
    assert block_sizes(160, 1, 4, None) == [20] * 8  # one worker: ~8 equal blocks
    two = block_sizes(160, 2, 4, None)
    assert sum(two) == 160 and two == sorted(two, reverse=True)  # several: guided, shrinking to the end
    assert two[0] == 20 and two[-2:] == [4, 2]  # 1/8 of what is left first, one model batch (or less) last
    assert block_sizes(3, 2, 4, None) == [2, 1]  # every worker gets a block
    assert block_sizes(7, 2, 4, 3) == [3, 3, 1]  # --block-size: that size, the remainder last
    assert block_sizes(0, 2, 4, None) == []


def test_blocks_are_arrow_tables_of_the_chosen_sizes() -> None:
    refs = [ScanRef(key=f"k{i}", kind="file", path=f"/x/{i}.dcm", stem=str(i)) for i in range(7)]
    tables = _blocks(refs, [4, 2, 1])
    assert [t.num_rows for t in tables] == [4, 2, 1]
    back = [ScanRef.from_dict(row) for t in tables for row in t.to_pylist()]
    assert back == refs  # in order, every field kept


def test_worker_threads_split_the_usable_cpus_on_a_local_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("bcedge.cpus.usable_cpus", lambda: 8)
    assert worker_threads(None, 2, None) == 4  # local: the workers share this machine's 8 CPUs
    assert worker_threads(None, 3, None) == 2  # rounded down: never more threads than CPUs
    assert worker_threads(None, 16, None) == 1  # at least one
    assert worker_threads(3, 2, None) == 3  # --threads wins
    assert worker_threads(None, 2, "auto") == 1  # a cluster: each actor holds one Ray CPU


# --------------------------------------------------------------------------- DICOMweb search (a scripted server)


class _FakeQido:
    """Answers like a QIDO-RS server: three studies over two pages, one with a hostile UID."""

    def __init__(self) -> None:
        self.studies = [{"0020000D": {"Value": [f"1.2.{i}"]}} for i in range(3)] + [
            {"0020000D": {"Value": ["../../etc"]}}
        ]
        self.calls: list[tuple[str, dict]] = []

    def search_for_studies(self, search_filters: dict, limit: int, offset: int) -> list[dict]:
        self.calls.append(("studies", {**search_filters, "limit": limit, "offset": offset}))
        return self.studies[offset : offset + limit]

    def search_for_instances(self, study_instance_uid: str, search_filters: dict) -> list[dict]:
        self.calls.append(("instances", {"study": study_instance_uid, **search_filters}))
        sop = {"0020000E": {"Value": [study_instance_uid + ".1"]}, "00080018": {"Value": [study_instance_uid + ".1.1"]}}
        bad = {"0020000E": {"Value": [study_instance_uid + ".1"]}, "00080018": {"Value": ["1.2.x"]}}
        return [sop, sop, bad]


def test_dicomweb_refs_page_by_study_and_refuse_bad_uids() -> None:
    fake = _FakeQido()
    refs = list(dicomweb.dicomweb_refs("http://h/dicom-web/", study_date="20200101-20201231", page_size=2, client=fake))
    assert [r.sop_uid for r in refs] == ["1.2.0.1.1", "1.2.0.1.1", "1.2.1.1.1", "1.2.1.1.1", "1.2.2.1.1", "1.2.2.1.1"]
    assert refs[0].key == "sop:1.2.0.1.1" and refs[0].stem == "1.2.0/1.2.0.1.1"
    assert refs[0].path == "http://h/dicom-web/studies/1.2.0/series/1.2.0.1/instances/1.2.0.1.1"
    pages = [c[1] for c in fake.calls if c[0] == "studies"]
    assert [p["offset"] for p in pages] == [0, 2, 4]  # two full pages, then an empty one
    assert pages[0]["StudyDate"] == "20200101-20201231" and pages[0]["ModalitiesInStudy"] == "MG"
    assert dicomweb.is_uid("1.2.840.10008.1.2") and not dicomweb.is_uid("1.2..3") and not dicomweb.is_uid("9" * 65)


def test_dicomweb_unreachable_server_is_one_line() -> None:
    pytest.importorskip("dicomweb_client", reason="dicomweb-client is not installed")
    from batch_support import free_port

    url = f"http://127.0.0.1:{free_port()}/dicom-web"  # nothing listens there
    with pytest.raises(dicomweb.DicomWebError, match="QIDO-RS study search failed") as info:
        list(dicomweb.dicomweb_refs(url, client=dicomweb.make_client(url, timeout_s=5, attempts=1)))
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- ledger


def _row(key: str, fp: str, status: str = "done") -> dict:
    return {"key": key, "fingerprint": fp, "path": key, "status": status, "finished_at": 0}


def test_ledger_commits_skips_and_cleans(spaced_dir: Path) -> None:
    out = spaced_dir / "out"
    with Ledger(out) as ledger:
        assert ledger.done_keys("f1") == set()
        part = ledger.commit(
            [_row("a", "f1"), _row("b", "f1", "failed")], [{"key": "a", "fingerprint": "f1", "label": 1}]
        )
        ledger.commit([_row("c", "f2")], [])
        assert ledger.done_keys("f1") == {"a", "b"}  # failed is final too
        assert ledger.done_keys("f2") == {"c"}  # another model or threshold: its own keys
        # A second run on the same folder while this one holds the lock is refused.
        with pytest.raises(InputError, match="lock"):
            Ledger(out).open()
    # A crash between the findings rename and the scans rename leaves an orphan findings part,
    # and a kill during a write leaves a temporary: both go when the next run opens the ledger.
    orphan = out / "results" / "findings" / "part-crashed-000001.parquet"
    pq.write_table(pa.table({"key": ["z"]}), orphan)
    tmp = _touch(out / "results" / "scans" / f".{part}.abc.tmp.parquet")
    scans, findings = read_table(out)
    assert sorted(scans.column("key").to_pylist()) == ["a", "b", "c"]
    assert findings.column("key").to_pylist() == ["a"]  # the orphan is not in the table
    with Ledger(out) as again:
        assert not orphan.exists() and not tmp.exists()
        assert again.done_keys("f1") == {"a", "b"}
    assert scans.schema.equals(scan_schema())


def test_fingerprint_changes_with_model_and_settings() -> None:
    base = fingerprint("ab" * 32, 0.5, 4.0)
    assert base == fingerprint("ab" * 32, 0.5, 4.0)
    assert (
        len({base, fingerprint("cd" * 32, 0.5, 4.0), fingerprint("ab" * 32, 0.6, 4.0), fingerprint("ab" * 32, 0.5, 2)})
        == 4
    )


# --------------------------------------------------------------------------- the worker, called directly


def test_worker_rows_done_and_failed(spaced_dir: Path) -> None:
    """The actor's work without Ray: a phantom is done with outputs and findings, a corrupt file is a failed row."""
    from bcedge.batch.worker import ScanWorker
    from bcedge.phantom import generate
    from bcedge.pipeline import default_bundle_path

    src = spaced_dir / "src"
    generate(src, count=1, scale=0.2)
    _touch(src / "images" / "broken.dcm", b"\0" * 128 + b"DICM" + b"\x02\x00")
    refs = list(folder_refs(src / "images"))
    out = spaced_dir / "out"
    run_model = choose_model(default_bundle_path(), "auto", 1, None, None)
    opts = BatchOptions(source=str(src), out=out, kinds=("mask", "json"), batch_size=2)
    options = worker_options(opts, default_bundle_path(), run_model, out)
    worker = ScanWorker(options.to_dict())
    batch = {k: np.array([getattr(r, k) for r in refs]) for k in ScanRef.__dataclass_fields__}
    answer = worker(batch)

    rows = [json.loads(r) for r in answer["row"]]
    assert [r["path"] for r in rows] == [r.path for r in refs]  # one row per ref, in order
    status = {Path(r["path"]).name: r for r in rows}
    failed, done = status["broken.dcm"], status["PH0-0000_L_CC.dcm"]
    assert failed["status"] == "failed" and done["status"] == "done"
    assert failed["error"] and "\n" not in failed["error"] and failed["error_type"]
    assert done["sop_uid"] and done["rows"] > 0 and done["model_sha256"] == worker.seg.artifact.sha256
    assert Path(done["mask_path"]).is_file() and Path(done["json_path"]).is_file()
    assert Path(done["mask_path"]).parent == out  # stem relative to --out
    findings = json.loads(answer["findings"][rows.index(done)])
    assert len(findings) == done["n_findings"]
    assert not list(out.glob("broken*"))  # nothing written for the failed scan


def _batch(refs: list[ScanRef]) -> dict[str, np.ndarray]:
    """The numpy batch Ray Data hands a worker for ``refs``."""
    return {k: np.array([getattr(r, k) for r in refs]) for k in ScanRef.__dataclass_fields__}


def test_workers_run_the_driver_s_artifact_and_never_choose(spaced_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 17: the driver chooses once, at the workers' thread count; a worker runs that artifact and
    makes no choice of its own (at its thread count auto could pick another one)."""
    import bcedge.choice
    from bcedge.batch.worker import ScanWorker
    from bcedge.phantom import generate
    from bcedge.pipeline import Segmenter, default_bundle_path

    bundle = default_bundle_path()
    seen_threads: list[int | None] = []
    real_init = Segmenter.__init__

    def spy(self: Segmenter, *args: object, **kwargs: object) -> None:
        seen_threads.append(kwargs.get("threads"))  # type: ignore[arg-type]
        real_init(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Segmenter, "__init__", spy)
    run_model = choose_model(bundle, "auto", 2, None, None)
    assert seen_threads == [2] and run_model.threads == 2  # the choice was made at the workers' count
    assert run_model.info["artifact"] == run_model.artifact and run_model.info["choice"]
    src = spaced_dir / "src"
    generate(src, count=1, scale=0.2)
    refs = list(folder_refs(src / "images"))
    options = worker_options(
        BatchOptions(source=str(src), out=spaced_dir / "out"), bundle, run_model, spaced_dir / "out"
    )
    assert (options.artifact, options.artifact_sha256, options.backend, options.threads) == (
        run_model.artifact,
        run_model.sha256,
        run_model.backend,
        2,
    )
    assert options.fingerprint == fingerprint(run_model.sha256, run_model.threshold, run_model.min_area_mm2)

    def no_choice(*_a: object, **_k: object) -> None:
        raise AssertionError("a worker made its own --backend auto choice")

    monkeypatch.setattr(bcedge.choice, "ranking_for", no_choice)
    worker = ScanWorker(options.to_dict())
    assert worker.seg is not None and worker.seg.artifact.file == run_model.artifact
    (row,) = [json.loads(r) for r in worker(_batch(refs))["row"]]
    assert row["status"] == "done" and row["model_artifact"] == run_model.artifact
    assert row["model_sha256"] == run_model.sha256 and row["fingerprint"] == options.fingerprint


def test_a_worker_that_cannot_load_the_run_s_artifact_fails_its_scans(spaced_dir: Path) -> None:
    """A worker whose copy of the artifact does not load (tampered here) or differs from the driver's
    fails each scan with the reason; it does not run another artifact of the bundle."""
    import shutil

    from bcedge.batch.worker import ScanWorker
    from bcedge.phantom import generate
    from bcedge.pipeline import default_bundle_path

    bundle = spaced_dir / "bundle copy"
    shutil.copytree(default_bundle_path(), bundle)
    run_model = choose_model(bundle, "auto", 1, None, None)
    src = spaced_dir / "src"
    generate(src, count=2, scale=0.2)
    refs = list(folder_refs(src / "images"))
    out = spaced_dir / "out"
    options = worker_options(BatchOptions(source=str(src), out=out), bundle, run_model, out)

    # The driver's bundle holds another file under the same name (a stale copy on a node).
    other = ScanWorker({**options.to_dict(), "artifact_sha256": "0" * 64})
    assert other.seg is None
    rows = [json.loads(r) for r in other(_batch(refs))["row"]]
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert all("not the run's 000000000000" in r["error"] and "\n" not in r["error"] for r in rows)
    assert {r["model_artifact"] for r in rows} == {run_model.artifact}
    assert {r["model_sha256"] for r in rows} == {run_model.sha256}
    assert {r["fingerprint"] for r in rows} == {options.fingerprint}

    # The artifact does not load on this worker at all.
    path = bundle / run_model.artifact
    path.write_bytes(b"\0" * path.stat().st_size)
    broken = ScanWorker(options.to_dict())
    rows = [json.loads(r) for r in broken(_batch(refs))["row"]]
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert all(r["error"].startswith(f"this worker cannot load the run's artifact {run_model.artifact}") for r in rows)
    assert {r["error_type"] for r in rows} == {"BackendError"} and {r["backend"] for r in rows} == {run_model.backend}
    assert not out.exists() or not any(out.rglob("*_mask.png"))  # nothing written for scans not segmented


def test_run_record_is_written_atomically_under_the_lock(spaced_dir: Path) -> None:
    ledger = Ledger(spaced_dir / "out")
    with pytest.raises(RuntimeError):
        ledger.record_run({"x": 1})
    with ledger:
        path = ledger.record_run({"run_id": ledger.run_id, "model": {"artifact": "a.tflite"}})
    assert path == spaced_dir / "out" / "results" / "runs" / f"{ledger.run_id}.json"
    assert json.loads(path.read_text())["model"]["artifact"] == "a.tflite"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left
    scans, _ = read_table(spaced_dir / "out")  # the record is not a part of the table
    assert scans.num_rows == 0


def test_older_parts_with_fewer_columns_still_read(spaced_dir: Path) -> None:
    """A part written by an older bcedge (no ``node`` column, an extra unknown one) reads with nulls."""
    out = spaced_dir / "out"
    with Ledger(out) as ledger:
        ledger.commit([_row("new", "f")], [])
    old = pa.table({"key": ["old"], "fingerprint": ["f"], "status": ["done"], "gone": [1]})
    pq.write_table(old, out / "results" / "scans" / "part-0-old.parquet")
    scans, _ = read_table(out)
    rows = {r["key"]: r for r in scans.to_pylist()}
    assert rows["old"]["node"] is None and "gone" not in scans.column_names
    assert scans.schema.equals(scan_schema())


def test_wado_answer_larger_than_the_limit_is_refused_before_reading(spaced_dir: Path) -> None:
    """A server that declares a huge instance: refused from its Content-Length, the body is never read."""
    pytest.importorskip("dicomweb_client", reason="dicomweb-client is not installed")
    import http.server
    import threading

    class Huge(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", 'multipart/related; type="application/dicom"; boundary=x')
            self.send_header("Content-Length", str(600 * 1024 * 1024))
            self.end_headers()
            self.wfile.write(b"--x\r\n")  # then nothing: a client that reads the body would hang

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Huge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
        path = f"{url}/studies/1/series/2/instances/1.2.3"
        ref = ScanRef("sop:1.2.3", "dicomweb", path, "1/1.2.3", study_uid="1", series_uid="2", sop_uid="1.2.3")
        client = dicomweb.make_client(url, timeout_s=10, attempts=1)
        with pytest.raises(dicomweb.DicomWebError, match="declares 629145600 bytes; the limit is 1000"):
            dicomweb.fetch_instance(client, ref, spaced_dir / "x.dcm", max_bytes=1000)
        assert not (spaced_dir / "x.dcm").exists()
    finally:
        server.shutdown()


def test_without_ray_the_error_names_the_extra(spaced_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from bcedge.batch.run import run_batch
    from bcedge.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "ray", None)  # "import ray" now raises ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'bcedge\[batch\]'"):
        run_batch(BatchOptions(source=str(spaced_dir), out=spaced_dir / "out"))
