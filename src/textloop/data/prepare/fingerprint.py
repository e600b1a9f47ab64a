"""Per-document fingerprints: the exact-dedup digest, shingles and MinHash LSH band keys.

The normalised text behind both is the document's words, case-folded, joined by single spaces:
case, punctuation and spacing never make two copies look different. A CJK character is a word,
so for Chinese every "word" shingle below is a character n-gram.

Near-duplicates are compared in two representations, chosen by length (issue 16: with 5-word
shingles two edited words in a 30-word text drop the Jaccard similarity to about 0.5):

* short (<= ``short_max_words``, 128): single words and word pairs. A pair is near when its
  Jaccard reaches the threshold or when at most ``max_differing_shingles`` (12) shingles differ,
  and at most 65% of the smaller text's: one replaced word changes 6 shingles, so 1-2 edits
  are caught from 10 words on (about 20% of the words below that), while in a long text the
  threshold decides. A pair that rule accepts must also be within max(2, 10%) word edits
  (``short_max_edits``, ``short_edit_share``): sets of words and word pairs cannot tell two
  adjacent replaced words from three ("spell the word serendipity" / "spell conscience"), so
  without it short queries of one template with different slot phrases were removed.
* long (>= ``long_min_words``, 64): ``shingle_size``-word shingles (5), Jaccard >= threshold,
  as before. Between 64 and 128 words a document is in both, so a copy with a sentence
  added or removed always shares one representation with its original.

A longer document whose long shingle *set* is no bigger than ``short_max_words`` (a review
that repeats one phrase twenty times: 500 characters, a few dozen distinct 5-grams) is in the
short representation too: its set is as small as a short text's, so two edits change a large
share of it and only the short rule catches them (issue 16: all 7 misses at 200+ Chinese
characters were such texts).

MinHash signatures come from ``datasketch``'s affine32 scheme (fixed seed, so every process and
machine agrees); each representation's signature is cut into ``b`` bands of ``r`` values and
each band is hashed to one 64-bit key. Two documents sharing a band key are *candidates*;
their true shingle overlap is then checked exactly.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from functools import lru_cache
from itertools import chain

import numpy as np
import xxhash

from textloop.data.prepare.clean import words
from textloop.data.prepare.config import DedupConfig

# minimum probability that a pair exactly at the threshold becomes a candidate
_CANDIDATE_RECALL = 0.995
# short representation: differing shingles at most this share of the smaller text's (0.65 of a
# 10-word text's 19 is 12.35: two edited words; in a 5-word text one word pair less than one)
_MAX_DIFFERING_SHARE = 0.65
_SHORT_FLOOR_WORDS = 10  # shortest documents the short representation's banding is sized for
_SIGNATURE_CHUNK = 4  # documents per array operation (larger spills the CPU cache)
_SHINGLE_MIX = np.array(
    [0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0x85EBCA77C2B2AE63],
    dtype=np.uint64,
)


def dedup_tokens(text: str) -> list[str]:
    """The normalised words of a document (case-folded; punctuation and spacing dropped)."""
    return words(text.casefold())


def content_digest(tokens: list[str]) -> tuple[int, int]:
    """A 128-bit digest of the normalised text, as two unsigned 64-bit halves."""
    raw = hashlib.blake2b(
        " ".join(tokens).encode("utf-8", "surrogatepass"), digest_size=16
    ).digest()
    return int.from_bytes(raw[:8], "little"), int.from_bytes(raw[8:], "little")


class _WordHashes(dict[str, int]):
    """xxh64 of each word, memoised: a corpus repeats its vocabulary, so most words are a
    dictionary hit (4x faster than hashing every occurrence). Cleared when it grows too big."""

    limit = 2_000_000

    def __missing__(self, word: str) -> int:
        if len(self) >= self.limit:
            self.clear()
        value = self[word] = xxhash.xxh64_intdigest(word.encode("utf-8", "surrogatepass"))
        return value


_WORD_HASHES = _WordHashes()


def shingle_hashes(tokens: list[str], size: int) -> np.ndarray:
    """32-bit hashes of the document's ``size``-word shingles (one shingle if it is shorter)."""
    if not tokens:
        return np.zeros(1, dtype=np.uint64)
    words = np.array(list(map(_WORD_HASHES.__getitem__, tokens)), dtype=np.uint64)
    n = max(len(words) - size + 1, 1)
    mixed = np.zeros(n, dtype=np.uint64)
    for j in range(min(size, len(words))):
        # a position-dependent odd multiplier per word: order inside a shingle matters
        mult = _SHINGLE_MIX[j % 4] + np.uint64(2 * j)
        mixed = (mixed ^ (words[j : j + n] * mult)) * np.uint64(0xFF51AFD7ED558CCD)
    return np.unique(mixed >> np.uint64(32))


def shingle_hash_sets(docs: list[list[str]], size: int | tuple[int, ...]) -> list[np.ndarray]:
    """``shingle_hashes`` of many documents at once (equal results, 3x faster or more).

    The words of all documents are hashed once into one array and the shingle fold runs over
    every window of every document at once (a document shorter than ``size`` has one window,
    its whole text; words past a document's end are masked out); one sort makes each
    document's hashes unique. Several sizes (``(1, 2)``: words and word pairs) give the union
    of their shingles; the sizes hash differently, so a word never equals a word pair.
    """
    sizes = (size,) if isinstance(size, int) else size
    if not docs:
        return []
    lengths = np.fromiter(map(len, docs), dtype=np.int64, count=len(docs))
    flat = np.array(list(map(_WORD_HASHES.__getitem__, chain.from_iterable(docs))), dtype=np.uint64)
    doc_start = np.cumsum(lengths) - lengths
    parts = [np.flatnonzero(lengths == 0).astype(np.uint64) << np.uint64(32)]  # hash 0: empty
    for s in sizes:
        windows = np.where(lengths > 0, np.maximum(lengths - s + 1, 1), 0)
        doc = np.repeat(np.arange(len(docs), dtype=np.int64), windows)
        first = np.cumsum(windows) - windows
        start = np.repeat(doc_start - first, windows) + np.arange(windows.sum())
        end = doc_start[doc] + lengths[doc]  # one past the document's last word
        mixed = np.zeros(len(start), dtype=np.uint64)
        truncated = bool(((lengths > 0) & (lengths < s)).any())  # some window passes a doc's end
        for j in range(s):
            # a position-dependent odd multiplier per word: order inside a shingle matters
            mult = _SHINGLE_MIX[j % 4] + np.uint64(2 * j)
            at = start + j
            if truncated:
                inside = at < end
                word = flat[np.minimum(at, len(flat) - 1)] * mult
                mixed = np.where(inside, (mixed ^ word) * np.uint64(0xFF51AFD7ED558CCD), mixed)
            else:
                mixed = (mixed ^ (flat[at] * mult)) * np.uint64(0xFF51AFD7ED558CCD)
        parts.append((doc.astype(np.uint64) << np.uint64(32)) | (mixed >> np.uint64(32)))
    keys = np.concatenate(parts)
    keys.sort()  # np.unique hashes large arrays, which is several times slower than a sort
    keys = keys[np.r_[True, keys[1:] != keys[:-1]]]
    bounds = np.searchsorted(keys, np.arange(len(docs) + 1, dtype=np.uint64) << np.uint64(32))
    low = keys & np.uint64(0xFFFFFFFF)
    return [low[bounds[k] : bounds[k + 1]] for k in range(len(docs))]


def edits_within(a: list[str], b: list[str], cap: int) -> bool:
    """Whether the word-level Levenshtein distance of ``a`` and ``b`` is at most ``cap``.

    The common head and tail are cut first (a near copy is mostly both), then a dynamic
    programme over the diagonal band |i - j| <= cap only, stopped once a row exceeds ``cap``:
    O(len * cap) for the rest, so a few microseconds for a typical pair.
    """
    if abs(len(a) - len(b)) > cap:
        return False
    head = 0
    while head < len(a) and head < len(b) and a[head] == b[head]:
        head += 1
    tail = 0
    while tail < len(a) - head and tail < len(b) - head and a[-1 - tail] == b[-1 - tail]:
        tail += 1
    a, b = a[head : len(a) - tail], b[head : len(b) - tail]
    if not a or not b:
        return max(len(a), len(b)) <= cap
    over = cap + 1
    m = len(b)
    prev = [j if j <= cap else over for j in range(m + 1)]  # row 0; cells off the band: over
    for i, x in enumerate(a, 1):
        lo, hi = max(1, i - cap), min(m, i + cap)
        cur = [over] * (m + 1)
        cur[0] = i if i <= cap else over
        low = cur[0]
        for j in range(lo, hi + 1):
            best = prev[j - 1] + (x != b[j - 1])
            if prev[j] + 1 < best:
                best = prev[j] + 1
            if cur[j - 1] + 1 < best:
                best = cur[j - 1] + 1
            cur[j] = best
            if best < low:
                low = best
        if low > cap:
            return False
        prev = cur
    return prev[m] <= cap


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard similarity of two sorted, unique shingle-hash arrays."""
    inter = np.intersect1d(a, b, assume_unique=True).size
    return inter / (a.size + b.size - inter)


def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows): the most selective banding that still finds a pair at ``threshold`` with
    probability >= 0.995 (so recall is decided by the exact check, not by chance)."""
    best = (num_perm // 2, 2)
    for rows in range(2, num_perm // 2 + 1):
        bands = num_perm // rows
        if bands < 2:
            break
        if 1.0 - (1.0 - threshold**rows) ** bands >= _CANDIDATE_RECALL:
            best = (bands, rows)
    return best


@dataclass(frozen=True)
class Representation:
    """One way of shingling documents, the lengths it covers and its near-duplicate rule.

    Its LSH band keys are the columns ``_b{first_band}`` .. ``_b{first_band + bands - 1}``; a
    document outside ``min_words .. max_words`` gets the key 0 there, which never matches.
    """

    name: str
    sizes: tuple[int, ...]  # shingle sizes in words
    min_words: int
    max_words: int | None
    threshold: float  # Jaccard at which a pair is near
    max_differing: int  # ... or at most this many shingles in one set only (0: off)
    bands: int
    rows: int
    first_band: int
    # past max_words, still the documents with at most this many distinct long shingles (0: none)
    max_long_shingles: int = 0
    # and a pair the rule accepts must also be within max(max_edits, edit_share * words) word
    # edits (replaced, deleted or inserted words; ``edits_within``); max_edits < 0: no check
    max_edits: int = -1
    edit_share: float = 0.0

    def edit_budget(self, n_words: np.ndarray) -> np.ndarray:
        """Word edits pairs whose longer texts have ``n_words`` words may differ by."""
        return np.maximum(self.max_edits, (self.edit_share * n_words).astype(np.int64))

    def covers(self, n_words: np.ndarray, n_long_shingles: np.ndarray) -> np.ndarray:
        """Which documents this representation shingles, by word count and, past
        ``max_words``, by the size of their long-representation shingle set."""
        covered = n_words >= self.min_words
        if self.max_words is not None:
            covered &= (n_words <= self.max_words) | (n_long_shingles <= self.max_long_shingles)
        return covered

    def is_near(self, inter: np.ndarray, union: np.ndarray, smaller: np.ndarray) -> np.ndarray:
        """The near-duplicate rule on exact shingle counts of pairs (``smaller``: the size of
        the smaller set)."""
        near = inter >= self.threshold * union - 1e-9  # J >= threshold, without a division
        if self.max_differing:
            # few differing shingles, and few for the texts' size: 2 edits are 12 of the 19
            # shingles of 10 words but all of 2 unrelated 4-word texts (about 20% of the words)
            differing = union - inter
            near |= (differing <= self.max_differing) & (
                differing <= _MAX_DIFFERING_SHARE * smaller
            )
        return near


def build_representations(cfg: DedupConfig) -> list[Representation]:
    """The short-text (words and word pairs) and long-text (``shingle_size``-word) representations.

    A word pair shingle set of n words holds about 2n - 1 shingles; a pair of 10-word documents
    with ``max_differing`` shingles apart has Jaccard >= 1 - d / (19 + d / 2), and the short
    representation's banding finds pairs down to that (10 words: the shortest length whose
    recall target the benchmark checks). Its bands are as few as that allows: at such a low
    threshold each extra band mostly adds chance candidates.

    The short representation also covers longer documents with at most ``short_max_words``
    distinct long shingles (texts that repeat themselves). Two edits add at most
    2 * ``shingle_size`` of them, and from about 90 distinct 5-word shingles on the long rule
    catches two edits (Jaccard >= (S - 10) / (S + 10) >= 0.8), so the two overlap as they do
    by word count.
    """
    reps: list[Representation] = []
    d = cfg.max_differing_shingles
    if cfg.short_max_words > 0:
        # the rule accepts Jaccard down to 1 - d / (19 + d / 2) for 10-word texts, never < 0.5
        lsh_at = min(cfg.threshold, max(1.0 - d / (2 * _SHORT_FLOOR_WORDS - 1 + d / 2), 0.5))
        # bands of 2 rows: the fewest permutations (MinHash work) that reach such a threshold
        rows = 2
        bands = math.ceil(math.log(1.0 - _CANDIDATE_RECALL) / math.log(1.0 - lsh_at**rows))
        bands = min(bands, cfg.num_perm // rows)
        reps.append(
            Representation(
                "short",
                (1, 2),
                0,
                cfg.short_max_words,
                cfg.threshold,
                d,
                bands,
                rows,
                0,
                max_long_shingles=cfg.short_max_words,
                max_edits=cfg.short_max_edits,
                edit_share=cfg.short_edit_share,
            )
        )
    # the long representation always exists (the config checks that the two meet)
    bands, rows = lsh_params(cfg.threshold, cfg.num_perm)
    first = sum(r.bands for r in reps)
    reps.append(
        Representation(
            "long",
            (cfg.shingle_size,),
            cfg.long_min_words if reps else 0,
            None,
            cfg.threshold,
            0,
            bands,
            rows,
            first,
        )
    )
    return reps


def lsh_band_keys(
    docs: list[list[str]], reps: list[Representation], num_perm: int, seed: int
) -> np.ndarray:
    """Band keys of tokenised documents in every representation: a ``(n_docs, bands)`` uint64
    array, 0 where a representation does not cover a document.

    The long representation (the last) is shingled first: the size of a document's long
    shingle set decides whether the short one covers it past ``max_words``.
    """
    keys = np.zeros((len(docs), sum(r.bands for r in reps)), dtype=np.uint64)
    n_words = np.fromiter(map(len, docs), dtype=np.int64, count=len(docs))
    n_long = n_words.copy()  # a document the long representation skips: at most one per word
    for rep in reversed(reps):
        covered = np.flatnonzero(rep.covers(n_words, n_long))
        if len(covered) == 0:
            continue
        shingles = shingle_hash_sets([docs[i] for i in covered], rep.sizes)
        if rep.max_words is None:  # the long representation
            n_long[covered] = [len(s) for s in shingles]
        columns = slice(rep.first_band, rep.first_band + rep.bands)
        keys[covered, columns] = band_keys(shingles, num_perm, seed, rep.bands, rep.rows)
    return keys


@lru_cache(maxsize=8)
def _minhash_setup(
    num_perm: int, seed: int, rows: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from datasketch import MinHash

    a, b = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
    band_mult = np.random.default_rng(seed).integers(1, 2**63, size=rows, dtype=np.uint64)
    return a, b, band_mult | np.uint64(1)


def signatures(
    shingle_sets: list[np.ndarray], num_perm: int, seed: int, used: int | None = None
) -> np.ndarray:
    """MinHash signatures, ``(n_docs, num_perm)`` uint32, equal to ``datasketch.MinHash``'s
    (only the first ``used`` permutations, when given: what the banding reads).

    The sketch is datasketch's affine32 scheme with its seeded permutations; it is evaluated here
    for a few documents at once, permutations along rows so that the per-document minimum runs
    over contiguous memory (about 9x faster than ``MinHash.update_batch`` per document).
    """
    from datasketch.minhash import _fmix

    a, b, _ = _minhash_setup(num_perm, seed, 1)
    used = num_perm if used is None else used
    a, b = a[:used].astype(np.uint32)[:, None], b[:used].astype(np.uint32)[:, None]  # (P, 1)
    out = np.empty((len(shingle_sets), used), dtype=np.uint32)
    for start in range(0, len(shingle_sets), _SIGNATURE_CHUNK):
        part = shingle_sets[start : start + _SIGNATURE_CHUNK]
        hv = _fmix(np.concatenate(part).astype(np.uint32), 32)[None, :]  # (1, S)
        offsets = np.r_[0, np.cumsum([len(p) for p in part])[:-1]]
        permuted = hv * a  # (P, S), wraps mod 2**32 as affine32 does
        permuted += b
        out[start : start + len(part)] = np.minimum.reduceat(permuted, offsets, axis=1).T
    return out


def band_keys(
    shingle_sets: list[np.ndarray], num_perm: int, seed: int, bands: int, rows: int
) -> np.ndarray:
    """LSH band keys of many documents: a ``(n_docs, bands)`` uint64 array, never 0 (0 marks a
    document that a representation does not cover)."""
    _, _, band_mult = _minhash_setup(num_perm, seed, rows)
    sig = signatures(shingle_sets, num_perm, seed, bands * rows).astype(np.uint64)
    cut = sig.reshape(len(shingle_sets), bands, rows)  # (D, b, r)
    keys = (cut * band_mult).sum(axis=2, dtype=np.uint64)  # (D, b), wraps mod 2**64 by design
    keys ^= keys >> np.uint64(31)
    keys[keys == 0] = 1
    return keys
