"""Are the attributions faithful? Completeness statistics and the deletion test.

Deletion test (after Samek et al. 2017 and DeYoung et al. 2020, "ERASER": comprehensiveness):
for each explained text, delete its ``k`` highest-attributed words and, separately, ``k`` words
drawn at random (seeded) from the same attributed window; re-predict both. Faithful attributions
lower the predicted class's probability, and flip the prediction, more than random deletions.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator, Sequence
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
        for k, kind, chosen in _top_and_random(words, ks, random.Random(seed * 1_000_003 + n)):
            spans = [(words[j]["start"], words[j]["end"]) for j in chosen]
            texts.append(remove_words(e["text"], spans))
            meta.append((n, k, kind))
    originals = predict_proba([e["text"] for e in explanations])
    probs = predict_proba(texts) if texts else np.zeros((0, len(labels)))
    records = []
    for (n, k, kind), p in zip(meta, probs):
        c = index[explanations[n]["label"]]
        flipped = int(p.argmax()) != int(originals[n].argmax())
        records.append((n, k, kind, float(originals[n, c] - p[c]), flipped))
    return {"k": _by_k(records, ks), "seed": seed, "n_examples": len(explanations)}


def _by_k(
    records: Sequence[tuple[int, int, str, float, bool]], ks: Sequence[int]
) -> dict[str, Any]:
    """Per k: n, mean drop and flip rate of top-k vs random deletions, share top beats random."""
    drops: dict[tuple[int, str], list[float]] = {}
    flips: dict[tuple[int, str], list[bool]] = {}
    per_example: dict[tuple[int, int], dict[str, float]] = {}
    for n, k, kind, drop, flipped in records:
        drops.setdefault((k, kind), []).append(drop)
        flips.setdefault((k, kind), []).append(flipped)
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
    return out


def span_deletion_test(
    explanations: Sequence[dict[str, Any]],
    predict: Callable[[list[str]], list[dict[str, Any]]],
    ks: Sequence[int] = (1, 3),
    seed: int = 0,
) -> dict[str, Any]:
    """The deletion test for NER entities: delete context words, does the entity survive?

    For each explained entity, its ``k`` highest-attributed words *outside* the entity (deleting
    its own words removes it trivially) and, separately, ``k`` random words outside it are cut
    from the text; the entity is then looked up at its shifted offsets in the new prediction.

    Args:
        explanations: from ``explain_spans`` (each with ``text`` and ``entities``).
        predict: texts -> per text ``{"entities": [{"type", "start", "end", "score"}, ...]}``
            (``run.predict``).
        ks: context words to delete; an entity takes part for a ``k`` only if more than ``k``
            attributed words lie outside it.
        seed: seeds the random deletions (one stream per entity).

    Returns:
        As ``deletion_test``: per k, ``mean_drop`` is the mean fall of the entity's score (to
        0 when it is no longer found with the same type and words) and ``flip_rate`` the share
        of entities no longer found; plus ``n_entities``.
    """
    texts: list[str] = []
    meta: list[tuple[int, int, str, dict[str, Any], int, int]] = []
    entities = [(e["text"], x) for e in explanations for x in e["entities"]]
    for n, (text, ent) in enumerate(entities):
        words = [w for w in ent["words"] if w["end"] <= ent["start"] or w["start"] >= ent["end"]]
        for k, kind, chosen in _top_and_random(words, ks, random.Random(seed * 1_000_003 + n)):
            cut = sorted((words[j]["start"], words[j]["end"]) for j in chosen)
            # cut the words out, keeping the rest verbatim so the entity's offsets only shift
            kept, pos = [], 0
            for a, b in cut:
                kept.append(text[pos:a])
                pos = b
            shift = sum(b - a for a, b in cut if b <= ent["start"])
            texts.append("".join(kept) + text[pos:])
            meta.append((n, k, kind, ent, ent["start"] - shift, ent["end"] - shift))
    records = []
    for (n, k, kind, ent, start, end), pred in zip(meta, predict(texts) if texts else []):
        found = [
            x["score"]
            for x in pred["entities"]
            if (x["type"], x["start"], x["end"]) == (ent["label"], start, end)
        ]
        records.append((n, k, kind, ent["score"] - (found[0] if found else 0.0), not found))
    return {"k": _by_k(records, ks), "seed": seed, "n_entities": len(entities)}


def _top_and_random(
    words: list[dict[str, Any]], ks: Sequence[int], rng: random.Random
) -> Iterator[tuple[int, str, list[int]]]:
    """(k, "top" | "random", word indices) for each k the text has more than k words for:
    its k highest-attributed words, then k words drawn at random."""
    order = sorted(range(len(words)), key=lambda j: words[j]["attribution"], reverse=True)
    for k in ks:
        if len(words) <= k:
            continue
        yield k, "top", order[:k]
        yield k, "random", rng.sample(range(len(words)), k)


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
