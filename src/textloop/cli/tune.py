"""``textloop tune``: hyper-parameter search on a time budget (docs/tune.md).

    textloop tune configs/classification/clinc150_full.yaml --trials 30 --time-budget 45m \\
        --space lr=1e-5:3e-4:log --space batch_size=16,32,64 --space epochs=2:10 \\
        --output tunes/clinc
    textloop tune --output tunes/clinc --resume          # continue a killed study
    textloop train tunes/clinc/best.yaml --output runs/clinc
"""

from __future__ import annotations

import argparse
from typing import Any

# flag -> dotted key of the base run config; --set overrides them
_FLAGS = {
    "model": "model",
    "task": "task",
    "train": "data.train",
    "validation": "data.validation",
    "test": "data.test",
    "seed": "train.seed",
    "track": "track",
}


def add_parser(sub: Any) -> list[str]:
    """Register ``tune`` on the subcommand parsers."""
    p = sub.add_parser(
        "tune",
        help="search learning rate, batch size, epochs ... on a time budget (Optuna)",
        description="Run trials of the base config with values from a search space (TPE), "
        "pruning poor trials from their evaluations, within a wall-clock budget; write "
        "best.yaml, trials.csv and report.md to --output.",
    )
    p.add_argument("config", nargs="?", help="base YAML run file (optional with --resume)")
    p.add_argument("--output", required=True, help="study folder (trials, reports, study.db)")
    p.add_argument("--trials", type=int, help="trials in all (default 20)")
    p.add_argument(
        "--time-budget", metavar="DURATION", help="wall-clock budget of the study, e.g. 45m, 2h"
    )
    p.add_argument(
        "--space",
        action="append",
        default=[],
        metavar="SPEC",
        help="a searched parameter: lr=1e-5:3e-4:log, epochs=2:10, batch_size=16,32,64 "
        "(repeatable; default: a space around the default recipe)",
    )
    p.add_argument(
        "--storage",
        metavar="URL",
        help="Optuna RDB URL shared by several workers, e.g. sqlite:///tunes/x/study.db "
        "(default: study.db in --output); an existing study there is joined",
    )
    p.add_argument("--study-name", help="the study's name in the storage (default: --output's)")
    p.add_argument("--resume", action="store_true", help="continue the study in --output")
    p.add_argument(
        "--pruner",
        choices=["hyperband", "halving", "none"],
        help="stop poor trials early from their evaluations (default hyperband)",
    )
    p.add_argument(
        "--keep-models", action="store_true", help="keep every trial's model (default: the best)"
    )
    p.add_argument("--model", help="local checkpoint dir or embedded:NAME")
    from textloop.tasks import TASK_MODULES

    p.add_argument("--task", choices=sorted(TASK_MODULES))
    p.add_argument("--train", help="training data")
    p.add_argument("--validation", help="validation data (what trials are chosen on)")
    p.add_argument("--test", help="test data (scored once, for the best trial)")
    p.add_argument("--seed", type=int, help="seed of every trial's run and of the sampler")
    p.add_argument(
        "--track",
        choices=["none", "mlflow", "tensorboard"],
        help="track every trial's run in MLflow, or TensorBoard event files",
    )
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key"
    )
    return ["tune"]


def run(args: argparse.Namespace) -> int:
    from textloop.tuning.study import tune

    extra = {k: getattr(args, f) for f, k in _FLAGS.items() if getattr(args, f) is not None}
    result = tune(
        args.config,
        output=args.output,
        overrides=args.set,
        extra=extra,
        space=args.space,
        trials=args.trials,
        time_budget=args.time_budget,
        storage=args.storage,
        study_name=args.study_name,
        resume=args.resume,
        pruner=args.pruner,
        keep_models=args.keep_models,
    )
    c = result.counts
    budget = f" of {result.budget_seconds:.0f} s" if result.budget_seconds else ""
    print(f"study: {result.output} (study '{result.study_name}' in {result.storage})")
    print(
        f"trials: {c['complete']} complete, {c['pruned']} pruned, "
        f"{c['fail'] - c['interrupted']} failed in {result.spent_seconds:.0f} s{budget}"
    )
    if result.best is None:
        print("no trial completed")
    else:
        b = result.best
        params = ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in b["params"].items()
        )
        default = (
            f" (default recipe: {result.default_value:.4f})"
            if result.default_value is not None
            else ""
        )
        print(
            f"best: trial {b['number']}, validation {result.metric} {b['value']:.4f}{default}: "
            f"{params}"
        )
        test = result.test or {}
        print(f"test (best trial, once): {test.get('summary') or test.get('note', '-')}")
        best_yaml = result.files["best.yaml"]
        print(f"best config: {best_yaml}  (textloop train {best_yaml} --output runs/NAME)")
    print(f"report: {result.files['report.md']}")
    return 0
