"""Where a training step's time goes: forward, backward, clip, optimizer (dense vs lazy embeddings).

    .venv/bin/python bench/profile_step.py [--steps 30] [--batch-size 32] [--seq-len 32]

Runs the same micro-batches through MiniLM + a 5-way head with ``torch.optim.AdamW`` (fused,
dense embedding gradients — what Trainer does) and with textloop's ``LazyAdamW`` (sparse
embedding gradients), timing each phase with ``time.perf_counter`` and printing JSON, plus the
top operators of one profiled step from ``torch.profiler`` for each variant.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ["HF_HUB_OFFLINE"] = "1"

import torch
from transformers import AutoModelForSequenceClassification
from transformers import logging as hf_logging

from textloop.models.resolve import resolve_model
from textloop.training.optim import build_optimizer, clip_gradients, make_embeddings_sparse


def run_variant(
    lazy: bool, batches: list[dict[str, torch.Tensor]], profile: bool
) -> dict[str, Any]:
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        resolve_model("embedded:minilm"), num_labels=5
    )
    model.train()
    if lazy:
        make_embeddings_sparse(model)
        opt: torch.optim.Optimizer = build_optimizer(model, 5e-5, 0.01)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.01, fused=True)
    params = [p for p in model.parameters() if p.requires_grad]
    phases = {"forward": 0.0, "backward": 0.0, "clip": 0.0, "optimizer": 0.0}
    for i, batch in enumerate(batches):
        targets = batch["labels"]
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(**inputs).logits, targets)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        clip_gradients(params, 1.0)
        t3 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t4 = time.perf_counter()
        if i >= 3:  # skip warm-up steps
            for k, dt in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                phases[k] += dt
    n = len(batches) - 3
    out: dict[str, Any] = {k: round(v / n * 1000, 2) for k, v in phases.items()}
    out["step_ms"] = round(sum(phases.values()) / n * 1000, 2)
    out["optimizer_class"] = type(opt).__name__
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        batch = batches[0]
        targets = batch["labels"]
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            loss = torch.nn.functional.cross_entropy(model(**inputs).logits, targets)
            loss.backward()
            clip_gradients(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:8]
        out["top_ops_self_ms"] = {r.key: round(r.self_cpu_time_total / 1000, 2) for r in rows}
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--seq-len", type=int, default=32, help="tokens per example (BBC sentences average ~29)"
    )
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()
    g = torch.Generator().manual_seed(0)
    batches = [
        {
            "input_ids": torch.randint(1000, 30000, (args.batch_size, args.seq_len), generator=g),
            "attention_mask": torch.ones(args.batch_size, args.seq_len, dtype=torch.long),
            "labels": torch.randint(0, 5, (args.batch_size,), generator=g),
        }
        for _ in range(args.steps)
    ]
    result = {
        "shape": {"batch_size": args.batch_size, "seq_len": args.seq_len, "threads": args.threads},
        "dense_adamw_fused": run_variant(False, batches, profile=True),
        "textloop_lazy_adamw": run_variant(True, batches, profile=True),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
