"""Reading a config's data into the pre-training (MLM / CLM) task's train / validation / test splits
(``build_splits``, part of the task-module contract in ``textloop.tasks.base``)."""

from __future__ import annotations

from typing import Any, Literal

from textloop.config import RunConfig
from textloop.errors import ConfigError
from textloop.tasks.base import Encoded, Splits
from textloop.tasks.lm.packing import (
    PackedStream,
    Tokenize,
    document_source,
    held_out,
)
from textloop.tasks.lm.task import (
    PretrainTask,
    held_out_blocks,
)


def build_splits(cfg: RunConfig, tokenizer: Any) -> Splits:
    """The training stream and held-out blocks for ``task: mlm`` / ``task: clm``.

    ``data.train`` is the corpus: a prepared corpus (streamed shard by shard) or any readable
    source. Held-out text is ``data.validation``, else the prepared corpus's validation split,
    else ``data.val_fraction`` of the documents (chosen by a hash of their text).

    Raises:
        ConfigError: no corpus, or a masked-LM tokenizer without a mask token.
        DataError: unreadable corpus, or too little held-out text for one block.
    """
    from textloop.data.prepare.corpus import with_prepared_splits

    objective: Literal["mlm", "clm"] = "mlm" if cfg.task == "mlm" else "clm"
    d = with_prepared_splits(cfg.data)
    if not d.train:
        raise ConfigError("no corpus: set data.train or pass --corpus DIR")
    if objective == "mlm" and tokenizer.mask_token_id is None:
        raise ConfigError(
            f"task mlm: the tokenizer of {cfg.model} has no mask token; masked LM needs an "
            "encoder (BERT-style) model — for a decoder use --objective clm"
        )
    p = cfg.pretrain
    if p.extend_vocab:
        from textloop.tasks.lm.domain_vocab import extend_tokenizer

        train_docs = document_source(d.train, d.text_column)
        tokenizer, added = extend_tokenizer(tokenizer, train_docs, p.extend_vocab, p.min_word_count)
    task = PretrainTask(
        tokenizer=tokenizer,
        objective=objective,
        block_size=cfg.train.max_seq_len,
        mask_rate=p.mask_rate,
        whole_word_mask=p.whole_word_mask,
        document_mask=p.document_mask,
        seed=cfg.train.seed,
        name=objective,
    )
    train_docs = document_source(d.train, d.text_column)
    if d.validation:
        val_docs = document_source(d.validation, d.text_column)
    else:  # carve the held-out documents from the corpus itself
        val_docs = document_source(d.train, d.text_column)
        val_docs.keep = lambda text: held_out(text, d.val_fraction)
        train_docs.keep = lambda text: not held_out(text, d.val_fraction)
    stream = PackedStream(
        train_docs,
        Tokenize(tokenizer, objective, chinese_words=p.whole_word_mask),
        task.block_size,
        cfg.train.seed,
        task.collate_blocks,
    )
    validation = held_out_blocks(val_docs, task, p.eval_blocks)
    summary = {
        "train_source": train_docs.name,
        "validation_source": val_docs.name
        + ("" if d.validation else f" (held-out {d.val_fraction:.0%} of documents)"),
        "objective": objective,
        "block_size": task.block_size,
        "n_validation_blocks": len(validation),
        "added_tokens": added if p.extend_vocab else [],
    }
    return Splits(
        task=task, train=Encoded([], []), validation=validation, test=None, summary=summary,
        stream=stream,
    )  # fmt: skip
