"""Extend a tokenizer with domain words learned from a corpus; initialise their embeddings.

A word the model's vocabulary splits into many pieces ("pharmacovigilance" -> 6 WordPieces)
costs sequence length and is learnt only through its pieces. Adding the corpus's most frequent
such words as whole tokens, with each new embedding set to the mean of its old sub-token
embeddings, starts them where the model already was (Hewitt 2021, "Initializing new word
embeddings for pretrained language models"; the averaging variant of Gururangan et al. 2020's
follow-ups) instead of at random.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from textloop.tasks.lm.packing import DocumentSource

_WORD = re.compile(r"[^\W\d_][\w'-]*[^\W_]|[^\W\d_]{2,}", re.UNICODE)
_MAX_DOCS = 200_000  # enough to rank frequent words; bounds the time of this pass


def domain_words(tokenizer: Any, source: DocumentSource, max_new: int, min_count: int) -> list[str]:
    """The ``max_new`` most frequent corpus words the tokenizer splits into 2+ pieces."""
    lower = bool(getattr(tokenizer, "do_lower_case", False)) or _lowercases(tokenizer)
    counts: Counter[str] = Counter()
    seen = 0
    for shard in range(len(source.shard_loaders)):
        for text in source.texts(shard):
            counts.update(_WORD.findall(text.lower() if lower else text))
            seen += 1
            if seen >= _MAX_DOCS:
                break
        if seen >= _MAX_DOCS:
            break
    vocab = tokenizer.get_vocab()
    out: list[str] = []
    for word, n in counts.most_common():
        if n < min_count or len(out) >= max_new:
            break
        if word in vocab:
            continue
        if len(tokenizer(word, add_special_tokens=False)["input_ids"]) >= 2:
            out.append(word)
    return out


def _lowercases(tokenizer: Any) -> bool:
    probe = tokenizer("ABC", add_special_tokens=False)["input_ids"]
    return bool(probe == tokenizer("abc", add_special_tokens=False)["input_ids"])


def extend_tokenizer(
    tokenizer: Any, source: DocumentSource, max_new: int, min_count: int
) -> tuple[Any, list[str]]:
    """Add up to ``max_new`` domain words as whole-word tokens. Returns (tokenizer, words added)."""
    from tokenizers import AddedToken

    words = domain_words(tokenizer, source, max_new, min_count)
    tokenizer.add_tokens([AddedToken(w, single_word=True, normalized=True) for w in words])
    return tokenizer, words


@torch.no_grad()
def init_new_embeddings(model: torch.nn.Module, tokenizer: Any) -> int:
    """Grow the model's embeddings to the tokenizer; each new row = mean of its sub-token rows.

    The sub-tokens are those the checkpoint's own tokenizer (``model.name_or_path``) gives the
    new token's text. Returns the number of rows added.
    """
    from transformers import AutoTokenizer

    old = AutoTokenizer.from_pretrained(Path(str(model.name_or_path)))
    emb_in = model.get_input_embeddings()  # type: ignore[operator]
    n_old = emb_in.weight.shape[0]
    model.resize_token_embeddings(len(tokenizer))  # type: ignore[operator]
    emb_in = model.get_input_embeddings()  # type: ignore[operator]
    emb_out = model.get_output_embeddings()  # type: ignore[operator]
    untied = emb_out is not None and emb_out.weight is not emb_in.weight
    for new_id in range(n_old, len(tokenizer)):
        text = tokenizer.convert_ids_to_tokens(new_id)
        pieces = [i for i in old(text, add_special_tokens=False)["input_ids"] if i < n_old]
        if not pieces:
            continue
        emb_in.weight[new_id] = emb_in.weight[pieces].mean(0)
        if untied:
            emb_out.weight[new_id] = emb_out.weight[pieces].mean(0)
    return len(tokenizer) - n_old
