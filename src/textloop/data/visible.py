"""Whether a text has anything in it to read.

A text made only of control characters (``\\x00``), format characters (zero-width space and
joiners, the byte-order mark, bidi marks), spaces and line or paragraph separators shows
nothing; a model still turns it into tokens and answers with a confident-looking label, and a
feedback row with it teaches nothing. The server treats such texts like empty ones.
"""

from __future__ import annotations

import unicodedata

# Unicode general categories that show nothing on their own (Cc control, Cf format,
# Zs space separator, Zl line separator, Zp paragraph separator)
INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})


def has_visible_text(text: str) -> bool:
    """True when ``text`` holds at least one character outside ``INVISIBLE_CATEGORIES``.

    Example:
        >>> has_visible_text("\\u200b\\x00 \\u2028"), has_visible_text(" ok ")
        (False, True)
    """
    return any(
        not ch.isspace() and unicodedata.category(ch) not in INVISIBLE_CATEGORIES for ch in text
    )
