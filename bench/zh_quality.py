"""embedded:e5-small on Chinese and English tasks, each against a baseline run in the same script.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/zh_quality.py \
        [--rows shopping-sentiment,shopping-category,people-daily,drcd,snips,clinc150] \
        [--threads 2] [--output bench/results/zh_quality.json]
    .venv/bin/python bench/zh_quality.py --render bench/results/zh_quality.json   # README table

Rows (every model run is ``textloop.train`` with nothing but model, task and data: the default
recipe, as a new user would run it):

- ``shopping-sentiment`` / ``shopping-category``: ``../shared/data/zh/online_shopping`` (52,770
  reviews; no split ships, so rows go to test / validation / train by a hash of the review text,
  10% / 10% / 80%), positive/negative and the 9 categories. The model trains on a
  class-stratified subsample of ``--shopping-train`` rows (2 cores); the baseline (character 1-3
  gram TF-IDF + logistic regression) trains on the same subsample and, as a second number, on
  all 42k training rows. Test accuracy and macro-F1 on the whole test split.
- ``people-daily``: ``builtin:people-daily-ner`` (People's Daily, Jan 1998; PER/LOC/ORG,
  character tags). ``--ner-train`` training sentences; the full validation (early stopping) and
  test splits. Baseline: a per-character logistic regression over the character n-grams in a
  +-2 window (TF-IDF weighted), tags repaired to valid IOB2. Entity F1 (seqeval strict IOB2).
- ``drcd``: ``../shared/data/zh/drcd`` (traditional Chinese, SQuAD v1.1 JSON): trains on
  ``--qa-train`` questions of DRCD_dev.json (validation: 10% of its contexts, held out by
  textloop) and tests on all of DRCD_test.json. EM / F1 under the official CMRC2018 / DRCD
  definition (``qa.metric: cmrc``, characters as tokens). Baseline (no model): the clause of the
  context whose character-bigram TF-IDF vector is closest to the question's, which is what a
  retrieval-only system answers; there is no sensible TF-IDF + logistic-regression span model.
- ``snips`` / ``clinc150``: English intents (``../shared/data``), ``--english-per-class``
  training examples per intent, e5-small vs embedded:minilm on the same sample, plus the TF-IDF
  baseline: what the multilingual model costs on English.

Rows whose data is missing are skipped. Prints one JSON object with the CPU and thread count.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import random
import re
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

import textloop
from textloop.training.precision import choose_precision, read_cpu_info

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
ROWS = ("shopping-sentiment", "shopping-category", "people-daily", "drcd", "snips", "clinc150")
Rows = list[dict[str, str]]


# --- data ------------------------------------------------------------------------------------


def _bucket(text: str) -> str:
    h = int(hashlib.sha1(text.encode("utf-8")).hexdigest()[:8], 16) % 10
    return "test" if h == 0 else "validation" if h == 1 else "train"


def shopping(label_key: str) -> dict[str, Rows] | None:
    path = SHARED / "zh" / "online_shopping" / "reviews.csv"
    if not path.is_file():
        return None
    out: dict[str, Rows] = {"train": [], "validation": [], "test": []}
    seen: set[str] = set()
    with path.open(encoding="utf-8") as f:
        for r in csv.DictReader(f):
            text = (r["review"] or "").strip()
            if not text or text in seen:  # exact copies would leak across the hash split
                continue
            seen.add(text)
            label = r["category"] if label_key == "category" else r["label"]
            out[_bucket(text)].append({"text": text, "label": label})
    return out


def _read_tsv(path: Path) -> Rows:
    with path.open(encoding="utf-8") as f:
        return [{"text": r["text"], "label": r["label"]} for r in csv.DictReader(f, delimiter="\t")]


def english(name: str) -> dict[str, Rows] | None:
    folder = SHARED / name
    if not folder.is_dir():
        return None
    return {s: _read_tsv(folder / f"{s}.tsv") for s in ("train", "dev", "test")} | {
        "validation": _read_tsv(folder / "dev.tsv")
    }


def per_class(rows: Rows, total: int | None, seed: int, each: int | None = None) -> Rows:
    """A class-stratified sample: ``each`` per class, or ``total`` spread by class share."""
    by: dict[str, Rows] = defaultdict(list)
    for r in rows:
        by[r["label"]].append(r)
    rng = random.Random(seed)
    out: Rows = []
    for label in sorted(by):
        group = list(by[label])
        rng.shuffle(group)
        k = each if each is not None else max(1, round(len(group) * (total or 0) / len(rows)))
        out += group[:k]
    rng.shuffle(out)
    return out


def write_tsv(rows: Rows, path: Path) -> str:
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label"], delimiter="\t")
        w.writeheader()
        w.writerows(rows)
    return str(path)


# --- baselines -------------------------------------------------------------------------------


def tfidf_classifier(train: Rows, test: Rows) -> dict[str, Any]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    started = time.perf_counter()
    vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 3), sublinear_tf=True, min_df=2)
    x = vec.fit_transform([r["text"] for r in train])
    clf = LogisticRegression(max_iter=2000, C=10.0).fit(x, [r["label"] for r in train])
    pred = clf.predict(vec.transform([r["text"] for r in test]))
    gold = [r["label"] for r in test]
    return {
        "n_train": len(train),
        "seconds": round(time.perf_counter() - started, 1),
        "accuracy": round(float(accuracy_score(gold, pred)), 4),
        "macro_f1": round(float(f1_score(gold, pred, average="macro")), 4),
    }


def _char_features(chars: list[str], i: int) -> dict[str, float]:
    feats: dict[str, float] = {}
    padded = ["<s>", "<s>", *chars, "</s>", "</s>"]
    j = i + 2
    for lo in range(-2, 3):
        for hi in range(lo, min(lo + 3, 3)):
            feats[f"{lo}:{hi}:" + "".join(padded[j + lo : j + hi + 1])] = 1.0
    return feats


def _repair(tags: list[str]) -> list[str]:
    out, prev = [], "O"
    for t in tags:
        if t.startswith("I-") and prev[2:] != t[2:]:
            t = "B-" + t[2:]
        out.append(t)
        prev = t
    return out


def ner_baseline(train: list[Any], test: list[Any]) -> dict[str, Any]:
    from sklearn.feature_extraction import DictVectorizer
    from sklearn.feature_extraction.text import TfidfTransformer
    from sklearn.linear_model import SGDClassifier

    from textloop.tasks.ner.metrics import entity_metrics

    started = time.perf_counter()
    vec, tfidf = DictVectorizer(), TfidfTransformer(sublinear_tf=True)
    feats = [_char_features(s.words, i) for s in train for i in range(len(s.words))]
    x = tfidf.fit_transform(vec.fit_transform(feats))
    # logistic regression fitted by SGD: lbfgs over ~10^5 characters x 10^5 n-grams is minutes
    clf = SGDClassifier(loss="log_loss", alpha=1e-6, max_iter=30, tol=1e-4, random_state=0)
    clf.fit(x, [t for s in train for t in s.tags])
    pred: list[list[str]] = []
    for s in test:
        xs = tfidf.transform(
            vec.transform([_char_features(s.words, i) for i in range(len(s.words))])
        )
        pred.append(_repair(list(clf.predict(xs))))
    m = entity_metrics([s.tags for s in test], pred)
    return {
        "n_train": len(train),
        "seconds": round(time.perf_counter() - started, 1),
        "f1": round(float(m["f1"]), 4),
    }


_CLAUSE = re.compile(r"[^。！？；，,;!?]+[。！？；，,;!?]?")


def qa_baseline(test: list[Any]) -> dict[str, Any]:
    from sklearn.feature_extraction.text import TfidfVectorizer

    from textloop.tasks.qa.metrics import squad_scores

    started = time.perf_counter()
    vec = TfidfVectorizer(analyzer="char", ngram_range=(2, 2), sublinear_tf=True)
    vec.fit(sorted({ex.context for ex in test}) + [ex.question for ex in test])
    preds, cut = [], {}
    questions = vec.transform([ex.question for ex in test])
    for i, ex in enumerate(test):
        if ex.context not in cut:
            clauses = [c.strip("，,;；。！？!? ") for c in _CLAUSE.findall(ex.context)]
            clauses = [c for c in clauses if c] or [ex.context]
            cut[ex.context] = (clauses, vec.transform(clauses))
        clauses, x = cut[ex.context]
        preds.append(clauses[int((x @ questions[i].T).toarray().ravel().argmax())])
    m = squad_scores(preds, [[t for t, _ in ex.answers] for ex in test], "cmrc")
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "exact_match": round(m["exact_match"], 4),
        "f1": round(m["f1"], 4),
    }


# --- textloop --------------------------------------------------------------------------------


def run_textloop(
    task: str, model: str, files: dict[str, str], out: Path, args: argparse.Namespace
) -> dict[str, Any]:
    sets = [
        f"task={task}",
        f"model={model}",
        f"output={out}",
        f"train.threads={args.threads}",
        *(f"data.{k}={v}" for k, v in files.items()),
    ]
    if args.time_budget:  # the recipe fits its steps to it (train.time_budget)
        sets.append(f"train.time_budget={args.time_budget}")
    cfg = textloop.load_config(None, sets)
    started = time.perf_counter()
    run = textloop.train(cfg)
    m = run.metrics
    test = m.get("test", m["validation"])
    keep = ("accuracy", "macro_f1", "f1", "exact_match", "definition")
    return {
        "model": model,
        "seconds": round(time.perf_counter() - started, 1),
        "train_seconds": m["train"]["seconds"],
        "steps": m["train"]["steps"],
        "recipe": m["train"]["recipe"]["settings"],
        **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in test.items() if k in keep},
    }


def _write_conll(sents: list[Any], path: Path) -> str:
    with path.open("w", encoding="utf-8") as f:
        for s in sents:
            f.writelines(f"{w} {t}\n" for w, t in zip(s.words, s.tags))
            f.write("\n")
    return str(path)


def _write_qa(examples: list[Any], path: Path) -> str:
    with path.open("w", encoding="utf-8") as f:
        for ex in examples:
            row = {
                "id": ex.qid,
                "question": ex.question,
                "context": ex.context,
                "answers": {
                    "text": [t for t, _ in ex.answers],
                    "answer_start": [s for _, s in ex.answers],
                },
            }
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return str(path)


def classification_row(
    row: str,
    splits: dict[str, Rows],
    train: Rows,
    val: Rows,
    models: list[str],
    tmp: Path,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """One classification row: the sample's files, the TF-IDF baseline on the same training
    rows, and a default-recipe run of each model."""
    test = splits["test"]
    files = {
        "train": write_tsv(train, tmp / f"{row}-train.tsv"),
        "validation": write_tsv(val, tmp / f"{row}-val.tsv"),
        "test": write_tsv(test, tmp / f"{row}-test.tsv"),
    }
    return {
        "row": row,
        "sizes": {"train": len(train), "validation": len(val), "test": len(test)},
        "baseline": tfidf_classifier(train, test),
        "models": [
            run_textloop("classification", m, files, tmp / f"{row}-{m.split(':')[1]}", args)
            for m in models
        ],
    }


def run_row(row: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any] | None:
    e5 = "embedded:e5-small"
    if row.startswith("shopping"):
        splits = shopping(row.split("-")[1])
        if splits is None:
            return None
        train = per_class(splits["train"], args.shopping_train, args.seed)
        val = per_class(splits["validation"], args.shopping_train // 4, args.seed + 1)
        out = classification_row(row, splits, train, val, [e5], tmp, args)
        if args.baseline_all_train:
            out["baseline_all_train"] = tfidf_classifier(splits["train"], splits["test"])
        return out
    if row in ("snips", "clinc150"):
        splits = english(row)
        if splits is None:
            return None
        train = per_class(splits["train"], None, args.seed, each=args.english_per_class)
        val = per_class(splits["validation"], None, args.seed + 1, each=args.english_per_class)
        return classification_row(row, splits, train, val, [e5, "embedded:minilm"], tmp, args)
    if row == "people-daily":
        from textloop.tasks.ner.data import read_people_daily

        try:
            train_all = read_people_daily("train")
        except textloop.TextloopError:
            return None
        train = random.Random(args.seed).sample(train_all, min(args.ner_train, len(train_all)))
        val, test = read_people_daily("validation"), read_people_daily("test")
        files = {
            "train": _write_conll(train, tmp / "pd-train.conll"),
            "validation": _write_conll(val, tmp / "pd-val.conll"),
            "test": _write_conll(test, tmp / "pd-test.conll"),
        }
        return {
            "row": row,
            "sizes": {"train": len(train), "validation": len(val), "test": len(test)},
            "baseline": ner_baseline(train, test),
            "models": [run_textloop("ner", e5, files, tmp / row, args)],
        }
    if row == "drcd":
        from textloop.tasks.qa.data import read_qa

        folder = SHARED / "zh" / "drcd"
        if not folder.is_dir():
            return None
        cols = {"question_column": "question", "context_column": "context"}
        cols["answers_column"] = "answers"
        train_all, _ = read_qa(str(folder / "DRCD_dev.json"), cols, False)
        test, _ = read_qa(str(folder / "DRCD_test.json"), cols, False)
        # whole contexts, so no paragraph has questions on both sides of the sample's edge
        contexts = sorted({ex.context for ex in train_all})
        random.Random(args.seed).shuffle(contexts)
        train: list[Any] = []
        for c in contexts:
            if len(train) >= args.qa_train:
                break
            train += [ex for ex in train_all if ex.context == c]
        files = {
            "train": _write_qa(train, tmp / "drcd-train.jsonl"),
            "test": _write_qa(test, tmp / "drcd-test.jsonl"),
        }
        return {
            "row": row,
            "sizes": {"train": len(train), "test": len(test)},
            "baseline": qa_baseline(test),
            "models": [run_textloop("qa", e5, files, tmp / row, args)],
        }
    raise SystemExit(f"unknown row {row!r}; rows: {', '.join(ROWS)}")


def render(path: Path) -> str:
    data = json.loads(path.read_text())
    lines = [
        "| row | train | metric | TF-IDF baseline | e5-small | minilm |",
        "| --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for r in data["rows"]:
        metric = "f1" if r["row"] in ("people-daily", "drcd") else "accuracy"
        base = r["baseline"]
        models = {m["model"].split(":")[1]: m for m in r["models"]}

        def cell(m: dict[str, Any] | None, metric: str = metric) -> str:
            if m is None:
                return "-"
            extra = f" / EM {m['exact_match']:.3f}" if "exact_match" in m else ""
            return f"{m[metric]:.3f}{extra} ({m['train_seconds']:.0f} s)"

        b = f"{base[metric]:.3f}" + (
            f" / EM {base['exact_match']:.3f}" if "exact_match" in base else ""
        )
        if "baseline_all_train" in r:
            b += f" (all {r['baseline_all_train']['n_train']}: {r['baseline_all_train'][metric]:.3f})"
        lines.append(
            f"| {r['row']} | {r['sizes']['train']} | {metric} | {b} | {cell(models.get('e5-small'))} "
            f"| {cell(models.get('minilm'))} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--shopping-train", type=int, default=4000)
    p.add_argument("--ner-train", type=int, default=3000, help="training sentences")
    p.add_argument("--qa-train", type=int, default=1500, help="training questions")
    p.add_argument("--english-per-class", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--time-budget", help="train.time_budget for every model run, e.g. 10m")
    p.add_argument(
        "--no-baseline-all-train",
        dest="baseline_all_train",
        action="store_false",
        help="skip the TF-IDF baseline on all 42k shopping training rows (minutes)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output")
    p.add_argument("--render", type=Path)
    args = p.parse_args()
    if args.render:
        print(render(args.render))
        return
    cpu = read_cpu_info()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="tl-zh-") as t:
        for row in args.rows.split(","):
            started = time.perf_counter()
            res = run_row(row, args, Path(t))
            if res is None:
                print(f"{row}: data missing, skipped", file=sys.stderr)
                continue
            res["wall_seconds"] = round(time.perf_counter() - started, 1)
            results.append(res)
            print(json.dumps(res, ensure_ascii=False), file=sys.stderr, flush=True)
            payload = {
                "cpu": cpu.model,
                "precision": choose_precision("auto", torch.device("cpu"), cpu).name,
                "threads": args.threads,
                "settings": {k: v for k, v in vars(args).items() if k not in ("output", "render")},
                "rows": results,
            }
            if args.output:  # after every row, so a long run keeps what it finished
                Path(args.output).write_text(json.dumps(payload, indent=2, ensure_ascii=False))
    print(json.dumps(payload, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
