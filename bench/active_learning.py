"""Active learning: test accuracy against the number of labels, random vs margin vs diverse.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/active_learning.py --datasets snips,clinc150 \
        --seeds 5 [--mode finetune|frozen] [--threads 1] [--output bench/results/x.json]
    .venv/bin/python bench/active_learning.py --render bench/results/active_learning.json

A pool-based simulation: a class-stratified seed set (``--init-per-class`` labels per class) is
drawn from a pool sampled from the dataset's train split (``--pool-size``); each round the model
is retrained on the labelled set, scored on the test split, and a strategy picks the next batch
from the rest of the pool, which is then "labelled" from the gold labels. The label counts of the
curve are ``--labels`` (per dataset: ``snips=14,35,70,140``). Every arm of one seed starts from the
same seed set and the same first model.

Two modes:

- ``finetune`` (the real thing): every round is ``textloop.train`` with the default recipe on
  embedded:minilm, and selection is ``textloop.continual.selection.select`` on that run (the
  queue ``textloop select`` would write). A fixed dev sample (``--dev-per-class``) is the
  validation split of every round, the same for all arms.
- ``frozen`` (cheap, for many seeds and CLINC150's 150 classes): embedded:minilm's mean-pooled
  sentence embeddings, computed once, with a logistic-regression head retrained each round;
  selection is ``textloop.continual.strategies.rank`` over the head's probabilities and the same
  embeddings. Here small-text's ``BreakingTies`` (its margin strategy) runs on the same head as a
  cross-check when the library can be imported (``--small-text DIR`` adds DIR to the path),
  and ``coreset`` (k-center greedy, Sener & Savarese 2018) is the alternative diversity strategy
  that ``diverse`` (uncertainty-weighted k-means) was measured against.

Reported per dataset and strategy: the curve (mean and sd over seeds), the area under it (mean
accuracy over the label range, trapezoids), and the labels needed to reach 95% of the accuracy of
the same model trained on the whole pool (linear interpolation; null if never reached). The
issue's target: the best strategy needs <= 50% of the labels random needs.
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

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
DEFAULT_LABELS = {"snips": "14,35,70,140", "clinc150": "150,300,600,1200,2400"}
Rows = list[dict[str, str]]


def _read_tsv(path: Path) -> Rows:
    with path.open(encoding="utf-8") as f:
        return [{"text": r["text"], "label": r["label"]} for r in csv.DictReader(f, delimiter="\t")]


def _write_tsv(rows: Rows, path: Path) -> str:
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label"], delimiter="\t")
        w.writeheader()
        w.writerows(rows)
    return str(path)


def _per_class(rows: Rows, n: int, rng: random.Random) -> list[int]:
    by: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        by[r["label"]].append(i)
    return sorted(i for label in sorted(by) for i in rng.sample(by[label], min(n, len(by[label]))))


def load(name: str, pool_size: int, test_size: int, dev_per_class: int) -> dict[str, Rows]:
    """Pool (from train), fixed dev sample and test sample of a dataset, seed 0."""
    folder = SHARED / name
    if not folder.is_dir():
        sys.exit(f"{folder} not found: this bench needs ../shared/data/{name}")
    train, dev, test = (_read_tsv(folder / f"{s}.tsv") for s in ("train", "dev", "test"))
    rng = random.Random(0)
    pool = rng.sample(train, min(pool_size, len(train)))
    test = rng.sample(test, min(test_size, len(test)))
    dev = [dev[i] for i in _per_class(dev, dev_per_class, rng)]
    return {"pool": pool, "dev": dev, "test": test}


# ---- learners --------------------------------------------------------------------------------
class FineTune:
    """Each round: ``textloop.train`` (default recipe, embedded:minilm), ``select`` on the run."""

    def __init__(self, data: dict[str, Rows], work: Path, threads: int, seed: int = 0) -> None:
        self.data, self.work, self.threads, self.seed = data, work, threads, seed
        self.dev = _write_tsv(data["dev"], work / "dev.tsv")
        self.test = _write_tsv(data["test"], work / "test.tsv")
        self.n = 0
        self.run: Any = None

    def fit(self, labelled: list[int]) -> float:
        import textloop

        self.n += 1
        train = _write_tsv([self.data["pool"][i] for i in labelled], self.work / "train.tsv")
        cfg = textloop.load_config(
            None,
            [
                "task=classification",
                "model=embedded:minilm",
                f"data.train={train}",
                f"data.validation={self.dev}",
                f"data.test={self.test}",
                f"output={self.work / f'run{self.n}'}",
                f"train.threads={self.threads}",
                f"train.seed={self.seed}",
            ],
        )
        self.run = textloop.load_run(textloop.train(cfg).path)
        return float(self.run.metrics["test"]["accuracy"])

    def pick(self, strategy: str, labelled: list[int], k: int, seed: int) -> list[int]:
        from textloop.continual.selection import Candidate, select

        taken = set(labelled)
        cands = [
            Candidate(str(i), r["text"], f"pool:{i}")
            for i, r in enumerate(self.data["pool"])
            if i not in taken
        ]
        # a pool text equal to a labelled one is skipped, as `textloop select` skips training data
        done = [self.data["pool"][i]["text"] for i in labelled]
        result = select(self.run, cands, k, strategy, seed, labelled=done)
        return [int(row["id"]) for row in result.rows]


class Frozen:
    """Frozen embedded:minilm sentence embeddings + a logistic-regression head per round."""

    def __init__(self, data: dict[str, Rows], threads: int, small_text: bool) -> None:
        self.data, self.small_text = data, small_text
        torch.set_num_threads(threads)
        self.pool_x = self._embed([r["text"] for r in data["pool"]])
        self.test_x = self._embed([r["text"] for r in data["test"]])
        self.classes = sorted({r["label"] for r in data["pool"]})
        index = {c: i for i, c in enumerate(self.classes)}
        self.pool_y = np.array([index[r["label"]] for r in data["pool"]])
        self.test_y = np.array([index.get(r["label"], -1) for r in data["test"]])
        self.probs: np.ndarray | None = None

    @staticmethod
    @torch.no_grad()
    def _embed(texts: list[str]) -> np.ndarray:
        from transformers import AutoModel, AutoTokenizer

        from textloop.models.resolve import resolve_model

        path = resolve_model("embedded:minilm")
        tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
        out = []
        for start in range(0, len(texts), 64):
            enc = tok(texts[start : start + 64], padding=True, truncation=True, return_tensors="pt")
            hidden = model(**enc).last_hidden_state  # (B, T, H)
            mask = enc["attention_mask"].unsqueeze(-1).float()
            out.append(((hidden * mask).sum(1) / mask.sum(1)).numpy())
        return np.concatenate(out)

    def fit(self, labelled: list[int]) -> float:
        from sklearn.linear_model import LogisticRegression

        head = LogisticRegression(max_iter=2000, C=10.0)
        head.fit(self.pool_x[labelled], self.pool_y[labelled])
        probs = np.zeros((len(self.pool_x), len(self.classes)))
        probs[:, head.classes_] = head.predict_proba(self.pool_x)
        self.probs = probs
        return float((head.predict(self.test_x) == self.test_y).mean())

    def pick(self, strategy: str, labelled: list[int], k: int, seed: int) -> list[int]:
        from textloop.continual.strategies import rank

        assert self.probs is not None
        rest = np.setdiff1d(np.arange(len(self.pool_x)), labelled)
        if strategy == "small-text-margin":
            from small_text.query_strategies import BreakingTies

            class Head:  # small-text asks its classifier for the pool's probabilities
                def predict_proba(_self, dataset: Any) -> np.ndarray:
                    return self.probs  # type: ignore[return-value]

            q = BreakingTies().query(Head(), None, rest, np.array(labelled), None, n=k)
            return [int(i) for i in q]
        if strategy == "coreset":
            return k_center_greedy(self.pool_x, labelled, k)
        picks = rank(strategy, self.probs[rest], self.classes, k, seed, self.pool_x[rest])
        return [int(rest[p.index]) for p in picks]


def k_center_greedy(x: np.ndarray, labelled: list[int], k: int) -> list[int]:
    """Core-set selection (Sener & Savarese 2018): repeatedly take the pool point farthest
    from everything labelled or taken so far. The alternative the diverse strategy was chosen
    over; run here so the choice rests on a measurement."""
    z = x / np.linalg.norm(x, axis=1, keepdims=True)
    nearest = np.full(len(z), np.inf)
    for start in range(0, len(labelled), 512):  # distance to the nearest labelled point
        d = 2.0 - 2.0 * z @ z[labelled[start : start + 512]].T
        nearest = np.minimum(nearest, d.min(1))
    picks: list[int] = []
    for _ in range(k):
        i = int(nearest.argmax())
        picks.append(i)
        nearest = np.minimum(nearest, 2.0 - 2.0 * z @ z[i])
    return picks


# ---- the curve -------------------------------------------------------------------------------
def labels_to_reach(curve: list[tuple[int, float]], target: float) -> float | None:
    """Labels at which a (labels, accuracy) curve first reaches ``target`` (interpolated)."""
    for (n0, a0), (n1, a1) in zip([(0, 0.0), *curve], curve):
        if a1 >= target:
            return float(n1) if a1 == a0 or n0 == 0 else n0 + (target - a0) / (a1 - a0) * (n1 - n0)
    return None


def area(curve: list[tuple[int, float]]) -> float:
    """Mean accuracy over the label range (trapezoids), so curves of one range compare."""
    xs, ys = np.array([c[0] for c in curve], float), np.array([c[1] for c in curve])
    return float(np.trapezoid(ys, xs) / (xs[-1] - xs[0])) if len(xs) > 1 else float(ys[0])


def run_dataset(
    name: str, args: argparse.Namespace, strategies: list[str], save: Any
) -> dict[str, Any]:
    """The curves of one dataset; ``save(out)`` hears the summary so far after every seed."""
    counts = [int(x) for x in (args.labels or DEFAULT_LABELS[name]).split(",")]
    data = load(name, args.pool_size, args.test_size, args.dev_per_class)
    n_classes = len({r["label"] for r in data["pool"]})
    out: dict[str, Any] = {"pool": len(data["pool"]), "test": len(data["test"]), "labels": counts}
    with tempfile.TemporaryDirectory() as tmp:
        learner: Any = (
            Frozen(data, args.threads, "small-text-margin" in strategies)
            if args.mode == "frozen"
            else FineTune(data, Path(tmp), args.threads)
        )
        started = time.perf_counter()
        out["full_pool_accuracy"] = learner.fit(list(range(len(data["pool"]))))
        out["full_pool_seconds"] = round(time.perf_counter() - started, 1)
        print(f"{name} full pool: {out['full_pool_accuracy']:.4f}", file=sys.stderr)
        curves: dict[str, list[list[float]]] = defaultdict(list)
        for seed in range(args.seeds):
            init = _per_class(data["pool"], counts[0] // n_classes, random.Random(seed + 1))
            first = learner.fit(init)
            state = learner.run if args.mode == "finetune" else learner.probs
            for strategy in strategies:
                if args.mode == "finetune":
                    learner.run = state
                else:
                    learner.probs = state
                labelled, accs = list(init), [first]
                for r, n in enumerate(counts[1:]):
                    labelled += learner.pick(strategy, labelled, n - len(labelled), seed * 100 + r)
                    accs.append(learner.fit(labelled))
                curves[strategy].append(accs)
                print(
                    f"{name} seed {seed} {strategy}: {[round(a, 3) for a in accs]}", file=sys.stderr
                )
            out["seeds_completed"] = seed + 1
            save(summarise(out, curves, counts))
    return out


def summarise(
    out: dict[str, Any], curves: dict[str, list[list[float]]], counts: list[int]
) -> dict[str, Any]:
    """Fill ``out`` with each strategy's mean curve, area and labels to 95% of full-pool."""
    target = 0.95 * out["full_pool_accuracy"]
    out["target_accuracy"] = round(target, 4)
    out["strategies"] = {}
    for strategy, runs in curves.items():
        acc = np.array(runs)
        per_seed = [list(zip(counts, a)) for a in acc.tolist()]
        reach = [labels_to_reach(c, target) for c in per_seed]
        mean_curve = list(zip(counts, acc.mean(0).tolist()))
        out["strategies"][strategy] = {
            "accuracy_mean": [round(x, 4) for x in acc.mean(0)],
            "accuracy_sd": [round(x, 4) for x in acc.std(0)],
            "auc_mean": round(float(np.mean([area(c) for c in per_seed])), 4),
            "labels_to_95pct": labels_to_reach(mean_curve, target),
            "labels_to_95pct_per_seed": reach,
        }
    base = out["strategies"].get("random", {}).get("labels_to_95pct")
    for s in out["strategies"].values():
        need = s["labels_to_95pct"]
        s["share_of_random_labels"] = round(need / base, 3) if base and need else None
    return out


def render(path: str) -> str:
    d = json.loads(Path(path).read_text())
    lines = [f"{d['mode']} mode, {d['seeds']} seeds, {d['cpu']}, {d['threads']} thread(s)", ""]
    for name, r in d["datasets"].items():
        lines += [
            f"**{name}** ({r.get('seeds_completed', d['seeds'])} seeds; pool {r['pool']}, "
            f"test {r['test']}; full-pool accuracy "
            f"{r['full_pool_accuracy']:.3f}, 95% of it = {r['target_accuracy']:.3f})",
            "",
            "| strategy | "
            + " | ".join(f"{n} labels" for n in r["labels"])
            + " | AUC | labels to 95% | share of random |",
            "|---" * (len(r["labels"]) + 4) + "|",
        ]
        for s, v in r["strategies"].items():
            cells = [f"{m:.3f} ± {sd:.3f}" for m, sd in zip(v["accuracy_mean"], v["accuracy_sd"])]
            need = v["labels_to_95pct"]
            share = v["share_of_random_labels"]
            lines.append(
                f"| {s} | " + " | ".join(cells) + f" | {v['auc_mean']:.3f} | "
                f"{'not reached' if need is None else round(need)} | "
                f"{'-' if share is None else f'{share:.0%}'} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--datasets", default="snips,clinc150")
    ap.add_argument("--mode", choices=("finetune", "frozen"), default="finetune")
    ap.add_argument("--strategies", default="random,margin,diverse")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--labels", help="label counts of the curve (default per dataset)")
    ap.add_argument("--pool-size", type=int, default=2000)
    ap.add_argument("--test-size", type=int, default=700)
    ap.add_argument("--dev-per-class", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--small-text", help="folder holding the small-text package (frozen mode)")
    ap.add_argument("--output")
    ap.add_argument("--render", help="print a results JSON as markdown tables")
    args = ap.parse_args()
    if args.render:
        print(render(args.render))
        return
    strategies = args.strategies.split(",")
    if args.small_text and args.mode == "frozen":
        sys.path.append(args.small_text)
        try:
            import small_text  # noqa: F401

            strategies.append("small-text-margin")
        except ImportError as exc:
            print(f"small-text not importable ({exc}); skipping it", file=sys.stderr)
    torch.set_num_threads(args.threads)
    from textloop.training.precision import read_cpu_info

    result: dict[str, Any] = {
        "mode": args.mode,
        "seeds": args.seeds,
        "threads": args.threads,
        "cpu": read_cpu_info().model + (" (AMX)" if "amx_bf16" in read_cpu_info().flags else ""),
        "datasets": {},
    }
    started = time.perf_counter()

    def save(name: str, partial: dict[str, Any]) -> None:  # a stopped run keeps its seeds
        result["datasets"][name] = partial
        result["seconds"] = round(time.perf_counter() - started, 1)
        if args.output:
            Path(args.output).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")

    for name in args.datasets.split(","):
        run_dataset(name, args, strategies, lambda partial, n=name: save(n, partial))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
