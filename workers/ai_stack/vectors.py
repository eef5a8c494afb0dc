"""The vector store: named collections of (id, vector, metadata) points in one SQLite file, searched by
cosine similarity in numpy.

A collection is made by its first upsert and takes that upsert's dimensions; later vectors must match.
Vectors are stored as float32 blobs. A query loads the collection into one row-normalised matrix, kept
in memory until the next write to that collection, so a query is a single matrix-vector product plus a
partial sort: brute force, exact, and fast enough for the collection sizes of one AutoBot site (100,000
points of 384 dimensions are 150 MB and about 20 ms per query on one core).
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_ID_LENGTH = 256

SCHEMA = """
CREATE TABLE IF NOT EXISTS collections (
    name TEXT PRIMARY KEY,
    dimensions INTEGER NOT NULL CHECK (dimensions > 0),
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS points (
    collection TEXT NOT NULL REFERENCES collections (name) ON DELETE CASCADE,
    id TEXT NOT NULL,
    vector BLOB NOT NULL,
    metadata TEXT NOT NULL,
    PRIMARY KEY (collection, id)
) WITHOUT ROWID;
"""


class StoreError(Exception):
    """A request the store refuses; ``code`` names the reason, the message explains it."""

    code = "bad_request"

    def __init__(self, message: str, *, field_name: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.field_name = field_name


class CollectionNotFound(StoreError):
    code = "collection_not_found"


class DimensionMismatch(StoreError):
    code = "dimension_mismatch"


@dataclass(frozen=True)
class Match:
    id: str
    score: float
    metadata: dict[str, Any] | None


@dataclass(frozen=True)
class _Matrix:
    """A collection as searched: its ids and their unit-length vectors, row for row."""

    ids: list[str]
    vectors: np.ndarray


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise StoreError(
            "a collection name is 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit",
            field_name="collection",
        )
    return name


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


class VectorStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # One connection for every thread, serialised by the lock (SQLite writes are serial anyway).
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._matrices: dict[str, _Matrix] = {}
        with self._lock:
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._db.execute("PRAGMA foreign_keys = ON")
            self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- reads --------------------------------------------------------------------------------------------

    def ping(self) -> int:
        """The number of collections (and proof that the file can be read)."""
        with self._lock:
            return self._db.execute("SELECT count(*) FROM collections").fetchone()[0]

    def collection_list(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT c.name, c.dimensions, c.created_at, count(p.id) FROM collections c "
                "LEFT JOIN points p ON p.collection = c.name GROUP BY c.name ORDER BY c.name"
            ).fetchall()
        return [
            {"name": name, "dimensions": dimensions, "created_at": created_at, "count": count}
            for name, dimensions, created_at, count in rows
        ]

    def collection_get(self, name: str) -> dict[str, Any]:
        check_name(name)
        with self._lock:
            dimensions, created_at = self._dimensions(name, with_created=True)
            (count,) = self._db.execute(
                "SELECT count(*) FROM points WHERE collection = ?", (name,)
            ).fetchone()
        return {"name": name, "dimensions": dimensions, "created_at": created_at, "count": count}

    def query(self, name: str, vector: np.ndarray, *, top_k: int, with_metadata: bool = True) -> list[Match]:
        """The ``top_k`` points nearest to ``vector`` by cosine similarity, best first."""
        check_name(name)
        with self._lock:
            dimensions = self._dimensions(name)
            if vector.shape != (dimensions,):
                raise DimensionMismatch(
                    f"the collection has {dimensions} dimensions, the vector {vector.size}",
                    field_name="vector",
                )
            matrix = self._matrices.get(name) or self._load(name, dimensions)
        if not matrix.ids:
            return []
        scores = matrix.vectors @ (vector / np.linalg.norm(vector)).astype(np.float32)
        count = min(top_k, len(matrix.ids))
        nearest = np.argpartition(-scores, count - 1)[:count]
        nearest = nearest[np.argsort(-scores[nearest], kind="stable")]
        ids = [matrix.ids[index] for index in nearest]
        metadata: dict[str, dict[str, Any]] = {}
        if with_metadata:
            with self._lock:
                placeholders = ",".join("?" * len(ids))
                metadata = {
                    point_id: json.loads(text)
                    for point_id, text in self._db.execute(
                        f"SELECT id, metadata FROM points WHERE collection = ? AND id IN ({placeholders})",  # noqa: S608 - placeholders only
                        (name, *ids),
                    )
                }
        return [
            Match(point_id, float(scores[index]), metadata.get(point_id) if with_metadata else None)
            for point_id, index in zip(ids, nearest, strict=True)
        ]

    # --- writes -------------------------------------------------------------------------------------------

    def upsert(
        self, name: str, ids: Sequence[str], vectors: np.ndarray, metadata: Sequence[dict[str, Any]]
    ) -> int:
        """Insert or replace the points; the collection is made by its first upsert. Returns its size."""
        check_name(name)
        rows = [
            (name, point_id, vector.astype("<f4").tobytes(), json.dumps(meta, separators=(",", ":")))
            for point_id, vector, meta in zip(ids, vectors, metadata, strict=True)
        ]
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    dimensions = self._dimensions(name)
                except CollectionNotFound:
                    dimensions = vectors.shape[1]
                    self._db.execute(
                        "INSERT INTO collections (name, dimensions, created_at) VALUES (?, ?, ?)",
                        (name, dimensions, datetime.now(UTC).isoformat(timespec="seconds")),
                    )
                if vectors.shape[1] != dimensions:
                    raise DimensionMismatch(
                        f"the collection has {dimensions} dimensions, the vectors {vectors.shape[1]}",
                        field_name="vectors",
                    )
                self._db.executemany(
                    "INSERT INTO points (collection, id, vector, metadata) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (collection, id) DO UPDATE "
                    "SET vector = excluded.vector, metadata = excluded.metadata",
                    rows,
                )
                (count,) = self._db.execute(
                    "SELECT count(*) FROM points WHERE collection = ?", (name,)
                ).fetchone()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            finally:
                self._matrices.pop(name, None)
        return count

    def delete(self, name: str, ids: Sequence[str]) -> int:
        """Delete the points with these ids (unknown ids are ignored); returns how many were deleted."""
        check_name(name)
        with self._lock:
            self._dimensions(name)
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cursor = self._db.executemany(
                    "DELETE FROM points WHERE collection = ? AND id = ?",
                    [(name, point_id) for point_id in ids],
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            finally:
                self._matrices.pop(name, None)
            return cursor.rowcount

    def collection_delete(self, name: str) -> int:
        """Drop the collection and its points; returns how many points it had."""
        check_name(name)
        with self._lock:
            self._dimensions(name)
            (count,) = self._db.execute(
                "SELECT count(*) FROM points WHERE collection = ?", (name,)
            ).fetchone()
            self._db.execute("DELETE FROM collections WHERE name = ?", (name,))
            self._matrices.pop(name, None)
        return count

    # --- internals (under the lock) -----------------------------------------------------------------------

    def _dimensions(self, name: str, *, with_created: bool = False) -> Any:
        row = self._db.execute(
            "SELECT dimensions, created_at FROM collections WHERE name = ?", (name,)
        ).fetchone()
        if row is None:
            raise CollectionNotFound(f"no collection {name!r}", field_name="collection")
        return tuple(row) if with_created else row[0]

    def _load(self, name: str, dimensions: int) -> _Matrix:
        rows = self._db.execute(
            "SELECT id, vector FROM points WHERE collection = ? ORDER BY id", (name,)
        ).fetchall()
        vectors = np.frombuffer(b"".join(blob for _, blob in rows), dtype="<f4").reshape(
            len(rows), dimensions
        )
        matrix = _Matrix([point_id for point_id, _ in rows], unit_rows(vectors.astype(np.float32)))
        self._matrices[name] = matrix
        return matrix
