"""The promotion gate: compare a candidate with the production model before it may replace it.

Plain values in, a decision with every reason out, so the rule is testable without models.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class GateDecision:
    """Whether the candidate passed, why (each failed check is a reason), and each check."""

    accepted: bool
    reasons: list[str] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "reasons": self.reasons, "checks": self.checks}


def decide(
    before_regression: dict[str, Any],
    after_regression: dict[str, Any],
    before_new: dict[str, Any],
    after_new: dict[str, Any],
    max_overall_drop: float,
    max_class_drop: float,
    min_class_support: int,
    min_new_gain: float,
) -> GateDecision:
    """Apply the gate to scores from ``retrain.score`` (accuracy, per-class recall).

    The candidate passes when (1) its accuracy on the regression set of earlier data is at most
    ``max_overall_drop`` below the production model's, (2) no class with at least
    ``min_class_support`` regression examples loses more than ``max_class_drop`` recall, and
    (3) its accuracy on the new data's held-out part beats production's by more than
    ``min_new_gain``.
    """
    checks: list[dict[str, Any]] = []
    reasons: list[str] = []

    def check(name: str, before: float, after: float, ok: bool, rule: str) -> None:
        checks.append({"check": name, "before": before, "after": after, "passed": ok, "rule": rule})
        if not ok:
            reasons.append(f"{name}: {before:.4f} -> {after:.4f} ({rule})")

    if before_regression.get("n"):
        b, a = before_regression["accuracy"], after_regression["accuracy"]
        check(
            "regression accuracy",
            b,
            a,
            b - a <= max_overall_drop + 1e-12,
            f"may drop at most {max_overall_drop}",
        )
        for label, m in before_regression["per_class"].items():
            if m["support"] < min_class_support:
                continue
            after = after_regression["per_class"].get(label, {}).get("recall", 0.0)
            check(
                f"regression recall of {label!r}",
                m["recall"],
                after,
                m["recall"] - after <= max_class_drop + 1e-12,
                f"may drop at most {max_class_drop}",
            )
    b, a = before_new["accuracy"], after_new["accuracy"]
    check("new-data accuracy", b, a, a - b > min_new_gain, f"must gain more than {min_new_gain}")
    return GateDecision(accepted=not reasons, reasons=reasons, checks=checks)
