"""Snapshot of N1's datastore: range split, export to chunks, parallel load, verify + repair."""

from snapshot.chunks import Chunk, CorruptChunk, IncompleteStream, encode, encode_manifest, read_chunks
from snapshot.export import export_chunks, plan_ids
from snapshot.load import CheckpointStore, Loader, LoadStats, copy_app
from snapshot.verify import Difference, VerifyReport, verify_app

__all__ = [
    "CheckpointStore", "Chunk", "CorruptChunk", "Difference", "IncompleteStream", "LoadStats", "Loader",
    "VerifyReport", "copy_app", "encode", "encode_manifest", "export_chunks", "plan_ids", "read_chunks", "verify_app",
]
