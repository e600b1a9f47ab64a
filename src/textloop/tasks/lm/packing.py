"""Read a corpus as a stream of packed token blocks, in bounded memory, resumable exactly.

Documents are tokenized as they are read, joined end to end (each closed by the model's
separator: ``[SEP]`` for BERT, EOS for a decoder) and cut into blocks of ``block_size`` tokens,
so no compute is spent on padding. A prepared corpus (``textloop prepare``) is read one Parquet
shard at a time; the order of shards, and of rows within a shard, is shuffled per epoch from the
seed. The position after every micro-batch is a small ``cursor`` (shard, row, the tokens
already read but not yet cut into a block, next block index): a run resumed from it reads exactly
the blocks it would have read.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from textloop.errors import DataError
from textloop.tasks.lm.words import word_numbers

_TOKENIZE_CHUNK = 64  # documents per tokenizer call: fast tokenizers batch well


@dataclass
class Block:
    """``block_size`` tokens cut from the joined documents.

    ``doc_starts`` are the positions where a document begins (0 when the block opens with one);
    ``words`` is each token's word number inside its document (-1 for special tokens), for
    whole-word masking and for never masking special tokens; ``index`` is the block's position
    in its ``epoch``; the two seed its MLM mask (so masks do not depend on world size or resume).
    """

    ids: list[int]
    doc_starts: list[int]
    words: list[int]
    index: int
    epoch: int = 0


class MicroBatch(list[Block]):
    """A global micro-batch of blocks, with the stream position right after it."""

    cursor: dict[str, Any]


@dataclass
class DocumentSource:
    """A corpus as a list of shards; each shard's texts are loaded only when it is read."""

    name: str
    shard_loaders: list[Callable[[], list[str]]]
    keep: Callable[[str], bool] = field(default=lambda text: True)

    def texts(self, shard: int) -> list[str]:
        return [t for t in self.shard_loaders[shard]() if t and self.keep(t)]


def held_out(text: str, val_fraction: float) -> bool:
    """Whether a document belongs to the held-out split carved from a corpus without one.

    Decided by a hash of the text, so it needs no state and does not depend on read order.
    """
    return zlib.crc32(text.encode("utf-8")) % 10_000 < round(val_fraction * 10_000)


def document_source(source: str, text_column: str = "text") -> DocumentSource:
    """The documents of a prepared corpus (``DIR`` / ``DIR:SPLIT``) or of any readable source.

    A prepared corpus is streamed shard by shard; any other source (file, directory, glob,
    ``builtin:NAME``) is read whole, as one shard.

    Raises:
        DataError: unreadable source, missing split or missing text column.
    """
    from textloop.data.prepare.corpus import corpus_columns, read_manifest
    from textloop.data.prepare.remote import join

    base, sep, split = source.rpartition(":")
    root, split = (base, split) if sep and base and split in _SPLITS else (source, "")
    manifest = read_manifest(root)
    if manifest is not None:
        split = split or "train"
        files = manifest.get("splits", {}).get(split, {}).get("files")
        if files is None:
            raise DataError(
                f"{root} has no split {split!r}; splits: {', '.join(manifest.get('splits', {}))}"
            )
        column = corpus_columns(manifest)["text"] or "text"
        loaders = [_parquet_loader(join(root, f), column) for f in files]
        return DocumentSource(f"{root}:{split}", loaders)
    from textloop.data.builtin import builtin_columns
    from textloop.data.readers import read_table

    table = read_table(source)
    column = (
        builtin_columns(source).get("text_column", text_column)
        if source.startswith("builtin:")
        else text_column
    )
    if table.rows and column not in table.rows[0]:
        raise DataError(
            f"{table.source}: no text column {column!r}; columns are: "
            f"{', '.join(map(str, table.rows[0]))} (set data.text_column)"
        )
    texts = [str(r[column]) for r in table.rows if r.get(column)]
    return DocumentSource(table.source, [lambda: texts])


_SPLITS = ("train", "validation", "test")


def _parquet_loader(path: str, column: str) -> Callable[[], list[str]]:
    def load() -> list[str]:
        import pyarrow.parquet as pq

        return [t for t in pq.read_table(path, columns=[column]).column(0).to_pylist() if t]

    return load


class Tokenize:
    """Documents -> token ids (closed by the separator) and word numbers, for one objective."""

    def __init__(self, tokenizer: Any, objective: str, chinese_words: bool = False) -> None:
        self.tokenizer = tokenizer
        self.objective = objective
        # whole-word masking: Chinese words from a segmenter, not the tokenizer (lm/words.py)
        self.chinese_words = chinese_words
        sep = tokenizer.sep_token_id if objective == "mlm" else None
        self.separator = sep if sep is not None else tokenizer.eos_token_id
        if self.separator is None:
            raise DataError(
                f"the tokenizer has no {'[SEP] or ' if objective == 'mlm' else ''}EOS token to "
                "separate packed documents; use a model whose tokenizer defines one"
            )

    def __call__(self, texts: Sequence[str]) -> list[tuple[list[int], list[int]]]:
        # MLM keeps the model's own framing ([CLS] doc [SEP]); CLM takes doc tokens + EOS
        mlm = self.objective == "mlm"
        texts = list(texts)
        segment = self.chinese_words and self.tokenizer.is_fast
        enc = self.tokenizer(  # documents longer than the model's window are cut into blocks
            texts,
            add_special_tokens=mlm,
            return_attention_mask=False,
            return_offsets_mapping=segment,
            verbose=False,
        )
        out = []
        for i, ids in enumerate(enc["input_ids"]):
            words = [-1 if w is None else w for w in enc.word_ids(i)] if enc.encodings else []
            if segment and words:  # unchanged where the text has no Han characters
                words = word_numbers(texts[i], enc["offset_mapping"][i], words)
            if not words:
                words = [0] * len(ids)
            if not ids or ids[-1] != self.separator:
                ids, words = [*ids, self.separator], [*words, -1]
            out.append((list(ids), words))
        return out


class PackedStream:
    """Training data as packed blocks streamed from a ``DocumentSource``.

    Args:
        source: where the documents come from.
        tokenize: documents -> (ids, words) pairs.
        block_size: tokens per block.
        seed: seeds the per-epoch order of shards and of rows within a shard.
        collate: turns a list of blocks into a model batch (the objective's masking / labels).
    """

    def __init__(
        self,
        source: DocumentSource,
        tokenize: Tokenize,
        block_size: int,
        seed: int,
        collate: Callable[[Sequence[Block]], dict[str, Any]],
    ) -> None:
        self.source = source
        self.tokenize = tokenize
        self.block_size = block_size
        self.seed = seed
        self.collate = collate
        self._n_blocks: int | None = None

    def __len__(self) -> int:
        """Blocks per epoch (one tokenizing pass over the corpus, done once)."""
        if self._n_blocks is None:
            tokens = 0
            for shard in range(len(self.source.shard_loaders)):
                texts = self.source.texts(shard)
                for start in range(0, len(texts), _TOKENIZE_CHUNK):
                    tokens += sum(
                        len(ids) for ids, _ in self.tokenize(texts[start : start + _TOKENIZE_CHUNK])
                    )
            self._n_blocks = tokens // self.block_size
        return self._n_blocks

    def _order(self, n: int, epoch: int, salt: int, shuffle: bool) -> list[int]:
        order = list(range(n))
        if shuffle:
            random.Random(f"{self.seed}/{epoch}/{salt}").shuffle(order)
        return order

    def blocks(
        self, epoch: int = 0, cursor: dict[str, Any] | None = None, shuffle: bool = True
    ) -> Iterator[tuple[Block, dict[str, Any]]]:
        """Every block of an epoch from ``cursor`` on, each with the cursor right after it."""
        c = cursor or {"shard": 0, "row": 0, "ids": [], "starts": [], "words": [], "block": 0}
        ids, words = list(c["ids"]), list(c["words"])
        starts = list(c["starts"])  # document starts inside the buffer
        block = c["block"]
        shards = self._order(len(self.source.shard_loaders), epoch, -1, shuffle)
        for shard_pos in range(c["shard"], len(shards)):
            texts = self.source.texts(shards[shard_pos])
            rows = self._order(len(texts), epoch, shards[shard_pos], shuffle)
            row = c["row"] if shard_pos == c["shard"] else 0
            while row < len(rows):
                chunk = [texts[i] for i in rows[row : row + _TOKENIZE_CHUNK]]
                for doc_ids, doc_words in self.tokenize(chunk):
                    starts.append(len(ids))
                    ids.extend(doc_ids)
                    words.extend(doc_words)
                    row += 1
                    while len(ids) >= self.block_size:
                        n = self.block_size
                        out = Block(ids[:n], [s for s in starts if s < n], words[:n], block, epoch)
                        ids, words = ids[n:], words[n:]
                        starts = [s - n for s in starts if s >= n]
                        block += 1
                        yield out, _cursor(shard_pos, row, ids, starts, words, block)
        # the last partial block of an epoch is dropped: every block is full, none padded

    def micro_batches(
        self, epoch: int, batch_size: int, cursor: dict[str, Any] | None
    ) -> Iterator[MicroBatch]:
        """Global micro-batches of ``batch_size`` blocks (the last may be smaller)."""
        batch = MicroBatch()
        for blk, after in self.blocks(epoch, cursor):
            batch.append(blk)
            if len(batch) == batch_size:
                batch.cursor = after
                yield batch
                batch = MicroBatch()
        if batch:
            n_shards = len(self.source.shard_loaders)
            batch.cursor = _cursor(n_shards, 0, [], [], [], batch[-1].index + 1)
            yield batch


def _cursor(
    shard: int, row: int, ids: list[int], starts: list[int], words: list[int], block: int
) -> dict[str, Any]:
    # copies: the stream keeps appending to its buffers after handing out a cursor
    return {
        "shard": shard,
        "row": row,
        "ids": list(ids),
        "starts": list(starts),
        "words": list(words),
        "block": block,
    }
