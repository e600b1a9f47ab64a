"""textloop's default recipe vs Hugging Face ``Trainer``: defaults and a small grid, same data.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/recipes.py --rows snips-10,bbc-50 \
        [--grid all|default|none|1e-4x10,...] [--threads 2] [--output bench/results/x.json]
    .venv/bin/python bench/recipes.py --render bench/results/recipes_*.json   # README table

Every row trains embedded:minilm on one labelled dataset (or a class-stratified subsample of it)
three ways, on the same train / validation / test files and the same machine, one after another:

- ``textloop``: ``textloop.train`` with nothing but model, task and data (the default recipe);
- ``hf-default``: ``Trainer`` with its own defaults (lr 5e-5, 3 epochs, batch 8, no warmup, no
  weight decay);
- ``hf-grid``: ``Trainer`` over lr in {3e-5, 1e-4, 2e-4} x epochs in {3, 5, 10}; the best cell
  (on the test metric, which favours the grid) is reported with its time.

``--grid`` picks the cells to run (``all``: the 9 + default; ``default``: HF defaults only; or a
list like ``1e-4x5,2e-4x10``). The metric is accuracy and macro-F1 for classification (test split)
and entity F1 (seqeval strict IOB2, textloop's own ``entity_metrics``) for NER. CoNLL-2003 as
shipped here has no test split, so NER rows report the validation split, which textloop also uses
for early stopping and the grid's best cell is picked on: both sides see it. Subsample rows draw
their validation split with the same per-class count from the dataset's own dev split (or from
the rest of train). Both sides run the precision ``train.precision: auto`` picks on this CPU
(bf16 autocast with AMX, else fp32), with ``--threads`` intra-op threads. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import random
import statistics
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
from textloop.models.resolve import resolve_model
from textloop.training.precision import choose_precision, read_cpu_info

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
GRID = [(lr, ep) for lr in (3e-5, 1e-4, 2e-4) for ep in (3, 5, 10)]
# which rows chose the recipe's constants; every other row is unseen by it (README says so)
CHOSEN_ON = ("snips-10", "snips-50", "bbc-10", "bbc-50")

Rows = list[dict[str, str]]


def _read_tsv(path: Path) -> Rows:
    with path.open(encoding="utf-8") as f:
        return [{"text": r["text"], "label": r["label"]} for r in csv.DictReader(f, delimiter="\t")]


def _builtin(source: str) -> Rows:
    from textloop.data.builtin import builtin_columns, read_builtin

    cols = builtin_columns(source)
    table = read_builtin(source)
    return [
        {"text": str(r[cols["text_column"]]), "label": str(r[cols["label_column"]])}
        for r in table.rows
    ]


def _per_class(rows: Rows, n: int | None, seed: int) -> Rows:
    if n is None:
        return rows
    by: dict[str, Rows] = defaultdict(list)
    for r in rows:
        by[r["label"]].append(r)
    rng = random.Random(seed)
    out: Rows = []
    for label in sorted(by):
        group = list(by[label])
        rng.shuffle(group)
        out += group[:n]
    rng.shuffle(out)
    return out


def _split_off(rows: Rows, share: float, seed: int) -> tuple[Rows, Rows]:
    rng = random.Random(seed)
    by: dict[str, Rows] = defaultdict(list)
    for r in rows:
        by[r["label"]].append(r)
    keep: Rows = []
    held: Rows = []
    for label in sorted(by):
        group = list(by[label])
        rng.shuffle(group)
        k = max(1, round(len(group) * share))
        held += group[:k]
        keep += group[k:]
    rng.shuffle(keep)
    return keep, held


def classification_splits(name: str, per_class: int | None, seed: int) -> dict[str, Rows] | None:
    """train / validation / test rows of one classification row of the table."""
    if name in ("snips", "clinc150"):
        folder = SHARED / name
        if not folder.is_dir():
            return None
        train, dev, test = (_read_tsv(folder / f"{s}.tsv") for s in ("train", "dev", "test"))
    else:
        source = {"bbc": "builtin:bbc-news", "drug": "builtin:drug-reviews"}[name]
        train, test = _builtin(source), _builtin(f"{source}:test")
        train, dev = _split_off(train, 0.1, seed)
    if per_class is not None:
        train = _per_class(train, per_class, seed)
        dev = _per_class(dev, per_class, seed + 1)
    return {"train": train, "validation": dev, "test": test}


def _write(rows: Rows, path: Path) -> str:
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label"], delimiter="\t")
        w.writeheader()
        w.writerows(rows)
    return str(path)


def _conll_sentences(path: Path, limit: int | None, seed: int) -> list[tuple[list[str], list[str]]]:
    from textloop.tasks.ner.data import read_ner
    from textloop.tasks.ner.schemes import to_iob2

    read = read_ner(str(path), {"tag_column": -1})
    to_iob2(read, "auto", str(path))  # CoNLL-2003 ships IOB1; both sides learn and score IOB2
    sents = [(s.words, s.tags) for s in read]
    if limit is not None and limit < len(sents):
        sents = random.Random(seed).sample(sents, limit)
    return sents


def _write_conll(sents: list[tuple[list[str], list[str]]], path: Path) -> str:
    with path.open("w", encoding="utf-8") as f:
        for words, tags in sents:
            f.writelines(f"{w} {t}\n" for w, t in zip(words, tags))
            f.write("\n")
    return str(path)


def row_spec(row: str) -> tuple[str, str, int | None]:
    """``snips-10`` -> (classification, snips, 10); ``conll-2000`` -> (ner, conll, 2000 sents)."""
    name, _, size = row.partition("-")
    n = int(size) if size and size != "full" else None
    return ("ner" if name == "conll" else "classification"), name, n


# --- textloop --------------------------------------------------------------------------------


def run_textloop(
    task: str, files: dict[str, str], out: Path, threads: int, seed: int, extra: list[str]
) -> dict[str, Any]:
    sets = [
        *extra,
        f"train.seed={seed}",
        f"task={task}",
        "model=embedded:minilm",
        f"data.train={files['train']}",
        f"data.validation={files['validation']}",
        f"output={out}",
        f"train.threads={threads}",
    ]
    if "test" in files:
        sets.append(f"data.test={files['test']}")
    cfg = textloop.load_config(None, sets)
    started = time.perf_counter()
    run = textloop.train(cfg)
    seconds = time.perf_counter() - started
    m = run.metrics
    split = "test" if "test" in m else "validation"
    return {
        "seconds": round(seconds, 1),
        "train_seconds": m["train"]["seconds"],
        "steps": m["train"]["steps"],
        "recipe": m["train"]["recipe"]["settings"],
        **_scores(task, m[split]),
    }


def _scores(task: str, m: dict[str, Any]) -> dict[str, float]:
    if task == "ner":
        return {"f1": round(m["f1"], 4)}
    return {"accuracy": round(m["accuracy"], 4), "macro_f1": round(m["macro_f1"], 4)}


# --- Hugging Face Trainer --------------------------------------------------------------------


def hf_training_args(out: str | Path, seed: int, **given: Any) -> Any:
    """``TrainingArguments`` of every HF ``Trainer`` run of the benches: no checkpoints, no
    reporting, the seed, and the precision textloop's ``auto`` picks (bf16 autocast or fp32);
    ``given`` adds or overrides (lr, epochs, evaluation)."""
    from transformers import TrainingArguments

    return TrainingArguments(
        **{
            "output_dir": str(out),
            "save_strategy": "no",
            "report_to": [],
            "use_cpu": not torch.cuda.is_available(),
            "seed": seed,
            "disable_tqdm": True,
            "logging_steps": 10_000,
            "bf16": choose_precision("auto", torch.device("cpu")).name == "bf16",
            **given,
        }
    )


def _trainer(model: Any, ds: Any, collator: Any, lr: float, epochs: int, seed: int) -> float:
    from transformers import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        targs = hf_training_args(tmp, seed, learning_rate=lr, num_train_epochs=epochs)
        trainer = Trainer(model=model, args=targs, train_dataset=ds, data_collator=collator)
        started = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):
            trainer.train()
        return time.perf_counter() - started


def hf_classification(
    rows: dict[str, Rows], lr: float, epochs: int, seed: int, max_len: int
) -> dict[str, Any]:
    from datasets import Dataset
    from sklearn.metrics import accuracy_score, f1_score
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
    )

    model_dir = resolve_model("embedded:minilm")
    tok = AutoTokenizer.from_pretrained(model_dir)
    labels = sorted({r["label"] for r in rows["train"]})
    index = {lab: i for i, lab in enumerate(labels)}
    enc = tok([r["text"] for r in rows["train"]], truncation=True, max_length=max_len)
    ds = Dataset.from_dict({**enc, "labels": [index[r["label"]] for r in rows["train"]]})
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=len(labels))
    seconds = _trainer(model, ds, DataCollatorWithPadding(tok), lr, epochs, seed)
    model.eval()
    preds: list[int] = []
    test = rows["test"]
    with torch.inference_mode():
        for i in range(0, len(test), 64):
            batch = tok(
                [r["text"] for r in test[i : i + 64]],
                truncation=True,
                max_length=max_len,
                padding=True,
                return_tensors="pt",
            )
            preds += model(**batch).logits.argmax(-1).tolist()
    gold = [index.get(r["label"], -1) for r in test]
    return {
        "seconds": round(seconds, 1),
        "accuracy": round(float(accuracy_score(gold, preds)), 4),
        "macro_f1": round(float(f1_score(gold, preds, average="macro")), 4),
    }


def hf_ner(
    sents: dict[str, list[tuple[list[str], list[str]]]], lr: float, epochs: int, seed: int
) -> dict[str, Any]:
    from datasets import Dataset
    from transformers import (
        AutoModelForTokenClassification,
        AutoTokenizer,
        DataCollatorForTokenClassification,
    )

    from textloop.tasks.ner.metrics import entity_metrics

    model_dir = resolve_model("embedded:minilm")
    tok = AutoTokenizer.from_pretrained(model_dir)
    labels = sorted({t for _, tags in sents["train"] for t in tags})
    index = {lab: i for i, lab in enumerate(labels)}

    def encode(data: list[tuple[list[str], list[str]]]) -> tuple[Any, list[list[int]]]:
        enc = tok([w for w, _ in data], is_split_into_words=True, truncation=True, max_length=128)
        targets = []
        for i, (_, tags) in enumerate(data):
            prev, row = None, []
            for wid in enc.word_ids(i):  # the first sub-token of each word carries its tag
                row.append(-100 if wid is None or wid == prev else index.get(tags[wid], 0))
                prev = wid
            targets.append(row)
        return enc, targets

    enc, targets = encode(sents["train"])
    ds = Dataset.from_dict({**enc, "labels": targets})
    torch.manual_seed(seed)
    model = AutoModelForTokenClassification.from_pretrained(model_dir, num_labels=len(labels))
    seconds = _trainer(model, ds, DataCollatorForTokenClassification(tok), lr, epochs, seed)
    model.eval()
    gold, pred = [], []
    val = sents["validation"]
    with torch.inference_mode():
        for i in range(0, len(val), 64):
            chunk = val[i : i + 64]
            batch = tok(
                [w for w, _ in chunk],
                is_split_into_words=True,
                truncation=True,
                max_length=128,
                padding=True,
                return_tensors="pt",
            )
            out = model(**batch).logits.argmax(-1).tolist()
            for j, (words, tags) in enumerate(chunk):
                seq, prev = ["O"] * len(words), None
                for pos, wid in enumerate(batch.word_ids(j)):
                    if wid is not None and wid != prev:
                        seq[wid] = labels[out[j][pos]]
                    prev = wid
                gold.append(tags)
                pred.append(_repair_iob2(seq))
    return {"seconds": round(seconds, 1), "f1": round(entity_metrics(gold, pred)["f1"], 4)}


def _repair_iob2(tags: list[str]) -> list[str]:
    """An I-X that follows neither B-X nor I-X starts an entity (the usual lenient decoding)."""
    out, prev = [], "O"
    for t in tags:
        if t.startswith("I-") and prev[2:] != t[2:]:
            t = "B-" + t[2:]
        out.append(t)
        prev = t
    return out


# --- the table -------------------------------------------------------------------------------


def _cells(grid: str) -> list[tuple[float, int]]:
    if grid == "all":
        return [(5e-5, 3), *GRID]
    if grid == "none":
        return []
    if grid == "default":
        return [(5e-5, 3)]
    cells = []
    for cell in grid.split(","):
        lr, _, ep = cell.partition("x")
        cells.append((float(lr), int(ep)))
    return cells


def run_row(row: str, args: argparse.Namespace, tmp: Path, seed: int) -> dict[str, Any] | None:
    task, name, n = row_spec(row)
    files: dict[str, str] = {}
    if task == "ner":
        folder = SHARED / "conll2003"
        if not folder.is_dir():
            print(f"skipping {row}: {folder} is absent", file=sys.stderr)
            return None
        sents = {
            "train": _conll_sentences(folder / "train.txt", n, seed),
            "validation": _conll_sentences(folder / "valid.txt", None, seed),
        }
        for split, data in sents.items():
            files[split] = _write_conll(data, tmp / f"{row}-{split}.txt")
        sizes = {k: len(v) for k, v in sents.items()}
    else:
        rows = classification_splits(name, n, seed)
        if rows is None:
            print(f"skipping {row}: its data is absent", file=sys.stderr)
            return None
        for split, data in rows.items():
            files[split] = _write(data, tmp / f"{row}-{split}.tsv")
        sizes = {k: len(v) for k, v in rows.items()}
        sizes["classes"] = len({r["label"] for r in rows["train"]})
    result: dict[str, Any] = {
        "row": row,
        "seed": seed,
        "task": task,
        "sizes": sizes,
        "chose_recipe": row in CHOSEN_ON,
    }
    print(f"[{row} seed {seed}] textloop ...", file=sys.stderr, flush=True)
    result["textloop"] = run_textloop(
        task, files, tmp / f"run-{row}-{seed}", args.threads, seed, args.set
    )
    print(f"[{row} seed {seed}] textloop: {result['textloop']}", file=sys.stderr, flush=True)
    cells = []
    for lr, epochs in _cells(args.grid):
        if task == "ner":
            scores = hf_ner(sents, lr, epochs, seed)
        else:
            scores = hf_classification(rows, lr, epochs, seed, args.max_len)
        cell = {"lr": lr, "epochs": epochs, **scores}
        print(f"[{row} seed {seed}] hf {cell}", file=sys.stderr, flush=True)
        cells.append(cell)
    key = "f1" if task == "ner" else "macro_f1"
    default = next((c for c in cells if (c["lr"], c["epochs"]) == (5e-5, 3)), None)
    grid = [c for c in cells if (c["lr"], c["epochs"]) != (5e-5, 3)]
    result["hf_default"] = default
    result["hf_grid"] = grid
    if grid:
        best = max(grid, key=lambda c: c[key])
        result["hf_best"] = best
        tl = result["textloop"]
        result["textloop_minus_best_points"] = round(100 * (tl[key] - best[key]), 2)
        # training loop vs trainer.train(): neither counts loading the model or tokenizing
        result["textloop_time_over_best"] = round(
            tl["train_seconds"] / max(best["seconds"], 1e-9), 2
        )
    return result


def _mean_sd(values: list[float]) -> str:
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.3f}"
    return f"{mean:.3f} ± {statistics.stdev(values):.3f}"


def render(paths: list[Path]) -> str:
    """The README table from result files: one line per row (mean ± sd over its seeds). A later
    file's run of the same row and seed replaces the earlier one's textloop side and keeps its HF
    cells where the later file ran none (``--grid none``: textloop re-run after a recipe change)."""
    by_seed: dict[str, dict[int, dict[str, Any]]] = {}
    for path in paths:
        data = json.loads(path.read_text())
        variant = ", ".join(data.get("textloop_sets") or [])
        for r in data["rows"]:
            seeds = by_seed.setdefault(r["row"] + (f" ({variant})" if variant else ""), {})
            earlier = seeds.get(r["seed"], {})
            seeds[r["seed"]] = {
                **r,
                "hf_default": r.get("hf_default") or earlier.get("hf_default"),
                "hf_grid": r.get("hf_grid") or earlier.get("hf_grid"),
            }
    groups = {row: list(seeds.values()) for row, seeds in by_seed.items()}

    def hf_cell(cells: list[dict[str, Any]], key: str) -> str:
        """One HF cell (lr x epochs) over its seeds."""
        lr_text = f"{cells[0]['lr']:.0e}".replace("e-0", "e-")
        secs = statistics.fmean(c["seconds"] for c in cells)
        where = f"{lr_text} x {cells[0]['epochs']} ep, {secs:.0f} s"
        return f"{_mean_sd([c[key] for c in cells])} ({where})"

    lines = [
        "| row | train / classes | seeds | textloop defaults | HF defaults | "
        "HF grid best (cells run) | chose |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row, runs in groups.items():
        key = "f1" if runs[0]["task"] == "ner" else "macro_f1"
        sizes = runs[0]["sizes"]
        shape = f"{sizes['train']}" + (f" / {sizes['classes']}" if "classes" in sizes else "")
        tls = [r["textloop"] for r in runs]
        recipe = tls[0]["recipe"]
        how = recipe.get("recipe", "default")
        tl_cell = (
            f"{_mean_sd([t[key] for t in tls])} "
            f"({statistics.fmean(t['train_seconds'] for t in tls):.0f} s; "
            + (
                "few-shot"
                if how == "few-shot"
                else f"batch {recipe['batch_size']}, {recipe['epochs']} ep, "
                f"{statistics.fmean(t['steps'] for t in tls):.0f} steps"
            )
            + ")"
        )
        default = [r["hf_default"] for r in runs if r.get("hf_default")]
        by_cell: dict[tuple[float, int], list[dict[str, Any]]] = defaultdict(list)
        for c in (c for r in runs for c in r.get("hf_grid") or []):
            by_cell[(c["lr"], c["epochs"])].append(c)
        best_text = "-"
        if by_cell:  # the cell with the best mean over the seeds (on test: favours the grid)
            best = max(by_cell.values(), key=lambda cs: statistics.fmean(c[key] for c in cs))
            best_text = f"{hf_cell(best, key)} ({len(by_cell)})"
        lines.append(
            f"| {row} | {shape} | {len(runs)} | {tl_cell} | "
            f"{hf_cell(default, key) if default else '-'} | {best_text} | "
            f"{'yes' if runs[0]['chose_recipe'] else 'unseen'} |"
        )
    return "\n".join(lines)


def main() -> None:
    if sys.argv[1:2] == ["--render"]:
        print(render([Path(a) for a in sys.argv[2:]]))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--rows",
        default="snips-10,snips-50,bbc-10,bbc-50,clinc150-10,clinc150-50,drug,conll-2000",
        help="comma list: NAME[-PER_CLASS] (snips, bbc, clinc150, drug) or conll[-SENTENCES]",
    )
    p.add_argument("--grid", default="all", help="all | default | none | LRxEPOCHS,...")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument(
        "--seeds", default="0", help="comma list; each seed draws its own subsample and runs"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config key for the textloop side (a variant of the recipe to measure)",
    )
    p.add_argument("--max-len", type=int, default=128, help="HF side's truncation (textloop's)")
    p.add_argument("--output", type=Path)
    args = p.parse_args()
    seeds = [int(x) for x in args.seeds.split(",")]  # a bad list fails before any training
    torch.set_num_threads(args.threads)
    cpu = read_cpu_info()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for row in args.rows.split(","):
            for seed in seeds:
                r = run_row(row.strip(), args, Path(tmp), seed)
                if r is not None:
                    results.append(r)
                    if args.output:  # partial results survive a long table being stopped
                        _dump(args, cpu, results)
    print(json.dumps(_payload(args, cpu, results), indent=2))
    if args.output:
        _dump(args, cpu, results)


def _payload(args: argparse.Namespace, cpu: Any, results: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "cpu": cpu.model,
        "amx_bf16": "amx_bf16" in cpu.flags,
        "precision": choose_precision("auto", torch.device("cpu")).name,
        "threads": args.threads,
        "grid": args.grid,
        "seeds": args.seeds,
        "textloop_sets": args.set,
        "chosen_on": list(CHOSEN_ON),
        "rows": results,
    }


def _dump(args: argparse.Namespace, cpu: Any, results: list[dict[str, Any]]) -> None:
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_suffix(".partial")
    tmp.write_text(json.dumps(_payload(args, cpu, results), indent=2))
    tmp.replace(args.output)


if __name__ == "__main__":
    main()
