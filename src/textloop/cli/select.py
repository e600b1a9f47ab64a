"""``textloop select``: the texts worth labelling next, from a file or from served traffic."""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from textloop.continual.strategies import STRATEGIES


def add_parser(sub: Any) -> list[str]:
    """Register ``select`` on the ``textloop`` subparsers."""
    p = sub.add_parser(
        "select",
        help="active learning: write a queue of the texts most worth labelling next",
        description="Score unlabelled texts with a model and queue the k most worth labelling "
        "(see docs/active-learning.md). Give a RUN and --pool FILE, or --registry/--name and "
        "--from-traffic.",
    )
    p.add_argument("run", nargs="?", help="run directory whose model scores the pool")
    p.add_argument(
        "--pool", help="unlabelled texts: csv / tsv / jsonl / txt / parquet / dir / glob"
    )
    p.add_argument("--text-column", help="--pool: column with the text (default: the run's)")
    p.add_argument("--id-column", default="id", help="--pool: column with row ids (default id)")
    p.add_argument(
        "--registry",
        default=os.environ.get("TEXTLOOP_REGISTRY"),
        help="--from-traffic: registry directory (default $TEXTLOOP_REGISTRY)",
    )
    p.add_argument("--name", help="--from-traffic: registered model name")
    p.add_argument(
        "--stage",
        default="production",
        choices=("production", "staging", "archived"),
        help="--from-traffic: the newest version in this stage scores (default production)",
    )
    p.add_argument("--version", type=int, help="--from-traffic: this version instead of --stage")
    p.add_argument(
        "--from-traffic",
        action="store_true",
        help="select from the logged traffic (the server must run with --log-text)",
    )
    p.add_argument("--since-hours", type=float, help="--from-traffic: only the last N hours")
    p.add_argument("--k", type=int, default=200, help="texts to queue (default 200)")
    p.add_argument(
        "--strategy",
        default="margin",
        choices=STRATEGIES,
        help="how to choose (default margin; diverse: uncertainty-weighted k-means)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of draws and ties (default 0)")
    p.add_argument("--top-k", type=int, default=3, help="model labels shown per text (default 3)")
    p.add_argument("--batch-size", type=int, help="inference batch size (default: the run's)")
    p.add_argument("--output", required=True, help="queue file to write (JSONL)")
    return ["select"]


def run(args: argparse.Namespace) -> int:
    """Check the source flags, select, write the queue and print a summary."""
    from textloop.continual.selection import select_from_pool, select_from_traffic, write_queue
    from textloop.errors import ConfigError
    from textloop.fileio import check_output_path

    check_output_path(args.output)  # before the work: a bad --output fails at once
    if args.from_traffic:
        if args.run or args.pool:
            raise ConfigError("give either RUN --pool FILE or --from-traffic, not both")
        if not args.registry or not args.name:
            raise ConfigError("--from-traffic needs --registry DIR and --name NAME")
        result = select_from_traffic(
            args.registry,
            args.name,
            args.stage,
            args.version,
            time.time() - args.since_hours * 3600 if args.since_hours else None,
            args.k,
            args.strategy,
            args.seed,
            args.top_k,
            args.batch_size,
        )
    else:
        if not args.run or not args.pool:
            raise ConfigError(
                "give a RUN directory and --pool FILE, or --registry/--name with --from-traffic"
            )
        result = select_from_pool(
            args.run,
            args.pool,
            args.k,
            args.strategy,
            args.seed,
            args.text_column,
            args.top_k,
            args.batch_size,
            args.id_column,
        )
    write_queue(result, args.output)
    for note in result.notes:
        print(f"note: {note}")
    print(result.summary())
    print(f"queue: {args.output}")
    return 0
