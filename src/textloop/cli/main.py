"""The ``textloop`` command: parse, call one library function, map errors to exit codes."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from textloop.cli.flags import Flag, add_config_flags, add_run_flags, run_overrides
from textloop.errors import TextloopError

# the config keys `train` offers as flags: type, choices and help come from the config fields
TRAIN_FLAGS: tuple[str | Flag, ...] = (
    "model",
    "task",
    "data.train",
    "data.validation",
    "data.test",
    "data.text_column",
    "data.text_pair_column",
    "data.label_column",
    "data.label_separator",
    "data.multi_label",
    "data.tag_column",
    "data.tag_scheme",
    "data.prompt_column",
    "data.target_column",
    "data.messages_column",
    "data.drop_invalid_rows",
    "train.epochs",
    "train.max_steps",
    "train.recipe",
    "train.lr",
    "train.head_lr",
    "train.time_budget",
    "train.batch_size",
    "train.max_seq_len",
    "train.seed",
    "train.class_weights",
    "train.packing",
    "train.distributed",
    "output",
    "overwrite",
    "track",
)


def _add_train(sub: Any) -> None:
    from textloop.config import RunConfig

    p = sub.add_parser("train", help="fine-tune a model and write a run directory")
    p.add_argument("config", nargs="?", help="YAML run file (optional for simple cases)")
    p.set_defaults(config_flags=add_config_flags(p, RunConfig, TRAIN_FLAGS))
    add_run_flags(p)


def _cmd_train(args: argparse.Namespace) -> int:
    from textloop.config import load_config, load_resume_config
    from textloop.training.callbacks import LogLines, ProgressBar
    from textloop.training.run import train

    extra = run_overrides(args)
    # --resume continues from the run's saved config; given flags must agree with it
    cfg = (load_resume_config if args.resume else load_config)(args.config, args.set, extra)
    callbacks = [LogLines()] if args.quiet or not sys.stderr.isatty() else [ProgressBar()]
    run = train(cfg, resume=args.resume, callbacks=callbacks)
    from textloop.collectives import is_main_process
    from textloop.evaluation.report import summary_line

    if run is None or not is_main_process():  # under torchrun only rank 0 reports
        return 0

    m = run.metrics
    for split in ("validation", "test"):
        if split in m:
            print(f"{split}: {summary_line(m[split])}")
    print(
        f"trained in {m['train']['seconds']:.0f} s ({m['train']['examples_per_s']:.0f} examples/s)"
    )
    print(f"run dir: {run.path}")
    print(f"report:  {run.path / 'report.md'}")
    return 0


_DROP_HELP = "drop empty / non-UTF-8 rows (and report them) instead of failing"


def _add_evaluate(sub: Any) -> None:
    p = sub.add_parser("evaluate", help="metrics of a trained run on a labelled file")
    p.add_argument("run", help="run directory")
    p.add_argument("--data", required=True, help="labelled file, dir, glob or builtin:NAME[:SPLIT]")
    p.add_argument("--text-column", help="column with the text (default: the run's)")
    p.add_argument("--text-pair-column", help="second text column (default: the run's)")
    p.add_argument("--label-column", help="column with the label(s) (default: the run's)")
    p.add_argument("--drop-invalid-rows", action="store_true", help=_DROP_HELP)
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from textloop.runs import load_run

    run = load_run(args.run)
    m = run.evaluate(
        args.data,
        args.drop_invalid_rows,
        text_column=args.text_column,
        label_column=args.label_column,
        text_pair_column=args.text_pair_column,
    )
    if args.json:
        print(json.dumps(m, indent=2, ensure_ascii=False))
        return 0
    from textloop.evaluation.report import metrics_kind, metrics_table, ner_sections, summary_line

    kind = metrics_kind(m)
    loss = f"  loss {m['loss']:.4f}" if "loss" in m and kind != "language_model" else ""
    print(summary_line(m) + loss)
    if kind == "ner":
        print("\n".join(ner_sections("data", m)))
    elif kind == "classification":
        print(metrics_table(m))
    return 0


def _add_predict(sub: Any) -> None:
    p = sub.add_parser("predict", help="predict labels for texts or a file")
    p.add_argument("run", help="run directory")
    p.add_argument("texts", nargs="*", help="texts to classify")
    p.add_argument("--pair", action="append", help="second text (pair models), once per text")
    p.add_argument("--question", action="append", help="QA: a question (once per --context)")
    p.add_argument("--context", action="append", help="QA: the context of each --question")
    p.add_argument("--input", help="file to predict (any readable format)")
    p.add_argument("--output", help="JSONL file for --input predictions (default: stdout)")
    p.add_argument("--text-column", help="--input: column with the text (default: the run's)")
    p.add_argument("--top-k", type=int, default=1, help="labels per text, best first (default 1)")
    p.add_argument("--drop-invalid-rows", action="store_true", help=_DROP_HELP)


def _cmd_predict(args: argparse.Namespace) -> int:
    from textloop.errors import ConfigError
    from textloop.runs import load_run

    if args.top_k < 1:
        raise ConfigError(f"--top-k: got {args.top_k}; must be >= 1")
    if args.question or args.context:
        run = load_run(args.run)
        answers = run.predict(args.question or [], args.context, top_k=args.top_k)
        for question, answer in zip(args.question or [], answers):
            print(json.dumps({"question": question, **answer}, ensure_ascii=False))
        return 0
    if not args.texts and not args.input:
        raise ConfigError("give texts to classify or --input FILE (QA: --question and --context)")
    run = load_run(args.run)
    if args.input:
        if args.output:
            n = run.predict_file(
                args.input, args.output, args.text_column, args.top_k, args.drop_invalid_rows
            )
            print(f"wrote {n} predictions to {args.output}")
            return 0
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "preds.jsonl"
            run.predict_file(args.input, out, args.text_column, args.top_k, args.drop_invalid_rows)
            sys.stdout.write(out.read_text(encoding="utf-8"))
        return 0
    for text, pred in zip(args.texts, run.predict(args.texts, args.pair, top_k=args.top_k)):
        print(json.dumps({"text": text, **pred}, ensure_ascii=False))
    return 0


def _add_validate(sub: Any) -> None:
    p = sub.add_parser("validate", help="check run files without training (all problems at once)")
    p.add_argument("configs", nargs="+", help="YAML run files")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key"
    )


def _cmd_validate(args: argparse.Namespace) -> int:
    from textloop.config import load_config

    for path in args.configs:
        load_config(path, args.set)
        print(f"ok: {path}")
    return 0


_COMMANDS = {
    "train": _cmd_train,
    "evaluate": _cmd_evaluate,
    "predict": _cmd_predict,
    "validate": _cmd_validate,
}


# Other commands live in their own modules, each with ``add_parser(sub) -> list[str]``
# (registering its subcommands) and ``run(args) -> int``; list the module here to add it.
COMMAND_MODULES: tuple[str, ...] = (
    "textloop.cli.deploy",
    "textloop.cli.prepare",
    "textloop.cli.continual",
    "textloop.cli.pretrain",
    "textloop.cli.generate",
    "textloop.cli.trust",
    "textloop.cli.tune",
    "textloop.cli.label",
    "textloop.cli.select",
)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Any]]:
    parser = argparse.ArgumentParser(
        prog="textloop", description="Fine-tune, evaluate and use language models on your text."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_train, _add_evaluate, _add_predict, _add_validate):
        add(sub)
    commands: dict[str, Any] = dict(_COMMANDS)
    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        for cmd in module.add_parser(sub):
            commands[cmd] = module.run
    return parser, commands


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``textloop`` console script."""
    parser, commands = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )

    try:
        return int(commands[args.command](args))
    except TextloopError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
