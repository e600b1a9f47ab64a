"""Load-test ``textloop serve``: PyTorch fp32 vs ONNX int8, micro-batched vs not, vs a pipeline loop.

Starts the real server (``python -m textloop serve``) on loopback for each backend and batching
mode, drives it with 1 / 8 / 32 concurrent keep-alive clients sending batch-1 requests for a
bounded time, and prints JSON: throughput, p50/p95/p99 latency, errors, dropped requests and the
mean batch the server formed. In the same run it times a plain ``transformers.pipeline`` called
in a loop, and each backend's in-process batch-1 latency (no HTTP).

The model is embedded:minilm fine-tuned for only 30 steps on builtin:bbc-news with
max_seq_len 64: accuracy is irrelevant to latency, the shape (6 layers, hidden 384) is what counts.

Run (takes ~3 minutes; other processes on the host skew the numbers):
    nice -n 19 .venv/bin/python bench/serve_load.py --output bench/results/serve_load.json
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
def prepare_model(work: Path, run_dir: Path | None) -> tuple[Path, Path, dict[str, Any]]:
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
    report = export_run(run_dir, int8, format="onnx", quantize="int8", overwrite=True)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    info = {
        "run": str(run_dir),
        "test_accuracy": metrics.get("test", {}).get("accuracy"),
        "export_int8": {
            k: getattr(report, k)
            for k in ("label_agreement", "max_prob_diff", "n_sample", "fused_ops", "seconds")
        },
    }
    return run_dir, int8, info


def sample_texts(n: int, chars: int) -> list[str]:
    """Short real texts: the opening ``chars`` characters of BBC test articles (300: ~60 tokens)."""
    from textloop.data.readers import read_table

    table = read_table("builtin:bbc-news:test")
    col = "text" if "text" in table.columns else table.columns[0]
    return [str(r[col])[:chars] for r in table.rows[:n]]


def in_process_p50(run_dir: Path, texts: list[str], n: int) -> dict[str, float]:
    """Batch-1 ``Run.predict`` median wall latency and CPU time (all threads), no HTTP."""
    import textloop

    run = textloop.load_run(run_dir)
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
    port: int, bodies: list[bytes], warm_until: float, stop_at: float, out: dict[str, Any]
) -> None:
    """One keep-alive HTTP/1.1 client on a raw socket (light, so the server gets the CPU)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = 0
    try:
        while time.perf_counter() < stop_at:
            body = bodies[i % len(bodies)]
            i += 1
            head = (
                "POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
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


async def drive(port: int, texts: list[str], clients: int, seconds: float) -> dict[str, Any]:
    bodies = [json.dumps({"inputs": [t]}).encode() for t in texts]
    out: dict[str, Any] = {"sent": 0, "received": 0, "errors": 0, "dropped": 0, "latency": []}
    start = time.perf_counter()
    warm_until, stop_at = start + 1.0, start + 1.0 + seconds
    await asyncio.gather(
        *(_client(port, bodies[k:] + bodies[:k], warm_until, stop_at, out) for k in range(clients))
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


def serve_phase(
    model_dir: Path, batch: int, texts: list[str], levels: list[int], seconds: float
) -> list[dict[str, Any]]:
    """Start the server, drive it at each concurrency level, stop it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "textloop", "serve", str(model_dir), "--port", str(port),
           "--max-batch-size", str(batch), "--max-wait-ms", "2", "--poll-seconds", "0"]  # fmt: skip
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {server.stderr.read().decode()[-2000:]}")
            time.sleep(0.2)
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
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--run", type=Path, help="a finished run (default: train MiniLM briefly)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/textloop-serve-bench"))
    ap.add_argument("--seconds", type=float, default=6.0, help="measured seconds per phase")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--text-chars", type=int, default=300, help="characters per request text")
    ap.add_argument("--output", type=Path, help="also write the JSON here")
    args = ap.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    args.work.mkdir(parents=True, exist_ok=True)
    levels = [int(x) for x in args.concurrency.split(",")]
    load_start = os.getloadavg()

    run_dir, int8_dir, model_info = prepare_model(args.work, args.run)
    texts = sample_texts(200, args.text_chars)
    result: dict[str, Any] = {
        "machine": {
            "cores": len(os.sched_getaffinity(0)),
            "loadavg_at_start": load_start,
            "note": "shared host: other processes were running; client and server share the cores",
        },
        "model": model_info,
        "requests": f"batch-1 POST /v1/predict, first {args.text_chars} chars of BBC test articles",
        "in_process_batch1_p50_ms": {
            "torch_fp32": in_process_p50(run_dir, texts, 200),
            "onnx_int8": in_process_p50(int8_dir, texts, 200),
        },
        "pipeline_loop": pipeline_loop(run_dir, texts, args.seconds),
        "http": [],
    }
    for backend, model_dir in (("torch-fp32", run_dir), ("onnx-int8", int8_dir)):
        for batching, batch in (("on", 32), ("off", 1)):
            for row in serve_phase(model_dir, batch, texts, levels, args.seconds):
                result["http"].append({"backend": backend, "batching": batching, **row})
    top = max(levels)
    by = {(r["backend"], r["batching"], r["clients"]): r for r in result["http"]}
    result["batched_vs_unbatched_rps_at_max_clients"] = {
        b: round(by[(b, "on", top)]["rps"] / max(by[(b, "off", top)]["rps"], 1e-9), 2)
        for b in ("torch-fp32", "onnx-int8")
    }
    result["loadavg_at_end"] = os.getloadavg()
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
