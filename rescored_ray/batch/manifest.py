"""The run's Parquet manifest: one row per entry, written as entries finish.

Finished rows are appended as small part files (``_manifest/parts/*.parquet``)
every few entries, so a run that crashes keeps what it finished; at the end the
parts and the previous manifest are folded into ``manifest.parquet`` (the latest
row of each entry wins) and the parts are removed. A re-run reads the same files
to learn which entries are already done.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Iterable
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq

from rescored_ray import layout
from rescored_ray.storage import ResultStore

log = logging.getLogger(__name__)

MANIFEST = "manifest.parquet"
PARTS = "_manifest/parts"
STAGE_SECONDS = ("download", "decode", "separation", "transcription", "notation", "outputs")

COMPLETED, FAILED, SKIPPED = "completed", "failed", "skipped"
DONE = {COMPLETED, SKIPPED}
"""An entry in either state has its score in the output; a re-run leaves it alone."""


def output_column(row: layout.Output) -> str:
    """The manifest column of an output kind: its URL (``musicxml``), or the URLs of a
    multi-file kind (``stems`` -> ``stem_files``)."""
    return f"{row.kind.removesuffix('s')}_files" if row.multi else row.kind


OUTPUT_COLUMNS = {row.kind: output_column(row) for row in layout.LAYOUT}
"""Every output kind's column: adding an output to the layout adds its column here."""

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("url", pa.string()),
        ("title", pa.string()),
        ("input", pa.string()),
        ("index", pa.int64()),
        ("duration_s", pa.float64()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("retryable", pa.bool_()),
        ("stage", pa.string()),
        ("attempts", pa.int64()),
        ("n_notes", pa.int64()),
        ("key", pa.string()),
        ("tempo_bpm", pa.float64()),
        ("time_signature", pa.string()),
        ("pickup_ql", pa.float64()),
        ("separation_model", pa.string()),
        ("separation_precision", pa.string()),
        ("stems", pa.list_(pa.string())),
        *[(f"{stage}_s", pa.float64()) for stage in STAGE_SECONDS],
        *[(output_column(row), pa.list_(pa.string()) if row.multi else pa.string()) for row in layout.LAYOUT],
        ("separation_worker", pa.string()),
        ("transcription_worker", pa.string()),
        ("run_id", pa.string()),
        ("finished_at", pa.timestamp("ms", tz="UTC")),
    ]
)
COLUMNS = tuple(SCHEMA.names)


def normalise(row: dict) -> dict:
    """``row`` with exactly the manifest's columns (missing ones null)."""
    out = {name: _null_if_nan(row.get(name)) for name in COLUMNS}
    if out["finished_at"] is None:
        out["finished_at"] = datetime.now(UTC)
    return out


def _null_if_nan(value):
    """Ray Data turns missing values of some columns into NaN on the way; the manifest says null."""
    return None if isinstance(value, float) and math.isnan(value) else value


def to_table(rows: Iterable[dict]) -> pa.Table:
    return pa.Table.from_pylist([normalise(row) for row in rows], schema=SCHEMA)


class Manifest:
    """Reads and writes the manifest of one output location."""

    def __init__(self, store: ResultStore, run_id: str):
        self.store = store
        self.run_id = run_id
        self._parts = 0
        self.unreadable: list[str] = []
        """Files :meth:`load` could not read: parts a crash cut short (tolerated, counted)."""

    # -- reading --------------------------------------------------------------------------
    def load(self) -> dict[str, dict]:
        """Latest row of every entry, from the manifest and any parts a crashed run left."""
        latest: dict[str, dict] = {}
        self.unreadable = []
        keys = ([MANIFEST] if self.store.exists(MANIFEST) else []) + self.store.list_files(PARTS)
        for key in keys:
            try:
                table = pq.read_table(io.BytesIO(self.store.read_bytes(key)))
            except Exception as exc:  # a part cut short by a crash: its entries simply run again
                log.warning("ignoring unreadable manifest file %s: %s", key, exc)
                self.unreadable.append(key)
                continue
            for row in table.to_pylist():
                previous = latest.get(row["id"])
                if previous is None or _stamp(row) >= _stamp(previous):
                    latest[row["id"]] = {name: row.get(name) for name in COLUMNS}
        return latest

    def done(self, rows: dict[str, dict]) -> dict[str, dict]:
        """The entries whose score is really there (a deleted folder runs again)."""
        return {
            entry_id: row
            for entry_id, row in rows.items()
            if row["status"] in DONE and self.store.exists(f"{entry_id}/{layout.file('musicxml')}")
        }

    # -- writing --------------------------------------------------------------------------
    def append(self, rows: list[dict]) -> str | None:
        """Write ``rows`` as one part file now (crash safety); returns its key."""
        if not rows:
            return None
        self._parts += 1
        key = f"{PARTS}/{self.run_id}-{self._parts:05d}.parquet"
        self.store.put_bytes(_parquet_bytes(to_table(rows)), key)
        return key

    def consolidate(self) -> pa.Table:
        """Fold every part into ``manifest.parquet`` (in entry order), then drop the parts."""
        parts = self.store.list_files(PARTS)
        rows = sorted(self.load().values(), key=lambda row: (row.get("index") or 0, row["id"]))
        table = to_table(rows)
        self.store.put_bytes(_parquet_bytes(table), MANIFEST)
        for key in parts:
            self.store.delete(key)
        return table


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def _stamp(row: dict) -> float:
    value = row.get("finished_at")
    return value.timestamp() if isinstance(value, datetime) else 0.0
