"""Which floating-point precision a run trains in, and why.

``precision: auto`` picks bf16 autocast only where the hardware runs it fast: a CUDA GPU with
bf16, or a CPU with native bf16 dot products: AMX tiles (``amx_bf16``, Intel Sapphire Rapids and
later) or AVX-512 BF16 (``avx512_bf16``: AMD Zen 4 and later, Intel Cooper Lake). Measured with
bench/train_throughput.py, textloop trains 1.48x faster in bf16 than in fp32 on an AMX Xeon and
1.67x on a Zen 4 EPYC (AVX-512 BF16, no AMX), at the same validation accuracy. Everywhere else it
keeps fp32: on an AVX2-only CPU bf16 autocast measured ~13x slower than fp32, because every
bf16 matmul is emulated. The decision, its reason and the CPU flags behind it go to the log and
to env.json, so two runs on two machines can be told apart.

Master weights, optimizer state and saved models stay fp32 whatever the choice: autocast only
changes the dtype of the matmuls' inputs and outputs inside the forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

# the CPU flags that decide a precision, or explain its speed, in the order they are reported
_FLAGS_OF_INTEREST = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)


@dataclass(frozen=True)
class CpuInfo:
    """The processor's model name and the flags among ``_FLAGS_OF_INTEREST`` it has."""

    model: str
    flags: tuple[str, ...] = field(default_factory=tuple)

    @property
    def native_bf16(self) -> str | None:
        """The flag that gives this CPU native bf16 matmuls (AMX first), or None."""
        return next((f for f in ("amx_bf16", "avx512_bf16") if f in self.flags), None)


def read_cpu_info(cpuinfo: Path = Path("/proc/cpuinfo")) -> CpuInfo:
    """The first processor's model name and flags (empty where /proc/cpuinfo is not readable)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return CpuInfo(model="unknown")
    model, flags = "unknown", set[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model == "unknown":
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
        if model != "unknown" and flags:
            break
    return CpuInfo(model=model, flags=tuple(f for f in _FLAGS_OF_INTEREST if f in flags))


@dataclass(frozen=True)
class PrecisionChoice:
    """What a run trains in: ``dtype`` is the autocast dtype (None: plain fp32)."""

    name: str  # "fp32" | "bf16"
    reason: str
    dtype: torch.dtype | None

    def as_dict(self) -> dict[str, str]:
        return {"precision": self.name, "precision_reason": self.reason}


def choose_precision(
    requested: str, device: torch.device, cpu: CpuInfo | None = None
) -> PrecisionChoice:
    """Resolve ``train.precision`` (auto | fp32 | bf16) on ``device``.

    Args:
        requested: the config's value.
        device: where the model trains.
        cpu: the processor (default: read from /proc/cpuinfo); a parameter so tests can
            decide for a CPU they are not running on.

    Returns:
        The choice with a one-line reason naming what decided it.
    """
    if requested == "fp32":
        return PrecisionChoice("fp32", "requested", None)
    if requested == "bf16":
        return PrecisionChoice("bf16", "requested", torch.bfloat16)
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return PrecisionChoice("bf16", "auto: the GPU supports bf16", torch.bfloat16)
        return PrecisionChoice("fp32", "auto: the GPU has no bf16", None)
    cpu = cpu if cpu is not None else read_cpu_info()
    if device.type == "cpu" and cpu.native_bf16:
        return PrecisionChoice("bf16", f"auto: the CPU has {cpu.native_bf16}", torch.bfloat16)
    return PrecisionChoice(
        "fp32",
        "auto: neither amx_bf16 nor avx512_bf16 on this CPU (bf16 would be emulated, slower "
        "than fp32)",
        None,
    )
