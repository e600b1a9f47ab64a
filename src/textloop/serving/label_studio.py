"""Labels in and out: training files (JSONL/CSV) and Label Studio's JSON task format.

A training file holds ``text`` and ``label`` per row, the latest label of each distinct text,
so ``textloop train --train FILE`` and ``textloop update --new-data FILE`` take it as it is.

Label Studio tasks (what its "Import" takes and its JSON "Export" gives)::

    {"data": {"text": "..."},
     "annotations": [{"result": [{"from_name": "label", "to_name": "text", "type": "choices",
                                  "value": {"choices": ["pos"]}}], "created_at": "..."}],
     "predictions": [{"model_version": "fs", "score": 0.91,
                      "result": [{..., "value": {"choices": ["pos"]}, "score": 0.91}]}]}

for a labelling config with ``<Text name="text" value="$text"/>`` and
``<Choices name="label" toName="text">``. Importing reads the last annotation of each task that
was not cancelled and holds exactly one choice; the others are counted and left out.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from textloop.artifacts.feedback import FeedbackStore, check_label, text_hash
from textloop.errors import DataError
from textloop.fileio import atomic_file, check_output_path
from textloop.serving.label_queue import QueueItem

ExportFormat = Literal["jsonl", "csv", "label-studio"]
FROM_NAME, TO_NAME = "label", "text"


def _choice(label: str, score: float | None = None) -> dict[str, Any]:
    result: dict[str, Any] = {
        "from_name": FROM_NAME,
        "to_name": TO_NAME,
        "type": "choices",
        "value": {"choices": [label]},
    }
    if score is not None:
        result["score"] = score
    return result


def _iso(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.timezone.utc).isoformat().replace("+00:00", "Z")


def latest_labels(store: FeedbackStore, model: str) -> list[dict[str, Any]]:
    """``model``'s feedback rows, the latest of each distinct text, oldest first."""
    latest = {r["text_hash"]: r for r in store.feedback(model)}
    return sorted(latest.values(), key=lambda r: r["id"])


def label_studio_tasks(
    rows: Sequence[dict[str, Any]], model: str, queue: Sequence[QueueItem] = ()
) -> list[dict[str, Any]]:
    """Label Studio tasks: the queue's texts (with their predictions) and every labelled text.

    Args:
        rows: feedback rows (``latest_labels``).
        model: the model name, Label Studio's ``model_version`` of the predictions.
        queue: queue items; their predictions go with them, labelled or not.
    """
    by_hash = {r["text_hash"]: r for r in rows}
    tasks: list[dict[str, Any]] = []
    seen: set[str] = set()

    def task(text: str, h: str, predictions: list[dict[str, Any]] | None) -> dict[str, Any]:
        out: dict[str, Any] = {"data": {"text": text}}
        row = by_hash.get(h)
        if row is not None:
            out["annotations"] = [
                {"result": [_choice(row["label"])], "created_at": _iso(row["at"])}
            ]
            out["meta"] = {"labelled_by": row.get("user"), "labelled_at": _iso(row["at"])}
            if predictions is None and row.get("predicted_label"):
                predictions = [{"label": row["predicted_label"], "score": None}]
        if predictions:
            top = predictions[0]
            pred: dict[str, Any] = {
                "model_version": model,
                "result": [_choice(top["label"], top["score"])],
            }
            if top["score"] is not None:  # a suggestion kept without its score has none
                pred["score"] = top["score"]
            out["predictions"] = [pred]
            out["meta"] = {**out.get("meta", {}), "top_k": predictions}
        return out

    for item in queue:
        if item.hash not in seen:
            seen.add(item.hash)
            tasks.append(task(item.text, item.hash, item.predictions))
    for r in rows:
        if r["text_hash"] not in seen:
            seen.add(r["text_hash"])
            tasks.append(task(r["text"], r["text_hash"], None))
    for i, t in enumerate(tasks, start=1):
        t["id"] = i
    return tasks


def write_training_file(pairs: Sequence[tuple[str, str]], output: str | Path) -> int:
    """Write (text, label) rows as JSONL, or CSV when ``output`` ends in ``.csv``; atomically."""
    out = check_output_path(output)
    with atomic_file(out) as f:
        if out.suffix.lower() == ".csv":
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["text", "label"])
            w.writerows(pairs)
        else:
            for text, label in pairs:
                f.write(json.dumps({"text": text, "label": label}, ensure_ascii=False) + "\n")
    return len(pairs)


def export_labels(
    store: FeedbackStore,
    model: str,
    output: str | Path,
    format: ExportFormat = "jsonl",
    queue: Sequence[QueueItem] = (),
) -> int:
    """Write ``model``'s labels as a training file or as Label Studio tasks.

    Returns:
        Rows (training file) or tasks (Label Studio) written.

    Raises:
        DataError: nothing to export.
    """
    rows = latest_labels(store, model)
    if not rows and not (format == "label-studio" and queue):
        raise DataError(f"no labels for model {model!r} in {store.path}; label some first")
    if format == "label-studio":
        tasks = label_studio_tasks(rows, model, queue)
        out = check_output_path(output)
        with atomic_file(out) as f:
            json.dump(tasks, f, ensure_ascii=False, indent=1)
        return len(tasks)
    if Path(output).suffix.lower() != f".{format}":
        raise DataError(
            f"--output {output}: name the file .{format} (train and update read by the suffix)"
        )
    return write_training_file([(r["text"], r["label"]) for r in rows], output)


@dataclass
class Imported:
    """Labels read from a Label Studio export, and what was left out and why."""

    labels: list[tuple[str, str, str | None]] = field(default_factory=list)  # text, label, who
    left_out: dict[str, int] = field(default_factory=dict)

    def leave_out(self, why: str) -> None:
        self.left_out[why] = self.left_out.get(why, 0) + 1


def _annotator(annotation: dict[str, Any]) -> str | None:
    who = annotation.get("completed_by")
    if isinstance(who, dict):
        who = who.get("email") or who.get("id")
    return None if who is None else str(who)


def read_label_studio(path: str | Path, text_key: str = "text") -> Imported:
    """The single-choice labels of a Label Studio JSON export (a list of tasks).

    Raises:
        DataError: the file is not a JSON list of tasks.
    """
    try:
        tasks = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read a Label Studio JSON export ({exc})") from None
    if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
        raise DataError(f"{path}: expected a JSON list of Label Studio tasks (use JSON export)")
    got = Imported()
    for task in tasks:
        text = (task.get("data") or {}).get(text_key)
        if not isinstance(text, str):
            got.leave_out(f"no data.{text_key}")
            continue
        done = [
            a
            for a in task.get("annotations") or task.get("completions") or []
            if isinstance(a, dict) and not a.get("was_cancelled")
        ]
        if not done:
            got.leave_out("not annotated")
            continue
        choices = [
            c
            for r in done[-1].get("result") or []
            if r.get("type") == "choices"
            for c in (r.get("value") or {}).get("choices") or []
        ]
        if len(choices) != 1:
            got.leave_out("not exactly one choice")
            continue
        try:
            label = check_label(choices[0])
        except DataError:
            got.leave_out("invalid label")
            continue
        got.labels.append((text, label, _annotator(done[-1])))
    return got


def import_labels(got: Imported, store: FeedbackStore, model: str, user: str | None) -> int:
    """Add imported labels to the store (each durable); a text already holding the same label
    is not added twice. Returns the rows added."""
    have = {(r["text_hash"], r["label"]) for r in store.feedback(model)}
    added = 0
    for text, label, who in got.labels:
        if (text_hash(text), label) in have:
            got.leave_out("already in the store")
            continue
        store.add_feedback(model, label, text, user=who or user)
        have.add((text_hash(text), label))
        added += 1
    return added
