"""textloop: prepare text, fine-tune, evaluate, serve, keep learning.

Example:
    >>> import textloop
    >>> cfg = textloop.load_config("configs/classification/bbc-news_full.yaml", ["train.epochs=2"])
    >>> run = textloop.train(cfg)
    >>> textloop.load_run(cfg.output).predict(["Shares rose after the results"])
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

# Busy-waiting OpenMP threads make 2 threads slower than 1 on a shared host (measured 2.3x);
# this only takes effect if set before torch loads, so it happens on import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from textloop.config import RunConfig, load_config
from textloop.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    ModelError,
    OutputError,
    RunDirError,
    TextloopError,
)

if TYPE_CHECKING:
    from textloop.runs import Run

__version__ = "0.1.0"


def train(config: RunConfig | str | os.PathLike[str], **kwargs: object) -> Run:
    """Fine-tune a model; see ``textloop.training.run.train``."""
    from textloop.training.run import train as _train

    return _train(config, **kwargs)  # type: ignore[arg-type]


def tune(config: str | os.PathLike[str] | None = None, **kwargs: object) -> Any:
    """Search hyper-parameters on a time budget; see ``textloop.tuning.study.tune``."""
    from textloop.tuning.study import tune as _tune

    return _tune(config, **kwargs)  # type: ignore[arg-type]


def load_run(path: str | os.PathLike[str]) -> Run:
    """Load a finished run directory; see ``textloop.runs.load_run``."""
    from textloop.runs import load_run as _load_run

    return _load_run(os.fspath(path))


def __getattr__(name: str) -> Any:
    """``textloop.Run`` on first use: importing textloop (e.g. a Ray worker running the prepare
    stages, or ``textloop --help``) does not load torch."""
    if name == "Run":
        from textloop.runs import Run

        return Run
    raise AttributeError(f"module 'textloop' has no attribute {name!r}")


__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "ModelError",
    "OutputError",
    "Run",
    "RunConfig",
    "RunDirError",
    "TextloopError",
    "load_config",
    "load_run",
    "train",
    "tune",
]
