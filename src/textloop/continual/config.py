"""Typed configuration of ``textloop update``: strategy, schedule, replay buffer and gate.

A YAML file holds only what differs from the defaults; ``--set key=value`` overrides on top.
Every problem is reported at once with its key path, as for run configs.

Example:
    >>> cfg = load_update_config(None, ["strategy=ewc", "gate.max_overall_drop=0.01"])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from textloop.config import ScheduleConfig, StrictModel, load_tree, validate_tree
from textloop.continual.replay import DEFAULT_BUFFER, DEFAULT_REGRESSION_SIZE

Strategy = Literal["naive", "replay", "ewc", "lwf"]
Reference = Literal["none", "joint"]


class GateConfig(StrictModel):
    """What a candidate must show before it may replace the production model.

    When the update adds labels, the forgetting checks (``max_overall_drop``,
    ``max_class_drop``) judge the candidate in the label space production knew: its prediction
    on the regression set is the argmax over the old labels only. Old examples it now sends to
    a new label are reported as old<->new confusions and capped by ``max_old_to_new_share``.
    """

    max_overall_drop: float = Field(
        0.02,
        ge=0.0,
        le=1.0,
        description="Most accuracy the candidate may lose on the frozen regression set of "
        "earlier data, against the production model (in the old label space when the update "
        "adds labels).",
    )
    max_class_drop: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="Most recall any earlier class may lose on the regression set (classes "
        "with fewer than gate.min_class_support examples there are not judged; in the old "
        "label space when the update adds labels).",
    )
    overall_noise_z: float = Field(
        2.0,
        ge=0.0,
        le=10.0,
        description="Accuracy drops within this many binomial standard errors (of production's "
        "accuracy on the regression set) above max_overall_drop are chance: 60 examples at "
        "96.7% allow 0.02 + 0.046 (two flipped examples), 2,000 at 90% allow 0.02 + 0.013. "
        "0: max_overall_drop alone.",
    )
    class_noise_z: float = Field(
        2.0,
        ge=0.0,
        le=10.0,
        description="Per-class recall drops within this many binomial standard errors (of the "
        "class's recall on its regression examples) above max_class_drop are chance, not "
        "forgetting: 40 examples at 90% recall allow 0.05 + 0.095. 0: max_class_drop alone.",
    )
    class_family_alpha: float = Field(
        0.05,
        ge=0.0,
        lt=1.0,
        description="With K classes judged, the noise allowance uses at least the one-sided "
        "normal quantile of 1 - alpha/K standard errors (Bonferroni), so chance flips fail one "
        "of K classes in about alpha of updates: z 3.1 for 60 classes, 2.3 for 5. "
        "0: gate.class_noise_z alone.",
    )
    min_class_support: int = Field(
        10, ge=1, description="Regression-set examples a class needs to be judged per class."
    )
    min_new_gain: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="The candidate's accuracy on the new data's held-out part must exceed the "
        "production model's by more than this.",
    )
    max_old_to_new_share: float = Field(
        0.2,
        ge=0.0,
        le=1.0,
        description="When the update adds labels: most of the regression set's earlier "
        "examples the candidate may send to a new label. Confusable new labels take a few "
        "(reported per pair; replay and joint retraining sent at most 2.5% on CLINC150's "
        "confusable intents); a candidate sending half of BBC business to the new politics was "
        "accepted at 0.5. 1.0: no limit.",
    )
    max_drop_vs_reference: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="With reference: joint, the candidate's (old-label) regression accuracy "
        "must also be at most this below the joint reference's (default: the reference is "
        "reported, not gated on).",
    )
    promote: bool = Field(
        True,
        description="Promote an accepted candidate to production (false: leave it in staging).",
    )


class ReplayConfig(StrictModel):
    """The replay buffer: earlier training data beside the registry, sized per class."""

    buffer_per_class: int = Field(
        DEFAULT_BUFFER.per_class,
        ge=1,
        description="Examples of each class the frozen buffer of each version keeps (a class "
        "with fewer keeps all), so the buffer grows with the label space; capped by "
        "replay.max_size.",
    )
    buffer_size: int | None = Field(
        None,
        ge=1,
        description="A fixed total for the frozen buffer instead of replay.buffer_per_class, "
        "spread as evenly over the classes as their counts allow.",
    )
    replay_per_class: int | None = Field(
        None,
        ge=0,
        description="Buffer examples of each earlier class mixed into the new training data "
        "(strategy replay). Default: as many as the new data has per new label (per label "
        "when it adds none), at least 50, so no earlier class is outnumbered by a new one; "
        "capped by what the buffer holds and replay.max_size.",
    )
    replay_size: int | None = Field(
        None,
        ge=0,
        description="A fixed total of buffer examples mixed in (strategy replay) instead of "
        "replay.replay_per_class; all of the buffer when it holds fewer; 0: none.",
    )
    max_size: int = Field(
        DEFAULT_BUFFER.cap,
        ge=1,
        description="Most examples the buffer, and the replayed sample, hold when sized per "
        "class (spread evenly over the classes when the cap bites).",
    )
    regression_size: int = Field(
        DEFAULT_REGRESSION_SIZE,
        ge=1,
        description="Examples the frozen regression set of each version holds at most.",
    )


class UpdateConfig(ScheduleConfig):
    """One update: how to retrain on a new labelled batch and when to accept the result. The
    schedule keys (epochs, lr, head_lr, batch_size, warmup_ratio, weight_decay, grad_clip,
    seed) are those of ``train``; the unset ones come from the default recipe for the rows the
    update trains on (new + replayed) and the labels it ends with."""

    strategy: Strategy = Field(
        "replay",
        description="naive: fine-tune on the new data only (baseline); replay: mix in a sample "
        "of the replay buffer; ewc: new data plus an elastic-weight-consolidation penalty "
        "(Kirkpatrick et al. 2017); lwf: new data plus distillation from the current model on "
        "the old labels (learning without forgetting, Li & Hoiem 2016).",
    )
    reference: Reference = Field(
        "none",
        description="joint: also train a reference from the production model on the whole "
        "replay buffer plus the new data (plain fine-tuning, the same schedule) and report its "
        "accuracies beside the candidate's, to calibrate what 'no forgetting' can mean for "
        "this data (and gate on it with gate.max_drop_vs_reference); none: no reference.",
    )
    text_column: str | None = Field(
        None, description="Text column of the new data (default: the production run's)."
    )
    label_column: str | None = Field(
        None, description="Label column of the new data (default: the production run's)."
    )
    drop_invalid_rows: bool = Field(
        False,
        description="Drop new-data rows with an empty text or label (e.g. feedback nobody "
        "labelled yet) instead of failing.",
    )
    holdout_fraction: float = Field(
        0.2,
        gt=0.0,
        lt=0.9,
        description="Share of the new data held out (stratified) for the gate; it joins the "
        "next version's regression set.",
    )
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0, description="Share of steps warming up.")
    max_seq_len: int | None = Field(
        None, ge=8, le=8192, description="Tokens per example (default: the production run's)."
    )
    ewc_lambda: float = Field(
        3.0,
        ge=0.0,
        description="ewc: strength of the penalty lambda/2 * sum F_i (theta_i - theta*_i)^2, "
        "with the Fisher diagonal F scaled to mean 1.",
    )
    fisher_samples: int = Field(
        256, ge=1, description="ewc: replay-buffer examples the Fisher diagonal is estimated on."
    )
    lwf_lambda: float = Field(
        1.0, ge=0.0, description="lwf: weight of the distillation loss on the old labels."
    )
    lwf_temperature: float = Field(
        2.0, gt=0.0, description="lwf: softmax temperature of the distillation."
    )
    threads: int | None = Field(None, ge=1, le=512, description="Intra-op threads.")
    track: Literal["none", "mlflow", "tensorboard"] = Field(
        "none",
        description="Experiment tracking of the update: mlflow logs its settings, training "
        "loss, before/after scores, report and candidate model (MLFLOW_TRACKING_URI respected); "
        "tensorboard writes event files under <registry>/continual/<name>/tensorboard. Never "
        "fails the update.",
    )
    replay: ReplayConfig = Field(default_factory=lambda: ReplayConfig())
    gate: GateConfig = Field(default_factory=lambda: GateConfig())

    @model_validator(mode="after")
    def _reference_for_its_check(self) -> UpdateConfig:
        if self.gate.max_drop_vs_reference is not None and self.reference == "none":
            raise ValueError(
                "gate.max_drop_vs_reference needs a reference to compare with: set "
                "reference: joint (or --reference joint), or unset the check"
            )
        return self


def load_update_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> UpdateConfig:
    """Load an update config from YAML (or defaults), then flag values, then ``--set`` overrides.

    Raises:
        ConfigError: a missing/invalid file or any invalid key or value (all listed at once).
    """
    tree = load_tree(path, overrides, extra)
    return validate_tree(UpdateConfig, tree, source=str(path) if path is not None else "update")
