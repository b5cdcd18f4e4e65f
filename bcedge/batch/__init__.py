"""``bcedge batch``: a whole archive through the runtime pipeline on Ray Data, resumable and exactly-once.

Modules, one idea each:

- :mod:`bcedge.batch.sources`: what to process: a folder tree, a manifest (CSV/Parquet of paths) or a
  DICOMweb server, enumerated as :class:`~bcedge.batch.sources.ScanRef` with a stable key.
- :mod:`bcedge.batch.dicomweb`: QIDO-RS search, WADO-RS retrieval and STOW-RS of SEGs (dicomweb-client).
- :mod:`bcedge.batch.table`: the results table's schema and rows (one per scan, one per finding).
- :mod:`bcedge.batch.ledger`: the table on disk as atomically committed Parquet parts; what is done.
- :mod:`bcedge.batch.worker`: the Ray actor that opens the bundle once and segments batches of scans.
- :mod:`bcedge.batch.run`: the Ray Data pipeline, the commit loop, progress and summary.

Ray, pyarrow and dicomweb-client are the ``bcedge[batch]`` extra; nothing here imports them at load time.
"""
