"""Build a task and its encoded splits from a run config, checking everything before training."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from textloop.config import RunConfig
from textloop.data.builtin import BUILTIN_DATASETS, builtin_has_split, parse_builtin
from textloop.data.examples import Selected, select_columns
from textloop.data.readers import Table, read_table
from textloop.data.split import stratified_split
from textloop.errors import ConfigError
from textloop.tasks.base import Encoded
from textloop.tasks.classification import (
    ClassificationTask,
    balanced_weights,
    label_set,
    parse_labels,
)


@dataclass
class Splits:
    """A task with its encoded train / validation / (test) splits and a data summary."""

    task: ClassificationTask
    train: Encoded
    validation: Encoded
    test: Encoded | None
    summary: dict[str, Any] = field(default_factory=dict)


def _subset(sel: Selected, idx: list[int]) -> Selected:
    return Selected(
        values={k: [v[i] for i in idx] for k, v in sel.values.items()},
        locations=[sel.locations[i] for i in idx],
        dropped=sel.dropped,
    )


def _select(table: Table, cfg: RunConfig, with_labels: bool = True) -> Selected:
    d = cfg.data
    text = {"text": (d.text_column, "--text-column / data.text_column")}
    if d.text_pair_column:
        text["pair"] = (d.text_pair_column, "--text-pair-column / data.text_pair_column")
    other = {"label": (d.label_column, "--label-column / data.label_column")} if with_labels else {}
    return select_columns(table, text, other, d.drop_invalid_rows)


def _with_builtin_columns(cfg: RunConfig) -> RunConfig:
    """A builtin dataset brings its own column names unless the user set them."""
    source = cfg.data.train or ""
    if not source.startswith("builtin:"):
        return cfg
    name, _ = parse_builtin(source)
    set_fields = cfg.data.model_fields_set
    data = cfg.data.model_copy()
    if "text_column" not in set_fields:
        data.text_column = BUILTIN_DATASETS[name]["text_column"]
    if "label_column" not in set_fields:
        data.label_column = BUILTIN_DATASETS[name]["label_column"]
    return cfg.model_copy(update={"data": data})


def build_splits(cfg: RunConfig, tokenizer: Any) -> Splits:
    """Read, validate, split and tokenize the data named by ``cfg.data``.

    Raises:
        ConfigError: no training data given.
        DataError: any problem in any file: missing columns, bad rows, one class, unknown labels.
    """
    if not cfg.data.train:
        raise ConfigError("no training data: set data.train or pass --train FILE")
    cfg = _with_builtin_columns(cfg)
    d = cfg.data
    train_table = read_table(cfg.data.train or "")
    train_sel = _select(train_table, cfg)
    summary: dict[str, Any] = {"dropped_rows": {}}
    if train_sel.dropped:
        summary["dropped_rows"]["train"] = {k: len(v) for k, v in train_sel.dropped.items()}

    labels = parse_labels(train_sel.values["label"], d.multi_label, d.label_separator)
    label_names = label_set(labels, d.multi_label, train_table.source)

    train_source = train_table.source
    test_source = d.test
    is_builtin = train_source.startswith("builtin:")
    if test_source is None and is_builtin and builtin_has_split(train_source, "test"):
        test_source = f"builtin:{parse_builtin(train_source)[0]}:test"

    val_sel: Selected
    if d.validation:
        val_table = read_table(d.validation)
        val_sel = _select(val_table, cfg)
        val_source = val_table.source
        if val_sel.dropped:
            summary["dropped_rows"]["validation"] = {k: len(v) for k, v in val_sel.dropped.items()}
    else:
        strata = ["|".join(ls) for ls in labels] if d.multi_label else labels
        keep, held = stratified_split(strata, d.val_fraction, cfg.train.seed)
        val_sel, train_sel = _subset(train_sel, held), _subset(train_sel, keep)
        labels = [labels[i] for i in keep]
        val_source = f"{train_table.source} (held-out {d.val_fraction:.0%}, stratified, seed {cfg.train.seed})"
    test_sel = None
    if test_source:
        test_table = read_table(test_source)
        test_sel = _select(test_table, cfg)
        if test_sel.dropped:
            summary["dropped_rows"]["test"] = {k: len(v) for k, v in test_sel.dropped.items()}

    task = ClassificationTask(
        tokenizer=tokenizer,
        labels=label_names,
        max_seq_len=cfg.train.max_seq_len,
        multi_label=d.multi_label,
        pair=d.text_pair_column is not None,
        label_separator=d.label_separator,
    )
    train = task.encode_selected(train_sel, train_table.source)
    validation = task.encode_selected(val_sel, val_source)
    test = task.encode_selected(test_sel, test_source) if test_sel is not None else None  # type: ignore[arg-type]
    if cfg.train.class_weights == "balanced":
        task.class_weights = balanced_weights(train.targets, len(label_names), d.multi_label)

    summary.update(
        {
            "train_source": train_table.source,
            "validation_source": val_source,
            "test_source": test_source,
            "n_train": len(train),
            "n_validation": len(validation),
            "n_test": len(test) if test is not None else 0,
            "labels": label_names,
            "truncated": {
                "max_seq_len": cfg.train.max_seq_len,
                "train": train.n_truncated,
                "validation": validation.n_truncated,
                "test": test.n_truncated if test is not None else 0,
            },
        }
    )
    return Splits(task=task, train=train, validation=validation, test=test, summary=summary)
