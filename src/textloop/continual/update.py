"""``update``: retrain the production model on a new labelled batch, gate it, register it.

Steps, in order: load and verify the production version; load (or build once) its frozen
replay buffer and regression set; read the new batch and hold out a stratified part for the
gate; train a candidate from the production weights with the configured strategy (new labels
extend the head), and with ``reference: joint`` a reference by plain fine-tuning on the whole
buffer plus the new batch; score the models on the regression set (when labels were added:
in the old label space, in the full one, and the old->new confusions) and on the held-out new
data; apply the gate; register the candidate (promoted, left in staging, or archived as
rejected with the reason); freeze the candidate's own buffer and regression set; write the
update report.

A dry run stops after scoring the production model, says how the gate will judge, and writes
nothing.

Example:
    >>> result = update("registry", "reviews", "corpus/feedback", load_update_config())
    >>> result.decision.accepted, result.version
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from textloop.artifacts.registry import Registry
from textloop.config import config_to_yaml
from textloop.continual.candidate import (
    build_buffer_size,
    build_candidate,
    build_reference,
    build_replay_size,
    update_recipe,
)
from textloop.continual.config import GateConfig, UpdateConfig
from textloop.continual.gate import GateDecision, decide, predict_gate
from textloop.continual.replay import (
    Row,
    balanced_sample,
    continual_dir,
    ensure_frozen,
    freeze,
    label_counts,
    read_labelled,
)
from textloop.continual.report import forgetting, write_update_report
from textloop.continual.retrain import (
    score,
    score_in_old_label_space,
    write_run_dir,
)
from textloop.data.split import stratified_split
from textloop.errors import ConfigError, DataError
from textloop.runs import load_registered
from textloop.tasks.classification.task import ClassificationTask
from textloop.training.callbacks import fire
from textloop.training.recipe import model_width
from textloop.training.tracking import build_trackers


@dataclass
class UpdateResult:
    """What an update did (or, for a dry run, would do)."""

    dry_run: bool
    plan: dict[str, Any]
    before: dict[str, Any]
    after: dict[str, Any] = field(default_factory=dict)
    decision: GateDecision | None = None
    version: int | None = None
    stage: str | None = None
    report_dir: Path | None = None
    report: dict[str, Any] = field(default_factory=dict)


def score_after(
    model: torch.nn.Module,
    task: Any,
    old_labels: Sequence[str],
    regression: Sequence[Row],
    new_holdout: Sequence[Row],
) -> dict[str, Any]:
    """A trained model's scores for the gate: the regression set in the full label space (and,
    when the label space grew, in the old one with the old->new confusions) and the new data."""
    out: dict[str, Any] = {}
    if len(task.labels) > len(old_labels):
        both = score_in_old_label_space(model, task, regression, old_labels)
        out["regression"] = both["full"]
        out["regression_old_labels"] = both["old_labels"]
        out["old_to_new"] = both["old_to_new"]
    else:
        out["regression"] = score(model, task, regression)
    out["new"] = score(model, task, new_holdout)
    return out


def judge(
    gate: GateConfig,
    before: dict[str, Any],
    after: dict[str, Any],
    new_labels: Sequence[str],
    reference: dict[str, Any] | None = None,
) -> GateDecision:
    """The gate on an update's scores, as ``update`` applies it.

    Args:
        gate: the thresholds.
        before: production's ``{"regression": score, "new": score}``.
        after: the candidate's scores from ``score_after`` (old-label-space ones included when
            its label space grew).
        new_labels: the labels the candidate added.
        reference: the joint reference's ``score_after`` scores, if one was trained.
    """
    grown = "regression_old_labels" in after
    ref = None
    if reference is not None:
        ref = {
            "regression": reference.get("regression_old_labels", reference["regression"]),
            "regression_full": reference["regression"],
            "new": reference["new"],
        }
    return decide(
        before["regression"],
        after["regression_old_labels"] if grown else after["regression"],
        before["new"],
        after["new"],
        gate.max_overall_drop,
        gate.max_class_drop,
        gate.min_class_support,
        gate.min_new_gain,
        after_regression_full=after["regression"] if grown else None,
        old_to_new=after.get("old_to_new"),
        max_old_to_new_share=gate.max_old_to_new_share,
        new_labels=new_labels,
        reference=ref,
        max_drop_vs_reference=gate.max_drop_vs_reference,
        class_noise_z=gate.class_noise_z,
        class_family_alpha=gate.class_family_alpha,
        overall_noise_z=gate.overall_noise_z,
    )


def update(
    registry: str | Path,
    name: str,
    new_data: str,
    config: UpdateConfig | None = None,
    dry_run: bool = False,
    actor: str | None = None,
) -> UpdateResult:
    """Retrain ``name``'s production model on ``new_data``, gate it, and register the result.

    Args:
        registry: the registry directory.
        name: the registered model name (its production version is the starting point).
        new_data: labelled file, directory, glob or builtin (e.g. an export of the feedback).
        config: strategy, schedule, replay and gate settings (defaults when None).
        dry_run: load, check and score only; report the plan; write nothing.
        actor: who (for the registry's audit log).

    Returns:
        The plan, scores before/after, the gate decision and the new version.

    Raises:
        RegistryError: unknown name, no production version, failed hash check.
        DataError: unreadable or too small new data.
        ConfigError: a task that updates do not support.
    """
    cfg = config or UpdateConfig()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    trackers = build_trackers(cfg.track, continual_dir(registry, name) / "tensorboard" / stamp)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    reg = Registry(registry)
    mv, run = load_registered(reg, name)
    if not isinstance(run.task, ClassificationTask) or run.task.multi_label or run.task.pair:
        raise ConfigError(
            f"{name} v{mv.version}: updates support single-label, single-text classification"
        )
    frozen = ensure_frozen(
        registry,
        name,
        mv.version,
        run.config,
        build_buffer_size(cfg.replay),
        cfg.replay.regression_size,
        cfg.seed,
        write=not dry_run,
    )
    d = run.config.data
    rows = read_labelled(
        new_data,
        cfg.text_column or d.text_column,
        cfg.label_column or d.label_column,
        cfg.drop_invalid_rows,
    )
    keep, held = stratified_split([r["label"] for r in rows], cfg.holdout_fraction, cfg.seed)
    if not keep or not held:
        raise DataError(
            f"{new_data}: {len(rows)} labelled rows are too few to train on and hold out "
            f"{cfg.holdout_fraction:.0%} for the gate; send more feedback first"
        )
    new_train, new_holdout = [rows[i] for i in keep], [rows[i] for i in held]
    old_labels = list(run.task.labels)
    new_labels = sorted({r["label"] for r in new_train} - set(old_labels))
    n_replay = (
        len(build_replay_size(cfg.replay, new_train, old_labels).sample(frozen.replay, cfg.seed))
        if cfg.strategy == "replay"
        else 0
    )
    n_labels = len(old_labels) + len(new_labels)
    width = model_width(run.model)
    steps_of = update_recipe(cfg, len(new_train) + n_replay, n_labels, width).settings
    n_steps = steps_of["epochs"] * -(-(len(new_train) + n_replay) // steps_of["batch_size"])
    if cfg.reference == "joint":
        n_joint = len(new_train) + len(frozen.replay)
        joint_of = update_recipe(cfg, n_joint, n_labels, width).settings
        n_steps += joint_of["epochs"] * -(-n_joint // joint_of["batch_size"])
    plan = {
        "name": name,
        "from_version": mv.version,
        "strategy": cfg.strategy,
        "new_data": new_data,
        "n_new": len(rows),
        "n_new_train": len(new_train),
        "n_new_holdout": len(new_holdout),
        "n_replay": n_replay,
        "schedule": steps_of,
        "n_buffer": len(frozen.replay),
        "n_regression": len(frozen.regression),
        "old_labels": old_labels,
        "new_labels": new_labels,
        "reference": cfg.reference,
        "steps": n_steps,
        "promote_if_accepted": cfg.gate.promote,
    }
    before = {
        "regression": score(run.model, run.task, frozen.regression),
        "new": score(run.model, run.task, new_holdout),
    }
    g = cfg.gate
    plan["gate"] = predict_gate(
        old_labels,
        new_labels,
        label_counts(frozen.regression),
        before["new"]["accuracy"],
        g.max_overall_drop,
        g.max_class_drop,
        g.min_class_support,
        g.min_new_gain,
        g.max_old_to_new_share,
        cfg.reference,
        g.max_drop_vs_reference,
        g.class_noise_z,
        g.class_family_alpha,
        g.overall_noise_z,
    )
    if dry_run:
        return UpdateResult(dry_run=True, plan=plan, before=before)

    params = {**cfg.model_dump(mode="json"), "plan": plan}
    fire(trackers, "on_train_start", {"config": params, "name": f"update {name}"})
    try:
        candidate, ctask, train_info = build_candidate(
            run.model, run.task, new_train, frozen.replay, cfg, trackers
        )
    except BaseException:
        for tracker in trackers:  # the tracked run is closed as failed, not left running
            tracker.end("FAILED")
        raise
    after = score_after(candidate, ctask, old_labels, frozen.regression, new_holdout)
    reference: dict[str, Any] | None = None
    if cfg.reference == "joint":
        if cfg.strategy == "replay" and n_replay == len(frozen.replay):
            # the candidate already replays the whole buffer: it is the joint reference
            reference = {**after, "train": {**train_info, "same_as_candidate": True}}
        else:
            ref_model, rtask, ref_info = build_reference(
                run.model, run.task, new_train, frozen.replay, cfg
            )
            reference = {
                **score_after(ref_model, rtask, old_labels, frozen.regression, new_holdout),
                "train": ref_info,
            }
            del ref_model
    decision = judge(g, before, after, train_info["new_labels"], reference)
    report: dict[str, Any] = {
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "plan": plan,
        "before": before,
        "after": after,
        "forgetting": forgetting(before["regression"], after),
        "train": train_info,
        "decision": decision.to_json(),
        "config": cfg.model_dump(mode="json"),
    }
    if reference is not None:
        report["reference"] = reference
    run_cfg = run.config.model_copy(deep=True)
    run_cfg.model = str(mv.path / "model")
    run_cfg.data.train = new_data
    run_cfg.data.validation = run_cfg.data.test = None
    run_cfg.output = None
    metrics = {
        "validation": after["new"],
        "test": after["regression"],
        "train": train_info,  # its seed, device and precision are the ones the update used
        "update": {k: report[k] for k in ("plan", "forgetting", "decision")},
    }
    work = continual_dir(registry, name)
    work.mkdir(parents=True, exist_ok=True)
    verdict = "accepted" if decision.accepted else "rejected: " + "; ".join(decision.reasons)
    with tempfile.TemporaryDirectory(dir=work, prefix=".candidate-") as tmp:
        run_dir = Path(tmp) / "run"
        write_run_dir(run_dir, candidate, ctask.tokenizer, ctask, config_to_yaml(run_cfg), metrics)
        why = f"update v{mv.version} ({cfg.strategy}) on {new_data}: {verdict}"
        new = reg.add(run_dir, name, actor=actor, reason=why)
    if decision.accepted and g.promote:
        stage = reg.promote(name, new.version, "production", actor, why).stage
    elif decision.accepted:
        stage = new.stage
    else:
        stage = reg.promote(name, new.version, "archived", actor, why).stage
    freeze(
        registry,
        name,
        new.version,
        build_buffer_size(cfg.replay).sample([*frozen.replay, *new_train], cfg.seed),
        balanced_sample([*frozen.regression, *new_holdout], cfg.replay.regression_size, cfg.seed),
        {"from_version": mv.version, "new_data": new_data},
    )
    report.update({"version": new.version, "stage": stage})
    report_dir = write_update_report(work / "updates", f"v{new.version}", report)
    for tracker in trackers:  # scores, the update's report and the candidate model
        tracker.finish(
            metrics, [report_dir / "report.md", report_dir / "report.json"], new.path / "model"
        )
    return UpdateResult(
        False, plan, before, after, decision, new.version, stage, report_dir, report
    )
