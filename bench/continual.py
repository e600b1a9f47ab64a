"""Continual learning benchmarks: naive vs replay vs EWC vs LwF vs joint retraining.

Two scenarios (``--scenario``):

**bbc** (default): BBC News topics arriving over time (class-incremental with some old-topic
traffic). A model is trained on batch 0 (business, entertainment); then three batches arrive,
each bringing a new topic plus a third as many examples of one earlier topic:

    batch 1: politics (new) + entertainment      batch 2: sports (new) + business
    batch 3: tech (new) + politics

Every strategy starts from the same batch-0 model and sees the same batches, through the same
``build_candidate`` that ``textloop update`` uses, with the default update config (replay
buffer and replayed sample sized per class, default gate) and reported exactly as the clinc
scenario below (``run_strategies``/``judge_step``): old topics are the ones learned in earlier
batches, new the batch's new topic; the gate's regression set is 20 held-out train rows per old
topic, its new-data hold-out 20 of the new one; scores on BBC's test split.

    nice -n 19 taskset -c 0 .venv/bin/python bench/continual.py --threads 1 \
        --output bench/results/continual.json

**clinc**: CLINC150 intents (``../shared/data/clinc150``) added group by group, each group a
set of intents the model has never seen (pure class-incremental, as when a bank adds 37 intents
to 40). The file has no domain column, so the 150 intent names are sorted and cut into 10 groups
of 15 in that order (alphabetical blocks: a group mixes domains, and later groups hold intents
confusable with earlier ones, e.g. card_declined / report_lost_card). Group 0 trains the base
model (``textloop train``); each later group is an update from the previous step's model (every
strategy continues from its own candidate, whatever the gate said). Per step and strategy:
accuracy on the old intents' test rows in the full label space and restricted to the old labels
(argmax over the labels the previous model knew), the previous model's accuracy on them, so
forgetting both ways, accuracy on the new intents, the gate's decision and reasons (regression
set: 40 held-out train.tsv rows per old intent, like a regression set of earlier data;
new-data hold-out: the dev rows of the new intents; default GateConfig), what the former full-label-space gate would have said, and the update time.
``joint`` retrains from the previous model on all training rows seen so far (plain fine-tuning,
what ``reference: joint`` trains on the buffer). Shrink it with --groups, --per-intent, --epochs:
    nice -n 19 taskset -c 1 .venv/bin/python bench/continual.py --scenario clinc --groups 3 \
        --per-intent 20 --threads 1 --output bench/results/continual_clinc_small.json

Several seeds (each its own sample of rows, base model and order; one per core, ~1.5 CPU-hours
each at 10 groups), then replay vs joint after the last step per seed and mean +- sd:

    nice -n 19 taskset -c 0 .venv/bin/python bench/continual.py --scenario clinc --groups 10 \
        --per-intent 60 --epochs 2 --base-epochs 3 --threads 1 --seed 1 \
        --strategies replay,joint --work /tmp/clinc-seed1 --output seed1.json
    .venv/bin/python bench/continual.py --summarize bench/results/continual_clinc.json \
        seed1.json seed2.json --output bench/results/continual_clinc_seeds.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: no spinning threads
REPO = Path(__file__).resolve().parents[1]

HOLDOUT = 20  # bbc: held-out train rows per new topic, for the gate's new-data and regression sets
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
    """Disjoint train samples per batch; of each new topic also ``HOLDOUT`` held-out train rows
    as the gate's new-data hold-out (``dev``) and as many for the regression set once it is old
    (``regression``); ``test``: test-split rows of the batch's new topics."""
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
        batches.append(
            {
                "intents": spec["new"],
                "labels": spec["new"] + spec["old"],
                "train": rows,
                "dev": [r for lab in spec["new"] for r in take(lab, HOLDOUT)],
                "regression": [r for lab in spec["new"] for r in take(lab, HOLDOUT)],
                "test": [r for lab in spec["new"] for r in test[lab][:test_per_class]],
            }
        )
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


def run_bbc(args: argparse.Namespace) -> dict:
    """The BBC News scenario (see the module docstring)."""
    import torch

    from textloop.runs import load_run

    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    batches = make_batches(args.per_new, args.per_old, args.test_per_class, args.seed)
    t0 = time.perf_counter()
    base = load_run(train_base(batches[0], work, args))
    results: dict = {
        "scenario": "bbc",
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "settings": {
            "batches": [b["labels"] for b in batches],
            "n_train": [len(b["train"]) for b in batches],
            "holdout_per_new_topic": HOLDOUT,
            "test_per_topic": args.test_per_class,
            "model": "embedded:minilm",
            "max_seq_len": args.max_seq_len,
            "epochs": args.epochs,
            "lr": args.lr,
            "head_lr": args.head_lr,
            "batch_size": 16,
            "seed": args.seed,
            "replay": "default ReplayConfig",
            "gate": "default GateConfig; regression set: held-out train rows of the old topics; "
            "new-data hold-out: held-out train rows of the new topic",
        },
        "base_seconds": round(time.perf_counter() - t0, 1),
        "base_test_accuracy": base.metrics["test"]["accuracy"],
    }
    strategies = (args.strategies or "naive,replay,ewc,joint").split(",")
    results["strategies"] = run_strategies(base, batches, strategies, args)
    return results


# ---- CLINC150, intents added group by group ------------------------------------------------
GROUP_SIZE = 15


def read_tsv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return [{"text": r["text"], "label": r["label"]} for r in csv.DictReader(f, delimiter="\t")]


def clinc_groups(
    data: Path, n_groups: int, per_intent: int, regression_per_intent: int, seed: int
) -> list[dict]:
    """Groups of 15 intents in sorted-name order: ``per_intent`` training rows per intent (a
    seeded sample of train.tsv), up to ``regression_per_intent`` other train.tsv rows as the
    gate's regression set (held-out earlier data), and all of each intent's dev and test rows."""
    splits = {name: read_tsv(data / f"{name}.tsv") for name in ("train", "dev", "test")}
    intents = sorted({r["label"] for r in splits["train"]})
    rng = random.Random(seed)
    by_intent: dict[str, list[dict[str, str]]] = {}
    for row in splits["train"]:
        by_intent.setdefault(row["label"], []).append(row)
    groups = []
    for g in range(n_groups):
        names = intents[g * GROUP_SIZE : (g + 1) * GROUP_SIZE]
        train, regression = [], []
        for name in names:
            rows = by_intent[name]
            take = rng.sample(rows, min(len(rows), per_intent + regression_per_intent))
            train += take[:per_intent]
            regression += take[per_intent:]
        rng.shuffle(train)
        groups.append(
            {
                "intents": names,
                "train": train,
                "regression": regression,
                "dev": [r for r in splits["dev"] if r["label"] in names],
                "test": [r for r in splits["test"] if r["label"] in names],
            }
        )
    return groups


def train_clinc_base(group: dict, work: Path, args: argparse.Namespace) -> Path:
    """``textloop train`` on group 0 with the update's schedule pinned (no early stopping)."""
    from textloop.config import load_config
    from textloop.training.run import train

    run_dir = work / f"base-{args.per_intent}-{args.base_epochs or args.epochs}-{args.seed}"
    if (run_dir / "metrics.json").is_file():
        return run_dir
    for split in ("train", "dev", "test"):
        write_csv(work / f"g0-{split}.csv", group[split])
    extra = {
        "model": args.model,
        "output": str(run_dir),
        "overwrite": True,
        "data.train": str(work / "g0-train.csv"),
        "data.validation": str(work / "g0-dev.csv"),
        "data.test": str(work / "g0-test.csv"),
        "train.epochs": args.base_epochs or args.epochs,
        "train.lr": args.lr,
        "train.head_lr": args.head_lr,
        "train.batch_size": 16,
        "train.max_seq_len": args.max_seq_len,
        "train.eval_every_steps": 0,
        "train.early_stopping_patience": 0,
        "train.log_every_steps": 50,
        "train.seed": args.seed,
    }
    if args.threads:
        extra["train.threads"] = args.threads
    train(load_config(None, extra=extra))
    return run_dir


def judge_step(model, task, cand, ctask, info, old: dict, new: dict, cfg) -> dict:
    """Scores, forgetting both ways and the gate for one step (old/new: rows of the intents
    learned before / in this step)."""
    from textloop.continual.gate import decide
    from textloop.continual.retrain import score, score_in_old_label_space
    from textloop.continual.update import judge, score_after

    old_labels = list(task.labels)
    before = {
        "regression": score(model, task, old["regression"]),
        "new": score(model, task, new["dev"]),
    }
    after = score_after(cand, ctask, old_labels, old["regression"], new["dev"])
    decision = judge(cfg.gate, before, after, info["new_labels"])
    g = cfg.gate  # the gate before this change: the full label space judged
    former = decide(
        before["regression"],
        after["regression"],
        before["new"],
        after["new"],
        g.max_overall_drop,
        g.max_class_drop,
        g.min_class_support,
        g.min_new_gain,
    )
    prev_old = score(model, task, old["test"])["accuracy"]
    both = score_in_old_label_space(cand, ctask, old["test"], old_labels)
    full, restricted = both["full"]["accuracy"], both["old_labels"]["accuracy"]
    o2n = after["old_to_new"]
    return {
        "n_old_intents": len(old_labels),
        "n_new_intents": len(info["new_labels"]),
        "n_train": info["n_train"],
        "n_replay": info["n_replay"],
        "update_seconds": info["seconds"],
        "old_accuracy_before": round(prev_old, 4),
        "old_accuracy_full": round(full, 4),
        "old_accuracy_old_labels": round(restricted, 4),
        "forgetting_full": round(prev_old - full, 4),
        "forgetting_old_labels": round(prev_old - restricted, 4),
        "old_to_new_share_test": round(both["old_to_new"]["share"], 4),
        "new_accuracy": round(score(cand, ctask, new["test"])["accuracy"], 4),
        "all_accuracy": round(score(cand, ctask, old["test"] + new["test"])["accuracy"], 4),
        "gate": {
            "accepted": decision.accepted,
            "mode": decision.mode,
            "reasons": decision.reasons,
            "n_checks": len(decision.checks),
            "regression_old_labels": round(after["regression_old_labels"]["accuracy"], 4),
            "regression_full": round(after["regression"]["accuracy"], 4),
            "regression_before": round(before["regression"]["accuracy"], 4),
            "old_to_new_share": round(o2n["share"], 4),
            "top_confusions": [
                {k: p[k] for k in ("gold", "predicted", "count")} for p in o2n["pairs"][:5]
            ],
        },
        "former_full_label_space_gate": {
            "accepted": former.accepted,
            "n_failed": len(former.reasons),
            "first_reasons": former.reasons[:3],
        },
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_clinc(args: argparse.Namespace) -> dict:
    """The CLINC150 scenario (see the module docstring)."""
    data = Path(args.data)
    if not (data / "train.tsv").is_file():
        return {"scenario": "clinc", "skipped": f"{data} not found (../shared/data is absent)"}
    import torch

    from textloop.runs import load_run

    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.work) / "clinc"
    work.mkdir(parents=True, exist_ok=True)
    groups = clinc_groups(data, args.groups, args.per_intent, args.regression_per_intent, args.seed)
    t0 = time.perf_counter()
    base = load_run(train_clinc_base(groups[0], work, args))
    results: dict = {
        "scenario": "clinc",
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "settings": {
            "groups": args.groups,
            "intents_per_group": GROUP_SIZE,
            "grouping": "sorted intent names, blocks of 15 (no domain column)",
            "per_intent_train": args.per_intent,
            "regression_per_intent": args.regression_per_intent,
            "dev_test_per_intent": 15,
            "model": args.model,
            "max_seq_len": args.max_seq_len,
            "epochs": args.epochs,
            "base_epochs": args.base_epochs or args.epochs,
            "lr": args.lr,
            "head_lr": args.head_lr,
            "batch_size": 16,
            "seed": args.seed,
            "replay": "default ReplayConfig: replay_per_class unset (the new data's mean rows "
            "per new label, at least 50, per earlier class), buffer 100 per class",
            "gate": "default GateConfig; regression set: held-out train.tsv rows of the old "
            "intents (regression_per_intent each); new-data hold-out: dev rows of the new ones",
        },
        "groups": [g["intents"] for g in groups],
        "base_seconds": round(time.perf_counter() - t0, 1),
        "base_test_accuracy": base.metrics["test"]["accuracy"],
        "strategies": {},
    }
    strategies = (args.strategies or "naive,replay,ewc,joint").split(",")
    results["strategies"] = run_strategies(base, groups, strategies, args)
    return results


def run_strategies(base, groups: list[dict], strategies: list[str], args) -> dict:
    """Every strategy from the same base model through the same groups: group i's ``train``
    rows are the update; the ``regression``/``test`` rows of groups before i are the old
    labels', group i's ``dev``/``test`` the new ones'. Each strategy continues from its own
    candidate, whatever the gate said. ``joint`` retrains on every training row seen so far."""
    from textloop.continual.candidate import build_buffer_size, build_candidate, build_reference
    from textloop.continual.config import load_update_config

    out = {}
    for strategy in strategies:
        cfg = load_update_config(
            None,
            [
                f"strategy={'replay' if strategy == 'joint' else strategy}",
                f"epochs={args.epochs}",
                f"lr={args.lr}",
                f"head_lr={args.head_lr}",
                "batch_size=16",
                f"max_seq_len={args.max_seq_len}",
                f"seed={args.seed}",
            ],
        )
        model, task = base.model, base.task
        seen = list(groups[0]["train"])
        buffer = build_buffer_size(cfg.replay).sample(seen, args.seed)
        steps = []
        for i in range(1, len(groups)):
            old = {k: [r for g in groups[:i] for r in g[k]] for k in ("regression", "test")}
            build = build_reference if strategy == "joint" else build_candidate
            history = seen if strategy == "joint" else buffer
            cand, ctask, info = build(model, task, groups[i]["train"], history, cfg)
            step = judge_step(model, task, cand, ctask, info, old, groups[i], cfg)
            steps.append(step)
            print(
                f"{strategy} step {i}: old {step['old_accuracy_before']} -> full "
                f"{step['old_accuracy_full']} / old-labels {step['old_accuracy_old_labels']}, "
                f"new {step['new_accuracy']}, gate "
                f"{'accepted' if step['gate']['accepted'] else 'rejected'} "
                f"({info['seconds']} s)",
                file=sys.stderr,
                flush=True,
            )
            seen += groups[i]["train"]
            buffer = build_buffer_size(cfg.replay).sample([*buffer, *groups[i]["train"]], args.seed)
            model, task = cand, ctask
        out[strategy] = {
            "final_accuracy_all_intents": steps[-1]["all_accuracy"],
            "final_accuracy_old": steps[-1]["old_accuracy_full"],
            "final_accuracy_new": steps[-1]["new_accuracy"],
            "mean_forgetting_full": round(sum(s["forgetting_full"] for s in steps) / len(steps), 4),
            "mean_forgetting_old_labels": round(
                sum(s["forgetting_old_labels"] for s in steps) / len(steps), 4
            ),
            "update_seconds": round(sum(s["update_seconds"] for s in steps), 1),
            "accepted": [s["gate"]["accepted"] for s in steps],
            "former_gate_accepted": [s["former_full_label_space_gate"]["accepted"] for s in steps],
            "steps": steps,
        }
    return out


def summarize(paths: list[str]) -> dict:
    """Replay vs joint after the last step, per seed and mean +- sd, from clinc result files
    of different seeds (the 1.5 CPU-hour runs go one per core: ``--seed N --output F``)."""
    import statistics

    rows = []
    for path in paths:
        d = json.loads(Path(path).read_text())
        strategies = d["strategies"]
        if not {"replay", "joint"} <= strategies.keys():
            raise SystemExit(f"{path}: needs the replay and joint strategies")
        row = {"file": path, "seed": d["settings"]["seed"]}
        for name in ("replay", "joint"):
            st = strategies[name]
            last = st["steps"][-1]
            row[name] = {
                "old": last["old_accuracy_full"],
                "new": last["new_accuracy"],
                "accepted": f"{sum(st['accepted'])}/{len(st['accepted'])}",
            }
        row["replay_minus_joint"] = {
            k: round(row["replay"][k] - row["joint"][k], 4) for k in ("old", "new")
        }
        rows.append(row)

    def mean_sd(values: list[float]) -> dict:
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return {"mean": round(statistics.mean(values), 4), "sd": round(sd, 4)}

    return {
        "seeds": rows,
        "mean": {
            f"{name}_{k}": mean_sd([r[name][k] for r in rows])
            for name in ("replay", "joint")
            for k in ("old", "new")
        }
        | {
            f"replay_minus_joint_{k}": mean_sd([r["replay_minus_joint"][k] for r in rows])
            for k in ("old", "new")
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--summarize", nargs="+", metavar="FILE", help="clinc results of several seeds: compare"
    )
    parser.add_argument("--scenario", choices=["bbc", "clinc"], default="bbc")
    parser.add_argument("--output", help="also write the JSON here")
    parser.add_argument("--work", default="/tmp/textloop-bench-continual")
    parser.add_argument("--strategies", help="default naive,replay,ewc,joint (lwf: also possible)")
    parser.add_argument("--per-new", type=int, default=120, help="bbc: examples per new topic")
    parser.add_argument("--per-old", type=int, default=40, help="bbc: examples of the old topic")
    parser.add_argument("--test-per-class", type=int, default=40, help="bbc")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "clinc150"))
    parser.add_argument("--groups", type=int, default=10, help="clinc: groups of 15 intents")
    parser.add_argument("--per-intent", type=int, default=80, help="clinc: train rows per intent")
    parser.add_argument(
        "--regression-per-intent",
        type=int,
        default=40,
        help="clinc: held-out train.tsv rows per intent in the gate's regression set",
    )
    parser.add_argument(
        "--base-epochs", type=int, help="clinc: base model epochs (default --epochs)"
    )
    parser.add_argument("--model", default="embedded:minilm", help="clinc: the encoder")
    parser.add_argument("--threads", type=int, help="torch threads")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--head-lr", type=float, default=1e-3)
    parser.add_argument("--max-seq-len", type=int, help="default 96 (bbc), 32 (clinc)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.summarize:
        results = summarize(args.summarize)
        text = json.dumps(results, indent=2)
        print(text)
        if args.output:
            Path(args.output).write_text(text + "\n")
        return 0
    if args.max_seq_len is None:
        args.max_seq_len = 96 if args.scenario == "bbc" else 32
    if args.scenario == "bbc":
        results = run_bbc(args)
    else:
        results = run_clinc(args)
    text = json.dumps(results, indent=2)
    print(text)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
