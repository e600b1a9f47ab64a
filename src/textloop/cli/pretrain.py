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

from textloop.cli.flags import Flag, add_config_flags, add_run_flags, run_overrides
from textloop.config import RunConfig
from textloop.errors import ConfigError

# the config keys `pretrain` offers as flags (type, choices and help from the config fields)
PRETRAIN_FLAGS: tuple[str | Flag, ...] = (
    "model",
    Flag("task", "objective", "mlm (encoders) or clm (decoders)", choices=("mlm", "clm")),
    Flag("data.train", "corpus", "Prepared corpus dir (textloop prepare), file, glob or builtin:"),
    Flag(
        "data.validation",
        help="Held-out text (default: the corpus's validation split, else 10% of documents)",
    ),
    "data.text_column",
    "train.epochs",
    "train.max_steps",
    "train.lr",
    Flag("train.batch_size", help="Packed blocks per micro-batch (global)"),
    "train.grad_accum_steps",
    Flag("train.max_seq_len", "block_size", "Tokens per packed block"),
    "train.eval_every_steps",
    "train.seed",
    "pretrain.whole_word_mask",
    "pretrain.extend_vocab",
    "train.gradient_checkpointing",
    "train.distributed",
    "output",
    "overwrite",
    "track",
)


def add_parser(sub: Any) -> list[str]:
    """Register ``pretrain`` on the subcommand parsers."""
    p = sub.add_parser(
        "pretrain",
        help="continue pre-training (masked or causal LM) on unlabelled text",
        description="Adapt a pretrained model to a domain's text before fine-tuning: masked LM "
        "for encoders, causal LM for decoders, on packed blocks streamed from the corpus.",
    )
    p.add_argument("config", nargs="?", help="YAML run file (optional)")
    p.set_defaults(config_flags=add_config_flags(p, RunConfig, PRETRAIN_FLAGS))
    add_run_flags(p)
    return ["pretrain"]


def run(args: argparse.Namespace) -> int:
    import sys

    from textloop.config import load_config, load_resume_config
    from textloop.training.callbacks import LogLines, ProgressBar
    from textloop.training.run import train

    extra: dict[str, Any] = {"task": "mlm"} if args.config is None and not args.resume else {}
    extra.update(run_overrides(args))
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
