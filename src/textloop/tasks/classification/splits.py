"""Reading a config's data into the classification task's train / validation / test splits
(``build_splits``, part of the task-module contract in ``textloop.tasks.base``)."""

from __future__ import annotations

from typing import Any

from textloop.config import RunConfig
from textloop.data.builtin import builtin_columns, default_test_split
from textloop.data.examples import Selected, select_columns, subset
from textloop.data.prepare.corpus import with_prepared_splits
from textloop.data.readers import Table, read_table
from textloop.data.split import stratified_split
from textloop.errors import ConfigError
from textloop.tasks.base import Splits
from textloop.tasks.classification.task import (
    ClassificationTask,
    balanced_weights,
    label_set,
    parse_labels,
)


def _select(table: Table, cfg: RunConfig, columns: dict[str, str]) -> Selected:
    text = {"text": (columns["text_column"], "--text-column / data.text_column")}
    if cfg.data.text_pair_column:
        text["pair"] = (cfg.data.text_pair_column, "--text-pair-column / data.text_pair_column")
    label = {"label": (columns["label_column"], "--label-column / data.label_column")}
    return select_columns(table, text, label, cfg.data.drop_invalid_rows)


def build_splits(cfg: RunConfig, tokenizer: Any) -> Splits:
    """Read, validate, split and tokenize the data named by ``cfg.data``.

    Raises:
        ConfigError: no training data given.
        DataError: any problem in any file: missing columns, bad rows, one class, unknown labels.
    """
    d = with_prepared_splits(cfg.data)  # a prepared corpus brings its validation/test splits
    if not d.train:
        raise ConfigError("no training data: set data.train or pass --train FILE")
    # a builtin dataset brings its own column names unless the user set them
    columns = {"text_column": d.text_column, "label_column": d.label_column}
    columns.update(
        {k: v for k, v in builtin_columns(d.train).items() if k not in d.model_fields_set}
    )
    train_table = read_table(d.train)
    train_sel = _select(train_table, cfg, columns)
    dropped: dict[str, Any] = {}
    labels = parse_labels(train_sel.values["label"], d.multi_label, d.label_separator)
    label_names = label_set(labels, d.multi_label, train_table.source)

    if d.validation:
        val_table = read_table(d.validation)
        val_sel = _select(val_table, cfg, columns)
        val_source = val_table.source
    else:
        strata = ["|".join(ls) for ls in labels] if d.multi_label else labels
        keep, held = stratified_split(strata, d.val_fraction, cfg.train.seed)
        val_sel, train_sel = subset(train_sel, held), subset(train_sel, keep)
        val_source = f"{train_table.source} (held-out {d.val_fraction:.0%}, stratified, seed {cfg.train.seed})"
    test_source = d.test or default_test_split(train_table.source)
    test_sel = _select(read_table(test_source), cfg, columns) if test_source else None
    for name, sel in (("train", train_sel), ("validation", val_sel), ("test", test_sel)):
        if sel is not None and sel.dropped:
            dropped[name] = {k: len(v) for k, v in sel.dropped.items()}

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
    test = task.encode_selected(test_sel, test_source) if test_sel and test_source else None
    if cfg.train.class_weights == "balanced":
        task.class_weights = balanced_weights(train.targets, len(label_names), d.multi_label)
    summary = {
        "train_source": train_table.source,
        "validation_source": val_source,
        "test_source": test_source,
        "n_train": len(train),
        "n_validation": len(validation),
        "n_test": len(test) if test is not None else 0,
        "labels": label_names,
        "dropped_rows": dropped,
        "truncated": {
            "max_seq_len": cfg.train.max_seq_len,
            "train": train.n_truncated,
            "validation": validation.n_truncated,
            "test": test.n_truncated if test is not None else 0,
        },
    }
    return Splits(task=task, train=train, validation=validation, test=test, summary=summary)
