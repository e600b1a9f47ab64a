"""Packing short examples into full rows, and padding rows into batches with segment positions.

A packed row holds several whole examples one after another. ``collate_rows`` gives each token
its example number (``segment_ids``) and its position inside that example (``position_ids``), so
the model can attend within examples only and restart positions at each one. The first token of
every example is never a target: the last token of the previous example must not learn to
predict it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from textloop.tasks.generation.data import IGNORE


def pack_examples(
    input_ids: Sequence[Sequence[int]], labels: Sequence[Sequence[int]], max_seq_len: int
) -> tuple[list[list[int]], list[list[int]], list[list[int]]]:
    """First-fit-decreasing packing of whole examples into rows of at most ``max_seq_len`` tokens.

    Returns:
        ``(rows, row_labels, starts)``: token ids and labels of every row, and the offsets where
        each of its examples begins. Examples are never split; their order inside a row follows
        their length (longest first), and rows come in the order they were opened.
    """
    order = sorted(range(len(input_ids)), key=lambda i: -len(input_ids[i]))
    bins: list[list[int]] = []  # example indices per row
    room: list[int] = []
    for i in order:
        size = len(input_ids[i])
        for b, left in enumerate(room):
            if left >= size:
                bins[b].append(i)
                room[b] -= size
                break
        else:
            bins.append([i])
            room.append(max_seq_len - size)
    rows, row_labels, starts = [], [], []
    for members in bins:
        ids: list[int] = []
        labs: list[int] = []
        offsets: list[int] = []
        for i in members:
            offsets.append(len(ids))
            ids.extend(input_ids[i])
            labs.extend([IGNORE, *list(labels[i])[1:]])  # no target across the boundary
        rows.append(ids)
        row_labels.append(labs)
        starts.append(offsets)
    return rows, row_labels, starts


def collate_rows(
    rows: Sequence[Sequence[int]],
    labels: Sequence[Sequence[int]],
    starts: Sequence[Sequence[int]] | None,
    pad_id: int,
) -> dict[str, torch.Tensor]:
    """Right-pad rows into a batch: ``input_ids``, ``attention_mask``, ``targets`` (B, T).

    With ``starts`` (packed rows) also ``segment_ids`` (example number from 0, padding -1) and
    ``position_ids`` restarting at 0 for every example.
    """
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    targets = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for b, (r, lab) in enumerate(zip(rows, labels)):
        ids[b, : len(r)] = torch.as_tensor(r, dtype=torch.long)
        mask[b, : len(r)] = 1
        targets[b, : len(lab)] = torch.as_tensor(lab, dtype=torch.long)
    batch = {"input_ids": ids, "attention_mask": mask, "targets": targets}
    if starts is not None:
        seg = torch.full((len(rows), width), -1, dtype=torch.long)
        pos = torch.zeros((len(rows), width), dtype=torch.long)
        for b, (r, offsets) in enumerate(zip(rows, starts)):
            ends = [*offsets[1:], len(r)]
            for k, (s, e) in enumerate(zip(offsets, ends)):
                seg[b, s:e] = k
                pos[b, s:e] = torch.arange(e - s)
        batch["segment_ids"] = seg  # (B, T)
        batch["position_ids"] = pos  # (B, T)
    return batch
