"""Calibration in reports: the reliability diagram and the ECE lines of a markdown report.

The numbers come from ``textloop.tasks.classification.temperature`` (equal-mass ECE, temperature scaling);
this module only draws and words them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textloop.fileio import atomic_path


def plot_reliability(
    curves: dict[str, list[dict[str, float]]], png: Path, title: str = "Reliability diagram"
) -> None:
    """Draw one or more reliability curves (accuracy against confidence per bin) to ``png``.

    Args:
        curves: legend label -> bins as written by ``reliability_bins`` (``confidence``,
            ``accuracy``, ``n``). Several curves (e.g. before and after temperature scaling)
            share the axes.
        png: output path; written to a temporary file and renamed.
        title: plot title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
    for (label, bins), marker in zip(curves.items(), "osD^v"):
        if not bins:
            continue
        ax.plot(
            [b["confidence"] for b in bins],
            [b["accuracy"] for b in bins],
            marker + "-",
            label=label,
            alpha=0.85,
        )
    ax.set_xlabel("mean confidence in bin (equal-mass bins)")
    ax.set_ylabel("accuracy in bin")
    lows = [b["confidence"] for bins in curves.values() for b in bins]
    low = max(0.0, min(lows, default=0.0) - 0.05)
    ax.set_xlim(low, 1.01)
    ax.set_ylim(low, 1.01)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    try:
        with atomic_path(png) as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)


def calibration_lines(split_metrics: dict[str, Any]) -> list[str]:
    """Markdown bullet lines: ECE (and before/after temperature scaling when one was fitted)."""
    cal = split_metrics.get("calibration")
    if not cal:
        return []
    lines = [
        f"- expected calibration error (ECE, {cal['n_bins']} {cal['binning']} bins): "
        f"{cal['ece']:.4f}"
    ]
    if "ece_before_temperature" in split_metrics:
        lines.append(
            f"- temperature scaling (T = {cal['temperature']:.3f}, fitted on validation): "
            f"ECE {split_metrics['ece_before_temperature']:.4f} before -> {cal['ece']:.4f} after"
        )
    return lines


def reliability_section(split: str, split_metrics: dict[str, Any], plots: Path) -> list[str]:
    """Markdown lines for one split's calibration, drawing ``plots/reliability_<split>.png``."""
    cal = split_metrics.get("calibration")
    if not cal or not cal.get("bins"):
        return []
    name = f"reliability_{split}.png"
    plot_reliability(
        {f"model (ECE {cal['ece']:.3f})": cal["bins"]}, plots / name, f"Reliability ({split})"
    )
    return [
        f"## Calibration ({split})",
        "",
        *calibration_lines(split_metrics),
        "",
        f"![reliability diagram](plots/{name})",
        "",
    ]
