"""Training throughput with 1 process vs 2 DDP processes (torchrun, gloo on CPU), side by side.

Same job both ways: MLM continued pre-training of embedded:minilm on BBC News text, packed
blocks of 128 tokens, global batch 16 blocks, a fixed number of optimizer steps. One process
uses all ``--threads`` cores; two processes use ``--threads / 2`` each. Throughput is tokens/s
over the steady steps (the first ``--warmup`` steps are not counted). Prints JSON.

    .venv/bin/python bench/ddp_throughput.py --steps 30 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _config(tmp: Path, steps: int, threads: int) -> Path:
    tree = {
        "task": "mlm",
        "model": "embedded:minilm",
        "data": {"train": "builtin:bbc-news:train"},
        "train": {
            "max_steps": steps,
            "batch_size": 16,
            "max_seq_len": 128,
            "lr": 1e-4,
            "eval_every_steps": 10_000,  # one evaluation, at the end
            "log_every_steps": 1,
            "threads": threads,
        },
        "pretrain": {"eval_blocks": 16},
    }
    path = tmp / f"mlm-{threads}.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def _steady_rate(log: Path, warmup: int, tokens_per_step: int) -> float:
    """Tokens/s between the end of step ``warmup`` and the last step, from log.jsonl times."""
    rows = [json.loads(x) for x in log.read_text().splitlines()]
    rates = [r["examples_per_s"] for r in rows if r["kind"] == "train" and r["step"] > warmup]
    # examples_per_s is per step (examples / step seconds); the harmonic mean gives the rate
    # of the whole interval
    mean_seconds = sum(16 / r for r in rates) / len(rates)
    return tokens_per_step / mean_seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2, help="cores shared by all processes")
    args = ap.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    results = {}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        for nproc in (1, 2):
            threads = max(1, args.threads // nproc)
            cfg = _config(tmp, args.steps, threads)
            out = tmp / f"run-{nproc}"
            torchrun = ["torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
            launch = [sys.executable, *(["-m", *torchrun] if nproc > 1 else []), "-m", "textloop"]
            cmd = [*launch, "pretrain", str(cfg), "--quiet", "--output", str(out)]
            started = time.perf_counter()
            proc = subprocess.run(
                cmd, env={**env, "OMP_NUM_THREADS": str(threads)}, capture_output=True, text=True
            )
            if proc.returncode:
                raise SystemExit(proc.stderr[-3000:])
            rate = _steady_rate(out / "log.jsonl", args.warmup, 16 * 128)
            results[f"{nproc}_process"] = {
                "threads_per_process": threads,
                "tokens_per_s": round(rate, 1),
                "wall_s_including_startup": round(time.perf_counter() - started, 1),
            }
    results["speedup_2_vs_1"] = round(
        results["2_process"]["tokens_per_s"] / results["1_process"]["tokens_per_s"], 3
    )
    results["setup"] = {
        "job": "MLM, embedded:minilm, BBC News, block 128, global batch 16, fp32, CPU",
        "steps": args.steps,
        "steady_after_step": args.warmup,
        "cores": args.threads,
    }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
