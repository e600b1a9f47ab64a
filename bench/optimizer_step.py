"""The per-step cost that does not depend on sequence length: embedding backward, clip, AdamW.

    .venv/bin/python bench/optimizer_step.py [--model embedded:e5-small] [--output FILE]

For MiniLM (or ``--model``: embedded:e5-small's 250k-row embedding holds 96M of its 118M
parameters) + a 5-way head, runs the word-embedding forward/backward on a 32x32 batch (the rest of
the model gets fixed dense gradients), gradient clipping and the optimizer step, with
``torch.optim.AdamW(fused=True)`` on dense gradients and with textloop's ``LazyAdamW`` on a
sparse embedding gradient. Prints mean milliseconds per phase as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ["HF_HUB_OFFLINE"] = "1"

import torch
from transformers import AutoModelForSequenceClassification
from transformers import logging as hf_logging

from textloop.models.resolve import resolve_model
from textloop.training.optim import build_optimizer, clip_gradients, make_embeddings_sparse

STEPS, WARMUP = 40, 5


def measure(lazy: bool, name: str) -> dict[str, float]:
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(resolve_model(name), num_labels=5)
    if lazy:
        make_embeddings_sparse(model)
        opt: torch.optim.Optimizer = build_optimizer(model, 5e-5, 0.01)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.01, fused=True)
    emb = model.get_input_embeddings()
    params = list(model.parameters())
    vocab = emb.weight.shape[0]
    ids = torch.randint(1000, vocab, (32, 32), generator=torch.Generator().manual_seed(0))
    totals = {"embedding_backward_ms": 0.0, "clip_ms": 0.0, "optimizer_ms": 0.0}
    for i in range(STEPS):
        t0 = time.perf_counter()
        emb(ids).sum().backward()
        t1 = time.perf_counter()
        for p in params:
            if p is not emb.weight:
                p.grad = torch.full_like(p, 1e-3)
        t2 = time.perf_counter()
        clip_gradients(params, 1.0)
        t3 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t4 = time.perf_counter()
        if i >= WARMUP:
            for key, dt in zip(totals, (t1 - t0, t3 - t2, t4 - t3)):
                totals[key] += dt
    return {k: round(v / (STEPS - WARMUP) * 1000, 2) for k, v in totals.items()}


def cpu_name() -> str:
    """The CPU's model name, and whether it has AMX (the two CPUs this project meets)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine()
    name = next((x.split(":", 1)[1].strip() for x in info.splitlines() if "model name" in x), "")
    return name + (" (AMX)" if "amx_bf16" in info else " (no AMX)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="embedded:minilm")
    parser.add_argument("--output", help="also write the JSON here")
    args = parser.parse_args()
    torch.set_num_threads(2)
    hf_logging.set_verbosity_error()
    dense, lazy = measure(False, args.model), measure(True, args.model)
    saved = sum(dense.values()) - sum(lazy.values())
    text = json.dumps(
        {
            "model": args.model,
            "cpu": cpu_name(),
            "threads": 2,
            "dense_fused_adamw": dense,
            "lazy_adamw": lazy,
            "saved_ms_per_step": round(saved, 2),
        },
        indent=2,
    )
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
