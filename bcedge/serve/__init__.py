"""``bcedge serve``: a DICOM Storage SCP that segments mammograms and sends DICOM SEG to PACS.

One scan's way through the node (every arrow is a durable, atomic step)::

    C-STORE ─▶ spool/<seq>_<h>.dcm ─▶ worker: Segmenter + SEG ─▶ outbox/<seq>_<h>/ ─▶ C-STORE to PACS ─▶ done/<seq>_<h>/
                                         └─ bad input ─▶ quarantine/<seq>_<h>/ (reason.txt)

Modules, each small and named for what it does: :mod:`~bcedge.serve.config` (the TOML file),
:mod:`~bcedge.serve.fsutil` (fsync'd atomic writes and moves), :mod:`~bcedge.serve.spool`
(folder layout, arrival order, recovery after a crash), :mod:`~bcedge.serve.scp` (the
pynetdicom acceptor), :mod:`~bcedge.serve.worker` (spool -> outbox),
:mod:`~bcedge.serve.processing` (the real Segmenter step), :mod:`~bcedge.serve.sender`
(outbox -> PACS with retries), :mod:`~bcedge.serve.state` (counters and the status file),
:mod:`~bcedge.serve.tls` and :mod:`~bcedge.serve.node` (wires it all and runs it).

Importing this package imports neither pynetdicom nor a model runtime; :mod:`~bcedge.serve.node`
imports them when the node starts.
"""
