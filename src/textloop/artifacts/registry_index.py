"""The registry's index: a SQLite file of versions, stages, file hashes and an audit log, and
the read queries over it (``textloop.artifacts.registry`` makes the changes)."""

from __future__ import annotations

import getpass
import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from textloop.errors import RegistryError

DB_FILE = "registry.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    stage TEXT NOT NULL,
    source TEXT NOT NULL,
    created_at TEXT NOT NULL,
    config_hash TEXT NOT NULL,
    metrics TEXT NOT NULL,
    files TEXT NOT NULL,
    format TEXT NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    from_stage TEXT,
    to_stage TEXT,
    reason TEXT NOT NULL
);
"""


@dataclass
class ModelVersion:
    """One registered version of a model."""

    name: str
    version: int
    stage: str
    source: str
    created_at: str
    config_hash: str
    metrics: dict[str, Any]
    files: dict[str, str]
    format: str
    path: Path

    def summary(self) -> dict[str, Any]:
        """A JSON-able view (without the per-file hashes)."""
        return {
            "name": self.name,
            "version": self.version,
            "stage": self.stage,
            "format": self.format,
            "source": self.source,
            "created_at": self.created_at,
            "config_hash": self.config_hash,
            "path": str(self.path),
            "n_files": len(self.files),
            "metrics": self.metrics,
        }


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def actor_name(actor: str | None) -> str:
    if actor:
        return actor
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


class RegistryIndex:
    """The registry's SQLite index: the connection, the audit rows and the read queries.
    ``Registry`` adds the changes (add, promote, roll back) and the integrity checks.

    Args:
        root: the registry directory (created on first use).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(_SCHEMA)

    # ---- storage -------------------------------------------------------------------------
    @contextmanager
    def _connect(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.root / DB_FILE, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            if write:
                db.execute("BEGIN IMMEDIATE")  # one writer at a time: version numbers stay unique
            yield db
            if write:
                db.execute("COMMIT")
        except BaseException:
            if write and db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    def _row_to_version(self, row: sqlite3.Row) -> ModelVersion:
        return ModelVersion(
            name=row["name"],
            version=row["version"],
            stage=row["stage"],
            source=row["source"],
            created_at=row["created_at"],
            config_hash=row["config_hash"],
            metrics=json.loads(row["metrics"]),
            files=json.loads(row["files"]),
            format=row["format"],
            path=self.root / "models" / row["name"] / str(row["version"]),
        )

    @staticmethod
    def _audit(
        db: sqlite3.Connection,
        actor: str,
        action: str,
        name: str,
        version: int,
        from_stage: str | None,
        to_stage: str | None,
        reason: str,
    ) -> None:
        db.execute(
            "INSERT INTO audit (at, actor, action, name, version, from_stage, to_stage, reason)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (now(), actor, action, name, version, from_stage, to_stage, reason),
        )

    # ---- queries -------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Registered model names, sorted."""
        with self._connect() as db:
            return [r[0] for r in db.execute("SELECT DISTINCT name FROM versions ORDER BY name")]

    def versions(self, name: str | None = None) -> list[ModelVersion]:
        """All versions (of one name), oldest first."""
        query = "SELECT * FROM versions" + (" WHERE name = ?" if name else "")
        with self._connect() as db:
            rows = db.execute(query + " ORDER BY name, version", (name,) if name else ()).fetchall()
        return [self._row_to_version(r) for r in rows]

    def get(self, name: str, version: int) -> ModelVersion:
        """One version.

        Raises:
            RegistryError: unknown name or version (the known ones are listed).
        """
        with self._connect() as db:
            row = db.execute(
                "SELECT * FROM versions WHERE name = ? AND version = ?", (name, version)
            ).fetchone()
        if row is None:
            raise self._unknown(name, version)
        return self._row_to_version(row)

    def production(self, name: str) -> ModelVersion | None:
        """The production version of ``name``, or None when none is promoted."""
        with self._connect() as db:
            row = db.execute(
                "SELECT * FROM versions WHERE name = ? AND stage = 'production'", (name,)
            ).fetchone()
        return self._row_to_version(row) if row else None

    def production_version(self, name: str) -> int | None:
        """Just the production version number: a cheap query for a server polling for swaps."""
        with self._connect() as db:
            row = db.execute(
                "SELECT version FROM versions WHERE name = ? AND stage = 'production'", (name,)
            ).fetchone()
        return int(row[0]) if row else None

    def audit_log(self, name: str | None = None) -> list[dict[str, Any]]:
        """Every recorded change (of one name), oldest first."""
        query = "SELECT * FROM audit" + (" WHERE name = ?" if name else "") + " ORDER BY id"
        with self._connect() as db:
            return [dict(r) for r in db.execute(query, (name,) if name else ())]

    def _unknown(self, name: str, version: int | None = None) -> RegistryError:
        known = self.versions(name)
        if not known:
            names = self.names()
            listed = ", ".join(names) if names else "none yet"
            return RegistryError(
                f"no model named {name!r} in registry {self.root}; registered: {listed} "
                "(add one with `textloop registry add RUN --name NAME`)"
            )
        versions = ", ".join(str(v.version) for v in known)
        return RegistryError(f"{name!r} has no version {version}; versions: {versions}")
