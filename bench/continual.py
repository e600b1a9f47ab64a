"""Continual learning on BBC News topics arriving over time: naive vs replay vs EWC vs LwF.

Scenario (class-incremental with some old-topic traffic): a model is trained on batch 0
(business, entertainment); then three batches arrive, each bringing a new topic plus a third
as many examples of one earlier topic:

    batch 1: politics (new) + entertainment      batch 2: sports (new) + business
    batch 3: tech (new) + politics

Every strategy starts from the same batch-0 model and sees the same batches, through the same
``build_candidate`` that ``textloop update`` uses. After each step, every model is scored on
the test examples (BBC's test split) of every batch seen so far: R[i][j] = accuracy on batch j
after learning batch i. Printed as JSON per strategy:

- final_average_accuracy = mean_j R[T][j]
- backward_transfer = mean_{j<T} (R[T][j] - R[j][j])  (negative = forgetting; GEM, Lopez-Paz &
  Ranzato 2017), forgetting = -backward_transfer
- new_batch_accuracy = mean_{i>=1} R[i][i]
- update_seconds: total wall time of the three updates (training only)
- gate: what the default gate would decide at each update

Run (about 30 minutes on 2 shared CPU cores; LwF can run in a second process with
--strategies lwf):
    nice -n 19 .venv/bin/python bench/continual.py --output bench/results/continual.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import sys
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: no spinning threads

BATCHES = [
    {"new": ["business", "entertainment"], "old": []},
    {"new": ["politics"], "old": ["entertainment"]},
    {"new": ["sports"], "old": ["business"]},
    {"new": ["tech"], "old": ["politics"]},
]


def _rows(source: str) -> dict[str, list[dict[str, str]]]:
    from textloop.data.builtin import read_builtin

    by_label: dict[str, list[dict[str, str]]] = {}
    for row in read_builtin(source).rows:
        by_label.setdefault(row["label"], []).append({"text": row["text"], "label": row["label"]})
    return by_label


def make_batches(per_new: int, per_old: int, test_per_class: int, seed: int) -> list[dict]:
    """Disjoint train samples per batch; test rows of the batch's labels from the test split."""
    rng = random.Random(seed)
    train, test = _rows("builtin:bbc-news:train"), _rows("builtin:bbc-news:test")
    for rows in (*train.values(), *test.values()):
        rng.shuffle(rows)
    used = dict.fromkeys(train, 0)

    def take(label: str, n: int) -> list[dict[str, str]]:
        out = train[label][used[label] : used[label] + n]
        used[label] += n
        return out

    batches = []
    for spec in BATCHES:
        rows = [r for lab in spec["new"] for r in take(lab, per_new)]
        rows += [r for lab in spec["old"] for r in take(lab, per_old)]
        rng.shuffle(rows)
        labels = spec["new"] + spec["old"]
        batch_test = [r for lab in labels for r in test[lab][:test_per_class]]
        batches.append({"train": rows, "test": batch_test, "labels": labels})
    return batches


def write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label"])
        w.writeheader()
        w.writerows(rows)


def train_base(batch: dict, work: Path, args: argparse.Namespace) -> Path:
    from textloop.config import load_config
    from textloop.data.split import stratified_split
    from textloop.training.run import train

    run_dir = work / "base-run"
    if (run_dir / "metrics.json").is_file():
        return run_dir
    keep, held = stratified_split([r["label"] for r in batch["train"]], 0.1, args.seed)
    write_csv(work / "b0-train.csv", [batch["train"][i] for i in keep])
    write_csv(work / "b0-val.csv", [batch["train"][i] for i in held])
    write_csv(work / "b0-test.csv", batch["test"])
    cfg = load_config(
        None,
        extra={
            "model": "embedded:minilm",
            "output": str(run_dir),
            "overwrite": True,
            "data.train": str(work / "b0-train.csv"),
            "data.validation": str(work / "b0-val.csv"),
            "data.test": str(work / "b0-test.csv"),
            "train.epochs": 2,
            "train.lr": 1e-4,
            "train.batch_size": 16,
            "train.max_seq_len": args.max_seq_len,
            "train.log_every_steps": 50,
        },
    )
    train(cfg)
    return run_dir


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", help="also write the JSON here")
    parser.add_argument("--work", default="/tmp/textloop-bench-continual")
    parser.add_argument("--strategies", default="naive,replay,ewc,lwf")
    parser.add_argument("--per-new", type=int, default=120, help="train examples per new topic")
    parser.add_argument("--per-old", type=int, default=40, help="examples of the old topic")
    parser.add_argument("--test-per-class", type=int, default=40)
    parser.add_argument("--replay-size", type=int, default=160)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--head-lr", type=float, default=1e-3)
    parser.add_argument("--max-seq-len", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    from textloop.continual.config import load_update_config
    from textloop.continual.gate import decide
    from textloop.continual.replay import balanced_sample
    from textloop.continual.retrain import score
    from textloop.continual.update import build_candidate
    from textloop.runs import load_run

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    batches = make_batches(args.per_new, args.per_old, args.test_per_class, args.seed)
    t0 = time.perf_counter()
    base = load_run(train_base(batches[0], work, args))
    base_seconds = time.perf_counter() - t0
    results: dict = {
        "scenario": [b["labels"] for b in batches],
        "n_train": [len(b["train"]) for b in batches],
        "n_test": [len(b["test"]) for b in batches],
        "model": "embedded:minilm",
        "max_seq_len": args.max_seq_len,
        "update_epochs": args.epochs,
        "update_lr": args.lr,
        "update_head_lr": args.head_lr,
        "threads": torch.get_num_threads(),
        "base_seconds": round(base_seconds, 1),
        "strategies": {},
    }
    for strategy in args.strategies.split(","):
        cfg = load_update_config(
            None,
            [
                f"strategy={strategy}",
                f"epochs={args.epochs}",
                f"lr={args.lr}",
                f"head_lr={args.head_lr}",
                "batch_size=16",
                f"max_seq_len={args.max_seq_len}",
                f"replay.replay_size={args.replay_size}",
                f"seed={args.seed}",
            ],
        )
        model, task = base.model, base.task
        buffer = balanced_sample(batches[0]["train"], 2000, args.seed)
        matrix = [[score(model, task, batches[0]["test"])["accuracy"]]]
        seconds, gates = 0.0, []
        for i in range(1, len(batches)):
            started = time.perf_counter()
            new_model, new_task, info = build_candidate(
                model, task, batches[i]["train"], buffer, cfg
            )
            seconds += time.perf_counter() - started
            scores = [score(new_model, new_task, b["test"]) for b in batches[: i + 1]]
            matrix.append([s["accuracy"] for s in scores])
            old_test = [r for b in batches[:i] for r in b["test"]]
            g = cfg.gate
            gate = decide(
                score(model, task, old_test),
                score(new_model, new_task, old_test),
                score(model, task, batches[i]["test"]),
                scores[i],
                g.max_overall_drop,
                g.max_class_drop,
                g.min_class_support,
                g.min_new_gain,
            )
            gates.append({"accepted": gate.accepted, "reasons": gate.reasons})
            buffer = balanced_sample([*buffer, *batches[i]["train"]], 2000, args.seed)
            model, task = new_model, new_task
            print(f"{strategy} batch {i}: {matrix[-1]} ({info['seconds']} s)", file=sys.stderr)
        t = len(batches) - 1
        bwt = sum(matrix[t][j] - matrix[j][j] for j in range(t)) / t
        results["strategies"][strategy] = {
            "final_average_accuracy": round(sum(matrix[t]) / len(matrix[t]), 4),
            "backward_transfer": round(bwt, 4),
            "forgetting": round(-bwt, 4),
            "new_batch_accuracy": round(sum(matrix[i][i] for i in range(1, t + 1)) / t, 4),
            "update_seconds": round(seconds, 1),
            "accuracy_matrix": [[round(x, 4) for x in row] for row in matrix],
            "gate": gates,
        }
    strategies = results["strategies"]
    if "naive" in strategies and "replay" in strategies:
        replay_forgetting = max(strategies["replay"]["forgetting"], 1e-4)
        results["forgetting_ratio_naive_over_replay"] = round(
            strategies["naive"]["forgetting"] / replay_forgetting, 2
        )
    text = json.dumps(results, indent=2)
    print(text)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
