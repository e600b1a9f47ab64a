"""Extractive QA scoring, as the official evaluation scripts define it, under two definitions.

``squad`` (SQuAD v1.1 / v2.0): an answer is normalised by lower-casing, removing punctuation,
removing the articles a / an / the, and collapsing whitespace; F1 is over the bags of the
whitespace tokens left.

``cmrc`` (CMRC2018, and DRCD, which is scored with the same script): text without spaces has no
whitespace tokens worth the name, so an answer is cut into mixed segments: every CJK character is
a token, and each run of other letters and digits (an English word, a number) is one token;
punctuation (ASCII, CJK and full-width) and whitespace are dropped. Exact match compares the
lower-cased answers with punctuation and whitespace removed; F1 takes the longest common
*contiguous* run of tokens as the overlap (precision = its length / predicted tokens, recall =
its length / gold tokens), as the official script does.

Under both, exact match and F1 are the maximum over the gold answers; a question without gold
answers (SQuAD 2.0) has the single gold answer "", so only an empty prediction scores 1. Scores
here are fractions (0-1); the official scripts print x100.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = frozenset(string.punctuation)
DEFINITIONS = ("squad", "cmrc")
# CJK ideographs (unified, extension A, compatibility), kana and hangul: one token per character
_CJK = re.compile(
    r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\U00020000-\U0002fa1f]"
)


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and articles, collapse whitespace (the official order)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    """1.0 when the normalised strings are equal."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    """F1 over the bags of normalised tokens; two empty answers score 1, one empty scores 0."""
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def _is_punct(ch: str) -> bool:
    return ch in _PUNCT or unicodedata.category(ch).startswith("P")


def cmrc_segments(text: str) -> list[str]:
    """Mixed segmentation: each CJK character a token, each run of other non-punctuation,
    non-space characters one token; lower-cased, punctuation and whitespace dropped.

    Example:
        >>> cmrc_segments("於1949年，Taipei 101大樓")
        ['於', '1949', '年', 'taipei', '101', '大', '樓']
    """
    tokens: list[str] = []
    run: list[str] = []
    for ch in text.lower():
        if _CJK.match(ch) or ch.isspace() or _is_punct(ch):
            if run:
                tokens.append("".join(run))
                run = []
            if _CJK.match(ch):
                tokens.append(ch)
        else:
            run.append(ch)
    if run:
        tokens.append("".join(run))
    return tokens


def cmrc_exact_match(prediction: str, gold: str) -> float:
    """1.0 when the lower-cased strings agree once punctuation and whitespace are removed."""

    def strip(text: str) -> str:
        return "".join(ch for ch in text.lower() if not (ch.isspace() or _is_punct(ch)))

    return float(strip(prediction) == strip(gold))


def _longest_common_run(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest contiguous run of tokens that ``a`` and ``b`` share."""
    best, prev = 0, [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b, start=1):
            if x == y:
                cur[j] = prev[j - 1] + 1
                best = max(best, cur[j])
        prev = cur
    return best


def cmrc_f1(prediction: str, gold: str) -> float:
    """CMRC2018 / DRCD F1 over mixed segments, the overlap being their longest common run."""
    pred, ref = cmrc_segments(prediction), cmrc_segments(gold)
    if not pred or not ref:
        return float(pred == ref)
    same = _longest_common_run(pred, ref)
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def gold_texts(answers: Sequence[str], definition: str = "squad") -> list[str]:
    """The gold answers that survive normalisation, or [""] for an unanswerable question."""
    if definition == "cmrc":
        kept = [a for a in answers if cmrc_segments(a)]
    else:
        kept = [a for a in answers if normalize_answer(a)]
    return kept or [""]


def score_one(
    prediction: str, answers: Sequence[str], definition: str = "squad"
) -> tuple[float, float]:
    """(exact match, F1) of one prediction under ``definition``, maximised over the golds."""
    golds = gold_texts(answers, definition)
    em, f1 = (cmrc_exact_match, cmrc_f1) if definition == "cmrc" else (exact_match, token_f1)
    return max(em(prediction, g) for g in golds), max(f1(prediction, g) for g in golds)


def uses_cjk(texts: Sequence[str], share: float = 0.3) -> bool:
    """Whether CJK characters make up at least ``share`` of the non-space characters."""
    total = cjk = 0
    for text in texts:
        for ch in text:
            if not ch.isspace():
                total += 1
                cjk += bool(_CJK.match(ch))
    return total > 0 and cjk / total >= share


def squad_scores(
    predictions: Sequence[str], answers: Sequence[Sequence[str]], definition: str = "squad"
) -> dict[str, Any]:
    """Mean EM and F1 under ``definition`` (``squad`` or ``cmrc``); with unanswerable questions
    also has-answer / no-answer breakdowns.

    Example:
        >>> squad_scores(["the Eiffel Tower"], [["Eiffel Tower", "tower"]])["exact_match"]
        1.0
        >>> round(squad_scores(["臺北市"], [["臺北"]], "cmrc")["f1"], 3)
        0.8
    """
    if definition not in DEFINITIONS:
        raise ValueError(f"unknown QA metric definition {definition!r}; use one of {DEFINITIONS}")
    per = [score_one(p, a, definition) for p, a in zip(predictions, answers)]
    em = np.array([x[0] for x in per])
    f1 = np.array([x[1] for x in per])
    out: dict[str, Any] = {
        "definition": definition,
        "n": len(per),
        "exact_match": float(em.mean()) if per else 0.0,
        "f1": float(f1.mean()) if per else 0.0,
    }
    no_ans = np.array([gold_texts(a, definition) == [""] for a in answers], dtype=bool)
    if no_ans.any():
        has = ~no_ans
        out.update(
            n_no_answer=int(no_ans.sum()),
            no_answer_accuracy=float(em[no_ans].mean()),
            n_has_answer=int(has.sum()),
            has_answer_exact_match=float(em[has].mean()) if has.any() else 0.0,
            has_answer_f1=float(f1[has].mean()) if has.any() else 0.0,
        )
    return out


def best_null_threshold(
    null_diffs: Sequence[float], span_f1: Sequence[float], null_f1: Sequence[float]
) -> tuple[float, float]:
    """The threshold that maximises mean F1 when 'no answer' is chosen for ``diff > threshold``.

    Args:
        null_diffs: per question, null score minus best span score.
        span_f1: per question, F1 of the best span.
        null_f1: per question, F1 of answering "no answer" (1 for unanswerable questions).

    Returns:
        (threshold, mean F1 at it); the threshold lies midway between neighbouring diffs.
    """
    n = len(null_diffs)
    if n == 0:
        return 0.0, 0.0
    order = np.argsort(null_diffs, kind="stable")
    d = np.asarray(null_diffs, dtype=float)[order]
    span = np.concatenate([[0.0], np.cumsum(np.asarray(span_f1, dtype=float)[order])])
    null = np.concatenate([[0.0], np.cumsum(np.asarray(null_f1, dtype=float)[order])])
    # answer the k questions with the smallest diffs, abstain on the rest
    totals = span + (null[-1] - null)
    valid = np.ones(n + 1, dtype=bool)
    valid[1:n] = d[:-1] < d[1:]  # a threshold cannot split equal diffs
    k = int(np.argmax(np.where(valid, totals, -np.inf)))
    if k == 0:
        threshold = float(d[0] - 1.0)
    elif k == n:
        threshold = float(d[-1] + 1.0)
    else:
        threshold = float((d[k - 1] + d[k]) / 2)
    return threshold, float(totals[k] / n)
