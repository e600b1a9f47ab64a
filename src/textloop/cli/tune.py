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

from textloop.cli.flags import Flag, add_config_flags, flag_values
from textloop.config import RunConfig

# the base run config's keys `tune` offers as flags (type, choices and help from the fields)
TUNE_FLAGS: tuple[str | Flag, ...] = (
    "model",
    "task",
    "data.train",
    Flag("data.validation", help="Validation data (what trials are chosen on)"),
    Flag("data.test", help="Test data (scored once, for the best trial)"),
    Flag("train.seed", help="Seed of every trial's run and of the sampler"),
    Flag("track", help="Track every trial's run in MLflow, or TensorBoard event files"),
)


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
    p.set_defaults(config_flags=add_config_flags(p, RunConfig, TUNE_FLAGS))
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key"
    )
    return ["tune"]


def run(args: argparse.Namespace) -> int:
    from textloop.tuning.study import tune

    extra = flag_values(args, args.config_flags)
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
