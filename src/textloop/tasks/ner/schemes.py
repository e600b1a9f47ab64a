"""NER tag schemes (IO, IOB1, IOB2/BIO, IOBES, BILOU): detection, and conversion to IOB2 by the
repair rule ``textloop.tasks.ner.data`` documents (the same for every scheme)."""

from __future__ import annotations

from textloop.errors import DataError
from textloop.tasks.ner.data import Sentence

SCHEME_PREFIXES: dict[str, frozenset[str]] = {
    "IO": frozenset({"I", ""}),
    "IOB1": frozenset({"B", "I"}),
    "IOB2": frozenset({"B", "I"}),
    "IOBES": frozenset({"B", "I", "E", "S"}),
    "BILOU": frozenset({"B", "I", "L", "U"}),
}
SCHEME_ALIASES = {"BIO": "IOB2", "IOE": "IOBES"}
_STARTS = frozenset({"B", "S", "U"})
_ENDS = frozenset({"E", "L", "S", "U"})
_KNOWN_PREFIXES = frozenset({"B", "I", "E", "S", "L", "U"})


def split_tag(tag: str) -> tuple[str, str | None]:
    """``'B-PER'`` -> ``('B', 'PER')``, ``'O'`` -> ``('O', None)``, bare ``'PER'`` -> ``('', 'PER')``."""
    if tag == "O":
        return "O", None
    head, sep, rest = tag.partition("-")
    if sep and rest and len(head) == 1:
        return head.upper(), rest
    return "", tag


def detect_scheme(sentences: list[Sentence], source: str) -> str:
    """The tag scheme of the data: IO, IOB1, IOB2 or IOBES (BILOU counts as IOBES)."""
    prefixes: dict[str, str] = {}
    for s in sentences:
        for tag in s.tags:
            prefix, _ = split_tag(tag)
            if prefix != "O":
                prefixes.setdefault(prefix, s.location)
    unknown = sorted(set(prefixes) - _KNOWN_PREFIXES - {""})
    if unknown:
        raise DataError(
            f"{source}: unknown tag scheme: prefix {unknown[0]!r} (first at {prefixes[unknown[0]]});"
            " tags must be O or B-/I-/E-/S-/L-/U- + type, or bare types (IO)"
        )
    if "" in prefixes and len(prefixes) > 1:
        other = next(p for p in prefixes if p)
        raise DataError(
            f"{source}: tags mix bare types (at {prefixes['']}) with {other}- prefixes (at "
            f"{prefixes[other]}); use one scheme"
        )
    found = set(prefixes)
    if found & {"E", "S"}:
        return "IOBES"
    if found & {"L", "U"}:
        return "BILOU"
    if "B" in found:
        return "IOB2" if "I" not in found or not _has_iob1_starts(sentences) else "IOB1"
    return "IO"


def _has_iob1_starts(sentences: list[Sentence]) -> bool:
    for s in sentences:
        prev: tuple[str, str | None] = ("O", None)
        for tag in s.tags:
            p, t = split_tag(tag)
            if p == "I" and (prev[0] == "O" or prev[1] != t):
                return True
            prev = (p, t)
    return False


def tags_to_spans(tags: list[str], scheme: str) -> list[tuple[int, int, str]]:
    """Entities ``(start, end_exclusive, type)`` of a tag sequence, by the repair rule above."""
    spans: list[tuple[int, int, str]] = []
    open_start, open_type = -1, ""
    for i, tag in enumerate(tags):
        prefix, etype = split_tag(tag)
        if prefix == "O" or etype is None:
            if open_type:
                spans.append((open_start, i, open_type))
            open_type = ""
            continue
        starts = (scheme != "IO" and prefix in _STARTS) or not open_type or open_type != etype
        if starts:
            if open_type:
                spans.append((open_start, i, open_type))
            open_start, open_type = i, etype
        if scheme != "IO" and prefix in _ENDS:
            spans.append((open_start, i + 1, open_type))
            open_type = ""
    if open_type:
        spans.append((open_start, len(tags), open_type))
    return spans


def spans_to_iob2(n: int, spans: list[tuple[int, int, str]]) -> list[str]:
    """IOB2 tags of ``n`` words holding the given non-overlapping entities."""
    tags = ["O"] * n
    for start, end, etype in spans:
        tags[start] = f"B-{etype}"
        for i in range(start + 1, end):
            tags[i] = f"I-{etype}"
    return tags


def to_iob2(sentences: list[Sentence], scheme: str, source: str) -> tuple[str, int]:
    """Convert every sentence's tags to IOB2 in place; returns (scheme used, tags changed).

    Raises:
        DataError: a tag that the scheme does not allow (naming the row), or an unknown scheme.
    """
    scheme = SCHEME_ALIASES.get(scheme.upper(), scheme.upper())
    if scheme == "AUTO":
        scheme = detect_scheme(sentences, source)
    if scheme not in SCHEME_PREFIXES:
        raise DataError(
            f"unknown tag scheme {scheme!r}; use one of auto, {', '.join(SCHEME_PREFIXES)}, BIO"
        )
    allowed = SCHEME_PREFIXES[scheme]
    changed = 0
    for s in sentences:
        for tag in s.tags:
            prefix, _ = split_tag(tag)
            if prefix != "O" and prefix not in allowed:
                raise DataError(
                    f"{s.location}: tag {tag!r} is not valid in the {scheme} scheme (prefixes "
                    f"{', '.join(sorted(p or '<bare>' for p in allowed))}); set data.tag_scheme "
                    "to the data's scheme, or auto"
                )
        new = spans_to_iob2(len(s.tags), tags_to_spans(s.tags, scheme))
        changed += sum(a != b for a, b in zip(new, s.tags))
        s.tags = new
    return scheme, changed


# ---- readers -------------------------------------------------------------------------------
