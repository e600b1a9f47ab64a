"""Does domain-adaptive pre-training pay? MLM on BBC News text, then few-label fine-tuning.

embedded:minilm is first adapted by masked-LM continued pre-training on the BBC News training
articles (text only, labels unused; a fresh MLM head tied to the embeddings), then fine-tuned
on a few labelled articles per topic; the same fine-tuning runs from the unadapted checkpoint.
Each seed draws its own labelled sample (``--per-topic`` train and as many validation
articles per topic, for picking the best epoch) and its own development sample (``--dev-per-topic``
further training articles per topic). Every arm is scored on the development sample and on the
445 BBC test articles; when several pre-training recipes run, the one with the best mean
development macro-F1 is the headline (``selected``), so the choice never looks at the test set.

    python bench/dapt.py --seeds 10 --jobs 10 --threads 1     # recipe long: ~5 min on one GPU
    python bench/dapt.py --recipes short --threads 2          # ~40 min on 2 CPU cores
    python bench/dapt.py --recipes short,long,slow,wwm,lora --seeds 5 --jobs 8   # the sweep
    python bench/dapt.py --recipes smoke --seeds 1 --per-topic 2                 # smoke
    python bench/dapt.py --dataset zh-shopping --recipes short,short-wwm --mlm-steps 200 \
        --jobs 2 --threads 1      # Chinese: whole-word (jieba) vs token masking, e5-small

``--dataset zh-shopping`` asks the same question of Chinese and of whole-word masking there:
embedded:e5-small adapted on ``--corpus-docs`` reviews of ``../shared/data/zh/online_shopping``
(the training part of zh_quality.py's hash split, text only), then fine-tuned on ``--per-topic``
reviews per category (9 categories) and scored on 100 test reviews per category. ``short-wwm``
is ``short`` with whole-word masking, whose Chinese words come from jieba (``textloop[zh]``).

The long recipe needs ~16M tokens of MLM: minutes on a GPU, ~6 hours on 2 CPU cores
(0.18 s per block of 128 tokens, measured with the short recipe).

Recipes (MLM steps x blocks of 128 tokens): short = 400 x 16 at lr 1e-4 (what 2 CPU cores
manage in ~20 min); long = 2,000 x 64 at lr 1e-4 (~15 passes over the 1,780 articles); slow =
long at lr 3e-5; wwm = long with whole-word masking; lora = long through rank-16 adapters on
the attention projections (lr 5e-4), merged at save. ``--jobs`` runs that many trainings at once
(each its own process: on one GPU they share it).

(Gururangan et al. 2020, "Don't Stop Pretraining", arXiv:2004.10964.)
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import multiprocessing
import os
import random
import statistics
import tempfile
import time
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RECIPES: dict[str, dict[str, Any]] = {
    "short": {"steps": 400, "batch": 16, "lr": 1e-4},
    "long": {"steps": 2000, "batch": 64, "lr": 1e-4},
    "slow": {"steps": 2000, "batch": 64, "lr": 3e-5},
    "short-wwm": {"steps": 400, "batch": 16, "lr": 1e-4, "whole_word_mask": True},
    "wwm": {"steps": 2000, "batch": 64, "lr": 1e-4, "whole_word_mask": True},
    "lora": {"steps": 2000, "batch": 64, "lr": 5e-4, "lora_r": 16},
    "smoke": {"steps": 4, "batch": 4, "lr": 1e-4},
}
FINETUNE = {"epochs": 10, "batch": 8, "lr": 1e-4, "max_seq_len": 128}
SHOPPING = Path(__file__).resolve().parents[2] / "shared" / "data" / "zh" / "online_shopping"


@dataclass
class Dataset:
    """What one question is asked of: the base model, its unlabelled text, labelled and test rows."""

    base: str
    corpus: str  # data.train of the MLM runs
    rows: list[dict[str, str]]  # the labelled pool (train, validation and development draw)
    test: str  # data.test of every fine-tuning
    describe: dict[str, str]


def bbc_dataset() -> Dataset:
    from textloop.data.builtin import read_builtin

    return Dataset(
        base="embedded:minilm",
        corpus="builtin:bbc-news:train",
        rows=read_builtin("builtin:bbc-news:train").rows,
        test="builtin:bbc-news:test",
        describe={
            "unlabelled_corpus": "builtin:bbc-news:train (1,780 articles, text only)",
            "test": "builtin:bbc-news:test (445 articles)",
        },
    )


def shopping_dataset(tmp: Path, corpus_docs: int) -> Dataset:
    """Chinese product reviews: zh_quality.py's hash split; the corpus is training text only."""
    if not (SHOPPING / "reviews.csv").is_file():
        raise SystemExit(f"--dataset zh-shopping needs {SHOPPING / 'reviews.csv'}")
    parts: dict[str, list[dict[str, str]]] = {"train": [], "validation": [], "test": []}
    seen: set[str] = set()
    with (SHOPPING / "reviews.csv").open(encoding="utf-8") as f:
        for r in csv.DictReader(f):
            text = (r["review"] or "").strip()
            if text and text not in seen:
                seen.add(text)
                h = int(hashlib.sha1(text.encode("utf-8")).hexdigest()[:8], 16) % 10
                part = "test" if h == 0 else "validation" if h == 1 else "train"
                parts[part].append({"text": text, "label": r["category"]})
    rng = random.Random(12345)  # fixed: every seed and arm sees the same corpus and test set
    train = list(parts["train"])
    rng.shuffle(train)
    # the labelled pool and the unlabelled corpus come from the same training text, as in DAPT
    corpus = tmp / "zh-corpus.jsonl"
    corpus.write_text(
        "".join(
            json.dumps({"text": r["text"]}, ensure_ascii=False) + "\n" for r in train[:corpus_docs]
        ),
        encoding="utf-8",
    )
    test: list[dict[str, str]] = []
    for label in sorted({r["label"] for r in parts["test"]}):
        group = [r for r in parts["test"] if r["label"] == label]
        rng.shuffle(group)
        test += group[:100]
    return Dataset(
        base="embedded:e5-small",
        corpus=str(corpus),
        rows=train,
        test=_write_csv(tmp / "zh-test.csv", test),
        describe={
            "unlabelled_corpus": f"{corpus_docs:,} online_shopping training reviews (text only)",
            "test": f"{len(test)} online_shopping test reviews (100 per category)",
        },
    )


def _write_csv(path: Path, rows: list[dict[str, str]]) -> str:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label"])
        w.writeheader()
        w.writerows(rows)
    return str(path)


def _sample(
    rows: list[dict[str, Any]], per_topic: int, dev_per_topic: int, seed: int
) -> tuple[list, list, list]:
    """Disjoint training, validation and development articles, drawn per topic."""
    rng = random.Random(seed)
    train, val, dev = [], [], []
    for topic in sorted({r["label"] for r in rows}):
        pool = [r for r in rows if r["label"] == topic]
        rng.shuffle(pool)
        train += pool[:per_topic]
        val += pool[per_topic : 2 * per_topic]
        dev += pool[2 * per_topic : 2 * per_topic + dev_per_topic]
    return train, val, dev


def pretrain(
    name: str, base: str, corpus: str, out: str, threads: int | None, steps: int | None
) -> dict[str, Any]:
    """One MLM recipe from ``base`` on the unlabelled ``corpus``; its run summary."""
    import textloop
    from textloop.config import load_config

    recipe = dict(RECIPES[name], **({"steps": steps} if steps else {}))
    steps = recipe["steps"]
    extra: dict[str, Any] = {
        "task": "mlm",
        "model": base,
        "output": out,
        "data.train": corpus,
        "train.max_seq_len": 128,
        "train.batch_size": recipe["batch"],
        "train.lr": recipe["lr"],
        "train.max_steps": steps,
        "train.warmup_ratio": 0.06,
        "train.eval_every_steps": max(1, steps // 4),
        "train.log_every_steps": 50,
        "train.threads": threads,
        "pretrain.eval_blocks": 256,
        "pretrain.whole_word_mask": recipe.get("whole_word_mask", False),
    }
    if recipe.get("lora_r"):
        extra.update({"lora.enabled": True, "lora.r": recipe["lora_r"], "lora.alpha": 32})
    started = time.perf_counter()
    run = textloop.train(load_config(None, extra=extra))
    log = [json.loads(x) for x in (Path(out) / "log.jsonl").read_text().splitlines()]
    return {
        "recipe": recipe,
        "seconds": round(time.perf_counter() - started, 1),
        "perplexity_by_eval": [round(r["perplexity"], 2) for r in log if r["kind"] == "eval"],
        "final_perplexity": round(run.metrics["validation"]["perplexity"], 2),
    }


def finetune(
    model: str,
    train: str,
    val: str,
    dev: str,
    test: str,
    out: str,
    seed: int,
    threads: int | None,
) -> dict[str, Any]:
    """Fine-tune ``model`` on ``train``; accuracy and macro-F1 on ``dev`` and ``test``."""
    import textloop
    from textloop.config import load_config

    cfg = load_config(
        None,
        extra={
            "model": model,
            "output": out,
            "data.train": train,
            "data.validation": val,
            "data.test": test,
            "train.recipe": "default",  # plain fine-tuning (auto picks few-shot at <= 16 per class)
            "train.epochs": FINETUNE["epochs"],
            "train.batch_size": FINETUNE["batch"],
            "train.lr": FINETUNE["lr"],
            "train.max_seq_len": FINETUNE["max_seq_len"],
            "train.seed": seed,
            "train.threads": threads,
            "train.log_every_steps": 5,
        },
    )
    run = textloop.train(cfg)
    d = run.evaluate(dev)
    t = run.metrics["test"]
    return {
        "test": {"accuracy": t["accuracy"], "macro_f1": t["macro_f1"]},
        "dev": {"accuracy": d["accuracy"], "macro_f1": d["macro_f1"]},
    }


def _stats(values: list[float]) -> dict[str, float]:
    return {
        "mean": round(statistics.mean(values), 4),
        "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
        "min": round(min(values), 4),
        "max": round(max(values), 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--recipes", default="long", help=f"comma-separated: {', '.join(RECIPES)}")
    ap.add_argument("--per-topic", type=int, default=8, help="labelled articles per topic")
    ap.add_argument("--dev-per-topic", type=int, default=60, help="development articles per topic")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="threads per training process")
    ap.add_argument("--jobs", type=int, default=1, help="trainings at once (processes)")
    ap.add_argument("--output", help="also write the JSON here (updated after every training)")
    ap.add_argument("--dataset", choices=("bbc", "zh-shopping"), default="bbc")
    ap.add_argument("--mlm-steps", type=int, help="MLM steps for every recipe (default: its own)")
    ap.add_argument("--corpus-docs", type=int, default=12000, help="zh-shopping: corpus reviews")
    args = ap.parse_args()
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        ap.error(f"unknown recipe(s) {', '.join(unknown)}; known: {', '.join(RECIPES)}")

    import torch

    from textloop.training.precision import choose_precision, read_cpu_info

    started = time.perf_counter()
    with (
        tempfile.TemporaryDirectory() as tmp_dir,
        ProcessPoolExecutor(
            max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn")
        ) as pool,
    ):
        tmp = Path(tmp_dir)
        data = shopping_dataset(tmp, args.corpus_docs) if args.dataset != "bbc" else bbc_dataset()
        rows = data.rows
        n_topics = len({r["label"] for r in rows})
        cpu = read_cpu_info()
        result: dict[str, Any] = {
            "setup": {
                "dataset": args.dataset,
                "model": data.base,
                **data.describe,
                "labelled": f"{args.per_topic} per topic x {n_topics} topics (train), same for "
                "validation",
                "development": f"{args.dev_per_topic} per topic x {n_topics} topics, other "
                "training rows",
                "mlm_block": 128,
                "mlm_steps": args.mlm_steps or "each recipe's own",
                "finetune": FINETUNE,
                "seeds": args.seeds,
                "cpu": cpu.model,
                "precision": choose_precision("auto", torch.device("cpu"), cpu).name,
                "threads_per_job": args.threads,
                "jobs": args.jobs,
            },
            "mlm": {},
            "per_seed": [{"seed": s} for s in range(args.seeds)],
        }
        samples = []
        for seed in range(args.seeds):
            train, val, dev = _sample(rows, args.per_topic, args.dev_per_topic, seed)
            samples.append(
                tuple(
                    _write_csv(tmp / f"{part}{seed}.csv", data)
                    for part, data in (("train", train), ("val", val), ("dev", dev))
                )
            )

        jobs: dict[Future, tuple[str, str, int]] = {}  # -> (kind, arm, seed)

        def finetune_job(arm: str, model: str, seed: int) -> None:
            train, val, dev = samples[seed]
            out = str(tmp / f"ft-{arm}-{seed}")
            future = pool.submit(
                finetune, model, train, val, dev, data.test, out, seed, args.threads
            )
            jobs[future] = ("finetune", arm, seed)

        for name in recipes:  # the long pre-training runs first, the baselines beside them
            future = pool.submit(
                pretrain,
                name,
                data.base,
                data.corpus,
                str(tmp / f"mlm-{name}"),
                args.threads,
                args.mlm_steps,
            )
            jobs[future] = ("pretrain", name, -1)
        for seed in range(args.seeds):
            finetune_job("baseline", data.base, seed)
        while jobs:
            done = next(as_completed(jobs))
            kind, arm, seed = jobs.pop(done)
            if kind == "pretrain":
                result["mlm"][arm] = done.result()
                for s in range(args.seeds):
                    finetune_job(arm, str(tmp / f"mlm-{arm}"), s)
            else:
                result["per_seed"][seed][arm] = done.result()
            result["seconds"] = round(time.perf_counter() - started, 1)
            _summarise(result, ["baseline", *recipes])
            _emit(result, args.output, final=not jobs)


def _paired(gains: list[float]) -> dict[str, Any]:
    """Mean paired gain, the seeds it was positive on, and the paired t statistic."""
    out: dict[str, Any] = {
        "mean": round(statistics.mean(gains), 4),
        "seeds_improved": f"{sum(g > 0 for g in gains)}/{len(gains)}",
    }
    if len(gains) > 1 and statistics.stdev(gains) > 0:
        t = statistics.mean(gains) / (statistics.stdev(gains) / len(gains) ** 0.5)
        out["paired_t"] = round(t, 2)
    return out


def _summarise(result: dict[str, Any], arms: list[str]) -> None:
    per_seed = result["per_seed"]
    complete = [a for a in arms if all(a in s for s in per_seed)]
    summary: dict[str, Any] = {}
    for arm in complete:
        summary[arm] = {
            split: {
                metric: _stats([s[arm][split][metric] for s in per_seed])
                for metric in ("accuracy", "macro_f1")
            }
            for split in ("dev", "test")
        }
        if arm != "baseline" and "baseline" in complete:
            summary[arm]["test_gain_macro_f1_per_seed"] = [
                round(s[arm]["test"]["macro_f1"] - s["baseline"]["test"]["macro_f1"], 4)
                for s in per_seed
            ]
            summary[arm]["dev_gain_macro_f1_per_seed"] = [
                round(s[arm]["dev"]["macro_f1"] - s["baseline"]["dev"]["macro_f1"], 4)
                for s in per_seed
            ]
            gains = summary[arm]["test_gain_macro_f1_per_seed"]
            summary[arm]["test_gain_macro_f1"] = _paired(gains)
    result["summary"] = summary
    adapted = [a for a in complete if a != "baseline"]
    if adapted:  # chosen on development macro-F1 alone
        best = max(adapted, key=lambda a: summary[a]["dev"]["macro_f1"]["mean"])
        result["selected"] = {"recipe": best, "by": "mean development macro-F1"}


def _emit(result: dict[str, Any], output: str | None, final: bool) -> None:
    """Print the JSON at the end; keep a partial copy in ``output`` after each training."""
    text = json.dumps(result, indent=2)
    if final:
        print(text)
    if output:
        tmp = Path(output + ".tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, output)


if __name__ == "__main__":
    main()
