"""Keep learning: feedback store durability, drift tests, head extension, update gate, dry run."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from textloop.artifacts.feedback import FeedbackStore
from textloop.artifacts.registry import Registry
from textloop.cli.main import main
from textloop.config import load_config
from textloop.continual.config import load_update_config
from textloop.continual.drift import (
    Window,
    confidence_shift_test,
    drift_report,
    label_shift_test,
    mmd_permutation_test,
)
from textloop.continual.gate import decide
from textloop.continual.replay import balanced_sample, load_frozen
from textloop.continual.retrain import extend_head
from textloop.continual.update import update
from textloop.errors import ConfigError, DataError
from textloop.runs import load_registered
from textloop.training.run import train

from .conftest import FILLER, NOUNS, REPO, toy_rows, write_csv

NEUTRAL = ["okay", "average", "mediocre", "so-so"]


def neutral_rows(n: int, seed: int) -> list[dict[str, str]]:
    """A new class for class-incremental updates: a neutral opinion word."""
    rng = random.Random(seed)
    return [
        {
            "text": " ".join(rng.choice(FILLER) for _ in range(rng.randint(2, 10)))
            + f" {rng.choice(NOUNS)} {rng.choice(NEUTRAL)}",
            "label": "neutral",
        }
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def prod(tiny_bert, toy_data, tmp_path_factory):
    """A registry with a tiny production model trained on the toy pos/neg task."""
    root = tmp_path_factory.mktemp("continual")
    cfg = load_config(
        None,
        extra={
            "model": str(tiny_bert),
            "output": str(root / "run"),
            "data.train": str(toy_data["train"]),
            "data.validation": str(toy_data["validation"]),
            "data.test": str(toy_data["test"]),
            "train.epochs": 4,
            "train.lr": 3e-3,
            "train.batch_size": 16,
            "train.max_seq_len": 32,
            "train.log_every_steps": 50,
        },
    )
    train(cfg)
    return root


def fresh_registry(prod: Path, tmp_path: Path) -> Path:
    reg = Registry(tmp_path / "registry")
    reg.add(prod / "run", "reviews")
    reg.promote("reviews", 1, reason="first")
    return tmp_path / "registry"


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


UPDATE_SETTINGS = ["epochs=4", "lr=3e-3", "batch_size=16", "replay.replay_size=120"]


# ---- store ---------------------------------------------------------------------------------
def test_store_survives_sigkill_with_every_acknowledged_feedback(tmp_path):
    db = tmp_path / "feedback.sqlite"
    child = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(REPO / "src")!r})
        from textloop.artifacts.feedback import FeedbackStore
        store = FeedbackStore({str(db)!r})
        i = 0
        while True:
            fid = store.add_feedback("m", "pos" if i % 2 else "neg", text=f"text number {{i}}")
            print(f"ack {{fid}} {{i}}", flush=True)
            i += 1
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    acked = []
    assert proc.stdout is not None
    for line in proc.stdout:
        _, fid, i = line.split()
        acked.append((int(fid), int(i)))
        if len(acked) == 30:
            os.kill(proc.pid, signal.SIGKILL)  # mid-write: the child is inserting the next row
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    rows = {r["id"]: r for r in FeedbackStore(db).feedback("m")}
    for fid, i in acked:
        assert rows[fid]["text"] == f"text number {i}"
    assert len(rows) >= len(acked)
    with __import__("sqlite3").connect(db) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_store_ties_feedback_to_predictions_and_exports(tmp_path):
    store = FeedbackStore(tmp_path, keep_text=True)
    ids = store.log_predictions(
        "m", 3, ["great food", "awful room"], [{"label": "pos", "score": 0.9}] * 2
    )
    store.flush()
    assert store.get_prediction(ids[0]).text == "great food"
    assert store.add_feedback("m", "pos", prediction_id=ids[0]) >= 1  # text from the log
    store.add_feedback("m", "neg", text="awful room", prediction_id=ids[1])
    store.add_feedback("m", "refund_request", text="give my money back")
    with pytest.raises(DataError, match="unknown prediction_id"):
        store.add_feedback("m", "pos", text="x", prediction_id="nope")
    with pytest.raises(DataError, match="text differs"):
        store.add_feedback("m", "pos", text="another text", prediction_id=ids[0])
    fb = store.feedback("m")
    assert [f["predicted_label"] for f in fb] == ["pos", "pos", None]
    n = store.export_feedback("m", tmp_path / "out" / "fb.jsonl")
    rows = [json.loads(x) for x in (tmp_path / "out" / "fb.jsonl").read_text().splitlines()]
    assert n == 3 and rows[2] == {"text": "give my money back", "label": "refund_request"}
    hashed = FeedbackStore(tmp_path / "other.sqlite")  # texts not kept: only their hash
    pid = hashed.log_predictions("m", 1, ["secret"], [{"label": "pos", "score": 0.5}], wait=True)
    assert hashed.get_prediction(pid[0]).text is None
    with pytest.raises(DataError, match="no text"):
        hashed.add_feedback("m", "pos", prediction_id=pid[0])


# ---- drift statistics ----------------------------------------------------------------------
def test_mmd_detects_shift_and_keeps_false_alarms_low():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(80, 8)), rng.normal(size=(80, 8))
    y[:, 0] += 1.0
    assert mmd_permutation_test(x, y, 200)["p_value"] < 0.01
    pool = rng.normal(size=(2000, 8))
    alarms = 0
    for rep in range(40):
        idx = rng.permutation(len(pool))
        res = mmd_permutation_test(pool[idx[:60]], pool[idx[60:120]], 100, seed=rep)
        alarms += res["p_value"] < 0.05
    assert alarms / 40 <= 0.15  # 5% expected; 40 windows leave room for chance


def test_label_and_confidence_tests_and_verdict():
    ref = ["a"] * 50 + ["b"] * 50
    assert label_shift_test(ref, ["a"] * 48 + ["b"] * 52)["p_value"] > 0.5
    shifted = label_shift_test(ref, ["a"] * 90 + ["b"] * 10)
    assert shifted["p_value"] < 0.001 and shifted["cramers_v"] > 0.4
    rng = np.random.default_rng(1)
    low = confidence_shift_test(rng.uniform(0.8, 1, 200), rng.uniform(0.4, 0.9, 200))
    assert low["p_value"] < 0.001
    report = drift_report(
        Window(ref, rng.uniform(0.8, 1, 100), texts=["the food"] * 100),
        Window(
            ["a"] * 90 + ["b"] * 10,
            rng.uniform(0.8, 1, 100),
            texts=["le repas"] * 100,
            feedback_labels=["a", "refund"],
        ),
        ["a", "b"],
    )
    v = report["verdict"]
    assert v["drift"] and v["fired"] == ["prediction"] and v["alpha_per_test"] == 0.025
    assert report["tests"]["input"]["skipped"]
    assert report["rates"]["oov_rate"] == 1.0 and report["rates"]["unseen_labels"] == ["refund"]


# ---- head extension, gate ------------------------------------------------------------------
def test_class_incremental_head_keeps_old_logits_exactly(prod):
    from textloop.runs import load_run

    run = load_run(prod / "run")
    texts = ["the food good", "room awful", "a very nice view"]
    batch = run.task.collate(run.task.encode(texts, None), [0, 1, 2])
    before = run.model(**batch).logits
    old_w, old_b = (
        run.model.classifier.weight.detach().clone(),
        run.model.classifier.bias.detach().clone(),
    )
    extended = extend_head(run.model, ["neg", "pos"], ["neutral", "zz"])
    after = extended(**batch).logits
    assert after.shape == (3, 4)
    head = extended.classifier
    assert torch.equal(head.weight[:2], old_w) and torch.equal(head.bias[:2], old_b)
    # the same rows in a wider matrix product: equal up to summation order
    torch.testing.assert_close(after[:, :2], before, rtol=0, atol=1e-6)
    assert extended.config.id2label == {0: "neg", 1: "pos", 2: "neutral", 3: "zz"}


def test_gate_rules():
    reg = {"n": 100, "accuracy": 0.90, "per_class": {"a": {"recall": 0.9, "support": 50}}}
    new = {"n": 20, "accuracy": 0.5, "per_class": {}}
    ok = decide(reg, {**reg, "accuracy": 0.89}, new, {**new, "accuracy": 0.8}, 0.02, 0.05, 10, 0.0)
    assert ok.accepted and not ok.reasons
    worse = {"n": 100, "accuracy": 0.85, "per_class": {"a": {"recall": 0.7, "support": 50}}}
    bad = decide(reg, worse, new, new, 0.02, 0.05, 10, 0.0)
    assert not bad.accepted
    assert [r.split(":")[0] for r in bad.reasons] == [
        "regression accuracy",
        "regression recall of 'a'",
        "new-data accuracy",
    ]


def test_update_config_errors_list_every_problem():
    with pytest.raises(ConfigError) as err:
        load_update_config(None, ["strategy=magic", "gate.max_drop=0.1", "epochs=0"])
    msg = str(err.value)
    assert "3 problems" in msg and "strategy" in msg and "did you mean" in msg and "epochs" in msg


# ---- update end to end ---------------------------------------------------------------------
def test_dry_run_changes_nothing(prod, tmp_path):
    root = fresh_registry(prod, tmp_path)
    new = write_csv(tmp_path / "new.csv", toy_rows(40, seed=9) + neutral_rows(40, 9))
    before = tree_digest(root)
    code = main(
        [
            "update",
            "--registry",
            str(root),
            "--name",
            "reviews",
            "--new-data",
            str(new),
            "--dry-run",
            "--json",
        ]
    )
    assert code == 0
    assert tree_digest(root) == before
    assert not (root / "continual").exists()
    result = update(root, "reviews", str(new), load_update_config(None, UPDATE_SETTINGS), True)
    assert result.plan["new_labels"] == ["neutral"] and result.plan["n_new_holdout"] == 16
    assert result.before["new"]["per_class"]["neutral"]["recall"] == 0.0
    assert tree_digest(root) == before


def test_update_accepts_class_incremental_replay_and_promotes(prod, tmp_path):
    root = fresh_registry(prod, tmp_path)
    new = write_csv(tmp_path / "new.csv", toy_rows(40, seed=5) + neutral_rows(60, 5))
    settings = [*UPDATE_SETTINGS, "track=tensorboard"]  # tracked like a training run
    result = update(root, "reviews", str(new), load_update_config(None, settings))
    assert result.decision is not None and result.decision.accepted, result.decision
    if importlib.util.find_spec("tensorboardX"):
        events = list((root / "continual" / "reviews" / "tensorboard").glob("*/events.*"))
        assert len(events) == 1 and b"train/loss" in events[0].read_bytes()
    assert result.version == 2 and result.stage == "production"
    assert result.after["new"]["accuracy"] > result.before["new"]["accuracy"]
    reg = Registry(root)
    _, run = load_registered(reg, "reviews")
    assert run.task.labels == ["neg", "pos", "neutral"]
    assert run.metrics["update"]["decision"]["accepted"]
    report = json.loads((result.report_dir / "report.json").read_text())
    assert report["forgetting"]["accuracy_drop"] <= 0.02
    assert (result.report_dir / "report.md").read_text().startswith("# Update of reviews")
    frozen = load_frozen(root, "reviews", 2)
    assert frozen is not None and {r["label"] for r in frozen.replay} == {"neg", "pos", "neutral"}


def test_update_rejects_and_keeps_the_candidate_with_the_reason(prod, tmp_path, capsys):
    root = fresh_registry(prod, tmp_path)
    new = write_csv(tmp_path / "new.csv", toy_rows(40, seed=6))
    code = main(
        [
            "update",
            "--registry",
            str(root),
            "--name",
            "reviews",
            "--new-data",
            str(new),
            "--strategy",
            "naive",
            "--set",
            "epochs=1",
            "--set",
            "gate.min_new_gain=0.5",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "rejected" in out and "new-data accuracy" in out
    reg = Registry(root)
    assert reg.production_version("reviews") == 1
    v2 = reg.get("reviews", 2)
    assert v2.stage == "archived" and not v2.metrics["update"]["decision"]["accepted"]
    last = reg.audit_log("reviews")[-1]
    assert last["to_stage"] == "archived" and "rejected" in last["reason"]


def test_drift_cli_on_logged_traffic(prod, tmp_path, capsys):
    root = fresh_registry(prod, tmp_path)
    store = FeedbackStore(root, keep_text=True)
    texts = [r["text"] for r in toy_rows(60, seed=11)]
    store.log_predictions("reviews", 1, texts, [{"label": "pos", "score": 0.9}] * 60, wait=True)
    store.add_feedback("reviews", "refund_request", text="money back please")
    code = main(
        [
            "drift",
            "--registry",
            str(root),
            "--name",
            "reviews",
            "--permutations",
            "100",
            "--output",
            str(tmp_path / "drift"),
            "--json",
        ]
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["tests"]) == {"input", "prediction", "confidence"}
    assert report["tests"]["input"]["p_value"] > 0.01  # same toy distribution as the reference
    assert report["rates"]["unseen_labels"] == ["refund_request"]
    assert (tmp_path / "drift" / "drift.png").stat().st_size > 1000


def test_balanced_sample_keeps_rare_classes():
    rows = [{"text": str(i), "label": "a"} for i in range(100)] + [
        {"text": "b", "label": "b"},
        {"text": "c", "label": "c"},
    ]
    sample = balanced_sample(rows, 10, 0)
    counts = {lab: sum(r["label"] == lab for r in sample) for lab in "abc"}
    assert counts == {"a": 8, "b": 1, "c": 1}


# ---- server --------------------------------------------------------------------------------
def test_server_logs_predictions_and_takes_feedback_with_api_key(prod, tmp_path):
    from fastapi.testclient import TestClient

    from textloop.serving.app import create_app
    from textloop.serving.sources import RegistrySource, ServeOptions

    root = fresh_registry(prod, tmp_path)
    key = "k" * 24
    store = FeedbackStore(root, keep_text=True)
    app = create_app(
        RegistrySource(Registry(root), "reviews"),
        ServeOptions(poll_seconds=0, api_key=key),
        store=store,
    )
    with TestClient(app) as c:
        preds = c.post("/v1/predict", json={"inputs": ["food great", "room awful"]}).json()
        pid = preds["predictions"][0]["prediction_id"]
        body = {"label": "neg", "prediction_id": pid}
        assert c.post("/v1/feedback", json=body).status_code == 401
        assert (
            c.post("/v1/feedback", json=body, headers={"x-api-key": "wrong" * 5}).status_code == 401
        )
        ok = c.post("/v1/feedback", json=body, headers={"x-api-key": key})
        assert ok.status_code == 201, ok.text
        bad = c.post(
            "/v1/feedback", json={"label": "x", "prediction_id": "nope"}, headers={"x-api-key": key}
        )
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_feedback"
        assert "/v1/feedback" in c.get("/metrics").text
    logged = store.predictions("reviews")
    assert [p.text for p in logged] == ["food great", "room awful"]
    assert logged[0].version == 1 and 0.0 < logged[0].confidence <= 1.0
    fb = store.feedback("reviews")
    assert len(fb) == 1 and fb[0]["text"] == "food great" and fb[0]["label"] == "neg"


def test_feedback_labels_and_texts_are_bounded(prod, tmp_path):
    import sqlite3

    from fastapi.testclient import TestClient

    from textloop.serving.app import create_app
    from textloop.serving.sources import RegistrySource, ServeOptions

    root = fresh_registry(prod, tmp_path)
    key = "k" * 24
    store = FeedbackStore(root, keep_text=True)
    opts = ServeOptions(poll_seconds=0, api_key=key, max_chars=500)
    app = create_app(RegistrySource(Registry(root), "reviews"), opts, store=store)
    with TestClient(app) as c:
        for body, status, code in [
            ({"label": "x" * 100_000, "text": "fine"}, 422, "invalid_label"),
            ({"label": "x" * 101, "text": "fine"}, 422, "invalid_label"),
            ({"label": "<img src=x onerror=alert(1)>", "text": "fine"}, 422, "invalid_label"),
            ({"label": "pos\nneg", "text": "fine"}, 422, "invalid_label"),
            ({"label": "po\u200bs", "text": "fine"}, 422, "invalid_label"),
            ({"label": "\u0000", "text": "fine"}, 422, "invalid_label"),
            ({"label": "pos", "text": "a" * 501}, 413, "text_too_long"),  # the server's max_chars
            ({"label": "pos", "text": "a" * 900_000}, 413, "text_too_long"),
            ({"label": "pos", "text": "\u0000\u200b "}, 422, "empty_text"),
            ({"label": "pos", "text": "fine", "prediction_id": "x" * 101}, 422, "invalid_request"),
        ]:
            r = c.post("/v1/feedback", json=body, headers={"x-api-key": key})
            assert (r.status_code, r.json()["error"]["code"]) == (status, code), r.text[:300]
        new = c.post(
            "/v1/feedback",
            json={"label": "refund_request", "text": "where is my money"},
            headers={"x-api-key": key},
        )  # a label the model does not know: kept for class-incremental updates
        assert new.status_code == 201 and new.json()["new_label"] is True
        known = c.post(
            "/v1/feedback", json={"label": " pos ", "text": "great"}, headers={"x-api-key": key}
        )
        assert known.status_code == 201 and known.json()["new_label"] is False
    assert [r["label"] for r in store.feedback("reviews")] == ["refund_request", "pos"]
    with pytest.raises(DataError, match="characters a class name cannot have"):
        store.add_feedback("reviews", "<b>bold</b>", "text")
    with sqlite3.connect(store.path) as db:  # a row an older version let in: not exported
        db.execute(
            "INSERT INTO feedback (at, model, text, text_hash, label) VALUES (1, 'reviews', "
            "'old text', 'h', '<script>x</script>')"
        )
    assert store.export_feedback("reviews", tmp_path / "fb.jsonl") == 2
    exported = [json.loads(x) for x in (tmp_path / "fb.jsonl").read_text().splitlines()]
    assert [e["label"] for e in exported] == ["refund_request", "pos"]


def test_ewc_and_lwf_stay_closer_to_the_old_model_than_naive(prod):
    from textloop.continual.candidate import build_candidate
    from textloop.runs import load_run

    run = load_run(prod / "run")
    new, old = neutral_rows(48, 3), toy_rows(64, seed=4)
    start = {n: p.detach().clone() for n, p in run.model.named_parameters()}
    probe = run.task.encode([r["text"] for r in old], None)
    old_probs = torch.softmax(run.task.logits_for(run.model, probe, 64), -1)
    moved, kl = {}, {}
    for strategy in ("naive", "ewc", "lwf"):
        cfg = load_update_config(
            None,
            [f"strategy={strategy}", "epochs=2", "lr=3e-3", "ewc_lambda=1000", "lwf_lambda=5"],
        )
        cand, task, info = build_candidate(run.model, run.task, new, old, cfg)
        assert task.labels == ["neg", "pos", "neutral"] and info["new_labels"] == ["neutral"]
        moved[strategy] = sum(
            float(((p.detach() - start[n]) ** 2).sum())
            for n, p in cand.named_parameters()
            if p.shape == start[n].shape
        )
        logits = task.logits_for(cand, probe, 64)[:, :2]
        kl[strategy] = float(
            torch.nn.functional.kl_div(
                torch.log_softmax(logits, -1), old_probs, reduction="batchmean"
            )
        )
    for n, p in run.model.named_parameters():  # the production model is never touched
        assert torch.equal(p, start[n]), n
    assert moved["ewc"] < 0.75 * moved["naive"], moved  # the penalty holds weights back
    assert kl["lwf"] < kl["naive"], kl  # distillation keeps the old labels' outputs closer


def test_ewc_leaves_the_new_labels_free_to_learn(prod):
    """The Fisher anchors what earlier data was learned with; a new label's head row did not
    exist then. Anchored too (the old behaviour), a strong penalty kept the new label's logit
    at its start and EWC learned none of a new class."""
    import copy

    from textloop.continual.candidate import build_candidate
    from textloop.continual.regularisers import EWCObjective
    from textloop.continual.retrain import encode_rows, extend_head, head_rows
    from textloop.runs import load_run

    run = load_run(prod / "run")
    new, old = neutral_rows(48, 3), toy_rows(64, seed=4)
    cfg = load_update_config(None, ["strategy=ewc", "epochs=2", "lr=3e-3", "ewc_lambda=10000"])
    cand, task, _ = build_candidate(run.model, run.task, new, old, cfg)
    probe = neutral_rows(32, 9)
    logits = task.logits_for(cand, task.encode([r["text"] for r in probe], None), 64)
    assert float((logits.argmax(-1) == 2).float().mean()) >= 0.75
    # the new label's head row moves freely (anchored: 0.008 against naive's 0.12; free: 0.057)
    start = extend_head(copy.deepcopy(run.model), ["neg", "pos"], ["neutral"], cfg.seed)
    naive_cfg = cfg.model_copy(update={"strategy": "naive"})
    naive, _, _ = build_candidate(run.model, run.task, new, old, naive_cfg)
    names = head_rows(start, 3, 2)
    moved = {
        key: sum(
            float((dict(model.named_parameters())[n][2:] - p[2:]).detach().norm())
            for n, p in start.named_parameters()
            if n in names
        )
        for key, model in (("ewc", cand), ("naive", naive))
    }
    assert moved["ewc"] > 0.25 * moved["naive"], moved

    ext = extend_head(copy.deepcopy(run.model), ["neg", "pos"], ["neutral"])
    rows = head_rows(ext, 3, 2)
    assert rows and all(first == 2 for first in rows.values())
    ewc = EWCObjective.build(task, ext, encode_rows(task, old), 1.0, new_rows=rows)
    for name in rows:
        assert float(ewc.fisher[name][2:].abs().sum()) == 0.0
        assert float(ewc.fisher[name][:2].abs().sum()) > 0.0
    mean = sum(float(f.sum()) for f in ewc.fisher.values()) / sum(
        f.numel() for f in ewc.fisher.values()
    )
    assert mean == pytest.approx(1.0, rel=1e-4)


def test_update_reader_can_drop_unlabelled_feedback(tmp_path):
    from textloop.continual.replay import read_labelled
    from textloop.errors import DataError

    path = tmp_path / "feedback.jsonl"
    rows = [{"text": "a good match", "label": "sport"}, {"text": "no label yet", "label": None}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(DataError, match=r"feedback\.jsonl"):
        read_labelled(str(path), "text", "label")
    assert read_labelled(str(path), "text", "label", drop_invalid=True) == [rows[0]]
