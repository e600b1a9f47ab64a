"""``textloop tune`` vs Hugging Face ``Trainer.hyperparameter_search(backend="optuna")``: the same
search space, number of trials and wall-clock budget, on the same machine, one after the other.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/tune.py --rows clinc150,snips,conll-2000 \\
        --trials 20 --budget-factor 4 --output bench/results/tune.json
    # a quick check that every part runs (a few minutes; the numbers mean nothing):
    HF_HUB_OFFLINE=1 .venv/bin/python bench/tune.py --rows snips-4 --trials 2 --budget 120 \\
        --max-eval 120

Every row (``NAME[-PER_CLASS]`` for snips / clinc150, ``conll[-SENTENCES]``; data from
``../shared/data``, a row whose data is absent is skipped) runs embedded:minilm four times:

1. ``default``: ``textloop.train`` with the default recipe. Its wall time T sets the budget of
   both searches: ``--budget-factor`` x T (or ``--budget`` seconds).
2. The space, given to both sides: textloop's default space around this recipe (lr from a third
   to three times the recipe's, log scale; batch size half, same, double; epochs from half to
   twice the recipe's).
3. ``textloop``: ``textloop.tune`` (TPE, Hyperband pruning on the loop's evaluations, the
   default recipe as the first trial); its wall time includes planning and the winner's test
   evaluation.
4. ``hf``: ``Trainer.hyperparameter_search(backend="optuna")`` with ``n_trials``,
   ``timeout`` = the budget, a seeded TPE sampler and Optuna's default median pruner,
   evaluating every epoch on validation with the same metric (HF's objective is the metric of
   the last evaluation). HF keeps no model, so its best values are trained once more to score
   the test split; that retraining is reported apart, not in its search time.

``--seed 0,1,2`` runs every row once per seed (each seed its own data sample, the textloop
runs' ``train.seed`` and HF's seed and sampler). ``--same-trial LR,BATCH,EPOCHS`` runs no search:
it trains those values with textloop's loop and with ``Trainer`` on each row and seed, to tell a
gap between the searches' winners apart from a gap between the two loops:

    HF_HUB_OFFLINE=1 .venv/bin/python bench/tune.py --rows snips-50 --seed 0,1,2 \
        --same-trial 4.03e-5,8,9 --output bench/results/tune_same_trial.json
    # markdown from saved results: the search table, and same-trial runs paired by row, values,
    # sample and training seed (a --textloop-only variant pairs with another file's HF runs)
    .venv/bin/python bench/tune.py --render bench/results/tune_same_trial*.json

Selection is on validation only on both sides; test scores are of the winner. CoNLL-2003 as
shipped has no test split: its validation file is halved (seeded), one half to choose on, the
other to test. Macro-F1 for classification, entity F1 (seqeval strict IOB2, textloop's
``entity_metrics``) for NER. Prints one JSON object, and a side-by-side table on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
import yaml

import textloop
from textloop.config import build_config
from textloop.models.resolve import resolve_model
from textloop.training.precision import choose_precision, read_cpu_info
from textloop.tuning.space import Param, default_space

sys.path.insert(0, str(Path(__file__).resolve().parent))
import recipes as data_rows  # the row readers of bench/recipes.py

MODEL = "embedded:minilm"
Rows = list[dict[str, str]]
Sents = list[tuple[list[str], list[str]]]


# --- data --------------------------------------------------------------------------------------


def _cap(items: list[Any], n: int | None, seed: int) -> list[Any]:
    if n is None or len(items) <= n:
        return items
    return random.Random(seed).sample(items, n)


def row_files(row: str, tmp: Path, seed: int, max_eval: int | None) -> dict[str, Any] | None:
    """train / validation / test files of a row (and the rows themselves, for the HF side)."""
    task, name, n = data_rows.row_spec(row)
    if task == "ner":
        folder = data_rows.SHARED / "conll2003"
        if not folder.is_dir():
            return None
        valid = data_rows._conll_sentences(folder / "valid.txt", None, seed)
        random.Random(seed).shuffle(valid)
        half = len(valid) // 2
        split = {
            "train": data_rows._conll_sentences(folder / "train.txt", n, seed),
            "validation": _cap(valid[:half], max_eval, seed),
            "test": _cap(valid[half:], max_eval, seed + 1),
        }
        files = {k: data_rows._write_conll(v, tmp / f"{row}-{k}.txt") for k, v in split.items()}
    else:
        found = data_rows.classification_splits(name, n, seed)
        if found is None:
            return None
        split = {k: _cap(v, max_eval, seed) if k != "train" else v for k, v in found.items()}
        files = {k: data_rows._write(v, tmp / f"{row}-{k}.tsv") for k, v in split.items()}
    return {
        "task": task,
        "files": files,
        "data": split,
        "sizes": {k: len(v) for k, v in split.items()},
    }


def _key(task: str) -> str:
    return "f1" if task == "ner" else "macro_f1"


# --- textloop ------------------------------------------------------------------------------------


def _base(task: str, files: dict[str, str], threads: int, seed: int) -> dict[str, Any]:
    train = {"threads": threads, "seed": seed}
    return {"task": task, "model": MODEL, "data": dict(files), "train": train}


def run_default(
    task: str, files: dict[str, str], out: Path, threads: int, seed: int
) -> dict[str, Any]:
    cfg = build_config({**_base(task, files, threads, seed), "output": str(out)})
    started = time.perf_counter()
    run = textloop.train(cfg)
    seconds = time.perf_counter() - started
    m, key = run.metrics, _key(task)
    return {
        "wall_s": round(seconds, 1),
        "validation": round(m["validation"][key], 4),
        "test": round(m["test"][key], 4),
        "recipe": {k: m["train"]["recipe"]["settings"][k] for k in ("lr", "batch_size", "epochs")},
    }


def run_textloop(
    task: str,
    files: dict[str, str],
    space: list[Param],
    trials: int,
    budget: float,
    tmp: Path,
    threads: int,
    seed: int,
) -> dict[str, Any]:
    base = tmp / "base.yaml"
    base.write_text(yaml.safe_dump(_base(task, files, threads, seed)))
    started = time.perf_counter()
    result = textloop.tune(
        base,
        output=tmp / "study",
        space=[p.spec() for p in space],
        trials=trials,
        time_budget=budget,
    )
    wall = time.perf_counter() - started
    best, test, c = result.best or {}, result.test or {}, result.counts
    return {
        "wall_s": round(wall, 1),
        "budget_spent_s": result.spent_seconds,
        "trials": c["complete"] + c["pruned"] + c["fail"] - c["interrupted"],
        "complete": c["complete"],
        "pruned": c["pruned"],
        "failed": c["fail"] - c["interrupted"],
        "best_validation": round(best["value"], 4) if best else None,
        "test": round(test["metrics"][_key(task)], 4) if test.get("metrics") else None,
        "best_params": best.get("params"),
        "default_recipe_trial": result.default_value,
    }


# --- Hugging Face Trainer ----------------------------------------------------------------------


def _hf_classification(data: dict[str, Rows], tok: Any, max_len: int) -> dict[str, Any]:
    from datasets import Dataset
    from sklearn.metrics import accuracy_score, f1_score
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding

    labels = sorted({r["label"] for r in data["train"]})
    index = {lab: i for i, lab in enumerate(labels)}

    def encode(rows: Rows) -> Any:
        enc = tok([r["text"] for r in rows], truncation=True, max_length=max_len)
        gold = [index.get(r["label"], -100) for r in rows]  # a label unseen in training: ignored
        return Dataset.from_dict({**enc, "labels": gold})

    def metrics(pred: Any) -> dict[str, float]:
        guess, gold = pred.predictions.argmax(-1), pred.label_ids
        return {
            "macro_f1": float(f1_score(gold, guess, average="macro")),
            "accuracy": float(accuracy_score(gold, guess)),
        }

    return {
        "sets": {k: encode(v) for k, v in data.items()},
        "collator": DataCollatorWithPadding(tok),
        "metrics": metrics,
        "model": lambda d: AutoModelForSequenceClassification.from_pretrained(
            d, num_labels=len(labels)
        ),
    }


def _hf_ner(data: dict[str, Sents], tok: Any, max_len: int) -> dict[str, Any]:
    from datasets import Dataset
    from transformers import AutoModelForTokenClassification, DataCollatorForTokenClassification

    from textloop.tasks.ner.metrics import entity_metrics

    labels = sorted({t for _, tags in data["train"] for t in tags})
    index = {lab: i for i, lab in enumerate(labels)}

    def encode(sents: Sents) -> Any:
        enc = tok(
            [w for w, _ in sents], is_split_into_words=True, truncation=True, max_length=max_len
        )
        targets = []
        for i, (_, tags) in enumerate(sents):
            prev, row = None, []
            for wid in enc.word_ids(i):  # the first sub-token of each word carries its tag
                row.append(-100 if wid is None or wid == prev else index.get(tags[wid], 0))
                prev = wid
            targets.append(row)
        return Dataset.from_dict({**enc, "labels": targets})

    def metrics(pred: Any) -> dict[str, float]:
        guess, gold = pred.predictions.argmax(-1), pred.label_ids
        gold_tags, pred_tags = [], []
        for g_row, p_row in zip(gold, guess):
            keep = [(g, p) for g, p in zip(g_row, p_row) if g != -100]
            gold_tags.append([labels[g] for g, _ in keep])
            pred_tags.append(data_rows._repair_iob2([labels[p] for _, p in keep]))
        return {"f1": float(entity_metrics(gold_tags, pred_tags)["f1"])}

    return {
        "sets": {k: encode(v) for k, v in data.items()},
        "collator": DataCollatorForTokenClassification(tok),
        "metrics": metrics,
        "model": lambda d: AutoModelForTokenClassification.from_pretrained(
            d, num_labels=len(labels)
        ),
    }


def _hf_args(tmp: Path, seed: int, **given: Any) -> Any:
    """The benches' ``TrainingArguments``, evaluating on validation every epoch."""
    return data_rows.hf_training_args(
        tmp / "hf", seed, eval_strategy="epoch", per_device_eval_batch_size=64, **given
    )


def run_hf(
    task: str,
    data: dict[str, Any],
    space: list[Param],
    trials: int,
    budget: float,
    seed: int,
    tmp: Path,
) -> dict[str, Any]:
    import optuna
    from transformers import AutoTokenizer, Trainer

    model_dir = resolve_model(MODEL)
    tok = AutoTokenizer.from_pretrained(model_dir)
    side = (_hf_ner if task == "ner" else _hf_classification)(data, tok, 128)
    key = _key(task)
    p = {q.name: q for q in space}

    def model_init(trial: Any = None) -> Any:
        torch.manual_seed(seed)
        return side["model"](model_dir)

    def hp_space(trial: Any) -> dict[str, Any]:
        return {
            "learning_rate": trial.suggest_float("lr", p["lr"].low, p["lr"].high, log=True),
            "per_device_train_batch_size": trial.suggest_categorical(
                "batch_size", list(p["batch_size"].choices)
            ),
            "num_train_epochs": trial.suggest_int(
                "epochs", int(p["epochs"].low), int(p["epochs"].high)
            ),
        }

    args = _hf_args(tmp, seed)
    trainer = Trainer(
        model_init=model_init,
        args=args,
        train_dataset=side["sets"]["train"],
        eval_dataset=side["sets"]["validation"],
        data_collator=side["collator"],
        compute_metrics=side["metrics"],
    )
    storage = f"sqlite:///{tmp / 'hf-study.db'}"
    quiet = contextlib.redirect_stdout(sys.stderr)  # Trainer prints its logs; stdout is JSON
    started = time.perf_counter()
    with quiet:
        best = trainer.hyperparameter_search(
            hp_space=hp_space,
            compute_objective=lambda m: m[f"eval_{key}"],
            n_trials=trials,
            direction="maximize",
            backend="optuna",
            timeout=budget,
            sampler=optuna.samplers.TPESampler(seed=seed),
            pruner=optuna.pruners.MedianPruner(),  # Optuna's default, as HF users get it
            storage=storage,
            study_name="hf",
        )
    wall = time.perf_counter() - started
    study = optuna.load_study(study_name="hf", storage=storage)
    states = [t.state.name for t in study.trials]
    hp = best.hyperparameters
    started = time.perf_counter()  # HF kept no model: train the winner once more for its test
    final = Trainer(
        model=model_init(),
        args=dataclasses.replace(
            args,
            learning_rate=hp["lr"],
            per_device_train_batch_size=hp["batch_size"],
            num_train_epochs=hp["epochs"],
            eval_strategy="no",
        ),
        train_dataset=side["sets"]["train"],
        data_collator=side["collator"],
        compute_metrics=side["metrics"],
    )
    with contextlib.redirect_stdout(sys.stderr):
        final.train()
        test = final.evaluate(side["sets"]["test"], metric_key_prefix="test")[f"test_{key}"]
    return {
        "wall_s": round(wall, 1),
        "trials": len(states),
        "complete": states.count("COMPLETE"),
        "pruned": states.count("PRUNED"),
        "failed": states.count("FAIL"),
        "best_validation": round(float(best.objective), 4),
        "test": round(float(test), 4),
        "best_params": hp,
        "retrain_for_test_s": round(time.perf_counter() - started, 1),
    }


# --- one trial, both loops (is a gap the search or the loop?) ------------------------------------


def same_trial(
    row: str,
    values: str,
    seed: int,
    tmp: Path,
    threads: int,
    extra: list[str],
    with_hf: bool = True,
    train_seed: int | None = None,
) -> dict[str, Any] | None:
    """Train one set of values (``LR,BATCH,EPOCHS``) with textloop's loop and with ``Trainer``.

    Both fine-tune the encoder with its head (``train.recipe: default``, also where ``auto`` would
    pick the few-shot recipe).

    The same data sample and seed on both sides. textloop reports its best checkpoint's
    validation score (what a tune trial reports); HF its last epoch's (what
    ``hyperparameter_search`` reports) and its best epoch's, and each side its final model's test
    score. ``extra`` (``KEY=VALUE``) changes the textloop side only, e.g. ``train.head_lr=4e-5``
    for HF's one learning rate; ``with_hf=False`` trains the textloop side only (``Trainer``
    is deterministic on a CPU: a variant of the textloop side compares with the HF run before).
    ``train_seed`` (default ``seed``) seeds both sides' training (head init, batch order,
    dropout) apart from the data sample, so each loop's own spread on one sample can be seen.
    """
    train_seed = seed if train_seed is None else train_seed
    found = row_files(row, tmp, seed, None)
    if found is None:
        return None
    task, files = found["task"], found["files"]
    lr, batch, epochs = values.split(",")
    settings: dict[str, Any] = {"lr": float(lr), "batch_size": int(batch), "epochs": int(epochs)}
    key = _key(task)
    base = tmp / "base.yaml"
    base.write_text(yaml.safe_dump(_base(task, files, threads, train_seed)))
    given = [f"train.{k}={v}" for k, v in settings.items()]
    if task == "classification":  # fine-tuning as HF does, also where auto would pick few-shot
        given.append("train.recipe=default")
    cfg = textloop.load_config(base, [*given, *extra, f"output={tmp / 'tl'}"])
    started = time.perf_counter()
    m = textloop.train(cfg).metrics
    tl = {
        "wall_s": round(time.perf_counter() - started, 1),
        "validation": round(m["validation"][key], 4),
        "test": round(m["test"][key], 4),
    }

    result = {
        "row": row,
        "seed": seed,
        "train_seed": train_seed,
        "settings": settings,
        "textloop_sets": extra,
        "textloop": tl,
    }
    if not with_hf:
        print(f"[{row} seed {seed}/{train_seed}] textloop {tl}", file=sys.stderr, flush=True)
        return result

    from transformers import AutoTokenizer, Trainer

    model_dir = resolve_model(MODEL)
    side = (_hf_ner if task == "ner" else _hf_classification)(
        found["data"], AutoTokenizer.from_pretrained(model_dir), 128
    )
    torch.manual_seed(train_seed)
    trainer = Trainer(
        model=side["model"](model_dir),
        args=_hf_args(
            tmp,
            train_seed,
            learning_rate=settings["lr"],
            per_device_train_batch_size=settings["batch_size"],
            num_train_epochs=settings["epochs"],
        ),
        train_dataset=side["sets"]["train"],
        eval_dataset=side["sets"]["validation"],
        data_collator=side["collator"],
        compute_metrics=side["metrics"],
    )
    started = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        trainer.train()
        wall = time.perf_counter() - started
        test = trainer.evaluate(side["sets"]["test"], metric_key_prefix="test")[f"test_{key}"]
    curve = [e[f"eval_{key}"] for e in trainer.state.log_history if f"eval_{key}" in e]
    hf = {
        "wall_s": round(wall, 1),
        "validation_last": round(curve[-1], 4),
        "validation_best": round(max(curve), 4),
        "test": round(float(test), 4),
    }
    print(f"[{row} seed {seed}/{train_seed}] textloop {tl}; hf {hf}", file=sys.stderr, flush=True)
    return {**result, "hf": hf}


# --- a row: the default recipe, then both searches ----------------------------------------------


def run_row(row: str, args: argparse.Namespace, tmp: Path, seed: int) -> dict[str, Any] | None:
    found = row_files(row, tmp, seed, args.max_eval)
    if found is None:
        print(f"skipping {row}: its data is absent from {data_rows.SHARED}", file=sys.stderr)
        return None
    task, files = found["task"], found["files"]
    say = lambda *a: print(f"[{row}]", *a, file=sys.stderr, flush=True)  # noqa: E731
    say("default recipe ...")
    default = run_default(task, files, tmp / "default", args.threads, seed)
    budget = args.budget or args.budget_factor * default["wall_s"]
    space = default_space(default["recipe"])
    say(f"default: {default}; budget {budget:.0f} s; space {[p.spec() for p in space]}")
    (tmp / "tl").mkdir()
    tl = run_textloop(task, files, space, args.trials, budget, tmp / "tl", args.threads, seed)
    say(f"textloop tune: {tl}")
    (tmp / "hf").mkdir()
    hf = run_hf(task, found["data"], space, args.trials, budget, seed, tmp / "hf")
    say(f"hf search: {hf}")
    return {
        "row": row,
        "task": task,
        "metric": _key(task),
        "sizes": found["sizes"],
        "budget_s": round(budget, 1),
        "space": [p.spec() for p in space],
        "default": default,
        "textloop": tl,
        "hf": hf,
        "textloop_equal_or_better": tl["best_validation"] is not None
        and tl["best_validation"] >= hf["best_validation"],
        "textloop_less_wall_time": tl["wall_s"] < hf["wall_s"],
    }


# --- the table ---------------------------------------------------------------------------------


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| row | default val / test (s) | textloop val / test (s, trials, pruned) | "
        "HF search val / test (s, trials, pruned) |",
        "| --- | --- | --- | --- |",
    ]
    for r in rows:
        d, t, h = r["default"], r["textloop"], r["hf"]
        lines.append(
            f"| {r['row']} | {d['validation']} / {d['test']} ({d['wall_s']:.0f}) | "
            f"{t['best_validation']} / {t['test']} ({t['wall_s']:.0f}, {t['trials']}, "
            f"{t['pruned']}) | {h['best_validation']} / {h['test']} ({h['wall_s']:.0f}, "
            f"{h['trials']}, {h['pruned']}) |"
        )
    return "\n".join(lines)


def _values(r: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """A ``--same-trial`` run's trained values (lr, batch size, epochs), in a fixed order."""
    return tuple(sorted(r["settings"].items()))


def _run_key(r: dict[str, Any]) -> tuple[Any, ...]:
    """What makes two ``--same-trial`` runs comparable: row, values, sample and training seed."""
    return r["row"], _values(r), r["seed"], r.get("train_seed", r["seed"])


def _mean_sd(xs: list[float]) -> str:
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.3f} ± {sd:.3f}"


def _paired(diffs: list[float]) -> str:
    """Mean ± standard error of paired differences, in points, with wins / losses / ties."""
    pts = [100 * d for d in diffs]
    se = statistics.stdev(pts) / math.sqrt(len(pts)) if len(pts) > 1 else 0.0
    wins, losses = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
    ties = len(diffs) - wins - losses
    mean = round(statistics.mean(pts), 1) + 0.0  # no "-0.0"
    return f"{mean:+.1f} ± {se:.1f} (se; {wins} won, {losses} lost, {ties} tied)"


def render_same_trial(runs: list[dict[str, Any]]) -> str:
    """``--same-trial`` runs from any number of files, paired with HF's run on the same key.

    A run pairs with its own HF run; a textloop-only variant (``--textloop-only --set ...``)
    with the first HF run, in the order of the files, on the same row, values, sample and
    training seed (HF's CPU runs are deterministic in their scores, not their seconds).
    Validation: textloop's best checkpoint vs HF's last epoch (what each search reports).
    """
    hf: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in runs:  # a variant without HF runs pairs with the first file's HF run on its key
        if "hf" in r:
            hf.setdefault(_run_key(r), r["hf"])
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["row"], _values(r), tuple(r["textloop_sets"])), []).append(r)
    lines = [
        "| row | values | textloop side | runs | textloop val / test (s) | "
        "HF val / test (s) | textloop − HF, val | test | time |",
        "| --- | --- | --- | ---: | --- | --- | --- | --- | ---: |",
    ]
    for (row, values, sets), group in groups.items():
        pairs = [
            (r["textloop"], r.get("hf") or hf[_run_key(r)]) for r in group if _run_key(r) in hf
        ]
        given = ", ".join(sets) or "as it trains by default"
        shown = ", ".join(f"{k} {v}" for k, v in values)
        if not pairs:
            lines.append(f"| {row} | {shown} | {given} | {len(group)} | no HF run on these keys |")
            continue
        tl, other = [p[0] for p in pairs], [p[1] for p in pairs]
        lines.append(
            f"| {row} | {shown} | {given} | {len(pairs)} | "
            f"{_mean_sd([t['validation'] for t in tl])} / {_mean_sd([t['test'] for t in tl])} "
            f"({statistics.mean(t['wall_s'] for t in tl):.0f}) | "
            f"{_mean_sd([h['validation_last'] for h in other])} / "
            f"{_mean_sd([h['test'] for h in other])} "
            f"({statistics.mean(h['wall_s'] for h in other):.0f}) | "
            f"{_paired([t['validation'] - h['validation_last'] for t, h in pairs])} | "
            f"{_paired([t['test'] - h['test'] for t, h in pairs])} | "
            f"{sum(t['wall_s'] for t in tl) / sum(h['wall_s'] for h in other):.2f}x |"
        )
    return "\n".join(lines)


def render(paths: list[Path]) -> str:
    """Markdown from saved results: the search table, then the paired ``--same-trial`` table."""
    unique = list(dict.fromkeys(path.resolve() for path in paths))  # a file named twice, once
    rows = [r for path in unique for r in json.loads(path.read_text())["rows"]]
    searches = [r for r in rows if "default" in r]
    trials = [r for r in rows if "settings" in r]
    parts = [table(searches)] if searches else []
    if trials:
        parts.append(render_same_trial(trials))
    return "\n\n".join(parts)


def main() -> None:
    if sys.argv[1:2] == ["--render"]:
        print(render([Path(a) for a in sys.argv[2:]]))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", default="clinc150,snips,conll-2000")
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--budget-factor", type=float, default=4.0, help="x the default run's time")
    p.add_argument("--budget", type=float, help="seconds per search (instead of the factor)")
    p.add_argument("--max-eval", type=int, help="cap validation / test examples (quick checks)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--seed", default="0", help="data sample and training seed; 0,1,2: each")
    p.add_argument(
        "--same-trial",
        metavar="LR,BATCH,EPOCHS",
        help="no search: train these values with both loops, per row and seed",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --same-trial: a textloop config key for its side only (repeatable)",
    )
    p.add_argument(
        "--textloop-only", action="store_true", help="with --same-trial: skip the HF side"
    )
    p.add_argument(
        "--train-seed-offsets",
        default="0",
        metavar="0,100,...",
        help="with --same-trial: train each sample once per offset, training seed = seed + offset",
    )
    p.add_argument("--output", type=Path)
    args = p.parse_args()
    if (args.set or args.textloop_only or args.train_seed_offsets != "0") and not args.same_trial:
        p.error(
            "--set, --textloop-only and --train-seed-offsets change a --same-trial run; give "
            "--same-trial LR,BATCH,EPOCHS"
        )
    try:  # a bad list fails before any training
        seeds = [int(x) for x in args.seed.split(",")]
        offsets = [int(x) for x in args.train_seed_offsets.split(",")]
    except ValueError:
        p.error(
            "--seed and --train-seed-offsets take integers, e.g. 0 or 0,1,2 "
            f"(got {args.seed!r}, {args.train_seed_offsets!r})"
        )
    torch.set_num_threads(args.threads)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for row in args.rows.split(","):
            for seed in seeds:
                if not args.same_trial:
                    folder = Path(tmp) / f"{row.strip()}-{seed}"
                    folder.mkdir()
                    found = run_row(row.strip(), args, folder, seed)
                    if found is not None:
                        results.append({**found, "seed": seed})
                    continue
                for offset in offsets:
                    folder = Path(tmp) / f"{row.strip()}-{seed}-{offset}"
                    folder.mkdir()
                    found = same_trial(
                        row.strip(),
                        args.same_trial,
                        seed,
                        folder,
                        args.threads,
                        args.set,
                        with_hf=not args.textloop_only,
                        train_seed=seed + offset,
                    )
                    if found is not None:
                        results.append(found)
    payload = {
        "cpu": read_cpu_info().model,
        "precision": choose_precision("auto", torch.device("cpu")).name,
        "threads": args.threads,
        "trials": args.trials,
        "budget_factor": None if args.budget else args.budget_factor,
        "rows": results,
    }
    print(json.dumps(payload, indent=2))
    if not args.same_trial:
        print(table(results), file=sys.stderr)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
