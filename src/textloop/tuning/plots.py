"""The study report's plots (matplotlib, PNG): optimisation history, pruning curves, parameter
importances, and a slice plot of the metric against each parameter."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from textloop.fileio import atomic_path
from textloop.tuning.space import Param


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, png: Path) -> Path:
    plt = _pyplot()
    try:
        fig.tight_layout()
        with atomic_path(png) as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
    return png


def _states(trials: Sequence[Any]) -> tuple[list[Any], list[Any]]:
    from optuna.trial import TrialState

    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.intermediate_values]
    return complete, pruned


def plot_history(trials: Sequence[Any], metric: str, maximize: bool, png: Path) -> Path | None:
    """Each trial's value by trial number, pruned trials at their last report, and the best so far."""
    complete, pruned = _states(trials)
    if not complete and not pruned:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    if complete:
        ax.plot([t.number for t in complete], [t.value for t in complete], "o", label="complete")
    if pruned:
        last = [t.intermediate_values[max(t.intermediate_values)] for t in pruned]
        ax.plot(
            [t.number for t in pruned], last, "x", color="tab:gray", label="pruned (last report)"
        )
    best, xs, ys = None, [], []
    for t in sorted(complete, key=lambda t: t.number):
        if best is None or (t.value > best if maximize else t.value < best):
            best = t.value
        xs.append(t.number)
        ys.append(best)
    if xs:
        ax.step(xs, ys, where="post", color="tab:red", label="best so far")
    default = [t for t in complete if t.user_attrs.get("default_recipe")]
    if default:
        ax.axhline(default[0].value, color="tab:green", ls=":", label="default recipe")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(f"validation {metric}")
    ax.set_title("Optimisation history")
    ax.legend(loc="best", fontsize=8)
    return _save(fig, png)


def plot_pruning(trials: Sequence[Any], metric: str, png: Path) -> Path | None:
    """Every trial's reported validation metric against training examples seen."""
    curves = [t for t in trials if t.intermediate_values]
    if not curves:
        return None
    from optuna.trial import TrialState

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for t in curves:
        steps = sorted(t.intermediate_values)
        pruned = t.state == TrialState.PRUNED
        ax.plot(
            steps,
            [t.intermediate_values[s] for s in steps],
            "--" if pruned else "-",
            color="tab:gray" if pruned else None,
            alpha=0.6 if pruned else 0.9,
            marker=".",
        )
    ax.set_xlabel("training examples seen")
    ax.set_ylabel(f"validation {metric}")
    ax.set_title("Learning curves (dashed grey: pruned)")
    return _save(fig, png)


def plot_importances(importances: dict[str, float], png: Path) -> Path | None:
    if not importances:
        return None
    plt = _pyplot()
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.5 * len(names) + 1.5))
    ax.barh(names, [importances[n] for n in names], color="tab:blue")
    ax.set_xlabel("importance (fANOVA, share of the metric's variance)")
    ax.set_title("Parameter importances")
    return _save(fig, png)


def plot_slices(
    trials: Sequence[Any], space: Sequence[Param], metric: str, png: Path
) -> Path | None:
    """The metric of complete trials against each parameter (colour: trial number)."""
    complete, _ = _states(trials)
    if not complete:
        return None
    plt = _pyplot()
    cols = min(3, len(space))
    rows = math.ceil(len(space) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax, p in zip(axes.flat, space):
        pts = [(t.params[p.name], t.value, t.number) for t in complete if p.name in t.params]
        if p.choices:  # categorical: positions, labelled
            index = {c: i for i, c in enumerate(p.choices)}
            xs = [index.get(x, -1) for x, _, _ in pts]
            ax.set_xticks(range(len(p.choices)), [str(c) for c in p.choices])
        else:
            xs = [x for x, _, _ in pts]
            if p.log:
                ax.set_xscale("log")
        ax.scatter(xs, [v for _, v, _ in pts], c=[n for _, _, n in pts], cmap="viridis", s=24)
        ax.set_xlabel(p.name)
        ax.set_ylabel(f"validation {metric}")
    for ax in list(axes.flat)[len(space) :]:
        ax.axis("off")
    fig.suptitle("Slice plot")
    return _save(fig, png)
