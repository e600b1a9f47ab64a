"""``tune``: a hyper-parameter search on a time budget, through the training driver.

Optuna's TPE sampler proposes each trial's values from the space (``tuning/space.py``); the
trial is an ordinary run (``training.run.train``, the same driver as ``textloop train``) in
``trials/NNNN`` under the study folder, and every evaluation of its training loop is reported to
the pruner, which stops unpromising trials early: Hyperband (default) or successive halving, the
resource being training examples seen, from the default recipe's evaluation interval up to the
most epochs the space allows. The first trial of a new study is the default recipe itself (when
the space holds its values), so the search never ends below the untuned run on validation.

The study lives in an Optuna RDB storage: ``study.db`` (SQLite) in the output folder by default,
or any Optuna RDB URL (``--storage``) that several worker processes, on one machine or many,
share: each takes the next trial, and their trials' numbers never collide. A time budget counts
the wall time during which any worker runs (``tuning/clock.py``); a trial that the time left
cannot hold is not started, and a running one gets the time left as its own budget and stops
cleanly at the end. ``--resume`` continues a killed study: the time spent before the kill
counts, and the trial the dead worker was running is continued from its last checkpoint as a
new trial with the same values (the old one is recorded as interrupted), so no trial is lost
or run twice.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from textloop.artifacts.rundir import is_empty_dir
from textloop.config import build_config, load_tree, parse_duration
from textloop.errors import CheckpointError, ConfigError, RunDirError
from textloop.fileio import write_text_atomic
from textloop.training.plan import plan_run
from textloop.tuning import report
from textloop.tuning.clock import (
    Worker,
    continue_stale,
    estimate_trial_seconds,
    minimum_trial_seconds,
    others_running,
    overhead_seconds,
    workers,
)
from textloop.tuning.settings import StudySettings, TuneResult, counted
from textloop.tuning.space import Param, check_space, default_space, parse_space
from textloop.tuning.trial import TrialPlan, run_trial, trial_dir

log = logging.getLogger("textloop")

PRUNERS = ("hyperband", "halving", "none")
SETTINGS_KEY = "textloop.settings"
STUDY_FILE = "study.json"


def tune(
    config: str | Path | None = None,
    *,
    output: str | Path,
    overrides: Sequence[str] = (),
    extra: dict[str, Any] | None = None,
    space: Sequence[str] = (),
    trials: int | None = None,
    time_budget: str | float | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    resume: bool = False,
    pruner: str | None = None,
    keep_models: bool = False,
) -> TuneResult:
    """Search hyper-parameters of the run ``config`` describes; write the study to ``output``.

    Args:
        config: the base YAML run file (optional on ``resume``: the study keeps it).
        output: the study folder (trials, best.yaml, trials.csv, report.md, study.db).
        overrides, extra: ``--set`` strings and dotted flag values applied to the base config.
        space: ``--space`` specs; empty: the default space around the recipe.
        trials: trials to run in all (default 20); with a budget, whichever ends first.
        time_budget: wall-clock budget of the whole study (``45m``), shared by its workers.
        storage: an Optuna RDB URL to share the study between workers (default: SQLite in
            ``output``). An existing study of that name in it is joined.
        study_name: the study's name in the storage (default: the output folder's name).
        resume: continue the study in ``output`` (a killed one, or for more trials / time).
        pruner: hyperband (default), halving or none.
        keep_models: keep every trial's model folder (default: only the best trial's).

    Returns:
        Counts, the best trial, its test metrics (once, at the end) and the files written.

    Raises:
        ConfigError: bad space, config, budget too short for one trial, or settings that differ
            from the study's; nothing is created.
        RunDirError, CheckpointError: ``output`` holds something else, or nothing to resume.

    Example:
        >>> result = textloop.tune("configs/classification/clinc150_full.yaml",
        ...     output="tunes/clinc", trials=30, time_budget="45m", space=["lr=1e-5:3e-4:log"])
        >>> result.best["params"]
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if trials is not None and trials < 1:
        raise ConfigError(f"--trials: got {trials}; must be >= 1")
    budget = _budget(time_budget)
    if pruner is not None and pruner not in PRUNERS:
        raise ConfigError(f"--pruner: got {pruner!r}; allowed: {', '.join(PRUNERS)}")
    given_space = parse_space(space)
    out = Path(output)
    url, name = _locate(out, storage, study_name, resume)
    given_tree = _base_tree(config, overrides, extra) if config or overrides or extra else None
    if given_tree is not None:
        check_space(given_space, given_tree)

    saved = _saved_settings(url, name) if resume or storage else None
    if saved is None and resume:
        raise CheckpointError(f"nothing to resume: {url} holds no study {name!r}")
    if saved is not None:
        _check_agrees(saved, given_tree, given_space, pruner)
        settings = saved
    else:
        if given_tree is None:
            raise ConfigError("tune: give the base run config (a YAML file or --set keys)")
        settings = _new_settings(given_tree, given_space, pruner or "hyperband", budget)
    settings.n_trials = trials or settings.n_trials
    settings.budget_seconds = budget if budget is not None else settings.budget_seconds

    out.mkdir(parents=True, exist_ok=True)  # every check passed: the study may be created
    write_text_atomic(
        out / STUDY_FILE, json.dumps({"storage": url, "study_name": name}, indent=2) + "\n"
    )
    (out / "trials").mkdir(exist_ok=True)
    study, store = _open_study(url, name, settings)
    track = (given_tree or {}).get("track")  # tracking is this worker's choice
    with Worker(study) as worker:
        continue_stale(study, store, worker.id)
        _work(study, settings, out, worker, keep_models, track)
        spent = worker.spent_seconds()
        others = others_running(study, worker.id)
    return report.write_outputs(study, settings, out, url, spent, last_worker=not others)


def _budget(value: str | float | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise ConfigError(f"--time-budget: {exc}") from None


def _base_tree(
    config: str | Path | None, overrides: Sequence[str], extra: dict[str, Any] | None
) -> dict[str, Any]:
    tree = load_tree(config, list(overrides), extra)
    for key in ("output", "overwrite"):  # each trial has its own folder
        tree.pop(key, None)
    build_config(tree, source=str(config) if config else "config")  # every problem, at once
    return tree


def _locate(out: Path, storage: str | None, name: str | None, resume: bool) -> tuple[str, str]:
    """The storage URL and study name; refuse an output folder that holds something else."""
    marker = out / STUDY_FILE
    if out.exists() and not out.is_dir():
        raise RunDirError(f"output {out} is a file, not a folder; choose another --output")
    saved: dict[str, Any] = {}
    if marker.is_file():
        saved = json.loads(marker.read_text(encoding="utf-8"))
    elif resume and storage is None:
        raise CheckpointError(
            f"nothing to resume in {out}: no {STUDY_FILE} there (start without --resume)"
        )
    elif out.is_dir() and not is_empty_dir(out) and storage is None:
        raise RunDirError(
            f"output folder {out} holds files that are not a tuning study; choose a new or "
            "empty --output folder"
        )
    if saved and not resume and storage is None:
        raise RunDirError(
            f"output folder {out} already holds a tuning study; pass --resume to continue it, "
            "or choose another --output"
        )
    if saved and storage is not None and saved.get("storage") != storage:
        raise RunDirError(
            f"output folder {out} holds the study in {saved.get('storage')}, not in {storage}; "
            "choose another --output"
        )
    url = storage or saved.get("storage") or f"sqlite:///{(out / 'study.db').resolve()}"
    return url, name or saved.get("study_name") or out.resolve().name


def _storage(url: str) -> Any:
    import optuna

    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    except Exception as exc:  # a bad URL, a missing driver, an unreachable server
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(
            f"--storage {url}: cannot open it ({first}); give an Optuna RDB URL such as "
            "sqlite:///path/study.db or postgresql://user@host/db"
        ) from None


def _saved_settings(url: str, name: str) -> StudySettings | None:
    import optuna

    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///") :]).exists():
        return None  # opening would create the file
    try:
        study = optuna.load_study(study_name=name, storage=_storage(url))
    except KeyError:
        return None
    saved = study.user_attrs.get(SETTINGS_KEY)
    return StudySettings(**saved) if saved else None


def _check_agrees(
    saved: StudySettings, tree: dict[str, Any] | None, space: list[Param], pruner: str | None
) -> None:
    diffs = []
    untracked = {k: v for k, v in (tree or {}).items() if k != "track"}
    if tree is not None and untracked != {k: v for k, v in saved.base.items() if k != "track"}:
        diffs.append("the base config")
    if space and [p.spec() for p in space] != saved.space:
        diffs.append(f"--space ({' '.join(saved.space)} in the study)")
    if pruner is not None and pruner != saved.pruner:
        diffs.append(f"--pruner ({saved.pruner} in the study)")
    if diffs:
        raise ConfigError(
            f"the study has other settings: {'; '.join(diffs)}; drop those arguments (--resume "
            "continues with the study's own) or choose another --output / --study-name"
        )


def _new_settings(
    tree: dict[str, Any], given: list[Param], pruner: str, budget: float | None
) -> StudySettings:
    """Plan the base run (data, model, recipe, timings) and derive the study's settings."""
    cfg = build_config(tree)
    plan = plan_run(cfg)
    space = given or default_space(plan.settings)
    check_space(space, tree)
    batch = int(plan.settings["batch_size"])
    minimum = minimum_trial_seconds(plan, batch)
    if budget is not None and budget < minimum:
        raise ConfigError(
            f"--time-budget {budget:g}s is too short for one trial: reading the data and building "
            f"the model took {plan.setup_seconds:.1f} s and one evaluation {plan.eval_seconds:.1f} "
            f"s here; give at least {minimum:.0f} s"
        )
    every = int(plan.settings["eval_every_steps"] or 0)
    per_eval = every * batch * cfg.train.grad_accum_steps if every else plan.n_train
    epochs = [p for p in space if p.name == "epochs"]
    most_epochs = max(epochs[0].values()) if epochs else int(plan.settings["epochs"])
    return StudySettings(
        base=tree,
        space=[p.spec() for p in space],
        metric=plan.metric,
        direction="maximize" if plan.higher_is_better else "minimize",
        pruner=pruner,
        min_resource=max(1, per_eval),
        max_resource=max(int(most_epochs) * plan.n_train, 3 * per_eval),
        recipe=plan.settings,
        min_trial_seconds=round(minimum, 2),
        overhead_seconds=round(plan.setup_seconds + plan.eval_seconds, 2),
        test_source=plan.test_source,
        seed=cfg.train.seed,
    )


def _sampler_and_pruner(settings: StudySettings, seed: int) -> tuple[Any, Any]:
    import optuna

    startup = max(2, min(10, settings.n_trials // 3))  # random trials before TPE models them
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)
    pruner: Any = optuna.pruners.NopPruner()
    if settings.pruner == "hyperband":
        pruner = optuna.pruners.HyperbandPruner(
            min_resource=settings.min_resource, max_resource=settings.max_resource
        )
    elif settings.pruner == "halving":
        pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=settings.min_resource)
    return sampler, pruner


def _open_study(url: str, name: str, settings: StudySettings) -> tuple[Any, Any]:
    """Create the study (with its settings and the default-recipe trial) or join it; the
    study and its storage."""
    import optuna

    storage = _storage(url)
    try:  # creation is atomic in the storage: exactly one worker creates, the others join
        probe = optuna.create_study(storage=storage, study_name=name, direction=settings.direction)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        probe, created = optuna.load_study(study_name=name, storage=storage), False
    n_workers = len(workers(probe.user_attrs))
    sampler, pruner = _sampler_and_pruner(settings, settings.seed + n_workers)
    study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    study.set_user_attr(SETTINGS_KEY, asdict(settings))
    if created:
        _enqueue_default(study, settings)
    return study, storage


def _enqueue_default(study: Any, settings: StudySettings) -> None:
    """The first trial: the default recipe's values, when the space holds them all."""
    values = report.default_values(settings)
    if all(p.contains(values[p.name]) for p in parse_space(settings.space)):
        study.enqueue_trial(values, user_attrs={"default_recipe": True})


def _work(
    study: Any,
    settings: StudySettings,
    out: Path,
    worker: Worker,
    keep: bool,
    track: str | None,
) -> None:
    """Take trials until --trials are counted or the time left cannot hold another."""
    from optuna.trial import TrialState

    space = parse_space(settings.space)
    base = {**settings.base, "track": track} if track else settings.base
    budget = settings.budget_seconds
    while True:
        trials = study.get_trials(deepcopy=False)
        waiting = any(t.state == TrialState.WAITING for t in trials)  # queued: run them first
        if counted(trials) >= settings.n_trials and not waiting:
            log.info("tune: %d trials done", settings.n_trials)
            return
        left = None if budget is None else budget - worker.spent_seconds()
        if left is not None:
            need = estimate_trial_seconds(trials, settings.min_trial_seconds)
            if left < need:
                log.info(
                    "tune: %.0f s of the budget left, a trial takes about %.0f s: done", left, need
                )
                return
        trial = study.ask()
        trial.set_user_attr("worker", worker.id)
        values = {p.name: p.suggest(trial) for p in space}
        continues = trial.user_attrs.get("continues")
        reported: set[int] = set()
        if continues is not None:  # carry the interrupted trial's reports over
            old = next(t for t in trials if t.number == continues)
            for step, value in sorted(old.intermediate_values.items()):
                trial.report(value, step)
                reported.add(step)
        plan = TrialPlan(
            values=values,
            folder=trial_dir(out, trial.number),
            time_budget=None
            if left is None
            else max(1.0, left - overhead_seconds(trials, settings.overhead_seconds)),
            deadline=None if left is None else time.time() + left,
            continues=continues,
        )
        shown = ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()
        )
        log.info("trial %d: %s", trial.number, shown)
        result = run_trial(trial, plan, base, space, settings.metric, out, reported, worker.beat)
        for key, value in result["attrs"].items():
            trial.set_user_attr(key, value)
        state = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED}.get(
            result["state"], TrialState.FAIL
        )
        try:
            study.tell(
                trial, result["value"] if state == TrialState.COMPLETE else None, state=state
            )
        except Exception as exc:  # another worker took it over (it looked dead)
            log.warning("trial %d: could not record its result (%s)", trial.number, exc)
        value = "" if result["value"] is None else f" {settings.metric} {result['value']:.4f}"
        log.info(
            "trial %d: %s%s in %.0f s",
            trial.number,
            result["state"],
            value,
            result["attrs"].get("seconds", 0.0),
        )
        report.tidy(study, out, keep)
