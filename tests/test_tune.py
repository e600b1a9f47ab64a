"""``textloop tune``: the space, the budget clock, pruning through the driver, the study's outputs,
bad input, and a study killed with SIGKILL mid-trial and resumed."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from textloop.cli.main import main
from textloop.config import load_config
from textloop.errors import ConfigError
from textloop.training.callbacks import RunControl
from textloop.training.run import train
from textloop.tuning.clock import covered_seconds
from textloop.tuning.settings import StudySettings
from textloop.tuning.space import default_space, parse_param, parse_space
from textloop.tuning.trial import PRUNED, TrialReporter

from .conftest import REPO

SPACE = ["--space", "lr=1e-3:1e-2:log", "--space", "batch_size=16,32", "--space", "epochs=2:3"]


def _base(tmp_path: Path, tiny_bert: Path, toy_data: dict[str, Path], **train: object) -> Path:
    """A base run file for trials on the tiny model (fp32: the same numbers on any CPU)."""
    tree = {
        "model": str(tiny_bert),
        "data": {k: str(v) for k, v in toy_data.items()},
        "train": {"max_seq_len": 32, "precision": "fp32", **train},
    }
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def _study(out: Path):
    import optuna

    saved = json.loads((out / "study.json").read_text())
    return optuna.load_study(study_name=saved["study_name"], storage=saved["storage"])


# --- the space ------------------------------------------------------------------------------


def test_space_specs_parse_to_ranges_and_choices():
    lr = parse_param("lr=1e-5:3e-4:log")
    assert (lr.key, lr.kind, lr.low, lr.high, lr.log) == ("train.lr", "float", 1e-5, 3e-4, True)
    epochs = parse_param("train.epochs=2:10")
    assert (epochs.name, epochs.kind, epochs.values()) == ("epochs", "int", [2, 10])
    batch = parse_param("batch_size=16,32,64")
    assert batch.choices == (16, 32, 64) and batch.contains(32) and not batch.contains(8)
    assert parse_param("scheduler=linear,cosine").choices == ("linear", "cosine")
    assert parse_param(lr.spec()) == lr  # a spec reads back as the same parameter


@pytest.mark.parametrize(
    "spec, needle",
    [
        ("foo=1:2", "unknown parameter 'foo'"),
        ("lrr=1e-5:1e-3", "did you mean 'lr'"),
        ("lr=3e-4:1e-5:log", "inverted range"),
        ("epochs=3:3", "empty range"),
        ("batch_size=", "empty range"),
        ("batch_size=32", "one value is no search"),
        ("epochs=2.5:4", "not an integer"),
        ("lr=0:1e-3:log", "log range needs LOW > 0"),
        ("scheduler=1:2", "takes a list"),
    ],
)
def test_bad_space_specs_say_what_is_wrong(spec, needle):
    with pytest.raises(ConfigError, match=needle):
        parse_space([spec])


def test_default_space_is_centred_on_the_recipe():
    space = {p.name: p for p in default_space({"lr": 1e-4, "batch_size": 32, "epochs": 3})}
    assert (space["lr"].low, space["lr"].high) == (3.33e-5, 3e-4)  # 3 significant digits
    assert space["lr"].log and space["batch_size"].choices == (16, 32, 64)
    assert (space["epochs"].low, space["epochs"].high) == (2, 6)


def test_study_time_is_the_union_of_worker_intervals():
    # two workers side by side count once; the gap between a kill and a resume not at all
    assert covered_seconds([(0, 10), (5, 12), (20, 25)]) == pytest.approx(17)
    assert covered_seconds([]) == 0


def test_best_config_holds_only_what_differs_from_defaults():
    from textloop.tuning.report import best_config

    settings = StudySettings(
        base={"model": "m", "train": {"max_seq_len": 32}},
        space=["lr=1e-4:1e-2:log", "warmup_ratio=0:0.2"],
        metric="macro_f1",
        direction="maximize",
        pruner="none",
        min_resource=1,
        max_resource=10,
        recipe={},
        min_trial_seconds=1.0,
        overhead_seconds=1.0,
        test_source=None,
        seed=0,
    )
    tree = best_config(settings, {"lr": 3e-3, "warmup_ratio": 0.06})  # 0.06 is the default
    assert tree == {"model": "m", "train": {"max_seq_len": 32, "lr": 3e-3}}


# --- pruning through the driver -------------------------------------------------------------


def test_a_pruned_trial_stops_cleanly_and_finishes_its_run(tiny_bert, toy_data, tmp_path):
    import optuna

    # any value below 2 is pruned: the first evaluation stops the run
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(2.0))
    trial = study.ask()
    control = RunControl()
    out = tmp_path / "trial"
    cfg = load_config(
        None,
        extra={
            "model": str(tiny_bert),
            "data.train": str(toy_data["train"]),
            "data.validation": str(toy_data["validation"]),
            "data.test": str(toy_data["test"]),
            "output": str(out),
            "train.epochs": 4,
            "train.batch_size": 16,
            "train.eval_every_steps": 10,
            "train.max_seq_len": 32,
            "train.precision": "fp32",
        },
    )
    run = train(
        cfg,
        callbacks=[TrialReporter(trial, "macro_f1", control)],
        control=control,
        test_metrics=False,
    )
    m = run.metrics
    assert control.reason == PRUNED and m["train"]["stopped"] == PRUNED
    assert m["train"]["steps"] == 10  # of 60 planned: stopped at the first evaluation
    assert "test" not in m and "validation" in m  # a trial never sees the test split
    assert not (out / ".incomplete").exists() and (out / "report.md").is_file()
    reported = study.trials[0].intermediate_values
    assert list(reported) == [160]  # 10 steps x 16 examples: the resource is examples seen


# --- the study end to end -------------------------------------------------------------------


@pytest.mark.integration
def test_tune_writes_the_study_and_its_best_yaml_trains(tiny_bert, toy_data, tmp_path, capsys):
    base = _base(tmp_path, tiny_bert, toy_data)
    out = tmp_path / "study"
    args = ["tune", str(base), "--output", str(out), "--trials", "2", *SPACE]
    assert main([*args, "--time-budget", "10m"]) == 0
    printed = capsys.readouterr().out
    assert "best: trial" in printed and "test (best trial, once): accuracy" in printed

    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [r["number"] for r in rows] == ["0", "1"]
    assert all(r["state"] in ("complete", "pruned") for r in rows)
    for r in rows:  # each trial an ordinary run dir, chosen on validation only
        metrics = json.loads((out / r["run_dir"] / "metrics.json").read_text())
        assert "validation" in metrics and "test" not in metrics
        assert (out / r["run_dir"] / "config.yaml").is_file()
        assert not (out / r["run_dir"] / "checkpoints").exists()  # tidied
    best = _study(out).best_trial
    kept = [r["run_dir"] for r in rows if (out / r["run_dir"] / "model").is_dir()]
    assert kept == [f"trials/{best.number:04d}"]  # only the best trial keeps its model

    tree = yaml.safe_load((out / "best.yaml").read_text())
    assert set(tree) == {"model", "data", "train"}  # no output: train --output gives it
    assert set(tree["train"]) == {"max_seq_len", "precision", "lr", "batch_size", "epochs"}
    assert tree["train"]["lr"] == pytest.approx(best.params["lr"])
    test = json.loads((out / "test_metrics.json").read_text())
    assert test["n"] == 60  # the best trial's test split, scored once at the end
    assert _study(out).user_attrs["textloop.test"]["trial"] == best.number
    report = (out / "report.md").read_text()
    for heading in (
        "## Best trial",
        "### Test metrics",
        "## Optimisation history",
        "## Slice plot",
    ):
        assert heading in report
    assert (out / "plots" / "history.png").is_file() and (out / "plots" / "slices.png").is_file()

    # the same study again without --resume is refused; best.yaml trains as it is
    assert main(args) == 2
    assert "pass --resume" in capsys.readouterr().err.splitlines()[-1]
    winner = tmp_path / "winner"
    assert main(["train", str(out / "best.yaml"), "--output", str(winner), "--quiet"]) == 0
    saved = yaml.safe_load((winner / "config.yaml").read_text())["train"]
    assert (
        saved["lr"] == pytest.approx(best.params["lr"]) and saved["epochs"] == best.params["epochs"]
    )


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--space", "foo=1:2"], "unknown parameter 'foo'"),
        (["--space", "lr=3e-4:1e-5"], "inverted range"),
        (["--space", "epochs=3:3"], "empty range"),
        (["--space", "lr=0:1e-3"], "train.lr: got 0"),  # the config's own bound
        (["--time-budget", "0.01s"], "too short for one trial"),
        (["--trials", "0"], "--trials"),
    ],
)
def test_bad_tune_input_is_one_line_exit_2_nothing_created(
    tiny_bert, toy_data, tmp_path, capsys, extra, needle
):
    base = _base(tmp_path, tiny_bert, toy_data)
    out = tmp_path / "study"
    assert main(["tune", str(base), "--output", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("error: ") and needle in err.splitlines()[-1]
    assert "Traceback" not in err and not out.exists()


# --- kill -9 mid-trial, then --resume ---------------------------------------------------------

_SLOW_WORKER = textwrap.dedent(
    """
    import sys, time
    from textloop.training import loop
    step = loop.clip_gradients
    def slow(*args, **kwargs):  # 50 ms more per step: time to kill it mid-trial
        time.sleep(0.05)
        return step(*args, **kwargs)
    loop.clip_gradients = slow
    from textloop.cli.main import main
    sys.exit(main(sys.argv[1:]))
    """
)


@pytest.mark.integration
def test_a_study_killed_mid_trial_resumes_without_losing_or_repeating_a_trial(
    tiny_bert, toy_data, tmp_path
):
    base = _base(
        tmp_path, tiny_bert, toy_data, batch_size=8, eval_every_steps=20, early_stopping_patience=0
    )
    out = tmp_path / "study"
    args = ["tune", str(base), "--output", str(out), "--trials", "1", "--pruner", "none"]
    args += ["--time-budget", "10m", "--space", "lr=1e-3:1e-2:log", "--space", "epochs=2:3"]
    script = tmp_path / "slow_worker.py"
    script.write_text(_SLOW_WORKER)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(script), *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    checkpoint = out / "trials" / "0000" / "checkpoints" / "last" / "state.json"
    deadline = time.time() + 120
    while not checkpoint.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert checkpoint.is_file(), "trial 0 never checkpointed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(checkpoint.read_text())["step"]
    before = _study(out)
    assert [t.state.name for t in before.trials] == ["RUNNING"]
    params = before.trials[0].params
    time.sleep(1.0)  # time between the kill and the resume is not the study's

    assert main([*args, "--resume"]) == 0
    trials = _study(out).trials
    assert [t.number for t in trials] == [0, 1]  # nothing run twice under another number
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]  # the one trial: not lost
    assert trials[0].user_attrs["interrupted"]
    # trial 0's run continued as trial 1, from its checkpoint, in its renamed folder
    assert trials[1].user_attrs["continues"] == 0 and trials[1].params == params
    assert not (out / "trials" / "0000").exists()
    log = [
        json.loads(ln) for ln in (out / "trials" / "0001" / "log.jsonl").read_text().splitlines()
    ]
    evals = [r["step"] for r in log if r["kind"] == "eval"]
    assert killed_at in evals and evals == sorted(set(evals))  # no step trained twice
    assert json.loads((out / "trials" / "0001" / "metrics.json").read_text())["train"]["steps"] == (
        params["epochs"] * 30
    )
    # the budget counts the killed worker's time, and not the pause before the resume
    workers = {k: v for k, v in _study(out).user_attrs.items() if k.startswith("textloop.worker:")}
    assert len(workers) == 2
    spans = sorted((w["start"], w["alive"]) for w in workers.values())
    assert spans[0][1] > spans[0][0] and spans[0][1] <= spans[1][0]
    report = (out / "report.md").read_text()
    spent = float(report.split("- time: ")[1].split(" s")[0])
    assert spent == pytest.approx(sum(b - a for a, b in spans), abs=2.0)
    assert "1 interrupted and continued" in report


@pytest.mark.slow  # two worker processes: about 30 s on 2 cores
def test_two_workers_share_one_study(tiny_bert, toy_data, tmp_path):
    base = _base(tmp_path, tiny_bert, toy_data, batch_size=16)
    out = tmp_path / "study"
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    args = ["-m", "textloop", "tune", str(base), "--output", str(out), "--storage", storage]
    args += ["--trials", "4", "--space", "lr=1e-3:1e-2:log", "--space", "epochs=2:3"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1"}
    procs = [
        subprocess.Popen([sys.executable, *args], env=env, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    trials = _study(out).trials
    numbers = [t.number for t in trials]
    assert numbers == list(range(len(numbers))) and 4 <= len(numbers) <= 5
    assert all(t.state.name == "COMPLETE" for t in trials)
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both took trials
    assert len({t.user_attrs["run_dir"] for t in trials}) == len(trials)
