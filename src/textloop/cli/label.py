"""``textloop label``: the labelling page, and labels in and out (training files, Label Studio).

    textloop label QUEUE --run RUN [--store labels.sqlite] [--port 8090] [--api-key-file KEY]
    textloop label export --store labels.sqlite --name NAME --format jsonl|csv|label-studio \\
        --output FILE [--queue QUEUE]
    textloop label import EXPORT.json --store labels.sqlite --name NAME  (or --output FILE)
"""

from __future__ import annotations

import argparse
import getpass
import secrets
from pathlib import Path
from typing import Any

from textloop.cli.deploy import read_api_key
from textloop.errors import ConfigError

DEFAULT_STORE = "labels.sqlite"
ACTIONS = ("export", "import")


def add_parser(sub: Any) -> list[str]:
    """Register ``label`` on the ``textloop`` subparsers."""
    p = sub.add_parser(
        "label",
        help="label texts in a web page; export/import labels (training file, Label Studio)",
        description="`textloop label QUEUE --run RUN` serves the labelling page; "
        "`textloop label export ...` and `textloop label import FILE ...` move labels.",
    )
    p.add_argument("what", help="the queue file to label, or 'export' / 'import'")
    p.add_argument("file", nargs="?", help="import: the Label Studio JSON export to read")
    p.add_argument(
        "--store",
        default=DEFAULT_STORE,
        help=f"feedback store: a SQLite file or a registry directory (default {DEFAULT_STORE})",
    )
    p.add_argument(
        "--name", help="model name the labels are filed under (page default: the run's folder)"
    )
    p.add_argument("--user", help="who labels, recorded with every label (default: the OS user)")
    g = p.add_argument_group("the page")
    g.add_argument("--run", help="run folder whose model suggests labels (needed for the page)")
    g.add_argument("--host", default="127.0.0.1", help="interface (default loopback only)")
    g.add_argument("--port", type=int, default=8090, help="TCP port (default 8090)")
    g.add_argument(
        "--api-key-file",
        help="file holding the key the page asks for (default on loopback: a one-time key, "
        "printed in the page's address)",
    )
    g.add_argument("--text-column", default="text", help="queue column with the text")
    g.add_argument("--top-k", type=int, default=5, help="suggestions shown per text (default 5)")
    g.add_argument(
        "--explain-steps",
        type=int,
        default=32,
        help="integration steps of the word highlights; 0 turns them off (default 32)",
    )
    e = p.add_argument_group("export and import")
    e.add_argument(
        "--format",
        choices=["jsonl", "csv", "label-studio"],
        default="jsonl",
        help="export: a training file (text, label) or Label Studio JSON tasks (default jsonl)",
    )
    e.add_argument("--output", help="export: file to write; import: write a training file instead")
    e.add_argument("--queue", help="export label-studio: add the queue's texts and predictions")
    return ["label"]


def run(args: argparse.Namespace) -> int:
    """Serve the page, or export / import labels."""
    if args.what == "export":
        return _export(args)
    if args.what == "import":
        return _import(args)
    if args.file:
        raise ConfigError(f"unexpected {args.file!r}: the page takes one queue file")
    return _page(args)


def _store(args: argparse.Namespace) -> Any:
    from textloop.artifacts.feedback import FeedbackStore

    return FeedbackStore(args.store)


def _name(args: argparse.Namespace) -> str:
    if not args.name:
        raise ConfigError(f"label {args.what}: give --name, the model name the labels are under")
    return str(args.name)


def _export(args: argparse.Namespace) -> int:
    from textloop.serving.label_queue import read_queue
    from textloop.serving.label_studio import export_labels

    if not args.output:
        raise ConfigError("label export: give --output FILE")
    if args.queue and args.format != "label-studio":
        raise ConfigError("label export: --queue goes with --format label-studio")
    if not Path(args.store).exists():
        raise ConfigError(f"--store {args.store}: not found")
    queue = read_queue(args.queue, args.text_column) if args.queue else []
    n = export_labels(_store(args), _name(args), args.output, args.format, queue)
    kind = "tasks" if args.format == "label-studio" else "labelled texts"
    print(f"wrote {n} {kind} to {args.output}")
    return 0


def _import(args: argparse.Namespace) -> int:
    from textloop.serving.label_studio import import_labels, read_label_studio, write_training_file

    if not args.file:
        raise ConfigError("label import: give the Label Studio JSON export to read")
    got = read_label_studio(args.file, args.text_column)
    if args.output:
        latest = {text: label for text, label, _ in got.labels}  # the last label of a text wins
        n = write_training_file(list(latest.items()), args.output)
        print(f"wrote {n} labelled texts to {args.output}")
    else:
        n = import_labels(got, _store(args), _name(args), args.user)
        print(f"added {n} labels to {args.store} under {args.name!r}")
    for why, count in sorted(got.left_out.items()):
        print(f"left out {count}: {why}")
    return 0


def _page(args: argparse.Namespace) -> int:
    from textloop.runs import load_run
    from textloop.serving.label_app import check_bind, serve_labels
    from textloop.serving.label_queue import read_queue
    from textloop.serving.label_session import LabelSession

    if not args.run:
        raise ConfigError("label: give --run RUN, the run whose model suggests the labels")
    if not 1 <= args.port <= 65535 or args.top_k < 1 or args.explain_steps < 0:
        raise ConfigError("label: --port must be 1-65535, --top-k >= 1, --explain-steps >= 0")
    check_bind(args.host, bool(args.api_key_file))
    key = read_api_key(args.api_key_file) if args.api_key_file else secrets.token_urlsafe(24)
    items = read_queue(args.what, args.text_column)
    run_ = load_run(args.run)
    name = args.name or Path(args.run).resolve().name
    session = LabelSession(
        items,
        run_,
        _store(args),
        name,
        args.user or getpass.getuser(),
        top_k=args.top_k,
        explain_steps=args.explain_steps,
    )
    state = session.state()["progress"]
    host = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{host}:{args.port}/"
    print(
        f"labelling {state['total']} texts ({state['labelled']} already labelled) as "
        f"{session.user!r} under {name!r} into {session.store.path}"
    )
    print(f"open {url}" + ("" if args.api_key_file else f"#key={key}  (a one-time key)"))
    serve_labels(session, key, args.host, args.port)
    return 0
