"""``bcedge serve`` end to end: the CLI, the real Segmenter and DICOM SEG writer, dcmtk on both sides.

A scan sent with storescu comes out at storescp (the fake PACS) as a DICOM SEG that references
it; the same scan sent again gives a SEG with the same SOP Instance UID (PACS deduplicates).
"""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from serve_support import (
    SEGMENTATION_STORAGE,
    Storescp,
    acknowledged,
    config_text,
    free_port,
    have_dcmtk,
    port_open,
    referenced_source,
    storescu,
    wait_for,
)

from bcedge.cli import main

REPO = Path(__file__).resolve().parent.parent
SCAN = REPO / "bcedge" / "examples" / "phantom_lcc.dcm"
BUNDLES = (REPO / "bcedge" / "demo_model", REPO / "models" / "unet-mobilenetv2-combined256")


def _bundle() -> Path:
    for bundle in BUNDLES:
        if (bundle / "manifest.json").is_file():
            return bundle
    pytest.skip("no model bundle in this checkout (bcedge/demo_model or models/unet-mobilenetv2-combined256)")


@pytest.mark.skipif(not have_dcmtk(), reason="dcmtk (echoscu, storescu, storescp) is not installed")
@pytest.mark.skipif(importlib.util.find_spec("highdicom") is None, reason="highdicom (bcedge[seg]) is not installed")
def test_bcedge_serve_cli_scan_in_seg_out(spaced_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = _bundle()
    pacs = Storescp(spaced_dir / "pacs", free_port()).start()
    port = free_port()
    config = spaced_dir / "serve.toml"
    config.write_text(
        config_text(spaced_dir / "node", port, pacs.port, model={"bundle": str(bundle), "outputs": ["seg", "json"]})
    )
    log = spaced_dir / "node.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bcedge", "serve", "--config", str(config)], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        # two worker processes load the model before the port opens: slow on a loaded machine
        wait_for(lambda: port_open(port) or proc.poll() is not None, what="bcedge serve to listen", timeout=240)
        assert proc.poll() is None, log.read_text()[-2000:]
        assert main(["serve", "status", "--config", str(config)]) == 0
        capsys.readouterr()
        source_uid = str(pydicom.dcmread(SCAN, stop_before_pixels=True).SOPInstanceUID)
        sent = storescu(port, [SCAN])
        assert acknowledged(sent.stdout + sent.stderr) == [str(SCAN)], sent.stdout + sent.stderr
        done_dir = spaced_dir / "node" / "done"
        # an item reaches done/ only after PACS answered success, i.e. after storescp wrote the file
        wait_for(lambda: done_dir.is_dir() and len(list(done_dir.iterdir())) == 1, what="delivery", timeout=60)
        (first,) = sorted(pacs.folder.iterdir())
        seg = pydicom.dcmread(first)
        assert seg.SOPClassUID == SEGMENTATION_STORAGE and seg.Modality == "SEG"
        assert referenced_source(first) == source_uid
        assert seg.StudyInstanceUID == pydicom.dcmread(SCAN, stop_before_pixels=True).StudyInstanceUID
        # the same scan again (a modality retry): a second SEG with the same SOP Instance UID
        storescu(port, [SCAN])
        wait_for(lambda: len(list(done_dir.iterdir())) == 2, what="the second delivery", timeout=60)
        both = sorted(pacs.folder.iterdir())
        assert len(both) == 2
        assert {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in both} == {seg.SOPInstanceUID}
        done = sorted(done_dir.iterdir())
        item = json.loads((done[0] / "item.json").read_text())
        assert item["seg_sop_instance_uid"] == seg.SOPInstanceUID and "json" in item["outputs"]
        findings = json.loads((done[0] / item["outputs"]["json"]).read_text())
        assert "findings" in findings
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        pacs.stop()
    assert proc.returncode == 0, log.read_text()[-2000:]
    text = log.read_text()
    assert "delivered" in text and "Phantom" not in text  # the scan's PatientName is Phantom^Synthetic
