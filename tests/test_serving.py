"""Deploy stage on a tiny local BERT: export agreement, registry, HTTP contract, hot swap."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import os
import re
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("onnxruntime")
httpx = pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from textloop.artifacts.registry import Registry  # noqa: E402
from textloop.cli.main import main  # noqa: E402
from textloop.errors import ExportError, RegistryError  # noqa: E402
from textloop.runs import load_registered, load_run  # noqa: E402
from textloop.serving.agreement import compare_predictions  # noqa: E402
from textloop.serving.app import create_app, make_server  # noqa: E402
from textloop.serving.batcher import MicroBatcher, QueueFullError  # noqa: E402
from textloop.serving.export import export_run  # noqa: E402
from textloop.serving.sources import RegistrySource, RunDirSource, ServeOptions  # noqa: E402

from .conftest import REPO  # noqa: E402
from .test_training import toy_config  # noqa: E402

KEY = "k3y-for-tests-0123456789"
TEXTS = [
    "the food was excellent",
    "overall the staff was really awful",
    "i think the room was nice",
]


@pytest.fixture(scope="session")
def served(tiny_bert: Path, toy_data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """A trained tiny run with its safetensors and ONNX int8 exports."""
    from textloop.training.run import train

    base = tmp_path_factory.mktemp("serving")
    run = train(toy_config(tiny_bert, toy_data, base / "run", **{"train.epochs": 4}))
    assert run.metrics["test"]["accuracy"] >= 0.9
    st = export_run(base / "run", base / "export-st", format="safetensors")
    q8 = export_run(base / "run", base / "export-int8", format="onnx", quantize="int8")
    return {
        "run": base / "run",
        "st": base / "export-st",
        "int8": base / "export-int8",
        "reports": {"st": st, "int8": q8},
    }


# ---- export --------------------------------------------------------------------------------
def test_export_safetensors_is_exact_and_self_contained(served):
    report = served["reports"]["st"]
    assert report.label_agreement == 1.0 and report.max_prob_diff < 1e-5
    out = served["st"]
    assert (out / "model" / "model.safetensors").is_file() and not (out / "checkpoints").exists()
    saved = json.loads((out / "export.json").read_text())
    assert saved["format"] == "safetensors" and saved["n_sample"] == 60  # the run's test split
    assert load_run(out).predict(TEXTS) == load_run(served["run"]).predict(TEXTS)


def test_export_onnx_int8_is_fused_quantized_and_agrees(served):
    report = served["reports"]["int8"]
    assert report.fused_ops.get("Attention") == 2  # eager attention export -> fused per layer
    assert report.fused_ops.get("EmbedLayerNormalization") == 1
    assert report.label_agreement >= 0.95 and 0 < report.max_prob_diff <= 0.15
    run = load_run(served["int8"])
    assert type(run.model).__name__ == "OnnxSequenceClassifier"
    preds = run.predict(TEXTS, top_k=2)
    assert [p["label"] for p in preds] == ["pos", "neg", "pos"]
    assert all(abs(sum(t["score"] for t in p["top_k"]) - 1) < 1e-4 for p in preds)
    # batch inference sorts by length and restores order: one-by-one equals batched
    alone = [run.predict([t])[0]["label"] for t in TEXTS]
    assert alone == [p["label"] for p in preds]
    # and the CLI predicts from the exported folder like from a run
    assert main(["predict", str(served["int8"]), TEXTS[1]]) == 0


def test_int8_export_keeps_outlier_matmuls_in_fp32(served, tmp_path):
    """A channel after GELU 1000x larger than the rest (the outliers of pre-trained
    transformers): one int8 scale per tensor crushes the other channels, so the export falls
    back to the plan that keeps the feed-forward output projections in fp32, and says so."""
    from safetensors.torch import save_file

    from textloop.serving.export import int8_plans

    copy = tmp_path / "outlier-run"
    shutil.copytree(served["run"], copy)
    run = load_run(copy)
    state = {k: v.clone().contiguous() for k, v in run.model.state_dict().items()}
    for layer in range(2):
        prefix = f"bert.encoder.layer.{layer}."
        state[prefix + "intermediate.dense.bias"][0] = 1e4  # GELU(x) = x on every token
        state[prefix + "output.dense.weight"] *= 20.0  # the block's output matters
        state[prefix + "output.dense.weight"][:, 0] = 0.0  # but not the outlier, in fp32
    save_file(state, str(copy / "model" / "model.safetensors"))
    # the toy model is so sure of itself that probabilities barely move: all-int8 0.006 here,
    # with the projections in fp32 0.0002 (as the unmodified run), so the bound is tight
    report = export_run(copy, tmp_path / "int8", format="onnx", quantize="int8", max_prob_diff=2e-3)
    tries = [t["plan"] for t in report.int8_tries]
    assert tries[0] == "all" and report.int8_plan != "all", report.int8_tries
    assert report.int8_tries[0]["max_prob_diff"] > 2e-3  # all-int8 was refused
    assert report.int8_fp32_matmuls == 2 and report.max_prob_diff <= 2e-3
    saved = json.loads((tmp_path / "int8" / "export.json").read_text())
    assert saved["int8_plan"] == "ffn-output" and len(saved["int8_tries"]) == 2
    plans = dict(int8_plans(tmp_path / "int8" / "model" / "model.onnx"))
    assert plans.keys() >= {"all"}  # the quantised graph reads back (MatMulInteger now)


def test_export_refuses_disagreement_and_bad_options(served, tmp_path):
    out = tmp_path / "strict"
    with pytest.raises(ExportError, match=r"disagrees.*max probability difference"):
        export_run(served["run"], out, format="onnx", quantize="int8", max_prob_diff=0.0)
    assert not out.exists() and not list(tmp_path.iterdir())  # no partial output, no temp dir
    with pytest.raises(ExportError, match="needs --format onnx"):
        export_run(served["run"], out, quantize="int8")
    with pytest.raises(ExportError, match="already exists"):
        export_run(served["run"], served["st"])
    with pytest.raises(ExportError, match="already an ONNX export"):
        export_run(served["int8"], out, format="onnx")


def test_agreement_counts_near_tie_flips_apart():
    def pred(a: float) -> dict[str, Any]:
        top = sorted([("pos", a), ("neg", round(1 - a, 6))], key=lambda x: -x[1])
        return {"label": top[0][0], "score": top[0][1],
                "top_k": [{"label": k, "score": v} for k, v in top]}  # fmt: skip

    ref = [pred(0.51), pred(0.9), pred(0.8)]
    out = [pred(0.49), pred(0.89), pred(0.3)]  # a near-tie flip, a match, a real flip
    overall, max_diff, _, decisive, near_tie_flips = compare_predictions(ref, out)
    assert overall == pytest.approx(1 / 3) and decisive == pytest.approx(1 / 2)
    assert near_tie_flips == 1 and max_diff == pytest.approx(0.5)


# ---- registry ------------------------------------------------------------------------------
def test_registry_promote_rollback_and_audit(served, tmp_path):
    reg = Registry(tmp_path / "reg")
    v1 = reg.add(served["st"], "reviews", actor="ana", reason="first")
    assert (v1.version, v1.stage, v1.format) == (1, "staging", "safetensors")
    assert len(v1.config_hash) == 64 and v1.metrics["test"]["accuracy"] >= 0.9
    assert set(v1.files) >= {"config.yaml", "labels.json", "model/model.safetensors"}
    assert all(len(h) == 64 for h in v1.files.values())
    assert reg.production("reviews") is None
    reg.promote("reviews", 1, actor="ana", reason="good enough")
    v2 = reg.add(served["int8"], "reviews", actor="bo")
    assert (v2.version, v2.format) == (2, "onnx-int8")
    reg.promote("reviews", 2, actor="bo", reason="faster")
    assert reg.get("reviews", 1).stage == "archived" and reg.production_version("reviews") == 2
    back = reg.rollback("reviews", actor="cy", reason="p99 regressed")
    assert back.version == 1 and back.stage == "production"
    assert reg.get("reviews", 2).stage == "archived"
    with pytest.raises(RegistryError, match="no earlier production version"):
        reg.rollback("reviews")
    log = reg.audit_log("reviews")
    assert [(e["action"], e["version"]) for e in log] == [
        ("add", 1), ("promote", 1), ("add", 2), ("archive", 1), ("promote", 2),
        ("rollback-from", 2), ("rollback", 1),
    ]  # fmt: skip
    assert log[-1]["actor"] == "cy" and log[-1]["reason"] == "p99 regressed" and log[-1]["at"]
    mv, run = load_registered(reg, "reviews")
    assert mv.version == 1 and run.predict(TEXTS[:1])[0]["label"] == "pos"
    with pytest.raises(RegistryError, match=r"no version 7; versions: 1, 2"):
        reg.promote("reviews", 7)
    with pytest.raises(RegistryError, match=r"no model named 'nope'.*registered: reviews"):
        load_registered(reg, "nope")
    with pytest.raises(RegistryError, match="invalid model name"):
        reg.add(served["st"], "../evil")


@pytest.mark.parametrize("damage", ["modify", "remove", "add_pickle"])
def test_registry_refuses_tampered_files(served, tmp_path, damage):
    reg = Registry(tmp_path / "reg")
    mv = reg.add(served["st"], "m")
    reg.promote("m", 1)
    weights = mv.path / "model" / "model.safetensors"
    if damage == "modify":
        data = bytearray(weights.read_bytes())
        data[-1] ^= 1  # one flipped bit in a weight
        weights.write_bytes(bytes(data))
        expected = "model/model.safetensors has sha256 .* \\(modified\\)"
    elif damage == "remove":
        (mv.path / "labels.json").unlink()
        expected = "labels.json is missing"
    else:
        (mv.path / "model" / "pytorch_model.bin").write_bytes(b"not a pickle, but refused")
        expected = "model/pytorch_model.bin was added"
    with pytest.raises(RegistryError, match=expected):
        load_registered(reg, "m")
    with pytest.raises(RegistryError, match="integrity check"):
        RegistrySource(reg, "m").load()


def test_registry_add_refuses_pickle_and_unfinished_folders(served, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(served["st"], bad)
    (bad / "model" / "pytorch_model.bin").write_bytes(b"x")
    reg = Registry(tmp_path / "reg")
    with pytest.raises(RegistryError, match=r"pickle files \(pytorch_model.bin\)"):
        reg.add(bad, "m")
    with pytest.raises(RegistryError, match=r"not a finished run or export: config.yaml missing"):
        reg.add(tmp_path, "m")
    assert reg.versions() == []


def test_registry_refuses_links_nested_pickles_and_odd_names(served, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("a host name\n")
    reg = Registry(tmp_path / "reg")
    linked = tmp_path / "linked"
    shutil.copytree(served["st"], linked)
    (linked / "model" / "tokenizer.json").unlink()
    (linked / "model" / "tokenizer.json").symlink_to(outside)  # e.g. /etc/hostname
    with pytest.raises(
        RegistryError, match=r"model/tokenizer.json is a symbolic link \(to .*outside"
    ):
        reg.add(linked, "m")
    top = tmp_path / "top"
    shutil.copytree(served["st"], top)
    (top / "report.md").unlink()
    (top / "report.md").symlink_to(outside)
    with pytest.raises(RegistryError, match=r"report\.md is a symbolic link"):
        reg.add(top, "m")
    nested = tmp_path / "nested"
    shutil.copytree(served["st"], nested)
    (nested / "model" / "sub").mkdir()
    (nested / "model" / "sub" / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(RegistryError, match=r"pickle files \(sub/pytorch_model.bin\)"):
        reg.add(nested, "m")
    for name in ("m\n", "m\r", "../m", ""):
        with pytest.raises(RegistryError, match="invalid model name"):
            reg.add(served["st"], name)
    assert reg.versions() == []


@pytest.mark.parametrize("swap", ["file_symlink", "folder_symlink", "hard_link"])
def test_registry_verify_refuses_links_to_identical_copies(served, tmp_path, swap):
    reg = Registry(tmp_path / "reg")
    mv = reg.add(served["st"], "m")
    copy = tmp_path / "copy"
    shutil.copytree(mv.path, copy)  # identical bytes: hashes alone would pass
    weights = mv.path / "model" / "model.safetensors"
    if swap == "file_symlink":
        weights.unlink()
        weights.symlink_to(copy / "model" / "model.safetensors")
        expected = "model/model.safetensors is a symbolic link"
    elif swap == "folder_symlink":
        shutil.rmtree(mv.path)
        mv.path.symlink_to(copy, target_is_directory=True)
        expected = "outside the registry"
    else:
        weights.unlink()
        os.link(copy / "model" / "model.safetensors", weights)
        expected = r"model/model.safetensors is hard-linked \(2 names\)"
    with pytest.raises(RegistryError, match=expected):
        reg.verify("m", 1)
    with pytest.raises(RegistryError, match=expected):
        load_registered(reg, "m", 1)


def test_registry_promote_and_rollback_verify_first(served, tmp_path):
    reg = Registry(tmp_path / "reg")
    reg.add(served["st"], "m")
    reg.add(served["st"], "m")
    v3 = reg.add(served["st"], "m")
    reg.promote("m", 1)
    reg.promote("m", 2)
    (v3.path / "labels.json").write_text("{}")
    with pytest.raises(
        RegistryError,
        match=r"cannot promote it to production: m v3 .* labels.json .* "
        r"\(production stays version 2\)",
    ):
        reg.promote("m", 3)
    assert reg.production_version("m") == 2 and reg.get("m", 3).stage == "staging"
    reg.promote("m", 3, stage="archived")  # archiving a broken version is allowed
    v1 = reg.get("m", 1)
    (v1.path / "config.yaml").write_text("tampered: true\n")
    with pytest.raises(RegistryError, match=r"cannot roll back to it: m v1 .*config.yaml"):
        reg.rollback("m")
    assert reg.production_version("m") == 2
    with pytest.raises(RegistryError, match=r"no version 7; versions: 1, 2, 3"):
        reg.promote("m", 7)


def test_registry_cli(served, tmp_path, capsys):
    r = ["--registry", str(tmp_path / "reg")]
    assert main(["registry", "add", str(served["st"]), "--name", "reviews", *r]) == 0
    assert "reviews version 1: staging" in capsys.readouterr().out
    assert main(["registry", "promote", "reviews", "1", "--reason", "ship it", *r]) == 0
    assert main(["registry", "list", *r]) == 0
    out = capsys.readouterr().out
    assert "production" in out and "macro-F1" in out
    assert main(["registry", "show", "reviews", "--json", *r]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["audit"][-1]["reason"] == "ship it"
    assert main(["registry", "verify", "reviews", *r]) == 0
    assert main(["registry", "rollback", "reviews", *r]) == 2
    assert "no earlier production version" in capsys.readouterr().err


# ---- batcher -------------------------------------------------------------------------------
def test_batcher_batches_concurrent_requests_in_order():
    calls: list[int] = []

    def predict(inputs, pairs, options):
        calls.append(len(inputs))
        time.sleep(0.01)
        if "boom" in inputs:
            raise ValueError("bad input")
        return [f"{x}:{options['top_k']}" for x in inputs]

    async def scenario() -> None:
        b = MicroBatcher(predict, max_batch_size=8, max_wait_ms=5, max_queue=40)
        await b.start()
        reqs = [[f"r{i}a", f"r{i}b"] for i in range(12)]
        results = await asyncio.gather(*(b.submit(r, None, {"top_k": 1}) for r in reqs))
        assert results == [[f"{x}:1" for x in r] for r in reqs]
        assert max(calls) == 8 and len(calls) < 12  # batched, never over max_batch_size
        # different options never share a batch; a failing request does not fail its neighbours
        calls.clear()
        ok, bad, other = await asyncio.gather(
            b.submit(["x"], None, {"top_k": 1}),
            b.submit(["boom"], None, {"top_k": 1}),
            b.submit(["y"], None, {"top_k": 2}),
            return_exceptions=True,
        )
        assert ok == ["x:1"] and other == ["y:2"] and isinstance(bad, ValueError)
        with pytest.raises(QueueFullError):
            await b.submit(["z"] * 41)
        await b.stop()

    asyncio.run(scenario())


# ---- HTTP API ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client(served) -> Iterator[TestClient]:
    opts = ServeOptions(max_texts=4, max_chars=200, max_body_bytes=4000, api_key=KEY)
    with TestClient(create_app(RunDirSource(served["int8"]), opts)) as c:
        yield c


def test_api_predict_model_health_metrics(client):
    r = client.post("/v1/predict", json={"inputs": TEXTS, "top_k": 2})
    assert r.status_code == 200
    body = r.json()
    assert body["model"] == {"name": "export-int8", "version": 0}
    assert [p["label"] for p in body["predictions"]] == ["pos", "neg", "pos"]
    assert len(body["predictions"][0]["top_k"]) == 2
    one = client.post("/v1/predict", json={"inputs": "the music was superb"}).json()
    assert len(one["predictions"]) == 1 and one["predictions"][0]["label"] == "pos"
    info = client.get("/v1/model").json()
    assert info["labels"] == ["neg", "pos"] and info["format"] == "onnx-int8"
    assert info["metrics"]["test"]["accuracy"] >= 0.9 and "per_class" not in info["metrics"]["test"]
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["status"] == "ready"
    m = client.get("/metrics")
    assert m.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert 'textloop_requests_total{path="/v1/predict",code="200"}' in m.text
    assert 'textloop_batch_size_bucket{le="4"}' in m.text
    assert "textloop_request_duration_seconds_count" in m.text
    schema = client.get("/openapi.json").json()
    assert {"/v1/predict", "/v1/model", "/healthz", "/readyz", "/metrics"} <= set(schema["paths"])


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"json": {"inputs": ["a"] * 5}}, 413, "too_many_texts"),
        ({"json": {"inputs": ["a" * 201]}}, 413, "text_too_long"),
        ({"content": b'{"inputs": ["' + b"a" * 5000 + b'"]}'}, 413, "body_too_large"),
        ({"content": b'{"inputs": ['}, 422, "invalid_request"),
        ({"content": b"hello", "headers": {"content-type": "text/plain"}}, 422, "invalid_request"),
        ({"content": b'{"inputs": ["\xff\xfe"]}'}, 422, "invalid_request"),  # not UTF-8
        (
            {
                "content": b'{"inputs": ["caf\xe9"]}',
                "headers": {"content-type": "application/json; charset=latin-1"},
            },
            422,
            "invalid_request",
        ),
        ({"json": ["a list, not an object"]}, 422, "invalid_request"),
        ({"json": {"inputs": [1, None]}}, 422, "invalid_request"),
        ({"json": {"input": ["typo"]}}, 422, "invalid_request"),
        ({"json": {"inputs": ["x"], "top_k": 0}}, 422, "invalid_request"),
        ({"json": {"inputs": []}}, 422, "no_inputs"),
        ({"json": {"inputs": ["  "]}}, 422, "empty_text"),
        ({"json": {"inputs": ["\u0000"]}}, 422, "empty_text"),  # control only
        ({"json": {"inputs": ["ok", "\u200b\u200d\ufeff"]}}, 422, "empty_text"),  # zero-width
        ({"json": {"inputs": ["\u2028\u00a0\t\u3000"]}}, 422, "empty_text"),  # separators
        ({"content": b'{"inputs": ["\\ud800"]}'}, 422, "invalid_text"),
        ({"json": {"inputs": ["x"], "pairs": ["y"]}}, 422, "pairs_not_supported"),
    ],
)
def test_api_rejects_bad_requests_with_json_errors(client, kwargs, status, code):
    kwargs.setdefault("headers", {"content-type": "application/json"})
    r = client.post("/v1/predict", **kwargs)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"]


@pytest.mark.parametrize(
    ("path", "content_type", "says"),
    [
        ("/v1/feedback", "application/x-www-form-urlencoded", '{"label": "a label", "text"'),
        ("/v1/feedback", None, "this request has no content-type"),
        ("/v1/explain", "text/plain", '{"inputs": ["a text", ...], "steps": 50}'),
        ("/v1/predict", "application/x-www-form-urlencoded", '{"inputs": ["a text", ...]}'),
    ],
)
def test_api_wrong_content_type_says_what_the_route_takes(client, path, content_type, says):
    """curl -d without -H sends application/x-www-form-urlencoded."""
    headers = {"x-api-key": KEY} | ({"content-type": content_type} if content_type else {})
    r = client.post(path, content=b'{"label": "pos", "text": "x"}', headers=headers)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    message = r.json()["error"]["message"]
    assert f"POST {path} takes a JSON body like" in message and says in message
    assert "content-type: application/json" in message


def test_docs_error_table_lists_every_code_the_server_sends():
    source = "".join(p.read_text() for p in (REPO / "src/textloop/serving").glob("*.py"))
    sent = set(re.findall(r'(?:ApiError|error_response)\(\s*(\d{3}),\s*"([a-z_]+)"', source))
    sent |= {("404", "not_found"), ("405", "method_not_allowed")}  # the HTTP layer's, mapped
    docs = (REPO / "docs/serving.md").read_text()
    table = docs[docs.index("**Error codes**") :]
    rows = re.findall(r"^\| (\d{3}|other 4xx) \| (.+?) \|", table, re.M)
    documented = {
        (status, code) for status, codes in rows for code in re.findall(r"`(\w+)`", codes)
    }
    assert len(sent) > 20 and sent <= documented, sorted(sent - documented)


def test_docs_curl_examples_send_a_content_type():
    docs = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    for doc in docs:
        for block in re.findall(r"curl .*?(?:\n(?!\s)|\Z)", doc.read_text(), re.S):
            if " -d " in block or "--data" in block:
                assert "content-type: application/json" in block, f"{doc.name}: {block}"


def test_api_chunked_body_over_limit_is_413(client):
    chunks = (b"x" * 1000 for _ in range(10))  # no content-length: counted as it streams
    r = client.post("/v1/predict", content=chunks, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"


def test_api_routing_errors_and_api_key(client):
    assert client.get("/v1/predict").json()["error"]["code"] == "method_not_allowed"
    assert client.get("/nope").status_code == 404
    assert client.post("/v1/admin/reload").status_code == 401
    wrong = client.post("/v1/admin/reload", headers={"x-api-key": KEY[:-1] + "x"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    ok = client.post("/v1/admin/reload", headers={"authorization": f"Bearer {KEY}"})
    assert ok.status_code == 200 and ok.json()["version"] == 0


def test_api_write_endpoints_off_without_key(served):
    with TestClient(create_app(RunDirSource(served["int8"]))) as c:
        r = c.post("/v1/admin/reload", headers={"x-api-key": KEY})
        assert r.status_code == 403 and r.json()["error"]["code"] == "writes_disabled"


def test_serve_cli_refuses_bad_setup(served, tmp_path, capsys):
    assert main(["serve"]) == 2
    assert "serve what?" in capsys.readouterr().err
    (tmp_path / "key.txt").write_text("short\n")
    assert main(["serve", str(served["int8"]), "--api-key-file", str(tmp_path / "key.txt")]) == 2
    assert "at least 16 characters" in capsys.readouterr().err
    assert main(["serve", str(served["int8"]), "--explain-max-steps", "5000"]) == 2
    assert "steps^3" in capsys.readouterr().err
    reg = Registry(tmp_path / "reg")
    reg.add(served["st"], "m")
    assert main(["serve", "--registry", str(reg.root), "--name", "m"]) == 2
    assert "no production version" in capsys.readouterr().err


# ---- hot swap under load -------------------------------------------------------------------
@contextmanager
def live_server(app: Any) -> Iterator[str]:
    """Run ``app`` with uvicorn on a free loopback port in a thread."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = make_server(app, log_level="warning")
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def test_hot_swap_under_concurrent_load_drops_nothing(served, tmp_path):
    reg = Registry(tmp_path / "reg")
    reg.add(served["st"], "reviews")  # v1: PyTorch
    reg.add(served["int8"], "reviews")  # v2: ONNX int8
    reg.promote("reviews", 1)
    opts = ServeOptions(poll_seconds=0.05, max_wait_ms=1)
    app = create_app(RegistrySource(reg, "reviews"), opts)
    seen: list[list[int]] = [[] for _ in range(6)]  # versions each client got, in order
    failures: list[str] = []
    stop = threading.Event()

    def client_loop(url: str, versions: list[int]) -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            while not stop.is_set():
                try:
                    r = c.post("/v1/predict", json={"inputs": TEXTS})
                    if r.status_code != 200:
                        failures.append(f"{r.status_code} {r.text}")
                        continue
                    body = r.json()
                    if [p["label"] for p in body["predictions"]] != ["pos", "neg", "pos"]:
                        failures.append(f"wrong predictions {body}")
                    versions.append(body["model"]["version"])
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))

    def wait_for(version: int) -> None:
        """Until the server reports ``version`` and every client has since got an answer."""
        deadline = time.monotonic() + 30
        while httpx.get(f"{url}/v1/model").json()["version"] != version:
            assert time.monotonic() < deadline, f"no swap to version {version}"
            time.sleep(0.02)
        marks = [len(v) for v in seen]
        while any(len(v) < m + 2 for v, m in zip(seen, marks)):
            assert time.monotonic() < deadline and not failures, failures[:3]
            time.sleep(0.02)

    with live_server(app) as url:
        clients = [threading.Thread(target=client_loop, args=(url, v)) for v in seen]
        for t in clients:
            t.start()
        wait_for(1)
        reg.promote("reviews", 2, reason="swap under load")
        wait_for(2)
        reg.rollback("reviews")
        wait_for(1)
        stop.set()
        for t in clients:
            t.join()
        metrics = httpx.get(f"{url}/metrics").text
    assert failures == []
    for versions in seen:  # each client saw 1 ... 2 ... 1, never interleaved
        changes = [b for a, b in itertools.pairwise(versions) if a != b]
        assert versions[0] == 1 and changes == [2, 1], versions
    assert "textloop_model_swaps_total 3" in metrics  # initial load + 2 swaps


def test_hot_swap_to_tampered_version_keeps_serving(served, tmp_path):
    reg = Registry(tmp_path / "reg")
    reg.add(served["st"], "m")
    v2 = reg.add(served["st"], "m")
    reg.promote("m", 1)
    opts = ServeOptions(poll_seconds=0, api_key=KEY)
    with TestClient(create_app(RegistrySource(reg, "m"), opts)) as c:
        reg.promote("m", 2)  # verified here; damaged between the promotion and the swap
        (v2.path / "labels.json").write_text("{}")
        r = c.post("/v1/admin/reload", headers={"x-api-key": KEY})
        assert r.status_code == 200 and r.json()["version"] == 1  # refused v2, kept v1
        assert c.post("/v1/predict", json={"inputs": TEXTS[:1]}).status_code == 200
        assert 'textloop_errors_total{kind="swap_failed"} 1' in c.get("/metrics").text


# ---- explain beside predict ----------------------------------------------------------------
LONG = "the food was excellent and the staff were lovely but the room was awful " * 3


def test_explain_and_predict_concurrently_give_no_5xx(served):
    """Captum hooks the embeddings while it integrates: predictions must never run through them."""
    app = create_app(RunDirSource(served["st"]), ServeOptions(max_wait_ms=1))
    n_predict, n_explain = 60, 6
    statuses: list[int] = []
    wrong: list[Any] = []

    def predicting(url: str) -> None:
        with httpx.Client(base_url=url, timeout=60) as c:
            for _ in range(n_predict // 6):
                r = c.post("/v1/predict", json={"inputs": TEXTS})
                statuses.append(r.status_code)
                if r.status_code == 200 and [p["label"] for p in r.json()["predictions"]] != [
                    "pos",
                    "neg",
                    "pos",
                ]:
                    wrong.append(r.json())

    def explaining(url: str) -> None:
        with httpx.Client(base_url=url, timeout=60) as c:
            for _ in range(n_explain // 2):
                r = c.post("/v1/explain", json={"inputs": [LONG, TEXTS[1]], "steps": 150})
                statuses.append(r.status_code)

    started = time.monotonic()
    with live_server(app) as url:
        threads = [threading.Thread(target=explaining, args=(url,)) for _ in range(2)]
        threads += [threading.Thread(target=predicting, args=(url,)) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    print(f"{len(statuses)} requests in {time.monotonic() - started:.1f} s")
    assert sorted(set(statuses)) == [200] and len(statuses) == n_predict + n_explain
    assert wrong == []


def test_explain_limits_and_api_key(served):
    opts = ServeOptions(
        api_key=KEY,
        max_chars=300,
        explain_max_texts=2,
        explain_max_steps=40,
        explain_max_token_steps=1000,
    )
    key = {"x-api-key": KEY}
    with TestClient(create_app(RunDirSource(served["st"]), opts)) as c:
        one = {"inputs": [TEXTS[0]], "steps": 20}
        assert c.post("/v1/explain", json=one).status_code == 401  # a key is set: explain needs it
        assert c.post("/v1/explain", json=one, headers=key).status_code == 200
        for body, status, code in [
            ({"inputs": TEXTS, "steps": 20}, 413, "too_many_texts"),
            ({"inputs": TEXTS[:1], "steps": 41}, 413, "too_many_steps"),
            ({"inputs": [LONG], "steps": 40}, 413, "explain_too_large"),  # 32 tokens x 40 > 1000
            ({"inputs": ["a" * 301], "steps": 4}, 413, "text_too_long"),
            ({"inputs": ["\u200b\u0000 "], "steps": 4}, 422, "empty_text"),
            ({"inputs": ["x"], "steps": 1}, 422, "invalid_request"),
            ({"inputs": ["x"], "steps": "20"}, 422, "invalid_request"),
        ]:
            r = c.post("/v1/explain", json=body, headers=key)
            assert (r.status_code, r.json()["error"]["code"]) == (status, code), r.text
        msg = c.post("/v1/explain", json={"inputs": [LONG], "steps": 40}, headers=key).json()
        assert (
            "40 steps x 32 tokens = 1280 token-steps; the limit is 1000" in msg["error"]["message"]
        )
    opened = ServeOptions(api_key=KEY, explain_auth="open")
    with TestClient(create_app(RunDirSource(served["st"]), opened)) as c:
        assert c.post("/v1/explain", json={"inputs": ["x"], "steps": 4}).status_code == 200
    with TestClient(create_app(RunDirSource(served["st"]), ServeOptions(explain_auth="key"))) as c:
        r = c.post("/v1/explain", json={"inputs": ["x"], "steps": 4})
        assert r.status_code == 403 and r.json()["error"]["code"] == "writes_disabled"


HUGE = ServeOptions(explain_max_texts=10**4, explain_max_token_steps=10**12, max_wait_ms=1)
SLOW_EXPLAIN = {"inputs": [LONG] * 400, "steps": 200}  # minutes of work for the tiny BERT


def test_explain_stops_at_its_time_limit_and_leaves_the_model_clean(served):
    opts = dataclasses.replace(HUGE, explain_timeout_s=0.5)
    with TestClient(create_app(RunDirSource(served["st"]), opts)) as c:
        started = time.monotonic()
        r = c.post("/v1/explain", json=SLOW_EXPLAIN)
        assert r.status_code == 503 and r.json()["error"]["code"] == "timeout", r.text
        assert time.monotonic() - started < 10  # one text's pass after the limit, not a minute
        after = c.post("/v1/predict", json={"inputs": TEXTS}).json()  # Captum's hook is gone
        assert [p["label"] for p in after["predictions"]] == ["pos", "neg", "pos"]


def test_explain_stops_when_the_client_leaves_and_when_the_server_exits(served):
    def explain_503s(url: str) -> int:
        text = httpx.get(f"{url}/metrics").text
        line = 'textloop_requests_total{path="/v1/explain",code="503"} '
        return next((int(float(x.split()[-1])) for x in text.splitlines() if x.startswith(line)), 0)

    with live_server(create_app(RunDirSource(served["st"]), HUGE)) as url:
        port = int(url.rsplit(":", 1)[1])
        body = json.dumps(SLOW_EXPLAIN).encode()
        with socket.create_connection(("127.0.0.1", port)) as raw:
            raw.sendall(
                b"POST /v1/explain HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                + f"content-length: {len(body)}\r\n\r\n".encode()
                + body
            )
            time.sleep(0.5)
        gone = time.monotonic()  # the client hung up mid-explanation
        while explain_503s(url) < 1:
            assert time.monotonic() - gone < 10, "the explanation kept running for nobody"
            time.sleep(0.1)
        r = httpx.post(f"{url}/v1/predict", json={"inputs": TEXTS}, timeout=10)
        assert [p["label"] for p in r.json()["predictions"]] == ["pos", "neg", "pos"]

    app = create_app(RunDirSource(served["st"]), HUGE)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = make_server(app, log_level="warning")
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    answers: list[httpx.Response] = []
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    asking = threading.Thread(
        target=lambda: answers.append(
            httpx.post(f"{url}/v1/explain", json=SLOW_EXPLAIN, timeout=60)
        )
    )
    asking.start()
    time.sleep(0.5)
    stopping = time.monotonic()
    server.should_exit = True  # what uvicorn's SIGTERM handler does
    thread.join(timeout=30)
    asking.join(timeout=30)
    sock.close()
    assert not thread.is_alive() and time.monotonic() - stopping < 5
    assert answers[0].status_code == 503 and answers[0].json()["error"]["code"] == "not_ready"


# ---- bodies over the limit -----------------------------------------------------------------
def _response_head(raw: socket.socket) -> bytes:
    raw.settimeout(30)
    head = b""
    while b"\r\n\r\n" not in head:
        data = raw.recv(65536)
        assert data, f"connection closed before a response: {head!r}"
        head += data
    return head.lower()


def test_body_over_limit_always_gets_its_413(served):
    """The rest of the body is read before the answer, so the client never sees a reset."""
    app = create_app(RunDirSource(served["int8"]), ServeOptions(max_body_bytes=1_048_576))
    body = b'{"inputs": ["' + b"a" * (4 * 1024 * 1024) + b'"]}'
    with live_server(app) as url:
        for _ in range(5):
            req = urllib.request.Request(
                f"{url}/v1/predict", data=body, headers={"content-type": "application/json"}
            )
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(req, timeout=30)
            assert err.value.code == 413
            assert json.loads(err.value.read())["error"]["code"] == "body_too_large"
        port = int(url.rsplit(":", 1)[1])
        start = b"POST /v1/predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        with socket.create_connection(("127.0.0.1", port)) as raw:  # chunked: no length given
            raw.sendall(start + b"transfer-encoding: chunked\r\n\r\n")
            for _ in range(64):
                raw.sendall(b"10000\r\n" + b"a" * 0x10000 + b"\r\n")
            raw.sendall(b"0\r\n\r\n")
            assert _response_head(raw).startswith(b"http/1.1 413")
        with socket.create_connection(("127.0.0.1", port)) as raw:  # past the drain bound
            raw.sendall(start + b"content-length: 1000000000\r\n\r\n")
            head = _response_head(raw)
            assert head.startswith(b"http/1.1 413") and b"connection: close" in head
        ok = httpx.post(f"{url}/v1/predict", json={"inputs": TEXTS[:1]}, timeout=10)
        assert ok.status_code == 200


def test_bf16_serving_answers_like_fp32(served):
    """``--precision bf16`` autocasts the PyTorch forward on the worker thread; weights stay
    fp32, so the scores move only in bf16's third significant digit."""
    answers = {}
    for precision in ("fp32", "bf16"):
        opts = ServeOptions(max_wait_ms=1, precision=precision)
        with TestClient(create_app(RunDirSource(served["st"]), opts)) as c:
            assert c.get("/v1/model").json()["precision"] == precision
            r = c.post("/v1/predict", json={"inputs": TEXTS, "top_k": 2})
            assert r.status_code == 200
            answers[precision] = r.json()["predictions"]
    for a, b in zip(answers["fp32"], answers["bf16"]):
        # bf16 keeps 8 bits of mantissa (relative error 2^-9 per rounding); through the tiny
        # model's 2 layers a probability moves by well under 0.05
        got = {x["label"]: x["score"] for x in b["top_k"]}
        for x in a["top_k"]:
            assert abs(got[x["label"]] - x["score"]) < 0.05
