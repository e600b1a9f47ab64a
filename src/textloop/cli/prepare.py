"""``textloop prepare``: clean, deduplicate and split raw text into a corpus directory.

    textloop prepare configs/prepare/news.yaml
    textloop prepare 'raw/**/*.jsonl.gz' --text-column body --label-column topic \\
        --dedup near --split 0.8,0.1,0.1 --output corpus/news
    textloop prepare raw/ --output shards/0 --num-shards 2 --shard-index 0   # on machine 0
    textloop prepare merge corpus/web shards/0 shards/1                        # after all shards
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

# flag -> dotted prepare-config key; flags override the YAML, --set overrides both
_FLAGS = {
    "output": "output",
    "format": "format",
    "txt_mode": "txt_mode",
    "text_column": "text_column",
    "label_column": "label_column",
    "encoding": "encoding",
    "on_error": "on_error",
    "num_proc": "num_proc",
    "num_shards": "num_shards",
    "shard_index": "shard_index",
    "dedup": "dedup.mode",
    "threshold": "dedup.threshold",
    "shingle_size": "dedup.shingle_size",
    "split": "split.fractions",
    "conflicts": "labels.conflicts",
}


def add_parser(sub: Any) -> list[str]:
    """Register ``prepare`` (and its ``merge`` form) on the subcommand parsers."""
    p = sub.add_parser(
        "prepare",
        help="clean, deduplicate and split raw text into a corpus (or: prepare merge OUT SHARD...)",
        description="Clean, deduplicate and split raw text files into a corpus directory. "
        "`textloop prepare merge OUT SHARD_DIR...` combines the shards of a --num-shards run.",
    )
    p.add_argument(
        "sources",
        nargs="*",
        metavar="CONFIG_OR_INPUT",
        help="a prepare YAML and/or inputs (files, dirs, globs, builtin:NAME[:SPLIT]); "
        "or `merge OUT SHARD_DIR...`",
    )
    p.add_argument("--output", help="corpus directory to create")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing corpus in --output"
    )
    p.add_argument("--format", choices=["auto", "txt", "jsonl", "json", "csv", "tsv", "parquet"])
    p.add_argument(
        "--txt-mode", choices=["line", "file"], help="txt: a document per line or per file"
    )
    p.add_argument("--text-column", help="field with the text (default 'text')")
    p.add_argument("--label-column", help="field with the label (labelled data)")
    p.add_argument("--encoding", help="encoding of text inputs (default utf-8)")
    p.add_argument(
        "--on-error",
        choices=["skip_records", "skip", "fail"],
        help="skip_records (default): skip+report bad records, stop at a truncated/corrupt file; "
        "skip: skip both; fail: stop at the first",
    )
    p.add_argument("--num-proc", type=int, help="worker processes on this machine")
    p.add_argument("--num-shards", type=int, help="machines sharing the inputs (then merge)")
    p.add_argument("--shard-index", type=int, help="this machine's slice, 0..num-shards-1")
    p.add_argument(
        "--dedup", choices=["none", "exact", "near"], help="deduplication (default near)"
    )
    p.add_argument("--threshold", type=float, help="near-duplicate Jaccard threshold (default 0.8)")
    p.add_argument(
        "--shingle-size", type=int, help="words per shingle of texts of 64+ words (default 5)"
    )
    p.add_argument("--split", help="train,validation[,test] fractions, e.g. 0.8,0.1,0.1")
    p.add_argument("--conflicts", choices=["drop", "keep_first"], help="same text, other labels")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any config key, e.g. clean.min_words=5",
    )
    return ["prepare"]


def _print_summary(manifest: dict[str, Any], path: Any, is_shard: bool) -> None:
    if is_shard:
        counts = manifest["info"]["counts"]
        print(
            f"shard {manifest['info']['shard_index']}/{manifest['info']['num_shards']}: "
            f"{counts['read']} records read, {counts['clean_out']} after cleaning"
        )
        print(f"shard dir: {path}  (combine all shards with `textloop prepare merge OUT SHARD...`)")
        return
    width = max(len(r["stage"]) for r in manifest["stages"])
    for row in manifest["stages"]:
        if row["removed"] or row.get("changed"):
            what = f"-{row['removed']}" if row["removed"] else f"changed {row['changed']}"
            print(f"{row['stage']:<{width}}  {what}")
    from textloop.data.prepare.report import broken_file_lines

    for line in broken_file_lines(manifest["errors"].get("unreadable_files", [])):
        print(f"warning: {line}", file=sys.stderr)
    splits = ", ".join(f"{k} {v['records']}" for k, v in manifest["splits"].items())
    print(f"{manifest['records_in']} records in, {manifest['records_out']} out ({splits})")
    print(f"corpus: {path}")
    print(f"report: {path}/report.md")


TERM_GRACE_S = 10  # after SIGTERM, how long an orderly exit may take before it is forced


def _on_sigterm(signum: int, frame: Any) -> None:
    """A plain kill becomes SystemExit, so the temp output is removed on the way out. If that
    exit is held up (a library's thread or worker pool at interpreter shutdown), SIGALRM forces
    it after ``TERM_GRACE_S``, removing the temp output first."""

    def force(_signum: int, _frame: Any) -> None:
        from textloop.data.prepare.pipeline import remove_active_temp_dirs

        remove_active_temp_dirs()
        os._exit(128 + signum)

    signal.signal(signal.SIGALRM, force)
    signal.alarm(TERM_GRACE_S)
    sys.exit(128 + signum)


def run(args: argparse.Namespace) -> int:
    """Run ``prepare`` or ``prepare merge``."""
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _run(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace) -> int:
    from textloop.data.prepare import load_prepare_config, merge, prepare
    from textloop.errors import ConfigError

    sources = list(args.sources)
    if sources and sources[0] == "merge":
        rest = sources[1:]
        output = args.output or (rest.pop(0) if rest else None)
        if not output or not rest:
            raise ConfigError("usage: textloop prepare merge OUT SHARD_DIR [SHARD_DIR ...]")
        result = merge(output, rest, overwrite=args.overwrite)
        _print_summary(result.manifest, result.path, False)
        return 0
    config = None
    if sources and sources[0].endswith((".yaml", ".yml")):
        config = sources.pop(0)
    extra: dict[str, Any] = {
        key: getattr(args, flag) for flag, key in _FLAGS.items() if getattr(args, flag) is not None
    }
    if sources:
        extra["inputs"] = sources
    if args.overwrite:
        extra["overwrite"] = True
    cfg = load_prepare_config(config, args.set, extra)
    result = prepare(cfg)
    _print_summary(result.manifest, result.path, result.is_shard)
    return 0
