"""Are the attributions faithful? Completeness statistics and the deletion test.

Deletion test (after Samek et al. 2017 and DeYoung et al. 2020, "ERASER": comprehensiveness):
for each explained text, delete its ``k`` highest-attributed words and, separately, ``k`` words
drawn at random (seeded) from the same attributed window; re-predict both. Faithful attributions
lower the predicted class's probability, and flip the prediction, more than random deletions.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

DEFAULT_KS = (1, 3, 5, 10)
COMPLETENESS_TOLERANCE = 0.05


def completeness_summary(
    explanations: Sequence[dict[str, Any]], tolerance: float = COMPLETENESS_TOLERANCE
) -> dict[str, Any]:
    """Distribution of the relative completeness error over explanations.

    Returns:
        ``n``, ``median``, ``p90``, ``p95``, ``max`` and ``share_within`` (the share of
        explanations whose error is at most ``tolerance``), plus ``tolerance``.
    """
    err = np.array([e["completeness"]["relative_error"] for e in explanations], dtype=float)
    if not len(err):
        return {"n": 0, "tolerance": tolerance}
    return {
        "n": len(err),
        "median": float(np.median(err)),
        "p90": float(np.quantile(err, 0.9)),
        "p95": float(np.quantile(err, 0.95)),
        "max": float(err.max()),
        "share_within": float((err <= tolerance).mean()),
        "tolerance": tolerance,
    }


def remove_words(text: str, spans: Sequence[tuple[int, int]]) -> str:
    """``text`` without the character ``spans``, whitespace runs collapsed to one space.

    Example:
        >>> remove_words("the food was cold", [(4, 8)])
        'the was cold'
    """
    kept, pos = [], 0
    for start, end in sorted(spans):
        kept.append(text[pos:start])
        pos = max(pos, end)
    kept.append(text[pos:])
    return re.sub(r"\s+", " ", "".join(kept)).strip()


def deletion_test(
    explanations: Sequence[dict[str, Any]],
    predict_proba: Callable[[list[str]], np.ndarray],
    labels: Sequence[str],
    ks: Sequence[int] = DEFAULT_KS,
    seed: int = 0,
) -> dict[str, Any]:
    """Delete the top-``k`` attributed words vs ``k`` random words; compare the effect.

    Args:
        explanations: from ``explain`` (each needs ``text``, ``label``, ``words``).
        predict_proba: texts -> (N, C) class probabilities (``class_probabilities``).
        labels: the class names, in the model's order.
        ks: numbers of words to delete; an example takes part for a ``k`` only if it has more
            than ``k`` attributed words.
        seed: seeds the random deletions (one stream per example).

    Returns:
        ``{"k": {k: {"n", "top": {"mean_drop", "flip_rate"}, "random": {...},
        "top_beats_random"}}, "seed"}`` where ``mean_drop`` is the mean fall in the probability
        of the originally predicted class and ``top_beats_random`` the share of examples where
        the top-k deletion lowered it more than the random one.
    """
    index = {lab: i for i, lab in enumerate(labels)}
    texts, meta = [], []
    for n, e in enumerate(explanations):
        words = e["words"]
        rng = random.Random(seed * 1_000_003 + n)
        order = sorted(range(len(words)), key=lambda j: words[j]["attribution"], reverse=True)
        for k in ks:
            if len(words) <= k:
                continue
            for kind, chosen in (("top", order[:k]), ("random", rng.sample(range(len(words)), k))):
                spans = [(words[j]["start"], words[j]["end"]) for j in chosen]
                texts.append(remove_words(e["text"], spans))
                meta.append((n, k, kind))
    originals = predict_proba([e["text"] for e in explanations])
    probs = predict_proba(texts) if texts else np.zeros((0, len(labels)))
    drops: dict[tuple[int, str], list[float]] = {}
    flips: dict[tuple[int, str], list[bool]] = {}
    per_example: dict[tuple[int, int], dict[str, float]] = {}
    for (n, k, kind), p in zip(meta, probs):
        c = index[explanations[n]["label"]]
        drop = float(originals[n, c] - p[c])
        drops.setdefault((k, kind), []).append(drop)
        flips.setdefault((k, kind), []).append(int(p.argmax()) != int(originals[n].argmax()))
        per_example.setdefault((n, k), {})[kind] = drop
    out: dict[str, Any] = {}
    for k in ks:
        if (k, "top") not in drops:
            continue
        pairs = [v for (n_, k_), v in per_example.items() if k_ == k]
        out[str(k)] = {
            "n": len(drops[(k, "top")]),
            **{
                kind: {
                    "mean_drop": float(np.mean(drops[(k, kind)])),
                    "flip_rate": float(np.mean(flips[(k, kind)])),
                }
                for kind in ("top", "random")
            },
            "top_beats_random": float(np.mean([v["top"] > v["random"] for v in pairs])),
        }
    return {"k": out, "seed": seed, "n_examples": len(explanations)}


def deletion_table(result: dict[str, Any]) -> list[str]:
    """Markdown table of a ``deletion_test`` result."""
    lines = [
        "| k words deleted | n | prob. drop: top-k | random k | flip rate: top-k | random k "
        "| top-k hurts more |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for k, r in result["k"].items():
        lines.append(
            f"| {k} | {r['n']} | {r['top']['mean_drop']:.4f} | {r['random']['mean_drop']:.4f} "
            f"| {r['top']['flip_rate']:.3f} | {r['random']['flip_rate']:.3f} "
            f"| {r['top_beats_random']:.1%} |"
        )
    return lines
