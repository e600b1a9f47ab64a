"""Length-bucketed batches and dynamic padding: compute goes to real tokens, not padding."""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch


def bucketed_batches(
    lengths: Sequence[int], batch_size: int, bucket_batches: int, seed: int
) -> list[list[int]]:
    """Group example indices into batches of similar length, in a seeded random order.

    The indices are shuffled, cut into buckets of ``batch_size * bucket_batches`` examples, each
    bucket sorted by length and cut into batches; then the order of all batches is shuffled.
    Batches stay random across epochs (a new seed each epoch) yet pad little.

    Args:
        lengths: token count of each example.
        batch_size: examples per batch (the last batch of a bucket may be smaller).
        bucket_batches: batches per bucket; 1 gives plain random batches.
        seed: seed for this epoch's order.
    """
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    bucket = batch_size * bucket_batches
    batches: list[list[int]] = []
    for start in range(0, len(order), bucket):
        chunk = sorted(order[start : start + bucket], key=lambda i: lengths[i])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Batches of examples sorted by length, for inference (restore order with the indices)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def pad_batch(
    sequences: Sequence[Sequence[int]],
    pad_id: int,
    type_ids: Sequence[Sequence[int]] | None = None,
) -> dict[str, torch.Tensor]:
    """Right-pad token id lists to the longest in the batch.

    Returns:
        ``input_ids`` and ``attention_mask`` of shape (B, T), plus ``token_type_ids`` when given.
    """
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    out = {"input_ids": ids, "attention_mask": mask}
    if type_ids is not None:
        types = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, seq in enumerate(type_ids):
            types[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        out["token_type_ids"] = types
    return out


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Sentence vectors (B, H): the fp32 mean of ``hidden`` (B, T, H) over the real tokens of
    ``attention_mask`` (B, T) — the padded batch's mask, so padding never counts."""
    mask = attention_mask.unsqueeze(-1).float()  # (B, T, 1)
    return (hidden.float() * mask).sum(1) / mask.sum(1).clamp(min=1.0)
