"""The ``textloop`` command: parse, call one library function, map errors to exit codes."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from textloop.errors import TextloopError

# flag -> dotted config key; the flag's value overrides the YAML, --set overrides both
_TRAIN_FLAGS = {
    "model": "model",
    "task": "task",
    "output": "output",
    "train": "data.train",
    "validation": "data.validation",
    "test": "data.test",
    "text_column": "data.text_column",
    "text_pair_column": "data.text_pair_column",
    "label_column": "data.label_column",
    "label_separator": "data.label_separator",
    "epochs": "train.epochs",
    "max_steps": "train.max_steps",
    "lr": "train.lr",
    "head_lr": "train.head_lr",
    "time_budget": "train.time_budget",
    "batch_size": "train.batch_size",
    "max_seq_len": "train.max_seq_len",
    "seed": "train.seed",
    "class_weights": "train.class_weights",
    "tag_column": "data.tag_column",
    "tag_scheme": "data.tag_scheme",
    "prompt_column": "data.prompt_column",
    "target_column": "data.target_column",
    "messages_column": "data.messages_column",
    "distributed": "train.distributed",
    "track": "track",
}
_TRAIN_SWITCHES = {
    "overwrite": "overwrite",
    "multi_label": "data.multi_label",
    "drop_invalid_rows": "data.drop_invalid_rows",
    "packing": "train.packing",
}


def _add_train(sub: Any) -> None:
    p = sub.add_parser("train", help="fine-tune a model and write a run directory")
    p.add_argument("config", nargs="?", help="YAML run file (optional for simple cases)")
    p.add_argument(
        "--model", help="local checkpoint dir or embedded:NAME (default embedded:minilm)"
    )
    from textloop.tasks import TASK_MODULES

    p.add_argument("--task", choices=sorted(TASK_MODULES), help="task (default classification)")
    p.add_argument("--train", help="training data: file, dir, glob or builtin:NAME")
    p.add_argument("--validation", help="validation data (default: stratified split of train)")
    p.add_argument("--test", help="test data")
    p.add_argument("--text-column", help="column with the text (default 'text')")
    p.add_argument("--text-pair-column", help="second text column for pair classification")
    p.add_argument("--label-column", help="column with the label(s) (default 'label')")
    p.add_argument("--label-separator", help="split labels on this string (multi-label)")
    p.add_argument("--multi-label", action="store_true", help="rows hold sets of labels")
    p.add_argument("--epochs", type=int, help="passes over the data (default: the recipe's)")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    p.add_argument("--lr", type=float, help="peak learning rate (default: the recipe's)")
    p.add_argument("--head-lr", type=float, help="fresh head's learning rate (default 10 x lr)")
    p.add_argument(
        "--time-budget",
        metavar="DURATION",
        help="fit training to this wall-clock time, e.g. 90s, 10m, 1.5h",
    )
    p.add_argument("--batch-size", type=int)
    p.add_argument("--max-seq-len", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--class-weights", choices=["none", "balanced"])
    p.add_argument("--tag-column", type=int, help="NER CoNLL files: tag column (default -1, last)")
    p.add_argument(
        "--tag-scheme",
        choices=["auto", "IO", "IOB1", "IOB2", "BIO", "IOBES", "BILOU"],
        help="NER tag scheme of the data (default auto)",
    )
    p.add_argument("--prompt-column", help="generation pairs: prompt column (default 'prompt')")
    p.add_argument("--target-column", help="generation pairs: answer column (default 'target')")
    p.add_argument("--messages-column", help="generation chats: messages key (default 'messages')")
    p.add_argument("--packing", action="store_true", help="pack short examples into full rows")
    p.add_argument(
        "--lora",
        metavar="SPEC",
        help="LoRA adapters, e.g. r=8,alpha=16,targets=q_proj,v_proj; 'off' trains all weights",
    )
    p.add_argument(
        "--distributed",
        choices=["ddp", "fsdp"],
        help="under torchrun: replicate (ddp, default) or shard (fsdp) the model",
    )
    p.add_argument("--output", help="run directory to create")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in --output")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the unfinished run in --output with its saved config",
    )
    p.add_argument(
        "--track",
        choices=["none", "mlflow", "tensorboard"],
        help="log params, metrics, report and model to MLflow, or TensorBoard event files",
    )
    p.add_argument(
        "--drop-invalid-rows",
        action="store_true",
        help="drop empty / non-UTF-8 rows instead of failing",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key, e.g. train.lr=3e-5",
    )
    p.add_argument("--quiet", action="store_true", help="log lines instead of a progress bar")


def _cmd_train(args: argparse.Namespace) -> int:
    from textloop.config import load_config, load_resume_config
    from textloop.training.callbacks import LogLines, ProgressBar
    from textloop.training.run import train

    extra = {
        key: getattr(args, flag)
        for flag, key in _TRAIN_FLAGS.items()
        if getattr(args, flag) is not None
    }
    extra.update({key: True for flag, key in _TRAIN_SWITCHES.items() if getattr(args, flag)})
    if args.lora:
        from textloop.models.lora import parse_lora_spec

        extra.update({f"lora.{k}": v for k, v in parse_lora_spec(args.lora).items()})
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


def _add_evaluate(sub: Any) -> None:
    p = sub.add_parser("evaluate", help="metrics of a trained run on a labelled file")
    p.add_argument("run", help="run directory")
    p.add_argument("--data", required=True, help="labelled file, dir, glob or builtin:NAME[:SPLIT]")
    p.add_argument("--text-column")
    p.add_argument("--text-pair-column")
    p.add_argument("--label-column")
    p.add_argument("--drop-invalid-rows", action="store_true")
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
    p.add_argument("--text-column")
    p.add_argument("--top-k", type=int, default=1)
    p.add_argument("--drop-invalid-rows", action="store_true")


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
    p.add_argument("configs", nargs="+")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")


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
