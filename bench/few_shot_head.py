"""The few-shot head on uneven classes: one contrastive pass, then heads fitted on its embeddings.

    HF_HUB_OFFLINE=1 PYTHONPATH=src .venv/bin/python bench/few_shot_head.py \\
        [--dataset clinc150] [--per-class 2] [--extra 300] [--seed 0] [--threads 2] \\
        [--output bench/results/few_shot_head.json]

The labelled set is what an active-learning round hands the few-shot recipe: ``--per-class``
texts of every class drawn from bench/active_learning.py's pool (4,500 training texts, sample
``--seed``), then ``--extra`` more at random from the rest of the pool, so classes hold uneven
counts. ``textloop.train`` runs the few-shot recipe once on it (as an active-learning round
does, ``active_learning.FineTune``) (the default head: inverse-
frequency class weights); then logistic-regression heads with other settings, and a nearest-
centroid head, are fitted on the same run's embeddings of the training texts and scored on the
same test sample (1,500 texts), so each row differs from the others by its head alone. A
``balanced`` control row trains on exactly ``--per-class`` + ``--extra`` / classes per class.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch

import active_learning as al  # the pool, dev and test samples of the active-learning bench
from textloop.training.few_shot import HEAD_C, HEAD_MAX_ITER, embeddings
from textloop.training.precision import choose_precision, read_cpu_info

HEADS: list[tuple[str, dict[str, Any]]] = [
    ("unweighted, C=1 (the head until 2026-12-05)", {"C": HEAD_C}),
    ("inverse-frequency weights, C=1 (the default)", {"C": HEAD_C, "class_weight": "balanced"}),
    ("unweighted, C=10", {"C": 10.0}),
    ("unweighted, C=100", {"C": 100.0}),
    ("inverse-frequency weights, C=10", {"C": 10.0, "class_weight": "balanced"}),
]


def heads(run: Any, rows: al.Rows, test: al.Rows) -> dict[str, float]:
    """Test accuracy of each head fitted on ``run``'s embeddings of ``rows``."""
    from sklearn.linear_model import LogisticRegression

    def embed(part: al.Rows) -> np.ndarray:
        return embeddings(run.model, run.task, run.task.encode([r["text"] for r in part], None))

    x, xt = embed(rows), embed(test)
    y, yt = np.array([r["label"] for r in rows]), np.array([r["label"] for r in test])
    scores = {}
    for name, kw in HEADS:
        reg = LogisticRegression(max_iter=HEAD_MAX_ITER, random_state=0, **kw).fit(x, y)
        scores[name] = round(float((reg.predict(xt) == yt).mean()), 4)
    labels = sorted(set(y.tolist()))
    centres = np.stack([x[y == lab].mean(0) for lab in labels])
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    picked = np.array(labels)[(xt @ centres.T).argmax(1)]
    scores["nearest class centroid"] = round(float((picked == yt).mean()), 4)
    return scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--dataset", default="clinc150")
    ap.add_argument("--per-class", type=int, default=2)
    ap.add_argument("--extra", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--output")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = al.load(args.dataset, 4500, 1500, 5)
    pool = data["pool"]
    n_classes = len({r["label"] for r in pool})
    first = al._per_class(pool, args.per_class, random.Random(args.seed + 1))
    rest = sorted(set(range(len(pool))) - set(first))
    uneven = first + random.Random(args.seed + 7).sample(rest, args.extra)
    even_n = args.per_class + args.extra // n_classes
    even = al._per_class(pool, even_n, random.Random(args.seed + 1))
    counts = Counter(pool[i]["label"] for i in uneven)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        learner = al.FineTune(data, Path(tmp), args.threads, args.seed)  # the AL bench's rounds
        learner.fit(uneven)
        run = learner.run
        result: dict[str, Any] = {
            "cpu": read_cpu_info().model,
            "precision": choose_precision("auto", torch.device("cpu")).name,
            "threads": args.threads,
            "dataset": args.dataset,
            "labelled": len(uneven),
            "per_class_min_max": [min(counts.values()), max(counts.values())],
            "classes_labelled": len(counts),
            "n_test": len(data["test"]),
            "run_test_accuracy": round(run.metrics["test"]["accuracy"], 4),
            "heads": heads(run, [pool[i] for i in uneven], data["test"]),
        }
        result["even_control"] = {
            "per_class": even_n,
            "run_test_accuracy": round(learner.fit(even), 4),
        }
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, indent=2))
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
