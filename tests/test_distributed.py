"""torchrun with 2 CPU processes (gloo), DDP or FSDP, trains exactly like one process with the
same global batch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

from textloop.config import load_config
from textloop.training.distributed import rank_share
from textloop.training.run import TrainingInterrupted, train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_bert_no_dropout(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT without dropout: then one process and two compute the same function."""
    out = tmp_path_factory.mktemp("tiny-bert-nodrop")
    shutil.copytree(tiny_bert, out, dirs_exist_ok=True)
    cfg = json.loads((out / "config.json").read_text())
    cfg.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (out / "config.json").write_text(json.dumps(cfg))
    return out


def _config(model: Path, data: dict[str, Path], tmp: Path) -> Path:
    tree: dict[str, Any] = {
        "model": str(model),
        "data": {k: str(v) for k, v in data.items()},
        "train": {
            "max_steps": 8,
            "batch_size": 16,  # the global micro-batch: 8 per process with 2 processes
            "grad_accum_steps": 2,
            "lr": 3e-3,
            "max_seq_len": 32,
            "eval_every_steps": 4,
            "log_every_steps": 1,
            "embedding_update": "dense",  # DDP all-reduces dense gradients
            "threads": 1,
            "precision": "fp32",  # exact comparisons; bf16 (auto on AMX CPUs) rounds differently
        },
    }
    path = tmp / "run.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def _torchrun(config: Path, output: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "textloop",
        "train",
        str(config),
        "--quiet",
        "--set",
        f"output={output}",
        *extra,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _log(out: Path, kind: str) -> list[dict[str, Any]]:
    rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == kind]


# Tolerances. Every run here is fp32 (pinned in the configs): one process reduces a batch in one
# sum, two processes sum halves and all-reduce, so the same numbers are added in another order
# and differ by float32 rounding (~1e-7 relative per operation, on AVX2 and AVX-512 kernels
# alike). Over these 8 Adam steps at lr 3e-3 that grows to ~1e-6 in losses and weights; the
# bugs guarded against (a wrong share weighting, a lost or doubled micro-batch, state not
# restored) move losses by 1e-3 or more and weights by far more than 1e-5.
LOSS_REL = 1e-5  # train/eval losses, 1 vs 2 processes (measured <= 1e-6 on both CPU kinds)
GRAD_NORM_REL = 1e-4  # a norm sums squares of every gradient element: more terms reordered
WEIGHT_ATOL = 1e-5  # largest weight difference after 8 steps (measured <= 3e-6)


def _assert_same_weights(a: Path, b: Path, atol: float = WEIGHT_ATOL) -> None:
    wa, wb = load_file(a / "model/model.safetensors"), load_file(b / "model/model.safetensors")
    assert wa.keys() == wb.keys()
    worst = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    assert worst < atol, f"weights differ by up to {worst}"


def test_rank_share_splits_a_batch_and_weights_the_loss(monkeypatch):
    import textloop.training.distributed as d

    monkeypatch.setattr(d, "world_size", lambda: 2)
    batch = list(range(5))
    shares = []
    for r in (0, 1):
        monkeypatch.setattr(d, "rank", lambda r=r: r)
        shares.append(rank_share(batch))
    assert shares == [([0, 2, 4], 1.2), ([1, 3], 0.8)]  # 3/5 and 2/5 of the mean, times 2
    monkeypatch.setattr(d, "rank", lambda: 1)
    assert rank_share([7]) == ([7], 0.0)  # no share: computes on a stand-in with weight 0


def test_two_processes_match_one(tiny_bert_no_dropout, toy_data, tmp_path):
    cfg_path = _config(tiny_bert_no_dropout, toy_data, tmp_path)
    single = tmp_path / "single"
    train(load_config(cfg_path, [f"output={single}"]))
    double = tmp_path / "ddp"
    _torchrun(cfg_path, double)

    one, two = _log(single, "train"), _log(double, "train")
    assert [r["step"] for r in two] == list(range(1, 9))  # rank 0 alone wrote the log
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], rel=LOSS_REL)
    assert _log(double, "eval")[-1]["loss"] == pytest.approx(
        _log(single, "eval")[-1]["loss"], rel=LOSS_REL
    )
    _assert_same_weights(single, double)
    metrics = json.loads((double / "metrics.json").read_text())
    assert metrics["train"]["world_size"] == 2
    assert not list(tmp_path.glob("ddp/**/*.tmp"))


class _InterruptAt:
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, info) -> None:
        if info.step == self.step:
            raise KeyboardInterrupt


def test_resume_on_a_different_number_of_processes(tiny_bert_no_dropout, toy_data, tmp_path):
    cfg_path = _config(tiny_bert_no_dropout, toy_data, tmp_path)
    full = tmp_path / "full"
    train(load_config(cfg_path, [f"output={full}"]))
    cut = tmp_path / "cut"
    with pytest.raises(TrainingInterrupted):  # stopped after step 3 of 8 in one process ...
        train(load_config(cfg_path, [f"output={cut}"]), callbacks=[_InterruptAt(3)])
    _torchrun(cfg_path, cut, "--resume")  # ... and finished by two
    assert [r["step"] for r in _log(cut, "train")] == list(range(1, 9))
    _assert_same_weights(full, cut)


def test_gradient_sync_is_skipped_only_on_accumulation_micro_batches():
    from textloop.training.distributed import gradient_sync

    calls = []

    class Fake(torch.nn.Module):
        def no_sync(self):
            calls.append("no_sync")
            return torch.no_grad()

    with gradient_sync(Fake(), enabled=False):
        pass
    with gradient_sync(Fake(), enabled=True):
        pass
    assert calls == ["no_sync"]


def _assert_same_checkpoint(a: Path, b: Path, atol: float = WEIGHT_ATOL) -> None:
    """Two checkpoints hold the same weights, optimizer moments and schedule."""
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < atol
    oa = torch.load(a / "optimizer.pt", weights_only=True)
    ob = torch.load(b / "optimizer.pt", weights_only=True)
    assert oa["param_groups"] == ob["param_groups"]
    assert oa["state"].keys() == ob["state"].keys()
    for i, moments in oa["state"].items():
        for name, value in moments.items():
            assert torch.allclose(value, ob["state"][i][name], atol=atol), (i, name)
    sa = torch.load(a / "scheduler.pt", weights_only=True)
    assert sa == torch.load(b / "scheduler.pt", weights_only=True)


def test_fsdp_resumes_a_single_process_run_and_matches_it(tiny_bert_no_dropout, toy_data, tmp_path):
    """Steps 1-3 in one process, 4-8 under FSDP (2 processes): the same losses, the same
    weights, and FSDP's checkpoints are the ordinary files one process writes."""
    cfg_path = _config(tiny_bert_no_dropout, toy_data, tmp_path)
    full = tmp_path / "full"
    train(load_config(cfg_path, [f"output={full}"]))
    cut = tmp_path / "cut"
    with pytest.raises(TrainingInterrupted):
        train(load_config(cfg_path, [f"output={cut}"]), callbacks=[_InterruptAt(3)])
    _torchrun(cfg_path, cut, "--resume", "--set", "train.distributed=fsdp")

    one, two = _log(full, "train"), _log(cut, "train")
    assert [r["step"] for r in two] == list(range(1, 9))
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], rel=LOSS_REL)
    assert [r["grad_norm"] for r in two] == pytest.approx(
        [r["grad_norm"] for r in one], rel=GRAD_NORM_REL
    )
    assert _log(cut, "eval")[-1]["loss"] == pytest.approx(
        _log(full, "eval")[-1]["loss"], rel=LOSS_REL
    )
    _assert_same_weights(full, cut)  # model/: an ordinary transformers checkpoint
    # checkpoints/last was written by FSDP rank 0 from gathered shards: one process resumes it
    _assert_same_checkpoint(full / "checkpoints/last", cut / "checkpoints/last")
    assert json.loads((cut / "metrics.json").read_text())["train"]["world_size"] == 2
    assert not list(cut.glob("**/*.tmp"))


def _mlm_config(model: Path, tmp: Path) -> Path:
    """Masked LM on a small repetitive corpus: 4 steps of 2 micro-batches of 8 blocks."""
    words = [
        "the",
        "cat",
        "sat",
        "on",
        "a",
        "mat",
        "while",
        "dogs",
        "ran",
        "in",
        "the",
        "park",
        "and",
        "birds",
        "sang",
        "songs",
    ]
    lines = [" ".join(words[(i * 7 + j) % len(words)] for j in range(12)) for i in range(300)]
    corpus = tmp / "corpus.txt"
    corpus.write_text("\n".join(lines) + "\n")
    tree: dict[str, Any] = {
        "task": "mlm",
        "model": str(model),
        "data": {"train": str(corpus)},
        "train": {
            "max_steps": 4,
            "batch_size": 8,
            "grad_accum_steps": 2,
            "lr": 3e-3,
            "max_seq_len": 32,
            "eval_every_steps": 2,
            "log_every_steps": 1,
            "threads": 1,
            "precision": "fp32",  # exact comparisons; bf16 (auto on AMX CPUs) rounds differently
        },
        "pretrain": {"eval_blocks": 16},
    }
    path = tmp / "mlm.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


# Adam divides by sqrt(v) + 1e-8, so gradient elements near 1e-8 turn float rounding (one
# process sums a batch, two sum halves) into weight differences: measured 4.5e-6 and, in one
# full-suite run, 2.4e-5 after these 4 MLM steps at lr 3e-3. The per-share weighting this
# guards against shows as ~1e-3 in the losses, which are compared at LOSS_REL.
MLM_WEIGHT_ATOL = 1e-4


def test_two_processes_match_one_on_masked_lm(tiny_bert_no_dropout, tmp_path):
    """A token-level loss: each rank's mean over its masked tokens is weighted by its share of
    the step's masked tokens (all ranks, all micro-batches), so 2 processes train exactly like
    one, although the ranks' blocks hold different numbers of masked tokens."""
    cfg_path = _mlm_config(tiny_bert_no_dropout, tmp_path)
    single = tmp_path / "single"
    train(load_config(cfg_path, [f"output={single}"]))
    double = tmp_path / "ddp"
    _torchrun(cfg_path, double)
    one, two = _log(single, "train"), _log(double, "train")
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], rel=LOSS_REL)
    assert [r["grad_norm"] for r in two] == pytest.approx(
        [r["grad_norm"] for r in one], rel=GRAD_NORM_REL
    )
    assert _log(double, "eval")[-1]["loss"] == pytest.approx(
        _log(single, "eval")[-1]["loss"], rel=LOSS_REL
    )
    _assert_same_weights(single, double, atol=MLM_WEIGHT_ATOL)


@pytest.mark.slow  # a torchrun launch, beside the DDP one above
def test_fsdp_masked_lm_with_tied_weights_matches_one_process(tiny_bert_no_dropout, tmp_path):
    """MLM (the output layer tied to the word embeddings): FSDP trains like one process."""
    cfg_path = _mlm_config(tiny_bert_no_dropout, tmp_path)
    single = tmp_path / "single"
    train(load_config(cfg_path, [f"output={single}"]))
    sharded = tmp_path / "fsdp"
    _torchrun(cfg_path, sharded, "--set", "train.distributed=fsdp")
    one, two = _log(single, "train"), _log(sharded, "train")
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], rel=LOSS_REL)
    assert _log(sharded, "eval")[-1]["loss"] == pytest.approx(
        _log(single, "eval")[-1]["loss"], rel=LOSS_REL
    )
    _assert_same_weights(single, sharded, atol=MLM_WEIGHT_ATOL)
    ckpt = load_file(sharded / "checkpoints/last/model.safetensors")
    tied = ("bert.embeddings.word_embeddings.weight", "cls.predictions.decoder.weight")
    assert sum(name in ckpt for name in tied) == 1  # a tied parameter is stored once
