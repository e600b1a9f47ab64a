"""Load-test ``textloop serve``: PyTorch fp32 vs ONNX int8, micro-batched vs not, vs a pipeline loop.

Starts the real server (``python -m textloop serve``) on loopback for each backend and batching
mode, drives it with 1 / 8 / 32 concurrent keep-alive clients sending batch-1 requests for a
bounded time, and prints JSON: throughput, p50/p95/p99 latency, errors, dropped requests and the
mean batch the server formed. In the same run it times a plain ``transformers.pipeline`` called
in a loop, and each backend's in-process batch-1 latency (no HTTP).

The model is embedded:minilm fine-tuned for only 30 steps on builtin:bbc-news with
max_seq_len 64: accuracy is irrelevant to latency, the shape (6 layers, hidden 384) is what counts.

Two more phases drive the OpenAI-compatible routes (``--phases chat,embeddings``):

- ``chat``: ``POST /v1/chat/completions`` on the embedded decoder (SmolLM2-135M-Instruct in a
  run folder: one LoRA step at lr 1e-12, i.e. the pretrained weights), streamed by 1 and 8
  concurrent clients (time to first token, tokens/s per stream and in all) and, for comparison,
  the same requests unstreamed (micro-batched on the server).
- ``embeddings``: ``POST /v1/embeddings`` on the MiniLM run (PyTorch fp32; an ONNX export has
  no embeddings): batch-1 latency with one client, texts/s at each ``--concurrency`` level and
  with 32 texts per request.

Run (the classify phase takes ~3 minutes; other processes on the host skew the numbers):
    nice -n 19 .venv/bin/python bench/serve_load.py --output bench/results/serve_load.json
    nice -n 19 .venv/bin/python bench/serve_load.py --phases chat,embeddings \
        --output bench/results/serve_openai.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]


def percentiles(values_s: list[float]) -> dict[str, float]:
    if not values_s:
        return {"p50_ms": float("nan"), "p95_ms": float("nan"), "p99_ms": float("nan")}
    q = statistics.quantiles(values_s, n=100, method="inclusive") if len(values_s) > 1 else []
    pick = (lambda i: q[i - 1] * 1000) if q else (lambda i: values_s[0] * 1000)
    return {
        "p50_ms": round(pick(50), 2),
        "p95_ms": round(pick(95), 2),
        "p99_ms": round(pick(99), 2),
    }


# ---- model -----------------------------------------------------------------------------------
def prepare_model(
    work: Path, run_dir: Path | None, export: bool = True
) -> tuple[Path, Path, dict[str, Any]]:
    """A fine-tuned MiniLM run (trained here unless given) and its ONNX int8 export."""
    import textloop
    from textloop.serving.export import export_run

    if run_dir is None:
        run_dir = work / "run"
        if not (run_dir / "metrics.json").is_file():
            cfg = textloop.load_config(
                None,
                extra={
                    "model": "embedded:minilm",
                    "data.train": "builtin:bbc-news",
                    "train.max_steps": 30,
                    "train.max_seq_len": 64,
                    "output": str(run_dir),
                    "overwrite": True,
                },
            )
            textloop.train(cfg)
    int8 = work / "export-int8"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    info: dict[str, Any] = {
        "run": str(run_dir),
        "test_accuracy": metrics.get("test", {}).get("accuracy"),
    }
    if export:
        report = export_run(run_dir, int8, format="onnx", quantize="int8", overwrite=True)
        keys = ("label_agreement", "max_prob_diff", "n_sample", "fused_ops", "seconds")
        info["export_int8"] = {k: getattr(report, k) for k in keys}
    return run_dir, int8, info


def sample_texts(n: int, chars: int) -> list[str]:
    """Short real texts: the opening ``chars`` characters of BBC test articles (300: ~60 tokens)."""
    from textloop.data.readers import read_table

    table = read_table("builtin:bbc-news:test")
    col = "text" if "text" in table.columns else table.columns[0]
    return [str(r[col])[:chars] for r in table.rows[:n]]


def in_process_p50(run_dir: Path, texts: list[str], n: int, bf16: bool = False) -> dict[str, float]:
    """Batch-1 ``Run.predict`` median wall latency and CPU time (all threads), no HTTP;
    ``bf16`` autocasts the forward as ``serve --precision bf16`` does."""
    import contextlib

    import torch

    import textloop

    with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
        return _p50(textloop.load_run(run_dir), texts, n)


def _p50(run: Any, texts: list[str], n: int) -> dict[str, float]:
    for t in texts[:10]:
        run.predict([t])
    times, cpu = [], []
    for i in range(n):
        t0, c0 = time.perf_counter(), time.process_time()
        run.predict([texts[i % len(texts)]])
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {
        "p50_ms": round(statistics.median(times) * 1000, 2),
        "cpu_ms_p50": round(statistics.median(cpu) * 1000, 2),
    }


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pipeline_loop(run_dir: Path, texts: list[str], seconds: float) -> dict[str, Any]:
    """The baseline: transformers.pipeline called in a loop, one text per call."""
    import torch
    from transformers import pipeline

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    clf = pipeline("text-classification", model=str(run_dir / "model"), device=-1)
    kwargs = {"truncation": True, "max_length": 64}
    for t in texts[:10]:
        clf(t, **kwargs)
    lat: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        clf(texts[len(lat) % len(texts)], **kwargs)
        lat.append(time.perf_counter() - t0)
    return {"requests": len(lat), "rps": round(len(lat) / sum(lat), 1), **percentiles(lat)}


# ---- load generator --------------------------------------------------------------------------
async def _client(
    port: int,
    bodies: list[bytes],
    warm_until: float,
    stop_at: float,
    out: dict[str, Any],
    path: str = "/v1/predict",
) -> None:
    """One keep-alive HTTP/1.1 client on a raw socket (light, so the server gets the CPU)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = 0
    try:
        while time.perf_counter() < stop_at:
            body = bodies[i % len(bodies)]
            i += 1
            head = (
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            )
            t0 = time.perf_counter()
            writer.write(head.encode() + body)
            out["sent"] += 1
            status = int((await reader.readline()).split()[1])
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            done = time.perf_counter()
            out["received"] += 1
            if status != 200:
                out["errors"] += 1
            elif t0 >= warm_until:
                out["latency"].append(done - t0)
    except (OSError, asyncio.IncompleteReadError, IndexError, ValueError):
        out["dropped"] += 1
    finally:
        writer.close()


async def drive(
    port: int,
    texts: list[str],
    clients: int,
    seconds: float,
    path: str = "/v1/predict",
    body: Any = lambda texts: {"inputs": texts},
    per_request: int = 1,
) -> dict[str, Any]:
    groups = [texts[i : i + per_request] for i in range(0, len(texts), per_request)]
    bodies = [json.dumps(body(g)).encode() for g in groups if len(g) == per_request]
    out: dict[str, Any] = {"sent": 0, "received": 0, "errors": 0, "dropped": 0, "latency": []}
    start = time.perf_counter()
    warm_until, stop_at = start + 1.0, start + 1.0 + seconds
    await asyncio.gather(
        *(
            _client(port, bodies[k:] + bodies[:k], warm_until, stop_at, out, path)
            for k in range(clients)
        )
    )
    lat = out.pop("latency")
    measured = max(time.perf_counter() - warm_until, 1e-9)
    out["dropped"] += out["sent"] - out["received"]
    return {"clients": clients, "requests": len(lat), "rps": round(len(lat) / measured, 1),
            **percentiles(lat), **out}  # fmt: skip


def _batch_stats(port: int) -> tuple[float, float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    get = lambda name: float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))  # noqa: E731
    return get("textloop_batch_size_sum"), get("textloop_batch_size_count")


@contextmanager
def running_server(model_dir: Path, *args: str) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """``textloop serve model_dir`` on a free loopback port, ready: (process, port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "textloop", "serve", str(model_dir), "--port", str(port),
           "--poll-seconds", "0", *args]  # fmt: skip
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                assert server.stderr is not None
                raise RuntimeError(f"server did not start: {server.stderr.read().decode()[-2000:]}")
            time.sleep(0.2)
        yield server, port
    finally:
        server.terminate()
        server.wait(timeout=30)


def serve_phase(
    model_dir: Path,
    batch: int,
    texts: list[str],
    levels: list[int],
    seconds: float,
    precision: str = "fp32",
) -> list[dict[str, Any]]:
    """Start the server, drive it at each concurrency level, stop it."""
    batching = ("--max-batch-size", str(batch), "--max-wait-ms", "2", "--precision", precision)
    with running_server(model_dir, *batching) as (server, port):
        rows = []
        for clients in levels:
            before, cpu0 = _batch_stats(port), _cpu_seconds(server.pid)
            row = asyncio.run(drive(port, texts, clients, seconds))
            after, cpu1 = _batch_stats(port), _cpu_seconds(server.pid)
            batches = max(after[1] - before[1], 1)
            row["mean_batch"] = round((after[0] - before[0]) / batches, 2)
            # CPU the server spent per answered request (warm-up included): on a shared host
            # this, unlike wall-clock throughput, does not depend on how much CPU we were given
            row["server_cpu_ms_per_request"] = round(
                1000 * (cpu1 - cpu0) / max(row["received"] - row["errors"], 1), 2
            )
            rows.append(row)
        return rows


# ---- OpenAI routes: chat completions and embeddings -------------------------------------------
def prepare_decoder(work: Path, run_dir: Path | None) -> Path:
    """A run folder holding SmolLM2-135M-Instruct as pretrained: one LoRA step at lr 1e-12
    (LoRA's B starts at zero, so the merged weights are the pretrained ones to fp32 rounding)."""
    if run_dir is not None:
        return run_dir
    run_dir = work / "decoder"
    if (run_dir / "metrics.json").is_file():
        return run_dir
    from textloop.config import build_config
    from textloop.tasks.generation.data import read_chatterbot
    from textloop.training.run import train

    data = work / "chat.jsonl"
    convs = read_chatterbot("builtin:chatterbot:english").items[:32]
    data.write_text("".join(json.dumps({"messages": c}) + "\n" for c in convs), encoding="utf-8")
    train_options = {"max_steps": 1, "lr": 1e-12, "batch_size": 4, "max_seq_len": 256}
    config = {"task": "generation", "model": "embedded:smollm2", "output": str(run_dir)}
    config.update(overwrite=True, data={"train": str(data)}, train=train_options)
    config["generation"] = {"eval_samples": 0}
    train(build_config(config))
    return run_dir


def chat_questions(n: int) -> list[str]:
    """Opening user turns of chatterbot conversations (short questions)."""
    from textloop.tasks.generation.data import read_chatterbot

    items = read_chatterbot("builtin:chatterbot:english").items
    return [c[0]["content"] for c in items if c[0]["role"] == "user"][:n]


async def _chat(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> dict[str, Any]:
    """One chat completion, streamed or not: its timings and completion tokens."""
    t0 = time.perf_counter()
    if not body.get("stream"):
        r = await client.post(url, json=body)
        if r.status_code != 200:
            return {"error": r.status_code}
        tokens = r.json()["usage"]["completion_tokens"]
        return {"tokens": tokens, "seconds": time.perf_counter() - t0}
    first, tokens = None, 0
    async with client.stream("POST", url, json=body) as r:
        if r.status_code != 200:
            await r.aread()
            return {"error": r.status_code}
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue  # blank separators and the closing [DONE]
            data = json.loads(line[6:])
            if "error" in data:
                return {"error": "stream"}
            if data.get("usage"):
                tokens = data["usage"]["completion_tokens"]
            if first is None and any(c["delta"].get("content") for c in data["choices"]):
                first = time.perf_counter()  # the first token with text: what a user waits for
    end = time.perf_counter()
    first = first or end
    return {"tokens": tokens, "seconds": end - t0, "ttft": first - t0, "decode_s": end - first}


async def chat_level(
    port: int, name: str, clients: int, rounds: int, max_tokens: int, stream: bool
) -> dict[str, Any]:
    """``clients`` concurrent clients, each asking ``rounds`` questions one after another."""
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    questions = chat_questions(64)

    def body(question: str, tokens: int) -> dict[str, Any]:
        ask = [{"role": "user", "content": question}]
        out = {"model": name, "messages": ask, "max_tokens": tokens, "temperature": 0}
        if stream:
            out.update(stream=True, stream_options={"include_usage": True})
        return out

    async def one_client(k: int, client: httpx.AsyncClient) -> list[dict[str, Any]]:
        picks = [questions[(k * rounds + r) % len(questions)] for r in range(rounds)]
        return [await _chat(client, url, body(q, max_tokens)) for q in picks]

    async with httpx.AsyncClient(timeout=900) as client:
        await _chat(client, url, body("hi", 2))  # warm-up, not measured
        t0 = time.perf_counter()
        done = await asyncio.gather(*(one_client(k, client) for k in range(clients)))
        wall = time.perf_counter() - t0
    results = [x for xs in done for x in xs]
    ok = [x for x in results if "error" not in x]
    tokens = sum(x["tokens"] for x in ok)
    row: dict[str, Any] = {
        "mode": "stream" if stream else "whole",
        "clients": clients,
        "requests": len(results),
        "errors": len(results) - len(ok),
        "completion_tokens": tokens,
        "wall_s": round(wall, 2),
        "tokens_per_s_all_clients": round(tokens / wall, 1),
    }
    if stream and ok:
        row["ttft"] = percentiles([x["ttft"] for x in ok])
        rates = [(x["tokens"] - 1) / x["decode_s"] for x in ok if x["tokens"] > 1 and x["decode_s"]]
        row["tokens_per_s_per_stream_p50"] = round(statistics.median(rates), 1) if rates else None
    elif ok:
        row["latency"] = percentiles([x["seconds"] for x in ok])
    return row


def chat_phase(decoder: Path, levels: list[int], rounds: int, max_tokens: int) -> dict[str, Any]:
    """Streamed, then whole (micro-batched) chat completions at each concurrency level."""
    with running_server(decoder) as (_, port):
        rows = [
            asyncio.run(chat_level(port, decoder.name, clients, rounds, max_tokens, stream))
            for stream in (True, False)
            for clients in levels
        ]
    about = f"embedded:smollm2 as pretrained, greedy, max_tokens {max_tokens} ({decoder})"
    return {"model": about, "rounds_per_client": rounds, "rows": rows}


def embeddings_phase(
    run_dir: Path, texts: list[str], levels: list[int], seconds: float
) -> dict[str, Any]:
    """``/v1/embeddings`` on the fp32 run: batch-1 at each level, then 32 texts per request."""

    def body(texts: list[str]) -> dict[str, Any]:
        return {"model": run_dir.name, "input": texts}

    rows = []
    with running_server(run_dir) as (_, port):
        for clients, per in [(c, 1) for c in levels] + [(1, 32)]:
            before = _batch_stats(port)
            row = asyncio.run(drive(port, texts, clients, seconds, "/v1/embeddings", body, per))
            after = _batch_stats(port)
            row["texts_per_request"] = per
            row["texts_per_s"] = round(row["rps"] * per, 1)
            row["mean_batch"] = round((after[0] - before[0]) / max(after[1] - before[1], 1), 2)
            rows.append(row)
    return {"model": f"{run_dir} (PyTorch fp32)", "rows": rows}


def classify(
    result: dict[str, Any], run_dir: Path, int8_dir: Path, levels: list[int], args: Any
) -> None:
    """The ``/v1/predict`` tables: in-process, pipeline loop, each backend and batching mode."""
    texts = sample_texts(200, args.text_chars)
    result["requests"] = (
        f"batch-1 POST /v1/predict, first {args.text_chars} chars of BBC test articles"
    )
    result["in_process_batch1_p50_ms"] = {
        "torch_fp32": in_process_p50(run_dir, texts, 200),
        "torch_bf16": in_process_p50(run_dir, texts, 200, bf16=True),
        "onnx_int8": in_process_p50(int8_dir, texts, 200),
    }
    result["pipeline_loop"] = pipeline_loop(run_dir, texts, args.seconds)
    result["http"] = []
    backends = (
        ("torch-fp32", run_dir, "fp32"),
        ("torch-bf16", run_dir, "bf16"),  # autocast; worth it only with AMX (see "Which CPU?")
        ("onnx-int8", int8_dir, "fp32"),
    )
    for backend, model_dir, precision in backends:
        for batching, batch in (("on", 32), ("off", 1)):
            rows = serve_phase(model_dir, batch, texts, levels, args.seconds, precision)
            for row in rows:
                result["http"].append({"backend": backend, "batching": batching, **row})
    top = max(levels)
    by = {(r["backend"], r["batching"], r["clients"]): r for r in result["http"]}
    result["batched_vs_unbatched_rps_at_max_clients"] = {
        b: round(by[(b, "on", top)]["rps"] / max(by[(b, "off", top)]["rps"], 1e-9), 2)
        for b, _, _ in backends
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--run", type=Path, help="a finished run (default: train MiniLM briefly)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/textloop-serve-bench"))
    ap.add_argument("--seconds", type=float, default=6.0, help="measured seconds per phase")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--text-chars", type=int, default=300, help="characters per request text")
    ap.add_argument("--output", type=Path, help="also write the JSON here")
    ap.add_argument("--phases", default="classify", help="any of classify,chat,embeddings")
    ap.add_argument("--decoder-run", type=Path, help="a generation run (default: SmolLM2 as is)")
    ap.add_argument("--chat-concurrency", default="1,8", help="concurrent chat clients")
    ap.add_argument("--chat-rounds", type=int, default=3, help="chats per client per level")
    ap.add_argument("--chat-max-tokens", type=int, default=64, help="max_tokens of each chat")
    ap.add_argument("--embed-chars", type=int, default=160, help="characters per text embedded")
    args = ap.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    args.work.mkdir(parents=True, exist_ok=True)
    levels = [int(x) for x in args.concurrency.split(",")]
    phases = set(args.phases.split(","))
    if phases - {"classify", "chat", "embeddings"}:
        ap.error(f"--phases: unknown {sorted(phases - {'classify', 'chat', 'embeddings'})}")
    from textloop.training.precision import read_cpu_info

    load_start = os.getloadavg()
    result: dict[str, Any] = {
        "machine": {
            "cores": len(os.sched_getaffinity(0)),
            "cpu": read_cpu_info().model,
            "cpu_flags": list(read_cpu_info().flags),  # amx_bf16 decides what bf16 is worth
            "loadavg_at_start": load_start,
            "note": "client and server share the cores",
        },
    }
    if phases & {"classify", "embeddings"}:
        run_dir, int8_dir, result["model"] = prepare_model(
            args.work, args.run, "classify" in phases
        )
    if "classify" in phases:
        classify(result, run_dir, int8_dir, levels, args)
    if "chat" in phases:
        decoder = prepare_decoder(args.work, args.decoder_run)
        chat_levels = [int(x) for x in args.chat_concurrency.split(",")]
        result["chat"] = chat_phase(decoder, chat_levels, args.chat_rounds, args.chat_max_tokens)
    if "embeddings" in phases:
        texts = sample_texts(200, args.embed_chars)
        result["embeddings"] = embeddings_phase(run_dir, texts, levels, args.seconds)
    result["loadavg_at_end"] = os.getloadavg()
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
