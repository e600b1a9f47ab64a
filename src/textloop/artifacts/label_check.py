"""The form of a feedback label, and the hash a text is known by (``artifacts/feedback.py``)."""

from __future__ import annotations

import hashlib
import unicodedata

from textloop.errors import DataError

MAX_LABEL_CHARS = 100
# a label becomes a class name in the next update, a column in reports and HTML: no control,
# format, private-use, unassigned or line-breaking characters, no markup brackets
_BAD_LABEL_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_BAD_LABEL_CHARS = frozenset("<>")


def check_label(label: str) -> str:
    """A feedback label, stripped, or ``DataError`` saying what is wrong with it.

    Labels the model does not know are allowed (class-incremental updates learn them), so
    only the form is checked: 1 to ``MAX_LABEL_CHARS`` characters, visible text, no control or
    zero-width characters, no line breaks, no ``<`` or ``>``.

    Example:
        >>> check_label(" refund_request ")
        'refund_request'
    """
    clean = str(label).strip()
    if not clean:
        raise DataError("feedback: 'label' is empty; send the correct label for the text")
    if len(clean) > MAX_LABEL_CHARS:
        raise DataError(
            f"feedback: 'label' has {len(clean)} characters; the limit is {MAX_LABEL_CHARS} "
            "(a label is a class name, not a text)"
        )
    bad = sorted(
        {
            f"U+{ord(ch):04X}"
            for ch in clean
            if ch in _BAD_LABEL_CHARS or unicodedata.category(ch) in _BAD_LABEL_CATEGORIES
        }
    )
    if bad:
        raise DataError(
            f"feedback: 'label' holds characters a class name cannot have ({', '.join(bad[:5])}); "
            "use letters, digits, spaces and punctuation other than '<' and '>'"
        )
    return clean


def text_hash(text: str) -> str:
    """The sha256 (hex) of a text's UTF-8 bytes: what the log keeps when texts are not kept."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
