"""The OpenAI-compatible routes, driven by the official ``openai`` client against a live server.

A tiny Llama (LoRA-trained on the opposites task) serves chat and completions; a tiny BERT
classifier serves embeddings. The Llama's tokenizer and config have no end token, so an answer
always runs to ``max_tokens`` unless a stop string ends it: a stream cut short is visibly cut.
"""

from __future__ import annotations

import base64
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from textloop.artifacts.feedback import FeedbackStore  # noqa: E402
from textloop.runs import load_run  # noqa: E402
from textloop.serving.app import create_app  # noqa: E402
from textloop.serving.embeddings import why_no_embeddings  # noqa: E402
from textloop.serving.sources import RunDirSource, ServeOptions  # noqa: E402

from .test_generation import CHATML, opposite_rows, write_jsonl  # noqa: E402
from .test_serving import KEY, live_server  # noqa: E402
from .test_training import toy_config  # noqa: E402

ASK = [{"role": "user", "content": "what is the opposite of big"}]


# ---- models and servers ----------------------------------------------------------------------
def _tiny_llama_without_eos(out: Path) -> Path:
    """A 2-layer, hidden-32 Llama with a byte-level BPE, a ChatML template and no end token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    corpus = [f"{r['prompt']} {r['target']}" for r in opposite_rows(200, 0)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=["<pad>", "<|im_start|>", "<|im_end|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
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
        initializer_range=0.3,
        pad_token_id=fast.pad_token_id,
        bos_token_id=None,
        eos_token_id=None,  # answers end at max_tokens or a stop string, never earlier
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture(scope="module")
def gen_run(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from textloop.config import build_config
    from textloop.training.run import train

    base = tmp_path_factory.mktemp("openai-gen")
    model = _tiny_llama_without_eos(base / "llama")
    cfg = build_config(
        {
            "task": "generation",
            "model": str(model),
            "output": str(base / "opposites"),
            "data": {"train": str(write_jsonl(base / "train.jsonl", opposite_rows(160, 1)))},
            "train": {
                "max_steps": 80,
                "lr": 2e-2,
                "batch_size": 8,
                "max_seq_len": 64,
                "packing": True,
                "warmup_ratio": 0.0,
                "precision": "fp32",  # the numerics compared below (auto is bf16 on AMX)
            },
            "lora": {
                "r": 16,
                "alpha": 32,
                "dropout": 0.0,
                "targets": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj"],
            },
            "generation": {"eval_samples": 0, "max_new_tokens": 8},
        }
    )
    train(cfg)
    return load_run(base / "opposites")


@pytest.fixture(scope="module")
def enc_run(tiny_bert: Path, toy_data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    from textloop.training.run import train

    out = tmp_path_factory.mktemp("openai-enc") / "reviews"
    train(toy_config(tiny_bert, toy_data, out, **{"train.epochs": 1}))
    return load_run(out)


@pytest.fixture(scope="module")
def gen_server(gen_run: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    store = FeedbackStore(tmp_path_factory.mktemp("openai-store") / "feedback.sqlite")
    opts = ServeOptions(api_key=KEY, max_chars=400, max_wait_ms=200, poll_seconds=0)
    with live_server(create_app(RunDirSource(gen_run.path), opts, store=store)) as url:
        yield SimpleNamespace(url=url, store=store, client=_client(url))


@pytest.fixture(scope="module")
def enc_server(enc_run: Any) -> Iterator[Any]:
    opts = ServeOptions(api_key=KEY, max_texts=8, poll_seconds=0)
    with live_server(create_app(RunDirSource(enc_run.path), opts)) as url:
        yield SimpleNamespace(url=url, client=_client(url))


def _client(url: str, key: str = KEY) -> Any:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)


def _metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return float(re.search(rf"^{re.escape(name)} (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]


# ---- chat and completions ----------------------------------------------------------------------
def test_chat_completion_whole_streamed_and_stopped(gen_run: Any, gen_server: Any) -> None:
    c, name = gen_server.client, gen_run.path.name
    expected = gen_run.predict([ASK], max_new_tokens=8)[0]  # the run's own greedy answer
    assert expected["text"].startswith("the opposite is")  # what the tiny model learned
    r = c.chat.completions.create(model=name, messages=ASK, max_tokens=8)
    assert r.object == "chat.completion" and r.model == name and r.id.startswith("chatcmpl-")
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == expected["text"]
    assert r.choices[0].finish_reason == "length"  # no end token: it ran to max_tokens
    n_prompt = len(gen_run.task.prompt_ids(ASK))
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (n_prompt, 8)
    assert r.usage.total_tokens == n_prompt + 8
    gen_server.store.flush()  # logged like a prediction: the id is the log's
    logged = gen_server.store.get_prediction(r.id.removeprefix("chatcmpl-"))
    assert logged is not None and logged.model == name

    chunks = list(
        c.chat.completions.create(
            model=name,
            messages=ASK,
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == expected["text"]
    finished = [ch.choices[0].finish_reason for ch in chunks if ch.choices]
    assert [f for f in finished if f] == ["length"] and finished[-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8
    assert {ch.id for ch in chunks} == {chunks[0].id}

    stopped = c.chat.completions.create(model=name, messages=ASK, max_tokens=8, stop=["opposite"])
    assert stopped.choices[0].message.content == "the"
    assert stopped.choices[0].finish_reason == "stop"
    pieces = c.chat.completions.create(
        model=name, messages=ASK, max_tokens=8, stop="opposite", stream=True
    )
    assert "".join(ch.choices[0].delta.content or "" for ch in pieces) == "the"


def test_stream_is_server_sent_events_ending_in_done(gen_run: Any, gen_server: Any) -> None:
    body = {"model": gen_run.path.name, "messages": ASK, "max_tokens": 4, "stream": True}
    headers = {"authorization": f"Bearer {KEY}"}
    with httpx.stream(
        "POST", f"{gen_server.url}/v1/chat/completions", json=body, headers=headers
    ) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [e for e in r.read().decode().split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"


def test_completions_one_prompt_a_list_and_a_stream(gen_run: Any, gen_server: Any) -> None:
    c, name = gen_server.client, gen_run.path.name
    prompts = ["what is the opposite of hot", "what is the opposite of up"]
    expected = [o["text"] for o in gen_run.predict(prompts, max_new_tokens=8)]
    one = c.completions.create(model=name, prompt=prompts[0], max_tokens=8)
    assert one.object == "text_completion" and one.choices[0].text == expected[0]
    assert one.usage.prompt_tokens == len(gen_run.task.prompt_ids(prompts[0]))
    both = c.completions.create(model=name, prompt=prompts, max_tokens=8)
    assert [ch.index for ch in both.choices] == [0, 1]
    assert [ch.text for ch in both.choices] == expected  # batched greedy = one by one
    assert both.usage.completion_tokens == 16
    streamed = c.completions.create(model=name, prompt=prompts[1], max_tokens=8, stream=True)
    assert "".join(ch.choices[0].text for ch in streamed) == expected[1]


def test_concurrent_requests_share_a_batch(gen_run: Any, gen_server: Any) -> None:
    c, name = gen_server.client, gen_run.path.name
    expected = gen_run.predict([ASK], max_new_tokens=8)[0]["text"]
    before = (_metric(gen_server.url, "textloop_batch_size_sum"),
              _metric(gen_server.url, "textloop_batch_size_count"))  # fmt: skip
    answers: list[str] = []

    def ask() -> None:
        r = c.chat.completions.create(model=name, messages=ASK, max_tokens=8)
        answers.append(r.choices[0].message.content)

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert answers == [expected] * 4
    texts = _metric(gen_server.url, "textloop_batch_size_sum") - before[0]
    batches = _metric(gen_server.url, "textloop_batch_size_count") - before[1]
    assert texts == 4 and batches < 4  # the 200 ms batch window gathered some of them


def test_models_list_and_unknown_model(gen_run: Any, gen_server: Any) -> None:
    c, name = gen_server.client, gen_run.path.name
    models = c.models.list().data
    assert [m.id for m in models] == [name] and models[0].owned_by == "textloop"
    card = models[0].model_dump()
    assert (card["version"], card["stage"], card["task"]) == (0, "run", "generation")
    assert c.models.retrieve(name).id == name
    with pytest.raises(openai.NotFoundError) as err:
        c.chat.completions.create(model="gpt-4o", messages=ASK)
    assert err.value.status_code == 404
    assert err.value.body["code"] == "model_not_found" and err.value.body["param"] == "model"
    assert err.value.body["type"] == "invalid_request_error"
    assert set(err.value.body) == {"message", "type", "param", "code"}
    assert "'gpt-4o'" in err.value.body["message"] and name in err.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("gpt-4o")


def test_bad_key_is_401_and_the_old_header_still_works(gen_run: Any, gen_server: Any) -> None:
    with pytest.raises(openai.AuthenticationError) as err:
        _client(gen_server.url, key="not-the-key-0123456789").models.list()
    assert err.value.status_code == 401 and err.value.body["code"] == "invalid_api_key"
    assert KEY not in err.value.body["message"]
    bare = httpx.get(f"{gen_server.url}/v1/models")
    assert bare.status_code == 401 and bare.json()["error"]["type"] == "invalid_request_error"
    old = httpx.get(f"{gen_server.url}/v1/models", headers={"x-api-key": KEY})
    assert old.status_code == 200


def test_over_long_prompts_are_400(gen_run: Any, gen_server: Any) -> None:
    c, name = gen_server.client, gen_run.path.name
    long = [{"role": "user", "content": " ".join(["what is the opposite of big"] * 12)}]
    assert len(gen_run.task.prompt_ids(long, truncate=False)) > gen_run.task.max_seq_len
    with pytest.raises(openai.BadRequestError) as err:
        c.chat.completions.create(model=name, messages=long)
    assert err.value.body["code"] == "context_length_exceeded"
    assert err.value.body["param"] == "messages" and "64 tokens" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:
        c.completions.create(model=name, prompt="big " * 60, stream=True)
    assert err.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as err:  # over --max-chars: 400, not 413
        c.chat.completions.create(model=name, messages=[{"role": "user", "content": "a" * 401}])
    assert err.value.body["code"] == "text_too_long"


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
        ({"logprobs": True}, "logprobs"),
        ({"n": 2}, "n"),
        ({"logit_bias": {"17": 5}}, "logit_bias"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        (
            {"extra_body": {"guided_json": {"type": "object"}}},
            "guided_json",
        ),  # undeclared, not neutral
        ({"messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]}, "messages[0]."),
    ],
)
def test_unsupported_parameters_are_a_clear_400(
    gen_run: Any, gen_server: Any, kwargs: dict[str, Any], param: str
) -> None:
    c = gen_server.client
    request = {"model": gen_run.path.name, "messages": ASK, "max_tokens": 2, **kwargs}
    with pytest.raises(openai.BadRequestError) as err:
        c.chat.completions.create(**request)
    assert err.value.status_code == 400
    assert err.value.body["code"] == "unsupported_parameter"
    assert err.value.body["param"].startswith(param)


def test_neutral_values_of_unsupported_parameters_are_accepted(
    gen_run: Any, gen_server: Any
) -> None:
    r = gen_server.client.chat.completions.create(
        model=gen_run.path.name,
        messages=[{"role": "developer", "content": "be brief"}, *ASK],
        max_completion_tokens=2,
        n=1,
        logprobs=False,
        presence_penalty=0,
        tool_choice="none",
        response_format={"type": "text"},
        user="ticket-41",
    )
    assert r.usage.completion_tokens == 2


def test_client_disconnect_mid_stream_frees_the_worker(gen_run: Any, gen_server: Any) -> None:
    c, url, name = gen_server.client, gen_server.url, gen_run.path.name
    tokens_before = _metric(url, "textloop_generated_tokens_total")
    stream = c.chat.completions.create(model=name, messages=ASK, max_tokens=4096, stream=True)
    got = iter(stream)
    while not (next(got).choices[0].delta.content or ""):
        pass  # read until the first piece of text: generation is under way
    assert _metric(url, "textloop_active_streams") == 1
    stream.close()  # the client goes away mid-answer
    left = time.monotonic()
    while _metric(url, "textloop_active_streams") != 0:
        assert time.monotonic() - left < 10, "the stream kept running for nobody"
        time.sleep(0.05)
    settled = _metric(url, "textloop_generated_tokens_total")
    time.sleep(0.5)
    assert _metric(url, "textloop_generated_tokens_total") == settled  # nothing computes
    assert settled - tokens_before < 4096  # cut short: without an end token it ran to 4096
    started = time.monotonic()
    r = c.chat.completions.create(model=name, messages=ASK, max_tokens=8)
    assert r.choices[0].finish_reason == "length" and time.monotonic() - started < 10


def test_errors_take_each_routes_own_shape(gen_run: Any, gen_server: Any) -> None:
    url, auth = gen_server.url, {"authorization": f"Bearer {KEY}"}
    bad_json = httpx.post(
        f"{url}/v1/chat/completions",
        content=b'{"model": ',
        headers={**auth, "content-type": "application/json"},
    )
    assert bad_json.status_code == 400
    assert set(bad_json.json()["error"]) == {"message", "type", "param", "code"}
    assert "POST /v1/chat/completions takes a JSON body like" in bad_json.json()["error"]["message"]
    typo = httpx.post(
        f"{url}/v1/chat/completions", json={"model": "x", "mesages": ASK}, headers=auth
    )
    assert typo.status_code == 400 and typo.json()["error"]["param"] == "messages"
    wrong_method = httpx.get(f"{url}/v1/chat/completions", headers=auth)
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["type"]
    huge = httpx.post(f"{url}/v1/embeddings", content=b"x" * 2_000_000, headers=auth)
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "body_too_large"
    assert huge.json()["error"]["type"] == "invalid_request_error"
    native = httpx.post(f"{url}/v1/generate", json={"prompt": 1})  # the native routes: as before
    assert native.status_code == 422 and set(native.json()["error"]) >= {"code", "message"}
    assert "type" not in native.json()["error"]
    generated = httpx.post(f"{url}/v1/generate", json={"prompt": "hot", "max_new_tokens": 3})
    assert generated.status_code == 200 and generated.json()["output"]["tokens"] == 3


# ---- embeddings ------------------------------------------------------------------------------
def _reference_embeddings(run: Any, texts: list[str]) -> np.ndarray:
    """Mean-pooled, L2-normalised last hidden states, one text at a time (no padding)."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(run.path / "model")
    body = AutoModel.from_pretrained(run.path / "model").eval()
    out = []
    with torch.no_grad():
        for text in texts:
            hidden = body(**tok(text, return_tensors="pt")).last_hidden_state[0]  # (T, H)
            out.append(torch.nn.functional.normalize(hidden.mean(0), dim=0).numpy())
    return np.stack(out)


def test_embeddings_float_and_base64_are_unit_mean_pooled_vectors(
    enc_run: Any, enc_server: Any
) -> None:
    c, name = enc_server.client, enc_run.path.name
    texts = ["the food was excellent", "staff awful", "i think the room was really quite nice"]
    floats = c.embeddings.create(model=name, input=texts, encoding_format="float")
    assert floats.model == name and [d.index for d in floats.data] == [0, 1, 2]
    as_float = np.array([d.embedding for d in floats.data])
    default = c.embeddings.create(model=name, input=texts)  # the client asks for base64
    as_b64 = np.array([d.embedding for d in default.data])
    np.testing.assert_array_equal(as_float.astype(np.float32), as_b64.astype(np.float32))
    raw = httpx.post(
        f"{enc_server.url}/v1/embeddings",
        json={"model": name, "input": texts[0], "encoding_format": "base64"},
        headers={"authorization": f"Bearer {KEY}"},
    ).json()
    decoded = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_array_equal(decoded, as_float[0].astype(np.float32))
    np.testing.assert_allclose(np.linalg.norm(as_float, axis=1), 1.0, atol=1e-6)
    # fp32 on both sides; padding in a batch changes the summation order only: ~1e-7 per value
    np.testing.assert_allclose(as_float, _reference_embeddings(enc_run, texts), atol=1e-5)
    tok = enc_run.task.tokenizer
    assert floats.usage.prompt_tokens == sum(len(tok(t)["input_ids"]) for t in texts)


def test_embeddings_refusals(enc_run: Any, enc_server: Any, gen_run: Any, gen_server: Any) -> None:
    c, name = enc_server.client, enc_run.path.name
    with pytest.raises(openai.BadRequestError) as err:  # an encoder has no chat
        c.chat.completions.create(model=name, messages=ASK)
    assert err.value.body["code"] == "wrong_task" and "/v1/embeddings" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:  # a decoder has no embeddings here
        gen_server.client.embeddings.create(model=gen_run.path.name, input="hot")
    assert err.value.body["code"] == "wrong_task"
    assert "/v1/chat/completions" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:
        c.embeddings.create(model=name, input=["good"] * 9)  # over --max-texts
    assert err.value.body["code"] == "too_many_texts"
    with pytest.raises(openai.BadRequestError) as err:
        c.embeddings.create(model=name, input="the food was good " * 10)  # 32-token model
    assert err.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as err:
        c.embeddings.create(model=name, input=[[101, 2023]])
    assert err.value.body["param"] == "input"
    with pytest.raises(openai.BadRequestError) as err:
        c.embeddings.create(model=name, input="good", dimensions=8)
    assert err.value.body["code"] == "unsupported_parameter"
    with pytest.raises(openai.NotFoundError):
        c.embeddings.create(model="text-embedding-3-small", input="good")


def test_an_onnx_export_says_it_has_no_embeddings() -> None:
    run = SimpleNamespace(task=SimpleNamespace(name="classification"))
    onnx = SimpleNamespace(name="reviews", format="onnx-int8", run=run)
    reason = why_no_embeddings(onnx)  # type: ignore[arg-type]
    assert reason is not None and "ONNX export" in reason and "safetensors" in reason
    assert why_no_embeddings(SimpleNamespace(name="r", format="safetensors", run=run)) is None  # type: ignore[arg-type]
