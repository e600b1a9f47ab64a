"""``textloop prepare``: clean, deduplicate and split raw text into a corpus directory.

    textloop prepare configs/prepare/news.yaml
    textloop prepare 'raw/**/*.jsonl.gz' --text-column body --label-column topic \\
        --dedup near --split 0.8,0.1,0.1 --output corpus/news
    textloop prepare raw/ --output shards/0 --num-shards 2 --shard-index 0   # on machine 0
    textloop prepare merge corpus/web shards/0 shards/1                        # after all shards
    textloop prepare configs/prepare/news.yaml --engine ray --ray-address auto  # on a Ray cluster
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

from textloop.cli.flags import Flag, add_config_flags, flag_values
from textloop.data.prepare.config import PrepareConfig

# the prepare config keys offered as flags (type, choices and help from the config fields)
PREPARE_FLAGS: tuple[str | Flag, ...] = (
    "output",
    "overwrite",
    "format",
    "txt_mode",
    "text_column",
    "label_column",
    "encoding",
    "on_error",
    "num_proc",
    "engine",
    Flag("ray.address", "ray_address"),
    Flag("ray.num_cpus", "ray_num_cpus"),
    "num_shards",
    "shard_index",
    Flag("dedup.mode", "dedup"),
    "dedup.threshold",
    "dedup.shingle_size",
    Flag("split.fractions", "split", "train,validation[,test] fractions, e.g. 0.8,0.1,0.1"),
    Flag("labels.conflicts", "conflicts"),
)


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
    p.set_defaults(config_flags=add_config_flags(p, PrepareConfig, PREPARE_FLAGS))
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


def _default_sigterm_in_child() -> None:
    """A process forked while ``_on_sigterm`` is installed (a ``datasets`` worker pool) gets the
    default SIGTERM back: a Python handler runs only when the process returns to the
    interpreter, so a pool worker blocked on its queue's lock never ran it, and
    ``Pool.terminate`` waited for that worker forever (seen on a 1 GB corpus); the handler would
    also have removed the parent's temp output from the child."""
    if signal.getsignal(signal.SIGTERM) is _on_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


os.register_at_fork(after_in_child=_default_sigterm_in_child)


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
        result = merge(output, rest, overwrite=bool(args.overwrite))
        _print_summary(result.manifest, result.path, False)
        return 0
    config = None
    if sources and sources[0].endswith((".yaml", ".yml")):
        config = sources.pop(0)
    extra = flag_values(args, args.config_flags)
    if sources:
        extra["inputs"] = sources
    cfg = load_prepare_config(config, args.set, extra)
    result = prepare(cfg)
    _print_summary(result.manifest, result.path, result.is_shard)
    return 0
