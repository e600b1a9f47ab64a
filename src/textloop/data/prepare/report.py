"""The corpus's ``manifest.json`` (machine-readable) and ``report.md`` (with a length histogram)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from textloop.data.prepare.clean import CHANGE_STAGES, DROP_STAGES
from textloop.data.prepare.finalize import FINAL_STAGES, Outcome
from textloop.data.prepare.summary import LENGTH_BINS

MANIFEST_FORMAT = "textloop-prepared-corpus"
_MAX_LISTED_FILES = 10_000
_SNIPPET = 240


def _versions() -> dict[str, str]:
    found = {}
    for pkg in ("textloop", "datasets", "datasketch", "pyarrow"):
        try:
            found[pkg] = version(pkg)
        except PackageNotFoundError:
            found[pkg] = "not installed"
    return found


def broken_file_lines(unreadable_files: list[dict[str, Any]]) -> list[str]:
    """One sentence per input file that broke off (``on_error: skip``)."""
    return [
        f"{f['path']} breaks off at line {f['from_line']}: the rest of the file is unreadable "
        f"(truncated or corrupt); {f['records_read']} record(s) were read from it"
        for f in unreadable_files
    ]


def stage_table(counts: dict[str, Any]) -> list[dict[str, Any]]:
    """Records in and out of every stage, in pipeline order."""
    rows = []
    current = counts["read"]
    rows.append(
        {
            "stage": "read",
            "in": current,
            "out": current - counts["read_errors"],
            "removed": counts["read_errors"],
        }
    )
    current -= counts["read_errors"]
    for name in CHANGE_STAGES:
        rows.append(
            {
                "stage": name,
                "in": current,
                "out": current,
                "removed": 0,
                "changed": counts.get(name, 0),
            }
        )
    for name in (*DROP_STAGES, *FINAL_STAGES):
        removed = int(counts.get(name, 0))
        rows.append({"stage": name, "in": current, "out": current - removed, "removed": removed})
        current -= removed
    return rows


def build_manifest(
    config: dict[str, Any],
    info: dict[str, Any],
    outcome: Outcome,
    files: dict[str, list[str]],
    out_dir: Path,
    seconds: dict[str, float],
) -> dict[str, Any]:
    """The manifest; writes ``inputs.jsonl`` next to it when there are too many files to list."""
    counts = {**info["counts"], **{k: v for k, v in outcome.counts.items() if isinstance(v, int)}}
    inputs: dict[str, Any] = {
        "n_files": len(info["files"]),
        "bytes": int(sum(f["bytes"] for f in info["files"])),
        "ignored_files": info["n_ignored_files"],
    }
    if len(info["files"]) <= _MAX_LISTED_FILES:
        inputs["files"] = info["files"]
    else:
        with (out_dir / "inputs.jsonl").open("w", encoding="utf-8") as f:
            for entry in info["files"]:
                f.write(json.dumps(entry, ensure_ascii=False) + "\n")
        inputs["files_listed_in"] = "inputs.jsonl"
    splits = {name: {**entry, "files": files[name]} for name, entry in outcome.splits.items()}
    return {
        "format": MANIFEST_FORMAT,
        "version": 2,  # 2: input columns kept; textloop's own are _tl_id, _tl_source
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
        "config": config,
        "labelled": config.get("label_column") is not None,
        "columns": [],  # set once the output is written
        "inputs": inputs,
        "errors": {
            "skipped_records": counts["read_errors"],
            "unreadable_files": info.get("unreadable_files", []),
            "first": info["errors"],
            "all_in": "errors.jsonl",
        },
        "stages": stage_table(counts),
        "records_in": counts["read"],
        "records_out": int(sum(s["records"] for s in outcome.splits.values())),
        "splits": splits,
        "labels": outcome.labels,
        "dedup": {
            "mode": config["dedup"]["mode"],
            "threshold": config["dedup"]["threshold"],
            "lsh": info.get("lsh"),
            "candidate_pairs": outcome.counts.get("near_candidate_pairs", 0),
            "verified_pairs": outcome.counts.get("near_verified_pairs", 0),
            "clusters": {
                k: {"clusters": v["clusters"], "removed": v["removed"]}
                for k, v in outcome.clusters.items()
            },
            "all_in": "duplicates.jsonl",
        },
        "leakage_removed": outcome.counts.get("leakage_by_split", {}),
        "shards": info["num_shards"],
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
    }


def _snippet(text: str | None) -> str:
    text = " ".join((text or "").split())
    text = text if len(text) <= _SNIPPET else text[:_SNIPPET] + "…"
    return text.replace("|", "\\|") or "(empty)"


def _around_change(before: str, after: str) -> tuple[str, str]:
    """Both texts from a little before their first difference, so the change is visible."""
    same = next(
        (i for i, (x, y) in enumerate(zip(before, after)) if x != y), min(len(before), len(after))
    )
    start = max(same - 60, 0)
    return ("…" if start else "") + before[start:], ("…" if start else "") + after[start:]


def write_histogram(info: dict[str, Any], outcome: Outcome, path: Path) -> None:
    """Two panels: characters per input record, words per output record by split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    centres = np.sqrt(LENGTH_BINS[:-1] * LENGTH_BINS[1:])
    widths = np.diff(LENGTH_BINS)
    left.bar(centres, info["input_chars_hist"], width=widths, color="#888", align="center")
    left.set(xscale="log", title="input records: characters", xlabel="chars", ylabel="records")
    for name, hist in outcome.words_hist.items():
        right.step(centres, hist, where="mid", label=f"{name} ({sum(hist)})")
    right.set(
        xscale="log",
        title="output records: words",
        xlabel="words (a CJK character = 1)",
        ylabel="records",
    )
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(
    manifest: dict[str, Any], info: dict[str, Any], outcome: Outcome, path: Path
) -> None:
    """A Markdown report: what each stage removed or changed, with examples; splits; labels."""
    lines = [
        "# Prepared corpus",
        "",
        f"{manifest['records_in']} records read from {manifest['inputs']['n_files']} file(s) "
        f"({manifest['inputs']['bytes'] / 1e6:.1f} MB); {manifest['records_out']} kept.",
        f"Config: dedup {manifest['dedup']['mode']} (Jaccard >= {manifest['dedup']['threshold']}), "
        f"split {manifest['config']['split']['fractions']} by content hash.",
        "",
        "## Stages",
        "",
        "| stage | in | out | removed | changed |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in manifest["stages"]:
        lines.append(
            f"| {row['stage']} | {row['in']} | {row['out']} | {row['removed']} | {row.get('changed', '')} |"
        )
    lines += ["", "## Splits", ""]
    labelled = manifest["labelled"]
    names = outcome.labels.get("names", [])
    header = "| split | records |" + "".join(f" {n} |" for n in names)
    lines += [header, "|---|---:|" + "---:|" * len(names)]
    for split, entry in outcome.splits.items():
        per = entry.get("labels", {})
        lines.append(
            f"| {split} | {entry['records']} |" + "".join(f" {per.get(n, 0)} |" for n in names)
        )
    if manifest["leakage_removed"]:
        lines += [
            "",
            f"Leakage check removed from evaluation splits: {manifest['leakage_removed']}.",
        ]
    if labelled:
        lines += [
            "",
            "## Labels",
            "",
            f"Distribution before the global stages: {outcome.labels.get('before', {})}.",
            f"Texts with conflicting labels: {outcome.labels.get('conflict_groups', 0)} group(s), "
            f"policy `{manifest['config']['labels']['conflicts']}`.",
            f"Classes too rare to split (< {manifest['config']['labels']['min_per_class']} records): "
            f"{outcome.labels.get('rare_classes') or 'none'} (policy `{manifest['config']['labels']['rare_classes']}`).",
        ]
    lines += ["", "## Duplicate clusters", ""]
    for kind, summary in outcome.clusters.items():
        lines.append(
            f"**{kind}**: {summary['clusters']} cluster(s), {summary['removed']} record(s) removed; all in `duplicates.jsonl`."
        )
        lines.append("")
        for c in summary["largest"]:
            lines.append(
                f"- size {c['size']}: kept `{c['kept']['location']}` — {_snippet(c['kept']['text'])}"
            )
            for r in c["removed"]:
                lines.append(f"  - removed `{r['location']}` — {_snippet(r['text'])}")
        lines.append("")
    lines += ["## Examples by stage", ""]
    examples = {**info["examples"], **outcome.examples}
    for stage in (*CHANGE_STAGES, *DROP_STAGES, *FINAL_STAGES):
        shown = examples.get(stage) or []
        if not shown:
            continue
        lines += [f"### {stage}", ""]
        for ex in shown:
            if "before" in ex:
                before, after = _around_change(ex["before"] or "", ex["after"] or "")
                lines.append(f"- `{ex['location']}`: {_snippet(before)} → {_snippet(after)}")
            else:
                lines.append(f"- `{ex['location']}`: {_snippet(ex['text'])}")
        lines.append("")
    lines += ["## Unreadable records", ""]
    errors = manifest["errors"]
    lines.append(f"{errors['skipped_records']} record(s) skipped; all in `errors.jsonl`.")
    lines += [f"- {line}" for line in broken_file_lines(errors.get("unreadable_files", []))]
    for e in errors["first"][:20]:
        lines.append(f"- `{e['location']}`: {e['error']}")
    lines += ["", "## Lengths", "", "![length histogram](length_histogram.png)", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
