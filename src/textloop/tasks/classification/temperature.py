"""Calibration of classifier scores: expected calibration error and temperature scaling.

Pure functions on arrays and tensors, so tasks (which may not import ``evaluation``) and the
reports can share them.

ECE uses *equal-mass* bins (each bin holds the same number of predictions, ties split by sort
order) rather than equal-width ones: a good classifier puts most predictions above 0.9, and
equal-width bins would leave most bins empty and one bin holding nearly everything
(Nixon et al. 2019, "Measuring Calibration in Deep Learning"; Roelofs et al. 2022).
Temperature scaling divides the logits by one scalar ``T > 0`` fitted on validation data by
minimising the negative log-likelihood (Guo et al. 2017, "On Calibration of Modern Neural
Networks"); it never changes the arg-max, so accuracy is unchanged.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_BINS = 10


def confidences_and_correct(
    probs: np.ndarray, targets: np.ndarray, multi_label: bool, threshold: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """The confidence of each decision and whether it was right.

    Single-label: one decision per example (the arg-max class, its probability).
    Multi-label: one yes/no decision per (example, label); the confidence is ``max(p, 1 - p)``.

    Args:
        probs: (N, C) class probabilities (softmax, or per-label sigmoid for multi-label).
        targets: (N,) class ids, or (N, C) multi-hot rows for multi-label.
        multi_label: how to read ``probs`` and ``targets``.
        threshold: multi-label decision threshold.

    Returns:
        ``(confidence, correct)``: two flat arrays of equal length, float and bool.
    """
    if multi_label:
        p = probs.reshape(-1)
        predicted = p >= threshold
        return np.where(predicted, p, 1.0 - p), predicted == (targets.reshape(-1) >= 0.5)
    return probs.max(axis=1), probs.argmax(axis=1) == targets


def reliability_bins(
    confidence: np.ndarray, correct: np.ndarray, n_bins: int = DEFAULT_BINS
) -> list[dict[str, float]]:
    """Equal-mass bins of (confidence, accuracy), sorted by confidence.

    Returns:
        One dict per non-empty bin: ``n``, ``confidence`` (mean), ``accuracy`` (mean),
        ``low`` and ``high`` (the confidence range it covers).
    """
    n = len(confidence)
    if n == 0:
        return []
    order = np.argsort(confidence, kind="stable")
    out = []
    for idx in np.array_split(order, min(n_bins, n)):
        c = confidence[idx]
        out.append(
            {
                "n": len(idx),
                "confidence": float(c.mean()),
                "accuracy": float(correct[idx].mean()),
                "low": float(c.min()),
                "high": float(c.max()),
            }
        )
    return out


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, n_bins: int = DEFAULT_BINS
) -> float:
    """ECE with equal-mass bins: ``sum_b (n_b / N) * |accuracy_b - confidence_b|``.

    Example:
        >>> conf, correct = np.array([0.9, 0.9, 0.6, 0.6]), np.array([1, 1, 1, 0])
        >>> round(expected_calibration_error(conf, correct, n_bins=2), 6)  # .5*.1 + .5*.1
        0.1
    """
    bins = reliability_bins(confidence, np.asarray(correct, dtype=float), n_bins)
    n = sum(b["n"] for b in bins)
    if not n:
        return 0.0
    return float(sum(b["n"] / n * abs(b["accuracy"] - b["confidence"]) for b in bins))


def probabilities(logits: torch.Tensor, multi_label: bool, temperature: float = 1.0) -> np.ndarray:
    """Softmax (or per-label sigmoid) of ``logits / temperature`` as a float64 array."""
    scaled = logits.double() / temperature
    p = torch.sigmoid(scaled) if multi_label else torch.softmax(scaled, dim=-1)
    return p.numpy()


def calibration_summary(
    logits: torch.Tensor,
    targets: torch.Tensor,
    multi_label: bool,
    temperature: float = 1.0,
    n_bins: int = DEFAULT_BINS,
) -> dict[str, Any]:
    """ECE and reliability bins of ``logits`` (scaled by ``temperature``) against ``targets``."""
    conf, correct = confidences_and_correct(
        probabilities(logits, multi_label, temperature), targets.numpy(), multi_label
    )
    bins = reliability_bins(conf, correct.astype(float), n_bins)
    return {
        "ece": expected_calibration_error(conf, correct, n_bins),
        "n_bins": n_bins,
        "binning": "equal-mass",
        "temperature": temperature,
        "bins": bins,
    }


def fit_temperature(
    logits: torch.Tensor, targets: torch.Tensor, multi_label: bool, max_iter: int = 200
) -> float:
    """The temperature ``T`` minimising the NLL of ``logits / T`` on held-out data.

    Optimises ``log T`` (so ``T`` stays positive) with L-BFGS, in float64.

    Args:
        logits: (N, C) validation logits.
        targets: (N,) class ids, or (N, C) multi-hot floats for multi-label.
        multi_label: sigmoid + binary cross-entropy instead of softmax + cross-entropy.
        max_iter: L-BFGS iterations.

    Returns:
        ``T`` (1.0 when there is nothing to fit).
    """
    if len(logits) == 0:
        return 1.0
    x = logits.detach().double()
    y = targets.double() if multi_label else targets.long()
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def nll() -> torch.Tensor:
        opt.zero_grad()
        scaled = x / log_t.exp()
        loss = (
            F.binary_cross_entropy_with_logits(scaled, y)
            if multi_label
            else F.cross_entropy(scaled, y)
        )
        loss.backward()
        return loss

    opt.step(nll)  # type: ignore[no-untyped-call]
    t = float(log_t.detach().exp())
    return t if math.isfinite(t) and t > 0 else 1.0
