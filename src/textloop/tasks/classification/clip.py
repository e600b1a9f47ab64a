"""Cut texts far longer than the model reads before tokenizing them.

A tokenizer asked to truncate still tokenizes the whole text first (and keeps the rest as
overflow windows): one 10 MB row cost ~1.7 GB of memory and a minute for the first
``max_seq_len`` tokens. A text longer than ``CHARS_PER_TOKEN * max_seq_len`` characters is cut
at a whitespace before that point. The cut never changes what the model sees: a whitespace cut
leaves the tokens of the words before it as they were (BERT WordPiece, byte-level BPE and
SentencePiece all split on whitespace first), and a cut text whose own tokens do not reach
``max_seq_len`` + 1 (a text of mostly spaces, say) is tokenized whole instead.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

log = logging.getLogger("textloop")

CHARS_PER_TOKEN = 20  # a token covers ~4 characters of prose; 20 leaves room for long words


def cut_at_whitespace(text: str, max_chars: int) -> str:
    """``text`` up to the last whitespace at or before ``max_chars`` (``max_chars`` itself
    when the second half of that span has none)."""
    if len(text) <= max_chars:
        return text
    for i in range(max_chars, max_chars // 2, -1):
        if text[i].isspace():
            return text[:i]
    return text[:max_chars]


def clip_long_texts(
    tokenizer: Any, texts: Sequence[str], max_seq_len: int, what: str = "text"
) -> tuple[list[str], int]:
    """``texts`` with those far longer than ``max_seq_len`` tokens cut, and how many were cut.

    Each cut text still holds more than ``max_seq_len`` tokens, so truncation keeps exactly the
    tokens it would have kept from the whole text (and still counts the text as truncated).
    """
    max_chars = CHARS_PER_TOKEN * max_seq_len
    out = list(texts)
    long = [i for i, t in enumerate(out) if isinstance(t, str) and len(t) > max_chars]
    if not long:
        return out, 0
    cut = [cut_at_whitespace(out[i], max_chars) for i in long]
    # verbose=False: these are counted, not fed to the model (no "longer than 512" warning)
    ids = tokenizer(cut, add_special_tokens=False, return_attention_mask=False, verbose=False)[
        "input_ids"
    ]
    n = 0
    for i, text, tokens in zip(long, cut, ids):
        if len(tokens) > max_seq_len:
            out[i] = text
            n += 1
    if n:
        log.info(
            "%d %s(s) longer than %d characters cut there before tokenizing (the model reads "
            "the first %d tokens of each)",
            n,
            what,
            max_chars,
            max_seq_len,
        )
    return out, n
