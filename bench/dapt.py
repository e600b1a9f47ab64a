"""Does domain-adaptive pre-training pay? MLM on BBC News text, then few-label fine-tuning.

embedded:minilm is first adapted by masked-LM continued pre-training on the BBC News training
articles (text only, labels unused; a fresh MLM head tied to the embeddings), then fine-tuned
on a few labelled articles per topic; the same fine-tuning runs from the unadapted checkpoint.
Both are scored on the 445 BBC test articles, over several seeds (each seed draws its own
labelled sample). Prints JSON.

    .venv/bin/python bench/dapt.py --threads 1           # ~25 min on 2 free cores
    .venv/bin/python bench/dapt.py --mlm-steps 20 --seeds 1 --per-topic 4   # smoke

(Gururangan et al. 2020, "Don't Stop Pretraining", arXiv:2004.10964.)
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import textloop
from textloop.config import load_config
from textloop.data.builtin import read_builtin


def _write_csv(path: Path, rows: list[dict[str, str]]) -> str:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label"])
        w.writeheader()
        w.writerows(rows)
    return str(path)


def _sample(rows: list[dict[str, Any]], per_topic: int, seed: int) -> tuple[list, list]:
    """``per_topic`` training and ``per_topic`` validation articles per topic, disjoint."""
    rng = random.Random(seed)
    train, val = [], []
    for topic in sorted({r["label"] for r in rows}):
        pool = [r for r in rows if r["label"] == topic]
        rng.shuffle(pool)
        train += pool[:per_topic]
        val += pool[per_topic : 2 * per_topic]
    return train, val


def pretrain(out: Path, steps: int, lr: float, threads: int | None) -> dict[str, Any]:
    cfg = load_config(
        None,
        extra={
            "task": "mlm",
            "model": "embedded:minilm",
            "output": str(out),
            "data.train": "builtin:bbc-news:train",
            "train.max_seq_len": 128,
            "train.batch_size": 16,
            "train.lr": lr,
            "train.max_steps": steps,
            "train.warmup_ratio": 0.06,
            "train.eval_every_steps": max(1, steps // 3),
            "train.log_every_steps": 10,
            "train.threads": threads,
            "pretrain.eval_blocks": 128,
        },
    )
    started = time.perf_counter()
    run = textloop.train(cfg)
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    return {
        "steps": steps,
        "seconds": round(time.perf_counter() - started, 1),
        "perplexity_by_eval": [round(r["perplexity"], 2) for r in log if r["kind"] == "eval"],
        "final_perplexity": round(run.metrics["validation"]["perplexity"], 2),
    }


def finetune(model: str, train: str, val: str, out: Path, seed: int, threads: int | None) -> dict:
    cfg = load_config(
        None,
        extra={
            "model": model,
            "output": str(out),
            "data.train": train,
            "data.validation": val,
            "data.test": "builtin:bbc-news:test",
            "train.epochs": 10,
            "train.batch_size": 8,
            "train.lr": 1e-4,
            "train.max_seq_len": 128,
            "train.seed": seed,
            "train.threads": threads,
            "train.log_every_steps": 5,
        },
    )
    m = textloop.train(cfg).metrics
    return {"accuracy": m["test"]["accuracy"], "macro_f1": m["test"]["macro_f1"]}


def _stats(values: list[float]) -> dict[str, float]:
    return {
        "mean": round(statistics.mean(values), 4),
        "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
        "min": round(min(values), 4),
        "max": round(max(values), 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mlm-steps", type=int, default=150)
    ap.add_argument("--mlm-lr", type=float, default=1e-4)
    ap.add_argument("--per-topic", type=int, default=8, help="labelled articles per topic")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--output", help="also write the JSON here")
    args = ap.parse_args()
    rows = read_builtin("builtin:bbc-news:train").rows
    result: dict[str, Any] = {
        "setup": {
            "model": "embedded:minilm",
            "unlabelled_corpus": "builtin:bbc-news:train (1,780 articles, text only)",
            "labelled": f"{args.per_topic} per topic x 5 topics (train), same for validation",
            "test": "builtin:bbc-news:test (445 articles)",
            "mlm": {"steps": args.mlm_steps, "lr": args.mlm_lr, "block": 128, "batch": 16},
            "finetune": {"epochs": 10, "batch": 8, "lr": 1e-4, "max_seq_len": 128},
        },
        "per_seed": [],
    }
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        adapted = tmp / "minilm-bbc"
        result["mlm"] = pretrain(adapted, args.mlm_steps, args.mlm_lr, args.threads)
        _emit(result, args.output, final=False)
        for seed in range(args.seeds):
            train_rows, val_rows = _sample(rows, args.per_topic, seed)
            train = _write_csv(tmp / f"train{seed}.csv", train_rows)
            val = _write_csv(tmp / f"val{seed}.csv", val_rows)
            base = finetune("embedded:minilm", train, val, tmp / f"base{seed}", seed, args.threads)
            dapt = finetune(str(adapted), train, val, tmp / f"dapt{seed}", seed, args.threads)
            result["per_seed"].append({"seed": seed, "baseline": base, "dapt": dapt})
            _summarise(result)
            _emit(result, args.output, final=seed == args.seeds - 1)


def _summarise(result: dict[str, Any]) -> None:
    per_seed = result["per_seed"]
    result["summary"] = {
        arm: {
            metric: _stats([s[arm][metric] for s in per_seed])
            for metric in ("accuracy", "macro_f1")
        }
        for arm in ("baseline", "dapt")
    }
    result["gain_macro_f1_per_seed"] = [
        round(s["dapt"]["macro_f1"] - s["baseline"]["macro_f1"], 4) for s in per_seed
    ]


def _emit(result: dict[str, Any], output: str | None, final: bool) -> None:
    """Print the JSON at the end; keep a partial copy in ``output`` after each stage."""
    text = json.dumps(result, indent=2)
    if final:
        print(text)
    if output:
        tmp = Path(output + ".tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, output)


if __name__ == "__main__":
    main()
