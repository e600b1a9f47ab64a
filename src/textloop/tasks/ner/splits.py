"""Reading a config's data into the NER task's train / validation / test splits
(``build_splits``, part of the task-module contract in ``textloop.tasks.base``)."""

from __future__ import annotations

import random
from typing import Any

from textloop.config import RunConfig
from textloop.errors import ConfigError, DataError
from textloop.tasks.base import Splits
from textloop.tasks.ner.data import Sentence, read_ner, sentence_split
from textloop.tasks.ner.schemes import split_tag, to_iob2
from textloop.tasks.ner.task import NerTask


def _read(source: str, cfg: RunConfig) -> tuple[list[Sentence], str, int]:
    sentences = read_ner(source, cfg.data.model_dump())
    scheme, changed = to_iob2(sentences, cfg.data.tag_scheme, source)
    return sentences, scheme, changed


def build_splits(cfg: RunConfig, tokenizer: Any) -> Splits:
    """Read, convert to IOB2, split and window the NER data named by ``cfg.data``.

    Raises:
        ConfigError: no training data.
        DataError: any bad file or row (named), no entities, or a vocabulary that cannot
            represent most of the training words.
    """
    d = cfg.data
    if not d.train:
        raise ConfigError("no training data: set data.train or pass --train FILE")
    if not getattr(tokenizer, "is_fast", False):
        raise DataError("NER needs a fast tokenizer (word ids per piece); this model has none")
    train_s, scheme, changed = _read(d.train, cfg)
    types = sorted({t for s in train_s for x in s.tags if (t := split_tag(x)[1])})
    if not types:
        raise DataError(f"{d.train}: no entities in the training data (every tag is O)")
    if d.validation:
        val_s, val_source = _read(d.validation, cfg)[0], d.validation
    else:
        order = list(range(len(train_s)))
        random.Random(cfg.train.seed).shuffle(order)
        n_val = max(1, round(d.val_fraction * len(order)))
        held = set(order[:n_val])
        val_s = [s for i, s in enumerate(train_s) if i in held]
        train_s = [s for i, s in enumerate(train_s) if i not in held]
        val_source = (
            f"{d.train} (held-out {d.val_fraction:.0%} of sentences, seed {cfg.train.seed})"
        )
    test_source = d.test or sentence_split(d.train)
    test_s = _read(test_source, cfg)[0] if test_source else None

    task = NerTask(
        tokenizer=tokenizer,
        labels=["O"] + [f"{p}-{t}" for t in types for p in ("B", "I")],
        max_seq_len=cfg.train.max_seq_len,
        # the default overlap shrinks for short windows; a set one is checked by the config
        window_overlap=cfg.ner.window_overlap
        if cfg.ner.window_overlap is not None
        else min(32, max(0, (cfg.train.max_seq_len - 4) // 2 - 1)),
    )
    train, train_stats = task.encode(train_s)
    if train_stats["unknown_rate"] > cfg.ner.max_unknown_rate:
        raise DataError(
            f"{d.train}: {train_stats['unknown_rate']:.0%} of the training words are unknown to "
            f"the tokenizer of {cfg.model} (they become {tokenizer.unk_token}): its vocabulary "
            "cannot represent this text's script; choose a model whose tokenizer covers it "
            "(or raise ner.max_unknown_rate)"
        )
    validation, val_stats = task.encode(val_s)
    test, test_stats = task.encode(test_s) if test_s is not None else (None, {})
    stats = {"train": train_stats, "validation": val_stats, "test": test_stats}
    summary = {
        "train_source": d.train,
        "validation_source": val_source,
        "test_source": test_source,
        "n_train": len(train_s),
        "n_validation": len(val_s),
        "n_test": len(test_s) if test_s is not None else 0,
        "labels": task.labels,
        "entity_types": types,
        "tag_scheme": scheme,
        "tags_changed_to_iob2": changed,
        "windows": {k: v.get("windows", 0) for k, v in stats.items()},
        "unknown_rate": {k: round(v.get("unknown_rate", 0.0), 4) for k, v in stats.items()},
        "truncated": {
            "max_seq_len": cfg.train.max_seq_len,
            **{f"{k} (words cut)": v.get("words_cut", 0) for k, v in stats.items()},
        },
    }
    return Splits(task=task, train=train, validation=validation, test=test, summary=summary)
