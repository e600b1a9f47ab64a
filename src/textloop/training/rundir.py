"""The one writer of a run folder: the check before it is touched (fresh start, resume, or a
refusal), its start, its log's truncation on resume, its artifacts.

``training.run.train`` and an update's candidate (``continual.retrain.write_run_dir``) both write
through here, so every run folder has the same layout (see README "Run directory"), which
``runs.load_run`` and the registry read.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from textloop.artifacts.rundir import INCOMPLETE, check_replaceable, is_run_dir
from textloop.config import RunConfig, read_yaml
from textloop.errors import CheckpointError, ConfigError, RunDirError
from textloop.evaluation.report import write_report
from textloop.fileio import atomic_dir, write_text_atomic
from textloop.tasks.base import Task
from textloop.training.precision import PrecisionChoice, read_cpu_info
from textloop.training.recipe import RECIPE_FIELDS

_VERSIONED = (
    "torch",
    "transformers",
    "tokenizers",
    "safetensors",
    "datasets",
    "scikit-learn",
    "numpy",
    "textloop",
)


def environment(seed: int, precision: PrecisionChoice | str, threads: int) -> dict[str, Any]:
    """Package versions, seed, precision (and why) and hardware, as written to env.json."""
    if isinstance(precision, str):
        precision = PrecisionChoice(precision, "requested", None)
    cpu = read_cpu_info()
    versions: dict[str, str | None] = {}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "python": platform.python_version(),
        "packages": versions,
        "seed": seed,
        **precision.as_dict(),
        "threads": threads,
        "cpu": cpu.model if cpu.model != "unknown" else platform.processor() or platform.machine(),
        "cpu_flags": list(cpu.flags),
        "cpu_count": os.cpu_count(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
    }


def start_run_dir(out: Path, config_yaml: str, replace: bool) -> None:
    """A fresh run folder holding its resolved config and the ``.incomplete`` marker.

    ``replace`` removes what ``out`` holds first; the caller has checked that it is a run
    (``artifacts.rundir.check_replaceable``).
    """
    if replace:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / INCOMPLETE).write_text("training in progress; resume with --resume\n")
    write_text_atomic(out / "config.yaml", config_yaml)


def truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint being resumed (they will be replayed)."""
    if not path.is_file():
        return
    kept = [
        ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step
    ]
    write_text_atomic(path, "".join(ln + "\n" for ln in kept))


def write_run_artifacts(
    out: Path,
    model: torch.nn.Module,
    tokenizer: Any,
    task: Task,
    metrics: dict[str, Any],
    seed: int,
    precision: PrecisionChoice,
    threads: int,
) -> None:
    from textloop.models.lora import is_lora, merge_lora, save_adapter

    if is_lora(model):  # adapter/ alone (small, peft format); model/ holds the merged weights
        with atomic_dir(out / "adapter") as tmp:
            save_adapter(model, tmp)
        model = merge_lora(model)
    emb = getattr(model, "get_input_embeddings", lambda: None)()
    if isinstance(emb, torch.nn.Embedding):
        emb.sparse = False  # a training-time choice; the saved model is a plain checkpoint
    with atomic_dir(out / "model") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)  # type: ignore[operator]
        task.save_extras(tmp)  # e.g. checkpoint tensors the LM head model dropped
        tokenizer.save_pretrained(tmp)
    write_text_atomic(out / "labels.json", json.dumps(task.state(), indent=2, ensure_ascii=False))
    write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2, ensure_ascii=False))
    write_text_atomic(out / "env.json", json.dumps(environment(seed, precision, threads), indent=2))
    write_report(out, metrics, list(task.state().get("labels", [])))
    section = task.report_section(metrics)  # a task's own part of the report
    if section:
        report = out / "report.md"
        write_text_atomic(report, report.read_text(encoding="utf-8") + "\n" + section)


# keys a resumed run may change: where and how it runs, not what it trains (a checkpoint is the
# same file under one process, DDP or FSDP; a moved run folder is the same run; tracking only
# watches)
_FREE_ON_RESUME = ("output", "overwrite", "train.distributed", "track")


def _config_diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    diffs = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            diffs.extend(_config_diff(va, vb, f"{prefix}{key}."))
        elif va != vb and f"{prefix}{key}" not in _FREE_ON_RESUME:
            diffs.append(f"{prefix}{key} {va!r} -> {vb!r}")
    return diffs


def _with_saved_recipe(cfg: RunConfig, saved: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` as a dict, its unset recipe keys filled from a saved run's (recipe-resolved)
    config: leaving them unset asks for the recipe, which chose those values."""
    given = cfg.model_dump(mode="json")
    saved_train: dict[str, Any] = saved.get("train") or {}
    for key in RECIPE_FIELDS:
        if given["train"].get(key) is None and key in saved_train:
            given["train"][key] = saved_train[key]
    if given["train"].get("recipe") == "auto" and "recipe" in saved_train:  # auto chose it
        given["train"]["recipe"] = saved_train["recipe"]
    return given


def check_output(out: Path, cfg: RunConfig, resume: bool) -> bool:
    """Decide fresh start vs resume; refuse to clobber a different run or anything that is not a
    textloop run (never replaced, even with --overwrite). Returns True to resume."""
    last = out / "checkpoints" / "last"
    if resume:
        if not (last / "state.json").is_file() or not (out / "config.yaml").is_file():
            raise CheckpointError(
                f"nothing to resume in {out}: no checkpoints/last (start without --resume)"
            )
        if not (out / INCOMPLETE).exists():
            raise CheckpointError(
                f"{out} holds a finished run; nothing to resume (use --overwrite to retrain)"
            )
        saved = read_yaml(out / "config.yaml")
        diffs = _config_diff(saved, _with_saved_recipe(cfg, saved))
        if diffs:
            raise ConfigError(
                f"--resume with settings that differ from {out}/config.yaml: {'; '.join(diffs)}; "
                "drop those flags (--resume continues with the saved config)"
            )
        return True
    try:
        check_replaceable(out, cfg.overwrite)
    except RunDirError as exc:
        if not is_run_dir(out) or cfg.overwrite:
            raise
        # a run without --overwrite: say which run it is
        what = (
            "an unfinished run (pass --resume to continue it)"
            if (out / INCOMPLETE).exists()
            else "a run"
        )
        saved = read_yaml(out / "config.yaml")
        diffs = _config_diff(saved, _with_saved_recipe(cfg, saved))
        if diffs:
            what += f" with a different config ({'; '.join(diffs[:3])})"
        raise RunDirError(
            f"output directory {out} already holds {what}; pass --overwrite to replace it"
        ) from exc
    return False
