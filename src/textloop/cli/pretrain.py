"""``textloop pretrain``: continue pre-training a model on a domain's unlabelled text.

    textloop pretrain --model embedded:minilm --objective mlm --corpus corpus/tickets \\
        --output runs/minilm-tickets
    textloop train configs/classification/tickets.yaml --set model=runs/minilm-tickets
    textloop pretrain --model embedded:smollm2 --objective clm --corpus corpus/tickets \\
        --lora r=8,alpha=16 --max-steps 2000 --output runs/smollm2-tickets
    torchrun --nproc-per-node 2 -m textloop pretrain run.yaml     # DDP, one process per device
    torchrun --nproc-per-node 2 -m textloop pretrain run.yaml --distributed fsdp   # sharded
"""

from __future__ import annotations

import argparse
from typing import Any

from textloop.errors import ConfigError

# flag -> dotted config key; flags override the YAML, --set overrides both
_FLAGS = {
    "model": "model",
    "objective": "task",
    "corpus": "data.train",
    "validation": "data.validation",
    "text_column": "data.text_column",
    "output": "output",
    "epochs": "train.epochs",
    "max_steps": "train.max_steps",
    "lr": "train.lr",
    "batch_size": "train.batch_size",
    "grad_accum_steps": "train.grad_accum_steps",
    "block_size": "train.max_seq_len",
    "eval_every_steps": "train.eval_every_steps",
    "seed": "train.seed",
    "extend_vocab": "pretrain.extend_vocab",
    "distributed": "train.distributed",
    "track": "track",
}
_SWITCHES = {
    "overwrite": "overwrite",
    "whole_word_mask": "pretrain.whole_word_mask",
    "gradient_checkpointing": "train.gradient_checkpointing",
}


def add_parser(sub: Any) -> list[str]:
    """Register ``pretrain`` on the subcommand parsers."""
    p = sub.add_parser(
        "pretrain",
        help="continue pre-training (masked or causal LM) on unlabelled text",
        description="Adapt a pretrained model to a domain's text before fine-tuning: masked LM "
        "for encoders, causal LM for decoders, on packed blocks streamed from the corpus.",
    )
    p.add_argument("config", nargs="?", help="YAML run file (optional)")
    p.add_argument("--model", help="local checkpoint dir, run dir or embedded:NAME")
    p.add_argument("--objective", choices=["mlm", "clm"], help="mlm (encoders) or clm (decoders)")
    p.add_argument("--corpus", help="prepared corpus dir (textloop prepare), file, glob, builtin:")
    p.add_argument(
        "--validation",
        help="held-out text (default: the corpus's validation split, else 10%% of documents)",
    )
    p.add_argument("--text-column", help="column with the text (default 'text')")
    p.add_argument("--output", help="run directory to create")
    p.add_argument("--epochs", type=int, help="passes over the corpus")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--batch-size", type=int, help="packed blocks per micro-batch (global)")
    p.add_argument("--grad-accum-steps", type=int, help="micro-batches per optimizer step")
    p.add_argument("--block-size", type=int, help="tokens per packed block (train.max_seq_len)")
    p.add_argument("--eval-every-steps", type=int, help="perplexity on held-out text every N")
    p.add_argument("--seed", type=int)
    p.add_argument("--whole-word-mask", action="store_true", help="mlm: mask whole words")
    p.add_argument(
        "--extend-vocab", type=int, metavar="N", help="add up to N frequent domain words as tokens"
    )
    p.add_argument(
        "--lora",
        metavar="r=8,alpha=16,targets=q_proj+v_proj",
        help="train LoRA adapters (model/ gets the merged weights, adapter/ the adapter alone)",
    )
    p.add_argument("--gradient-checkpointing", action="store_true", help="less memory, more time")
    p.add_argument(
        "--distributed",
        choices=["ddp", "fsdp"],
        help="under torchrun: ddp (default) or fsdp (shard weights, gradients and optimizer "
        "state over the processes, for models that do not fit one device)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in --output")
    p.add_argument("--resume", action="store_true", help="continue the unfinished run in --output")
    p.add_argument(
        "--track",
        choices=["none", "mlflow", "tensorboard"],
        help="log params, metrics, report and model to MLflow, or TensorBoard event files",
    )
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key"
    )
    p.add_argument("--quiet", action="store_true", help="log lines instead of a progress bar")
    return ["pretrain"]


def parse_lora(text: str) -> dict[str, Any]:
    """``r=8,alpha=16,dropout=0.1,targets=query+value`` -> dotted ``lora.*`` config keys."""
    out: dict[str, Any] = {"lora.enabled": True}
    for part in filter(None, (x.strip() for x in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or key not in ("r", "alpha", "dropout", "targets"):
            raise ConfigError(
                f"--lora {text!r}: expected KEY=VALUE pairs with keys r, alpha, dropout, targets "
                "(e.g. r=8,alpha=16,targets=q_proj+v_proj)"
            )
        try:
            out[f"lora.{key}"] = (
                value.split("+")
                if key == "targets"
                else float(value)
                if key == "dropout"
                else int(value)
            )
        except ValueError:
            raise ConfigError(f"--lora {key}={value!r}: expected a number") from None
    return out


def run(args: argparse.Namespace) -> int:
    import sys

    from textloop.config import load_config, load_resume_config
    from textloop.training.callbacks import LogLines, ProgressBar
    from textloop.training.run import train

    extra: dict[str, Any] = {"task": "mlm"} if args.config is None and not args.resume else {}
    extra.update({k: getattr(args, f) for f, k in _FLAGS.items() if getattr(args, f) is not None})
    extra.update({k: True for f, k in _SWITCHES.items() if getattr(args, f)})
    if args.lora:
        extra.update(parse_lora(args.lora))
    cfg = (load_resume_config if args.resume else load_config)(args.config, args.set, extra)
    if cfg.task not in ("mlm", "clm"):
        raise ConfigError(f"pretrain: task must be mlm or clm (got {cfg.task!r}); use --objective")
    callbacks = [LogLines()] if args.quiet or not sys.stderr.isatty() else [ProgressBar()]
    result = train(cfg, resume=args.resume, callbacks=callbacks)
    from textloop.collectives import is_main_process

    if is_main_process():
        m = result.metrics
        v = m["validation"]
        print(
            f"held-out: perplexity {v['perplexity']:.3f}  token accuracy {v['accuracy']:.4f}  "
            f"({v['tokens']} predicted tokens in {v['n']} blocks)"
        )
        print(f"trained {m['train']['steps']} steps in {m['train']['seconds']:.0f} s")
        print(
            f"run dir: {result.path}  (fine-tune it: textloop train ... --set model={result.path})"
        )
    return 0
