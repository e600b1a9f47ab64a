"""Where a server's model comes from, and the options a server runs with.

A source loads a model (a run folder, or a registry's production / pinned version) and says
which version should be live now; the server polls ``wanted_version`` to hot-swap.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from textloop.artifacts.integrity import check_model_folder
from textloop.artifacts.registry import Registry
from textloop.runs import load_registered

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeOptions:
    """Batching, limits and polling of one server. Defaults suit a small encoder on a CPU.

    Attributes:
        max_batch_size: most texts in one forward pass (1 turns micro-batching off).
        max_wait_ms: how long the first request of a batch waits for others to join it.
        max_queue: most texts waiting for the model; beyond it requests get 503.
        max_body_bytes: largest request body; larger ones get 413.
        max_texts: most texts in one request; more get 413.
        max_chars: most characters in one text; longer ones get 413.
        request_timeout_s: a request waiting longer than this for the model gets 503.
        poll_seconds: how often to check the registry for a new production version (0: never).
        api_key: the key write endpoints require (None: write endpoints answer 403).
        explain_max_texts: most texts in one ``/v1/explain`` request; more get 413.
        explain_max_steps: most integration steps an explanation may ask for; more get 413.
        explain_max_token_steps: most work in one explain request: steps x the tokens of all
            its texts (after truncation to the model's max_seq_len); more get 413. The default
            allows 16 texts of 250 tokens at 50 steps, or one 512-token text at 390 steps.
        explain_timeout_s: an explain request running longer is stopped (503 ``timeout``).
        explain_auth: whether ``/v1/explain`` needs the API key: ``auto`` (when the server has
            one), ``key`` (always; 403 without one) or ``open`` (never).
        precision: the PyTorch forward of predictions and embeddings: ``fp32``, ``bf16``
            autocast (weights stay fp32; scores move in the third digit), or ``auto`` (bf16
            where the CPU has native bf16, as training decides). ONNX exports ignore it.
    """

    max_batch_size: int = 32
    max_wait_ms: float = 2.0
    max_queue: int = 4096
    max_body_bytes: int = 1_048_576
    max_texts: int = 64
    max_chars: int = 20_000
    request_timeout_s: float = 30.0
    poll_seconds: float = 2.0
    api_key: str | None = field(default=None, repr=False)
    explain_max_texts: int = 16
    explain_max_steps: int = 200
    explain_max_token_steps: int = 200_000
    explain_timeout_s: float = 60.0
    explain_auth: Literal["auto", "key", "open"] = "auto"
    precision: Literal["fp32", "bf16", "auto"] = "fp32"


@dataclass
class LoadedModel:
    """A model ready to answer: the loaded run and what the API reports about it."""

    name: str
    version: int
    stage: str
    format: str
    run: Any  # textloop.runs.Run
    loaded_at: float = field(default_factory=time.time)

    def info(self) -> dict[str, Any]:
        """What ``GET /v1/model`` returns (no file system paths)."""
        state = self.run.task.state()
        metrics = {
            split: {k: v for k, v in values.items() if isinstance(v, (int, float))}
            for split, values in self.run.metrics.items()
            if isinstance(values, dict) and split in ("validation", "test")
        }
        return {
            "name": self.name,
            "version": self.version,
            "stage": self.stage,
            "format": self.format,
            "task": state.get("task", "classification"),
            "labels": state.get("labels", []),
            "multi_label": bool(state.get("multi_label", False)),
            "pair": bool(state.get("pair", False)),
            "max_seq_len": state.get("max_seq_len"),
            "metrics": metrics,
            "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.loaded_at)),
        }


class ModelSource(Protocol):
    """What a server loads its model from."""

    def wanted_version(self) -> int | None:
        """The version that should be live now (None: keep what is loaded)."""
        ...

    def load(self, version: int | None = None) -> LoadedModel:
        """Load (and verify) a version; None means the one ``wanted_version`` names."""
        ...


def _warm(model: LoadedModel) -> LoadedModel:
    # the first call allocates buffers and (ONNX) plans kernels; do it before any client waits
    state = model.run.task.state()
    pairs = ["warm up"] if state.get("pair") else None
    model.run.predict(["warm up"], pairs=pairs)
    return model


@dataclass
class RunDirSource:
    """Serve one run or export folder (no registry, no hot swap)."""

    path: Path

    def wanted_version(self) -> int | None:
        return None

    def load(self, version: int | None = None) -> LoadedModel:
        from textloop.runs import load_run

        fmt = check_model_folder(Path(self.path))
        run = load_run(self.path)
        return _warm(LoadedModel(Path(self.path).name, 0, "run", fmt, run))


@dataclass
class RegistrySource:
    """Serve a registry model: its production version (hot-swapped), or one pinned version."""

    registry: Registry
    name: str
    pinned_version: int | None = None

    def wanted_version(self) -> int | None:
        if self.pinned_version is not None:
            return self.pinned_version
        return self.registry.production_version(self.name)

    def load(self, version: int | None = None) -> LoadedModel:
        mv, run = load_registered(self.registry, self.name, version or self.pinned_version)
        log.info("loaded %s v%d (%s, %s)", mv.name, mv.version, mv.stage, mv.format)
        return _warm(LoadedModel(mv.name, mv.version, mv.stage, mv.format, run))
