"""Drift detection: power on planted shifts and false-alarm rate on same-distribution windows.

A BBC News topic classifier (MiniLM, trained briefly on part of BBC's train split) is
registered as production; its frozen regression set (BBC's test split) is the reference.

1. ``check_drift`` (what ``textloop drift --current FILE`` runs) on one window of each of:
   unseen BBC articles (same distribution), drug reviews (builtin:drug-reviews) and SNIPS
   voice-assistant queries (../shared/data/snips, when present).
2. Repeated windows: every pool is embedded once with the model; then ``--repeats`` times a
   reference window and a current window are drawn and tested (``drift_report``, MMD with
   ``--permutations`` permutations). Printed: the share of windows where each test and the
   whole verdict fire at alpha 0.05 (false-alarm rate for the same-distribution pool, power
   for the shifted ones), and median p-values.

Run (about 5 minutes on 2 shared CPU cores):
    nice -n 19 .venv/bin/python bench/drift.py --output bench/results/drift.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import statistics
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: no spinning threads
SNIPS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "snips" / "test.tsv"


def write_texts(path: Path, texts: list[str]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text"])
        w.writerows([t] for t in texts)
    return path


def snips_texts() -> list[str]:
    if not SNIPS.is_file():
        return []
    with SNIPS.open(encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    header = [h.lower() for h in rows[0]]
    col = header.index("text") if "text" in header else 0
    return [r[col] for r in rows[1:] if len(r) > col and r[col].strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", help="also write the JSON here")
    parser.add_argument("--work", default="/tmp/textloop-bench-drift")
    parser.add_argument("--window", type=int, default=150, help="texts per window")
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--permutations", type=int, default=200)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from textloop.artifacts.registry import Registry
    from textloop.config import load_config
    from textloop.continual.drift import drift_report
    from textloop.continual.monitor import check_drift, window_from_texts
    from textloop.continual.replay import DEFAULT_BUFFER, DEFAULT_REGRESSION_SIZE, ensure_frozen
    from textloop.data.builtin import read_builtin
    from textloop.runs import load_registered
    from textloop.training.run import train

    rng = random.Random(args.seed)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    bbc = read_builtin("builtin:bbc-news:train").rows
    rng.shuffle(bbc)
    n_train = 200
    run_dir = work / "bbc-run"
    if not (run_dir / "metrics.json").is_file():
        with (work / "train.csv").open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=["text", "label"])
            w.writeheader()
            w.writerows({"text": r["text"], "label": r["label"]} for r in bbc[:n_train])
        cfg = load_config(
            None,
            extra={
                "model": "embedded:minilm",
                "output": str(run_dir),
                "overwrite": True,
                "data.train": str(work / "train.csv"),
                "data.test": "builtin:bbc-news:test",
                "train.epochs": 1,
                "train.lr": 1e-4,
                "train.batch_size": 16,
                "train.max_seq_len": 128,
            },
        )
        train(cfg)
    registry = work / "registry"
    reg = Registry(registry)
    if reg.production_version("bbc") is None:
        reg.add(run_dir, "bbc")
        reg.promote("bbc", 1, reason="drift benchmark")
    mv, run = load_registered(reg, "bbc")

    unseen_bbc = [r["text"] for r in bbc[n_train:]]
    drugs = [r["review"] for r in read_builtin("builtin:drug-reviews:test").rows]
    rng.shuffle(drugs)
    pools = {"same (unseen BBC)": unseen_bbc[:600], "drug reviews": drugs[:400]}
    snips = snips_texts()
    if snips:
        rng.shuffle(snips)
        pools["SNIPS queries"] = snips[:400]

    single = {}
    for name, texts in pools.items():
        path = write_texts(work / f"{name.split()[0]}.csv", texts[: args.window])
        report, _ = check_drift(
            registry,
            "bbc",
            current=str(path),
            window=args.window,
            alpha=args.alpha,
            n_permutations=500,
            seed=args.seed,
            output=work / "reports" / name.split()[0],
        )
        single[name] = {
            "drift": report["verdict"]["drift"],
            "fired": report["verdict"]["fired"],
            "p_values": {k: t.get("p_value") for k, t in report["tests"].items()},
            "effect_sizes": {k: t.get("effect_size") for k, t in report["tests"].items()},
            "oov_rate": report["rates"].get("oov_rate"),
        }
        print(f"{name}: {single[name]}", file=sys.stderr)

    frozen = ensure_frozen(
        registry, "bbc", mv.version, run.config, DEFAULT_BUFFER, DEFAULT_REGRESSION_SIZE, args.seed
    )
    ref_pool = window_from_texts(run, [r["text"] for r in frozen.regression], "BBC test")
    scored = {name: window_from_texts(run, texts, name) for name, texts in pools.items()}

    def draw(window, n, r):
        from textloop.continual.drift import Window

        idx = r.sample(range(len(window)), n)
        return Window(
            predicted=[window.predicted[i] for i in idx],
            confidence=window.confidence[idx],
            embeddings=window.embeddings[idx],
            texts=[window.texts[i] for i in idx],
        )

    repeated = {}
    for name, pool in scored.items():
        fires = {"input": 0, "prediction": 0, "confidence": 0, "verdict": 0}
        pvals: dict[str, list[float]] = {"input": [], "prediction": [], "confidence": []}
        r = random.Random(args.seed + 1)
        for rep in range(args.repeats):
            ref, cur = draw(ref_pool, args.window, r), draw(pool, args.window, r)
            rep_report = drift_report(
                ref, cur, run.task.labels, args.alpha, args.permutations, seed=rep
            )
            for test in pvals:
                p = rep_report["tests"][test]["p_value"]
                pvals[test].append(p)
                fires[test] += p < args.alpha
            fires["verdict"] += rep_report["verdict"]["drift"]
        repeated[name] = {
            "fire_rate": {k: v / args.repeats for k, v in fires.items()},
            "median_p": {k: statistics.median(v) for k, v in pvals.items()},
        }
        print(f"{name}: {repeated[name]}", file=sys.stderr)

    results = {
        "model": f"MiniLM fine-tuned on {n_train} BBC articles (1 epoch)",
        "reference": f"frozen regression set (BBC test split, {len(frozen.regression)} articles)",
        "window": args.window,
        "alpha": args.alpha,
        "repeats": args.repeats,
        "permutations": args.permutations,
        "single_window": single,
        "repeated_windows": repeated,
    }
    text = json.dumps(results, indent=2)
    print(text)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
