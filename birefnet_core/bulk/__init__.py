"""Bulk cut-outs on Ray Data: ``python -m birefnet_core.bulk --input SRC --output DST``.

The same outputs as ``python -m birefnet_core`` (``<stem>_mask.png``, ``<stem>_cutout.png``),
for folders too big for one process: files are read and decoded by CPU tasks, masked by a pool
of actors that each load the model once (one per GPU on a cluster, CPU actors on a laptop) and
written by CPU tasks, all streamed by Ray Data across a cluster or one machine. A run is
resumable (images whose outputs exist are skipped; every output is written under a temporary
name and renamed), and ``DST/bulk_manifest.csv`` records each image's status, error, size and
time. Ray is optional (``pip install "ray[data]"``) and imported only when a run starts.

    sources.py   what SRC holds (folder, glob, list of paths; local or s3://, gs://, ...)
    stages.py    decode, the model actor, write (plain functions of column batches)
    manifest.py  the per-image CSV record
    pipeline.py  ``run``: the Ray Data pipeline and the summary
    command.py   the command line
"""
from .pipeline import BulkError, BulkSummary, run

__all__ = ["BulkError", "BulkSummary", "run"]
