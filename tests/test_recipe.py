"""The default recipe (settings fitted to the data) and the time budget."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import yaml

from textloop.config import load_config, parse_duration
from textloop.errors import ConfigError
from textloop.training import budget as budget_mod
from textloop.training.loop import LoopState
from textloop.training.optim import Horizon
from textloop.training.recipe import RECIPE_FIELDS, DataShape, decide
from textloop.training.run import train

UNSET = dict.fromkeys(RECIPE_FIELDS)


def shape(**kw):
    base = dict(task="classification", n_train=9000, n_classes=77, hidden_size=384)
    base.update(kw)
    return DataShape(**base)


def test_small_encoder_gets_a_higher_rate_and_a_faster_head():
    r = decide(shape(), UNSET, set())
    assert r.settings["lr"] == pytest.approx(1e-4)
    assert r.settings["head_lr"] == pytest.approx(1e-3)
    base = decide(shape(hidden_size=768), UNSET, set())
    assert base.settings["lr"] == pytest.approx(5e-5)
    large = decide(shape(hidden_size=1024), UNSET, set())
    assert large.settings["lr"] < base.settings["lr"]
    assert set(r.reasons) == set(RECIPE_FIELDS) and r.user_set == []


def test_fewer_examples_per_class_get_more_passes_and_at_least_min_steps():
    many = decide(shape(n_train=13000, n_classes=7), UNSET, set()).settings["epochs"]
    mid = decide(shape(n_train=15000, n_classes=150), UNSET, set()).settings["epochs"]
    few = decide(shape(n_train=1500, n_classes=150), UNSET, set()).settings["epochs"]
    assert many < mid < few
    tiny = decide(shape(n_train=50, n_classes=5), UNSET, set())
    assert tiny.settings["batch_size"] == 8  # 7 updates a pass rather than 2
    assert decide(shape(n_train=600, n_classes=5), UNSET, set()).settings["batch_size"] == 16
    assert decide(shape(), UNSET, set()).settings["batch_size"] == 32
    # many short epochs: evaluated about 8 times, not after each one
    assert tiny.settings["epochs"] > 8 and tiny.settings["eval_every_steps"] > 0
    assert tiny.settings["early_stopping_patience"] >= 1
    # a batch size the user set is what the steps are counted in
    kept = decide(shape(n_train=50, n_classes=5), {**UNSET, "batch_size": 32}, {"batch_size"})
    assert kept.settings["batch_size"] == 32


def test_user_settings_are_kept_and_head_never_slower_than_a_user_lr():
    given = {**UNSET, "lr": 3e-3, "epochs": 2}
    r = decide(shape(), given, {"lr", "epochs"})
    assert r.settings["lr"] == 3e-3 and r.settings["epochs"] == 2
    assert r.settings["head_lr"] == pytest.approx(3e-3)
    assert sorted(r.user_set) == ["epochs", "lr"] and "lr" not in r.reasons


def test_other_tasks_keep_fixed_defaults():
    r = decide(shape(task="clm", n_classes=None), UNSET, set())
    assert r.settings == {
        "batch_size": 32,
        "epochs": 3,
        "lr": 5e-5,
        "head_lr": None,
        "eval_every_steps": 0,
        "early_stopping_patience": None,
        "class_weights": "none",
    }


def test_parse_duration_and_config_errors():
    assert parse_duration("90s") == 90 and parse_duration("10m") == 600
    assert parse_duration("1.5h") == 5400 and parse_duration(30) == 30
    for bad in ("soon", "-5m", "0"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    with pytest.raises(ConfigError, match="time_budget"):
        load_config(None, extra={"train.time_budget": "ten minutes"})


def _tiny(tiny_bert, toy_data, out, **extra):
    base = {
        "model": str(tiny_bert),
        "output": str(out),
        "data.train": str(toy_data["train"]),
        "data.validation": str(toy_data["validation"]),
        "train.batch_size": 16,
        "train.max_seq_len": 32,
        "train.precision": "fp32",
    }
    base.update(extra)
    return load_config(None, extra=base)


def test_a_run_writes_the_recipe_into_config_and_report(tiny_bert, toy_data, tmp_path):
    out = tmp_path / "run"
    run = train(_tiny(tiny_bert, toy_data, out, **{"train.epochs": 2}))
    saved = yaml.safe_load((out / "config.yaml").read_text())["train"]
    assert saved["epochs"] == 2  # the user's
    assert saved["lr"] == pytest.approx(1e-4) and saved["head_lr"] == pytest.approx(1e-3)
    assert saved["early_stopping_patience"] == 3
    recipe = run.metrics["train"]["recipe"]
    assert recipe["user_set"] == ["batch_size", "epochs"] and "lr" in recipe["reasons"]
    report = (out / "report.md").read_text()
    assert "## Why these settings" in report and "`train.lr: 0.0001`" in report
    assert "set in the config: `train.batch_size: 16`, `train.epochs: 2`" in report
    # the same flags again: the saved, recipe-filled config is the same run
    with pytest.raises(Exception, match="pass --overwrite") as exc:
        train(_tiny(tiny_bert, toy_data, out, **{"train.epochs": 2}))
    assert "different config" not in str(exc.value)


def test_time_budget_stops_with_the_best_checkpoint(tiny_bert, toy_data, tmp_path):
    import time as real_time

    class Slow:  # every step takes 30 ms more: a 200-step plan cannot fit 1.5 s
        def on_step_end(self, info):
            real_time.sleep(0.03)

    out = tmp_path / "run"
    cfg = _tiny(tiny_bert, toy_data, out, **{"train.max_steps": 400, "train.time_budget": "1.5s"})
    run = train(cfg, callbacks=[Slow()])
    budget = run.metrics["train"]["time_budget"]
    assert budget["seconds"] == 1.5 and budget["planned_steps"] == 400
    assert run.metrics["train"]["steps"] < 400
    assert budget["fitted_steps"] is not None or budget["reached"]
    assert run.metrics["train"]["best_step"] >= 1 and (out / "model").is_dir()
    assert "time budget 1.5 s" in (out / "report.md").read_text()
    assert json.loads((out / "metrics.json").read_text())["validation"]["accuracy"] >= 0.0


def test_time_budget_fits_the_schedule_from_measured_speed(monkeypatch):
    clock = SimpleNamespace(now=0.0)
    monkeypatch.setattr(budget_mod.time, "perf_counter", lambda: clock.now)
    horizon = Horizon(total_steps=1000)
    budget = budget_mod.TimeBudget(100.0, horizon, 0, eval_every=100, per_epoch=100)
    state = LoopState()
    for _ in range(10):  # 1 s a step: 1,000 steps cannot fit 100 s
        clock.now += 1.0
        state.step += 1
        budget.after_step(state)
    assert horizon.stop_at is not None and 50 <= horizon.stop_at <= 100
    assert horizon.total_steps == horizon.stop_at == state.stop_at  # the decay follows
    # a budget that fits leaves the plan alone
    clock.now = 0.0
    roomy = Horizon(total_steps=50)
    b2 = budget_mod.TimeBudget(1000.0, roomy, 0, eval_every=10, per_epoch=10)
    s2 = LoopState()
    for _ in range(10):
        clock.now += 1.0
        s2.step += 1
        b2.after_step(s2)
    assert roomy.stop_at is None and roomy.total_steps == 50


def test_resume_from_the_saved_config_keeps_the_recipe(tiny_bert, toy_data, tmp_path):
    from textloop.cli.main import main
    from textloop.training.run import TrainingInterrupted

    class StopAt3:
        def on_step_end(self, info):
            if info.step == 3:
                raise KeyboardInterrupt

    out = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        train(_tiny(tiny_bert, toy_data, out, **{"train.epochs": 2}), callbacks=[StopAt3()])
    # --resume reads config.yaml, where the recipe's values look as if set by the user
    assert main(["train", "--output", str(out), "--resume", "--quiet"]) == 0
    recipe = json.loads((out / "metrics.json").read_text())["train"]["recipe"]
    assert "lr" in recipe["reasons"] and "early_stopping_patience" in recipe["reasons"]
    assert recipe["user_set"] == ["batch_size", "epochs"]


def test_a_large_validation_set_is_evaluated_less_often():
    small = decide(shape(n_train=2000, n_classes=None, task="ner"), UNSET, set())
    big = decide(shape(n_train=2000, n_classes=None, task="ner", n_validation=3250), UNSET, set())
    assert small.settings["epochs"] == big.settings["epochs"]
    assert big.settings["eval_every_steps"] > max(small.settings["eval_every_steps"], 63)
