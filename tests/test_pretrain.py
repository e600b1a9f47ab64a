"""Continued pre-training: masking statistics, packing, perplexity falling, exact stream resume."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from textloop.config import load_config
from textloop.tasks.lm.packing import Block, DocumentSource, PackedStream, Tokenize
from textloop.tasks.lm.task import IGNORE, PretrainTask
from textloop.training.run import TrainingInterrupted, train

from .conftest import toy_rows


def _docs(n: int, seed: int) -> list[str]:
    return [r["text"] for r in toy_rows(n, seed=seed)]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared corpus (manifest + Parquet shards), written by ``textloop prepare``."""
    from textloop.data.prepare import load_prepare_config, prepare

    d = tmp_path_factory.mktemp("corpus")
    raw = d / "raw.jsonl"
    rng = random.Random(0)
    lines = []
    for i, text in enumerate(_docs(900, seed=7)):
        # several sentences per document, so documents span blocks
        more = " ".join(rng.choice(_docs(30, seed=i % 5)) for _ in range(rng.randint(1, 3)))
        lines.append(json.dumps({"text": f"{text} . {more} . doc {i}"}))
    raw.write_text("\n".join(lines) + "\n")
    cfg = load_prepare_config(
        None,
        extra={
            "inputs": [str(raw)],
            "output": str(d / "out"),
            "shard_rows": 300,
            "dedup.mode": "exact",
            "split.leakage_check": "exact",
        },
    )
    return prepare(cfg).path


@pytest.fixture(scope="session")
def tokenizer(tiny_bert: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_bert)


def _stream(tokenizer: Any, docs: list[str], block: int = 32, seed: int = 0) -> PackedStream:
    task = PretrainTask(tokenizer, "mlm", block)
    return PackedStream(
        DocumentSource("docs", [lambda: docs]),
        Tokenize(tokenizer, "mlm"),
        block,
        seed,
        task.collate_blocks,
    )


def test_mlm_masking_statistics(tokenizer):
    task = PretrainTask(tokenizer, "mlm", 64, seed=3)
    blocks = [b for b, _ in _stream(tokenizer, _docs(2000, 1), block=64).blocks()]
    batch = task.collate_blocks(blocks)
    ids = torch.tensor([b.ids for b in blocks])
    special = torch.tensor([b.words for b in blocks]) < 0
    chosen = batch["targets"] != IGNORE
    assert not chosen[special].any()  # [CLS] / [SEP] are never masked
    assert torch.equal(batch["targets"][chosen], ids[chosen])  # labels are the original tokens
    rate = chosen.sum() / (~special).sum()
    assert abs(float(rate) - 0.15) < 0.01
    inp = batch["input_ids"][chosen]
    masked = float((inp == tokenizer.mask_token_id).float().mean())
    kept = float((inp == ids[chosen]).float().mean())
    assert abs(masked - 0.8) < 0.02 and abs(kept - 0.1 - 0.1 / len(tokenizer)) < 0.02
    assert torch.equal(batch["input_ids"][~chosen], ids[~chosen])
    # the same block gets the same mask whenever (and on whichever rank) it is collated
    again = task.collate_blocks(blocks[5:9])
    assert torch.equal(again["input_ids"], batch["input_ids"][5:9])


def test_whole_word_masking_masks_all_pieces_of_a_word(tokenizer):
    task = PretrainTask(tokenizer, "mlm", 64, whole_word_mask=True, seed=1)
    docs = ["xylophonist zephyrs quixotically " + d for d in _docs(400, 2)]
    blocks = [b for b, _ in _stream(tokenizer, docs, block=64).blocks()]
    batch = task.collate_blocks(blocks)
    chosen = batch["targets"] != IGNORE
    n_words = n_split = 0
    for row, blk in enumerate(blocks):
        starts = set(blk.doc_starts)
        doc = 0
        groups: dict[tuple[int, int], list[bool]] = {}
        for t, w in enumerate(blk.words):
            doc += t in starts
            if w >= 0:
                groups.setdefault((doc, w), []).append(bool(chosen[row, t]))
        for flags in groups.values():
            n_words += 1
            n_split += len(set(flags)) > 1
    assert n_words > 1000 and n_split == 0
    rate = float(chosen.sum() / (torch.tensor([b.words for b in blocks]) >= 0).sum())
    assert 0.11 < rate < 0.19


def test_packing_fills_blocks_and_keeps_every_token_in_order(tokenizer):
    docs = _docs(300, 4)
    stream = _stream(tokenizer, docs, block=32)
    blocks = [b for b, _ in stream.blocks(shuffle=False)]
    assert all(len(b.ids) == 32 for b in blocks)
    joined = [i for ids, _ in Tokenize(tokenizer, "mlm")(docs) for i in ids]
    assert [i for b in blocks for i in b.ids] == joined[: 32 * len(blocks)]
    assert len(joined) - 32 * len(blocks) < 32  # only the last partial block is dropped
    assert len(stream) == len(blocks)
    starts = [32 * b.index + s for b in blocks for s in b.doc_starts]
    sep = tokenizer.sep_token_id
    assert all(joined[s - 1] == sep for s in starts if s > 0)  # documents end with [SEP]


def _tiny_llama(tmp: Path, tokenizer: Any) -> Path:
    """A 2-layer Llama sharing the tiny WordPiece vocabulary, with [SEP] as its EOS."""
    import copy

    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.eos_token = "[SEP]"

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        eos_token_id=tokenizer.sep_token_id,
        pad_token_id=0,
    )
    LlamaForCausalLM(cfg).save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    return tmp


def _tiny_mlm(tokenizer: Any) -> torch.nn.Module:
    """A fresh 2-layer BERT masked-LM over ``tokenizer``'s vocabulary."""
    from transformers import AutoModelForMaskedLM, BertConfig

    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    return AutoModelForMaskedLM.from_config(config)


@pytest.mark.parametrize("objective", ["mlm", "clm"])
def test_packed_documents_do_not_see_each_other(tokenizer, tmp_path, objective):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    if objective == "mlm":
        model = _tiny_mlm(tokenizer)
    else:
        model = AutoModelForCausalLM.from_pretrained(_tiny_llama(tmp_path, tokenizer))
    model.eval()
    task = PretrainTask(tokenizer, objective, 24)  # type: ignore[arg-type]
    a = Block(list(range(10, 20)) + list(range(30, 44)), [0, 10], [0] * 24, 0)
    b = Block(list(range(50, 60)) + list(range(30, 44)), [0, 10], [0] * 24, 0)  # doc 1 differs
    if objective == "clm":
        labels = task.collate_blocks([a])["targets"][0]
        assert labels[10] == IGNORE and labels[11] == 31  # doc 2's first token is not a target
    with torch.no_grad():
        out_a = task._forward(model, task.collate_blocks([a]))
        out_b = task._forward(model, task.collate_blocks([b]))
        # fp32; the same rows through a batch of another shape: only kernel blocking differs
        # (~1e-7), a leak from doc 1 moves them by ~1e-2
        assert torch.allclose(out_a[0, 10:], out_b[0, 10:], atol=1e-6, rtol=0)  # doc 2 unaffected
        leaky = PretrainTask(tokenizer, objective, 24, document_mask=False)  # type: ignore[arg-type]
        out_c = leaky._forward(model, leaky.collate_blocks([a]))
        out_d = leaky._forward(model, leaky.collate_blocks([b]))
        leak = (out_c[0, 10:] - out_d[0, 10:]).abs().max()
        assert leak > 1e-5  # without the document mask, doc 1 changes doc 2's outputs


def test_mlm_head_on_masked_positions_only_equals_the_full_forward(tokenizer):

    from textloop.models.lora import apply_lora
    from textloop.tasks.lm.task import mlm_head

    torch.manual_seed(0)
    model = _tiny_mlm(tokenizer)
    assert mlm_head(model) is model.cls
    assert mlm_head(torch.nn.Sequential(model)) is None  # an unknown container: full logits
    task = PretrainTask(tokenizer, "mlm", 24)  # type: ignore[arg-type]
    blocks = [Block(list(range(10 + i, 34 + i)), [0, 12], [0] * 24, i) for i in range(4)]
    batch = task.collate_blocks(blocks)
    keep = batch["targets"] != IGNORE
    assert 0 < int(keep.sum()) < keep.numel()
    model.eval()  # no dropout: both forwards are deterministic
    full = task._forward(model, batch)[keep]
    split = task._forward(model, batch, keep)
    # fp32 logits over a 300-word vocabulary: a gathered matmul rounds like the full one, to ~1e-6
    assert torch.allclose(full, split, atol=1e-5, rtol=0)
    loss = task.training_loss(model, batch)
    loss.backward()  # gradients reach the encoder through the split forward
    assert model.bert.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    assert task._forward(model, batch).shape[:2] == keep.shape  # the hook is gone afterwards
    adapted = apply_lora(model, r=2, alpha=4, targets=["query", "value"], modules_to_save=["cls"])
    assert mlm_head(adapted) is not None  # found through the peft wrapper
    assert task._forward(adapted, batch, keep).shape == (int(keep.sum()), len(tokenizer))


def test_stream_resumes_at_the_exact_position(corpus, tokenizer):
    from textloop.tasks.lm.packing import document_source

    source = document_source(str(corpus), "text")
    assert len(source.shard_loaders) >= 3  # really read shard by shard
    stream = PackedStream(source, Tokenize(tokenizer, "mlm"), 32, 5, lambda b: {})
    full = list(stream.micro_batches(1, 4, None))
    for k in (1, 7, len(full) // 2, len(full) - 1):
        cursor = json.loads(json.dumps(full[k - 1].cursor))  # survives state.json
        rest = list(stream.micro_batches(1, 4, cursor))
        assert [[b.ids for b in mb] for mb in rest] == [[b.ids for b in mb] for mb in full[k:]]
        assert [b.index for b in rest[0]] == [b.index for b in full[k]]
    other_epoch = [b.ids for b in next(stream.micro_batches(2, 4, None))]
    assert other_epoch != [b.ids for b in full[0]]  # a new order each epoch


def _pretrain_config(model: Path, corpus: Path, out: Path, objective: str, **extra: Any):
    tree = {
        "task": objective,
        "model": str(model),
        "output": str(out),
        "data.train": str(corpus),
        "train.max_seq_len": 32,
        "train.batch_size": 8,
        "train.lr": 3e-3,
        "train.max_steps": 60,
        "train.eval_every_steps": 20,
        "train.warmup_ratio": 0.05,
        "train.log_every_steps": 10,
        "pretrain.eval_blocks": 64,
        "train.precision": "fp32",  # the numerics these tests compare (auto is bf16 on AMX)
    }
    tree.update(extra)
    return load_config(None, extra=tree)


def _evals(out: Path) -> list[dict[str, Any]]:
    rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "eval"]


def test_mlm_perplexity_falls_and_the_run_feeds_fine_tuning(
    tiny_bert, tokenizer, corpus, toy_data, tmp_path
):
    from transformers import AutoModelForMaskedLM

    from textloop.runs import load_run
    from textloop.tasks.lm.packing import document_source
    from textloop.tasks.lm.task import held_out_blocks

    task = PretrainTask(tokenizer, "mlm", 32)
    val = held_out_blocks(document_source(f"{corpus}:validation"), task, 64)
    before = task.evaluate(AutoModelForMaskedLM.from_pretrained(tiny_bert), val, 32)
    run = train(_pretrain_config(tiny_bert, corpus, tmp_path / "mlm", "mlm"))
    evals = _evals(tmp_path / "mlm")
    assert len(evals) == 3
    assert evals[-1]["perplexity"] < 0.5 * before["perplexity"]
    assert evals[-1]["perplexity"] < evals[0]["perplexity"]
    m = run.metrics["validation"]
    # the best checkpoint re-evaluated: exp() of a loss summed in another order (rel ~1e-6)
    assert m["perplexity"] == pytest.approx(min(e["perplexity"] for e in evals), rel=1e-4)
    assert "perplexity" in (tmp_path / "mlm" / "report.md").read_text()
    assert load_run(tmp_path / "mlm").task.name == "mlm"
    # the run dir is a model reference: fine-tuning starts from the adapted encoder
    from .test_training import toy_config

    ft_cfg = toy_config(tmp_path / "mlm", toy_data, tmp_path / "ft", **{"train.max_steps": 2})
    ft = train(ft_cfg)
    adapted = load_file(tmp_path / "mlm/model/model.safetensors")
    start = load_file(tmp_path / "ft/model/model.safetensors")
    key = "bert.encoder.layer.0.attention.self.query.weight"
    assert (adapted[key] - start[key]).abs().max() < 0.02  # 2 small steps from the adapted weights
    original = load_file(tiny_bert / "model.safetensors")[
        "encoder.layer.0.attention.self.query.weight"
    ]
    assert (adapted[key] - original).abs().max() > 0.01  # ... which pre-training moved
    assert "test" in ft.metrics
    # BertForMaskedLM has no pooler: the checkpoint's pooler is carried over unchanged, so the
    # classifier starts from it (not from a random one) as it does from the original checkpoint
    pooler = load_file(tiny_bert / "model.safetensors")["pooler.dense.weight"]
    assert torch.equal(adapted["bert.pooler.dense.weight"], pooler)
    assert (start["bert.pooler.dense.weight"] - pooler).abs().max() < 0.02


def test_clm_perplexity_falls_on_a_tiny_llama(tokenizer, corpus, tmp_path):
    llama = _tiny_llama(tmp_path / "llama", tokenizer)
    train(_pretrain_config(llama, corpus, tmp_path / "clm", "clm"))
    evals = _evals(tmp_path / "clm")
    assert evals[-1]["perplexity"] < 0.7 * evals[0]["perplexity"]
    assert evals[-1]["accuracy"] > evals[0]["accuracy"]


class _InterruptAt:
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, info) -> None:
        if info.step == self.step:
            raise KeyboardInterrupt


def test_pretraining_resumes_exactly_mid_stream(tiny_bert, corpus, tmp_path):
    extra = {"train.max_steps": 24, "train.eval_every_steps": 8, "train.grad_accum_steps": 2}
    full = train(_pretrain_config(tiny_bert, corpus, tmp_path / "full", "mlm", **extra))
    cfg = _pretrain_config(tiny_bert, corpus, tmp_path / "cut", "mlm", **extra)
    with pytest.raises(TrainingInterrupted):
        train(cfg, callbacks=[_InterruptAt(13)])
    state = json.loads((tmp_path / "cut/checkpoints/last/state.json").read_text())
    assert state["step"] == 13 and state["data_cursor"]["block"] == 13 * 2 * 8
    resumed = train(cfg, resume=True)
    a = load_file(tmp_path / "full/model/model.safetensors")
    b = load_file(tmp_path / "cut/model/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.metrics["validation"] == full.metrics["validation"]


def test_domain_vocabulary_extension(tiny_bert, corpus, tmp_path):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    extra = {"train.max_steps": 4, "pretrain.extend_vocab": 5, "pretrain.min_word_count": 3}
    run = train(_pretrain_config(tiny_bert, corpus, tmp_path / "ext", "mlm", **extra))
    added = run.metrics["data"]["added_tokens"]
    assert 1 <= len(added) <= 5
    tok = AutoTokenizer.from_pretrained(tmp_path / "ext/model")
    base = AutoTokenizer.from_pretrained(tiny_bert)
    assert len(tok) == len(base) + len(added)
    assert tok.tokenize(f"the {added[0]} was fine")[1] == added[0]  # one token now
    model = AutoModelForMaskedLM.from_pretrained(tmp_path / "ext/model")
    assert model.get_input_embeddings().weight.shape[0] == len(tok)


def test_new_embeddings_start_at_the_mean_of_their_pieces(tiny_bert, tmp_path):
    from tokenizers import AddedToken
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from textloop.tasks.lm.domain_vocab import init_new_embeddings

    tok = AutoTokenizer.from_pretrained(tiny_bert)
    word = "goodfood"
    pieces = tok(word, add_special_tokens=False)["input_ids"]
    assert len(pieces) >= 2
    tok.add_tokens([AddedToken(word, single_word=True)])
    model = AutoModelForMaskedLM.from_pretrained(tiny_bert)
    emb = model.get_input_embeddings().weight.detach().clone()
    assert init_new_embeddings(model, tok) == 1
    new = model.get_input_embeddings().weight[len(tok) - 1]
    assert torch.allclose(new, emb[pieces].mean(0))


def test_every_rank_runs_the_same_number_of_eval_forwards(
    tiny_bert, tokenizer, corpus, monkeypatch
):
    # FSDP gathers weights collectively in each forward: a rank with fewer held-out blocks
    # must still run as many forwards as the others (stand-ins, not counted)
    from transformers import AutoModelForMaskedLM

    import textloop.collectives as dist  # what the task imports its rank and sums from
    from textloop.tasks.lm.packing import document_source
    from textloop.tasks.lm.task import held_out_blocks

    task = PretrainTask(tokenizer, "mlm", 32)
    val = held_out_blocks(document_source(f"{corpus}:validation"), task, 5)
    assert len(val) == 5
    model = AutoModelForMaskedLM.from_pretrained(tiny_bert)
    whole = task.evaluate(model, val, 2)
    calls: list[int] = []
    real = task._token_losses
    monkeypatch.setattr(task, "_token_losses", lambda m, b: calls.append(1) or real(m, b))
    monkeypatch.setattr(dist, "world_size", lambda: 2)
    monkeypatch.setattr(dist, "all_reduce_sum", lambda t: t)
    counts, tokens = [], 0
    for r in (0, 1):  # rank 0 holds blocks 0, 2, 4; rank 1 holds 1, 3
        monkeypatch.setattr(dist, "rank", lambda r=r: r)
        calls.clear()
        tokens += task.evaluate(model, val, 2)["tokens"]
        counts.append(len(calls))
    assert counts == [2, 2]  # rank 1's second forward is a stand-in
    assert tokens == whole["tokens"]  # and it is not counted


def test_carried_tensors_join_a_sharded_checkpoint(tmp_path):
    from safetensors.torch import save_file

    from textloop.tasks.lm.task import save_carried

    save_file({"bert.a": torch.ones(2)}, str(tmp_path / "model-00001-of-00001.safetensors"))
    index = {"metadata": {}, "weight_map": {"bert.a": "model-00001-of-00001.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    save_carried(tmp_path, {"bert.pooler.dense.weight": torch.full((2, 2), 3.0)})
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    file = index["weight_map"]["bert.pooler.dense.weight"]
    assert torch.equal(
        load_file(tmp_path / file)["bert.pooler.dense.weight"], torch.full((2, 2), 3.0)
    )
    assert index["weight_map"]["bert.a"] == "model-00001-of-00001.safetensors"


# ---- whole-word masking of Chinese: words from the jieba segmenter ---------------------------

_ZH = "我们喜欢北京大学的图书馆。ok fine"


def _char_tokenizer(tmp: Path) -> Any:
    """A BERT WordPiece tokenizer whose basic tokenizer makes every Han character a word."""
    from transformers import BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "ok", "fine", "。"]
    vocab += sorted({c for c in _ZH * 3 + "他们去上海看电影很好吃饭" if "\u4e00" <= c <= "\u9fff"})
    (tmp / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return BertTokenizerFast(str(tmp / "vocab.txt"), do_lower_case=True)


def test_chinese_word_numbers_follow_the_segmenter_not_the_tokenizer():
    pytest.importorskip("jieba")
    from textloop.tasks.lm.words import word_numbers

    # one token per character, each its own tokenizer word (BERT's basic tokenizer)
    offsets = [(i, i + 1) for i in range(13)]
    numbers = word_numbers(_ZH, offsets, list(range(13)))
    assert numbers == [0, 0, 1, 1, 2, 2, 2, 2, 3, 4, 4, 4, 5]  # 我们/喜欢/北京大学/的/图书馆/。
    # SentencePiece: [CLS], a lone "▁" (no characters of its own), then pieces that cross
    # jieba's words; the Han run (with its "。") is one tokenizer word, "ok" and "fine" two more
    offsets = [(0, 0), (0, 0), (0, 3), (3, 4), (4, 6), (6, 8), (8, 9), (9, 12), (12, 13)]
    offsets += [(13, 15), (15, 20)]
    words = [-1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2]
    # ▁ joins 我们喜 (in 我们); 欢 is in 喜欢; 北京 and 大学 share 北京大学; 的; 图书馆; 。; ok; fine
    assert word_numbers(_ZH, offsets, words) == [-1, 0, 0, 1, 2, 2, 3, 4, 5, 6, 7]
    assert word_numbers("only english here", [(0, 4)], [0]) == [0]  # no Han: untouched


def test_whole_word_masking_of_chinese_masks_segmenter_words_whole(tmp_path):
    pytest.importorskip("jieba")
    tokenizer = _char_tokenizer(tmp_path)
    docs = ["我们喜欢北京大学的图书馆。他们去上海看电影。ok fine", "很好吃饭。我们去上海"] * 200
    task = PretrainTask(tokenizer, "mlm", 32, whole_word_mask=True, seed=2)
    stream = PackedStream(
        DocumentSource("docs", [lambda: docs]),
        Tokenize(tokenizer, "mlm", chinese_words=True),
        32,
        0,
        task.collate_blocks,
    )
    blocks = [b for b, _ in stream.blocks(shuffle=False)]
    batch = task.collate_blocks(blocks)
    chosen = batch["targets"] != IGNORE
    sizes, n_split = [], 0
    for row, blk in enumerate(blocks):
        doc, starts = 0, set(blk.doc_starts)
        groups: dict[tuple[int, int], list[bool]] = {}
        for t, w in enumerate(blk.words):
            doc += t in starts
            if w >= 0:
                groups.setdefault((doc, w), []).append(bool(chosen[row, t]))
        sizes += [len(flags) for flags in groups.values()]
        n_split += sum(len(set(flags)) > 1 for flags in groups.values())
    assert n_split == 0
    assert max(sizes) >= 3  # 北京大学, 图书馆: several characters masked as one word
    # without the segmenter every character is a word of its own
    plain = Tokenize(tokenizer, "mlm")(docs[:1])[0][1]
    assert len(set(plain) - {-1}) == len([w for w in plain if w >= 0])


def test_whole_word_masking_of_chinese_without_jieba_is_a_one_line_error(monkeypatch):
    import sys

    from textloop.errors import ConfigError
    from textloop.tasks.lm import words

    monkeypatch.setattr(words, "_segmenter", None)
    monkeypatch.setitem(sys.modules, "jieba", None)  # import jieba raises ImportError
    with pytest.raises(ConfigError, match=r"needs the jieba word segmenter: pip install"):
        words.chinese_word_starts("北京大学")
    assert words.chinese_word_starts("no chinese") == []  # English never needs it
