"""``check_drift``: build the reference and current windows of a registered model and test them.

The reference window is the production version's frozen regression set (held-out earlier
data: training data itself would look over-confident next to any unseen text) or a file; the
current window is the most recent logged traffic (or a file). Texts are run through the
production model once, giving its sentence embeddings (mean of the last hidden layer over real
tokens), predicted labels and confidences. Traffic logged without its text still gets the
prediction and confidence tests, from the logged values.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from textloop.artifacts.feedback import FeedbackStore
from textloop.artifacts.registry import Registry
from textloop.continual.drift import Window, drift_report, plot_report, report_markdown
from textloop.continual.replay import (
    DEFAULT_BUFFER,
    DEFAULT_REGRESSION_SIZE,
    continual_dir,
    ensure_frozen,
)
from textloop.data.batching import mean_pool, sorted_batches
from textloop.errors import DataError
from textloop.fileio import atomic_dir, make_parent_dirs
from textloop.runs import load_registered


@torch.no_grad()
def embed_texts(run: Any, texts: Sequence[str], batch_size: int = 64) -> dict[str, Any]:
    """Sentence embeddings, predicted labels, confidences and the unknown-token rate of a run.

    Returns:
        ``{"embeddings": (N, H) array or None, "predicted", "confidence", "unk_rate"}``;
        embeddings are None for a model without hidden states (an ONNX export).
    """
    task, model = run.task, run.model
    data = task.encode(list(texts), None)
    unk = getattr(task.tokenizer, "unk_token_id", None)
    n_tok = sum(data.lengths)
    unk_rate = (
        sum(ids.count(unk) for ids in data.input_ids) / max(1, n_tok) if unk is not None else None
    )
    if not isinstance(model, torch.nn.Module):
        preds = run.predict(list(texts))
        return {
            "embeddings": None,
            "predicted": [p["label"] for p in preds],
            "confidence": np.array([p["score"] for p in preds]),
            "unk_rate": unk_rate,
        }
    model.eval()
    emb: list[np.ndarray] = [np.zeros(0)] * len(texts)
    probs = np.zeros((len(texts), len(task.labels)))
    for idx in sorted_batches(data.lengths, batch_size):
        batch = task.collate(data, idx)
        out = model(**batch, output_hidden_states=True)
        pooled = mean_pool(out.hidden_states[-1], batch["attention_mask"])  # (B, H)
        for row, i in enumerate(idx):
            emb[i] = pooled[row].numpy()
        probs[idx] = torch.softmax(out.logits.float() / task.temperature, -1).numpy()
    return {
        "embeddings": np.stack(emb),
        "predicted": [task.labels[i] for i in probs.argmax(1)],
        "confidence": probs.max(1),
        "unk_rate": unk_rate,
    }


def window_from_texts(run: Any, texts: Sequence[str], description: str) -> Window:
    """A window of texts scored by the run's model."""
    scored = embed_texts(run, texts)
    return Window(
        predicted=scored["predicted"],
        confidence=scored["confidence"],
        embeddings=scored["embeddings"],
        texts=list(texts),
        unk_rate=scored["unk_rate"],
        description=description,
    )


def _sample(items: list[Any], size: int, seed: int) -> list[Any]:
    if len(items) <= size:
        return items
    return random.Random(seed).sample(items, size)


def _read_texts(source: str, text_column: str) -> list[str]:
    from textloop.data.examples import select_columns
    from textloop.data.readers import read_table

    table = read_table(source)
    sel = select_columns(table, {"text": (text_column, "--text-column")}, {}, drop_invalid=True)
    return [str(t) for t in sel.values["text"]]


def check_drift(
    registry: str | Path,
    name: str,
    current: str | None = None,
    reference: str | None = None,
    window: int = 500,
    since: float | None = None,
    alpha: float = 0.05,
    n_permutations: int = 500,
    seed: int = 0,
    output: str | Path | None = None,
    text_column: str | None = None,
    store: FeedbackStore | None = None,
) -> tuple[dict[str, Any], Path]:
    """Test whether recent traffic of ``name`` has drifted from its reference data.

    Args:
        registry: the registry directory (its ``feedback.sqlite`` holds the traffic).
        name: the registered model; its production version scores both windows.
        current: a file of recent texts instead of the logged traffic.
        reference: a file of reference texts instead of the frozen regression set.
        window: most texts per window (the most recent ones of the traffic).
        since: only traffic logged at or after this UNIX time.
        alpha: false-alarm rate of the verdict.
        n_permutations: permutations of the MMD test.
        seed: seed of sampling and permutations.
        output: folder for report.json, report.md and drift.png (default: a new folder under
            ``<registry>/continual/<name>/drift/``).
        text_column: text column of the ``current`` / ``reference`` files.
        store: the traffic store (default: the one in the registry directory).

    Returns:
        The report (its ``verdict`` is the machine-readable decision) and the folder written.

    Raises:
        RegistryError: unknown model or no production version.
        DataError: no traffic in the window, or unreadable files.
    """
    reg = Registry(registry)
    mv, run = load_registered(reg, name)
    col = text_column or run.config.data.text_column
    if reference:
        ref_texts = _sample(_read_texts(reference, col), window, seed)
        ref_desc = reference
    else:
        frozen = ensure_frozen(
            registry, name, mv.version, run.config, DEFAULT_BUFFER, DEFAULT_REGRESSION_SIZE, seed
        )
        ref_texts = _sample([r["text"] for r in frozen.regression], window, seed)
        ref_desc = f"frozen regression set of {name} v{mv.version}"
    ref = window_from_texts(run, ref_texts, ref_desc)

    feedback: list[str] = []
    if current:
        cur = window_from_texts(run, _sample(_read_texts(current, col), window, seed + 1), current)
    else:
        store = store or FeedbackStore(registry)
        logged = store.predictions(name, since=since, limit=window)
        if not logged:
            raise DataError(
                f"no logged traffic for {name!r} in {store.path}"
                + (" since the given time" if since else "")
                + "; serve the model with a feedback store, or pass --current FILE"
            )
        desc = f"last {len(logged)} predictions logged in {store.path}"
        texts = [p.text for p in logged if p.text is not None]
        if len(texts) == len(logged):
            cur = window_from_texts(run, texts, desc)
        else:  # texts were not kept: the prediction and confidence tests only
            cur = Window(
                predicted=[p.label or "" for p in logged],
                confidence=np.array([p.confidence or 0.0 for p in logged]),
                description=desc + " (without texts)",
            )
        feedback = [f["label"] for f in store.feedback(name, since=logged[0].at)]
    cur.feedback_labels = feedback
    report = drift_report(ref, cur, list(run.task.state()["labels"]), alpha, n_permutations, seed)
    report["model"] = {"name": name, "version": mv.version}
    report["at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return report, _write(report, ref, cur, output, registry, name)


def _write(
    report: dict[str, Any], ref: Window, cur: Window, output: Any, registry: Any, name: str
) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    final = Path(output) if output else continual_dir(registry, name) / "drift" / stamp
    make_parent_dirs(final)
    slim = json.loads(json.dumps(report))
    if "null" in slim["tests"]["input"]:
        slim["tests"]["input"]["null"] = f"{len(report['tests']['input']['null'])} values"
    with atomic_dir(final) as tmp:
        (tmp / "report.json").write_text(json.dumps(slim, indent=2, ensure_ascii=False))
        (tmp / "report.md").write_text(report_markdown(report), encoding="utf-8")
        plot_report(
            {**report, "_confidences": {"reference": ref.confidence, "current": cur.confidence}},
            tmp / "drift.png",
        )
    return final


__all__ = ["check_drift", "embed_texts", "window_from_texts"]
