"""Sentence embeddings from an encoder model: mean of the last hidden layer, unit length.

Any encoder a run fine-tuned (classification, NER, QA) has a body whose last hidden state
describes each token; the mean over the real tokens (the attention mask), L2-normalised, is the
usual sentence embedding (Sentence-BERT, Reimers & Gurevych 2019, arXiv:1908.10084), so cosine
similarity is a dot product. It is computed on the server's worker thread, micro-batched like
predictions. An ONNX export's graph outputs only the head's scores, so it has no embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from textloop.data.batching import mean_pool, pad_batch, sorted_batches
from textloop.errors import ModelError
from textloop.serving.sources import LoadedModel

ENCODER_TASKS = ("classification", "ner", "qa")


def why_no_embeddings(model: LoadedModel) -> str | None:
    """None when ``model`` can embed texts, else the reason, naming what it serves instead."""
    task = model.run.task.name
    if task not in ENCODER_TASKS:
        return (
            f"model {model.name!r} is a {task} model: it serves /v1/chat/completions and "
            "/v1/completions, not embeddings; serve an encoder (a classification, NER or QA "
            "run) for /v1/embeddings"
        )
    if model.format.startswith("onnx"):
        return (
            f"model {model.name!r} is served from an ONNX export ({model.format}), whose graph "
            "outputs only the classifier's scores; serve its run folder or a safetensors "
            "export for /v1/embeddings"
        )
    return None


@torch.no_grad()
def mean_pooled(
    model: torch.nn.Module, tokenizer: Any, texts: Sequence[str], batch_size: int = 32
) -> list[list[float]]:
    """Unit-length mean-pooled embeddings of ``texts``, in order (none for no texts).

    Texts are sorted by length and padded per batch to the longest of them only; the mask keeps
    padding out of the mean, so a text's vector does not depend on its batch (up to float
    rounding).
    """
    if not texts:
        return []  # a tokenizer fails on an empty batch
    enc = tokenizer(list(texts))
    ids: list[list[int]] = enc["input_ids"]
    types: list[list[int]] | None = enc.get("token_type_ids")
    pad = tokenizer.pad_token_id or 0
    device = next(model.parameters()).device
    model.eval()
    out: list[list[float]] = [[] for _ in texts]
    for idx in sorted_batches([len(x) for x in ids], batch_size):
        batch = pad_batch([ids[i] for i in idx], pad, [types[i] for i in idx] if types else None)
        batch = {k: v.to(device) for k, v in batch.items()}
        hidden = model(**batch, output_hidden_states=True).hidden_states[-1]  # (B, T, H)
        pooled = mean_pool(hidden, batch["attention_mask"])  # (B, H)
        for row, vec in zip(idx, F.normalize(pooled, dim=-1).cpu().tolist()):
            out[row] = vec
    return out


def embed_batch(model: LoadedModel, texts: list[str]) -> list[tuple[list[float] | None, int]]:
    """What the worker runs for a batch of ``/v1/embeddings`` texts: (vector, tokens) each.

    Tokens are counted here, on the worker, because a fast tokenizer is not safe to use from
    two threads when their truncation settings differ (``/v1/predict`` truncates). A text over
    the model's ``max_seq_len`` gets no vector (None): the route refuses the request.

    Raises:
        ModelError: the model has no embeddings (a hot swap may have brought in another one
            since the route checked).
    """
    reason = why_no_embeddings(model)
    if reason is not None:
        raise ModelError(reason)
    task = model.run.task
    counts = [len(ids) for ids in task.tokenizer(list(texts))["input_ids"]]
    fits = [i for i, n in enumerate(counts) if n <= task.max_seq_len]
    vectors = mean_pooled(model.run.model, task.tokenizer, [texts[i] for i in fits])
    out: list[tuple[list[float] | None, int]] = [(None, n) for n in counts]
    for i, vector in zip(fits, vectors):
        out[i] = (vector, counts[i])
    return out
