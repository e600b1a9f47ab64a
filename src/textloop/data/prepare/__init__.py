"""``textloop prepare``: clean, deduplicate and split corpora larger than memory.

Example:
    >>> from textloop.data.prepare import load_prepare_config, prepare
    >>> cfg = load_prepare_config("configs/prepare/news.yaml")
    >>> result = prepare(cfg)
    >>> result.manifest["splits"]["train"]["records"]
"""

from __future__ import annotations

from textloop.data.prepare.config import PrepareConfig, load_prepare_config
from textloop.data.prepare.corpus import is_prepared_corpus, prepared_split, with_prepared_splits
from textloop.data.prepare.pipeline import PrepareResult, merge, prepare

__all__ = [
    "PrepareConfig",
    "PrepareResult",
    "is_prepared_corpus",
    "load_prepare_config",
    "merge",
    "prepare",
    "prepared_split",
    "with_prepared_splits",
]
