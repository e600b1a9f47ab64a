"""Does LoRA fine-tuning of embedded:smollm2 on real dialogue help? Untuned vs tuned, one run.

Data: chatterbot-corpus (English, every category), split by a seeded shuffle into train and a
held-out set. The untuned model and the LoRA-tuned model are scored with the same function on
the same held-out conversations: loss / perplexity on every answer token, and BLEU / chrF /
ROUGE of greedy answers on ``--eval-samples`` of them. Prints JSON (and writes it to --output).

    nice -n 19 .venv/bin/python bench/generation.py --steps 150 --output bench/results/generation.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


class TokenCounter:
    """Callback summing real tokens and seconds of the training steps."""

    def __init__(self) -> None:
        self.tokens = 0
        self.seconds = 0.0
        self.steps = 0

    def on_step_end(self, info: Any) -> None:
        self.tokens += info.tokens
        self.seconds += info.seconds
        self.steps += 1


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-seq-len", type=int, default=256)
    ap.add_argument("--held-out", type=int, default=100, help="held-out conversations")
    ap.add_argument("--eval-samples", type=int, default=50, help="answers generated per model")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--packing", action="store_true")
    ap.add_argument("--output", default=None)
    args = ap.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from textloop.config import build_config
    from textloop.models.resolve import resolve_model
    from textloop.tasks.generation import build_splits
    from textloop.tasks.generation.data import read_chatterbot
    from textloop.training.run import train

    convs = read_chatterbot("builtin:chatterbot:english")
    rng = random.Random(0)
    order = list(range(len(convs)))
    rng.shuffle(order)
    held, keep = order[: args.held_out], order[args.held_out :]
    work = Path(tempfile.mkdtemp(prefix="bench-generation-"))
    for name, idx in (("train", keep), ("validation", held)):
        with (work / f"{name}.jsonl").open("w", encoding="utf-8") as f:
            for i in idx:
                f.write(json.dumps({"messages": convs.items[i]}, ensure_ascii=False) + "\n")

    cfg = build_config(
        {
            "task": "generation",
            "model": "embedded:smollm2",
            "output": str(work / "run"),
            "data": {
                "train": str(work / "train.jsonl"),
                "validation": str(work / "validation.jsonl"),
            },
            "train": {
                "max_steps": args.steps,
                "lr": args.lr,
                "batch_size": args.batch_size,
                "max_seq_len": args.max_seq_len,
                "packing": args.packing,
                "warmup_ratio": 0.05,
                "eval_batch_size": 16,
                "threads": args.threads,
                "log_every_steps": 10,
            },
            "lora": {
                "r": 8,
                "alpha": 16,
                "dropout": 0.05,
                "targets": ["q_proj", "k_proj", "v_proj", "o_proj"],
            },
            "generation": {
                "eval_samples": args.eval_samples,
                "eval_max_new_tokens": args.max_new_tokens,
            },
        }
    )
    model_dir = resolve_model("embedded:smollm2")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    splits = build_splits(cfg, tokenizer)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    t0 = time.perf_counter()
    before = splits.task.evaluate(base, splits.validation, 16)
    before_seconds = time.perf_counter() - t0
    del base

    counter = TokenCounter()
    run = train(cfg, callbacks=[counter])
    after = run.metrics["validation"]
    keys = ("loss", "perplexity", "bleu", "chrf", "rouge1", "rouge2", "rougeL")
    result = {
        "model": "embedded:smollm2 (SmolLM2-135M-Instruct, fp32)",
        "data": {
            "source": "builtin:chatterbot:english",
            "train_conversations": len(keep),
            "held_out_conversations": len(held),
            "generated_per_model": after.get("generated"),
            **{
                k: v
                for k, v in run.metrics["data"].items()
                if k in ("train_target_tokens", "packing")
            },
        },
        "setup": {
            "method": "LoRA r=8 alpha=16 on q,k,v,o",
            "steps": args.steps,
            "batch_size": args.batch_size,
            "max_seq_len": args.max_seq_len,
            "lr": args.lr,
            "threads": args.threads,
            "decoding": f"greedy, max_new_tokens={args.max_new_tokens}",
        },
        "untuned": {k: before.get(k) for k in keys},
        "tuned": {k: after.get(k) for k in keys},
        "training": {
            "seconds": run.metrics["train"]["seconds"],
            "tokens_per_s": round(counter.tokens / max(counter.seconds, 1e-9), 1),
            "examples_per_s": run.metrics["train"]["examples_per_s"],
        },
        "generation_tokens_per_s": {
            "untuned": before.get("generation_tokens_per_s"),
            "tuned": after.get("generation_tokens_per_s"),
        },
        "untuned_eval_seconds": round(before_seconds, 1),
        "samples": [
            {**s, "untuned": b["output"]}
            for s, b in zip(after.get("samples", []), before.get("samples", []))
        ],
        "load_average": os.getloadavg(),
    }
    import shutil

    shutil.rmtree(work, ignore_errors=True)  # the run dir holds ~1.5 GB of checkpoints
    text = json.dumps(result, indent=2, ensure_ascii=False)
    print(text)
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(text + "\n", encoding="utf-8")
        os.replace(tmp, out)


if __name__ == "__main__":
    main()
