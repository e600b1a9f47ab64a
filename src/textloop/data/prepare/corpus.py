"""Read a prepared corpus back: ``textloop train --train corpus/news`` and friends.

A prepared corpus is a directory (or an object-store prefix, ``s3://bucket/corpus``) holding
``manifest.json`` (format ``textloop-prepared-corpus``)
and one folder of Parquet shards per split. The shards hold every input column under its own name
and type, plus textloop's ``_tl_id`` and ``_tl_source``. ``DIR`` names its train split, ``DIR:validation`` and
``DIR:test`` the others. Rows keep their origin: a data error in training names the raw file and
line the record came from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from textloop.data.prepare.remote import MANIFEST, is_remote, join, read_text
from textloop.data.table import Table
from textloop.errors import DataError

_FORMAT = "textloop-prepared-corpus"


def _split_source(source: str) -> tuple[str, str]:
    base, sep, split = source.rpartition(":")
    if sep and split in ("train", "validation", "test") and base:
        return base, split
    return source, "train"


def read_manifest(path: str | Path) -> dict[str, Any] | None:
    """The manifest of a prepared corpus (a directory or an object-store prefix), or None when
    ``path`` is not one."""
    if is_remote(path):
        text = read_text(join(str(path), MANIFEST))
    else:
        manifest = Path(path) / MANIFEST
        try:
            text = manifest.read_text(encoding="utf-8") if manifest.is_file() else None
        except OSError:
            return None
    if text is None:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) and data.get("format") == _FORMAT else None


def is_prepared_corpus(source: str) -> bool:
    """Whether ``source`` (``DIR`` or ``DIR:SPLIT``) names a prepared corpus."""
    return read_manifest(_split_source(source)[0]) is not None


def corpus_columns(manifest: dict[str, Any]) -> dict[str, str | None]:
    """The corpus's text and label columns (the input's names) and textloop's own columns.

    Version 1 corpora (before input columns were kept) hold ``text``, ``label``, ``id`` and
    ``source``; later ones the input's text/label names and ``_tl_id``, ``_tl_source``.
    """
    config = manifest.get("config", {})
    if manifest.get("version", 1) < 2:
        labelled = config.get("label_column") is not None
        return {
            "text": "text",
            "label": "label" if labelled else None,
            "id": "id",
            "source": "source",
        }
    return {
        "text": config.get("text_column", "text"),
        "label": config.get("label_column"),
        "id": "_tl_id",
        "source": "_tl_source",
    }


def prepared_split(path: str | Path, split: str = "train") -> Table:
    """Read one split of a prepared corpus into a ``Table``: every input column, under its own
    name, plus ``_tl_id`` (content digest) and ``_tl_source`` (the raw file:line).

    Raises:
        DataError: not a prepared corpus, or the corpus has no such split.
    """
    import pyarrow.parquet as pq

    root = str(path)
    manifest = read_manifest(root)
    if manifest is None:
        raise DataError(f"{root} is not a prepared corpus (no textloop {MANIFEST})")
    splits = manifest.get("splits", {})
    if split not in splits:
        raise DataError(f"{root} has no split {split!r}; splits: {', '.join(splits)}")
    table = Table(source=f"{root}:{split}")
    source = corpus_columns(manifest)["source"]
    for rel in splits[split]["files"]:
        shard = join(root, rel)
        rows = pq.read_table(shard).to_pylist()  # a URI is read through pyarrow.fs
        table.rows.extend(rows)
        table.locations.extend(f"{r[source]} (via {shard})" for r in rows)
    return table


def read_prepared(source: str) -> Table | None:
    """The split a ``DIR`` / ``DIR:SPLIT`` source names, or None when it is no prepared corpus."""
    root, split = _split_source(source)
    if read_manifest(root) is None:
        return None
    return prepared_split(root, split)


def with_prepared_splits(data: Any) -> Any:
    """A data config whose unset validation/test point at a prepared train corpus's own splits.

    Args:
        data: a ``DataConfig`` (any object with train/validation/test attributes and model_copy).
    """
    train = getattr(data, "train", None)
    if not train or not is_prepared_corpus(train):
        return data
    root, _ = _split_source(train)
    manifest = read_manifest(root) or {}
    splits = manifest.get("splits", {})
    update: dict[str, Any] = {
        name: f"{root}:{name}"
        for name in ("validation", "test")
        if getattr(data, name) is None and splits.get(name, {}).get("records", 0) > 0
    }
    # a corpus keeps the input's column names: a text/label column the corpus lacks means the
    # one it was prepared with (train --train corpus/news, prepared with --text-column body)
    own = corpus_columns(manifest)
    present = manifest.get("columns") or [c for c in own.values() if c]
    for key, role in (("text_column", "text"), ("label_column", "label")):
        name = own[role]
        if name and hasattr(data, key) and getattr(data, key) not in present:
            update[key] = name
    return data.model_copy(update=update) if update else data
