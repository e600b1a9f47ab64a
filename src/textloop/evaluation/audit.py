"""``audit``: calibration, slices, counterfactual bias probes and (optionally) the attribution
deletion test of a classification run on a data file, written as a report directory.

The directory (default ``RUN/audit/``) holds ``audit.md``, ``audit.json`` and ``plots/*.png``;
it is built in a temporary sibling and renamed into place, so a failed audit leaves the previous
one intact.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from textloop.data.examples import select_columns
from textloop.data.readers import read_table
from textloop.errors import DataError
from textloop.evaluation.calibration import plot_reliability
from textloop.evaluation.explain import DEFAULT_STEPS, _check_model, class_probabilities, explain
from textloop.evaluation.faithfulness import completeness_summary, deletion_table, deletion_test
from textloop.evaluation.probes import load_probes, run_probes
from textloop.evaluation.slices import build_slices, slice_metrics, slice_table
from textloop.fileio import atomic_dir, atomic_path, make_parent_dirs
from textloop.tasks.classification.temperature import calibration_summary, probabilities


def audit(
    run: Any,
    data: str,
    *,
    probes: str | Path | None = None,
    slices: Sequence[str] = (),
    output: str | Path | None = None,
    text_column: str | None = None,
    label_column: str | None = None,
    deletion_examples: int = 0,
    steps: int = DEFAULT_STEPS,
    drop_invalid_rows: bool = False,
) -> dict[str, Any]:
    """Audit a classification run on a data file and write a report directory.

    Args:
        run: a classification run (``textloop.load_run``).
        data: file, dir, glob or builtin:NAME[:SPLIT]. With a label column: calibration and
            slices; the texts also feed the bias probes (those that hold a probe term).
        probes: a probe file (``configs/probes/identity_en.yaml``); none: no bias section.
        slices: slice specs (``column:NAME``, ``regex:NAME=PATTERN``, ``length``).
        output: report directory (default ``RUN/audit``); replaced atomically.
        text_column, label_column: override the run's column names.
        deletion_examples: explain this many texts (integrated gradients) and add the
            completeness statistics and the deletion test; 0 skips it (it is the slow part).
        steps: integration steps for those explanations.
        drop_invalid_rows: drop empty / undecodable rows instead of failing.

    Returns:
        The audit as written to ``audit.json`` (plus ``output``: the directory).

    Raises:
        ConfigError: a bad probe file or slice spec (checked before any prediction).
        DataError: missing columns, bad rows, unknown labels; a pair model.
        ModelError: an exported (ONNX) run when ``deletion_examples`` > 0.

    Example:
        >>> audit(load_run("runs/reviews"), "test.csv", probes="configs/probes/identity_en.yaml")
    """
    task = run.task
    if deletion_examples:
        _check_model(run)
    if getattr(task, "pair", False) or getattr(task, "name", None) != "classification":
        kind = "sentence-pair" if getattr(task, "pair", False) else "non-classification"
        raise DataError(f"{run.path}: audit is not available for {kind} runs yet")
    probe_file = load_probes(probes) if probes is not None else None
    d = run.config.data
    table = read_table(data)
    text_col = text_column or d.text_column
    label_col = label_column or d.label_column
    has_labels = any(label_col in r for r in table.rows)
    if slices and not has_labels:
        raise DataError(f"--slice needs labels: column {label_col!r} not in {table.source}")
    other = {"label": (label_col, "--label-column")} if has_labels else {}
    sel = select_columns(table, {"text": (text_col, "--text-column")}, other, drop_invalid_rows)
    texts: list[str] = sel.values["text"]
    kept = set(sel.locations)
    rows = [r for r, loc in zip(table.rows, table.locations) if loc in kept]
    slice_masks = build_slices(slices, texts, rows, table.source) if slices else {}

    bs = run.config.train.eval_batch_size
    result: dict[str, Any] = {"run": str(run.path), "data": table.source, "n": len(texts)}
    encoded = task.encode(texts, None)
    logits = task.logits_for(run.model, encoded, bs) if texts else torch.zeros(0, len(task.labels))
    temperature = float(getattr(task, "temperature", 1.0))
    probs = probabilities(logits, task.multi_label, temperature)
    curves: dict[str, list[dict[str, float]]] = {}
    if has_labels:
        from textloop.tasks.classification.task import parse_labels

        labels = parse_labels(sel.values["label"], task.multi_label, task.label_separator)
        targets = task.targets_for(labels, table.source, sel.locations)
        y = torch.tensor(targets, dtype=torch.float32 if task.multi_label else torch.long)
        cal = calibration_summary(logits, y, task.multi_label, temperature)
        result["calibration"] = {"ece": cal["ece"], "temperature": temperature, "bins": cal["bins"]}
        curves[f"as served (T={temperature:.2f}, ECE {cal['ece']:.3f})"] = cal["bins"]
        if temperature != 1.0:
            raw = calibration_summary(logits, y, task.multi_label)
            result["calibration"]["ece_before_temperature"] = raw["ece"]
            curves[f"no temperature (ECE {raw['ece']:.3f})"] = raw["bins"]
        y_np = y.numpy()
        right = (probs >= 0.5) == (y_np >= 0.5) if task.multi_label else probs.argmax(1) == y_np
        result["accuracy"] = float(right.all(axis=1).mean() if task.multi_label else right.mean())
        if slice_masks:
            result["slices"] = slice_metrics(slice_masks, y_np, probs, task.multi_label)

    def predict_proba(xs: list[str]) -> np.ndarray:
        return class_probabilities(run, xs, bs)

    if probe_file is not None:
        result["probes"] = {
            "file": str(probes),
            "groups": run_probes(probe_file, texts, predict_proba, task.labels, task.multi_label),
        }
    if deletion_examples:
        expl = explain(run, texts[:deletion_examples], steps=steps)
        result["attributions"] = {
            "steps": steps,
            "completeness": completeness_summary(expl),
            "deletion": deletion_test(expl, predict_proba, task.labels),
        }
    out = Path(output) if output is not None else Path(run.path) / "audit"
    _write(out, result, curves)
    result["output"] = str(out)
    return result


def _plot_probes(groups: dict[str, Any], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(groups)
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.5 * len(names) + 2), sharey=True)
    ys = np.arange(len(names))
    axes[0].barh(ys, [groups[n]["flip_rate"] for n in names], color="tab:red")
    axes[0].set_xlabel("prediction flip rate")
    axes[0].set_yticks(ys, names)
    axes[1].barh(ys, [groups[n]["mean_gap"] for n in names], color="tab:blue", label="mean")
    axes[1].plot([groups[n]["worst_gap"] for n in names], ys, "k|", markersize=14, label="worst")
    axes[1].set_xlabel("score gap (max |Δ class probability|)")
    axes[1].legend(loc="lower right", fontsize=8)
    for ax in axes:
        ax.set_xlim(0, 1)
    fig.suptitle("Counterfactual bias probes")
    fig.tight_layout()
    try:
        with atomic_path(png) as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)


def _markdown(result: dict[str, Any], has_plots: dict[str, bool]) -> str:
    parts = [f"# Audit: {result['run']}", "", f"- data: {result['data']} ({result['n']} texts)"]
    if "accuracy" in result:
        parts.append(f"- accuracy: {result['accuracy']:.4f}")
    parts.append("")
    cal = result.get("calibration")
    if cal:
        parts += ["## Calibration", ""]
        parts.append(f"- expected calibration error (equal-mass bins): {cal['ece']:.4f}")
        if "ece_before_temperature" in cal:
            parts.append(
                f"- temperature scaling T = {cal['temperature']:.3f}: ECE "
                f"{cal['ece_before_temperature']:.4f} before -> {cal['ece']:.4f} after"
            )
        parts += ["", "![reliability diagram](plots/reliability.png)", ""]
    if result.get("slices"):
        parts += ["## Slices (worst first)", "", *slice_table(result["slices"]), ""]
    probes = result.get("probes")
    if probes:
        groups = probes["groups"]
        parts += [
            "## Counterfactual bias probes",
            "",
            f"Probe file: `{probes['file']}`. A pair is a text and the same text with one term "
            "group's terms swapped; the score gap is the largest change in any class probability.",
            "",
            "| group | cases | pairs | flip rate | mean gap | worst gap |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name, g in sorted(groups.items(), key=lambda kv: -kv[1]["flip_rate"]):
            parts.append(
                f"| {name} | {g['n_cases']} | {g['n_pairs']} | {g['flip_rate']:.3f} "
                f"| {g['mean_gap']:.4f} | {g['worst_gap']:.4f} |"
            )
        parts.append("")
        if has_plots.get("probes"):
            parts += ["![bias probes](plots/probes.png)", ""]
        for name, g in groups.items():
            if g["flipped"]:
                parts += [f"### Flips in {name} ({g['n_flipped']} pairs; largest gaps first)", ""]
                for p in g["flipped"][:5]:
                    parts.append(
                        f"- {p['variant_a']} -> {p['variant_b']} ({p['source']}, gap {p['gap']:.3f}): "
                        f"{p['label_a']} -> {p['label_b']}: “{_short(p['text_b'])}”"
                    )
                parts.append("")
    attr = result.get("attributions")
    if attr:
        c = attr["completeness"]
        parts += [
            "## Attribution faithfulness",
            "",
            f"Integrated gradients, {attr['steps']} steps, [PAD] baseline, on the first {c['n']} "
            f"texts. Completeness error (|sum of attributions − output difference| / |output "
            f"difference|): median {c['median']:.4f}, 95th percentile {c['p95']:.4f}; "
            f"{c['share_within']:.1%} of texts within {c['tolerance']:.0%}.",
            "",
            "Deletion test: delete each text's top-k attributed words, or k random ones.",
            "",
            *deletion_table(attr["deletion"]),
            "",
        ]
    return "\n".join(parts)


def _short(text: str, n: int = 140) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _write(out: Path, result: dict[str, Any], curves: dict[str, list[dict[str, float]]]) -> None:
    out = out.resolve()
    make_parent_dirs(out)
    with atomic_dir(out) as tmp:
        (tmp / "plots").mkdir()
        has_plots = {}
        if curves:
            plot_reliability(curves, tmp / "plots" / "reliability.png")
        if result.get("probes", {}).get("groups"):
            _plot_probes(result["probes"]["groups"], tmp / "plots" / "probes.png")
            has_plots["probes"] = True
        (tmp / "audit.json").write_text(json.dumps(result, indent=2, ensure_ascii=False), "utf-8")
        (tmp / "audit.md").write_text(_markdown(result, has_plots), "utf-8")
