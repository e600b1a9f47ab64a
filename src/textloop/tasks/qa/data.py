"""QA data: SQuAD v1.1 / v2.0 JSON and flat JSONL, every answer checked against its context.

Flat rows hold ``question``, ``context`` and ``answers`` (keys set by data.question_column,
data.context_column, data.answers_column), with answers as ``{"text": [...], "answer_start":
[...]}`` (the Hugging Face layout) or a list of ``{"text", "answer_start"}``; an empty list means
the question has no answer (SQuAD 2.0).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textloop.data.readers import detect_format, expand_source
from textloop.errors import DataError


@dataclass
class QaExample:
    """One question over one context with its gold answers ``(text, answer_start)``."""

    qid: str
    question: str
    context: str
    answers: list[tuple[str, int]]
    location: str

    @property
    def answerable(self) -> bool:
        return bool(self.answers)


def _answers(value: Any, location: str) -> list[tuple[str, int]]:
    if value is None:
        return []
    if isinstance(value, dict):
        texts, starts = value.get("text", []), value.get("answer_start", [])
        if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
            raise DataError(
                f"{location}: answers must hold lists 'text' and 'answer_start' of equal length"
            )
        pairs = list(zip(texts, starts))
    elif isinstance(value, list):
        pairs = []
        for a in value:
            if not isinstance(a, dict) or "text" not in a or "answer_start" not in a:
                raise DataError(
                    f"{location}: each answer needs 'text' and 'answer_start'; got {a!r}"
                )
            pairs.append((a["text"], a["answer_start"]))
    else:
        raise DataError(f"{location}: answers must be a list or a dict, got {type(value).__name__}")
    out = []
    for text, start in pairs:
        if not isinstance(text, str) or not isinstance(start, int) or isinstance(start, bool):
            raise DataError(f"{location}: answer {text!r} needs a string text and integer start")
        out.append((text, start))
    return out


def check_answers(ex: QaExample) -> str | None:
    """Why an example's answers do not fit its context, or None when they all do."""
    for text, start in ex.answers:
        if not text.strip():
            return "an empty answer text"
        found = ex.context[start : start + len(text)] if start >= 0 else ""
        if found != text:
            where = ex.context.find(text)
            hint = f"; the text occurs at {where}" if where >= 0 else "; it is not in the context"
            return (
                f"answer {text!r} does not match the context at answer_start {start} (the context "
                f"there reads {found!r}){hint}"
            )
    return None


def _squad_examples(data: list[Any], path: Path) -> list[QaExample]:
    out = []
    for ai, article in enumerate(data):
        for pi, para in enumerate(
            article.get("paragraphs", []) if isinstance(article, dict) else []
        ):
            context = para.get("context")
            if not isinstance(context, str):
                raise DataError(f"{path}: data[{ai}].paragraphs[{pi}] has no 'context' string")
            for qi, qa in enumerate(para.get("qas", [])):
                qid = str(qa.get("id", f"{ai}-{pi}-{qi}"))
                loc = f"{path}: data[{ai}].paragraphs[{pi}].qas[{qi}] (id {qid})"
                if not isinstance(qa.get("question"), str):
                    raise DataError(f"{loc}: no 'question' string")
                answers = [] if qa.get("is_impossible") else _answers(qa.get("answers"), loc)
                out.append(QaExample(qid, qa["question"], context, answers, loc))
    return out


def _flat_example(row: Any, loc: str, columns: dict[str, Any], index: int) -> QaExample:
    q_col, c_col, a_col = (
        columns["question_column"],
        columns["context_column"],
        columns["answers_column"],
    )
    if not isinstance(row, dict):
        raise DataError(f"{loc}: expected a JSON object, got {type(row).__name__}")
    for col, flag in ((q_col, "data.question_column"), (c_col, "data.context_column")):
        if not isinstance(row.get(col), str):
            raise DataError(
                f"{loc}: no {col!r} string; keys are: {', '.join(map(str, row))} — set {flag}"
            )
    qid = str(row.get("id", index))
    return QaExample(
        qid, row[q_col], row[c_col], _answers(row.get(a_col), f"{loc} (id {qid})"), loc
    )


def read_qa(
    source: str, columns: dict[str, Any], drop_invalid: bool = False
) -> tuple[list[QaExample], list[str]]:
    """Every QA example of a source; and the locations of dropped invalid ones.

    Args:
        source: a SQuAD JSON or flat JSON/JSONL file, a directory or a glob.
        columns: data config keys ``question_column``, ``context_column``, ``answers_column``.
        drop_invalid: drop examples whose answers do not match their context instead of failing.

    Raises:
        DataError: unreadable file, missing keys, or an answer that does not match the context
            at its ``answer_start`` (naming the example and where the text really occurs).
    """
    examples: list[QaExample] = []
    for path in [Path(source)] if Path(source).is_file() else expand_source(source):
        fmt = detect_format(path)
        text = path.read_text(encoding="utf-8-sig")
        if fmt == "jsonl":
            for n, line in enumerate(text.splitlines(), start=1):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise DataError(f"{path}:{n}: invalid JSON ({exc.msg})") from None
                    examples.append(_flat_example(row, f"{path}:{n}", columns, len(examples)))
            continue
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if (
            isinstance(data, list)
            and data
            and isinstance(data[0], dict)
            and "paragraphs" in data[0]
        ):
            examples += _squad_examples(data, path)
        elif isinstance(data, list):
            examples += [
                _flat_example(row, f"{path}: record {i + 1}", columns, len(examples) + i)
                for i, row in enumerate(data)
            ]
        else:
            raise DataError(f"{path}: expected SQuAD JSON ({{'data': [...]}}) or a list of rows")
    kept, dropped = [], []
    for ex in examples:
        problem = check_answers(ex)
        if problem is None:
            kept.append(ex)
        elif drop_invalid:
            dropped.append(ex.location)
        else:
            raise DataError(
                f"{ex.location}: {problem}; fix the row or pass --drop-invalid-rows to drop it"
            )
    if not kept:
        raise DataError(f"{source}: no usable QA examples")
    return kept, dropped
