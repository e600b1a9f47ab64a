"""Extractive QA: official EM/F1, null threshold, readers and bad rows, windows that never lose an
answer, and the pipeline end to end on a tiny BERT whose tokenizer covers examples/qa."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from textloop.config import load_config
from textloop.errors import ConfigError, DataError
from textloop.tasks.qa.data import QaExample, read_qa
from textloop.tasks.qa.metrics import (
    best_null_threshold,
    cmrc_exact_match,
    cmrc_f1,
    cmrc_segments,
    exact_match,
    normalize_answer,
    score_one,
    squad_scores,
    token_f1,
    uses_cjk,
)
from textloop.tasks.qa.task import QaTask, answer_tokens, context_windows
from textloop.training.run import train

from .conftest import build_tiny_bert

REPO = Path(__file__).resolve().parents[1]
QA_DIR = REPO / "examples" / "qa"
COLUMNS = {"question_column": "question", "context_column": "context", "answers_column": "answers"}


@pytest.fixture(scope="module")
def qa_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, hidden-32 BERT with a WordPiece tokenizer trained on the example paragraphs."""
    corpus = (QA_DIR / "paragraphs.txt").read_text(encoding="utf-8").splitlines()
    return build_tiny_bert(tmp_path_factory.mktemp("qa-bert"), corpus, 1500, 256)


# ---- the official SQuAD definitions --------------------------------------------------------
def test_official_normalisation():
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert normalize_answer("an apple, a pear") == "apple pear"
    assert normalize_answer("Theatre") == "theatre"  # articles only as whole words
    assert normalize_answer("3 March 1871.") == "3 march 1871"
    assert normalize_answer("Paris-Nord") == "parisnord"  # punctuation is removed, not spaced


def test_exact_match_and_f1_against_hand_computed_values():
    assert exact_match("the Eiffel tower", "Eiffel Tower.") == 1.0
    # "cat sat" vs "cat sat down": P = 2/2, R = 2/3, F1 = 2 * 1 * 2/3 / (1 + 2/3) = 0.8
    assert token_f1("The cat sat", "a cat sat down") == pytest.approx(0.8)
    # repeated tokens count with multiplicity: "a b b" vs "b b c" -> "b b" vs "b b c"
    assert token_f1("x b b", "b b c") == pytest.approx(2 * (2 / 3) * (2 / 3) / (4 / 3))
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0
    # max over gold answers
    assert score_one("seven arches", ["seven", "seven arches"]) == (1.0, 1.0)
    assert score_one("about seven", ["seven", "six"]) == (0.0, pytest.approx(2 / 3))
    # unanswerable: gold is [""], only an empty prediction scores
    assert score_one("", []) == (1.0, 1.0) and score_one("Paris", []) == (0.0, 0.0)


def test_squad_scores_with_no_answer_breakdown():
    m = squad_scores(["Tobias Wren", "", "1847", "wheat"], [["Tobias Wren"], [], ["1848"], []])
    assert m["exact_match"] == pytest.approx(2 / 4) and m["f1"] == pytest.approx(2 / 4)
    assert m["no_answer_accuracy"] == 0.5 and m["has_answer_exact_match"] == 0.5
    assert m["n_no_answer"] == 2 and m["n_has_answer"] == 2


def test_best_null_threshold():
    # diffs (null - best span); questions 0,1 answerable (span F1 1), 2,3 unanswerable
    diffs = [-3.0, -1.0, 2.0, 4.0]
    threshold, f1 = best_null_threshold(diffs, [1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0])
    assert -1.0 < threshold < 2.0 and f1 == 1.0
    # a tie cannot be split: both at 0.0, one answerable, one not -> best is answer both or neither
    _, f1 = best_null_threshold([0.0, 0.0], [1.0, 0.0], [0.0, 1.0])
    assert f1 == 0.5


# ---- readers and bad input -----------------------------------------------------------------
def test_squad_v2_files_read_and_answers_match():
    examples, dropped = read_qa(str(QA_DIR / "train.json"), COLUMNS)
    assert not dropped and len(examples) > 200
    assert sum(not e.answerable for e in examples) > 10
    for e in examples:
        for text, start in e.answers:
            assert e.context[start : start + len(text)] == text


def test_flat_jsonl_both_answer_layouts(tmp_path):
    f = tmp_path / "qa.jsonl"
    rows = [
        {"id": "a", "question": "Who?", "context": "Ada wrote it.", "answers": {"text": ["Ada"], "answer_start": [0]}},
        {"id": "b", "question": "What?", "context": "Ada wrote it.", "answers": [{"text": "wrote", "answer_start": 4}]},
        {"id": "c", "question": "Why?", "context": "Ada wrote it.", "answers": []},
    ]  # fmt: skip
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    examples, _ = read_qa(str(f), COLUMNS)
    assert [e.answers for e in examples] == [[("Ada", 0)], [("wrote", 4)], []]


def test_answer_start_that_does_not_match_names_the_row(tmp_path):
    f = tmp_path / "bad.jsonl"
    rows = [
        {"id": "ok", "question": "Who?", "context": "Ada wrote it.", "answers": [{"text": "Ada", "answer_start": 0}]},
        {"id": "q7", "question": "What?", "context": "Ada wrote it.", "answers": [{"text": "wrote", "answer_start": 2}]},
    ]  # fmt: skip
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(
        DataError, match=rf"{f}:2: answer 'wrote' does not match .* answer_start 2 .*occurs at 4"
    ):
        read_qa(str(f), COLUMNS)
    kept, dropped = read_qa(str(f), COLUMNS, drop_invalid=True)
    assert [e.qid for e in kept] == ["ok"] and dropped == [f"{f}:2"]


def test_config_checks_that_windows_fit():
    with pytest.raises(ConfigError, match=r"qa\.doc_stride"):
        load_config(None, extra={"task": "qa", "train.max_seq_len": 128, "qa.doc_stride": 10})
    with pytest.raises(ConfigError, match=r"leaves .* tokens for the context"):
        load_config(None, extra={"task": "qa", "train.max_seq_len": 64})


# ---- windows -------------------------------------------------------------------------------
def test_context_windows_cover_every_short_span():
    for n in range(1, 120):
        for room, stride in ((10, 4), (16, 15), (7, 0)):
            starts = context_windows(n, room, stride)
            assert starts[0] == 0 and starts[-1] + room >= n
            for a in range(n):  # every span of up to stride + 1 tokens lies whole in a window
                b = min(n - 1, a + stride)
                assert any(s <= a and b < s + room for s in starts)


def test_windowing_never_loses_an_answer_that_fits_a_window(qa_bert):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(qa_bert)
    examples, _ = read_qa(str(QA_DIR / "train.json"), COLUMNS)
    rng = random.Random(0)
    # lengthen contexts so most need several short windows, and put answers anywhere
    long_examples = []
    for e in examples:
        if not e.answers:
            continue
        pad = " ".join(rng.choice(e.context.split()) for _ in range(rng.randint(0, 60)))
        text, start = e.answers[0]
        long_examples.append(
            QaExample(
                e.qid, e.question, pad + " " + e.context, [(text, start + len(pad) + 1)], e.location
            )
        )
    task = QaTask(tokenizer=tok, max_seq_len=48, doc_stride=12, max_query_len=16, max_answer_len=13)
    data = task.encode(long_examples, training=True)
    assert len(data) > 2 * len(long_examples)  # really windowed
    found = set()
    for f, ((s, e), ex_i) in enumerate(zip(data.targets, data.extra["example"])):
        if (s, e) == (0, 0):
            continue
        ex = long_examples[ex_i]
        offsets = data.extra["offsets"][ex_i]
        window, ctx = data.extra["window"][f], data.extra["context_start"][f]
        c0, c1 = offsets[window + s - ctx][0], offsets[window + e - ctx][1]
        text, start = ex.answers[0]
        assert (c0, c1) == (start, start + len(text)), ex.qid  # targets map back to the answer
        found.add(ex_i)
    lost = set(data.extra["answer_lost"])
    for i, ex in enumerate(long_examples):
        text, start = ex.answers[0]
        a, b = answer_tokens(data.extra["offsets"][i], start, start + len(text))
        fits = b - a + 1 <= 48 - 3 - len(
            tok(ex.question, add_special_tokens=False)["input_ids"][:16]
        )
        assert (i in found) == fits and (ex.location in lost) != fits


# ---- end to end ----------------------------------------------------------------------------
def test_qa_trains_evaluates_and_predicts(qa_bert, tmp_path, capsys):
    cfg = load_config(
        None,
        extra={
            "task": "qa",
            "model": str(qa_bert),
            "output": str(tmp_path / "qa"),
            "data.train": str(QA_DIR / "train.json"),
            "data.validation": str(QA_DIR / "validation.json"),
            "data.test": str(QA_DIR / "test.json"),
            "train.epochs": 2,
            "train.lr": 3e-3,
            "train.max_seq_len": 96,
            "qa.max_query_len": 24,
            "train.batch_size": 16,
        },
    )
    run = train(cfg)
    m = run.metrics
    assert m["data"]["features"]["train"] > m["data"]["n_train"]  # contexts were windowed
    assert m["data"]["allow_no_answer"] and "null_threshold" in m["test"]
    assert m["validation"]["n"] == 54 and 0.0 <= m["test"]["f1"] <= 1.0
    assert (
        json.loads((tmp_path / "qa/labels.json").read_text())["null_threshold"]
        == m["test"]["null_threshold"]
    )
    context = "The Harrowgate Mill was built in 1847 by the engineer Tobias Wren."
    (pred,) = run.predict(["Who built the mill?"], [context], top_k=3)
    assert pred["no_answer"] or context[pred["start"] : pred["end"]] == pred["answer"]
    for alt in pred["top_k"]:
        assert context[alt["start"] : alt["end"]] == alt["answer"]
    with pytest.raises(DataError, match="one context per question"):
        run.predict(["Who?"], [])
    from textloop.cli.main import main

    assert (
        main(["evaluate", str(tmp_path / "qa"), "--data", str(QA_DIR / "test.json"), "--json"]) == 0
    )
    assert json.loads(capsys.readouterr().out)["f1"] == pytest.approx(m["test"]["f1"])
    assert (
        main(["predict", str(tmp_path / "qa"), "--question", "Who built it?", "--context", context])
        == 0
    )
    assert json.loads(capsys.readouterr().out)["question"] == "Who built it?"


def test_shipped_qa_config_is_valid():
    cfg = load_config(REPO / "configs/qa/squad-format_full.yaml")
    assert cfg.task == "qa" and (REPO / cfg.data.train).is_file()  # type: ignore[operator]


def test_cmrc_definition_scores_characters_and_the_longest_common_run():
    # CMRC2018 / DRCD: every CJK character is a token, punctuation is dropped, and the overlap is
    # the longest common contiguous run of tokens, not the bag overlap SQuAD uses
    assert cmrc_segments("於1949年，Taipei 101大樓") == [
        "於",
        "1949",
        "年",
        "taipei",
        "101",
        "大",
        "樓",
    ]
    assert cmrc_exact_match("臺北市。", "臺北市") == 1.0
    assert cmrc_f1("臺北市", "臺北") == pytest.approx(0.8)  # run 2: p 2/3, r 1
    assert cmrc_f1("北臺", "臺北") == pytest.approx(0.5)  # a bag would score 1; the run is 1
    # whitespace tokens would make the whole sentence one token and score 0
    assert token_f1("位於臺北市", "臺北市") == 0.0
    assert cmrc_f1("位於臺北市", "臺北市") == pytest.approx(0.75)
    s = squad_scores(["臺北市", ""], [["臺北"], ["一九四九年"]], "cmrc")
    assert s["definition"] == "cmrc"
    assert s["f1"] == pytest.approx(0.4)
    with pytest.raises(ValueError, match="unknown QA metric"):
        squad_scores(["a"], [["a"]], "bleu")
    assert uses_cjk(["臺北", "Taipei 101 大樓"]) and not uses_cjk(["Paris", "Eiffel 塔"])
