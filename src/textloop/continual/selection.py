"""Active learning: choose the unlabelled texts a person should label next (``textloop select``).

Candidates come from a file (any format ``read_table`` reads) or from the serving traffic log
(texts kept by ``serve --log-text``). Exact duplicates (after trimming and collapsing whitespace)
are dropped, as are texts already labelled: those in the run's train / validation / test files
and those in the feedback store. The run's model scores the rest in one batched pass (the task's
own ``eval_batches`` and ``decode``: logits, the top-k labels and scores exactly as ``predict``
gives them, and mean-pooled sentence embeddings for the diverse strategy) and a strategy of
``textloop.continual.strategies`` picks ``k``.

Example:
    >>> result = select_from_pool("runs/fs", "tickets.jsonl", k=200, strategy="margin")
    >>> write_queue(result, "queue.jsonl")
    >>> result.rows[0]["reason"]
    'margin 0.031 between card_arrival (0.41) and card_delivery_estimate (0.38)'
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from textloop.artifacts.feedback import FeedbackStore
from textloop.artifacts.registry import Registry
from textloop.continual.strategies import STRATEGIES, rank
from textloop.data.batching import mean_pool
from textloop.data.examples import select_columns
from textloop.data.readers import read_table
from textloop.errors import ConfigError, DataError, ModelError, RegistryError
from textloop.fileio import atomic_file, check_output_path
from textloop.models.onnx_backend import OnnxSequenceClassifier
from textloop.runs import Run, load_run
from textloop.tasks.base import eval_batches
from textloop.tasks.classification import ClassificationTask

log = logging.getLogger(__name__)
_SPACE = re.compile(r"\s+")


@dataclass
class Candidate:
    """An unlabelled text: its id, where it came from, and its logged prediction id if any."""

    id: str
    text: str
    source: str
    prediction_id: str | None = None


@dataclass
class Selection:
    """What ``select`` chose: queue rows (best first) and what it dropped or noticed on the way."""

    rows: list[dict[str, Any]]
    strategy: str
    k: int
    n_candidates: int
    n_duplicates: int = 0
    n_labelled: int = 0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: how many were chosen out of how many, and what was skipped."""
        return (
            f"selected {len(self.rows)} of {self.n_candidates} candidates with {self.strategy} "
            f"(dropped {self.n_duplicates} exact duplicates, skipped {self.n_labelled} "
            "already-labelled texts)"
        )


def normalise(text: str) -> str:
    """The form duplicates are compared in: trimmed, runs of whitespace made one space."""
    return _SPACE.sub(" ", text).strip()


# ---- scoring -------------------------------------------------------------------------------
@torch.no_grad()
def score_texts(
    run: Run, texts: Sequence[str], batch_size: int | None = None, embeddings: bool = True
) -> tuple[torch.Tensor, np.ndarray | None]:
    """Logits (N, C) of a run's classifier and, if asked, its sentence embeddings (N, H).

    The same batches ``predict`` runs (``tasks.base.eval_batches``); embeddings are the mean of
    the last hidden layer over real tokens, from the same forward pass. An exported ONNX model
    has no hidden states: its embeddings are None.
    """
    task, model = run.task, run.model
    assert isinstance(task, ClassificationTask)  # select() checks the task first
    bs = batch_size or run.config.train.eval_batch_size
    data = task.encode(list(texts), None)
    if isinstance(model, OnnxSequenceClassifier) or not embeddings:
        return task.logits_for(model, data, bs), None
    logits = torch.empty((len(texts), len(task.state()["labels"])))
    pooled: np.ndarray | None = None
    for idx, inputs, _ in eval_batches(task, model, data, bs):
        out = model(**inputs, output_hidden_states=True)
        mean = mean_pool(out.hidden_states[-1], inputs["attention_mask"]).cpu().numpy()  # (B, H)
        if pooled is None:
            pooled = np.zeros((len(texts), mean.shape[1]), dtype=np.float32)
        pooled[idx] = mean
        logits[idx] = out.logits.float().cpu()
    return logits, pooled


# ---- candidates ----------------------------------------------------------------------------
def pool_candidates(
    source: str, text_column: str = "text", id_column: str = "id"
) -> list[Candidate]:
    """Every row of a file, directory, glob or builtin as a candidate; empty rows are dropped.

    The id is the row's ``id_column`` when the file has one, else its location (``file:line``).

    Raises:
        DataError: unreadable source, a missing text column (the columns are listed), or no row.
    """
    table = read_table(source)
    has_id = id_column in table.columns
    other = {"id": (id_column, "--id-column")} if has_id else {}
    sel = select_columns(table, {"text": (text_column, "--text-column")}, other, drop_invalid=True)
    if not len(sel):
        raise DataError(f"{source}: the pool holds no text (column {text_column!r})")
    ids = [str(v) for v in sel.values["id"]] if has_id else list(sel.locations)
    return [
        Candidate(id=i, text=str(t), source=loc)
        for i, t, loc in zip(ids, sel.values["text"], sel.locations)
    ]


def traffic_candidates(
    store: FeedbackStore, name: str, since: float | None = None
) -> list[Candidate]:
    """Logged predictions of ``name`` whose text was kept, newest last.

    Raises:
        DataError: nothing logged, or the log holds no texts (the server ran without
            ``--log-text``).
    """
    logged = store.predictions(name, since=since)
    if not logged:
        raise DataError(
            f"no logged traffic for {name!r} in {store.path}"
            + (" since the given time" if since else "")
            + "; serve the model with the registry's feedback store first"
        )
    kept = [p for p in logged if p.text is not None]
    if not kept:
        raise DataError(
            f"the traffic log of {name!r} holds {len(logged)} predictions but no texts; "
            "start serve with --log-text to keep them"
        )
    return [
        Candidate(id=p.id, text=p.text or "", source=f"traffic:{p.id}", prediction_id=p.id)
        for p in kept
    ]


def labelled_texts(
    run: Run, store: FeedbackStore | None = None, name: str | None = None
) -> tuple[set[str], list[str]]:
    """Normalised texts that already have a label, and notes on sources that could not be read.

    Reads the run's train / validation / test files (their text column) and, given a store
    and a model name, that model's feedback.
    """
    seen: set[str] = set()
    notes: list[str] = []
    d = run.config.data
    for split, source in (("train", d.train), ("validation", d.validation), ("test", d.test)):
        if not source:
            continue
        try:
            table = read_table(str(source))
            sel = select_columns(table, {"text": (d.text_column, "")}, {}, drop_invalid=True)
        except DataError as exc:
            notes.append(f"could not read the run's {split} data to skip labelled texts ({exc})")
            continue
        seen.update(normalise(str(t)) for t in sel.values["text"])
    if store is not None and name is not None:
        seen.update(normalise(r["text"]) for r in store.feedback(name) if r["text"])
    return seen, notes


# ---- selection -----------------------------------------------------------------------------
def select(
    run: Run,
    candidates: Sequence[Candidate],
    k: int = 200,
    strategy: str = "margin",
    seed: int = 0,
    labelled: Iterable[str] = (),
    top_k: int = 3,
    batch_size: int | None = None,
) -> Selection:
    """Pick the ``k`` candidates most worth labelling with ``strategy``.

    Args:
        run: a loaded single-label classification run (``load_run``).
        candidates: the unlabelled texts (``pool_candidates``, ``traffic_candidates``).
        k: how many to pick; more than there are takes them all (with a note).
        strategy: one of ``strategies.STRATEGIES``.
        seed: seed of the random draw, tie-breaking and k-means: same inputs, same queue.
        labelled: texts that already have a label (compared normalised); never picked.
        top_k: the model's best labels (with scores) each queue row shows.
        batch_size: inference batch size (default: the run's evaluation batch size).

    Returns:
        The ``Selection``; ``write_queue`` writes its rows.

    Raises:
        ConfigError: an unknown strategy, or k / top_k below 1.
        ModelError: not a single-label classification run, or ``diverse`` with an exported
            (ONNX) model, which has no hidden states.
        DataError: no candidate left after removing duplicates and labelled texts.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if k < 1 or top_k < 1:
        raise ConfigError(f"k and top_k must be >= 1; got k={k}, top_k={top_k}")
    task = run.task
    if not isinstance(task, ClassificationTask) or task.multi_label:
        raise ModelError(
            f"{run.path}: selection needs a single-label classification run; this one is "
            f"{'multi-label ' if isinstance(task, ClassificationTask) else ''}{task.name}"
        )
    if strategy == "diverse" and isinstance(run.model, OnnxSequenceClassifier):
        raise ModelError(
            f"{run.path}: the diverse strategy needs the model's hidden states; an exported "
            "(ONNX) run has none: select from the original run folder, or use margin"
        )
    done = {normalise(t) for t in labelled}
    unique: dict[str, Candidate] = {}
    n_dup = n_lab = 0
    for c in candidates:
        key = normalise(c.text)
        if key in done:
            n_lab += 1
        elif key in unique:
            n_dup += 1
        else:
            unique[key] = c
    pool = list(unique.values())
    result = Selection([], strategy, k, len(candidates), n_dup, n_lab)
    if not pool:
        raise DataError(
            f"no candidate left to select from: {len(candidates)} texts, {n_dup} duplicates, "
            f"{n_lab} already labelled"
        )
    if k > len(pool):
        result.notes.append(f"k={k} is more than the {len(pool)} candidates left: taking them all")
    logits, emb = score_texts(run, [c.text for c in pool], batch_size, strategy == "diverse")
    probs = torch.softmax(logits / task.temperature, -1).numpy()
    picks = rank(strategy, probs, task.labels, k, seed, emb)
    decoded = task.decode(logits[[p.index for p in picks]], top_k=max(2, top_k))
    for n, (p, pred) in enumerate(zip(picks, decoded), 1):
        c = pool[p.index]
        result.rows.append(
            {
                "id": c.id,
                "text": c.text,
                "rank": n,
                "strategy": strategy,
                "score": round(p.score, 6),
                "reason": p.reason,
                "predictions": pred["top_k"][:top_k],
                "cluster": p.cluster,
                "cluster_size": p.cluster_size,
                "source": c.source,
                "prediction_id": c.prediction_id,
            }
        )
    return result


def write_queue(result: Selection, output: str | Path) -> Path:
    """Write the queue as JSONL (one row per text, best first), atomically."""
    out = check_output_path(output)
    with atomic_file(out) as f:
        for row in result.rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return out


def select_from_pool(
    run_dir: str | Path,
    pool: str,
    k: int = 200,
    strategy: str = "margin",
    seed: int = 0,
    text_column: str | None = None,
    top_k: int = 3,
    batch_size: int | None = None,
    id_column: str = "id",
) -> Selection:
    """``select`` over a file of unlabelled texts with a run folder's model.

    Texts in the run's train / validation / test files are skipped; a row's id is its
    ``id_column`` if the file has one, else its location. See ``select`` for the other
    arguments and errors; also raises ``CheckpointError`` for a missing run and ``DataError``
    for an unreadable or empty pool.
    """
    run = load_run(run_dir)
    candidates = pool_candidates(pool, text_column or run.config.data.text_column, id_column)
    done, notes = labelled_texts(run)
    result = select(run, candidates, k, strategy, seed, done, top_k, batch_size)
    result.notes[:0] = notes
    return result


def select_from_traffic(
    registry: str | Path,
    name: str,
    stage: str = "production",
    version: int | None = None,
    since: float | None = None,
    k: int = 200,
    strategy: str = "margin",
    seed: int = 0,
    top_k: int = 3,
    batch_size: int | None = None,
    store: FeedbackStore | None = None,
) -> Selection:
    """``select`` over a registered model's logged traffic, scored by that model.

    The model is ``version``, else the newest version in ``stage``. Texts in its training
    data or in the model's feedback are skipped; each row keeps its ``prediction_id`` so a
    label can be sent as feedback on that prediction.

    Raises:
        RegistryError: unknown model, or no version in the stage.
        DataError: no traffic, or traffic without texts (serve with ``--log-text``).
    """
    reg = Registry(registry)
    if version is None:
        if stage == "production":
            version = reg.resolve(name).version
        else:
            in_stage = [v.version for v in reg.versions(name) if v.stage == stage]
            if not in_stage:
                raise RegistryError(f"{name!r} has no version in stage {stage!r}")
            version = max(in_stage)
    run = load_run(reg.verify(name, version).path)
    store = store or FeedbackStore(registry)
    candidates = traffic_candidates(store, name, since)
    done, notes = labelled_texts(run, store, name)
    result = select(run, candidates, k, strategy, seed, done, top_k, batch_size)
    result.notes[:0] = notes
    return result


__all__ = [
    "Candidate",
    "Selection",
    "labelled_texts",
    "pool_candidates",
    "score_texts",
    "select",
    "select_from_pool",
    "select_from_traffic",
    "traffic_candidates",
    "write_queue",
]
