"""Trust: attributions (completeness, word aggregation), bias probes, calibration, slices, audit."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from textloop.errors import ConfigError, DataError
from textloop.evaluation.faithfulness import deletion_test, remove_words
from textloop.evaluation.probes import GroupMatcher, ProbeFile, load_probes, match_case, run_probes
from textloop.evaluation.slices import build_slices, slice_metrics
from textloop.tasks.classification.temperature import (
    calibration_summary,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
)

from .conftest import REPO

# ---- calibration ------------------------------------------------------------------------------


def test_ece_hand_computed_equal_mass_bins():
    # two bins of two: {0.6, 0.6} with 1 of 2 right, {0.9, 0.9} with 2 of 2 right
    conf = np.array([0.9, 0.6, 0.9, 0.6])
    correct = np.array([True, True, True, False])
    assert expected_calibration_error(conf, correct, n_bins=2) == pytest.approx(
        0.5 * abs(0.5 - 0.6) + 0.5 * abs(1.0 - 0.9)
    )
    # three bins over six sorted confidences: (0.2, 0.3) (0.5, 0.7) (0.8, 0.95)
    conf = np.array([0.95, 0.2, 0.7, 0.3, 0.8, 0.5])
    correct = np.array([1, 0, 1, 1, 0, 0], dtype=bool)
    expected = (abs(0.5 - 0.25) + abs(0.5 - 0.6) + abs(0.5 - 0.875)) / 3
    assert expected_calibration_error(conf, correct, n_bins=3) == pytest.approx(expected)
    bins = reliability_bins(conf, correct.astype(float), 3)
    assert [b["n"] for b in bins] == [2, 2, 2]
    assert bins[0]["low"] == 0.2 and bins[2]["high"] == 0.95
    # perfectly calibrated and one bin per example: zero; always wrong at confidence 1: one
    assert expected_calibration_error(np.array([1.0, 1.0]), np.array([True, True])) == 0.0
    assert expected_calibration_error(np.array([1.0, 1.0]), np.array([False, False])) == 1.0
    # more bins than examples: one bin per example
    assert expected_calibration_error(np.array([0.7]), np.array([True]), 10) == pytest.approx(0.3)


def test_ece_multi_label_counts_each_label_decision():
    logits = torch.tensor([[2.0, -2.0]])  # p = 0.881, 0.119: both decisions confident at 0.881
    summary = calibration_summary(logits, torch.tensor([[1.0, 1.0]]), multi_label=True, n_bins=1)
    # one right (pos, 0.881) and one wrong (neg, 0.881): accuracy 0.5 in the single bin
    assert summary["ece"] == pytest.approx(abs(0.5 - 0.8808), abs=1e-4)


def test_temperature_scaling_recovers_overconfidence_and_lowers_ece():
    rng = np.random.default_rng(0)
    n, c = 2000, 4
    true_logits = torch.tensor(rng.normal(0, 1.5, size=(n, c)))
    targets = torch.multinomial(torch.softmax(true_logits, -1), 1).squeeze(1)
    overconfident = true_logits * 3.0  # the same ranking, three times too sharp
    t = fit_temperature(overconfident, targets, multi_label=False)
    assert t == pytest.approx(3.0, rel=0.1)
    before = calibration_summary(overconfident, targets, False)["ece"]
    after = calibration_summary(overconfident, targets, False, t)["ece"]
    assert after < before / 3


# ---- probes -------------------------------------------------------------------------------------


def test_probe_swap_keeps_case_boundaries_and_multi_token_terms():
    m = GroupMatcher(
        "gender",
        {
            "male": ["he", "him", "his", "New York man"],
            "female": ["she", "her", "her", "Hong Kong woman"],
        },
    )
    text = "He said HIS friend, a New  York man, saw the heat with him."
    ((variant, cfs),) = m.counterfactuals(text)
    assert variant == "male" and cfs == [
        ("female", "She said HER friend, a Hong Kong woman, saw the heat with her.")
    ]
    # "her" maps back to the first aligned male form
    assert m.counterfactuals("I met her.")[0][1] == [("male", "I met him.")]
    assert match_case("JOHN", "John", "Mary") == "MARY"
    assert match_case("john", "John", "Mary") == "mary"
    assert match_case("The", "the", "a") == "A"


def test_probe_swap_chinese_and_name_groups_one_variant_at_a_time():
    m = GroupMatcher("gender", {"male": ["他们", "他"], "female": ["她们", "她"]})
    assert m.counterfactuals("他们说他很好")[0][1] == [("female", "她们说她很好")]
    names = GroupMatcher("names", {n: [n] for n in ("Mary", "Wei", "John")})
    cases = dict(names.counterfactuals("Mary met Wei."))
    assert cases["Mary"] == [("John", "John met Wei.")]  # not "Wei met Wei."
    assert cases["Wei"] == [("John", "Mary met John.")]


def test_probe_file_validation_reports_every_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "groups:\n"
        "  g1: {variants: {a: [x, y], b: [z]}}\n"
        "  g2: {terms: [only]}\n"
        "templates: ['{nope} is here']\n"
    )
    with pytest.raises(ConfigError) as err:
        load_probes(bad)
    msg = str(err.value)
    assert "groups.g1" in msg and "same number of forms" in msg
    assert "groups.g2" in msg and "at least two" in msg


def test_shipped_probe_files_load():
    for name in ("identity_en", "identity_zh"):
        probes = load_probes(REPO / "configs" / "probes" / f"{name}.yaml")
        assert len(probes.groups) >= 4 and probes.templates


def test_run_probes_measures_flips_and_gaps():
    probes = ProbeFile.model_validate(
        {
            "groups": {
                "gender": {"variants": {"male": ["he"], "female": ["she"]}},
                "city": {"terms": ["Paris", "Lagos"]},
            },
            "templates": ["{gender} liked it"],
        }
    )

    def biased(texts):  # a "model" that dislikes "she" and ignores cities
        p_neg = np.array([0.8 if "she" in t.lower().split() else 0.3 for t in texts])
        return np.stack([p_neg, 1 - p_neg], axis=1)

    texts = ["he was fine", "She was fine", "we met in Paris", "no terms here"]
    report = run_probes(probes, texts, biased, ["neg", "pos"])
    g = report["gender"]
    assert g["n_cases"] == 3 and g["n_pairs"] == 3 and g["flip_rate"] == 1.0
    assert g["mean_gap"] == pytest.approx(0.5) and g["worst_gap"] == pytest.approx(0.5)
    assert g["sources"] == {"data": 2, "template": 1}
    assert g["by_variant"]["female"]["label_share"] == {"neg": 1.0}
    assert {f["text_b"] for f in g["flipped"]} >= {"she was fine", "He was fine"}
    c = report["city"]
    assert c["n_pairs"] == 1 and c["flip_rate"] == 0.0 and c["worst_gap"] == 0.0


# ---- slices, deletion ---------------------------------------------------------------------------


def test_slices_worst_first():
    texts = ["a b", "a b c d e f", "refund please", "x y z w", "refund now now now", "q"]
    rows = [{"cat": c} for c in ("toys", "toys", "books", "books", "books", "toys")]
    masks = build_slices(["column:cat", "regex:refund=refund", "length"], texts, rows)
    targets = np.array([0, 0, 1, 1, 1, 0])
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7], [0.9, 0.1]])
    rows_out = slice_metrics(masks, targets, probs)
    by_name = {r["slice"]: r for r in rows_out}
    assert by_name["cat=books"]["accuracy"] == pytest.approx(2 / 3)
    assert by_name["cat=toys"]["accuracy"] == 1.0
    assert by_name["refund (matches /refund/)"]["n"] == 2
    assert rows_out[0]["accuracy"] == min(r["accuracy"] for r in rows_out)
    with pytest.raises(DataError, match="column 'nope'"):
        build_slices(["column:nope"], texts, rows)
    with pytest.raises(ConfigError):
        build_slices(["bogus"], texts, rows)


def test_deletion_test_prefers_faithful_attributions():
    def model(texts):  # positive iff "good" is present
        p = np.array([0.9 if "good" in t.split() else 0.2 for t in texts])
        return np.stack([1 - p, p], axis=1)

    def expl(text):
        words, pos = [], 0
        for w in text.split():
            start = text.index(w, pos)
            pos = start + len(w)
            words.append(
                {"word": w, "start": start, "end": pos, "attribution": 1.0 if w == "good" else 0.01}
            )
        return {"text": text, "label": "pos", "words": words}

    texts = [f"the {n} was really good and the rest was okay" for n in ("food", "room", "view")]
    result = deletion_test([expl(t) for t in texts], model, ["neg", "pos"], ks=[1], seed=0)
    r = result["k"]["1"]
    assert r["top"]["flip_rate"] == 1.0 and r["top"]["mean_drop"] == pytest.approx(0.7)
    assert r["random"]["flip_rate"] < 1.0 and r["top_beats_random"] > 0.5
    assert remove_words("a b  c", [(2, 3)]) == "a c"


# ---- on a tiny trained model --------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy_run(tiny_bert, toy_data, tmp_path_factory):
    """The toy sentiment task trained on the tiny BERT, with temperature scaling."""
    from textloop.config import load_config
    from textloop.training.run import train

    extra = {
        "model": str(tiny_bert),
        "output": str(tmp_path_factory.mktemp("trust") / "run"),
        "data.train": str(toy_data["train"]),
        "data.validation": str(toy_data["validation"]),
        "data.test": str(toy_data["test"]),
        "train.epochs": 6,
        "train.lr": 3e-3,
        "train.batch_size": 16,
        "train.max_seq_len": 32,
        "train.temperature_scaling": True,
        # the attribution tests' step counts were set for the model of each epoch's best
        # checkpoint: pin the evaluation cadence the recipe would otherwise space out
        "train.eval_every_steps": 0,
        "train.early_stopping_patience": 0,
    }
    return train(load_config(None, extra=extra))


def test_temperature_is_fitted_stored_reported_and_applied(toy_run):
    state = json.loads((toy_run.path / "labels.json").read_text())
    t = state["temperature"]
    assert t > 0 and t != 1.0 and toy_run.task.temperature == t
    m = toy_run.metrics
    assert m["train"]["temperature"] == t
    for split in ("validation", "test"):
        assert 0 <= m[split]["ece"] <= 1 and "ece_before_temperature" in m[split]
    # fitted on validation: the NLL-optimal temperature does not raise validation ECE much
    assert m["validation"]["ece"] <= m["validation"]["ece_before_temperature"] + 0.02
    report = (toy_run.path / "report.md").read_text()
    assert "## Calibration (test)" in report and "before ->" in report
    assert (toy_run.path / "plots" / "reliability_test.png").is_file()
    # predict applies the temperature: the served score is softmax(logits / T)
    data = toy_run.task.encode(["the food was excellent"], None)
    logits = toy_run.task.logits_for(toy_run.model, data, 8)
    expected = torch.softmax(logits / t, -1).max().item()
    assert toy_run.predict(["the food was excellent"])[0]["score"] == pytest.approx(expected, 1e-5)


def test_attributions_are_complete_and_aggregated_to_words(toy_run):
    from textloop.evaluation.explain import explain, ranked_words

    texts = ["the food excellent", "i think the staff were awful", "unhappiness"]
    # the toy model swings its logit by ~20 within a few tokens, a sharper path than a real
    # model's; 100 steps keep this test far from the 5% line (bench/trust.py measures the
    # default step count on a real fine-tuned model)
    expl = explain(toy_run, texts, steps=100)
    assert [e["text"] for e in expl] == texts
    for e in expl:
        c = e["completeness"]
        assert c["relative_error"] < 0.05, c
        assert sum(w["attribution"] for w in e["words"]) == pytest.approx(
            c["sum_attributions"], abs=1e-5
        )
    assert [w["word"] for w in expl[0]["words"]] == ["the", "food", "excellent"]
    assert expl[0]["label"] == "pos" and ranked_words(expl[0], 1)[0]["word"] == "excellent"
    assert expl[1]["label"] == "neg" and ranked_words(expl[1], 1)[0]["word"] == "awful"
    # a word the tokenizer splits into sub-tokens comes back as one word
    (word,) = expl[2]["words"]
    assert word["word"] == "unhappiness" and word["n_tokens"] > 1
    # the probability saturates along the path (a step from ~0 to ~1 for this confident toy
    # model), so it needs far more steps than the logit; with enough it is complete too
    (p,) = explain(toy_run, texts[:1], steps=1000, output="probability")
    assert p["completeness"]["relative_error"] < 0.01
    with pytest.raises(DataError, match="not a label"):
        explain(toy_run, texts, target="maybe")


def test_audit_writes_report_with_calibration_slices_probes_and_deletion(
    toy_run, toy_data, tmp_path
):
    from textloop.evaluation.audit import audit

    probes = tmp_path / "probes.yaml"
    probes.write_text(
        "# textloop audit RUN --data FILE --probes probes.yaml\n"
        "groups:\n  topic: {terms: [food, staff, room, film]}\n"
        "templates: ['the {topic} was fine']\n"
    )
    out = tmp_path / "audit"
    result = audit(
        toy_run,
        str(toy_data["test"]),
        probes=probes,
        slices=["length", "regex:food=\\bfood\\b"],
        output=out,
        deletion_examples=12,
        steps=20,
    )
    assert result["n"] == 60 and result["accuracy"] >= 0.9
    assert "ece_before_temperature" in result["calibration"]
    topic = result["probes"]["groups"]["topic"]
    assert topic["n_pairs"] > 60 and 0 <= topic["flip_rate"] <= 1
    assert len(result["slices"]) == 5
    assert result["attributions"]["deletion"]["k"]["1"]["n"] == 12
    md = (out / "audit.md").read_text()
    for section in (
        "## Calibration",
        "## Slices",
        "## Counterfactual bias probes",
        "Deletion test",
    ):
        assert section in md
    assert (out / "plots" / "reliability.png").is_file() and (
        out / "plots" / "probes.png"
    ).is_file()
    assert json.loads((out / "audit.json").read_text())["n"] == 60
    # a bad probe file fails before anything is written
    probes.write_text("groups: {}\n")
    with pytest.raises(ConfigError):
        audit(toy_run, str(toy_data["test"]), probes=probes, output=tmp_path / "never")
    assert not (tmp_path / "never").exists()


@pytest.mark.integration
def test_cli_explain_and_audit(toy_run, toy_data, tmp_path, capsys):
    from textloop.cli.main import main

    html = tmp_path / "x.html"
    assert main(["explain", str(toy_run.path), "the room was lovely", "--html", str(html)]) == 0
    out = capsys.readouterr().out
    assert "predicted pos" in out and "1. lovely" in out
    page = html.read_text()
    assert "<span class='w'" in page and "lovely" in page
    probes = str(REPO / "configs" / "probes" / "identity_en.yaml")
    code = main(["audit", str(toy_run.path), "--data", str(toy_data["test"]), "--probes", probes])
    assert code == 0 and (toy_run.path / "audit" / "audit.md").is_file()
    assert "probe gender" in capsys.readouterr().out
    assert main(["audit", str(toy_run.path), "--data", str(toy_data["test"]), "--slice", "x"]) == 2


def test_serve_explain_endpoint_matches_the_library(toy_run):
    from fastapi.testclient import TestClient

    from textloop.evaluation.explain import explain
    from textloop.serving.app import create_app
    from textloop.serving.sources import RunDirSource

    with TestClient(create_app(RunDirSource(toy_run.path))) as client:
        r = client.post("/v1/explain", json={"inputs": ["the food excellent"], "steps": 20})
        assert r.status_code == 200, r.text
        (served,) = r.json()["explanations"]
        (local,) = explain(toy_run, ["the food excellent"], steps=20)
        assert served["label"] == local["label"]
        assert [w["word"] for w in served["words"]] == ["the", "food", "excellent"]
        for a, b in zip(served["words"], local["words"]):
            assert a["attribution"] == pytest.approx(b["attribution"], abs=1e-4)
        bad = client.post("/v1/explain", json={"inputs": ["x"], "target": "maybe"})
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_input"
        assert client.post("/v1/explain", json={"inputs": []}).status_code == 422
