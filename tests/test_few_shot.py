"""The few-shot recipe: pair sampling, the auto choice and its reason, the override, a run that
learns, and a run folder every other command reads like any classification run."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoTokenizer

import textloop
from textloop.cli.main import main
from textloop.continual.candidate import build_candidate
from textloop.continual.config import load_update_config
from textloop.continual.monitor import embed_texts
from textloop.continual.retrain import write_run_dir
from textloop.continual.selection import Candidate, score_texts, select
from textloop.errors import ConfigError, DataError
from textloop.serving.embeddings import mean_pooled
from textloop.tasks.base import eval_batches
from textloop.tasks.classification.pooled import MeanPooledClassifier
from textloop.tasks.classification.task import ClassificationTask
from textloop.training.few_shot import balanced_pairs, class_batches, fit_head
from textloop.training.recipe import (
    FEW_SHOT_MAX_PER_CLASS,
    choose_recipe,
    few_shot_settings,
    few_shot_steps,
)

from .conftest import toy_rows, write_csv


def test_pairs_are_balanced_labelled_right_and_seeded() -> None:
    targets = [0, 0, 0, 1, 1, 2, 2, 2, 2, 3]  # class 3 has a single example
    pairs = balanced_pairs(targets, 400, seed=7)
    assert len(pairs) == 400 and pairs == balanced_pairs(targets, 400, seed=7)
    assert pairs != balanced_pairs(targets, 400, seed=8)
    assert Counter(s for _, _, s in pairs) == {1.0: 200, 0.0: 200}
    for i, j, s in pairs:
        assert i != j and (targets[i] == targets[j]) == (s == 1.0)
    # the single example of class 3 is in negative pairs only, and it is in some
    assert all(s == 0.0 for i, j, s in pairs if 9 in (i, j))
    assert any(9 in (i, j) for i, j, _ in pairs)
    # every example with a classmate anchors a positive pair about equally often
    anchors = Counter(i for i, _, s in pairs if s == 1.0)
    assert set(anchors) == set(range(9)) and max(anchors.values()) - min(anchors.values()) <= 1


def test_pairs_need_a_class_with_two_examples() -> None:
    with pytest.raises(DataError, match="at least two examples of some class"):
        balanced_pairs([0, 1, 2], 10, seed=0)


def test_class_batches_hold_positives_and_negatives() -> None:
    targets = [c for c in range(10) for _ in range(8)]
    batches = class_batches(targets, 20, per_class=4, classes_per_batch=8, seed=0)
    assert batches == class_batches(targets, 20, per_class=4, classes_per_batch=8, seed=0)
    for batch in batches:
        labels = Counter(targets[i] for i in batch)
        assert len(batch) == 32 and len(labels) == 8 and set(labels.values()) == {4}
    seen = Counter(i for b in batches for i in b)  # 640 draws over 80 examples: 8 each
    assert set(seen.values()) == {8}


def test_auto_choice_by_examples_per_class() -> None:
    assert choose_recipe("auto", 8.0, True)[0] == "few-shot"
    assert choose_recipe("auto", FEW_SHOT_MAX_PER_CLASS, True)[0] == "few-shot"
    assert choose_recipe("auto", FEW_SHOT_MAX_PER_CLASS + 1, True)[0] == "default"
    assert choose_recipe("auto", 4.0, False)[0] == "default"  # multi-label, pairs, other tasks
    assert choose_recipe("auto", 1.0, True, largest_class=1)[0] == "default"  # no pair
    assert choose_recipe("default", 4.0, True) == ("default", None)  # the user's choice stands


def test_a_pass_reads_each_example_20_times_in_batch_and_40_pairs_sampled() -> None:
    # in-batch: batches of 2 x 16 texts, 20 reads of each of 56 examples -> 1120 texts, 35 steps
    assert few_shot_steps(56, 16, "in-batch") == 35
    assert few_shot_steps(56, 16, "pairs") == 140  # SetFit's 40 pairs per example, 16 a step
    # both capped at 6000 pairs' / texts' worth (CLINC150 at 8 per class: 1200 examples)
    assert few_shot_steps(1200, 16, "in-batch") == 188 and few_shot_steps(1200, 16, "pairs") == 375
    why = few_shot_settings(dict.fromkeys(("batch_size", "epochs")), 56).reasons["epochs"]
    assert "35 batches of 32 texts, each example read 20 times" in why


@pytest.fixture(scope="module")
def few_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("few")
    return {
        "train": write_csv(d / "train.csv", toy_rows(24, seed=1)),  # 12 per class: auto few-shot
        "validation": write_csv(d / "val.csv", toy_rows(40, seed=2)),
        "test": write_csv(d / "test.csv", toy_rows(200, seed=3)),
    }


def _config(tiny_bert: Path, data: dict[str, Path], out: Path, *extra: str) -> textloop.RunConfig:
    return textloop.load_config(
        None,
        [
            "task=classification",
            f"model={tiny_bert}",
            f"data.train={data['train']}",
            f"data.validation={data['validation']}",
            f"data.test={data['test']}",
            f"output={out}",
            "train.max_seq_len=32",
            "train.precision=fp32",  # the accuracy bound below is for fp32 kernels
            "train.threads=1",
            *extra,
        ],
    )


@pytest.mark.integration
def test_auto_few_shot_learns_and_round_trips_through_the_cli(
    tiny_bert: Path, few_data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "fs"
    # a random 2-layer BERT needs a far higher rate than a pretrained encoder's 2e-5
    run = textloop.train(_config(tiny_bert, few_data, out, "train.lr=5e-3"))

    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["train"]["recipe"] == "few-shot" and saved["train"]["batch_size"] == 16
    assert saved["train"]["class_weights"] == "balanced"  # the head's classes weigh alike
    why = run.metrics["train"]["recipe"]["reasons"]["recipe"]
    assert "12.0 training examples per class" in why
    report = (out / "report.md").read_text()
    assert "`train.recipe: few-shot`" in report and "examples per class" in report
    assert json.loads((out / "labels.json").read_text())["pooling"] == "mean"

    # chance is 0.5; 200 test rows put 0.62 over 3 standard deviations above it
    assert run.metrics["test"]["accuracy"] >= 0.62

    texts = [r["text"] for r in toy_rows(30, seed=9)]
    in_memory = run.predict(texts, top_k=2)
    assert main(["predict", str(out), *texts[:1], "--top-k", "2"]) == 0
    line = json.loads(capsys.readouterr().out.strip())
    assert line["label"] == in_memory[0]["label"]
    assert line["top_k"][0]["score"] == pytest.approx(in_memory[0]["top_k"][0]["score"], abs=1e-5)

    reloaded = textloop.load_run(out).predict(texts, top_k=2)
    assert [p["label"] for p in reloaded] == [p["label"] for p in in_memory]

    # what reads a classifier's hidden states works on the mean-pooled one too: select's
    # diverse strategy, drift monitoring and /v1/embeddings pool the last layer
    _, pooled = score_texts(run, texts)
    assert pooled is not None and pooled.shape == (30, run.model.config.hidden_size)
    cands = [Candidate(str(i), t, "pool") for i, t in enumerate(texts)]
    assert len(select(run, cands, k=5, strategy="diverse", seed=0).rows) == 5
    vectors = mean_pooled(run.model, run.task.tokenizer, texts[:3])
    assert [round(sum(v * v for v in vec), 4) for vec in vectors] == [1.0, 1.0, 1.0]
    seen = embed_texts(run, texts[:4])
    assert seen["embeddings"].shape == (4, run.model.config.hidden_size)
    assert main(["evaluate", str(out), "--data", str(few_data["test"]), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["accuracy"] == pytest.approx(run.metrics["test"]["accuracy"])

    # an update's candidate (a new label appended) stays mean-pooled and loads back the same
    new = [{"text": "the room was okay", "label": "meh"}, {"text": "food okay", "label": "meh"}]
    update_cfg = load_update_config(None, ["epochs=1", "threads=1"])
    cand, ctask, _ = build_candidate(run.model, run.task, new, toy_rows(8, seed=4), update_cfg)
    write_run_dir(tmp_path / "cand", cand, ctask.tokenizer, ctask, "task: classification\n", {})
    back = textloop.load_run(tmp_path / "cand")
    assert back.task.state()["pooling"] == "mean" and back.task.state()["labels"][-1] == "meh"
    expected = [p["label"] for p in ctask.predict(cand, texts)]
    assert [p["label"] for p in back.predict(texts)] == expected


@pytest.mark.integration
def test_the_head_weighs_classes_alike_only_where_their_counts_differ(tiny_bert: Path) -> None:
    labels = ["neg", "pos"]
    task = ClassificationTask(
        tokenizer=AutoTokenizer.from_pretrained(tiny_bert), labels=labels, max_seq_len=32
    )
    task.pooling = "mean"
    model = MeanPooledClassifier.from_body(tiny_bert, labels).eval()
    rows = toy_rows(48, seed=5)

    def head(subset: list[dict[str, str]], weights: str) -> tuple[object, object]:
        data = task.encode([r["text"] for r in subset], None)
        data.targets = [labels.index(r["label"]) for r in subset]
        fit_head(model, task, data, 0, weights)
        return model.classifier.weight.detach().clone(), model.classifier.bias.detach().clone()

    even = rows[:24]  # 12 a class: inverse-frequency weights are all 1, the same head
    for got, want in zip(head(even, "balanced"), head(even, "none")):
        assert torch.allclose(got, want, atol=1e-6)
    # 20 positive, 4 negative: balanced moves the boundary toward the majority class
    skewed = [r for r in rows if r["label"] == "pos"][:20] + [
        r for r in rows if r["label"] == "neg"
    ][:4]
    probe = task.encode([r["text"] for r in toy_rows(60, seed=6)], None)
    share = {}
    for weights in ("none", "balanced"):
        head(skewed, weights)
        with torch.no_grad():
            logits = torch.cat(
                [model(**inputs).logits for _, inputs, _ in eval_batches(task, model, probe, 16)]
            )
        share[weights] = float(logits.softmax(-1)[:, 0].mean())  # mean P(neg), the minority
    assert share["balanced"] > share["none"]


@pytest.mark.integration
def test_recipe_default_overrides_the_auto_choice(
    tiny_bert: Path, few_data: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "ft"
    cli = ["train", "--model", str(tiny_bert), "--train", str(few_data["train"])]
    cli += ["--validation", str(few_data["validation"]), "--output", str(out)]
    assert (
        main([*cli, "--recipe", "default", "--epochs", "1", "--max-seq-len", "32", "--quiet"]) == 0
    )
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["train"]["recipe"] == "default"
    recipe = json.loads((out / "metrics.json").read_text())["train"]["recipe"]
    assert "recipe" in recipe["user_set"] and "recipe" not in recipe["reasons"]
    assert json.loads((out / "labels.json").read_text())["pooling"] == "cls"


def test_few_shot_refuses_multi_label_and_unlearnable_data(
    tiny_bert: Path, few_data: dict[str, Path], tmp_path: Path
) -> None:
    multi = write_csv(
        tmp_path / "multi.csv", [{"text": "a b", "label": "x|y"}, {"text": "c", "label": "y"}]
    )
    cfg = _config(tiny_bert, {"train": multi, "validation": multi, "test": multi}, tmp_path / "m")
    cfg = cfg.model_copy(
        update={
            "data": cfg.data.model_copy(update={"multi_label": True, "label_separator": "|"}),
            "train": cfg.train.model_copy(update={"recipe": "few-shot"}),
        }
    )
    with pytest.raises(ConfigError, match="few-shot trains single-label"):
        textloop.train(cfg)
    singles = write_csv(
        tmp_path / "one.csv",
        [{"text": "good food", "label": "pos"}, {"text": "bad food", "label": "neg"}],
    )
    cfg = _config(
        tiny_bert, {**few_data, "train": singles}, tmp_path / "s", "train.recipe=few-shot"
    )
    with pytest.raises(DataError, match="at least two examples of some class"):
        textloop.train(cfg)
    assert not (tmp_path / "s").exists()  # refused before the run folder was made


@pytest.mark.integration
def test_a_time_budget_shortens_a_few_shot_run_and_keeps_its_best_checkpoint(
    tiny_bert: Path, few_data: dict[str, Path], tmp_path: Path
) -> None:
    # what `textloop tune` gives every trial; it was refused, so a study on few-shot-sized
    # data failed every trial
    # 20 passes: a plan far longer than the budget on any CPU, so the budget must act
    cfg = _config(
        tiny_bert,
        few_data,
        tmp_path / "b",
        "train.lr=5e-3",
        "train.time_budget=0.3",
        "train.epochs=20",
    )
    run = textloop.train(cfg)
    train = run.metrics["train"]
    saved = yaml.safe_load((tmp_path / "b" / "config.yaml").read_text())
    assert saved["train"]["recipe"] == "few-shot"
    budget = train["time_budget"]
    assert budget["fitted_steps"] is not None or budget["reached"]
    assert train["steps"] < budget["planned_steps"]
    assert 0 <= run.metrics["test"]["accuracy"] <= 1 and (tmp_path / "b" / "model").is_dir()
