"""The promotion gate: compare a candidate with the production model before it may replace it.

Plain values in, a decision with every reason out, so the rule is testable without models.

Forgetting is judged in the label space production knew. When an update adds labels, an old
query that now resembles a new intent is genuinely ambiguous: a 77-way candidate that sends it
to the new intent has not forgotten the old one, and comparing its 77-way accuracy with a
40-way model's would forbid ever adding a confusable intent. So the forgetting thresholds
apply to the candidate's prediction restricted to the old labels (argmax over their logits
only), and the old examples it sends to new labels are reported per (old, new) pair, capped
only by a generous share. The full-label-space accuracy stays in the report, for information.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Mode = Literal["same_label_space", "old_label_space"]

_TOLERANCE = 1e-12  # the thresholds are inclusive; float sums of counts must not flip them


@dataclass
class GateDecision:
    """Whether the candidate passed, why (each failed check is a reason), each check, and what
    was reported beside the checks (``info``: full-label-space accuracy, old->new confusions,
    new labels' recall, the reference's scores)."""

    accepted: bool
    reasons: list[str] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    mode: Mode = "same_label_space"
    info: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "mode": self.mode,
            "reasons": self.reasons,
            "checks": self.checks,
            "info": self.info,
        }


def class_noise(recall: float, support: int, z: float) -> float:
    """The recall (or accuracy) drop ``support`` regression examples show by chance: ``z``
    binomial standard errors of it (clipped to [0.05, 0.95], so a score of 100% still allows
    for a flip or two). With 40 examples at 90% recall and z=2: 0.095; the whole regression
    set of 60 at 96.7%: 0.046, of 2,000 at 90%: 0.013."""
    if z <= 0 or support <= 0:
        return 0.0
    p = min(max(recall, 0.05), 0.95)
    return z * math.sqrt(p * (1 - p) / support)


def family_z(z: float, alpha: float, n_classes: int) -> float:
    """The per-class noise z when ``n_classes`` are each checked: at least the one-sided normal
    quantile of ``1 - alpha / n_classes`` (Bonferroni), so that a chance flip past the rule in
    any one of them happens in about ``alpha`` of updates; ``z`` alone when ``alpha`` is 0.

    Example:
        >>> round(family_z(2.0, 0.05, 60), 2), family_z(2.0, 0.05, 1), family_z(2.0, 0.0, 60)
        (3.14, 2.0, 2.0)
    """
    if alpha <= 0 or n_classes <= 0:
        return z
    return max(z, statistics.NormalDist().inv_cdf(1.0 - alpha / n_classes))


def decide(
    before_regression: dict[str, Any],
    after_regression: dict[str, Any],
    before_new: dict[str, Any],
    after_new: dict[str, Any],
    max_overall_drop: float,
    max_class_drop: float,
    min_class_support: int,
    min_new_gain: float,
    *,
    after_regression_full: dict[str, Any] | None = None,
    old_to_new: dict[str, Any] | None = None,
    max_old_to_new_share: float = 1.0,
    new_labels: Sequence[str] = (),
    reference: Mapping[str, Any] | None = None,
    max_drop_vs_reference: float | None = None,
    class_noise_z: float = 0.0,
    class_family_alpha: float = 0.0,
    overall_noise_z: float = 0.0,
) -> GateDecision:
    """Apply the gate to scores from ``retrain.score`` (accuracy, per-class recall).

    The candidate passes when (1) its accuracy on the regression set of earlier data is at most
    ``max_overall_drop`` below the production model's, (2) no class with at least
    ``min_class_support`` regression examples loses more than ``max_class_drop`` recall plus
    ``class_noise_z`` standard errors of its recall on its examples (chance flips; at least
    ``family_z`` of the classes judged when ``class_family_alpha`` is set), and
    (3) its accuracy on the new data's held-out part beats production's by more than
    ``min_new_gain``.

    When the update added labels, ``after_regression`` must be the candidate's score in the old
    label space (``retrain.score_in_old_label_space``'s ``old_labels``) and
    ``after_regression_full`` its full-label-space score: (1) and (2) judge the former, the
    latter is reported. Then also (4) at most ``max_old_to_new_share`` of the regression set's
    earlier examples may go to a new label (``old_to_new``, reported per pair; 1.0: reported
    only). With a ``reference`` (``{"regression": score in the old label space, ...}`` of a
    model jointly trained on the buffer and the new data) and ``max_drop_vs_reference`` set,
    (5) the candidate's regression accuracy must be at most that below the reference's.

    Example:
        >>> reg = {"n": 10, "accuracy": 0.9, "per_class": {}}
        >>> new = {"n": 10, "accuracy": 0.0, "per_class": {}}
        >>> decide(reg, reg, new, {**new, "accuracy": 0.8}, 0.02, 0.05, 10, 0.0).accepted
        True
    """
    grown = after_regression_full is not None
    mode: Mode = "old_label_space" if grown else "same_label_space"
    space = " (old labels)" if grown else ""
    checks: list[dict[str, Any]] = []
    reasons: list[str] = []
    info: dict[str, Any] = {}

    def check(name: str, before: float, after: float, ok: bool, rule: str) -> None:
        checks.append({"check": name, "before": before, "after": after, "passed": ok, "rule": rule})
        if not ok:
            reasons.append(f"{name}: {before:.4f} -> {after:.4f} ({rule})")

    if before_regression.get("n"):
        b, a, n = (
            before_regression["accuracy"],
            after_regression["accuracy"],
            before_regression["n"],
        )
        allowed = max_overall_drop + class_noise(b, n, overall_noise_z)
        check(
            f"regression accuracy{space}",
            b,
            a,
            b - a <= allowed + _TOLERANCE,
            f"may drop at most {allowed:.3f} ({max_overall_drop} + {overall_noise_z:.2g} "
            f"standard errors on {n} examples)"
            if overall_noise_z
            else f"may drop at most {max_overall_drop}",
        )
        judged = [
            (label, m)
            for label, m in before_regression["per_class"].items()
            if m["support"] >= min_class_support
        ]
        class_noise_z = family_z(class_noise_z, class_family_alpha, len(judged))
        for label, m in judged:
            after = after_regression["per_class"].get(label, {}).get("recall", 0.0)
            allowed = max_class_drop + class_noise(m["recall"], m["support"], class_noise_z)
            check(
                f"regression recall of {label!r}{space}",
                m["recall"],
                after,
                m["recall"] - after <= allowed + _TOLERANCE,
                f"may drop at most {allowed:.3f}"
                + (
                    f" ({max_class_drop} + {class_noise_z:.2g} standard errors on "
                    f"{m['support']} examples)"
                    if class_noise_z
                    else ""
                ),
            )
    if after_regression_full is not None and before_regression.get("n"):
        info["regression_accuracy_full_label_space"] = {
            "before": before_regression["accuracy"],
            "after": after_regression_full["accuracy"],
        }
    if grown and old_to_new is not None:
        info["old_to_new"] = old_to_new
        if max_old_to_new_share < 1.0 and old_to_new["n_old_gold"]:
            share = old_to_new["share"]
            check(
                "share of earlier examples predicted as a new label",
                0.0,
                share,
                share <= max_old_to_new_share + _TOLERANCE,
                f"at most {max_old_to_new_share}",
            )
    b, a = before_new["accuracy"], after_new["accuracy"]
    check("new-data accuracy", b, a, a - b > min_new_gain, f"must gain more than {min_new_gain}")
    if new_labels:
        recall = {
            lab: after_new["per_class"][lab]["recall"]
            for lab in new_labels
            if lab in after_new["per_class"]
        }
        info["new_labels_recall"] = recall
        info["new_labels_mean_recall"] = sum(recall.values()) / len(recall) if recall else None
    if reference is not None:
        ref_acc = reference["regression"]["accuracy"]
        info["reference"] = {
            "regression_accuracy": ref_acc,
            "regression_accuracy_full_label_space": reference.get("regression_full", {}).get(
                "accuracy", ref_acc
            ),
            "new_accuracy": reference.get("new", {}).get("accuracy"),
        }
        if max_drop_vs_reference is not None and ref_acc is not None:
            check(
                f"regression accuracy{space} vs the joint reference",
                ref_acc,
                after_regression["accuracy"],
                ref_acc - after_regression["accuracy"] <= max_drop_vs_reference + _TOLERANCE,
                f"may be at most {max_drop_vs_reference} below the reference",
            )
    return GateDecision(not reasons, reasons, checks, mode, info)


def predict_gate(
    old_labels: Sequence[str],
    new_labels: Sequence[str],
    regression_per_class: Mapping[str, int],
    before_new_accuracy: float | None,
    max_overall_drop: float,
    max_class_drop: float,
    min_class_support: int,
    min_new_gain: float,
    max_old_to_new_share: float,
    reference: str = "none",
    max_drop_vs_reference: float | None = None,
    class_noise_z: float = 0.0,
    class_family_alpha: float = 0.0,
    overall_noise_z: float = 0.0,
) -> dict[str, Any]:
    """How the gate will judge an update, said before training (for ``update --dry-run``).

    Returns:
        ``mode`` (``old_label_space`` when the update adds labels), ``judged_classes`` (the
        earlier classes with enough regression examples to be judged per class), ``can_pass``
        (False when a check cannot pass whatever the candidate does, else None: unknown until
        trained) and ``notes``, one sentence each.
    """
    n_reg = sum(regression_per_class.values())
    judged = sorted(lab for lab, n in regression_per_class.items() if n >= min_class_support)
    unknown = sorted(set(regression_per_class) - set(old_labels))
    mode: Mode = "old_label_space" if new_labels else "same_label_space"
    class_noise_z = family_z(class_noise_z, class_family_alpha, len(judged))
    notes: list[str] = []
    can_pass: bool | None = None
    rules = (
        f"accuracy may drop at most {max_overall_drop}"
        + (f" plus {overall_noise_z:.2g} standard errors" if overall_noise_z else "")
        + ", the recall of each of the "
        f"{len(judged)} classes with >= {min_class_support} examples at most {max_class_drop}"
        + (f" plus {class_noise_z:.2g} standard errors of its recall" if class_noise_z else "")
    )
    if not n_reg:
        notes.append("the regression set is empty: forgetting will not be checked")
    elif new_labels:
        cap = (
            f"rejected above a share of {max_old_to_new_share} of the earlier examples"
            if max_old_to_new_share < 1.0
            else "not limited"
        )
        notes.append(
            f"{len(new_labels)} new label{'s' if len(new_labels) != 1 else ''}: the regression "
            f"set ({n_reg} examples) will be judged in the old label space (argmax over the "
            f"{len(old_labels)} labels production knows): {rules}"
        )
        notes.append(
            f"old<->new confusions (earlier examples predicted as a new label) will be reported "
            f"per pair, {cap}; the full-label-space accuracy will be reported, not judged"
        )
    else:
        notes.append(
            f"no new labels: the regression set ({n_reg} examples) will be judged in the "
            f"label space production has: {rules}"
        )
    if unknown:
        notes.append(
            f"{len(unknown)} regression label(s) production does not know ({', '.join(unknown)}) "
            "count as errors before and after"
        )
    if before_new_accuracy is not None:
        notes.append(
            f"new-data accuracy must beat production's {before_new_accuracy:.4f} by more than "
            f"{min_new_gain}"
        )
        if before_new_accuracy + min_new_gain >= 1.0:
            can_pass = False
            notes.append(
                "the candidate cannot pass: production already scores so high on the held-out "
                "new data that no candidate can gain more than gate.min_new_gain"
            )
    if reference == "joint":
        notes.append(
            "a joint reference (plain fine-tuning on the whole buffer plus the new data) will "
            "be trained and reported beside the candidate"
            + (
                f"; the candidate must come within {max_drop_vs_reference} of its accuracy"
                if max_drop_vs_reference is not None
                else ""
            )
        )
    return {"mode": mode, "judged_classes": judged, "can_pass": can_pass, "notes": notes}
