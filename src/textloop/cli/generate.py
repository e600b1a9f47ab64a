"""``textloop generate`` (answers for prompts) and ``textloop chat`` (a terminal conversation)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from textloop.errors import ConfigError


def _add_decoding(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run directory of a generation run")
    p.add_argument("--max-new-tokens", type=int, help="longest answer in tokens")
    p.add_argument("--temperature", type=float, help="sampling temperature (0: greedy)")
    p.add_argument("--top-p", type=float, help="nucleus sampling mass")
    p.add_argument("--top-k", type=int, help="sample among the k best tokens")
    p.add_argument("--repetition-penalty", type=float, help="> 1 discourages repeats")
    p.add_argument("--stop", action="append", help="string that ends an answer (repeatable)")
    p.add_argument("--seed", type=int, help="sampling seed")


def add_parser(sub: Any) -> list[str]:
    """Register ``generate`` and ``chat``."""
    g = sub.add_parser("generate", help="answers of a generation run for prompts")
    _add_decoding(g)
    g.add_argument("prompts", nargs="*", help="prompts to answer")
    g.add_argument("--input", help="file of prompts (one per line, or jsonl with --prompt-column)")
    g.add_argument("--prompt-column", default="prompt", help="jsonl/csv column with the prompt")
    g.add_argument("--batch-size", type=int, default=8, help="prompts decoded together (default 8)")
    g.add_argument("--stream", action="store_true", help="print tokens as they come (one prompt)")
    g.add_argument("--json", action="store_true", help="JSON lines with tokens and finish reason")
    c = sub.add_parser("chat", help="chat with a generation run in the terminal")
    _add_decoding(c)
    c.add_argument("--system", help="system message (default: the run's)")
    return ["generate", "chat"]


def _decoding(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "stop", "seed")
    return {k: getattr(args, k) for k in keys if getattr(args, k) is not None}


def _read_prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompts)
    if args.input:
        from textloop.data.readers import read_table

        table = read_table(args.input)
        column = args.prompt_column if args.prompt_column in table.columns else "text"
        if column not in table.columns:
            raise ConfigError(
                f"{args.input}: no column {args.prompt_column!r}; columns: "
                f"{', '.join(table.columns)} — pass --prompt-column"
            )
        prompts += [str(row[column]) for row in table.rows]
    if not prompts:
        raise ConfigError("give prompts to answer or --input FILE")
    return prompts


def _generate(args: argparse.Namespace) -> int:
    from textloop.runs import load_run

    prompts = _read_prompts(args)
    run = load_run(args.run)
    _require_generation(run)
    options = _decoding(args)
    if args.stream:
        if len(prompts) != 1:
            raise ConfigError("--stream answers one prompt at a time")
        for piece in run.task.stream(run.model, prompts[0], **options):  # type: ignore[attr-defined]
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return 0
    outputs = run.predict(prompts, batch_size=args.batch_size, **options)
    for prompt, out in zip(prompts, outputs):
        if args.json:
            print(json.dumps({"prompt": prompt, **out}, ensure_ascii=False))
        else:
            print(out["text"])
    return 0


def _chat(args: argparse.Namespace) -> int:
    from textloop.runs import load_run

    run = load_run(args.run)
    _require_generation(run)
    options = _decoding(args)
    system = args.system or getattr(run.task, "system_prompt", None)
    interactive = sys.stdin.isatty()
    if interactive:
        print("chat with the model; /reset clears the conversation, /exit or Ctrl-D quits")
    history: list[dict[str, str]] = []
    while True:
        if interactive:
            sys.stdout.write("you> ")
            sys.stdout.flush()
        line = sys.stdin.readline()
        if not line or line.strip() == "/exit":
            return 0
        text = line.strip()
        if not text:
            continue
        if text == "/reset":
            history = []
            continue
        messages = [{"role": "system", "content": system}] if system else []
        history.append({"role": "user", "content": text})
        sys.stdout.write("bot> " if interactive else "")
        pieces = []
        for piece in run.task.stream(run.model, messages + history, **options):  # type: ignore[attr-defined]
            pieces.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        history.append({"role": "assistant", "content": "".join(pieces).strip()})


def _require_generation(run: Any) -> None:
    if getattr(run.task, "name", None) != "generation":
        raise ConfigError(
            f"{run.path} is a {run.task.name} run; generate and chat need a generation run "
            "(textloop train --task generation ...)"
        )


def run(args: argparse.Namespace) -> int:
    """Dispatch ``generate`` / ``chat``."""
    return _generate(args) if args.command == "generate" else _chat(args)
