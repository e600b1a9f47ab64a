"""Frozen reference data beside the registry: a replay buffer and a regression set per version.

Layout::

    registry/continual/<name>/<version>/
      replay.jsonl       # a sample of the data this version was trained on, per class
      regression.jsonl   # held-out earlier data the next candidate must not get worse on
      manifest.json      # counts per class, sources, sha256 of both files

Both are written once, when the version is registered by ``update`` (or, for a version
registered by hand, the first time ``update`` or ``drift`` needs them: built from the data its
``config.yaml`` names), and never changed afterwards; loading re-checks the hashes.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from textloop.artifacts.integrity import sha256_file
from textloop.data.builtin import builtin_columns, default_test_split
from textloop.data.examples import select_columns
from textloop.data.readers import read_table
from textloop.data.split import stratified_split
from textloop.errors import ConfigError, DataError, RegistryError
from textloop.fileio import atomic_dir

Row = dict[str, str]


def continual_dir(root: str | Path, name: str, version: int | None = None) -> Path:
    """``<registry>/continual/<name>[/<version>]``: where this package keeps its files."""
    base = Path(root) / "continual" / name
    return base if version is None else base / str(version)


def balanced_sample(rows: Sequence[Row], size: int, seed: int) -> list[Row]:
    """Up to ``size`` rows, spread as evenly over the labels as their counts allow.

    A rare class keeps all its rows; the room it leaves goes to the others (water-filling), so
    a replayed sample rehearses every earlier class, not just the frequent ones.
    """
    by_label: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        by_label[row["label"]].append(row)
    rng = random.Random(seed)
    quota = dict.fromkeys(by_label, 0)
    room = min(size, len(rows))
    while room > 0:
        open_labels = [lab for lab in sorted(by_label) if quota[lab] < len(by_label[lab])]
        share = max(1, room // len(open_labels))
        for lab in open_labels:
            take = min(share, len(by_label[lab]) - quota[lab], room)
            quota[lab] += take
            room -= take
            if room == 0:
                break
    out: list[Row] = []
    for lab in sorted(by_label):
        out.extend(rng.sample(by_label[lab], quota[lab]))
    rng.shuffle(out)
    return out


def per_class_sample(rows: Sequence[Row], per_class: int, seed: int) -> list[Row]:
    """Up to ``per_class`` rows of each label (a label with fewer keeps all of them)."""
    by_label: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        by_label[row["label"]].append(row)
    rng = random.Random(seed)
    out: list[Row] = []
    for lab in sorted(by_label):
        out.extend(rng.sample(by_label[lab], min(per_class, len(by_label[lab]))))
    rng.shuffle(out)
    return out


@dataclass(frozen=True)
class SampleSize:
    """How many rows a replay buffer (or the sample replayed from it) keeps.

    By default ``per_class`` rows of each label, so the buffer grows with the label space (40
    intents keep 40 x per_class, 150 keep 150 x per_class), capped at ``cap`` rows in all and
    spread evenly when capped. A fixed ``total`` replaces the per-class rule: ``total`` rows
    spread as evenly over the labels as their counts allow.
    """

    per_class: int
    cap: int
    total: int | None = None

    def sample(self, rows: Sequence[Row], seed: int) -> list[Row]:
        """The rows kept of ``rows`` (a seeded sample)."""
        if self.total is not None:
            return balanced_sample(rows, self.total, seed)
        picked = per_class_sample(rows, self.per_class, seed)
        return balanced_sample(picked, self.cap, seed) if len(picked) > self.cap else picked


# What a version's frozen buffer holds when nothing else is configured (``ReplayConfig``'s
# defaults): ``drift`` may freeze a version's data before any update does.
DEFAULT_BUFFER = SampleSize(per_class=100, cap=20_000)
# the fewest rows of each earlier class an unconfigured replay mixes in (``build_replay_size``)
REPLAY_MIN_PER_CLASS = 50
DEFAULT_REGRESSION_SIZE = 2000


def read_labelled(
    source: str, text_column: str, label_column: str, drop_invalid: bool = False
) -> list[Row]:
    """Rows of a labelled file, directory, glob or builtin as ``{"text", "label"}`` dicts.

    ``drop_invalid`` drops rows with an empty text or label instead of failing on them.

    Raises:
        DataError: unreadable source, a missing column (the columns found are listed), bad rows.
    """
    table = read_table(source)
    columns = table.columns
    builtin = builtin_columns(source)
    if text_column not in columns and builtin:
        text_column = builtin["text_column"]
    if label_column not in columns and builtin:
        label_column = builtin["label_column"]
    sel = select_columns(
        table,
        {"text": (text_column, "--text-column / text_column")},
        {"label": (label_column, "--label-column / label_column")},
        drop_invalid=drop_invalid,
    )
    labels = [
        str(int(v)) if isinstance(v, float) and v.is_integer() else str(v).strip()
        for v in sel.values["label"]
    ]
    return [{"text": t, "label": lab} for t, lab in zip(sel.values["text"], labels)]


def write_jsonl(path: Path, rows: Sequence[Row]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps({"text": row["text"], "label": row["label"]}, ensure_ascii=False))
            f.write("\n")


def read_jsonl(path: Path) -> list[Row]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@dataclass
class FrozenData:
    """The replay buffer and regression set of one registered version."""

    replay: list[Row]
    regression: list[Row]
    manifest: dict[str, Any]


def label_counts(rows: Sequence[Row]) -> dict[str, int]:
    """Rows per label, in label order."""
    out: dict[str, int] = defaultdict(int)
    for row in rows:
        out[row["label"]] += 1
    return dict(sorted(out.items()))


def freeze(
    root: str | Path,
    name: str,
    version: int,
    replay: Sequence[Row],
    regression: Sequence[Row],
    sources: dict[str, Any],
) -> FrozenData:
    """Write a version's replay buffer and regression set (once; written whole or not at all).

    Raises:
        RegistryError: the version already has frozen data (it never changes).
    """
    final = continual_dir(root, name, version)
    if (final / "manifest.json").is_file():
        raise RegistryError(f"{final} already holds frozen data for {name} v{version}")
    final.parent.mkdir(parents=True, exist_ok=True)
    # a folder already at ``final`` without a manifest was left by a crash: it is replaced
    with atomic_dir(final) as tmp:
        write_jsonl(tmp / "replay.jsonl", replay)
        write_jsonl(tmp / "regression.jsonl", regression)
        manifest = {
            "name": name,
            "version": version,
            "frozen_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "sources": sources,
            "replay": {"n": len(replay), "per_label": label_counts(replay)},
            "regression": {"n": len(regression), "per_label": label_counts(regression)},
            "sha256": {f: sha256_file(tmp / f) for f in ("replay.jsonl", "regression.jsonl")},
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
    return FrozenData(list(replay), list(regression), manifest)


def load_frozen(root: str | Path, name: str, version: int) -> FrozenData | None:
    """A version's frozen data, hash-checked; None when it has none yet.

    Raises:
        RegistryError: a frozen file was changed or removed.
    """
    d = continual_dir(root, name, version)
    if not (d / "manifest.json").is_file():
        return None
    manifest = json.loads((d / "manifest.json").read_text(encoding="utf-8"))
    for fname, digest in manifest["sha256"].items():
        if not (d / fname).is_file() or sha256_file(d / fname) != digest:
            raise RegistryError(
                f"{d / fname} does not match the sha256 recorded when it was frozen; restore "
                "it (the regression gate must not judge on changed data)"
            )
    return FrozenData(read_jsonl(d / "replay.jsonl"), read_jsonl(d / "regression.jsonl"), manifest)


def frozen_from_run_config(
    run_config: Any, buffer: SampleSize, regression_size: int, seed: int
) -> tuple[list[Row], list[Row], dict[str, Any]]:
    """Replay and regression rows rebuilt from the data a run's config names.

    The regression set is the run's test split (its validation split, or the same stratified
    hold-out ``train`` used, when there is none); the buffer samples the training rows.

    Raises:
        ConfigError: a task other than single-label, single-text classification.
        DataError: the data the run was trained on cannot be read any more.
    """
    d = run_config.data
    if run_config.task != "classification" or d.multi_label or d.text_pair_column:
        raise ConfigError(
            "continual updates support single-label, single-text classification; this run is "
            f"task {run_config.task!r} (multi_label={d.multi_label}, pair={bool(d.text_pair_column)})"
        )
    if not d.train:
        raise DataError("the production run's config names no training data (data.train)")
    try:
        train = read_labelled(d.train, d.text_column, d.label_column)
        held_source = d.test or (default_test_split(d.train) if d.train else None) or d.validation
        if held_source:
            held = read_labelled(held_source, d.text_column, d.label_column)
        else:
            keep, out = stratified_split(
                [r["label"] for r in train], d.val_fraction, run_config.train.seed
            )
            held, train = [train[i] for i in out], [train[i] for i in keep]
            held_source = f"{d.train} (held-out {d.val_fraction:.0%})"
    except DataError as exc:
        raise DataError(
            f"cannot rebuild the replay buffer of the production model from its training data: "
            f"{exc} (run `textloop update` once with the original data in place)"
        ) from None
    replay = buffer.sample(train, seed)
    regression = balanced_sample(held, regression_size, seed)
    return replay, regression, {"train": d.train, "regression": held_source}


def ensure_frozen(
    root: str | Path,
    name: str,
    version: int,
    run_config: Any,
    buffer: SampleSize,
    regression_size: int,
    seed: int,
    write: bool = True,
) -> FrozenData:
    """The version's frozen data, building it from its run config the first time.

    With ``write=False`` (a dry run) a missing set is built in memory and not written.
    """
    found = load_frozen(root, name, version)
    if found is not None:
        return found
    replay, regression, sources = frozen_from_run_config(run_config, buffer, regression_size, seed)
    if not write:
        return FrozenData(replay, regression, {"sources": sources, "not_written": True})
    return freeze(root, name, version, replay, regression, sources)
