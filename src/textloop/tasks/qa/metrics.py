"""Extractive QA scoring, as the official SQuAD v1.1 / v2.0 evaluation scripts define it.

An answer is normalised by lower-casing, removing punctuation, removing the articles a / an / the,
and collapsing whitespace. Exact match and token F1 are taken as the maximum over the gold
answers; a question without gold answers (SQuAD 2.0) has the single gold answer "", so only an
empty prediction scores 1. Scores here are fractions (0-1); the official script prints x100.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and articles, collapse whitespace (the official order)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    """1.0 when the normalised strings are equal."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    """F1 over the bags of normalised tokens; two empty answers score 1, one empty scores 0."""
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def gold_texts(answers: Sequence[str]) -> list[str]:
    """The gold answers that survive normalisation, or [""] for an unanswerable question."""
    kept = [a for a in answers if normalize_answer(a)]
    return kept or [""]


def score_one(prediction: str, answers: Sequence[str]) -> tuple[float, float]:
    """(exact match, F1) of one prediction, maximised over the gold answers."""
    golds = gold_texts(answers)
    return (
        max(exact_match(prediction, g) for g in golds),
        max(token_f1(prediction, g) for g in golds),
    )


def squad_scores(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Mean EM and F1; with unanswerable questions also has-answer / no-answer breakdowns.

    Example:
        >>> squad_scores(["the Eiffel Tower"], [["Eiffel Tower", "tower"]])["exact_match"]
        1.0
    """
    per = [score_one(p, a) for p, a in zip(predictions, answers)]
    em = np.array([x[0] for x in per])
    f1 = np.array([x[1] for x in per])
    out: dict[str, Any] = {
        "n": len(per),
        "exact_match": float(em.mean()) if per else 0.0,
        "f1": float(f1.mean()) if per else 0.0,
    }
    no_ans = np.array([gold_texts(a) == [""] for a in answers], dtype=bool)
    if no_ans.any():
        has = ~no_ans
        out.update(
            n_no_answer=int(no_ans.sum()),
            no_answer_accuracy=float(em[no_ans].mean()),
            n_has_answer=int(has.sum()),
            has_answer_exact_match=float(em[has].mean()) if has.any() else 0.0,
            has_answer_f1=float(f1[has].mean()) if has.any() else 0.0,
        )
    return out


def best_null_threshold(
    null_diffs: Sequence[float], span_f1: Sequence[float], null_f1: Sequence[float]
) -> tuple[float, float]:
    """The threshold that maximises mean F1 when 'no answer' is chosen for ``diff > threshold``.

    Args:
        null_diffs: per question, null score minus best span score.
        span_f1: per question, F1 of the best span.
        null_f1: per question, F1 of answering "no answer" (1 for unanswerable questions).

    Returns:
        (threshold, mean F1 at it); the threshold lies midway between neighbouring diffs.
    """
    n = len(null_diffs)
    if n == 0:
        return 0.0, 0.0
    order = np.argsort(null_diffs, kind="stable")
    d = np.asarray(null_diffs, dtype=float)[order]
    span = np.concatenate([[0.0], np.cumsum(np.asarray(span_f1, dtype=float)[order])])
    null = np.concatenate([[0.0], np.cumsum(np.asarray(null_f1, dtype=float)[order])])
    # answer the k questions with the smallest diffs, abstain on the rest
    totals = span + (null[-1] - null)
    valid = np.ones(n + 1, dtype=bool)
    valid[1:n] = d[:-1] < d[1:]  # a threshold cannot split equal diffs
    k = int(np.argmax(np.where(valid, totals, -np.inf)))
    if k == 0:
        threshold = float(d[0] - 1.0)
    elif k == n:
        threshold = float(d[-1] + 1.0)
    else:
        threshold = float((d[k - 1] + d[k]) / 2)
    return threshold, float(totals[k] / n)
