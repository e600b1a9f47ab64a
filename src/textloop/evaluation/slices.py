"""Metrics per slice of the data, worst slice first.

A slice spec is one of:

- ``column:NAME``: one slice per value of column ``NAME`` (a product category, a source);
  at most ``MAX_VALUES`` values, the rarest folded into ``(other)``;
- ``regex:NAME=PATTERN``: texts matching ``PATTERN`` (case-insensitive) vs the rest;
- ``length``: word-count tertiles of the texts (short / medium / long, bounds in the name).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from textloop.errors import ConfigError, DataError
from textloop.tasks.classification.temperature import (
    confidences_and_correct,
    expected_calibration_error,
)

MAX_VALUES = 30
SMALL_SLICE = 20  # fewer examples than this: the slice's numbers are flagged as noisy


def parse_slice(spec: str) -> tuple[str, str, str]:
    """Split a slice spec into ``(kind, name, argument)``.

    Raises:
        ConfigError: an unknown kind, a missing name, or a regex that does not compile.
    """
    if spec == "length":
        return "length", "length", ""
    kind, _, rest = spec.partition(":")
    if kind == "column" and rest:
        return "column", rest, rest
    if kind == "regex" and "=" in rest:
        name, pattern = rest.split("=", 1)
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"--slice {spec!r}: invalid regex ({exc})") from None
        if name and pattern:
            return "regex", name, pattern
    raise ConfigError(
        f"--slice {spec!r}: expected column:NAME, regex:NAME=PATTERN or length "
        "(e.g. --slice column:category --slice 'regex:refund=refund|money back')"
    )


def build_slices(
    specs: Sequence[str], texts: Sequence[str], rows: Sequence[dict[str, Any]], source: str = "data"
) -> dict[str, np.ndarray]:
    """Slice name -> boolean mask over the examples.

    Args:
        specs: slice specs (see the module docstring).
        texts: the examples' texts.
        rows: the examples' full rows (for ``column:`` slices), aligned with ``texts``.
        source: the data file, for error messages.

    Raises:
        ConfigError: a bad spec.
        DataError: a ``column:`` slice names a column the data does not have.
    """
    out: dict[str, np.ndarray] = {}
    n = len(texts)
    for spec in specs:
        kind, name, arg = parse_slice(spec)
        if kind == "column":
            if not any(arg in r for r in rows):
                columns = sorted({k for r in rows for k in r})
                raise DataError(
                    f"--slice {spec}: column {arg!r} not in {source}; columns are: "
                    + ", ".join(columns)
                )
            values = [str(r.get(arg, "")) for r in rows]
            common = {v for v, _ in Counter(values).most_common(MAX_VALUES)}
            values = [v if v in common else "(other)" for v in values]
            for v in sorted(set(values)):
                out[f"{name}={v}"] = np.array([x == v for x in values], dtype=bool)
        elif kind == "regex":
            rx = re.compile(arg, re.IGNORECASE)
            hits = np.array([bool(rx.search(t)) for t in texts], dtype=bool)
            out[f"{name} (matches /{arg}/)"] = hits
            out[f"not {name}"] = ~hits
        else:
            words = np.array([len(t.split()) for t in texts])
            if n == 0:
                continue
            lo, hi = (int(x) for x in np.quantile(words, [1 / 3, 2 / 3]))
            out[f"length: short (<= {lo} words)"] = words <= lo
            out[f"length: medium ({lo + 1}-{hi} words)"] = (words > lo) & (words <= hi)
            out[f"length: long (> {hi} words)"] = words > hi
    return out


def slice_metrics(
    slices: dict[str, np.ndarray],
    targets: np.ndarray,
    probs: np.ndarray,
    multi_label: bool = False,
) -> list[dict[str, Any]]:
    """Accuracy, macro-F1, ECE and mean confidence per slice, worst accuracy first.

    Args:
        slices: name -> boolean mask over examples.
        targets: (N,) class ids, or (N, C) multi-hot rows.
        probs: (N, C) predicted probabilities.
        multi_label: read ``probs`` as per-label sigmoids (accuracy is exact-set accuracy).
    """
    from sklearn.metrics import f1_score

    if multi_label:
        pred = (probs >= 0.5).astype(int)
        right = (pred == targets.astype(int)).all(axis=1)
    else:
        pred = probs.argmax(axis=1)
        right = pred == targets
    rows = []
    for name, mask in slices.items():
        n = int(mask.sum())
        if n == 0:
            continue
        conf, correct = confidences_and_correct(probs[mask], targets[mask], multi_label)
        rows.append(
            {
                "slice": name,
                "n": n,
                "accuracy": float(right[mask].mean()),
                "macro_f1": float(
                    f1_score(targets[mask], pred[mask], average="macro", zero_division=0)
                ),
                "ece": expected_calibration_error(conf, correct),
                "mean_confidence": float(conf.mean()),
                "small": n < SMALL_SLICE,
            }
        )
    return sorted(rows, key=lambda r: (r["accuracy"], r["macro_f1"], -r["n"]))


def slice_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Markdown table of ``slice_metrics`` rows."""
    lines = [
        "| slice | n | accuracy | macro-F1 | ECE | mean confidence |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        flag = " (small)" if r["small"] else ""
        lines.append(
            f"| {r['slice']}{flag} | {r['n']} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} "
            f"| {r['ece']:.4f} | {r['mean_confidence']:.4f} |"
        )
    return lines
