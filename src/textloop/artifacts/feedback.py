"""The traffic and feedback store: SQLite in WAL mode beside the registry.

Two tables: ``predictions`` (one row per served prediction: id, time, model name and version,
a sha256 of the text, the predicted label and its confidence, and the text itself only when the
server is told to keep it) and ``feedback`` (a labelled text, tied to a prediction id when the
client sends one, with who gave it when the labelling page or an import knows). Feedback is an
acknowledged write: ``add_feedback`` (and ``delete_feedback``, an undo) returns only after the
transaction is committed with ``synchronous=FULL``, so a crash of the process (or the machine)
right after it returns loses nothing. Prediction logs are written in batches by a background
thread with ``synchronous=NORMAL`` (WAL: safe against a process crash, the last batch may be
lost to a power cut): logging must not add an fsync to every request.

Example:
    >>> store = FeedbackStore("registry/feedback.sqlite")
    >>> ids = store.log_predictions("reviews", 3, ["great phone"], [{"label": "pos", "score": 0.9}])
    >>> store.add_feedback("reviews", "pos", prediction_id=ids[0])
    >>> store.export_feedback("reviews", "corpus/feedback/feedback.jsonl")
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textloop.artifacts.label_check import MAX_LABEL_CHARS, check_label, text_hash
from textloop.data.visible import has_visible_text
from textloop.errors import DataError
from textloop.fileio import atomic_file, make_parent_dirs

log = logging.getLogger(__name__)

STORE_FILE = "feedback.sqlite"
__all__ = ["MAX_LABEL_CHARS", "FeedbackStore", "Prediction", "check_label", "text_hash"]
_SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    id TEXT PRIMARY KEY,
    at REAL NOT NULL,
    model TEXT NOT NULL,
    version INTEGER NOT NULL,
    text_hash TEXT NOT NULL,
    text TEXT,
    label TEXT,
    confidence REAL
);
CREATE INDEX IF NOT EXISTS predictions_model_at ON predictions (model, at);
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    model TEXT NOT NULL,
    prediction_id TEXT,
    text TEXT NOT NULL,
    text_hash TEXT NOT NULL,
    label TEXT NOT NULL,
    predicted_label TEXT,
    user TEXT
);
CREATE INDEX IF NOT EXISTS feedback_model_at ON feedback (model, at);
"""


@dataclass
class Prediction:
    """One logged prediction."""

    id: str
    at: float
    model: str
    version: int
    text_hash: str
    text: str | None
    label: str | None
    confidence: float | None


class FeedbackStore:
    """Traffic log and labelled feedback of served models, in one SQLite file.

    Args:
        path: the database file (created with its tables on first use), or a registry
            directory (any path without a suffix), meaning ``<dir>/feedback.sqlite``.
        keep_text: store the text of each logged prediction (needed for input drift); when
            off only its sha256 is kept.
    """

    def __init__(self, path: str | Path, keep_text: bool = False) -> None:
        p = Path(path)
        self.path = p / STORE_FILE if p.is_dir() or not p.suffix else p
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.keep_text = keep_text
        with self._connect(synchronous="FULL") as db:
            db.execute("PRAGMA journal_mode=WAL")  # persistent: readers never block the writer
            db.executescript(_SCHEMA)
            columns = {r["name"] for r in db.execute("PRAGMA table_info(feedback)")}
            if "user" not in columns:  # a store from before labels recorded who gave them
                try:
                    db.execute("ALTER TABLE feedback ADD COLUMN user TEXT")
                except sqlite3.OperationalError as exc:  # another process added it just now
                    if "duplicate column" not in str(exc):
                        raise
        self._queue: queue.Queue[tuple[Any, ...] | None] | None = None
        self._writer: threading.Thread | None = None

    @contextmanager
    def _connect(self, synchronous: str = "FULL") -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            db.execute(f"PRAGMA synchronous={synchronous}")
            yield db
        finally:
            db.close()

    # ---- predictions ---------------------------------------------------------------------
    def log_predictions(
        self,
        model: str,
        version: int,
        texts: Sequence[str],
        predictions: Sequence[dict[str, Any]],
        wait: bool = False,
    ) -> list[str]:
        """Log served predictions; returns one new prediction id per text.

        The rows are handed to a background writer (started on first use) unless ``wait``, in
        which case they are committed before this returns.
        """
        now = time.time()
        rows = []
        ids = []
        for text, pred in zip(texts, predictions):
            pid = uuid.uuid4().hex
            ids.append(pid)
            label = pred.get("label")
            score = pred.get("score")
            rows.append(
                (
                    pid,
                    now,
                    model,
                    int(version),
                    text_hash(text),
                    text if self.keep_text else None,
                    None if label is None else str(label),
                    None if score is None else float(score),
                )
            )
        if wait:
            self._insert_predictions(rows, "FULL")
        else:
            self._start_writer()
            assert self._queue is not None
            for row in rows:
                self._queue.put(row)
        return ids

    def _insert_predictions(self, rows: list[tuple[Any, ...]], synchronous: str) -> None:
        with self._connect(synchronous) as db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT INTO predictions VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            db.execute("COMMIT")

    def _start_writer(self) -> None:
        if self._writer is not None and self._writer.is_alive():
            return
        self._queue = queue.Queue()
        self._writer = threading.Thread(target=self._write_loop, name="textloop-log", daemon=True)
        self._writer.start()

    def _write_loop(self) -> None:
        assert self._queue is not None
        q = self._queue
        while True:
            first = q.get()
            if first is None:
                return
            rows, stop = [first], False
            deadline = time.monotonic() + 0.05  # gather up to 50 ms of traffic per transaction
            while len(rows) < 512:
                try:
                    item = q.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                rows.append(item)
            try:
                self._insert_predictions(rows, "NORMAL")
            except sqlite3.Error:  # logging must never take the server down
                log.exception("could not log %d predictions to %s", len(rows), self.path)
            if stop:
                return

    def flush(self) -> None:
        """Write every queued prediction and stop the background writer (restarts on demand)."""
        if self._writer is not None and self._queue is not None:
            self._queue.put(None)
            self._writer.join()
        self._writer, self._queue = None, None

    def close(self) -> None:
        """Flush queued predictions."""
        self.flush()

    def get_prediction(self, prediction_id: str) -> Prediction | None:
        """A logged prediction by id (None if unknown or still queued)."""
        with self._connect() as db:
            row = db.execute("SELECT * FROM predictions WHERE id = ?", (prediction_id,)).fetchone()
        return Prediction(**dict(row)) if row else None

    def predictions(
        self,
        model: str,
        since: float | None = None,
        until: float | None = None,
        limit: int | None = None,
    ) -> list[Prediction]:
        """Logged predictions of ``model`` in a time window [since, until), newest last."""
        where = "FROM predictions WHERE model = ? AND at >= ? AND at < ?"
        args: list[Any] = [model, since or 0.0, until or float("inf")]
        query = f"SELECT * {where} ORDER BY at"
        if limit:  # the most recent ``limit`` rows of the window
            query = f"SELECT * FROM (SELECT * {where} ORDER BY at DESC LIMIT ?) ORDER BY at"
            args.append(limit)
        with self._connect() as db:
            rows = db.execute(query, args).fetchall()
        return [Prediction(**dict(r)) for r in rows]

    # ---- feedback ------------------------------------------------------------------------
    def add_feedback(
        self,
        model: str,
        label: str,
        text: str | None = None,
        prediction_id: str | None = None,
        user: str | None = None,
        predicted_label: str | None = None,
    ) -> int:
        """Record a labelled example; durable (committed with fsync) when this returns.

        The text may be left out when ``prediction_id`` names a prediction logged with its text.
        ``user`` says who gave the label; ``predicted_label`` what the model suggested (taken
        from the logged prediction when ``prediction_id`` is given).

        Returns:
            The feedback row id.

        Raises:
            DataError: an invalid label (``check_label``), an unknown prediction id, or no
                text (nothing visible) to label.
        """
        label = check_label(label)
        predicted = predicted_label
        if prediction_id is not None:
            pred = self.get_prediction(prediction_id)
            if pred is None and self._writer is not None:
                self.flush()  # the id may still sit in the write queue
                pred = self.get_prediction(prediction_id)
            if pred is None:
                raise DataError(
                    f"feedback: unknown prediction_id {prediction_id!r}; send an id returned by "
                    "/v1/predict, or leave it out"
                )
            if pred.model != model:
                raise DataError(
                    f"feedback: prediction {prediction_id!r} was made by model {pred.model!r}, "
                    f"not {model!r}"
                )
            predicted = pred.label
            if text is None:
                text = pred.text
            elif text_hash(text) != pred.text_hash:
                raise DataError(
                    f"feedback: the text differs from the one prediction {prediction_id!r} was "
                    "made for; send the same text or leave prediction_id out"
                )
        if text is None or not has_visible_text(text):
            raise DataError(
                "feedback: no text; send 'text' (the server keeps texts only when started "
                "with --log-text)"
            )
        with self._connect(synchronous="FULL") as db:
            db.execute("BEGIN IMMEDIATE")
            cur = db.execute(
                "INSERT INTO feedback (at, model, prediction_id, text, text_hash, label, "
                "predicted_label, user) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    time.time(),
                    model,
                    prediction_id,
                    text,
                    text_hash(text),
                    label,
                    predicted,
                    user,
                ),
            )
            db.execute("COMMIT")
            return int(cur.lastrowid or 0)

    def delete_feedback(self, model: str, feedback_id: int) -> bool:
        """Take back one of ``model``'s labels (an undo); durable when this returns.

        Returns:
            Whether a row was deleted (False: no such row for ``model``).
        """
        with self._connect(synchronous="FULL") as db:
            db.execute("BEGIN IMMEDIATE")
            cur = db.execute(
                "DELETE FROM feedback WHERE id = ? AND model = ?", (int(feedback_id), model)
            )
            db.execute("COMMIT")
            return cur.rowcount > 0

    def feedback(self, model: str, since: float | None = None) -> list[dict[str, Any]]:
        """Feedback rows of ``model`` (oldest first), as dicts."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT * FROM feedback WHERE model = ? AND at >= ? ORDER BY id",
                (model, since or 0.0),
            ).fetchall()
        return [dict(r) for r in rows]

    @staticmethod
    def _exportable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Rows whose label and text pass today's checks (older stores may hold others)."""
        kept = []
        for r in rows:
            try:
                check_label(r["label"])
            except DataError as exc:
                log.warning("feedback row %s not exported: %s", r["id"], exc)
                continue
            if r["text"] is None or not has_visible_text(r["text"]):
                log.warning("feedback row %s not exported: no visible text", r["id"])
                continue
            kept.append(r)
        if rows and not kept:
            raise DataError("no exportable feedback: every row has an invalid label or no text")
        return kept

    def export_feedback(
        self, model: str, output: str | Path, since: float | None = None, dedupe: bool = True
    ) -> int:
        """Write ``model``'s feedback as a labelled JSONL dataset (text, label) for ``update``.

        With ``dedupe`` the latest label of each distinct text wins. Written to a temp file and
        renamed. Returns the number of rows written.

        Raises:
            DataError: there is no feedback for ``model``.
        """
        rows = self.feedback(model, since)
        if not rows:
            raise DataError(f"no feedback for model {model!r} in {self.path}")
        rows = self._exportable(rows)
        if dedupe:
            latest = {r["text_hash"]: r for r in rows}
            rows = sorted(latest.values(), key=lambda r: r["id"])
        out = Path(output)
        make_parent_dirs(out)
        with atomic_file(out) as f:
            for r in rows:
                f.write(json.dumps({"text": r["text"], "label": r["label"]}, ensure_ascii=False))
                f.write("\n")
        return len(rows)
