"""embedded:e5-small vs embedded:minilm on the same English data: training and inference speed.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/e5_speed.py [--threads 2] [--output FILE]

For each model, in one run on the same SNIPS training sample (``../shared/data/snips``):
``textloop train`` for ``--steps`` steps (batch 16, ``--max-seq-len``, the default precision),
reporting examples/s and real tokens/s (the tokenizer's own token count, truncated); then
``textloop export --format onnx --quantize int8`` (the agreement check picks the int8 plan)
and batch-1 latency in process, PyTorch and ONNX int8, over ``--requests`` SNIPS test queries
(p50 / p90 ms, after 20 warm-up calls). The two models' tokenizers differ (WordPiece 30k vs
SentencePiece 250k), so tokens/s and examples/s are both given. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = Path(__file__).resolve().parents[1]
SNIPS = REPO.parent / "shared" / "data" / "snips"
MODELS = ("embedded:minilm", "embedded:e5-small")


def read_tsv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return [{"text": r["text"], "label": r["label"]} for r in csv.DictReader(f, delimiter="\t")]


def write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(rows)


def latency(run, texts: list[str]) -> dict[str, float]:
    for t in texts[:20]:
        run.predict([t])
    times = []
    for t in texts:
        started = time.perf_counter()
        run.predict([t])
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {
        "p50_ms": round(statistics.median(times), 2),
        "p90_ms": round(times[int(0.9 * (len(times) - 1))], 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--max-seq-len", type=int, default=64)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output")
    args = parser.parse_args()
    if not (SNIPS / "train.tsv").is_file():
        print(json.dumps({"skipped": f"{SNIPS} not found"}))
        return 0
    import torch
    from transformers import AutoTokenizer

    from textloop.config import load_config
    from textloop.models.resolve import resolve_model
    from textloop.runs import load_run
    from textloop.serving.export import export_run
    from textloop.training.run import train

    torch.set_num_threads(args.threads)
    rng = random.Random(0)
    train_rows = rng.sample(read_tsv(SNIPS / "train.tsv"), 16 * args.steps)
    queries = [r["text"] for r in rng.sample(read_tsv(SNIPS / "test.tsv"), args.requests)]
    sys.path.insert(0, str(REPO / "bench"))
    from continual import cpu_model

    result: dict = {"cpu": cpu_model(), "threads": args.threads, "settings": vars(args)}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_csv(work / "train.csv", train_rows)
        for name in MODELS:
            tokenizer = AutoTokenizer.from_pretrained(resolve_model(name))
            lengths = [
                len(ids)
                for ids in tokenizer(
                    [r["text"] for r in train_rows], truncation=True, max_length=args.max_seq_len
                )["input_ids"]
            ]
            out = work / name.split(":")[1]
            cfg = load_config(
                None,
                extra={
                    "model": name,
                    "output": str(out),
                    "data.train": str(work / "train.csv"),
                    "train.recipe": "default",
                    "train.max_steps": args.steps,
                    "train.batch_size": 16,
                    "train.max_seq_len": args.max_seq_len,
                    "train.threads": args.threads,
                    "train.eval_every_steps": 0,
                    "train.early_stopping_patience": 0,
                },
            )
            run = train(cfg)
            facts = run.metrics["train"]
            per_s = float(facts["examples_per_s"])
            report = export_run(out, work / f"{out.name}-int8", format="onnx", quantize="int8")
            result[name] = {
                "train_examples_per_s": round(per_s, 1),
                "train_tokens_per_s": round(per_s * statistics.mean(lengths), 1),
                "mean_tokens_per_example": round(statistics.mean(lengths), 1),
                "precision": facts["precision"],
                "int8_plan": report.int8_plan,
                "int8_fp32_matmuls": report.int8_fp32_matmuls,
                "int8_label_agreement": round(report.label_agreement, 4),
                "int8_max_prob_diff": round(report.max_prob_diff, 4),
                "pytorch_batch1": latency(load_run(out), queries),
                "onnx_int8_batch1": latency(load_run(work / f"{out.name}-int8"), queries),
            }
            print(name, result[name], file=sys.stderr, flush=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
