"""Word numbers for whole-word masking, with Chinese words taken from a segmenter.

A tokenizer's own words are the wrong unit for Chinese: BERT's basic tokenizer makes every Han
character a word, and SentencePiece (XLM-R, e5) one word of a whole run of Han characters between
spaces. Whole-word masking of Chinese masks the words of a segmenter instead (Cui et al. 2021,
"Pre-Training with Whole Word Masking for Chinese BERT", arXiv:1906.08101, used LTP; here jieba,
the common pure-Python one). Outside runs of Han characters the tokenizer's words are kept.

A token belongs to the word its first non-space character is in; a token with no such character
(SentencePiece's lone ``▁``) joins the next token's word.
"""

from __future__ import annotations

import bisect
import logging
import re
from collections.abc import Sequence
from typing import Any

from textloop.errors import ConfigError

HAN_RUN = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")  # CJK ideographs (+ ext. A)
_segmenter: Any = None


def _jieba() -> Any:
    """The jieba module, initialised once and quiet (it logs its dictionary load)."""
    global _segmenter
    if _segmenter is None:
        try:
            import jieba
        except ImportError:
            raise ConfigError(
                "pretrain.whole_word_mask on Chinese text needs the jieba word segmenter: "
                "pip install 'textloop[zh]' (or set pretrain.whole_word_mask false)"
            ) from None
        jieba.setLogLevel(logging.WARNING)
        _segmenter = jieba
    return _segmenter


def chinese_word_starts(text: str) -> list[int]:
    """Sorted character positions where a segmenter word begins inside a run of Han characters."""
    starts: list[int] = []
    for run in HAN_RUN.finditer(text):
        pos = run.start()
        for word in _jieba().cut(run.group(), HMM=True):
            starts.append(pos)
            pos += len(word)
    return starts


def word_numbers(text: str, offsets: Sequence[tuple[int, int]], words: Sequence[int]) -> list[int]:
    """Each token's word number in ``text`` (-1 stays -1: special tokens), Chinese by segmenter.

    Args:
        text: the document.
        offsets: each token's (start, end) characters in ``text``.
        words: the tokenizer's word number of each token, -1 for special tokens.

    Returns:
        Word numbers, consecutive from 0, equal for the tokens of one word.
    """
    starts = chinese_word_starts(text)
    if not starts:
        return list(words)
    keys: list[tuple[str, int] | None] = []
    for (start, end), word in zip(offsets, words):
        if word < 0:
            keys.append(("special", -1))
            continue
        first = next((i for i in range(start, end) if not text[i].isspace()), None)
        if first is None:
            keys.append(None)  # no character of its own: joins the next token's word
        elif HAN_RUN.match(text[first]):
            keys.append(("han", starts[bisect.bisect_right(starts, first) - 1]))
        else:
            keys.append(("token", word))
    following: tuple[str, int] | None = None
    for i in range(len(keys) - 1, -1, -1):  # fill the empty ones from the right
        if keys[i] is None:
            keys[i] = following if following is not None else ("token", words[i])
        elif keys[i] != ("special", -1):
            following = keys[i]
    out, number, previous = [], -1, None
    for key in keys:
        if key == ("special", -1):
            out.append(-1)
            continue
        if key != previous:
            number += 1
            previous = key
        out.append(number)
    return out
