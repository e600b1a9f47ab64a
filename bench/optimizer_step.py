"""The per-step cost that does not depend on sequence length: embedding backward, clip, AdamW.

    .venv/bin/python bench/optimizer_step.py

For MiniLM + a 5-way head, runs the word-embedding forward/backward on a 32x32 batch (the rest of
the model gets fixed dense gradients), gradient clipping and the optimizer step, with
``torch.optim.AdamW(fused=True)`` on dense gradients and with textloop's ``LazyAdamW`` on a
sparse embedding gradient. Prints mean milliseconds per phase as JSON.
"""

from __future__ import annotations

import json
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ["HF_HUB_OFFLINE"] = "1"

import torch
from transformers import AutoModelForSequenceClassification
from transformers import logging as hf_logging

from textloop.models.resolve import resolve_model
from textloop.training.optim import build_optimizer, clip_gradients, make_embeddings_sparse

STEPS, WARMUP = 40, 5


def measure(lazy: bool) -> dict[str, float]:
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        resolve_model("embedded:minilm"), num_labels=5
    )
    if lazy:
        make_embeddings_sparse(model)
        opt: torch.optim.Optimizer = build_optimizer(model, 5e-5, 0.01)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.01, fused=True)
    emb = model.get_input_embeddings()
    params = list(model.parameters())
    ids = torch.randint(1000, 30000, (32, 32), generator=torch.Generator().manual_seed(0))
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


def main() -> None:
    torch.set_num_threads(2)
    hf_logging.set_verbosity_error()
    dense, lazy = measure(False), measure(True)
    saved = sum(dense.values()) - sum(lazy.values())
    print(
        json.dumps(
            {"dense_fused_adamw": dense, "lazy_adamw": lazy, "saved_ms_per_step": round(saved, 2)},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
