"""GPU check of the distributed paths: torchrun on NCCL, DDP and FSDP2, classification and MLM.

Builds the test suite's tiny BERT (dropout off) and toy data, trains 8 steps (2 accumulation
micro-batches, fp32) without torchrun, then under ``torchrun --nproc-per-node 1`` with DDP and
with FSDP2, and compares the loss curves and final weights. One process, because NCCL needs a
GPU per rank. On a machine with a GPU this runs the CUDA side of
``textloop.training.distributed``, which the CPU test suite (gloo) cannot reach: the NCCL process
group, device placement, all-reduces of CUDA tensors, FSDP2 sharding and the checkpoint gather.
Prints JSON; ``--output`` writes it too.

    python bench/gpu_distributed_check.py --output bench/results/gpu_distributed_check.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _setup(root: Path) -> tuple[list[str], list[str], list[str]]:
    """The tiny model and data; the shared, classification and MLM ``--set`` options."""
    sys.path.insert(0, str(REPO))
    from tests.conftest import (
        FILLER,
        NEGATIVE,
        NOUNS,
        POSITIVE,
        build_tiny_bert,
        toy_rows,
        write_csv,
    )

    corpus = [r["text"] for r in toy_rows(400, seed=123)]
    corpus.append(" ".join(POSITIVE + NEGATIVE + NOUNS + FILLER))
    model = build_tiny_bert(root / "bert", corpus, 300, 128)
    cfg = json.loads((model / "config.json").read_text())
    cfg.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (model / "config.json").write_text(json.dumps(cfg))
    data = {
        k: write_csv(root / f"{k}.csv", toy_rows(n, seed=s))
        for k, n, s in (("train", 240, 1), ("validation", 60, 2), ("test", 60, 3))
    }
    lines = [" ".join(r["text"] for r in toy_rows(6, seed=i)) for i in range(300)]
    (root / "corpus.txt").write_text("\n".join(lines) + "\n")

    def sets(**values: Any) -> list[str]:
        return [arg for k, v in values.items() for arg in ("--set", f"{k}={v}")]

    common = sets(
        model=model,
        **{
            "train.max_steps": 8,
            "train.batch_size": 16,
            "train.grad_accum_steps": 2,
            "train.lr": 3e-3,
            "train.max_seq_len": 32,
            "train.eval_every_steps": 4,
            "train.log_every_steps": 1,
            "train.precision": "fp32",
            "train.embedding_update": "dense",
        },
    )
    cls = sets(**{f"data.{k}": v for k, v in data.items()})
    mlm = sets(task="mlm", **{"data.train": root / "corpus.txt", "pretrain.eval_blocks": 16})
    return common, cls, mlm


def _run(cmd: list[str], out: Path) -> dict[str, Any]:
    started = time.perf_counter()
    proc = subprocess.run(
        [*cmd, "--quiet", "--set", f"output={out}"], capture_output=True, text=True, timeout=300
    )
    rec: dict[str, Any] = {
        "rc": proc.returncode,
        "seconds": round(time.perf_counter() - started, 1),
    }
    if proc.returncode:
        rec["stderr"] = proc.stderr[-1500:]
        return rec
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    rec["loss"] = [r["loss"] for r in log if r["kind"] == "train"]
    rec["eval"] = [r.get("loss", r.get("perplexity")) for r in log if r["kind"] == "eval"]
    train = json.loads((out / "metrics.json").read_text())["train"]
    rec["device"] = train["device"]
    rec["world_size"] = train.get("world_size", 1)
    rec["cuda"] = json.loads((out / "env.json").read_text()).get("cuda")
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--output", help="also write the JSON here")
    args = ap.parse_args()
    from safetensors.torch import load_file

    root = Path(tempfile.mkdtemp(prefix="tl-gpu-check-"))
    common, cls, mlm = _setup(root)
    plain = [sys.executable, "-m", "textloop", "train", *common]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    ddp = [*torchrun, "--nproc-per-node", "1", "-m", "textloop", "train", *common]
    fsdp = [*ddp, "--set", "train.distributed=fsdp"]
    result: dict[str, Any] = {}
    for task, task_args in (("cls", cls), ("mlm", mlm)):
        for name, cmd in (("plain", plain), ("ddp_nccl", ddp), ("fsdp_nccl", fsdp)):
            result[f"{task}_{name}"] = rec = _run([*cmd, *task_args], root / f"{task}_{name}")
            base = root / f"{task}_plain" / "model" / "model.safetensors"
            mine = root / f"{task}_{name}" / "model" / "model.safetensors"
            if name != "plain" and base.exists() and mine.exists():
                wa, wb = load_file(base), load_file(mine)
                rec["max_weight_diff_vs_plain"] = max(
                    float((wa[k].float() - wb[k].float()).abs().max()) for k in wa
                )
            print(f"{task}_{name}", json.dumps(rec)[:300], file=sys.stderr, flush=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")


if __name__ == "__main__":
    main()
