"""Shared fixtures: a tiny BERT with its own WordPiece tokenizer, built locally, and toy data."""

from __future__ import annotations

import csv
import os
import random
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

POSITIVE = ["good", "great", "lovely", "excellent", "wonderful", "fine", "superb", "nice"]
NEGATIVE = ["bad", "awful", "terrible", "poor", "horrible", "dreadful", "nasty", "weak"]
NOUNS = ["food", "staff", "room", "service", "film", "book", "phone", "price", "view", "music"]
FILLER = [
    "the",
    "was",
    "really",
    "quite",
    "and",
    "a",
    "very",
    "overall",
    "i",
    "think",
    "it",
    "is",
    "this",
]


def toy_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """A learnable sentiment task: the label is the polarity of the one opinion word."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        word = rng.choice(POSITIVE if label == "pos" else NEGATIVE)
        words = [rng.choice(FILLER) for _ in range(rng.randint(2, 14))]
        words.insert(rng.randint(0, len(words)), f"{rng.choice(NOUNS)} {word}")
        rows.append({"text": " ".join(words), "label": label})
    return rows


def write_csv(path: Path, rows: list[dict[str, str]], delimiter: str = ",") -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter)
        w.writeheader()
        w.writerows(rows)
    return path


def build_tiny_bert(out: Path, corpus: list[str], vocab_size: int, max_len: int) -> Path:
    """Write a 2-layer, hidden-32 BERT (seed 0) and a WordPiece tokenizer trained on ``corpus``
    (lower-cased, ``vocab_size`` pieces, ``max_len`` positions) to ``out``."""
    import torch
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(
        corpus, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials)
    )
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    tok.decoder = decoders.WordPiece()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=max_len,
    )
    fast.save_pretrained(out)
    config = BertConfig(
        vocab_size=len(fast),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=max_len,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, hidden-32 BERT and a WordPiece tokenizer trained on the toy vocabulary."""
    corpus = [r["text"] for r in toy_rows(400, seed=123)] + [
        " ".join(POSITIVE + NEGATIVE + NOUNS + FILLER),
        "Angela Merkel visited Paris. Shares rose after the results.",
    ]
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), corpus, 300, 128)


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("toy-data")
    return {
        "train": write_csv(d / "train.csv", toy_rows(240, seed=1)),
        "validation": write_csv(d / "val.csv", toy_rows(60, seed=2)),
        "test": write_csv(d / "test.csv", toy_rows(60, seed=3)),
    }


@pytest.fixture(scope="session")
def label_run(
    tiny_bert: Path, toy_data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A tiny pos/neg run that suggests labels."""
    from textloop.training.run import train

    from .test_training import toy_config

    out = tmp_path_factory.mktemp("label") / "reviews"
    train(toy_config(tiny_bert, toy_data, out, **{"train.epochs": 2}))  # suggests; need not be good
    return out
