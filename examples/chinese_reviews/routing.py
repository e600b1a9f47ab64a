"""Chinese review routing: product category + sentiment, on embedded:e5-small.

    .venv/bin/python examples/chinese_reviews/routing.py data     # CSVs from ../shared/data/zh
    .venv/bin/python examples/chinese_reviews/routing.py train    # two runs (CPU: minutes)
    .venv/bin/python examples/chinese_reviews/routing.py route "手机屏幕碎了，客服也不理人"
    .venv/bin/python examples/chinese_reviews/routing.py evaluate # routes of the test reviews

Two ordinary textloop runs on the same reviews: ``category`` (9 product categories) and
``sentiment`` (negative / positive). A review is routed by both: a confident negative review goes
to its category's complaints queue, a confident positive one to the praise feed, and one that
either model is unsure of (top probability under ``--unsure``) to a person. See README.md.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import random
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"
REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO.parent / "shared" / "data" / "zh" / "online_shopping" / "reviews.csv"
SENTIMENT = {"0": "negative", "1": "positive"}


def split_of(text: str) -> str:
    """test / validation / train by a hash of the text (10 / 10 / 80%): copies stay together."""
    h = int(hashlib.sha1(text.encode("utf-8")).hexdigest()[:8], 16) % 10
    return "test" if h == 0 else "validation" if h == 1 else "train"


def write_data(args: argparse.Namespace) -> None:
    if not SOURCE.is_file():
        sys.exit(f"error: {SOURCE} not found: this example reads ../shared/data/zh/online_shopping")
    with SOURCE.open(encoding="utf-8", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("review", "").strip()]
    by_split: dict[str, list[dict[str, str]]] = defaultdict(list)
    for r in rows:
        by_split[split_of(r["review"])].append(r)
    rng = random.Random(0)
    # a class-stratified training sample (the whole 42k takes hours on 2 CPU cores)
    groups: dict[tuple[str, str], list[dict[str, str]]] = defaultdict(list)
    for r in by_split["train"]:
        groups[(r["category"], r["label"])].append(r)
    share = min(1.0, args.train_rows / len(by_split["train"]))
    train = [r for g in groups.values() for r in rng.sample(g, max(1, round(share * len(g))))]
    rng.shuffle(train)
    picked = {
        "train": train,
        "validation": rng.sample(
            by_split["validation"], min(args.eval_rows, len(by_split["validation"]))
        ),
        "test": by_split["test"],
    }
    out = Path(args.data)
    out.mkdir(parents=True, exist_ok=True)
    for task in ("category", "sentiment"):
        for split, part in picked.items():
            path = out / f"{task}-{split}.csv"
            with path.open("w", encoding="utf-8", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["text", "label"])
                for r in part:
                    label = r["category"] if task == "category" else SENTIMENT[r["label"]]
                    writer.writerow([r["review"], label])
    counts = {k: len(v) for k, v in picked.items()}
    print(f"wrote {out}: {counts} rows per task (test: every review hashed to test)")


def train_runs(args: argparse.Namespace) -> None:
    from textloop.config import load_config
    from textloop.training.run import train

    data, runs = Path(args.data), Path(args.runs)
    for task in ("category", "sentiment"):
        extra: dict[str, Any] = {
            "model": "embedded:e5-small",
            "output": str(runs / task),
            "overwrite": True,
            "data.train": str(data / f"{task}-train.csv"),
            "data.validation": str(data / f"{task}-validation.csv"),
            "data.test": str(data / f"{task}-test.csv"),
            "train.temperature_scaling": True,  # routing compares probabilities with thresholds
        }
        if args.time_budget:
            extra["train.time_budget"] = args.time_budget
        run = train(load_config(None, extra=extra))
        test = run.metrics["test"]
        print(
            f"{task}: test accuracy {test['accuracy']:.4f}, macro-F1 {test['macro_f1']:.4f} "
            f"(n={test['n']}), trained in {run.metrics['train']['seconds']:.0f} s"
        )


class Router:
    def __init__(self, runs: Path, unsure: float) -> None:
        from textloop.runs import load_run

        self.category = load_run(runs / "category")
        self.sentiment = load_run(runs / "sentiment")
        self.unsure = unsure

    def route(self, texts: list[str]) -> list[dict[str, Any]]:
        cats = self.category.predict(texts)
        sents = self.sentiment.predict(texts)
        out = []
        for text, c, s in zip(texts, cats, sents, strict=True):
            if min(c["score"], s["score"]) < self.unsure:
                route = "person"
            elif s["label"] == "negative":
                route = f"complaints/{c['label']}"
            else:
                route = "praise"
            out.append(
                {
                    "text": text,
                    "category": c["label"],
                    "category_score": round(c["score"], 3),
                    "sentiment": s["label"],
                    "sentiment_score": round(s["score"], 3),
                    "route": route,
                }
            )
        return out


def route(args: argparse.Namespace) -> None:
    texts = args.texts or [line.strip() for line in sys.stdin if line.strip()]
    for row in Router(Path(args.runs), args.unsure).route(texts):
        print(json.dumps(row, ensure_ascii=False))


def evaluate(args: argparse.Namespace) -> None:
    """Route the test reviews and score the routes against the gold category and sentiment."""
    data = Path(args.data)
    with (data / "category-test.csv").open(encoding="utf-8", newline="") as f:
        cats = list(csv.DictReader(f))
    with (data / "sentiment-test.csv").open(encoding="utf-8", newline="") as f:
        sents = list(csv.DictReader(f))
    texts = [r["text"] for r in cats]
    routed = Router(Path(args.runs), args.unsure).route(texts)
    gold = [
        f"complaints/{c['label']}" if s["label"] == "negative" else "praise"
        for c, s in zip(cats, sents, strict=True)
    ]
    auto = [(r, g) for r, g in zip(routed, gold, strict=True) if r["route"] != "person"]
    result = {
        "reviews": len(texts),
        "to_a_person": round(1 - len(auto) / len(texts), 4),
        "routed_automatically_correct": round(
            sum(r["route"] == g for r, g in auto) / max(1, len(auto)), 4
        ),
        "routes": Counter(r["route"] for r in routed).most_common(),
        "unsure_below": args.unsure,
    }
    print(json.dumps(result, ensure_ascii=False, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(REPO / "runs" / "chinese_reviews" / "data"))
    parser.add_argument("--runs", default=str(REPO / "runs" / "chinese_reviews"))
    parser.add_argument("--unsure", type=float, default=0.7, help="route to a person below this")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("data", help="write train/validation/test CSVs for both tasks")
    d.add_argument("--train-rows", type=int, default=3000, help="stratified training sample")
    d.add_argument("--eval-rows", type=int, default=1000, help="validation sample")
    t = sub.add_parser("train", help="train the category and sentiment runs")
    t.add_argument("--time-budget", help="per run, e.g. 10m (default: the recipe's epochs)")
    r = sub.add_parser("route", help="route texts (arguments or stdin lines)")
    r.add_argument("texts", nargs="*")
    sub.add_parser("evaluate", help="route the test reviews and score the routes")
    args = parser.parse_args()
    {"data": write_data, "train": train_runs, "route": route, "evaluate": evaluate}[args.command](
        args
    )


if __name__ == "__main__":
    main()
