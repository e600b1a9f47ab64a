"""NER scoring: entity-level P/R/F1 by seqeval (strict IOB2), token accuracy, error kinds, and
the constrained decoding that makes every predicted tag sequence valid IOB2.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from textloop.tasks.ner.data import Sentence
from textloop.tasks.ner.schemes import tags_to_spans

NEG = -1e9  # log-score of a forbidden tag transition
ERROR_KINDS = ("wrong_type", "wrong_boundary", "wrong_boundary_and_type", "missed", "spurious")
_EXAMPLES_PER_KIND = 3


def entity_metrics(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Entity-level precision / recall / F1 (micro, macro, per type) and token accuracy.

    Both sides must be valid IOB2 (gold is repaired when read, predictions are decoded under
    IOB2 constraints), so seqeval's strict mode counts exactly the entities whose type and both
    boundaries match.

    Example:
        >>> entity_metrics([["B-PER", "I-PER", "O"]], [["B-PER", "O", "O"]])["f1"]
        0.0
    """
    from seqeval.metrics import classification_report
    from seqeval.scheme import IOB2

    n_tokens = sum(len(g) for g in gold)
    correct_tokens = sum(a == b for g, p in zip(gold, pred) for a, b in zip(g, p))
    out: dict[str, Any] = {
        "n": len(gold),
        "n_tokens": n_tokens,
        "token_accuracy": correct_tokens / n_tokens if n_tokens else 0.0,
    }
    has_entities = any(t != "O" for seq in (*gold, *pred) for t in seq)
    if not has_entities:
        out.update(precision=0.0, recall=0.0, f1=0.0, macro_f1=0.0, per_type={})
        return out
    report = classification_report(
        [list(g) for g in gold],
        [list(p) for p in pred],
        mode="strict",
        scheme=IOB2,
        output_dict=True,
        zero_division=0,
    )
    micro, macro = report.pop("micro avg"), report.pop("macro avg")
    report.pop("weighted avg", None)
    out.update(
        precision=float(micro["precision"]),
        recall=float(micro["recall"]),
        f1=float(micro["f1-score"]),
        macro_f1=float(macro["f1-score"]),
        per_type={
            etype: {
                "precision": float(r["precision"]),
                "recall": float(r["recall"]),
                "f1": float(r["f1-score"]),
                "support": int(r["support"]),
            }
            for etype, r in sorted(report.items())
        },
    )
    return out


def error_kinds(
    sentences: Sequence[Sentence], gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]
) -> dict[str, Any]:
    """Classify every entity error, most frequent first.

    A predicted entity that is not exactly right is ``wrong_type`` (same words, other type),
    ``wrong_boundary`` (overlaps a gold entity of its type), ``wrong_boundary_and_type``
    (overlaps only gold entities of other types) or ``spurious`` (overlaps none). A gold entity
    that no prediction overlaps is ``missed``.

    Returns:
        ``counts`` per kind, ``top`` (kind, gold type, predicted type, count) and a few
        ``examples`` per kind with the sentence text.
    """
    counts: Counter[str] = Counter({k: 0 for k in ERROR_KINDS})
    detail: Counter[tuple[str, str, str]] = Counter()
    examples: dict[str, list[dict[str, str]]] = {k: [] for k in ERROR_KINDS}

    def record(kind: str, s: Sentence, g: tuple[int, int, str] | None, p: Any) -> None:
        counts[kind] += 1
        detail[(kind, g[2] if g else "-", p[2] if p else "-")] += 1
        if len(examples[kind]) < _EXAMPLES_PER_KIND:
            assert s.offsets is not None

            def show(span: tuple[int, int, str] | None) -> str:
                if span is None:
                    return "-"
                assert s.offsets is not None
                return f"{s.text[s.offsets[span[0]][0] : s.offsets[span[1] - 1][1]]} ({span[2]})"

            examples[kind].append({"sentence": s.text[:300], "gold": show(g), "pred": show(p)})

    for s, g_tags, p_tags in zip(sentences, gold, pred):
        g_spans = set(tags_to_spans(list(g_tags), "IOB2"))
        p_spans = set(tags_to_spans(list(p_tags), "IOB2"))
        exact = g_spans & p_spans
        g_left, p_left = sorted(g_spans - exact), sorted(p_spans - exact)
        touched: set[tuple[int, int, str]] = set()
        for p in p_left:
            overlaps = [g for g in g_left if g[0] < p[1] and p[0] < g[1]]
            touched.update(overlaps)
            same_span = [g for g in overlaps if g[:2] == p[:2]]
            same_type = [g for g in overlaps if g[2] == p[2]]
            if same_span:
                record("wrong_type", s, same_span[0], p)
            elif same_type:
                record("wrong_boundary", s, same_type[0], p)
            elif overlaps:
                record("wrong_boundary_and_type", s, overlaps[0], p)
            else:
                record("spurious", s, None, p)
        for g in g_left:
            if g not in touched:
                record("missed", s, g, None)
    return {
        "counts": dict(counts.most_common()),
        "top": [
            {"kind": k, "gold": g, "pred": p, "count": n} for (k, g, p), n in detail.most_common(10)
        ],
        "examples": {k: v for k, v in examples.items() if v},
    }


def iob2_constraints(labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Log-scores (0 or NEG) of starting with each tag and of each tag-to-tag transition.

    ``I-X`` may only follow ``B-X`` or ``I-X``; anything else is allowed.
    """
    n = len(labels)
    start = np.zeros(n)
    trans = np.zeros((n, n))
    for j, tag in enumerate(labels):
        if tag.startswith("I-"):
            start[j] = NEG
            etype = tag[2:]
            for i, prev in enumerate(labels):
                if prev not in (f"B-{etype}", f"I-{etype}"):
                    trans[i, j] = NEG
    return start, trans


def viterbi(log_probs: np.ndarray, start: np.ndarray, trans: np.ndarray) -> list[int]:
    """The best tag path under the transition constraints. ``log_probs``: (n_words, n_labels)."""
    n = len(log_probs)
    if n == 0:
        return []
    score = start + log_probs[0]  # (C,)
    back = np.zeros((n, log_probs.shape[1]), dtype=np.int64)
    for t in range(1, n):
        cand = score[:, None] + trans  # (C_prev, C)
        back[t] = cand.argmax(0)
        score = cand.max(0) + log_probs[t]
    path = [int(score.argmax())]
    for t in range(n - 1, 0, -1):
        path.append(int(back[t, path[-1]]))
    return path[::-1]
