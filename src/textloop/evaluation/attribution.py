"""Integrated-gradients primitives shared by sequence (``explain``) and span (``explain_spans``)
explanations: options, the ``[PAD]`` baseline, the Gauss-Legendre path integral, completeness,
word aggregation and the text rendering of one explanation's words.

See ``textloop.evaluation.explain`` for the method and its references.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from typing import Any, Literal, Protocol

import torch

from textloop.errors import DataError, ModelError

DEFAULT_STEPS = 50
BASELINE = "pad"  # documented above; the only baseline for now
Output = Literal["logit", "probability"]
_CJK = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")  # kana, ideographs


class StopCheck(Protocol):
    """Asked before every forward/backward pass; True abandons the explanation."""

    def __call__(self) -> bool: ...


class Stopped(Exception):
    """An explanation was abandoned because its ``should_stop`` check said so (not an error)."""


def check_torch_model(run: Any) -> None:
    """Raise ``ModelError`` unless ``run`` holds a PyTorch model with input embeddings."""
    if not isinstance(run.model, torch.nn.Module) or not hasattr(run.model, "get_input_embeddings"):
        raise ModelError(
            f"{run.path}: explanations need the PyTorch model (found {type(run.model).__name__}); "
            "explain a run that was not exported to ONNX"
        )


def check_options(steps: int, output: str) -> None:
    """Raise ``DataError`` for a step count or an output kind integrated gradients cannot use."""
    if steps < 2:
        raise DataError(f"steps: got {steps}; integrated gradients needs at least 2")
    if output not in ("logit", "probability"):
        raise DataError(f"output: got {output!r}; use 'logit' or 'probability'")


def pad_baseline(tokenizer: Any, ids: torch.Tensor) -> torch.Tensor:
    """The documented baseline: ``ids`` (B, T) with every non-special token replaced by [PAD]."""
    special = torch.tensor(
        [
            tokenizer.get_special_tokens_mask(r, already_has_special_tokens=True)
            for r in ids.tolist()
        ],
        dtype=torch.bool,
        device=ids.device,
    )
    return torch.where(special, ids, torch.full_like(ids, tokenizer.pad_token_id or 0))


def integrate(
    forward: Any,
    model: Any,
    ids: torch.Tensor,
    baseline: torch.Tensor,
    *,
    target: torch.Tensor | None,
    forward_args: tuple[Any, ...],
    steps: int,
    internal_batch_size: int,
    should_stop: StopCheck | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Integrated gradients on the input embeddings of ``model``.

    Args:
        forward: ``forward(ids, *forward_args)`` -> (B, C) outputs (with ``target``) or (B,).
        model: the model whose ``get_input_embeddings()`` layer the path runs through.
        ids: (B, T) input ids; ``baseline``: (B, T) baseline ids.
        target: (B,) output index per row, or None when ``forward`` returns one value per row.
        forward_args: extra tensors of ``forward``, one row per input row.
        steps: Gauss-Legendre integration points.
        internal_batch_size: sequences per forward/backward pass.
        should_stop: asked before every pass; True abandons the attribution (``Stopped``).

    Returns:
        (B, T) token attributions (summed over the hidden size, on the CPU) and (B,) Captum's
        convergence delta.

    Raises:
        Stopped: ``should_stop`` returned True. Captum removes its hooks on the way out, so
            the model is left as it was.
    """
    from captum.attr import LayerIntegratedGradients

    def checked(*args: Any) -> torch.Tensor:
        # one pass is internal_batch_size sequences: the most work done after a stop request
        if should_stop is not None and should_stop():
            raise Stopped("explanation stopped")
        return forward(*args)

    lig = LayerIntegratedGradients(checked, model.get_input_embeddings())
    attrs, delta = lig.attribute(
        inputs=ids,
        baselines=baseline,
        target=target,
        additional_forward_args=forward_args,
        n_steps=steps,
        method="gausslegendre",
        internal_batch_size=max(internal_batch_size, len(ids)),
        return_convergence_delta=True,
    )
    return attrs.sum(-1).detach().cpu(), delta.detach().cpu()


def completeness(
    sum_attributions: float, f_input: float, f_baseline: float, delta: float
) -> dict[str, float]:
    """How far the attributions are from summing to ``F(input) - F(baseline)``."""
    diff = f_input - f_baseline
    return {
        "sum_attributions": sum_attributions,
        "output_difference": diff,
        "input_output": f_input,
        "baseline_output": f_baseline,
        "delta": delta,
        "relative_error": abs(sum_attributions - diff) / max(abs(diff), 1e-12),
    }


def method_info(output: str, steps: int) -> dict[str, Any]:
    """The ``method`` record every explanation carries."""
    return {"name": "integrated_gradients", "output": output, "baseline": BASELINE, "steps": steps}


def aggregate_words(
    text: str,
    offsets: Sequence[tuple[int, int]],
    word_ids: Sequence[int | None],
    token_scores: Sequence[float],
) -> list[dict[str, Any]]:
    """Sum sub-token scores into words.

    Args:
        text: the original text.
        offsets: (start, end) character span of each token in ``text``.
        word_ids: the word index of each token (``None`` for special and padding tokens).
        token_scores: one attribution per token.

    Returns:
        Words in text order: ``word`` (the text slice), ``start``, ``end``, ``attribution``
        (sum over its tokens) and ``n_tokens``.

    Example:
        >>> aggregate_words("unhappy day", [(0, 0), (0, 2), (2, 7), (8, 11)],
        ...                 [None, 0, 0, 1], [9.0, 0.5, 0.25, -1.0])[0]["attribution"]
        0.75
    """
    tokens: dict[int, list[tuple[int, int, float]]] = {}
    for (start, end), wid, score in zip(offsets, word_ids, token_scores):
        if wid is not None:
            tokens.setdefault(wid, []).append((start, end, float(score)))
    words: list[dict[str, Any]] = []
    for spans in tokens.values():
        first, last = min(a for a, _, _ in spans), max(b for _, b, _ in spans)
        # text written without spaces (Chinese, Japanese) is one whitespace "word" to a
        # SentencePiece tokenizer: its pieces (质量, 很好) are the words; pieces that share a
        # character (byte-level BPE) join their neighbour, as does a bare ▁ or its space
        split = _CJK.search(text[first:last]) is not None
        group: dict[str, Any] | None = None
        for start, end, score in spans:
            shown = group is not None and text[group["start"] : group["end"]].strip() != ""
            if group is None or (split and shown and start >= group["end"] and end > start):
                group = {"start": start, "end": end, "attribution": 0.0, "n_tokens": 0}
                words.append(group)
            group["start"], group["end"] = min(group["start"], start), max(group["end"], end)
            group["attribution"] += score
            group["n_tokens"] += 1
    out = []
    for w in sorted(words, key=lambda w: w["start"]):
        # byte-level BPE offsets may include the leading space; keep the word itself
        raw = text[w["start"] : w["end"]]
        lead = len(raw) - len(raw.lstrip())
        word = raw.strip()
        start = w["start"] + lead
        out.append(
            {
                "word": word,
                "start": start,
                "end": start + len(word),
                "attribution": w["attribution"],
                "n_tokens": w["n_tokens"],
            }
        )
    return out


def ranked_words(explanation: dict[str, Any], k: int | None = None) -> list[dict[str, Any]]:
    """The words of one explanation, most supporting the target first."""
    words = sorted(explanation["words"], key=lambda w: w["attribution"], reverse=True)
    return words if k is None else words[:k]


def _colour(score: float, scale: float) -> str:
    a = min(1.0, abs(score) / scale) if scale > 0 else 0.0
    rgb = "34,139,34" if score >= 0 else "220,20,60"  # green supports the target, red opposes
    return f"rgba({rgb},{a * 0.8:.3f})"


def highlight(
    text: str, words: Sequence[dict[str, Any]], mark: tuple[int, int] | None = None
) -> str:
    """HTML of ``text`` with each word shaded by its attribution, relative to the largest.

    Green words push toward the explained output, red words away; hovering shows the score.
    Words inside the character range ``mark`` (an entity) are also outlined.
    """
    scale = max((abs(w["attribution"]) for w in words), default=0.0)
    pos, spans = 0, []
    for w in words:
        inside = mark is not None and mark[0] <= w["start"] and w["end"] <= mark[1]
        spans.append(html.escape(text[pos : w["start"]]))
        spans.append(
            f"<span class='w{' e' if inside else ''}' "
            f"style='background:{_colour(w['attribution'], scale)}' "
            f"title='{w['attribution']:+.4f}'>{html.escape(text[w['start'] : w['end']])}</span>"
        )
        pos = w["end"]
    spans.append(html.escape(text[pos:]))
    return "".join(spans)


def completeness_note(explanation: dict[str, Any]) -> str:
    """One HTML line: sum of attributions vs the output difference, steps, baseline."""
    c = explanation["completeness"]
    return (
        f"sum of attributions {c['sum_attributions']:+.4f} vs F(x)−F(baseline) "
        f"{c['output_difference']:+.4f} (completeness error {c['relative_error']:.2%}; "
        f"{explanation['method']['steps']} steps, [PAD] baseline)"
        + ("; text truncated" if explanation["truncated"] else "")
    )
