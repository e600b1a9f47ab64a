"""Model inputs assembled from pre-tokenized pieces: special-token templates and sliding windows.

NER and QA tokenize their text once (without special tokens, keeping word ids / char offsets)
and then cut it into windows themselves, so that which window sees which word is decided here
and nowhere else. ``SpecialTemplate`` adds the model's own special tokens around those pieces
(``[CLS] a [SEP] b [SEP]`` for BERT, ``<s> a </s></s> b </s>`` for RoBERTa), read off the
tokenizer instead of hard-coded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SpecialTemplate:
    """Where a tokenizer puts its special tokens around one or two sequences of ids."""

    prefix: tuple[int, ...]
    middle: tuple[int, ...]
    suffix: tuple[int, ...]
    type_ids: tuple[int, int, int, int, int] | None  # prefix, first, middle, second, suffix

    @property
    def n_special(self) -> int:
        return len(self.prefix) + len(self.middle) + len(self.suffix)

    def build(
        self, first: Sequence[int], second: Sequence[int] | None = None
    ) -> tuple[list[int], list[int] | None, int, int]:
        """Ids with special tokens, token type ids, and where ``first`` and ``second`` start."""
        ids = [*self.prefix, *first]
        start_second = len(ids)
        if second is not None:
            ids += [*self.middle]
            start_second = len(ids)
            ids += second
        ids += self.suffix
        types = None
        if self.type_ids is not None:
            tp, t1, tm, t2, ts = self.type_ids
            types = [tp] * len(self.prefix) + [t1] * len(first)
            if second is not None:
                types += [tm] * len(self.middle) + [t2] * len(second)
            types += [ts] * len(self.suffix)
        return ids, types, len(self.prefix), start_second


def special_template(tokenizer: Any, pair: bool) -> SpecialTemplate:
    """Probe ``tokenizer`` with a one-word input (or pair) and read off its special tokens."""
    enc = tokenizer("a", "b") if pair else tokenizer("a")
    ids = enc["input_ids"]
    seq = enc.sequence_ids()
    types = enc.get("token_type_ids")
    firsts = [i for i, s in enumerate(seq) if s == 0]
    seconds = [i for i, s in enumerate(seq) if s == 1]
    f0, f1 = firsts[0], firsts[-1]
    if pair:
        s0, s1 = seconds[0], seconds[-1]
        middle, suffix = ids[f1 + 1 : s0], ids[s1 + 1 :]
    else:
        s0 = s1 = f1
        middle, suffix = [], ids[f1 + 1 :]
    type_ids = None
    if types is not None:
        # an empty part's type is never used; types[0] / types[-1] are the prefix / suffix types
        t1 = types[f0]
        t2 = types[s0] if pair else t1
        tm = types[f1 + 1] if pair and s0 > f1 + 1 else t1
        type_ids = (types[0], t1, tm, t2, types[-1])
    return SpecialTemplate(tuple(ids[:f0]), tuple(middle), tuple(suffix), type_ids)


def word_windows(word_lengths: Sequence[int], capacity: int, overlap: int) -> list[tuple[int, int]]:
    """Cut a sequence of words into windows of whole words, consecutive windows overlapping.

    Args:
        word_lengths: sub-word tokens of each word (a word longer than ``capacity`` counts as
            ``capacity``: its extra pieces are cut, its first piece kept).
        capacity: tokens a window holds.
        overlap: tokens the next window repeats from the end of the previous one (at most).

    Returns:
        ``[start, end)`` word ranges; together they cover every word, in order.
    """
    n = len(word_lengths)
    lengths = [min(n_tok, capacity) for n_tok in word_lengths]
    windows: list[tuple[int, int]] = []
    start = 0
    while True:
        end, used = start, 0
        while end < n and used + lengths[end] <= capacity:
            used += lengths[end]
            end += 1
        windows.append((start, end))
        if end >= n:
            return windows
        # the next window starts as far back as the overlap allows, but always moves forward
        nxt, back = end, 0
        while nxt - 1 > start and back + lengths[nxt - 1] <= overlap:
            nxt -= 1
            back += lengths[nxt]
        start = nxt


def window_owners(word_lengths: Sequence[int], windows: Sequence[tuple[int, int]]) -> list[int]:
    """For each word, the window that labels it: the one where it sits farthest from an edge.

    A word near a window's edge has little context on one side, so each word is predicted (and
    trained) in exactly one window, the one where it is most central; ties go to the earlier.
    """
    owner = [-1] * len(word_lengths)
    best = [-1.0] * len(word_lengths)
    for w_idx, (start, end) in enumerate(windows):
        total = sum(word_lengths[start:end])
        pos = 0
        for word in range(start, end):
            centre = pos + word_lengths[word] / 2
            margin = min(centre, total - centre)
            if margin > best[word]:
                best[word], owner[word] = margin, w_idx
            pos += word_lengths[word]
    return owner
