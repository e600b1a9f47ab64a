"""The fixed set of events a user extension can hook: train start, step end, eval end,
checkpoint, train end. Any object with some of these methods is a callback."""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textloop.training.loop import StepInfo

log = logging.getLogger("textloop")

EVENTS = (
    "on_train_start",
    "on_step_end",
    "on_eval_progress",  # (examples done in this batch, examples in the split)
    "on_eval_end",
    "on_checkpoint",
    "on_train_end",
)


def fire(callbacks: list[Any], event: str, *args: Any) -> None:
    """Call ``event`` on every callback that has it."""
    assert event in EVENTS, event
    for cb in callbacks:
        fn = getattr(cb, event, None)
        if fn is not None:
            fn(*args)


@dataclass
class RunControl:
    """How a callback ends a run early and cleanly: after ``stop(reason)`` the driver leaves the
    loop at the next step or evaluation, then finishes as usual (best checkpoint restored, final
    metrics, artifacts; ``metrics.json`` says ``train.stopped``). A tuning study stops a pruned
    trial this way. Only the main process's callbacks run, so use it in single-process runs."""

    reason: str | None = None

    def stop(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason


class ProgressBar:
    """A tqdm bar over optimizer steps showing loss, lr and examples/s (stderr)."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.eval_bar: Any = None
        self.loss: float | None = None

    def on_train_start(self, info: dict[str, Any]) -> None:
        from tqdm import tqdm

        self.bar = tqdm(
            total=info["total_steps"],
            initial=info["start_step"],
            desc="train",
            unit="step",
            file=sys.stderr,
            dynamic_ncols=True,
        )

    def on_step_end(self, info: StepInfo) -> None:
        if info.loss is not None:
            self.loss = info.loss
        rate = info.examples / info.seconds if info.seconds else 0.0
        self.bar.set_postfix(
            loss=f"{self.loss:.4f}" if self.loss is not None else "-",
            lr=f"{info.lr:.2e}",
            ex_s=f"{rate:.0f}",
            refresh=False,
        )
        self.bar.update(1)

    def on_eval_progress(self, done: int, total: int) -> None:
        from tqdm import tqdm

        if self.eval_bar is None:
            self.eval_bar = tqdm(total=total, desc="eval", unit="ex", leave=False, file=sys.stderr)
        self.eval_bar.update(done)
        if self.eval_bar.n >= total:
            self.eval_bar.close()
            self.eval_bar = None

    def on_eval_end(self, info: StepInfo) -> None:
        m = info.metrics or {}
        shown = {k: round(v, 4) for k, v in m.items() if isinstance(v, float)}
        self.bar.write(f"eval @ step {info.step}: {shown}{' (best)' if info.is_best else ''}")

    def on_train_end(self, result: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.close()


class LogLines:
    """Plain log lines (for --quiet or non-terminals): one per logged step and per evaluation."""

    def on_step_end(self, info: StepInfo) -> None:
        if info.loss is not None:
            log.info(
                "step %d epoch %.2f loss %.4f lr %.2e", info.step, info.epoch, info.loss, info.lr
            )

    def on_eval_end(self, info: StepInfo) -> None:
        m = {k: round(v, 4) for k, v in (info.metrics or {}).items() if isinstance(v, float)}
        log.info("eval step %d %s%s", info.step, m, " best" if info.is_best else "")

    def on_checkpoint(self, path: Path) -> None:
        log.debug("checkpoint %s", path)


class JsonlLog:
    """The run's ``log.jsonl``: a line per logged step (loss, lr, grad norm, examples/s) and per
    evaluation (its scalar metrics). The driver writes an evaluation's line before the checkpoint
    of that step, so a resumed run's log (truncated to the checkpoint) lacks no evaluation."""

    def __init__(self, path: Path) -> None:
        self.file = path.open("a", encoding="utf-8")

    def on_step_end(self, info: StepInfo) -> None:
        if info.loss is None:
            return
        row = {
            "kind": "train",
            "step": info.step,
            "epoch": round(info.epoch, 4),
            "loss": info.loss,
            "lr": info.lr,
            "grad_norm": info.grad_norm,
            "examples_per_s": info.examples / max(info.seconds, 1e-9),
        }
        self.file.write(json.dumps(row) + "\n")

    def on_eval_end(self, info: StepInfo) -> None:
        metrics = {k: v for k, v in (info.metrics or {}).items() if not isinstance(v, (dict, list))}
        row = {"kind": "eval", "step": info.step, "epoch": round(info.epoch, 4), **metrics}
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()
