"""Per-document fingerprints: the exact-dedup digest, word shingles and MinHash LSH band keys.

The normalised text behind both is the document's words, case-folded, joined by single spaces:
case, punctuation and spacing never make two copies look different. MinHash signatures come from
``datasketch``'s affine32 scheme (fixed seed, so every process and machine agrees); the signature
is cut into ``b`` bands of ``r`` values and each band is hashed to one 64-bit key. Two documents
sharing a band key are *candidates*; their true Jaccard similarity is then checked exactly.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np
import xxhash

from textloop.data.prepare.clean import WORD_RE

# minimum probability that a pair exactly at the threshold becomes a candidate
_CANDIDATE_RECALL = 0.995
_SIGNATURE_CHUNK = 8  # documents per array operation (larger spills the CPU cache)
_SHINGLE_MIX = np.array(
    [0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0x85EBCA77C2B2AE63],
    dtype=np.uint64,
)


def dedup_tokens(text: str) -> list[str]:
    """The normalised words of a document (case-folded; punctuation and spacing dropped)."""
    return WORD_RE.findall(text.casefold())


def content_digest(tokens: list[str]) -> tuple[int, int]:
    """A 128-bit digest of the normalised text, as two unsigned 64-bit halves."""
    raw = hashlib.blake2b(
        " ".join(tokens).encode("utf-8", "surrogatepass"), digest_size=16
    ).digest()
    return int.from_bytes(raw[:8], "little"), int.from_bytes(raw[8:], "little")


def shingle_hashes(tokens: list[str], size: int) -> np.ndarray:
    """32-bit hashes of the document's ``size``-word shingles (one shingle if it is shorter)."""
    if not tokens:
        return np.zeros(1, dtype=np.uint64)
    words = np.fromiter(
        (xxhash.xxh64_intdigest(t.encode("utf-8", "surrogatepass")) for t in tokens),
        dtype=np.uint64,
        count=len(tokens),
    )
    n = max(len(words) - size + 1, 1)
    mixed = np.zeros(n, dtype=np.uint64)
    for j in range(min(size, len(words))):
        # a position-dependent odd multiplier per word: order inside a shingle matters
        mult = _SHINGLE_MIX[j % 4] + np.uint64(2 * j)
        mixed = (mixed ^ (words[j : j + n] * mult)) * np.uint64(0xFF51AFD7ED558CCD)
    return np.unique(mixed >> np.uint64(32))


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


@lru_cache(maxsize=8)
def _minhash_setup(
    num_perm: int, seed: int, rows: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from datasketch import MinHash

    a, b = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
    band_mult = np.random.default_rng(seed).integers(1, 2**63, size=rows, dtype=np.uint64)
    return a, b, band_mult | np.uint64(1)


def signatures(shingle_sets: list[np.ndarray], num_perm: int, seed: int) -> np.ndarray:
    """MinHash signatures, ``(n_docs, num_perm)`` uint32, equal to ``datasketch.MinHash``'s.

    The sketch is datasketch's affine32 scheme with its seeded permutations; it is evaluated here
    for a few documents at once (one array operation instead of one per document), which is
    about twice as fast as ``MinHash.update_batch`` per document.
    """
    from datasketch.minhash import _fmix

    a, b, _ = _minhash_setup(num_perm, seed, 1)
    out = np.empty((len(shingle_sets), num_perm), dtype=np.uint32)
    for start in range(0, len(shingle_sets), _SIGNATURE_CHUNK):
        part = shingle_sets[start : start + _SIGNATURE_CHUNK]
        hv = _fmix(np.concatenate(part).astype(np.uint32), 32).reshape(-1, 1)  # (S, 1)
        offsets = np.r_[0, np.cumsum([len(p) for p in part])[:-1]]
        out[start : start + len(part)] = np.minimum.reduceat(hv * a + b, offsets, axis=0)
    return out


def band_keys(
    shingle_sets: list[np.ndarray], num_perm: int, seed: int, bands: int, rows: int
) -> np.ndarray:
    """LSH band keys of many documents: a ``(n_docs, bands)`` uint64 array."""
    _, _, band_mult = _minhash_setup(num_perm, seed, rows)
    sig = signatures(shingle_sets, num_perm, seed).astype(np.uint64)
    cut = sig[:, : bands * rows].reshape(len(shingle_sets), bands, rows)  # (D, b, r)
    keys = (cut * band_mult).sum(axis=2, dtype=np.uint64)  # (D, b), wraps mod 2**64 by design
    return keys ^ (keys >> np.uint64(31))
