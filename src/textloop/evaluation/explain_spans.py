"""Integrated-gradients word attributions for the entities a NER run finds.

For one predicted entity covering words ``a .. b-1`` the explained output is

    F = sum over the entity's words w of  logit(tag(w) | first sub-token of w)

where ``tag(w)`` is the predicted IOB2 tag (``B-X`` on the first word, ``I-X`` on the others).
The logit is read at each word's *first* sub-token because that is the only token the NER head
is trained on and decoded from (``tasks/ner/task.py``); the other pieces' logits mean nothing.

**Sum, not mean**: the attributions of a sum are the sums of the attributions of each word's
tag decision, so an entity's explanation is exactly the total evidence for all its tags (in
logit units, like a classification run's), and explaining each word separately would add up to
it. A mean only divides every number by the entity's length; comparing entities of different
length is easier with the per-word split one can get from the sum.

The rest is the classification explainer's (``explain.py``): the path runs through the input
word embeddings, the baseline is the same window with every non-special token replaced by
[PAD], ``DEFAULT_STEPS`` Gauss-Legendre steps, completeness reported per entity, token scores
summed into words. A text longer than one window is explained in the window that predicts the
entity's first word (``truncated``: words outside it got no attribution). Every entity of every
text is one row; rows are attributed together, ``internal_batch_size`` sequences per pass.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from textloop.data.batching import pad_batch
from textloop.evaluation.attribution import (
    StopCheck,
    aggregate_words,
    check_options,
    check_torch_model,
    completeness,
    completeness_note,
    highlight,
    integrate,
    method_info,
    pad_baseline,
    ranked_words,
)
from textloop.tasks.ner.data import Sentence, split_words
from textloop.tasks.windows import window_owners, word_windows


@dataclass
class _Window:
    """One model input of a text: ids, and the word (index) of each token, None for specials."""

    start: int  # first word
    end: int  # one past the last word
    ids: list[int]
    token_words: list[int | None]

    def first_piece(self, word: int) -> int:
        return self.token_words.index(word)


@dataclass
class _Row:
    """One entity to explain: which text, the window it is explained in, its (token, tag) cells."""

    text: int
    entity: dict[str, Any]
    window: _Window
    cells: list[tuple[int, int]]  # (token position, tag index) whose logits F sums
    truncated: bool


def text_windows(task: Any, text: str) -> tuple[list[tuple[int, int]], list[_Window], list[int]]:
    """The NER task's words (character spans), windows and window owner of each word of ``text``."""
    words, offsets = split_words(text)
    if not words:
        return [], [], []
    (pieces,) = task.word_pieces([Sentence(words, [], "explain", text, offsets)])
    cap = task.capacity
    lengths = [min(len(p), cap) for p in pieces]
    ranges = word_windows(lengths, cap, task.window_overlap)
    windows = []
    for a, b in ranges:
        body: list[int] = []
        body_words: list[int] = []
        for w in range(a, b):
            body += pieces[w][:cap]
            body_words += [w] * len(pieces[w][:cap])
        ids, _, offset, _ = task.template.build(body)
        token_words: list[int | None] = [None] * len(ids)
        token_words[offset : offset + len(body)] = body_words
        windows.append(_Window(a, b, ids, token_words))
    return offsets, windows, window_owners(lengths, ranges)


def _rows(task: Any, texts: Sequence[str], predictions: Sequence[dict[str, Any]]) -> list[_Row]:
    rows = []
    for ti, (text, pred) in enumerate(zip(texts, predictions)):
        if not pred["entities"]:
            continue
        offsets, windows, owners = text_windows(task, text)
        starts = {s: i for i, (s, _) in enumerate(offsets)}
        ends = {e: i for i, (_, e) in enumerate(offsets)}
        for ent in pred["entities"]:
            a, b = starts[ent["start"]], ends[ent["end"]] + 1  # predict's own word spans
            # the window predicting the first word, unless another holds the whole entity
            window = windows[owners[a]]
            if not (window.start <= a and b <= window.end):
                window = next((w for w in windows if w.start <= a and b <= w.end), window)
            words = [w for w in range(a, b) if window.start <= w < window.end]
            cells = [
                (
                    window.first_piece(w),
                    task.labels.index(f"{'B' if w == a else 'I'}-{ent['type']}"),
                )
                for w in words
                if w in window.token_words  # a word the tokenizer drops has no piece
            ]
            truncated = len(windows) > 1 or len(words) < b - a
            rows.append(_Row(ti, ent, window, cells, truncated))
    return rows


def explain_spans(
    run: Any,
    texts: Sequence[str],
    *,
    steps: int,
    output: str = "logit",
    batch_size: int = 16,
    internal_batch_size: int = 64,
    should_stop: StopCheck | None = None,
) -> list[dict[str, Any]]:
    """Integrated-gradients word attributions for each entity a NER run predicts in ``texts``.

    Args:
        run: a NER run (``textloop.load_run``).
        texts: raw texts.
        steps: integration points (Gauss-Legendre).
        output: attribute the summed ``logit`` of the entity's tags (default), or their summed
            softmax ``probability``.
        batch_size: entities attributed together (of any texts).
        internal_batch_size: sequences per forward/backward pass (bounds memory).
        should_stop: asked before every forward/backward pass; True abandons the work.

    Returns:
        One dict per text: ``text`` and ``entities``, in text order (empty when none is found),
        each with ``text``, ``label`` (the entity type), ``start``, ``end``, ``score`` (as
        ``predict`` gives them), ``tags``, ``words`` (``word``, ``start``, ``end``,
        ``attribution``, ``n_tokens``; every word of the window), ``truncated``,
        ``completeness`` and ``method`` as for classification.

    Raises:
        DataError: bad ``steps`` or ``output``.
        ModelError: the run holds an exported (ONNX) model.
        Stopped: ``should_stop`` returned True.

    Example:
        >>> explain_spans(load_run("runs/conll"), ["Angela Merkel visited Paris."], steps=50)
    """
    check_torch_model(run)
    check_options(steps, output)
    task, model = run.task, run.model
    results: list[dict[str, Any]] = [{"text": t, "entities": []} for t in texts]
    rows = _rows(task, texts, task.predict(model, list(texts)) if texts else [])
    if not rows:
        return results
    model.eval()
    device = next(model.parameters()).device

    def forward(ids: torch.Tensor, mask: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        scores = model(input_ids=ids, attention_mask=mask).logits.float()  # (B, T, C)
        if output == "probability":
            scores = torch.softmax(scores, dim=-1)
        return (scores * cells).sum((1, 2))  # (B,): F of each row's entity

    order = sorted(range(len(rows)), key=lambda i: len(rows[i].window.ids))
    for lo in range(0, len(order), batch_size):
        batch_rows = [rows[i] for i in order[lo : lo + batch_size]]
        batch = pad_batch([r.window.ids for r in batch_rows], task.tokenizer.pad_token_id or 0)
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)  # (B, T)
        cells = torch.zeros((*ids.shape, len(task.labels)), device=device)  # (B, T, C)
        for row, r in enumerate(batch_rows):
            for pos, tag in r.cells:
                cells[row, pos, tag] = 1.0
        baseline = pad_baseline(task.tokenizer, ids)
        with torch.no_grad():
            f_input, f_base = forward(ids, mask, cells), forward(baseline, mask, cells)  # (B,)
        token_scores, delta = integrate(
            forward,
            model,
            ids,
            baseline,
            target=None,
            forward_args=(mask, cells),
            steps=steps,
            internal_batch_size=internal_batch_size,
            should_stop=should_stop,
        )  # (B, T)
        for row, r in enumerate(batch_rows):
            text = texts[r.text]
            offsets = split_words(text)[1]
            n = len(r.window.ids)
            tok_offsets = [(0, 0) if w is None else offsets[w] for w in r.window.token_words]
            ent = r.entity
            results[r.text]["entities"].append(
                {
                    "text": ent["text"],
                    "label": ent["type"],
                    "start": ent["start"],
                    "end": ent["end"],
                    "score": ent["score"],
                    "tags": [task.labels[tag] for _, tag in r.cells],
                    "words": aggregate_words(
                        text, tok_offsets, r.window.token_words, token_scores[row, :n].tolist()
                    ),
                    "truncated": r.truncated,
                    "completeness": completeness(
                        float(token_scores[row, :n].sum()),
                        float(f_input[row]),
                        float(f_base[row]),
                        float(delta[row]),
                    ),
                    "method": {
                        **method_info(output, steps),
                        "explained": f"sum of the entity's tag {output}s",
                    },
                }
            )
    for res in results:
        res["entities"].sort(key=lambda e: e["start"])
    return results


def span_blocks(explanation: dict[str, Any]) -> list[str]:
    """HTML blocks of one NER text: each entity outlined, the words shaded toward its tags."""
    text = explanation["text"]
    if not explanation["entities"]:
        return [f"<div><p>{html.escape(text)}</p><p class='meta'>no entities</p></div><hr>"]
    parts = []
    for e in explanation["entities"]:
        top = ", ".join(html.escape(w["word"]) for w in ranked_words(e, 3))
        parts.append(
            f"<div><p>{highlight(text, e['words'], (e['start'], e['end']))}</p>"
            f"<p class='meta'><b>{html.escape(e['text'])}</b> = <b>{html.escape(e['label'])}</b> "
            f"({e['score']:.3f}); top words: {top}; {completeness_note(e)}</p></div><hr>"
        )
    return parts
