"""How closely an exported model agrees with the original, on classification outputs."""

from __future__ import annotations

from typing import Any

from textloop.errors import ExportError
from textloop.tasks.classification.task import MULTI_LABEL_THRESHOLD

NEAR_TIE_MARGIN = 0.05  # top-two probabilities closer than this: a flip is not a disagreement


def compare_predictions(
    reference: list[dict[str, Any]], exported: list[dict[str, Any]]
) -> tuple[float, float, float, float, int]:
    """How closely two classification outputs agree.

    Both lists come from ``predict(..., top_k=<number of labels>)``, so every label's
    probability is there (``top_k`` for single-label, ``scores`` for multi-label).

    Returns:
        Label agreement over all texts; max and mean per-label probability difference; label
        agreement over the texts where the original is decisive (top two more than
        ``NEAR_TIE_MARGIN`` apart; multi-label: no score that close to the threshold), since
        any approximation may flip a near tie; and the number of near-tie flips.
    """
    if len(reference) != len(exported):
        raise ExportError(f"{len(exported)} predictions for {len(reference)} texts")
    same, decisive, decisive_same, diffs = 0, 0, 0, list[float]()
    for a, b in zip(reference, exported):
        agree = a.get("label", a.get("labels")) == b.get("label", b.get("labels"))
        pa, pb = _probs(a), _probs(b)
        diffs.extend(abs(pa[k] - pb.get(k, 0.0)) for k in pa)
        if "scores" in a:
            near_tie = any(abs(p - MULTI_LABEL_THRESHOLD) < NEAR_TIE_MARGIN for p in pa.values())
        else:
            top = sorted(pa.values(), reverse=True)
            near_tie = len(top) > 1 and top[0] - top[1] < NEAR_TIE_MARGIN
        same += agree
        decisive += not near_tie
        decisive_same += agree and not near_tie
    n = max(len(reference), 1)
    return (
        same / n,
        max(diffs, default=0.0),
        sum(diffs) / max(len(diffs), 1),
        decisive_same / decisive if decisive else 1.0,
        (n - same) - (decisive - decisive_same),
    )


def _probs(pred: dict[str, Any]) -> dict[str, float]:
    if "scores" in pred:
        return {k: float(v) for k, v in pred["scores"].items()}
    if "top_k" in pred:
        return {d["label"]: float(d["score"]) for d in pred["top_k"]}
    return {str(pred["label"]): float(pred["score"])}
