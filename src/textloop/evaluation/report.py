"""``report.md`` for a run: headline metrics, per-class table, learning curve, confusion matrix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from textloop.evaluation.calibration import reliability_section
from textloop.evaluation.fonts import font_note, label_ticks
from textloop.fileio import atomic_path, write_text_atomic


def _plot_learning_curve(log_path: Path, png: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not log_path.is_file():
        return False
    rows = [json.loads(ln) for ln in log_path.read_text().splitlines() if ln.strip()]
    train = [(r["step"], r["loss"]) for r in rows if r["kind"] == "train"]
    evals = [r for r in rows if r["kind"] == "eval"]
    if not train and not evals:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss", color="tab:blue", alpha=0.8)
    if evals:
        ax.plot(
            [r["step"] for r in evals],
            [r["loss"] for r in evals],
            "o-",
            label="validation loss",
            color="tab:orange",
        )
        ax2 = ax.twinx()
        # the task's main score: entity / answer F1, macro-F1 for classification, else accuracy
        key = next(k for k in ("f1", "macro_f1", "accuracy", "loss") if k in evals[0])
        ax2.plot(
            [r["step"] for r in evals],
            [r[key] for r in evals],
            "s--",
            color="tab:green",
            label=f"validation {key}",
        )
        ax2.set_ylabel(key)
        ax2.set_ylim(0, 1.02)
        ax2.legend(loc="center right")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.legend(loc="upper right")
    ax.set_title("Learning curve")
    fig.tight_layout()
    try:
        with atomic_path(png) as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
    return True


def _plot_confusion(
    matrix: list[list[int]], labels: list[str], png: Path, title: str
) -> str | None:
    """Write the confusion matrix plot; returns the key of numbered ticks (``fonts``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cm = np.asarray(matrix)
    size = max(4.0, 0.5 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(cm, cmap="Blues")
    ticks, font, key = label_ticks(labels)
    ax.set_xticks(range(len(labels)), ticks, rotation=45, ha="right", fontproperties=font)
    ax.set_yticks(range(len(labels)), ticks, fontproperties=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(labels) <= 30:
        top = cm.max() or 1
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                ax.text(
                    j,
                    i,
                    str(cm[i, j]),
                    ha="center",
                    va="center",
                    color="white" if cm[i, j] > top / 2 else "black",
                    fontsize=8,
                )
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    try:
        with atomic_path(png) as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
    return key


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


_HEADLINES: dict[str, tuple[tuple[str, str], ...]] = {
    "qa": (
        ("exact_match", "EM"),
        ("f1", "F1"),
        ("has_answer_f1", "answerable F1"),
        ("no_answer_accuracy", "no-answer accuracy"),
    ),
    "ner": (
        ("f1", "entity F1"),
        ("precision", "P"),
        ("recall", "R"),
        ("macro_f1", "macro-F1"),
        ("token_accuracy", "token accuracy"),
    ),
    "classification": (("accuracy", "accuracy"), ("macro_f1", "macro-F1")),
    "language_model": (
        ("perplexity", "perplexity"),
        ("chrf", "chrF"),
        ("bleu", "BLEU"),
        ("rougeL", "ROUGE-L"),
        ("loss", "loss"),
    ),
}


def metrics_kind(metrics: dict[str, Any]) -> str:
    """Which task's metrics a split's dict holds: qa, ner, language_model or classification."""
    if "exact_match" in metrics:
        return "qa"
    if "per_type" in metrics:
        return "ner"
    if "perplexity" in metrics:
        return "language_model"
    return "classification"


def summary_line(metrics: dict[str, Any]) -> str:
    """One line of a split's headline metrics, e.g. ``entity F1 0.9012  P 0.90 ... (n=3250)``."""
    keys = _HEADLINES[metrics_kind(metrics)]
    parts = [f"{label} {metrics[k]:.4f}" for k, label in keys if isinstance(metrics.get(k), float)]
    return "  ".join(parts) + f"  (n={metrics.get('n')})"


def metrics_table(metrics: dict[str, Any]) -> str:
    """Markdown table of per-class precision / recall / F1 / support."""
    lines = ["| class | precision | recall | F1 | support |", "| --- | ---: | ---: | ---: | ---: |"]
    for label, m in metrics.get("per_class", {}).items():
        lines.append(
            f"| {label} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} | {m['support']} |"
        )
    return "\n".join(lines)


def ner_sections(split: str, metrics: dict[str, Any]) -> list[str]:
    """Markdown for NER: per-type P/R/F1 (seqeval, strict IOB2) and the most frequent errors."""
    lines = [f"## Per-type entity metrics ({split})", ""]
    lines += ["| type | precision | recall | F1 | support |", "| --- | ---: | ---: | ---: | ---: |"]
    for etype, m in metrics.get("per_type", {}).items():
        lines.append(
            f"| {etype} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} | {m['support']} |"
        )
    lines.append(
        f"| micro | {metrics.get('precision', 0):.4f} | {metrics.get('recall', 0):.4f} | "
        f"{metrics.get('f1', 0):.4f} | |"
    )
    errors = metrics.get("errors", {})
    if errors.get("counts"):
        lines += ["", f"## Errors ({split})", "", "| error kind | count |", "| --- | ---: |"]
        lines += [f"| {k.replace('_', ' ')} | {n} |" for k, n in errors["counts"].items()]
        lines += ["", "Most frequent:", "", "| kind | gold type | predicted type | count |"]
        lines += ["| --- | --- | --- | ---: |"]
        lines += [
            f"| {t['kind'].replace('_', ' ')} | {t['gold']} | {t['pred']} | {t['count']} |"
            for t in errors.get("top", [])
        ]
        for kind, examples in errors.get("examples", {}).items():
            lines += ["", f"Examples of {kind.replace('_', ' ')}:", ""]
            lines += [
                f"- gold {e['gold']}, predicted {e['pred']}: “{e['sentence']}”" for e in examples
            ]
    lines.append("")
    return lines


def recipe_section(train: dict[str, Any]) -> list[str]:
    """ "Why these settings": each recipe-chosen training key with its reason, the keys the user
    set, and what a time budget did."""
    recipe = train.get("recipe")
    if not recipe:
        return []

    def val(v: Any) -> str:
        return f"{v:g}" if isinstance(v, float) else str(v)

    parts = ["## Why these settings", ""]
    settings, reasons = recipe.get("settings", {}), recipe.get("reasons", {})
    for key, why in reasons.items():
        parts.append(f"- `train.{key}: {val(settings.get(key))}`: {why}")
    user = [f"`train.{k}: {val(settings.get(k))}`" for k in recipe.get("user_set", [])]
    if user:
        parts.append(f"- set in the config: {', '.join(user)}")
    budget = train.get("time_budget")
    if budget:
        line = f"- time budget {budget['seconds']:g} s: planned {budget['planned_steps']} steps"
        if budget.get("fitted_steps"):
            line += f", fitted to {budget['fitted_steps']} from the first steps' speed"
        if budget.get("reached"):
            line += f"; the budget ran out at step {budget['steps']} (best checkpoint kept)"
        parts.append(line)
    parts.append("")
    return parts


def write_report(out: Path, metrics: dict[str, Any], labels: list[str]) -> None:
    """Write ``report.md`` and its PNGs (``plots/``) into a run directory."""
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    parts = [f"# Run report: {out.name}", ""]
    train = metrics.get("train", {})
    data = metrics.get("data", {})
    parts += [
        "## Summary",
        "",
        f"- training: {train.get('steps')} steps in {train.get('seconds')} s "
        f"({train.get('examples_per_s')} examples/s, {train.get('device')}, {train.get('precision')}, "
        f"{train.get('threads')} threads); best step {train.get('best_step')} by {train.get('best_metric')}",
        f"- data: {data.get('n_train')} train / {data.get('n_validation')} validation / {data.get('n_test')} test "
        f"examples; {len(labels)} labels",
        f"- truncated to {data.get('truncated', {}).get('max_seq_len')} tokens: "
        + ", ".join(f"{k} {v}" for k, v in data.get("truncated", {}).items() if k != "max_seq_len"),
    ]
    if data.get("dropped_rows"):
        parts.append(f"- dropped invalid rows: {data['dropped_rows']}")
    parts.append("")
    parts += recipe_section(train)
    kind = metrics_kind(metrics.get("validation", {}))
    headline = {
        "ner": ("f1", "precision", "recall", "macro_f1", "token_accuracy", "loss"),
        "qa": (
            "exact_match",
            "f1",
            "has_answer_f1",
            "no_answer_accuracy",
            "null_threshold",
            "loss",
        ),
    }.get(
        kind, ("accuracy", "macro_f1", "micro_f1", "weighted_f1", "subset_accuracy", "loss", "ece")
    )
    parts += [
        "## Metrics",
        "",
        "| split | " + " | ".join(headline) + " |",
        "| --- |" + " ---: |" * len(headline),
    ]
    for split in ("validation", "test"):
        if split in metrics:
            parts.append(
                f"| {split} | "
                + " | ".join(_fmt(metrics[split].get(k, "")) for k in headline)
                + " |"
            )
    parts.append("")
    if _plot_learning_curve(out / "log.jsonl", plots / "learning_curve.png"):
        parts += ["## Learning curve", "", "![learning curve](plots/learning_curve.png)", ""]
    for split in ("test", "validation"):
        if split in metrics and kind == "ner":
            parts += ner_sections(split, metrics[split])
            break
        if split in metrics and kind == "classification":
            parts += [f"## Per-class metrics ({split})", "", metrics_table(metrics[split]), ""]
            if "confusion_matrix" in metrics[split]:
                key = _plot_confusion(
                    metrics[split]["confusion_matrix"],
                    labels,
                    plots / f"confusion_{split}.png",
                    f"Confusion matrix ({split})",
                )
                parts += [f"![confusion matrix]({'plots/confusion_' + split + '.png'})", ""]
                parts += font_note(key)
            parts += reliability_section(split, metrics[split], plots)
            break
    write_text_atomic(out / "report.md", "\n".join(parts))
