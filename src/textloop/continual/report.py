"""The update report (``continual/<name>/updates/v<N>/report.json`` + ``report.md``), its one
writer, and the lines that summarise an update or a dry run for people (the CLI prints them).

How to read it when the update added labels: forgetting is judged in the label space production
knew (``regression (old labels)``: the candidate's argmax over the old labels only); the
``regression (all labels)`` row is what a user of the grown model sees on earlier traffic, lower
by the earlier examples the candidate now sends to a new label, which are listed per (old, new)
pair under "Old<->new confusions".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from textloop.fileio import atomic_dir


def write_update_report(parent: Path, name: str, report: dict[str, Any]) -> Path:
    """Write ``parent/name/report.json`` and ``report.md`` (the folder appears whole)."""
    parent.mkdir(parents=True, exist_ok=True)
    final = parent / name
    with atomic_dir(final) as tmp:
        (tmp / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
        (tmp / "report.md").write_text(update_markdown(report), encoding="utf-8")
    return final


def _drops(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    return {
        "accuracy_drop": before["accuracy"] - after["accuracy"],
        "recall_drop": {
            lab: m["recall"] - after["per_class"].get(lab, {}).get("recall", 0.0)
            for lab, m in before["per_class"].items()
        },
    }


def forgetting(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Forgetting as the gate judges it (top level: in the old label space when labels were
    added) and in the full label space."""
    if not before.get("n"):
        return {}
    if "regression_old_labels" not in after:
        return {**_drops(before, after["regression"]), "label_space": "same"}
    return {
        **_drops(before, after["regression_old_labels"]),
        "label_space": "old",
        "full_label_space": _drops(before, after["regression"]),
    }


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def _score_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """(row name, key in before/after/reference) of the accuracy table, judged rows first."""
    if "regression_old_labels" in report["after"]:
        return [
            ("regression, old labels (judged)", "regression_old_labels"),
            ("regression, all labels (reported)", "regression"),
            ("new data (held out)", "new"),
        ]
    return [("regression", "regression"), ("new data (held out)", "new")]


def _accuracy(scores: dict[str, Any] | None, key: str, fallback: str | None = None) -> str:
    if scores is None:
        return "-"
    found = scores.get(key) or (scores.get(fallback) if fallback else None)
    return _num(found["accuracy"]) if found else "-"


def confusion_lines(old_to_new: dict[str, Any], max_pairs: int | None = None) -> list[str]:
    """One line per (old gold, new predicted) pair: count and example texts."""
    pairs = old_to_new["pairs"][:max_pairs] if max_pairs else old_to_new["pairs"]
    lines = [
        f"{p['gold']} -> {p['predicted']}: {p['count']} (e.g. "
        + "; ".join(repr(t) for t in p["examples"])
        + ")"
        for p in pairs
    ]
    if max_pairs and len(old_to_new["pairs"]) > max_pairs:
        lines.append(f"... {len(old_to_new['pairs']) - max_pairs} more pairs in the report")
    return lines


def update_markdown(report: dict[str, Any]) -> str:
    """The update report for people: plan, accuracies, per class, confusions, decision."""
    p, dec, after = report["plan"], report["decision"], report["after"]
    ref = report.get("reference")
    lines = [
        f"# Update of {p['name']}: v{p['from_version']} -> v{report.get('version')} "
        f"({'ACCEPTED' if dec['accepted'] else 'REJECTED'}, stage {report.get('stage')})",
        "",
        f"- strategy {p['strategy']}; new data {p['new_data']}: {p['n_new_train']} train / "
        f"{p['n_new_holdout']} held out; replayed {p['n_replay']} of the buffer's "
        f"{p.get('n_buffer', '-')}; regression set {p['n_regression']}",
        f"- new labels: {', '.join(p['new_labels']) or 'none'}",
        f"- training: {report['train']['steps']} steps in {report['train']['seconds']} s",
    ]
    if ref is not None:
        rt = ref["train"]
        lines.append(
            "- joint reference (plain fine-tuning on the whole buffer + the new data): "
            + (
                "the candidate itself (it replays the whole buffer)"
                if rt.get("same_as_candidate")
                else f"{rt['steps']} steps in {rt['seconds']} s"
            )
        )
    lines += [f"- gate: {note}" for note in p.get("gate", {}).get("notes", [])[:2]]
    head = "| accuracy | production | candidate |" + (" joint reference |" if ref else "")
    lines += ["", head, "|---|---:|---:|" + ("---:|" if ref else "")]
    for title, key in _score_rows(report):
        row = (
            f"| {title} | {_accuracy(report['before'], key, 'regression')} | "
            f"{_accuracy(after, key)} |"
        )
        lines.append(row + (f" {_accuracy(ref, key)} |" if ref else ""))
    grown = "regression_old_labels" in after
    judged = after.get("regression_old_labels", after["regression"])
    lines += ["", "## Earlier classes (regression set)", ""]
    if grown:
        lines += [
            "| class | recall before | recall after, old labels (judged) | "
            "recall after, all labels | support |",
            "|---|---:|---:|---:|---:|",
        ]
    else:
        lines += ["| class | recall before | recall after | support |", "|---|---:|---:|---:|"]
    for lab, m in report["before"]["regression"]["per_class"].items():
        cells = [f"{judged['per_class'].get(lab, {}).get('recall', 0.0):.4f}"]
        if grown:
            cells.append(f"{after['regression']['per_class'].get(lab, {}).get('recall', 0.0):.4f}")
        lines.append(f"| {lab} | {m['recall']:.4f} | {' | '.join(cells)} | {m['support']} |")
    recall = dec.get("info", {}).get("new_labels_recall")
    if recall:
        lines += ["", "## New labels (held-out new data)", "", "| label | recall | support |"]
        lines.append("|---|---:|---:|")
        for lab, r in sorted(recall.items(), key=lambda kv: kv[1]):
            lines.append(f"| {lab} | {r:.4f} | {after['new']['per_class'][lab]['support']} |")
    if grown:
        o2n = after["old_to_new"]
        lines += [
            "",
            "## Old<->new confusions",
            "",
            f"{o2n['n_to_new']} of {o2n['n_old_gold']} earlier regression examples "
            f"({o2n['share']:.1%}) are predicted as a new label by the candidate. These are "
            "reported, not counted as forgetting: in the old label space the candidate's "
            "answer is judged above.",
            "",
        ]
        if o2n["pairs"]:
            lines += ["| earlier label | predicted new label | count | examples |"]
            lines.append("|---|---|---:|---|")
            for pair in o2n["pairs"]:
                examples = " / ".join(t.replace("|", "\\|") for t in pair["examples"])
                lines.append(
                    f"| {pair['gold']} | {pair['predicted']} | {pair['count']} | {examples} |"
                )
    lines += ["", "## Decision", ""]
    lines += [
        f"- {c['check']}: {c['before']:.4f} -> {c['after']:.4f} "
        f"{'ok' if c['passed'] else 'FAILED'} ({c['rule']})"
        for c in dec["checks"]
    ]
    lines.append("")
    return "\n".join(lines)


def summary_lines(report: dict[str, Any], max_pairs: int = 5) -> list[str]:
    """A finished update in a few lines: accuracies (both label spaces when labels were added),
    new labels' recall, the reference, the top old<->new confusions and every failed check."""
    p, dec, before, after = report["plan"], report["decision"], report["before"], report["after"]
    ref = report.get("reference")
    lines = [
        f"{'accepted' if dec['accepted'] else 'rejected'}: {p['name']} v{report.get('version')} "
        f"(stage {report.get('stage')})"
    ]
    if "regression_old_labels" in after:
        lines.append(
            f"  {len(p['new_labels'])} new labels: forgetting judged in the old label space "
            f"({len(p['old_labels'])} labels, restricted argmax)"
        )
    for title, key in _score_rows(report):
        line = f"  {title:<35} {_accuracy(before, key, 'regression')} -> {_accuracy(after, key)}"
        lines.append(line + (f"  (joint reference {_accuracy(ref, key)})" if ref else ""))
    info = dec.get("info", {})
    if info.get("new_labels_recall"):
        recall = info["new_labels_recall"]
        worst = min(recall, key=recall.get)
        lines.append(
            f"  new labels' recall: mean {info['new_labels_mean_recall']:.4f}, lowest "
            f"{worst} {recall[worst]:.4f}"
        )
    if "old_to_new" in after:
        o2n = after["old_to_new"]
        lines.append(
            f"  old->new confusions (reported): {o2n['n_to_new']} of {o2n['n_old_gold']} "
            f"earlier examples ({o2n['share']:.1%}) predicted as a new label"
        )
        lines += [f"    {line}" for line in confusion_lines(o2n, max_pairs)]
    lines += [f"  failed: {reason}" for reason in dec["reasons"]]
    return lines


def dry_run_lines(plan: dict[str, Any], before: dict[str, Any]) -> list[str]:
    """What an update would do and how the gate will judge it, before any training."""
    lines = [
        f"dry run: nothing written. Would update {plan['name']} v{plan['from_version']} with "
        f"strategy {plan['strategy']}:",
        f"  new data {plan['new_data']}: {plan['n_new_train']} to train on, "
        f"{plan['n_new_holdout']} held out for the gate; replay {plan['n_replay']} of the "
        f"buffer's {plan.get('n_buffer', '-')}; ~{plan['steps']} steps",
        f"  new labels: {', '.join(plan['new_labels']) or 'none'}",
    ]
    sched = plan.get("schedule")
    if sched:
        lines.append(
            f"  schedule: {sched['epochs']} epochs, batch {sched['batch_size']}, lr "
            f"{sched['lr']:g}, head lr {sched['head_lr']:g} (unset keys from the default recipe)"
        )
    lines += [
        f"  production now: regression accuracy {_num(before['regression']['accuracy'])} "
        f"(n={before['regression']['n']}), new-data accuracy {_num(before['new']['accuracy'])}",
    ]
    gate = plan.get("gate", {})
    lines += [f"  gate: {note}" for note in gate.get("notes", [])]
    if gate.get("can_pass") is False:
        lines.append("  predicted decision: REJECTED whatever the candidate learns")
    return lines
