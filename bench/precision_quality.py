"""bf16 vs fp32: the same training, the same seed, the test accuracy each precision reaches.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/precision_quality.py [--output x.json]

Trains embedded:minilm on BBC News (the `make demo` recipe), SNIPS (7 intents) and CLINC150
(150 intents) once with ``train.precision: fp32`` and once with ``bf16`` — same seed, data,
order and schedule — and prints test accuracy and macro-F1 per precision and their differences
(in points). SNIPS and CLINC150 train on a class-stratified sample (``--per-class``) to keep the
run under an hour on 2 cores; their test sets are whole. bf16 needs a CPU with native bf16
(AMX or AVX512_BF16) or a GPU; elsewhere it is emulated and runs ~13x slower. The seconds are
wall time on whatever else the machine was doing: for speed see bench/train_throughput.py.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import textloop
from textloop.training.precision import read_cpu_info

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _sample_tsv(src: Path, dst: Path, per_class: int, seed: int) -> Path:
    """A class-stratified sample of a text/label TSV (every class, up to ``per_class`` rows)."""
    with src.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    by_label: dict[str, list[dict[str, str]]] = defaultdict(list)
    for r in rows:
        by_label[r["label"]].append(r)
    rng = random.Random(seed)
    kept = []
    for label in sorted(by_label):
        group = by_label[label]
        rng.shuffle(group)
        kept += group[:per_class]
    rng.shuffle(kept)
    with dst.open("w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label"], delimiter="\t")
        w.writeheader()
        w.writerows({"text": r["text"], "label": r["label"]} for r in kept)
    return dst


def datasets(tmp: Path, per_class: int, seed: int) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {
        "bbc-news": {
            "config": str(
                Path(__file__).resolve().parents[1] / "configs/classification/bbc-news_full.yaml"
            ),
            "sets": {"data.test": "builtin:bbc-news:test"},
        }
    }
    for name in ("snips", "clinc150"):
        folder = SHARED / name
        if not folder.is_dir():
            print(f"skipping {name}: {folder} is absent", file=sys.stderr)
            continue
        train = _sample_tsv(folder / "train.tsv", tmp / f"{name}-train.tsv", per_class, seed)
        out[name] = {
            "config": None,
            "sets": {
                "model": "embedded:minilm",
                "data.train": str(train),
                "data.validation": str(folder / "dev.tsv"),
                "data.test": str(folder / "test.tsv"),
                "train.epochs": 3,
                "train.lr": 1e-4,
                "train.batch_size": 32,
                "train.max_seq_len": 64,
                "train.warmup_ratio": 0.1,
            },
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--per-class", type=int, default=60, help="SNIPS/CLINC150 training rows per class"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", help="comma-separated dataset names")
    p.add_argument("--output", help="also write the JSON here")
    args = p.parse_args()
    cpu = read_cpu_info()
    results: dict[str, Any] = {"cpu": cpu.model, "cpu_flags": list(cpu.flags), "seed": args.seed}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for name, spec in datasets(tmp, args.per_class, args.seed).items():
            if args.only and name not in args.only.split(","):
                continue
            row: dict[str, Any] = {}
            for precision in ("fp32", "bf16"):
                sets = {
                    **spec["sets"],
                    "output": str(tmp / f"{name}-{precision}"),
                    "overwrite": True,
                    "train.precision": precision,
                    "train.seed": args.seed,
                    "train.threads": args.threads,
                }
                print(f"training {name} in {precision} ...", file=sys.stderr, flush=True)
                t = time.perf_counter()
                run = textloop.train(textloop.load_config(spec["config"], extra=sets))
                test = run.metrics["test"]
                row[precision] = {
                    "accuracy": round(test["accuracy"], 4),
                    "macro_f1": round(test["macro_f1"], 4),
                    "train_rows": run.metrics["data"]["n_train"],
                    "seconds": round(time.perf_counter() - t, 1),
                }
            row["bf16_minus_fp32_points"] = {
                k: round(100 * (row["bf16"][k] - row["fp32"][k]), 2)
                for k in ("accuracy", "macro_f1")
            }
            results[name] = row
            print(json.dumps({name: row}), file=sys.stderr, flush=True)
    text = json.dumps(results, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")


if __name__ == "__main__":
    main()
