"""Trust for NER runs: integrated-gradients attributions per predicted entity (library, CLI, HTTP)."""

from __future__ import annotations

import pytest

from textloop.errors import DataError

from .test_ner import ner_rows, write_conll

SURNAMES = ["merkel", "kowalski", "schmidt"]  # the last two are many WordPiece pieces
TEXT = "i think angela kowalski visited paris and the food was great"


def entity_rows(n: int, seed: int) -> list[dict]:
    """Filler sentences holding people (angela + a surname), paris (LOC) and nouns (ITEM)."""
    return ner_rows(n, seed, surnames=tuple(SURNAMES), max_filler=4)


@pytest.fixture(scope="module")
def ner_run(tiny_bert, tmp_path_factory):
    """A tiny NER run (a few seconds of training) whose windows hold 14 word pieces."""
    from textloop.config import load_config
    from textloop.training.run import train

    d = tmp_path_factory.mktemp("trust-ner")
    extra = {
        "task": "ner",
        "model": str(tiny_bert),
        "output": str(d / "run"),
        "data.train": str(write_conll(d / "train.txt", entity_rows(120, 1))),
        "data.validation": str(write_conll(d / "valid.txt", entity_rows(30, 2))),
        "train.epochs": 6,
        "train.lr": 5e-3,
        "train.batch_size": 16,
        "train.max_seq_len": 24,
        "train.precision": "fp32",  # one numeric path on every CPU (auto is bf16 on AMX)
        "train.eval_every_steps": 0,  # each epoch's checkpoint, as the test was written for
        "train.early_stopping_patience": 0,
        "ner.window_overlap": 6,
    }
    return train(load_config(None, extra=extra))


def test_entity_attributions_are_complete_and_summed_into_words(ner_run):
    from textloop.evaluation.explain import explain, ranked_words

    tok = ner_run.task.tokenizer
    assert len(tok.tokenize("kowalski")) > 1  # the entity holds a multi-piece word
    long_text = " and ".join(["angela merkel met angela schmidt in paris"] * 3)
    texts = [TEXT, "it was really quite", "", long_text]
    expl = explain(ner_run, texts)  # default steps
    assert [e["text"] for e in expl] == texts
    predicted = ner_run.predict(texts)
    for e, p in zip(expl, predicted):
        # the explained entities are the predicted ones, in text order
        assert [(x["label"], x["start"], x["end"]) for x in e["entities"]] == [
            (x["type"], x["start"], x["end"]) for x in p["entities"]
        ]
        for ent in e["entities"]:
            c = ent["completeness"]
            assert c["relative_error"] < 0.05, (ent["text"], c)
            assert sum(w["attribution"] for w in ent["words"]) == pytest.approx(
                c["sum_attributions"], abs=1e-5
            )
            assert ent["method"]["steps"] == 50 and ent["method"]["baseline"] == "pad"
    (per, loc) = [x for x in expl[0]["entities"] if x["label"] in ("PER", "LOC")]
    assert (per["text"], per["tags"]) == ("angela kowalski", ["B-PER", "I-PER"])
    assert loc["text"] == "paris" and loc["tags"] == ["B-LOC"]
    # sub-tokens come back as one word, with the text's own characters
    words = {w["word"]: w for w in per["words"]}
    assert words["kowalski"]["n_tokens"] == len(tok.tokenize("kowalski"))
    assert TEXT[words["kowalski"]["start"] : words["kowalski"]["end"]] == "kowalski"
    assert [w["word"] for w in per["words"]] == TEXT.split()
    # the entity's own words carry its evidence
    assert {w["word"] for w in ranked_words(per, 2)} & {"angela", "kowalski"}
    # no entities: an empty list, not an error
    assert expl[1]["entities"] == [] and expl[2]["entities"] == []
    # a text longer than one window: each entity explained in the window that predicts it
    assert len(expl[3]["entities"]) >= 6 and all(x["truncated"] for x in expl[3]["entities"])
    assert not per["truncated"]
    # batching does not change the numbers: one text alone gives the same attributions
    (alone,) = explain(ner_run, [TEXT])
    for a, b in zip(alone["entities"], expl[0]["entities"]):
        for wa, wb in zip(a["words"], b["words"]):
            assert wa["attribution"] == pytest.approx(wb["attribution"], abs=1e-4)
    with pytest.raises(DataError, match="each entity"):
        explain(ner_run, [TEXT], target="PER")


@pytest.mark.integration
def test_cli_explain_ner_ranked_list_and_html(ner_run, tmp_path, capsys):
    from textloop.cli.main import main

    html = tmp_path / "ner.html"
    assert main(["explain", str(ner_run.path), TEXT, "nothing here", "--html", str(html)]) == 0
    out = capsys.readouterr().out
    assert "PER 'angela kowalski' [8, 23)" in out and "LOC 'paris'" in out
    assert "      1. " in out and "no entities" in out and "completeness error" in out
    page = html.read_text()
    assert page.count("class='w e'") >= 3  # angela, kowalski, paris outlined in their blocks
    assert "angela kowalski</b> = <b>PER" in page


def test_serve_explain_endpoint_on_a_ner_run(ner_run):
    from fastapi.testclient import TestClient

    from textloop.evaluation.explain import explain
    from textloop.serving.app import create_app
    from textloop.serving.sources import RunDirSource

    with TestClient(create_app(RunDirSource(ner_run.path))) as client:
        r = client.post("/v1/explain", json={"inputs": [TEXT, "it was really quite"], "steps": 20})
        assert r.status_code == 200, r.text
        served, empty = r.json()["explanations"]
        (local,) = explain(ner_run, [TEXT], steps=20)
        assert [e["text"] for e in served["entities"]] == [e["text"] for e in local["entities"]]
        for a, b in zip(served["entities"], local["entities"]):
            assert set(a) >= {"text", "label", "start", "end", "score", "words", "completeness"}
            for wa, wb in zip(a["words"], b["words"]):
                assert wa["attribution"] == pytest.approx(wb["attribution"], abs=1e-4)
        assert empty == {"text": "it was really quite", "entities": []}
        bad = client.post("/v1/explain", json={"inputs": ["x"], "target": "PER"})
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_input"


def test_span_deletion_test_finds_the_context_an_entity_needs():
    from textloop.evaluation.faithfulness import span_deletion_test

    def predict(texts):  # "paris" is a LOC only after "visited"
        out = []
        for t in texts:
            at = t.find("paris")
            found = "visited" in t and at >= 0
            out.append(
                {"entities": [{"type": "LOC", "start": at, "end": at + 5, "score": 0.9}] * found}
            )
        return out

    text = "angela visited paris today"
    words = [
        {"word": w, "start": text.index(w), "end": text.index(w) + len(w), "attribution": a}
        for w, a in (("angela", -0.1), ("visited", 2.0), ("paris", 3.0), ("today", 0.1))
    ]
    ent = {"text": "paris", "label": "LOC", "start": 15, "end": 20, "score": 0.9, "words": words}
    result = span_deletion_test([{"text": text, "entities": [ent]}] * 12, predict, ks=(1, 3))
    one = result["k"]["1"]
    assert result["n_entities"] == 12 and one["n"] == 12 and "3" not in result["k"]
    assert one["top"] == {"mean_drop": pytest.approx(0.9), "flip_rate": 1.0}
    # random deletions of "angela" shift the entity's offsets and it is still found there
    assert 0 < one["random"]["flip_rate"] < 1 and one["top_beats_random"] > 0.5
