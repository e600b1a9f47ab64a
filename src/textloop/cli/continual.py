"""``textloop drift``, ``textloop update`` and ``textloop feedback export``: thin shells."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from textloop.cli.flags import Flag, add_config_flags, flag_values
from textloop.continual.config import UpdateConfig

# the update config keys `update` offers as flags (type, choices and help from the fields)
UPDATE_FLAGS: tuple[str | Flag, ...] = (
    "strategy",
    "replay.replay_size",
    "reference",
    "epochs",
    "lr",
    "head_lr",
    "batch_size",
    "seed",
    "text_column",
    "label_column",
    "drop_invalid_rows",
    "gate.promote",
    "track",
)

_REGISTRY_HELP = "registry directory (default $TEXTLOOP_REGISTRY or ./registry)"


def _registry_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--registry", default=os.environ.get("TEXTLOOP_REGISTRY", "registry"), help=_REGISTRY_HELP
    )
    p.add_argument("--name", required=True, help="registered model name")


def add_parser(sub: Any) -> list[str]:
    """Register drift, update and feedback on the ``textloop`` subparsers."""
    p = sub.add_parser("drift", help="is recent traffic shifted from the model's reference data?")
    _registry_arg(p)
    p.add_argument("--current", help="file of recent texts (default: the logged traffic)")
    p.add_argument("--reference", help="file of reference texts (default: frozen regression set)")
    p.add_argument("--text-column", help="text column of --current / --reference files")
    p.add_argument("--window", type=int, default=500, help="most texts per window (default 500)")
    p.add_argument("--since-hours", type=float, help="only traffic of the last N hours")
    p.add_argument("--alpha", type=float, default=0.05, help="false-alarm rate (default 0.05)")
    p.add_argument("--permutations", type=int, default=500, help="MMD permutations")
    p.add_argument("--seed", type=int, default=0, help="seed of the permutations (default 0)")
    p.add_argument("--output", help="report folder (default under <registry>/continual/)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--exit-code", action="store_true", help="exit 1 when drift is detected")

    u = sub.add_parser("update", help="retrain on new labelled data, gate, promote or keep")
    _registry_arg(u)
    u.add_argument("--new-data", required=True, help="labelled file, dir, glob or builtin:NAME")
    u.add_argument("config", nargs="?", help="update YAML (optional; see docs/continual.md)")
    u.set_defaults(config_flags=add_config_flags(u, UpdateConfig, UPDATE_FLAGS))
    u.add_argument("--dry-run", action="store_true", help="show what would happen; write nothing")
    u.add_argument("--actor", help="who (for the audit log; default: the OS user)")
    u.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any update config key, e.g. gate.max_class_drop=0.1",
    )
    u.add_argument("--json", action="store_true", help="print the report as JSON")

    f = sub.add_parser("feedback", help="labelled feedback collected by the server")
    fsub = f.add_subparsers(dest="feedback_command", required=True, help="feedback action")
    e = fsub.add_parser("export", help="write the feedback as a labelled JSONL for update")
    _registry_arg(e)
    e.add_argument("--output", required=True, help="JSONL file to write")
    e.add_argument("--since-hours", type=float, help="only feedback of the last N hours")
    return ["drift", "update", "feedback"]


def run(args: argparse.Namespace) -> int:
    """Dispatch to the command ``args.command`` names."""
    return {"drift": _drift, "update": _update, "feedback": _feedback}[args.command](args)


def _since(hours: float | None) -> float | None:
    import time

    return time.time() - hours * 3600 if hours else None


def _drift(args: argparse.Namespace) -> int:
    from textloop.continual.monitor import check_drift

    report, folder = check_drift(
        args.registry,
        args.name,
        current=args.current,
        reference=args.reference,
        window=args.window,
        since=_since(args.since_hours),
        alpha=args.alpha,
        n_permutations=args.permutations,
        seed=args.seed,
        output=args.output,
        text_column=args.text_column,
    )
    if args.json:
        print((folder / "report.json").read_text(encoding="utf-8"))
    else:
        v = report["verdict"]
        print(
            f"{'DRIFT' if v['drift'] else 'no drift'} (alpha {v['alpha']}; fired: "
            f"{', '.join(v['fired']) or 'none'})"
        )
        for name, t in report["tests"].items():
            if "skipped" in t:
                print(f"  {name:<10} skipped: {t['skipped']}")
            else:
                print(
                    f"  {name:<10} {t['test']:<18} effect {t['effect_size']:.4g}  "
                    f"p={t['p_value']:.4g}"
                )
        rates = report["rates"]
        if "oov_rate" in rates:
            print(
                f"  out-of-vocabulary words {rates['oov_rate']:.3f} "
                f"(reference halves: {rates['oov_rate_baseline']:.3f})"
            )
        if rates["unseen_labels"]:
            print(f"  feedback labels the model lacks: {', '.join(rates['unseen_labels'])}")
        print(f"report: {folder / 'report.md'}")
    return 1 if args.exit_code and report["verdict"]["drift"] else 0


def _update(args: argparse.Namespace) -> int:
    from textloop.continual.config import load_update_config
    from textloop.continual.report import dry_run_lines, summary_lines
    from textloop.continual.update import update

    cfg = load_update_config(args.config, args.set, flag_values(args, args.config_flags))
    result = update(args.registry, args.name, args.new_data, cfg, args.dry_run, args.actor)
    p = result.plan
    if args.json:
        body = result.report if not result.dry_run else {"plan": p, "before": result.before}
        print(json.dumps(body, indent=2, ensure_ascii=False))
        return 0
    lines = dry_run_lines(p, result.before) if result.dry_run else summary_lines(result.report)
    for line in lines:
        print(line)
    if not result.dry_run:
        print(f"report: {result.report_dir / 'report.md' if result.report_dir else '-'}")
    return 0


def _feedback(args: argparse.Namespace) -> int:
    from textloop.artifacts.feedback import FeedbackStore

    store = FeedbackStore(args.registry)
    n = store.export_feedback(args.name, args.output, since=_since(args.since_hours))
    print(f"wrote {n} labelled rows to {args.output}")
    return 0
