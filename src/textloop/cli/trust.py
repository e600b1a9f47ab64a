"""``textloop explain`` and ``textloop audit``: thin shells over ``textloop.evaluation``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from textloop.evaluation.explain import DEFAULT_STEPS


def add_parser(sub: Any) -> list[str]:
    """Register explain and audit on the ``textloop`` subparsers."""
    e = sub.add_parser(
        "explain",
        help="word attributions (integrated gradients) for texts, or for each entity of a NER "
        "run, ranked or as HTML",
    )
    e.add_argument("run", help="run directory")
    e.add_argument("texts", nargs="*", help="texts to explain")
    e.add_argument("--input", help="file of texts to explain (any readable format)")
    e.add_argument("--text-column", help="text column of --input (default: the run's)")
    e.add_argument(
        "--target", help="explain this label instead of the predicted one (classification)"
    )
    e.add_argument(
        "--steps",
        type=int,
        default=DEFAULT_STEPS,
        help=f"integration steps (default {DEFAULT_STEPS})",
    )
    e.add_argument(
        "--output-kind",
        choices=["logit", "probability"],
        default="logit",
        help="attribute the target's logit (default) or its probability",
    )
    e.add_argument(
        "--top", type=int, default=10, help="words shown per text or entity (default 10)"
    )
    e.add_argument("--html", help="also write a colour-coded HTML page here")
    e.add_argument("--json", action="store_true", help="print the explanations as JSON lines")

    a = sub.add_parser(
        "audit", help="calibration, slices and counterfactual bias probes of a run on a data file"
    )
    a.add_argument("run", help="run directory")
    a.add_argument("--data", required=True, help="file, dir, glob or builtin:NAME[:SPLIT]")
    a.add_argument("--probes", help="probe file, e.g. configs/probes/identity_en.yaml")
    a.add_argument(
        "--slice",
        action="append",
        default=[],
        dest="slices",
        metavar="SPEC",
        help="column:NAME | regex:NAME=PATTERN | length (repeatable)",
    )
    a.add_argument("--output", help="report directory (default RUN/audit)")
    a.add_argument("--text-column", help="column with the text (default: the run's)")
    a.add_argument("--label-column", help="column with the label (default: the run's)")
    a.add_argument(
        "--deletion",
        type=int,
        default=0,
        metavar="N",
        help="explain the first N texts: completeness and deletion test (slow; e.g. 200)",
    )
    a.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="integration steps")
    a.add_argument(
        "--drop-invalid-rows",
        action="store_true",
        help="drop empty / non-UTF-8 rows instead of failing",
    )
    a.add_argument("--json", action="store_true", help="print the audit as JSON")
    return ["explain", "audit"]


def _texts(args: argparse.Namespace, run: Any) -> list[str]:
    from textloop.errors import ConfigError

    texts = list(args.texts)
    if args.input:
        from textloop.data.examples import select_columns
        from textloop.data.readers import read_table

        column = args.text_column or run.config.data.text_column
        sel = select_columns(read_table(args.input), {"text": (column, "--text-column")}, {}, False)
        texts += sel.values["text"]
    if not texts:
        raise ConfigError("give texts to explain or --input FILE")
    return texts


def _explain(args: argparse.Namespace) -> int:
    from textloop.evaluation.explain import explain, ranked_words, write_html
    from textloop.runs import load_run

    run = load_run(args.run)
    explanations = explain(
        run, _texts(args, run), target=args.target, steps=args.steps, output=args.output_kind
    )
    if args.html:
        write_html(explanations, args.html)
    if args.json:
        for e in explanations:
            print(json.dumps(e, ensure_ascii=False))
        return 0
    for e in explanations:
        if "entities" in e:
            _print_entities(e, args.top)
            continue
        c = e["completeness"]
        print(f"{e['text'][:100]!r}")
        print(
            f"  predicted {e['label']} ({e['score']:.3f}); explaining {e['target']} "
            f"({e['method']['output']}); completeness error {c['relative_error']:.2%}"
            + ("; text truncated" if e["truncated"] else "")
        )
        for rank, w in enumerate(ranked_words(e, args.top), 1):
            print(f"  {rank:>3}. {w['word']:<24} {w['attribution']:+.4f}")
    if args.html:
        print(f"html: {args.html}")
    return 0


def _print_entities(explanation: dict[str, Any], top: int) -> None:
    from textloop.evaluation.explain import ranked_words

    print(f"{explanation['text'][:100]!r}")
    if not explanation["entities"]:
        print("  no entities")
    for e in explanation["entities"]:
        c = e["completeness"]
        print(
            f"  {e['label']} {e['text']!r} [{e['start']}, {e['end']}) ({e['score']:.3f}); "
            f"completeness error {c['relative_error']:.2%}"
            + ("; text truncated" if e["truncated"] else "")
        )
        for rank, w in enumerate(ranked_words(e, top), 1):
            print(f"    {rank:>3}. {w['word']:<24} {w['attribution']:+.4f}")


def _audit(args: argparse.Namespace) -> int:
    from textloop.evaluation.audit import audit
    from textloop.runs import load_run

    result = audit(
        load_run(args.run),
        args.data,
        probes=args.probes,
        slices=args.slices,
        output=args.output,
        text_column=args.text_column,
        label_column=args.label_column,
        deletion_examples=args.deletion,
        steps=args.steps,
        drop_invalid_rows=args.drop_invalid_rows,
    )
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
        return 0
    print(
        f"n={result['n']}"
        + (f"  accuracy {result['accuracy']:.4f}" if "accuracy" in result else "")
    )
    cal = result.get("calibration")
    if cal:
        line = f"ECE {cal['ece']:.4f}"
        if "ece_before_temperature" in cal:
            line += f" (T={cal['temperature']:.3f}; {cal['ece_before_temperature']:.4f} without)"
        print(line)
    for s in result.get("slices", [])[:5]:
        print(f"slice {s['slice']}: n={s['n']} accuracy {s['accuracy']:.4f}")
    for name, g in result.get("probes", {}).get("groups", {}).items():
        print(
            f"probe {name}: {g['n_pairs']} pairs, flip rate {g['flip_rate']:.3f}, "
            f"mean gap {g['mean_gap']:.4f}, worst gap {g['worst_gap']:.4f}"
        )
    if "attributions" in result:
        c = result["attributions"]["completeness"]
        print(
            f"completeness: {c['share_within']:.1%} of {c['n']} texts within {c['tolerance']:.0%}"
        )
    print(f"report: {result['output']}/audit.md")
    return 0


def run(args: argparse.Namespace) -> int:
    """Dispatch ``explain`` / ``audit``."""
    return _explain(args) if args.command == "explain" else _audit(args)
