"""Precision: what ``auto`` picks on which CPU, and bf16 as a tested path where the CPU has it.

The decision tests run everywhere (they decide for a described CPU); the bf16 training tests
run only where ``auto`` itself picks bf16 (AMX or AVX-512 BF16 CPUs), and say so when skipped
elsewhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from textloop.training.precision import CpuInfo, choose_precision, read_cpu_info
from textloop.training.run import TrainingInterrupted, train

from .test_training import toy_config

CPU = torch.device("cpu")
AVX2_ONLY = CpuInfo("AMD EPYC 7B13 64-Core Processor", ("avx2", "fma"))
AMX = CpuInfo("Intel(R) Xeon(R) Processor", ("avx2", "avx512f", "avx512_bf16", "amx_bf16"))
ZEN4 = CpuInfo("AMD EPYC 9B14", ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"))
HAS_BF16 = choose_precision("auto", CPU).name == "bf16"
needs_bf16 = pytest.mark.skipif(
    not HAS_BF16,
    reason=f"precision auto is fp32 on this CPU ({read_cpu_info().model}: neither amx_bf16 nor "
    "avx512_bf16); bf16 training is tested on CPUs with native bf16",
)


def test_auto_picks_bf16_only_where_the_cpu_has_native_bf16() -> None:
    avx2 = choose_precision("auto", CPU, AVX2_ONLY)
    assert (avx2.name, avx2.dtype) == ("fp32", None) and "avx512_bf16" in avx2.reason
    amx = choose_precision("auto", CPU, AMX)
    assert (amx.name, amx.dtype) == ("bf16", torch.bfloat16) and "amx_bf16" in amx.reason
    zen4 = choose_precision("auto", CPU, ZEN4)  # AVX-512 BF16 dot products, no AMX tiles
    assert (zen4.name, zen4.dtype) == ("bf16", torch.bfloat16) and "avx512_bf16" in zen4.reason
    for cpu in (AVX2_ONLY, AMX, ZEN4):  # an explicit choice is kept whatever the CPU
        assert choose_precision("fp32", CPU, cpu).dtype is None
        assert choose_precision("bf16", CPU, cpu).dtype is torch.bfloat16


def test_cpu_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse avx2 avx512f amx_bf16 amx_tile\n"
        "\nprocessor\t: 1\nmodel name\t: Some CPU\nflags\t\t: fpu\n"
    )
    info = read_cpu_info(cpuinfo)
    assert info == CpuInfo("Some CPU", ("avx2", "avx512f", "amx_tile", "amx_bf16"))
    assert read_cpu_info(tmp_path / "missing") == CpuInfo("unknown")


def _config(model: Path, data: dict[str, Path], out: Path, **overrides: Any) -> Any:
    """The toy run of test_training, in bf16 unless overridden, on one thread."""
    extra = {"train.precision": "bf16", "train.threads": 1, "train.eval_every_steps": 8}
    return toy_config(model, data, out, **{**extra, **overrides})


def test_auto_choice_and_its_reason_go_to_env_json(tiny_bert, toy_data, tmp_path) -> None:
    run = train(
        _config(
            tiny_bert,
            toy_data,
            tmp_path / "run",
            **{"train.precision": "auto", "train.max_steps": 2},
        )
    )
    env = json.loads((run.path / "env.json").read_text())
    expected = choose_precision("auto", CPU)
    assert env["precision"] == expected.name == run.metrics["train"]["precision"]
    assert env["precision_reason"] == expected.reason and env["precision_reason"].startswith("auto")
    assert env["cpu_flags"] == list(read_cpu_info().flags)


class _InterruptAt:
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, info: Any) -> None:
        if info.step == self.step:
            raise KeyboardInterrupt


@needs_bf16
def test_bf16_trains_saves_fp32_and_resumes_exactly(tiny_bert, toy_data, tmp_path) -> None:
    full = train(_config(tiny_bert, toy_data, tmp_path / "full"))
    assert full.metrics["test"]["accuracy"] >= 0.9  # bf16 autocast learns the toy task
    assert full.metrics["train"]["precision"] == "bf16"
    assert json.loads((full.path / "env.json").read_text())["precision"] == "bf16"
    # autocast keeps master weights fp32: no bf16 tensor may reach the saved model or checkpoint
    for f in (
        full.path / "model/model.safetensors",
        full.path / "checkpoints/best/model.safetensors",
    ):
        if f.is_file():
            with safe_open(str(f), "pt") as st:
                dtypes = {st.get_slice(k).get_dtype() for k in st.keys()}  # noqa: SIM118
            assert dtypes == {"F32"}, (f, dtypes)

    cut = tmp_path / "cut"
    cfg = _config(tiny_bert, toy_data, cut)
    with pytest.raises(TrainingInterrupted):
        train(cfg, callbacks=[_InterruptAt(37)])
    resumed = train(cfg, resume=True)
    a = load_file(full.path / "model/model.safetensors")
    b = load_file(cut / "model/model.safetensors")
    # the same kernels on the same CPU: resume in bf16 is as exact as in fp32
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.metrics["test"] == full.metrics["test"]


@needs_bf16
def test_bf16_trained_run_exports_and_serves_like_fp32(tiny_bert, toy_data, tmp_path) -> None:
    from textloop.serving.export import export_run

    run = train(_config(tiny_bert, toy_data, tmp_path / "run"))
    # evaluation and prediction run on the fp32 weights: the same labels as the metrics say
    texts = ["the food excellent was", "the staff awful was"]  # phrased like the toy rows
    assert [p["label"] for p in run.predict(texts)] == ["pos", "neg"]
    report = export_run(run.path, tmp_path / "onnx", format="onnx")
    assert report.decisive_agreement == 1.0  # the ONNX graph (fp32) agrees with the run
