"""Tick labels any text can have: label names in scripts the default plot font lacks.

matplotlib's default font (DejaVu Sans) has no CJK characters, so a confusion matrix of Chinese
product categories showed empty boxes (and a warning per glyph). ``label_ticks`` finds an
installed font that has every character of the labels (e.g. Noto Sans CJK from Debian's
``fonts-noto-cjk``, WenQuanYi) and returns it; when none has them, it numbers the labels
(``#0``, ``#1``, ...) and returns the key, which the caller writes next to the plot.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=64)
def _charmap(path: str) -> frozenset[int]:
    from matplotlib.ft2font import FT2Font

    try:
        return frozenset(FT2Font(path).get_charmap())
    except (OSError, RuntimeError):
        return frozenset()


def _needed(labels: Sequence[str]) -> set[int]:
    return {ord(c) for label in labels for c in label if not c.isspace()}


def covering_font(labels: Sequence[str]) -> str | None:
    """Path of a font that has every character of ``labels``: matplotlib's default when it
    does, else the first installed one that does (None when no installed font has them)."""
    from matplotlib import font_manager

    needed = _needed(labels)
    default = font_manager.findfont(font_manager.FontProperties())
    if needed <= _charmap(default):
        return default
    # matplotlib's cached list, and the fonts on disk now (one installed after the cache was
    # built is only there); LastResort maps every codepoint to a picture of its Unicode block
    known = {f.fname for f in font_manager.fontManager.ttflist}
    paths = sorted(p for p in known | set(font_manager.findSystemFonts()) if "LastResort" not in p)
    return next((p for p in paths if needed <= _charmap(p)), None)


def label_ticks(labels: Sequence[str]) -> tuple[list[str], Any, str | None]:
    """(tick labels, font properties or None, key or None) for plotting ``labels``.

    The key (``#0 = 书籍, #1 = 平板, ...``) is set when no installed font has the labels'
    characters and the ticks are numbers instead."""
    from matplotlib import font_manager

    path = covering_font(labels)
    if path is not None:
        return list(labels), font_manager.FontProperties(fname=path), None
    numbered = [f"#{i}" for i in range(len(labels))]
    key = ", ".join(f"#{i} = {label}" for i, label in enumerate(labels))
    return numbered, None, key


def font_note(key: str | None) -> list[str]:
    """The report.md line under a plot whose ticks are numbered."""
    if key is None:
        return []
    return [
        "Labels by number in the plot (no installed font has their characters; "
        f"e.g. Debian's `fonts-noto-cjk` does): {key}",
        "",
    ]
