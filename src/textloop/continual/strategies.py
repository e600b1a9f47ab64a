"""Active-learning strategies: which unlabelled texts are worth a label next.

Each strategy takes the model's class probabilities ``probs`` (N, C) over the candidate texts
(and, for ``diverse``, their sentence embeddings (N, H)) and returns the ``k`` chosen rows, best
first, each with the strategy's score and a human-readable reason.

- ``random``: a seeded uniform draw (the baseline every other strategy must beat).
- ``least-confidence``: the lowest top-class probability (score ``1 - p1``, higher first).
- ``margin``: the smallest gap between the two most probable classes (score ``p1 - p2``,
  lower first; Scheffer et al. 2001).
- ``entropy``: the highest entropy of the class distribution (score in nats, higher first).
- ``diverse``: uncertainty-weighted k-means (Zhdanov 2019, "Diverse mini-batch active
  learning", arXiv:1901.05954): keep the ``DIVERSE_PREFILTER * k`` lowest-margin candidates,
  cluster their L2-normalised embeddings into ``k`` clusters with each text weighted by its
  uncertainty ``1 - margin``, and take from each cluster the text closest to its centre. A batch
  of pure margin picks is often many near-copies of one confusion; one pick per cluster spreads
  the labels over the kinds of text the model is unsure about. With a cold model (every margin
  small) it degrades gracefully to plain k-means over the pool, the usual cold-start choice.

Ties are broken by a seeded permutation, so every strategy is deterministic given the seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Strategy = Literal["random", "least-confidence", "margin", "entropy", "diverse"]
STRATEGIES: tuple[str, ...] = ("random", "least-confidence", "margin", "entropy", "diverse")
# candidates the diverse strategy clusters, as a multiple of k (Zhdanov 2019 uses beta = 10)
DIVERSE_PREFILTER = 10


@dataclass
class Pick:
    """One chosen candidate: its row in ``probs``, the strategy's score and why it was chosen."""

    index: int
    score: float
    reason: str
    cluster: int | None = None
    cluster_size: int | None = None


def _top2(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices (N, 2) and probabilities (N, 2) of the two most probable classes per row."""
    if probs.shape[1] == 1:
        idx = np.zeros((len(probs), 2), dtype=int)
        return idx, np.concatenate([probs, np.zeros_like(probs)], 1)
    idx = np.argsort(-probs, axis=1, kind="stable")[:, :2]
    return idx, np.take_along_axis(probs, idx, 1)


def margins(probs: np.ndarray) -> np.ndarray:
    """``p1 - p2`` per row: 0 when the two best classes tie, 1 when the model is certain."""
    _, top = _top2(probs)
    return np.asarray(top[:, 0] - top[:, 1])


def entropies(probs: np.ndarray) -> np.ndarray:
    """Entropy (nats) of each row's class distribution."""
    p = np.clip(probs, 1e-12, 1.0)
    return np.asarray(-(probs * np.log(p)).sum(1))


def _order(scores: np.ndarray, descending: bool, seed: int) -> np.ndarray:
    """Row indices sorted by score, ties broken by a seeded permutation."""
    tiebreak = np.random.default_rng(seed).permutation(len(scores))
    key = -scores if descending else scores
    return np.lexsort((tiebreak, key))


def _margin_text(probs: np.ndarray, i: int, labels: Sequence[str]) -> str:
    idx, top = _top2(probs[i : i + 1])
    a, b = idx[0]
    return (
        f"margin {top[0, 0] - top[0, 1]:.3f} between {labels[a]} ({top[0, 0]:.2f}) "
        f"and {labels[b]} ({top[0, 1]:.2f})"
    )


def _reason(strategy: str, probs: np.ndarray, i: int, labels: Sequence[str]) -> str:
    p1 = float(probs[i].max())
    best = labels[int(probs[i].argmax())]
    if strategy == "least-confidence":
        return f"least confident: top label {best} at only {p1:.2f} (score {1 - p1:.3f})"
    if strategy == "margin":
        return _margin_text(probs, i, labels)
    if strategy == "entropy":
        h, h_max = float(entropies(probs[i : i + 1])[0]), float(np.log(probs.shape[1]))
        return f"entropy {h:.2f} of max {h_max:.2f} nats over {probs.shape[1]} labels; top {best} ({p1:.2f})"
    return f"random draw; model says {best} ({p1:.2f})"


def rank(
    strategy: str,
    probs: np.ndarray,
    labels: Sequence[str],
    k: int,
    seed: int = 0,
    embeddings: np.ndarray | None = None,
) -> list[Pick]:
    """The ``k`` candidates ``strategy`` picks, best first.

    Args:
        strategy: one of ``STRATEGIES``.
        probs: (N, C) class probabilities of the candidates.
        labels: the C class names (for the reasons).
        k: how many to pick (all N when k >= N).
        seed: seed of the random draw, of tie-breaking and of k-means.
        embeddings: (N, H) sentence embeddings; required by ``diverse``.

    Returns:
        The picks; ``score`` is the strategy's own measure (see the module docstring).

    Raises:
        ValueError: an unknown strategy, or ``diverse`` without embeddings (a caller's bug:
            the command-line choices and ``select`` check both first).
    """
    n = len(probs)
    k = min(k, n)
    if k <= 0:
        return []
    if strategy == "random":
        draw = np.random.default_rng(seed).random(n)
        order = np.argsort(draw, kind="stable")[:k]
        return [
            Pick(int(i), float(draw[i]), _reason(strategy, probs, int(i), labels)) for i in order
        ]
    if strategy == "least-confidence":
        scores, descending = 1.0 - probs.max(1), True
    elif strategy == "margin":
        scores, descending = margins(probs), False
    elif strategy == "entropy":
        scores, descending = entropies(probs), True
    elif strategy == "diverse":
        if embeddings is None:
            raise ValueError("the diverse strategy needs the model's embeddings")
        return _diverse(probs, labels, k, seed, embeddings)
    else:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    order = _order(scores, descending, seed)[:k]
    return [Pick(int(i), float(scores[i]), _reason(strategy, probs, int(i), labels)) for i in order]


def _diverse(
    probs: np.ndarray, labels: Sequence[str], k: int, seed: int, embeddings: np.ndarray
) -> list[Pick]:
    """Uncertainty-weighted k-means over the lowest-margin candidates (module docstring)."""
    from sklearn.cluster import KMeans

    margin = margins(probs)
    pool = _order(margin, False, seed)[: min(len(probs), DIVERSE_PREFILTER * k)]
    z = embeddings[pool].astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True).clip(min=1e-12)
    weight = 1.0 - margin[pool] + 1e-3  # a certain text still counts a little
    km = KMeans(n_clusters=k, n_init=1, random_state=seed).fit(z, sample_weight=weight)
    assign = km.labels_
    dist = np.linalg.norm(z - km.cluster_centers_[assign], axis=1)
    picks = []
    for c in range(k):
        members = np.flatnonzero(assign == c)
        if not len(members):  # k-means can leave a cluster empty on duplicate points
            continue
        best = members[np.lexsort((members, dist[members]))[0]]
        i = int(pool[best])
        picks.append(
            Pick(
                i,
                float(margin[i]),
                f"closest to the centre of cluster {c} ({len(members)} of {len(pool)} uncertain "
                f"texts); {_margin_text(probs, i, labels)}",
                cluster=c,
                cluster_size=len(members),
            )
        )
    taken = {p.index for p in picks}
    for i in pool:  # fill up after empty clusters, by margin
        if len(picks) >= k:
            break
        if int(i) not in taken:
            picks.append(Pick(int(i), float(margin[i]), _margin_text(probs, int(i), labels)))
    picks.sort(key=lambda p: (p.score, p.index))  # most uncertain cluster representative first
    return picks[:k]


__all__ = ["DIVERSE_PREFILTER", "STRATEGIES", "Pick", "Strategy", "entropies", "margins", "rank"]
