"""A labelling session: which queue item is next, what the model suggests, and every decision.

Labels go to the feedback store (``artifacts/feedback.py``), which answers only once the row is
committed with fsync: a label the page saw acknowledged survives a killed server. The store is
also the memory of the session: items whose text already has a label for this model are done
when a session starts again, so a restarted page continues where it left off. Skips are kept
for the session only (a skip means "not now": they come back on the next start).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from textloop.artifacts.feedback import FeedbackStore, check_label
from textloop.errors import DataError, TextloopError
from textloop.evaluation.explain import explain
from textloop.serving.label_queue import QueueItem

log = logging.getLogger(__name__)
MAX_SHORTCUT_DIGITS = 9
HIGHLIGHT_LEVELS = 3  # attributions shown as 3 shades each way (CSS classes pos1..3, neg1..3)


class SessionConflict(TextloopError):
    """The request does not fit the session's state (labelled twice, nothing to undo)."""


@dataclass
class Action:
    """One decision, kept for undo: a label (with its feedback row) or a skip."""

    kind: str  # "label" | "skip"
    index: int
    feedback_id: int | None = None


def shortcuts(labels: Sequence[str]) -> list[dict[str, Any]]:
    """Keys for each label: digits 1-9 by position, and its first letter when no other label
    starts with it (space, backspace and '/' are the page's own keys)."""
    firsts = [label[:1].lower() for label in labels]
    out = []
    for i, (label, first) in enumerate(zip(labels, firsts)):
        keys = [str(i + 1)] if i < MAX_SHORTCUT_DIGITS else []
        if "a" <= first <= "z" and firsts.count(first) == 1:
            keys.append(first)
        out.append({"label": label, "keys": keys})
    return out


def highlight_segments(text: str, words: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The text cut into pieces with a shade from -3 to 3 by word attribution, covering it all
    (so the page never needs character offsets, which JavaScript counts differently)."""
    top = max((abs(w["attribution"]) for w in words), default=0.0) or 1.0
    pieces, pos = [], 0
    for w in sorted(words, key=lambda w: w["start"]):
        if w["start"] < pos:
            continue
        if w["start"] > pos:
            pieces.append({"text": text[pos : w["start"]], "level": 0})
        share = w["attribution"] / top
        level = round(share * HIGHLIGHT_LEVELS)
        pieces.append({"text": text[w["start"] : w["end"]], "level": level})
        pos = w["end"]
    if pos < len(text):
        pieces.append({"text": text[pos:], "level": 0})
    return pieces


class LabelSession:
    """The state of one labelling page over a queue (thread-safe).

    Args:
        items: the queue, in order.
        run: the loaded classification run that suggests labels and explains them.
        store: where labels go.
        model: the model name labels are filed under in the store.
        user: who labels (recorded with every label).
        top_k: suggestions shown per text.
        explain_steps: integration steps of the word highlights (0: no highlights).
    """

    def __init__(
        self,
        items: list[QueueItem],
        run: Any,
        store: FeedbackStore,
        model: str,
        user: str,
        top_k: int = 5,
        explain_steps: int = 32,
    ) -> None:
        task = run.task
        if getattr(task, "name", None) != "classification" or getattr(task, "multi_label", False):
            raise DataError(
                f"{run.path}: the labelling page takes a single-label classification run, "
                f"found a {getattr(task, 'name', '?')} run"
            )
        self.items, self.run, self.store = items, run, store
        self.model, self.user = model, user
        self.top_k, self.explain_steps = top_k, explain_steps
        self.labelled: dict[str, int] = {}  # text hash -> feedback row id
        self.new_labels: list[str] = []
        known = set(task.labels)
        for row in store.feedback(model):
            self.labelled[row["text_hash"]] = row["id"]
            if row["label"] not in known and row["label"] not in self.new_labels:
                self.new_labels.append(row["label"])
        self.skipped: set[int] = set()
        self.history: list[Action] = []
        self.lock = threading.Lock()  # the session's state and the store writes, in order
        self.model_lock = threading.Lock()  # predictions and explanations, one at a time
        self._suggested: dict[int, list[dict[str, Any]]] = {}
        self._explained: dict[int, dict[str, Any]] = {}

    # ---- reading -------------------------------------------------------------------------
    def labels(self) -> list[str]:
        """The run's labels, then labels typed in (this session or an earlier one)."""
        return list(self.run.task.labels) + self.new_labels

    def current(self) -> int | None:
        """Index of the first item neither labelled nor skipped (None: the queue is done)."""
        for i, item in enumerate(self.items):
            if item.hash not in self.labelled and i not in self.skipped:
                return i
        return None

    def suggestions(self, index: int) -> list[dict[str, Any]]:
        """The model's best labels with scores for item ``index`` (the queue's, else the run's)."""
        item = self.items[index]
        if item.predictions is not None:
            return item.predictions[: self.top_k]
        if index not in self._suggested:
            with self.model_lock:
                pred = self.run.predict([item.text], top_k=max(2, self.top_k))[0]
            self._suggested[index] = pred.get("top_k") or [
                {"label": pred["label"], "score": pred["score"]}
            ]
        return self._suggested[index][: self.top_k]

    def state(self) -> dict[str, Any]:
        """What the page shows: the current item, its suggestions, the labels and progress."""
        with self.lock:
            index = self.current()
            done = sum(1 for item in self.items if item.hash in self.labelled)
            progress = {"labelled": done, "skipped": len(self.skipped), "total": len(self.items)}
            labels, can_undo = self.labels(), bool(self.history)
        item = None
        if index is not None:
            q = self.items[index]
            item = {
                "index": index,
                "id": q.id,
                "text": q.text,
                "reason": q.reason,
                "score": q.score,
                "suggestions": self.suggestions(index),
            }
        return {
            "model": self.model,
            "user": self.user,
            "item": item,
            "progress": progress,
            "shortcuts": shortcuts(labels),
            "can_undo": can_undo,
            "highlights": self.explain_steps > 0,
        }

    def highlights(self, index: int) -> dict[str, Any]:
        """Word attributions toward the run's predicted label for item ``index``, as text pieces.

        Made only for the current item (a page labelling quickly must not queue explanations
        of texts it has left, ahead of the next text's suggestions).
        """
        self._check_index(index)
        if self.explain_steps <= 0:
            return {"segments": None, "note": "word highlights are off (--explain-steps 0)"}
        if index in self._explained:
            return self._explained[index]
        text = self.items[index].text
        with self.model_lock:
            if index != self.current():  # the labeller moved on while this request waited
                return {"segments": None, "note": "highlights are made for the current text"}
            try:
                words = explain(self.run, [text], steps=self.explain_steps)[0]["words"]
                self._explained[index] = {"segments": highlight_segments(text, words)}
            except TextloopError as exc:  # an exported (ONNX) run has no gradients
                self._explained[index] = {"segments": None, "note": str(exc)}
        return self._explained[index]

    # ---- decisions -----------------------------------------------------------------------
    def _check_index(self, index: int) -> None:
        if not 0 <= index < len(self.items):
            raise DataError(f"no item {index}; the queue has {len(self.items)}")

    def label(self, index: int, label: str) -> int:
        """Label item ``index``; returns once the label is on disk (its feedback row id).

        Raises:
            DataError: an invalid label (``check_label``) or index.
            SessionConflict: the item's text already has a label.
        """
        self._check_index(index)
        clean = check_label(label)
        item = self.items[index]
        with self.lock:
            if item.hash in self.labelled:
                raise SessionConflict(f"item {index} is already labelled; undo it first")
            suggested = self.suggestions(index)
            served = item.prediction_id and self.store.get_prediction(item.prediction_id)
            fid = self.store.add_feedback(
                self.model,
                clean,
                item.text,
                # a text from this store's traffic log stays tied to the prediction it got
                prediction_id=item.prediction_id if served and served.model == self.model else None,
                user=self.user,
                predicted_label=suggested[0]["label"] if suggested else None,
            )
            self.labelled[item.hash] = fid
            self.skipped.discard(index)
            self.history.append(Action("label", index, fid))
            if clean not in self.run.task.labels and clean not in self.new_labels:
                self.new_labels.append(clean)
        log.info("item %d (%s) labelled %r by %s", index, item.id, clean, self.user)
        return fid

    def skip(self, index: int) -> None:
        """Pass over item ``index`` for this session."""
        self._check_index(index)
        with self.lock:
            if self.items[index].hash in self.labelled:
                raise SessionConflict(f"item {index} is already labelled; undo it first")
            if index not in self.skipped:
                self.skipped.add(index)
                self.history.append(Action("skip", index))

    def undo(self) -> Action:
        """Take back the last decision of this session (a label leaves the store durably).

        Raises:
            SessionConflict: nothing to undo.
        """
        with self.lock:
            if not self.history:
                raise SessionConflict("nothing to undo in this session")
            action = self.history.pop()
            if action.kind == "skip":
                self.skipped.discard(action.index)
                return action
            assert action.feedback_id is not None
            self.store.delete_feedback(self.model, action.feedback_id)
            self.labelled.pop(self.items[action.index].hash, None)
        log.info("label of item %d undone by %s", action.index, self.user)
        return action
