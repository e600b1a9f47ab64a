"""Reading a config's data into the generation task's train / validation / test splits
(``build_splits``, part of the task-module contract in ``textloop.tasks.base``)."""

from __future__ import annotations

from typing import Any

from textloop.config import RunConfig
from textloop.data.split import stratified_split
from textloop.errors import ConfigError, DataError
from textloop.tasks.base import Encoded, Splits
from textloop.tasks.generation.data import (
    IGNORE,
    Conversations,
    ensure_chat_template,
    read_conversations,
)
from textloop.tasks.generation.decoding import DecodingOptions
from textloop.tasks.generation.pack import pack_examples
from textloop.tasks.generation.task import GenerationTask


def build_task(cfg: RunConfig, tokenizer: Any) -> GenerationTask:
    """The generation task a run config describes (the tokenizer gets a chat template if needed)."""
    ensure_chat_template(tokenizer)
    g = cfg.generation
    return GenerationTask(
        tokenizer=tokenizer,
        max_seq_len=cfg.train.max_seq_len,
        packing=cfg.train.packing,
        system_prompt=g.system_prompt,
        prompt_template=g.prompt_template,
        decoding=DecodingOptions(
            max_new_tokens=g.max_new_tokens,
            temperature=g.temperature,
            top_p=g.top_p,
            top_k=g.top_k,
            repetition_penalty=g.repetition_penalty,
            stop=tuple(g.stop),
            seed=cfg.train.seed,
        ),
        eval_samples=g.eval_samples,
        eval_max_new_tokens=g.eval_max_new_tokens,
    )


def build_splits(cfg: RunConfig, tokenizer: Any) -> Splits:
    """Read, check, split, tokenize (and pack) the conversations named by ``cfg.data``.

    Raises:
        ConfigError: no training data given.
        DataError: any problem in any file; no answer token left after truncation.
    """
    d = cfg.data
    if not d.train:
        raise ConfigError("no training data: set data.train or pass --train FILE")
    had_template = bool(getattr(tokenizer, "chat_template", None))
    task = build_task(cfg, tokenizer)
    columns = d.model_dump()

    def read(source: str) -> Conversations:
        return read_conversations(
            source, columns, d.drop_invalid_rows, task.system_prompt, task.prompt_template
        )

    train_convs = read(d.train)
    if d.validation:
        val_convs = read(d.validation)
    else:
        keep, held = stratified_split([0] * len(train_convs), d.val_fraction, cfg.train.seed)
        val_convs = _subset(
            train_convs, held, f" (held-out {d.val_fraction:.0%}, seed {cfg.train.seed})"
        )
        train_convs = _subset(train_convs, keep, "")
    test_convs = read(d.test) if d.test else None

    train = task.encode(train_convs)
    no_target = [i for i, lab in enumerate(train.targets) if all(x == IGNORE for x in lab)]
    if len(no_target) == len(train):
        raise DataError(
            f"{train_convs.source}: no answer token is left in any example after truncation to "
            f"{cfg.train.max_seq_len} tokens; raise train.max_seq_len"
        )
    n_examples, n_target = len(train), sum(sum(x != IGNORE for x in lab) for lab in train.targets)
    if no_target:  # nothing to learn from them
        keep_idx = [i for i in range(len(train)) if i not in set(no_target)]
        train.input_ids = [train.input_ids[i] for i in keep_idx]
        train.targets = [train.targets[i] for i in keep_idx]
        train.extra = {k: [v[i] for i in keep_idx] for k, v in train.extra.items()}
    packing_summary: dict[str, Any] = {}
    if task.packing:
        rows, targets, segments = pack_examples(
            train.input_ids, train.targets, cfg.train.max_seq_len
        )
        packing_summary = {
            "examples": len(train),
            "rows": len(rows),
            "fill": round(sum(map(len, rows)) / (len(rows) * cfg.train.max_seq_len), 4),
        }
        train = Encoded(
            input_ids=rows,
            targets=targets,
            n_truncated=train.n_truncated,
            extra={"segments": segments},
        )
    validation = task.encode(val_convs)
    test = task.encode(test_convs) if test_convs is not None else None
    summary = {
        "train_source": train_convs.source,
        "validation_source": val_convs.source,
        "test_source": test_convs.source if test_convs is not None else None,
        "n_train": n_examples,
        "n_validation": len(validation),
        "n_test": len(test) if test is not None else 0,
        "train_target_tokens": n_target,
        "chat_template": "tokenizer" if had_template else "textloop default",
        "no_target_after_truncation": len(no_target),
        "packing": packing_summary or None,
        "dropped_rows": {
            name: {k: len(v) for k, v in c.dropped.items()}
            for name, c in (("train", train_convs), ("validation", val_convs), ("test", test_convs))
            if c is not None and c.dropped
        },
        "truncated": {
            "max_seq_len": cfg.train.max_seq_len,
            "train": train.n_truncated,
            "validation": validation.n_truncated,
            "test": test.n_truncated if test is not None else 0,
        },
    }
    return Splits(task=task, train=train, validation=validation, test=test, summary=summary)


def _subset(convs: Conversations, idx: list[int], note: str) -> Conversations:
    return Conversations(
        source=convs.source + note,
        items=[convs.items[i] for i in idx],
        locations=[convs.locations[i] for i in idx],
        dropped=convs.dropped,
    )
