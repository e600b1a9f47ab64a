"""Generation task on a tiny local Llama: masking, packing, decoding, metrics, training, CLI."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from textloop.tasks.generation.data import (
    IGNORE,
    Conversations,
    encode_conversations,
    read_chatterbot,
    render,
)
from textloop.tasks.generation.decoding import DecodingOptions, generate, stream, stream_steps
from textloop.tasks.generation.metrics import text_metrics
from textloop.tasks.generation.pack import collate_rows, pack_examples

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WORDS = {"hot": "cold", "big": "small", "fast": "slow", "up": "down", "light": "dark"}
WORDS.update({v: k for k, v in WORDS.items()})


def opposite_rows(n: int, seed: int) -> list[dict[str, str]]:
    """A learnable pairs task: the answer names the opposite of the asked word."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        w = rng.choice(sorted(WORDS))
        rows.append(
            {"prompt": f"what is the opposite of {w}", "target": f"the opposite is {WORDS[w]}"}
        )
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, hidden-32 Llama with a byte-level BPE tokenizer and a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tiny-llama")
    corpus = [f"{r['prompt']} {r['target']}" for r in opposite_rows(200, 0)] + [
        "hello there how are you today the cat sat on the mat",
        "user assistant system my order has not arrived",
    ]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<|im_start|>", "<|im_end|>"]
    tok.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<|im_end|>", bos_token="<|im_start|>"
    )
    fast.chat_template = CHATML
    fast.save_pretrained(out)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        initializer_range=0.3,  # logits big enough to sharpen without training the final norm
        pad_token_id=fast.pad_token_id,
        eos_token_id=fast.eos_token_id,
        bos_token_id=fast.bos_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture(scope="session")
def tok_model(tiny_llama: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    return AutoTokenizer.from_pretrained(tiny_llama), model


def _convs(items: list[list[dict[str, str]]]) -> Conversations:
    return Conversations(source="t", items=items, locations=[f"t:{i}" for i in range(len(items))])


# ---- prompt masking ---------------------------------------------------------------------------
def test_labels_mask_exactly_the_prompt_tokens(tok_model: tuple[Any, Any]) -> None:
    tok, _ = tok_model
    conv = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "what is the opposite of hot"},
        {"role": "assistant", "content": "the opposite is cold"},
    ]
    enc = encode_conversations(tok, _convs([conv]), max_seq_len=128)
    ids, labels = enc.input_ids[0], enc.targets[0]
    n_prompt = len(tok(render(tok, conv[:2], True), add_special_tokens=False)["input_ids"])
    assert ids == tok(render(tok, conv, False), add_special_tokens=False)["input_ids"]
    assert labels[:n_prompt] == [IGNORE] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:]
    assert tok.decode(ids[n_prompt:]) == "the opposite is cold<|im_end|>\n"
    assert enc.extra["prompt_ids"][0] == ids[:n_prompt]
    assert enc.extra["reference"] == ["the opposite is cold"]


def test_multi_turn_masks_every_user_turn(tok_model: tuple[Any, Any]) -> None:
    tok, _ = tok_model
    conv = [
        {"role": "user", "content": "hello there"},
        {"role": "assistant", "content": "how are you"},
        {"role": "user", "content": "my order has not arrived"},
        {"role": "assistant", "content": "sorry"},
    ]
    enc = encode_conversations(tok, _convs([conv]), max_seq_len=128)
    ids, labels = enc.input_ids[0], enc.targets[0]
    target_text = tok.decode([t for t, lab in zip(ids, labels) if lab != IGNORE])
    assert target_text == "how are you<|im_end|>\nsorry<|im_end|>\n"
    assert all(lab in (IGNORE, t) for t, lab in zip(ids, labels))


def test_long_examples_lose_their_oldest_context(tok_model: tuple[Any, Any]) -> None:
    tok, _ = tok_model
    conv = [
        {"role": "user", "content": "the cat sat on the mat " * 20},
        {"role": "assistant", "content": "the opposite is cold"},
    ]
    enc = encode_conversations(tok, _convs([conv]), max_seq_len=24)
    assert enc.n_truncated == 1 and len(enc.input_ids[0]) == 24
    kept = tok.decode([t for t, lab in zip(enc.input_ids[0], enc.targets[0]) if lab != IGNORE])
    assert kept == "the opposite is cold<|im_end|>\n"


# ---- packing --------------------------------------------------------------------------------------
def test_packing_keeps_examples_apart(tok_model: tuple[Any, Any]) -> None:
    from textloop.tasks.generation.task import GenerationTask

    tok, model = tok_model
    convs = [
        [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["target"]}]
        for r in opposite_rows(5, 3)
    ]
    enc = encode_conversations(tok, _convs(convs), max_seq_len=64)
    rows, labels, starts = pack_examples(enc.input_ids, enc.targets, 64)
    assert len(rows) < len(enc.input_ids)  # short examples share rows
    assert sorted(len(r) for r in rows) and all(len(r) <= 64 for r in rows)
    batch = collate_rows(rows, labels, starts, tok.pad_token_id)
    for b, offsets in enumerate(starts):
        for k, s in enumerate(offsets):
            assert batch["targets"][b, s] == IGNORE  # nothing predicted across a boundary
            assert batch["position_ids"][b, s] == 0 and batch["segment_ids"][b, s] == k
    task = GenerationTask(tokenizer=tok, max_seq_len=64)
    with torch.no_grad():
        packed = task.token_losses(model, batch)
        alone = task.token_losses(
            model, collate_rows(enc.input_ids, enc.targets, None, tok.pad_token_id)
        )
    # the same target tokens, the same losses (order differs: packing sorts by length)
    assert len(packed) == len(alone) == sum(x != IGNORE for lab in enc.targets for x in lab)
    # fp32; rows of other lengths change only kernel blocking (~1e-6); a leak across packed
    # examples would change losses by ~1e-1
    assert torch.allclose(packed.sort().values, alone.sort().values, atol=1e-5)


# ---- decoding -------------------------------------------------------------------------------------
def _prompts(tok: Any, texts: list[str]) -> list[list[int]]:
    return [
        tok(render(tok, [{"role": "user", "content": t}], True), add_special_tokens=False)[
            "input_ids"
        ]
        for t in texts
    ]


PROMPTS = ["hi", "what is the opposite of light please tell me", "the cat sat", "hello there how"]


def test_left_padded_batch_equals_one_by_one(tok_model: tuple[Any, Any]) -> None:
    tok, model = tok_model
    prompts = _prompts(tok, PROMPTS)
    assert len({len(p) for p in prompts}) > 1
    opts = DecodingOptions(max_new_tokens=12)
    batched = generate(model, tok, prompts, opts, batch_size=4)
    single = [generate(model, tok, [p], opts, batch_size=1)[0] for p in prompts]
    assert [g.token_ids for g in batched] == [g.token_ids for g in single]
    no_cache = generate(model, tok, prompts, DecodingOptions(max_new_tokens=12, use_cache=False))
    assert [g.token_ids for g in no_cache] == [g.token_ids for g in single]
    # and the same as transformers' own greedy search
    ids = torch.tensor([prompts[1]])
    ref = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    ours = single[1].token_ids
    assert ref[0, ids.shape[1] :].tolist()[: len(ours)] == ours


def test_sampling_is_seeded_and_leaves_global_rng_alone(tok_model: tuple[Any, Any]) -> None:
    tok, model = tok_model
    prompts = _prompts(tok, PROMPTS[:2])
    opts = DecodingOptions(max_new_tokens=8, temperature=1.5, top_p=0.9, top_k=50, seed=7)
    state = torch.get_rng_state()
    a = generate(model, tok, prompts, opts)
    assert torch.equal(state, torch.get_rng_state())
    assert [g.token_ids for g in a] == [g.token_ids for g in generate(model, tok, prompts, opts)]
    penalised = DecodingOptions(max_new_tokens=12, repetition_penalty=50.0)
    out = generate(model, tok, prompts, penalised)
    for g, p in zip(out, prompts):
        assert len(set(g.token_ids)) == len(g.token_ids)  # no token repeats
        assert not set(g.token_ids) & set(p)


def test_stop_strings_end_the_answer(tok_model: tuple[Any, Any]) -> None:
    tok, model = tok_model
    prompt = _prompts(tok, [PROMPTS[1]])
    sampled = DecodingOptions(max_new_tokens=16, temperature=1.0, seed=3)
    free = generate(model, tok, prompt, sampled)[0]
    assert free.finish_reason == "length" and len(free.text) > 6
    full = tok.decode(free.token_ids, skip_special_tokens=True)
    stop = full[4:7]
    opts = DecodingOptions(**{**vars(sampled), "stop": (stop, "zzz-never")})
    cut = generate(model, tok, prompt, opts)[0]
    assert cut.finish_reason == "stop"
    assert cut.text == full[: full.find(stop)].strip()
    assert len(cut.token_ids) < len(free.token_ids)
    pieces = list(stream(model, tok, prompt[0], opts))
    assert "".join(pieces) == full[: full.find(stop)]
    assert "".join(stream(model, tok, prompt[0], sampled)) == full


def test_stream_steps_count_tokens_and_end_as_generate_does(tok_model: tuple[Any, Any]) -> None:
    tok, model = tok_model
    prompt = _prompts(tok, [PROMPTS[1]])
    sampled = DecodingOptions(max_new_tokens=16, temperature=1.0, seed=3)
    full = tok.decode(generate(model, tok, prompt, sampled)[0].token_ids, skip_special_tokens=True)
    cut = DecodingOptions(**{**vars(sampled), "stop": (full[4:7],)})
    for opts in (sampled, cut, DecodingOptions(max_new_tokens=16)):  # length, stop string, greedy
        whole = generate(model, tok, prompt, opts)[0]
        steps = list(stream_steps(model, tok, prompt[0], opts))
        assert [s.finish_reason for s in steps[:-1]] == [None] * (len(steps) - 1)
        assert steps[-1].finish_reason == whole.finish_reason
        assert steps[-1].tokens == len(whole.token_ids)  # what usage reports, whole or streamed
        assert [s.tokens for s in steps[:-1]] == list(range(1, len(steps)))  # one per token
        assert "".join(s.text for s in steps).strip() == whole.text


# ---- metrics ------------------------------------------------------------------------------------------
def test_metrics_against_hand_computed_values() -> None:
    m = text_metrics(["the cat sat on the mat"], ["the cat sat on a mat"])
    # clipped n-gram precisions 5/6, 3/5, 2/4, 1/3, equal lengths (no brevity penalty)
    assert m["bleu"] == pytest.approx(100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25, abs=1e-6)
    m = text_metrics(["the cat sat"], ["the cat sat on the mat"])
    assert m["rouge1"] == pytest.approx(2 * 1 * 0.5 / 1.5)  # P 3/3, R 3/6
    assert m["rouge2"] == pytest.approx(2 * 1 * 0.4 / 1.4)  # P 2/2, R 2/5
    assert m["rougeL"] == pytest.approx(2 / 3)  # LCS 3
    same = text_metrics(["a b c d e"], ["a b c d e"])
    assert same["bleu"] == pytest.approx(100) and same["chrf"] == pytest.approx(100)
    assert text_metrics(["xyz"], ["abc"])["chrf"] == 0.0


def test_loss_and_perplexity_match_a_hand_computed_cross_entropy(
    tok_model: tuple[Any, Any],
) -> None:
    from textloop.tasks.generation.task import GenerationTask

    tok, model = tok_model
    convs = [
        [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["target"]}]
        for r in opposite_rows(3, 4)
    ]
    task = GenerationTask(tokenizer=tok, max_seq_len=64, eval_samples=0)
    data = task.encode(_convs(convs))
    got = task.evaluate(model, data, batch_size=2)
    nll, n = 0.0, 0
    with torch.no_grad():
        for ids, labels in zip(data.input_ids, data.targets):
            logp = model(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
            for t in range(1, len(ids)):
                if labels[t] != IGNORE:
                    nll -= float(logp[t - 1, labels[t]])
                    n += 1
    assert got["target_tokens"] == n
    # fp32 both ways; batched vs one row at a time sums the same terms in another order
    assert got["loss"] == pytest.approx(nll / n, rel=1e-5)
    assert got["perplexity"] == pytest.approx(math.exp(nll / n), rel=1e-5)


# ---- data sources ----------------------------------------------------------------------------------------
def test_chatterbot_builtin_reads_conversations() -> None:
    pytest.importorskip("yaml")
    import importlib.util

    if importlib.util.find_spec("chatterbot_corpus") is None:
        pytest.skip("chatterbot-corpus not installed")
    convs = read_chatterbot("builtin:chatterbot:english:greetings,tech_support")
    assert len(convs) > 1000
    assert all(c[0]["role"] == "user" and c[1]["role"] == "assistant" for c in convs.items)
    from textloop.errors import DataError

    with pytest.raises(DataError, match="unknown chatterbot categories nope"):
        read_chatterbot("builtin:chatterbot:english:nope")


def test_bad_chat_rows_are_named(tmp_path: Path) -> None:
    from textloop.errors import DataError
    from textloop.tasks.generation.data import read_conversations

    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    bad = {"messages": [{"role": "user", "content": "hi"}]}
    src = write_jsonl(tmp_path / "chats.jsonl", [good, bad, good])
    cols = {"prompt_column": "prompt", "target_column": "target", "messages_column": "messages"}
    with pytest.raises(DataError, match=r"chats.jsonl: 1 row\(s\) with no assistant message: .*:2"):
        read_conversations(str(src), cols, drop_invalid=False)
    assert len(read_conversations(str(src), cols, drop_invalid=True)) == 2


# ---- training end to end ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pairs")
    return {
        "train": write_jsonl(d / "train.jsonl", opposite_rows(160, 1)),
        "validation": write_jsonl(d / "val.jsonl", opposite_rows(20, 2)),
    }


@pytest.fixture(scope="module")
def lora_run(tiny_llama: Path, pairs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    from textloop.config import build_config
    from textloop.training.run import train

    out = tmp_path_factory.mktemp("runs") / "opposites"
    cfg = build_config(
        {
            "task": "generation",
            "model": str(tiny_llama),
            "output": str(out),
            "data": {"train": str(pairs["train"]), "validation": str(pairs["validation"])},
            "train": {
                "max_steps": 80,
                "lr": 2e-2,
                "batch_size": 8,
                "max_seq_len": 64,
                "packing": True,
                "eval_every_steps": 40,
                "warmup_ratio": 0.0,
                "log_every_steps": 10,
                "precision": "fp32",  # the numerics these tests compare (auto is bf16 on AMX)
            },
            "lora": {
                "r": 16,
                "alpha": 32,
                "dropout": 0.0,
                "targets": [
                    "q_proj",
                    "k_proj",
                    "v_proj",
                    "o_proj",
                    "gate_proj",
                    "up_proj",
                    "down_proj",
                ],
            },
            "generation": {"eval_samples": 10, "eval_max_new_tokens": 8},
        }
    )
    return train(cfg)


def test_lora_training_lowers_perplexity_and_saves_merged_model(
    lora_run: Any, tok_model: tuple[Any, Any], pairs: dict[str, Path], tiny_llama: Path
) -> None:
    from textloop.runs import load_run

    _, base = tok_model
    before = lora_run.task.evaluate(
        base,
        lora_run.task.encode_source(
            str(pairs["validation"]), lora_run.config.data.model_dump(), False
        ),
        8,
    )
    after = lora_run.metrics["validation"]
    assert after["perplexity"] < 0.5 * before["perplexity"]
    assert after["chrf"] > before["chrf"]
    path = lora_run.path
    assert (path / "adapter" / "adapter_config.json").is_file()
    assert (path / "model" / "model.safetensors").is_file()
    assert "## Samples (validation, greedy)" in (path / "report.md").read_text()
    run = load_run(path)
    assert type(run.model).__name__ == "LlamaForCausalLM"  # merged: a plain checkpoint
    reloaded = run.evaluate(str(pairs["validation"]))
    # merged weights W + BA vs the adapter's Wx + B(Ax): fp32 rounding, ~1e-6 after exp()
    assert reloaded["perplexity"] == pytest.approx(after["perplexity"], rel=1e-4)
    prompts = ["what is the opposite of hot", "what is the opposite of big"]
    merged = [o["text"] for o in run.predict(prompts, max_new_tokens=8)]
    assert all(text.startswith("the opposite is") for text in merged)  # the learned pattern
    # the exact word depends on one CPU's kernels; what the merge promises is the adapter's output
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    adapter = PeftModel.from_pretrained(base_model, str(path / "adapter")).eval()
    unmerged = [o["text"] for o in run.task.predict(adapter, prompts, max_new_tokens=8)]
    assert merged == unmerged


def test_cli_generate_and_chat(
    lora_run: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from textloop.cli.main import main

    assert (
        main(
            ["generate", str(lora_run.path), "what is the opposite of big", "--max-new-tokens", "8"]
        )
        == 0
    )
    said_once = capsys.readouterr().out.strip()
    # the CLI prints what the run's own greedy decoding gives (the word itself is CPU-dependent)
    expected = lora_run.predict(["what is the opposite of big"], max_new_tokens=8)[0]["text"]
    assert said_once == expected and expected.startswith("the opposite is")
    import io

    monkeypatch.setattr(
        "sys.stdin",
        io.StringIO("what is the opposite of up\n/reset\nwhat is the opposite of big\n"),
    )
    assert main(["chat", str(lora_run.path), "--max-new-tokens", "8"]) == 0
    said = capsys.readouterr().out
    after_reset = lora_run.predict(
        [[{"role": "user", "content": "what is the opposite of big"}]], max_new_tokens=8
    )[0]["text"]
    assert said.count("the opposite is") >= 2 and after_reset in said  # a fresh chat after /reset


def test_shipped_generation_config_validates() -> None:
    from textloop.config import load_config

    path = Path(__file__).resolve().parents[1] / "configs" / "generation" / "chatterbot_lora.yaml"
    assert path.read_text().startswith("# textloop train configs/generation/chatterbot_lora.yaml")
    cfg = load_config(path)
    assert cfg.task == "generation" and cfg.model == "embedded:smollm2"


def test_serve_generate_whole_and_streamed(lora_run: Any) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from textloop.serving.app import create_app
    from textloop.serving.sources import RunDirSource

    # the served text is the run's own greedy output (the word itself is CPU-dependent)
    big = lora_run.predict(["what is the opposite of big"], max_new_tokens=8)[0]["text"]
    up = [{"role": "user", "content": "what is the opposite of up"}]
    up_answer = lora_run.predict([up], max_new_tokens=8)[0]["text"]
    assert big.startswith("the opposite is") and up_answer.startswith("the opposite is")
    with TestClient(create_app(RunDirSource(lora_run.path))) as client:
        body = {"prompt": "what is the opposite of big", "max_new_tokens": 8}
        r = client.post("/v1/generate", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["output"]["text"] == big
        with client.stream("POST", "/v1/generate", json={**body, "stream": True}) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            events = [e for e in r.read().decode().split("\n\n") if e.strip()]
        pieces = [json.loads(e[len("data: ") :])["text"] for e in events if e.startswith("data: ")]
        assert len(pieces) > 1 and "".join(pieces).strip() == big
        assert events[-1].startswith("event: done")
        chat = {"messages": up}
        assert client.post("/v1/generate", json=chat).json()["output"]["text"] == up_answer
        assert client.post("/v1/generate", json={}).status_code == 422


# ---- the issue's command, as written ------------------------------------------------------------
def _issue_pairs(tmp_path: Path) -> Path:
    rows = [{"source": r["prompt"], "target": r["target"]} for r in opposite_rows(40, 3)]
    return write_jsonl(tmp_path / "pairs.jsonl", rows)


def test_issue_command_trains_lora_then_generates(
    tiny_llama: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from textloop.cli.main import main

    monkeypatch.chdir(tmp_path)
    _issue_pairs(tmp_path)
    # the issue's command, with the tiny local Llama for embedded:smollm2 and a few steps
    argv = "train --task generation --model {m} --train pairs.jsonl --prompt-column source "
    argv += "--target-column target --lora r=8 --output runs/summarise --max-steps 4"
    assert main(argv.format(m=tiny_llama).split()) == 0
    run_dir = tmp_path / "runs" / "summarise"
    assert (run_dir / "model" / "model.safetensors").is_file()
    adapter = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 8 and adapter["peft_type"] == "LORA"
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    from textloop.runs import load_run

    run = load_run(run_dir)
    assert run.config.data.prompt_column == "source" and run.config.data.target_column == "target"
    assert run.config.lora.enabled and run.config.lora.r == 8
    capsys.readouterr()
    long_text = "Long text " + "the cat sat on the mat " * 10
    assert main(["generate", "runs/summarise", long_text, "--max-new-tokens", "64"]) == 0
    assert capsys.readouterr().out.strip()


def test_issue_command_with_a_missing_prompt_column_writes_nothing(
    tiny_llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from textloop.cli.main import main

    pairs = _issue_pairs(tmp_path)
    out = tmp_path / "runs" / "summarise"
    argv = ["train", "--task", "generation", "--model", str(tiny_llama), "--train", str(pairs)]
    argv += ["--prompt-column", "text", "--target-column", "target", "--lora", "r=8"]
    assert main([*argv, "--output", str(out), "--max-steps", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert "pairs.jsonl" in err and "'text'" in err and "source" in err and "target" in err
    assert not out.exists() and not (tmp_path / "runs").exists()


# ---- examples/customer_service: flagged messages feed the continual loop -----------------------------
def test_customer_service_feedback_is_read_by_the_update_reader(tmp_path: Path) -> None:
    import importlib.util

    from textloop.continual.replay import read_labelled
    from textloop.errors import DataError

    path = Path(__file__).resolve().parents[1] / "examples" / "customer_service" / "assistant.py"
    spec = importlib.util.spec_from_file_location("cs_assistant", path)
    assert spec is not None and spec.loader is not None
    cs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cs)
    feedback = tmp_path / "feedback.jsonl"
    for text, intent in [("my wifi drops", "PlayMusic"), ("rate this novel", "RateBook")]:
        cs.log_flagged(
            feedback,
            {"message": text, "intent": intent, "score": 0.6, "route": "assistant", "answer": "x"},
        )
    rows = [json.loads(line) for line in feedback.read_text().splitlines()]
    assert [r["label"] for r in rows] == [None, None]
    with pytest.raises(DataError, match=r"feedback.jsonl: 2 row\(s\) with empty 'label'"):
        read_labelled(str(feedback), "text", "label")  # a human has not labelled yet
    rows[0]["label"] = "TechSupport"  # a human labels one row: a new intent
    feedback.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "labelled.jsonl"
    assert cs.export_labelled(feedback, out) == 1
    assert read_labelled(str(out), "text", "label") == [
        {"text": "my wifi drops", "label": "TechSupport"}
    ]
    rows[1]["label"] = "RateBook"  # every row labelled: the raw file is update input as it is
    feedback.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [r["label"] for r in read_labelled(str(feedback), "text", "label")] == [
        "TechSupport",
        "RateBook",
    ]
