"""A study's outputs, written (atomically) by each worker when it stops:

- ``best.yaml``: the base config with the best trial's values, only what differs from the
  defaults, ready for ``textloop train best.yaml --output runs/NAME``;
- ``trials.csv``: one row per trial (state, value, parameters, time, why it stopped, error);
- ``report.md`` with ``plots/``: optimisation history, learning curves with the pruned trials,
  parameter importances (fANOVA) and a slice plot;
- the best trial's test metrics (``test_metrics.json``), computed once by the study's last
  worker, on the best trial's saved model, never used for choosing.

``tidy`` keeps the study folder small as it goes: a finished trial's checkpoints are removed,
and its model too unless it is the best so far (``keep_models`` keeps them all).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from textloop.config import RunConfig, build_config
from textloop.fileio import write_text_atomic
from textloop.training.recipe import RECIPE_FIELDS
from textloop.tuning import plots
from textloop.tuning.settings import StudySettings, TuneResult, counted
from textloop.tuning.space import parse_space, with_values
from textloop.tuning.trial import trial_dir

log = logging.getLogger("textloop")

TEST_KEY = "textloop.test"
_ATTRS = (
    "seconds",
    "train_seconds",
    "steps",
    "examples",
    "pruned_at_examples",
    "stopped",
    "default_recipe",
    "continues",
    "interrupted",
    "error",
    "run_dir",
    "worker",
)


def best_trial(study: Any) -> Any:
    """The best complete trial, or None before any trial completed."""
    try:
        return study.best_trial
    except ValueError:
        return None


def tidy(study: Any, out: Path, keep_models: bool) -> None:
    """Remove finished trials' checkpoints, and their models but the best's (see above)."""
    best = best_trial(study)
    for t in study.get_trials(deepcopy=False):
        folder = trial_dir(out, t.number)
        if not t.state.is_finished() or not folder.is_dir() or (folder / ".incomplete").exists():
            continue  # running, elsewhere, or an unfinished run kept as it is
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)
        if not keep_models and (best is None or t.number != best.number):
            for sub in ("model", "adapter"):
                shutil.rmtree(folder / sub, ignore_errors=True)


def _get(tree: dict[str, Any], key: str) -> Any:
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _drop(tree: dict[str, Any], key: str) -> None:
    *parents, last = key.split(".")
    node = tree
    for part in parents:
        node = node[part]
    del node[last]
    if parents and not node:
        _drop(tree, ".".join(parents))


def default_values(settings: StudySettings) -> dict[str, Any]:
    """Each searched parameter's value without tuning: the recipe's, or the base config's."""
    cfg = build_config(settings.base).model_dump(mode="json")
    values = {}
    for p in parse_space(settings.space):
        section, _, key = p.key.partition(".")
        from_recipe = section == "train" and key in RECIPE_FIELDS
        values[p.name] = settings.recipe.get(key) if from_recipe else _get(cfg, p.key)
    return values


def best_config(settings: StudySettings, params: dict[str, Any]) -> dict[str, Any]:
    """The base config with the best values, keeping only what differs from the defaults
    (besides what the base config itself set)."""
    space = parse_space(settings.space)
    tree = with_values(settings.base, space, params)
    defaults = RunConfig().model_dump(mode="json")
    for p in space:
        set_by_user = _get(settings.base, p.key) is not None
        if not set_by_user and _get(tree, p.key) == _get(defaults, p.key):
            _drop(tree, p.key)
    build_config(tree, source="best.yaml")  # what train will read back
    return tree


def write_best_yaml(settings: StudySettings, best: Any, out: Path, n_trials: int) -> Path:
    tree = best_config(settings, best.params)
    name = out.resolve().name
    day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    head = (
        f"# textloop train {out / 'best.yaml'} --output runs/{name}\n"
        f"# The best of {n_trials} trials (textloop tune, {day}): trial {best.number}, validation "
        f"{settings.metric} {best.value:.4f}.\n"
        "# Only what differs from the defaults: the base config's keys and the tuned values.\n"
    )
    path = out / "best.yaml"
    write_text_atomic(path, head + yaml.safe_dump(tree, sort_keys=False))
    return path


def write_trials_csv(trials: list[Any], settings: StudySettings, out: Path) -> Path:
    names = [p.name for p in parse_space(settings.space)]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["number", "state", settings.metric, *names, *_ATTRS])
    for t in trials:
        value = "" if t.value is None else f"{t.value:.6g}"
        w.writerow(
            [t.number, t.state.name.lower(), value]
            + [t.params.get(n, "") for n in names]
            + ["" if t.user_attrs.get(a) is None else t.user_attrs[a] for a in _ATTRS]
        )
    path = out / "trials.csv"
    write_text_atomic(path, buf.getvalue())
    return path


def test_metrics(
    study: Any, settings: StudySettings, out: Path, best: Any, last_worker: bool
) -> dict[str, Any] | None:
    """The best trial's test metrics: computed once, by the last worker, then read back."""
    if best is None:
        return None
    cached = study.user_attrs.get(TEST_KEY)
    if cached and cached.get("trial") == best.number:
        return dict(cached)
    if not last_worker:
        return {"trial": best.number, "note": "computed when the study's last worker stops"}
    folder = trial_dir(out, best.number)
    if settings.test_source is None:
        result: dict[str, Any] = {"trial": best.number, "note": "the config has no test split"}
    elif not (folder / "model").is_dir():  # the best trial ran on another machine
        return {"trial": best.number, "note": f"{folder / 'model'} is not on this machine"}
    else:
        from textloop.evaluation.report import summary_line
        from textloop.runs import load_run

        full = load_run(folder).evaluate(settings.test_source)
        write_text_atomic(out / "test_metrics.json", json.dumps(full, indent=2, ensure_ascii=False))
        result = {
            "trial": best.number,
            "source": settings.test_source,
            "summary": summary_line(full),
            "metrics": {k: v for k, v in full.items() if isinstance(v, (int, float))},
        }
    study.set_user_attr(TEST_KEY, result)
    return result


def _importances(study: Any) -> dict[str, float]:
    import warnings

    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 3:  # fANOVA on fewer trials says nothing
        return {}
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except (ValueError, RuntimeError) as exc:  # e.g. a parameter with one value only
        log.debug("no parameter importances: %s", exc)
        return {}
    return {k: float(v) for k, v in found.items()}


def write_outputs(
    study: Any, settings: StudySettings, out: Path, url: str, spent: float, last_worker: bool
) -> TuneResult:
    """Write every output of the study (see the module docstring); what the worker reports."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    best = best_trial(study)
    files = {"trials.csv": write_trials_csv(trials, settings, out)}
    if best is not None:
        files["best.yaml"] = write_best_yaml(settings, best, out, counted(trials))
    test = test_metrics(study, settings, out, best, last_worker)
    counts = {
        s: sum(t.state == getattr(TrialState, s.upper()) for t in trials)
        for s in ("complete", "pruned", "fail", "running", "waiting")
    }
    counts["interrupted"] = sum(bool(t.user_attrs.get("interrupted")) for t in trials)
    default = next(
        (t for t in trials if t.user_attrs.get("default_recipe") and t.value is not None), None
    )
    result = TuneResult(
        output=out,
        storage=url,
        study_name=study.study_name,
        counts=counts,
        spent_seconds=round(spent, 1),
        budget_seconds=settings.budget_seconds,
        best=None
        if best is None
        else {"number": best.number, "value": best.value, "params": dict(best.params)},
        default_value=None if default is None else default.value,
        test=test,
        files=files,
        metric=settings.metric,
    )
    files["report.md"] = _write_report(study, trials, settings, result)
    return result


def _write_report(study: Any, trials: list[Any], settings: StudySettings, r: TuneResult) -> Path:
    out, space = r.output, parse_space(settings.space)
    maximize = settings.direction == "maximize"
    figs = out / "plots"
    figs.mkdir(exist_ok=True)
    importances = _importances(study)
    drawn = {
        "history": plots.plot_history(trials, settings.metric, maximize, figs / "history.png"),
        "pruning": plots.plot_pruning(trials, settings.metric, figs / "pruning.png"),
        "importances": plots.plot_importances(importances, figs / "importances.png"),
        "slices": plots.plot_slices(trials, space, settings.metric, figs / "slices.png"),
    }
    c = r.counts
    budget = f" of {r.budget_seconds:.0f} s" if r.budget_seconds else ""
    lines = [
        f"# Tuning report: {r.study_name}",
        "",
        f"- study `{r.study_name}` in `{r.storage}`",
        f"- selection: validation {settings.metric} ({settings.direction})",
        f"- search: TPE sampler (seed {settings.seed}); pruner {settings.pruner} on training "
        f"examples seen ({settings.min_resource} .. {settings.max_resource})",
        f"- trials: {counted(trials)} of {settings.n_trials}: {c['complete']} complete, "
        f"{c['pruned']} pruned, {c['fail'] - c['interrupted']} failed"
        + (f", {c['interrupted']} interrupted and continued" if c["interrupted"] else "")
        + (f", {c['running']} running" if c["running"] else ""),
        f"- time: {r.spent_seconds:.0f} s{budget} (wall time while a worker ran)",
        "",
        "## Best trial",
        "",
    ]
    if r.best is None:
        lines += ["No trial completed yet.", ""]
    else:
        b = r.best
        delta = ""
        if r.default_value is not None:
            delta = f" (default recipe: {r.default_value:.4f})"
        lines += [
            f"Trial {b['number']}: validation {settings.metric} **{b['value']:.4f}**{delta}; "
            f"run folder `trials/{b['number']:04d}`.",
            "",
            "| parameter | best | default recipe |",
            "| --- | --- | --- |",
        ]
        untuned = default_values(settings)
        for p in space:
            lines.append(f"| {p.name} | {b['params'].get(p.name)} | {untuned.get(p.name)} |")
        lines += [
            "",
            f"Train it: `textloop train {out / 'best.yaml'} --output runs/{out.resolve().name}`",
            "",
            "### Test metrics (the best trial only; computed once at the end, never used to choose)",
            "",
            _test_line(r.test),
            "",
        ]
    lines += ["## Search space", ""]
    lines += [f"- `{p.name}` ({p.key}): {p.describe()}" for p in space]
    lines.append("")
    titles = {
        "history": "Optimisation history",
        "pruning": "Learning curves and pruning",
        "importances": "Parameter importances (fANOVA)",
        "slices": "Slice plot",
    }
    for key, title in titles.items():
        lines += [f"## {title}", ""]
        if key == "importances" and importances:
            lines += [f"- {k}: {v:.3f}" for k, v in importances.items()] + [""]
        png = drawn[key]
        lines += [f"![{key}](plots/{png.name})" if png else "(not enough trials yet)", ""]
    failed = [t for t in trials if t.user_attrs.get("error")]
    if failed:
        lines += ["## Failed and interrupted trials", ""]
        lines += [f"- trial {t.number}: {t.user_attrs['error']}" for t in failed] + [""]
    lines += ["Every trial, with its values, time and why it stopped: `trials.csv`.", ""]
    path = out / "report.md"
    write_text_atomic(path, "\n".join(lines))
    return path


def _test_line(test: dict[str, Any] | None) -> str:
    if not test:
        return "-"
    if "summary" in test:
        return f"{test['summary']} on `{test['source']}` (trial {test['trial']})"
    return test.get("note", "-")
