"""Reading a config's data into the extractive QA task's train / validation / test splits
(``build_splits``, part of the task-module contract in ``textloop.tasks.base``)."""

from __future__ import annotations

import random
from typing import Any

from textloop.config import RunConfig
from textloop.errors import ConfigError, DataError
from textloop.tasks.base import Splits
from textloop.tasks.qa.data import read_qa
from textloop.tasks.qa.metrics import uses_cjk
from textloop.tasks.qa.task import (
    TUNE_NULL_THRESHOLD,
    QaTask,
)
from textloop.tasks.windows import special_template


def build_splits(cfg: RunConfig, tokenizer: Any) -> Splits:
    """Read, check and window the QA data named by ``cfg.data``.

    Raises:
        ConfigError: no training data.
        DataError: a bad file or example (named), e.g. an answer that does not match its
            context at ``answer_start``.
    """
    d, q = cfg.data, cfg.qa
    if not d.train:
        raise ConfigError("no training data: set data.train or pass --train FILE")
    if not getattr(tokenizer, "is_fast", False):
        raise DataError(
            "QA needs a fast tokenizer (character offsets per token); this model has none"
        )
    columns = d.model_dump()
    train_ex, dropped = read_qa(d.train, columns, d.drop_invalid_rows)
    if d.validation:
        val_ex, val_dropped = read_qa(d.validation, columns, d.drop_invalid_rows)
        val_source = d.validation
    else:
        # split by context, so no paragraph has questions on both sides
        contexts = sorted({ex.context for ex in train_ex})
        random.Random(cfg.train.seed).shuffle(contexts)
        held = set(contexts[: max(1, round(d.val_fraction * len(contexts)))])
        val_ex = [ex for ex in train_ex if ex.context in held]
        train_ex = [ex for ex in train_ex if ex.context not in held]
        val_dropped, val_source = [], f"{d.train} (held-out {d.val_fraction:.0%} of contexts)"
    test_ex, test_dropped = read_qa(d.test, columns, d.drop_invalid_rows) if d.test else (None, [])
    n_unanswerable = sum(not ex.answerable for ex in train_ex)
    allow = q.allow_no_answer if q.allow_no_answer is not None else n_unanswerable > 0
    if n_unanswerable and not allow:
        raise DataError(
            f"{d.train}: {n_unanswerable} questions have no answer but qa.allow_no_answer is false"
        )
    template = special_template(tokenizer, pair=True)
    room = cfg.train.max_seq_len - q.max_query_len - template.n_special
    stride = q.doc_stride if q.doc_stride is not None else max(q.max_answer_len - 1, room // 2)
    task = QaTask(
        tokenizer=tokenizer,
        max_seq_len=cfg.train.max_seq_len,
        doc_stride=stride,
        max_query_len=q.max_query_len,
        max_answer_len=q.max_answer_len,
        n_best=q.n_best,
        allow_no_answer=allow,
        null_threshold=q.null_threshold if q.null_threshold is not None else 0.0,
        tune_threshold=q.null_threshold is None,
        metric=q.metric if q.metric != "auto" else _auto_metric(train_ex),
    )
    train = task.encode(train_ex, training=True)
    validation = task.encode(val_ex)
    validation.extra[TUNE_NULL_THRESHOLD] = [True]
    test = task.encode(test_ex) if test_ex is not None else None
    splits = {"train": train, "validation": validation, "test": test}
    summary = {
        "train_source": d.train,
        "validation_source": val_source,
        "test_source": d.test,
        "n_train": len(train_ex),
        "n_validation": len(val_ex),
        "n_test": len(test_ex) if test_ex is not None else 0,
        "features": {k: len(v) if v is not None else 0 for k, v in splits.items()},
        "unanswerable": {
            k: sum(not ex.answerable for ex in v.extra["examples"]) if v is not None else 0
            for k, v in splits.items()
        },
        "allow_no_answer": allow,
        "metric": task.metric,
        "doc_stride": stride,
        "answers_longer_than_a_window": len(train.extra["answer_lost"]),
        "dropped_rows": {
            k: {"answer does not match context": len(v)}
            for k, v in (("train", dropped), ("validation", val_dropped), ("test", test_dropped))
            if v
        },
        "truncated": {
            "max_seq_len": cfg.train.max_seq_len,
            **{f"{k} (questions cut)": v.n_truncated for k, v in splits.items() if v is not None},
        },
    }
    return Splits(task=task, train=train, validation=validation, test=test, summary=summary)


def _auto_metric(examples: list[Any]) -> str:
    """cmrc (character-level) when the training answers are mostly CJK text, else squad."""
    answers = [text for ex in examples for text, _ in ex.answers]
    return "cmrc" if uses_cjk(answers) else "squad"
