"""Extractive question answering (SQuAD v1.1 / v2.0) with sliding windows over long contexts.

The question (cut to ``qa.max_query_len`` tokens) and each window of the context go through the
model as a pair. Windows are cut from the context's tokens (with their character offsets) and
overlap by ``qa.doc_stride`` tokens, at least ``qa.max_answer_len - 1``, so every span of an
allowed length lies whole in some window. In training, an answer that fits a window but falls
across two gets an extra window centred on it, so no answer is lost. A window without the answer
points at the first token (the "null" position, as in BERT's SQuAD 2.0 recipe).

Decoding searches the ``qa.n_best`` best starts and ends of every window for spans up to
``qa.max_answer_len`` tokens and maps the best one back to characters; for SQuAD 2.0 it answers
"no answer" when the null score beats the best span by more than a threshold tuned on the
validation split (``qa.null_threshold`` fixes it instead).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from textloop.errors import DataError
from textloop.tasks.base import Encoded, Task, eval_batches, pad_inputs
from textloop.tasks.qa.data import QaExample, read_qa
from textloop.tasks.qa.metrics import best_null_threshold, score_one, squad_scores
from textloop.tasks.windows import SpecialTemplate, special_template

METRIC_NAMES = ("f1", "exact_match")  # the first is the default
LOWER_IS_BETTER: tuple[str, ...] = ()
LORA_DEFAULT = False  # encoders train in full unless lora.enabled is true
TUNE_NULL_THRESHOLD = "tune_null_threshold"


def context_windows(n_tokens: int, room: int, stride: int) -> list[int]:
    """Start tokens of windows of ``room`` tokens over a context, overlapping by ``stride``."""
    starts, start = [0], 0
    while start + room < n_tokens:
        start += room - stride
        starts.append(start)
    return starts


def answer_tokens(offsets: Sequence[tuple[int, int]], start: int, end: int) -> tuple[int, int]:
    """First and last context token overlapping the characters ``[start, end)``; (-1, -1) if none."""
    hits = [i for i, (a, b) in enumerate(offsets) if a < end and b > start and b > a]
    return (hits[0], hits[-1]) if hits else (-1, -1)


@dataclass
class QaTask(Task):
    """Span extraction: a start and an end logit for every token."""

    tokenizer: Any
    max_seq_len: int
    doc_stride: int
    max_query_len: int = 64
    max_answer_len: int = 30
    n_best: int = 20
    allow_no_answer: bool = False
    null_threshold: float = 0.0
    tune_threshold: bool = True
    metric: str = "squad"  # "squad" or "cmrc" (textloop.tasks.qa.metrics)
    name: str = "qa"
    metric_names: tuple[str, ...] = METRIC_NAMES
    head_prefixes: tuple[str, ...] = ("qa_outputs",)
    template: SpecialTemplate = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.template = special_template(self.tokenizer, pair=True)

    # ---- preprocessing -------------------------------------------------------------------
    def encode(self, examples: Sequence[QaExample], training: bool = False) -> Encoded:
        """Pair features (question, context window) with start/end targets.

        ``extra`` holds per feature ``example``, ``context_start`` (position of the window's first
        context token) and ``window`` (its first token in the context); and ``examples`` and
        ``offsets`` (the character span of every context token) per example.
        """
        data = Encoded(input_ids=[], targets=[], token_type_ids=[], extra={})
        extra: dict[str, list[Any]] = {"example": [], "context_start": [], "window": []}
        extra.update(examples=list(examples), offsets=[], answer_lost=[])
        if not examples:
            data.extra = extra
            return data
        q_enc = self.tokenizer(
            [ex.question for ex in examples],
            add_special_tokens=False,
            truncation=True,
            max_length=self.max_query_len,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,  # long inputs are windowed here, not truncated
        )
        c_enc = self.tokenizer(
            [ex.context for ex in examples],
            add_special_tokens=False,
            return_offsets_mapping=True,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,  # long inputs are windowed here, not truncated
        )
        for i, ex in enumerate(examples):
            q_ids, c_ids = q_enc["input_ids"][i], c_enc["input_ids"][i]
            offsets = [tuple(o) for o in c_enc["offset_mapping"][i]]
            extra["offsets"].append(offsets)
            data.n_truncated += len(q_enc.encodings[i].overflowing) > 0
            room = self.max_seq_len - len(q_ids) - self.template.n_special
            starts = context_windows(len(c_ids), room, self.doc_stride)
            span = (-1, -1)
            if ex.answers:
                text, char_start = ex.answers[0]
                span = answer_tokens(offsets, char_start, char_start + len(text))
            a, b = span
            if training and a >= 0 and not any(s <= a and b < s + room for s in starts):
                if b - a + 1 <= room:
                    centred = a - (room - (b - a + 1)) // 2
                    starts.append(max(0, min(centred, len(c_ids) - room)))
                else:
                    extra["answer_lost"].append(ex.location)
            for s in starts:
                ids, types, _, ctx = self.template.build(q_ids, c_ids[s : s + room])
                target = (0, 0)  # the null position
                if a >= 0 and s <= a and b < s + room:
                    target = (ctx + a - s, ctx + b - s)
                data.input_ids.append(ids)
                if types is not None:
                    assert data.token_type_ids is not None
                    data.token_type_ids.append(types)
                data.targets.append(target)
                data.locations.append(ex.location)
                extra["example"].append(i)
                extra["context_start"].append(ctx)
                extra["window"].append(s)
        if not data.token_type_ids:
            data.token_type_ids = None
        data.extra = extra
        return data

    # ---- model ---------------------------------------------------------------------------
    def build_model(self, model_dir: Path) -> torch.nn.Module:
        from transformers import AutoModelForQuestionAnswering

        return AutoModelForQuestionAnswering.from_pretrained(model_dir)

    def load_model(self, model_dir: Path) -> torch.nn.Module:
        from transformers import AutoModelForQuestionAnswering

        return AutoModelForQuestionAnswering.from_pretrained(model_dir)

    def collate(self, data: Encoded, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        batch = pad_inputs(data, indices, self.tokenizer.pad_token_id or 0)
        if data.targets:
            batch["targets"] = torch.tensor([data.targets[i] for i in indices], dtype=torch.long)
        return batch

    def _logits(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = model(**batch)
        pad = batch["attention_mask"] == 0
        start = out.start_logits.float().masked_fill(pad, -1e4)  # (B, T)
        end = out.end_logits.float().masked_fill(pad, -1e4)  # (B, T)
        return start, end

    def training_loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        targets = batch.pop("targets")  # (B, 2)
        start, end = self._logits(model, batch)
        return (F.cross_entropy(start, targets[:, 0]) + F.cross_entropy(end, targets[:, 1])) / 2

    # ---- decoding ------------------------------------------------------------------------
    @torch.no_grad()
    def feature_logits(
        self, model: torch.nn.Module, data: Encoded, batch_size: int
    ) -> tuple[list[np.ndarray], list[np.ndarray], float]:
        """Start and end logits of every feature (unpadded), and the mean loss when labelled."""
        starts: list[np.ndarray] = [np.empty(0)] * len(data)
        ends: list[np.ndarray] = [np.empty(0)] * len(data)
        loss_sum = 0.0
        for idx, inputs, targets in eval_batches(self, model, data, batch_size):
            s, e = self._logits(model, inputs)
            if targets is not None:
                loss_sum += (
                    float(
                        F.cross_entropy(s, targets[:, 0], reduction="sum")
                        + F.cross_entropy(e, targets[:, 1], reduction="sum")
                    )
                    / 2
                )
            for row, i in enumerate(idx):
                n = len(data.input_ids[i])
                starts[i], ends[i] = s[row, :n].cpu().numpy(), e[row, :n].cpu().numpy()
        return starts, ends, loss_sum / max(1, len(data))

    def candidates(
        self, data: Encoded, starts: list[np.ndarray], ends: list[np.ndarray]
    ) -> list[tuple[list[dict[str, Any]], float]]:
        """Per example: spans sorted by score (text, char start/end, score), and the null score."""
        offsets, examples = data.extra["offsets"], data.extra["examples"]
        spans: list[list[dict[str, Any]]] = [[] for _ in examples]
        null = [np.inf] * len(examples)
        for f, ex_i in enumerate(data.extra["example"]):
            s_log, e_log = starts[f], ends[f]
            ctx, window = data.extra["context_start"][f], data.extra["window"][f]
            n_ctx = min(len(offsets[ex_i]) - window, len(s_log) - ctx - len(self.template.suffix))
            null[ex_i] = min(null[ex_i], float(s_log[0] + e_log[0]))
            s_ctx, e_ctx = s_log[ctx : ctx + n_ctx], e_log[ctx : ctx + n_ctx]
            top_s = np.argsort(-s_ctx, kind="stable")[: self.n_best]
            top_e = np.argsort(-e_ctx, kind="stable")[: self.n_best]
            context = examples[ex_i].context
            for i in top_s:
                for j in top_e:
                    if j < i or j - i + 1 > self.max_answer_len:
                        continue
                    c0 = offsets[ex_i][window + i][0]
                    c1 = offsets[ex_i][window + j][1]
                    spans[ex_i].append(
                        {
                            "answer": context[c0:c1],
                            "start": c0,
                            "end": c1,
                            "logit": float(s_ctx[i] + e_ctx[j]),
                        }
                    )
        out = []
        for ex_spans, null_score in zip(spans, null):
            best: dict[tuple[int, int], dict[str, Any]] = {}
            for sp in ex_spans:  # one entry per character span (windows overlap)
                key = (sp["start"], sp["end"])
                if key not in best or sp["logit"] > best[key]["logit"]:
                    best[key] = sp
            out.append((sorted(best.values(), key=lambda sp: -sp["logit"]), null_score))
        return out

    def choose(
        self, spans: list[dict[str, Any]], null_score: float, top_k: int = 1
    ) -> dict[str, Any]:
        """The answer (or no answer) for one question, with a probability-like score."""
        logits = [sp["logit"] for sp in spans[:20]]
        if self.allow_no_answer:
            logits.append(null_score)
        probs = np.exp(np.array(logits) - max(logits)) if logits else np.array([])
        probs = probs / probs.sum() if len(probs) else probs
        best_logit = spans[0]["logit"] if spans else -np.inf
        result: dict[str, Any]
        if not spans or (self.allow_no_answer and null_score - best_logit > self.null_threshold):
            result = {"answer": "", "start": None, "end": None, "no_answer": True}
            result["score"] = round(float(probs[-1]), 6) if len(probs) else 1.0
        else:
            result = {k: spans[0][k] for k in ("answer", "start", "end")}
            result.update(no_answer=False, score=round(float(probs[0]), 6))
        if top_k > 1:
            result["top_k"] = [
                {
                    "answer": sp["answer"],
                    "start": sp["start"],
                    "end": sp["end"],
                    "score": round(float(p), 6),
                }
                for sp, p in zip(spans[:top_k], probs)
            ]
        return result

    def evaluate(
        self,
        model: torch.nn.Module,
        data: Encoded,
        batch_size: int,
        progress: Callable[[int], None] | None = None,
    ) -> dict[str, Any]:
        starts, ends, loss = self.feature_logits(model, data, batch_size)
        examples: list[QaExample] = data.extra["examples"]
        cands = self.candidates(data, starts, ends)
        golds = [[t for t, _ in ex.answers] for ex in examples]
        tuned = None
        if self.allow_no_answer and self.tune_threshold and data.extra.get(TUNE_NULL_THRESHOLD):
            diffs = [null - (sp[0]["logit"] if sp else -1e9) for sp, null in cands]
            span_f1 = [
                score_one(sp[0]["answer"] if sp else "", g, self.metric)[1]
                for (sp, _), g in zip(cands, golds)
            ]
            null_f1 = [score_one("", g, self.metric)[1] for g in golds]
            self.null_threshold, tuned = best_null_threshold(diffs, span_f1, null_f1)
        preds = [self.choose(sp, null)["answer"] for sp, null in cands]
        metrics = squad_scores(preds, golds, self.metric)
        metrics["loss"] = loss
        if self.allow_no_answer:
            metrics["null_threshold"] = self.null_threshold
            if tuned is not None:
                metrics["null_threshold_tuned_here"] = True
        metrics["n_features"] = len(data)
        return metrics

    def predict(
        self,
        model: torch.nn.Module,
        questions: Sequence[str],
        contexts: Sequence[str] | None = None,
        top_k: int = 1,
        batch_size: int = 64,
    ) -> list[dict[str, Any]]:
        """Answers to questions, each over its context: text, character span, score, no_answer.

        Example:
            >>> run.predict(["Who founded the mill?"], ["The mill was founded by Ada Brook."])
            [{'answer': 'Ada Brook', 'start': 24, 'end': 33, 'no_answer': False, 'score': 0.91}]
        """
        if contexts is None or len(contexts) != len(questions):
            n = "no" if contexts is None else len(contexts)
            raise DataError(
                f"QA needs one context per question: got {len(questions)} questions and {n} contexts"
            )
        examples = [
            QaExample(str(i), q, c, [], f"input {i + 1}")
            for i, (q, c) in enumerate(zip(questions, contexts))
        ]
        data = self.encode(examples)
        data.targets = []
        starts, ends, _ = self.feature_logits(model, data, batch_size)
        return [self.choose(sp, null, top_k) for sp, null in self.candidates(data, starts, ends)]

    def encode_source(self, source: str, columns: dict[str, Any], drop_invalid: bool) -> Encoded:
        return self.encode(read_qa(source, columns, drop_invalid)[0])

    def state(self) -> dict[str, Any]:
        return {
            "task": self.name,
            "max_seq_len": self.max_seq_len,
            "doc_stride": self.doc_stride,
            "max_query_len": self.max_query_len,
            "max_answer_len": self.max_answer_len,
            "n_best": self.n_best,
            "allow_no_answer": self.allow_no_answer,
            "null_threshold": self.null_threshold,
            "metric": self.metric,
        }


def task_from_state(state: dict[str, Any], tokenizer: Any) -> QaTask:
    """Rebuild the task a finished run used from its ``labels.json``."""
    return QaTask(
        tokenizer=tokenizer,
        max_seq_len=int(state["max_seq_len"]),
        doc_stride=int(state["doc_stride"]),
        max_query_len=int(state["max_query_len"]),
        max_answer_len=int(state["max_answer_len"]),
        n_best=int(state["n_best"]),
        allow_no_answer=bool(state["allow_no_answer"]),
        null_threshold=float(state["null_threshold"]),
        tune_threshold=False,
        metric=str(state.get("metric", "squad")),  # runs saved before the cmrc definition
    )
