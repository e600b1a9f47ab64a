"""The training loop on a tiny local BERT: it learns, resumes exactly, and handles every kind."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from textloop.config import load_config
from textloop.training.run import TrainingInterrupted, train

from .conftest import toy_rows, write_csv


def toy_config(tiny_bert: Path, data: dict[str, Path], out: Path, **overrides: Any):
    extra = {
        "model": str(tiny_bert),
        "output": str(out),
        "data.train": str(data["train"]),
        "data.validation": str(data["validation"]),
        "data.test": str(data["test"]),
        "train.epochs": 6,
        "train.lr": 3e-3,
        "train.batch_size": 16,
        "train.max_seq_len": 32,
        "train.warmup_ratio": 0.1,
        "train.log_every_steps": 5,
        "train.precision": "fp32",  # the numerics these tests compare (auto is bf16 on AMX)
    }
    extra.update(overrides)
    return load_config(None, extra=extra)


def test_learns_toy_task_and_writes_run_dir(tiny_bert, toy_data, tmp_path):
    run = train(toy_config(tiny_bert, toy_data, tmp_path / "run"))
    assert run.metrics["test"]["accuracy"] >= 0.9
    assert run.metrics["validation"]["accuracy"] >= 0.9
    out = tmp_path / "run"
    for name in (
        "config.yaml",
        "labels.json",
        "metrics.json",
        "env.json",
        "log.jsonl",
        "report.md",
        "model/model.safetensors",
        "plots/learning_curve.png",
        "plots/confusion_test.png",
        "checkpoints/last/optimizer.pt",
        "checkpoints/best/model.safetensors",
    ):
        assert (out / name).is_file(), name
    assert not (out / ".incomplete").exists()
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["test"]["per_class"]) == {"neg", "pos"}
    assert sum(map(sum, metrics["test"]["confusion_matrix"])) == 60
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    train_losses = [r["loss"] for r in log if r["kind"] == "train"]
    assert train_losses[-1] < train_losses[0] * 0.5  # the loss really falls
    # phrased like the training rows ("were" is not in the toy vocabulary: a sentence with it
    # is out of distribution, and a fresh clone once read it as positive)
    preds = run.predict(["the food excellent was", "the staff awful was"], top_k=2)
    assert [p["label"] for p in preds] == ["pos", "neg"]
    assert (
        len(preds[0]["top_k"]) == 2
        and preds[0]["top_k"][0]["score"] >= preds[0]["top_k"][1]["score"]
    )


class _InterruptAt:
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, info) -> None:
        if info.step == self.step:
            raise KeyboardInterrupt


@pytest.mark.parametrize("interrupt_at", [7, 15])  # mid-epoch, and right at an epoch boundary
def test_resume_gives_identical_weights(tiny_bert, toy_data, tmp_path, interrupt_at):
    over = {"train.epochs": 3, "train.grad_accum_steps": 2, "train.eval_every_steps": 4}
    full = train(toy_config(tiny_bert, toy_data, tmp_path / "full", **over))
    cfg = toy_config(tiny_bert, toy_data, tmp_path / "cut", **over)
    with pytest.raises(TrainingInterrupted):
        train(cfg, callbacks=[_InterruptAt(interrupt_at)])
    assert (tmp_path / "cut" / ".incomplete").exists()
    state = json.loads((tmp_path / "cut/checkpoints/last/state.json").read_text())
    assert state["step"] == interrupt_at
    resumed = train(cfg, resume=True)
    a = load_file(tmp_path / "full/model/model.safetensors")
    b = load_file(tmp_path / "cut/model/model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed.metrics["test"] == full.metrics["test"]
    steps = [json.loads(x)["step"] for x in (tmp_path / "cut/log.jsonl").read_text().splitlines()]
    full_steps = [
        json.loads(x)["step"] for x in (tmp_path / "full/log.jsonl").read_text().splitlines()
    ]
    assert steps == full_steps  # no duplicated or lost log lines


def test_dense_and_lazy_embedding_updates_both_learn(tiny_bert, toy_data, tmp_path):
    dense = train(
        toy_config(tiny_bert, toy_data, tmp_path / "dense", **{"train.embedding_update": "dense"})
    )
    assert dense.metrics["test"]["accuracy"] >= 0.9


def test_early_stopping_and_best_restored(tiny_bert, toy_data, tmp_path):
    cfg = toy_config(
        tiny_bert,
        toy_data,
        tmp_path / "es",
        **{
            "train.epochs": 30,
            "train.eval_every_steps": 5,
            "train.early_stopping_patience": 2,
            "train.metric_for_best": "loss",
        },
    )
    run = train(cfg)
    steps = run.metrics["train"]["steps"]
    assert steps < 30 * 15  # stopped early
    best = run.metrics["train"]["best_metric"]["loss"]
    # best weights restored: the same fp32 weights, evaluated again (only summation order differs)
    assert run.metrics["validation"]["loss"] == pytest.approx(best, rel=1e-5)


def test_multi_label_with_separator(tiny_bert, tmp_path):
    rows = []
    for r in toy_rows(240, seed=5):
        hotel = any(w in r["text"].split() for w in ("food", "staff", "room", "service"))
        extra = "|hotel" if hotel else ""
        rows.append({"text": r["text"], "tags": r["label"] + extra})
    data = {
        "train": write_csv(tmp_path / "tr.csv", rows[:200]),
        "validation": write_csv(tmp_path / "va.csv", rows[200:]),
        "test": write_csv(tmp_path / "te.csv", rows[200:]),
    }
    cfg = toy_config(
        tiny_bert,
        data,
        tmp_path / "ml",
        **{"data.label_column": "tags", "data.label_separator": "|", "train.epochs": 20},
    )
    run = train(cfg)
    m = run.metrics["test"]
    assert m["subset_accuracy"] == m["accuracy"] and "confusion_matrix" not in m
    assert m["micro_f1"] >= 0.8
    assert set(m["per_class"]) == {"hotel", "neg", "pos"}
    pred = run.predict(["the food was excellent"])[0]
    assert "pos" in pred["labels"] and set(pred["scores"]) == {"hotel", "neg", "pos"}


def test_sentence_pairs_and_class_weights(tiny_bert, tmp_path):
    rows = []
    for i, r in enumerate(toy_rows(240, seed=9)):
        # the label is whether the two halves share polarity
        other = toy_rows(1, seed=1000 + i)[0] if i % 3 else r
        rows.append(
            {
                "a": r["text"],
                "b": other["text"],
                "label": "same" if other["label"] == r["label"] else "diff",
            }
        )
    data = {
        "train": write_csv(tmp_path / "tr.csv", rows[:200]),
        "validation": write_csv(tmp_path / "va.csv", rows[200:]),
        "test": write_csv(tmp_path / "te.csv", rows[200:]),
    }
    cfg = toy_config(
        tiny_bert,
        data,
        tmp_path / "pair",
        **{
            "data.text_column": "a",
            "data.text_pair_column": "b",
            "train.class_weights": "balanced",
            "train.epochs": 2,
            "train.max_seq_len": 48,
        },
    )
    run = train(cfg)
    assert run.task.pair and run.task.class_weights is None  # weights are a training-time choice
    assert run.metrics["test"]["n"] == 40
    assert len(run.predict(["good food"], ["bad room"])) == 1


def test_validation_split_is_stratified_and_seeded(tiny_bert, toy_data, tmp_path):
    cfg = toy_config(
        tiny_bert,
        toy_data,
        tmp_path / "split",
        **{"data.validation": None, "train.epochs": 1, "data.val_fraction": 0.25},
    )
    run = train(cfg)
    d = run.metrics["data"]
    assert d["n_validation"] == 60 and d["n_train"] == 180
    assert run.metrics["validation"]["per_class"]["pos"]["support"] == 30
