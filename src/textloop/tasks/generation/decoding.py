"""Decoding for causal LMs: greedy or sampled, with a KV cache, left-padded batches and streaming.

One loop (``_token_steps``) serves batched generation and token streaming. A batch is padded on
the left, so every row's next token sits in the last column; position ids count real tokens
only, so a padded row computes what it would compute alone. Each step feeds just the new tokens
and reuses the cached keys and values of everything before (``use_cache``).

Sampling draws from its own ``torch.Generator`` (seeded by ``DecodingOptions.seed``), so
generating never moves the global RNG that training and resume depend on.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch


@dataclass
class DecodingOptions:
    """How to pick tokens. ``temperature=0`` is greedy; ``top_k=0`` and ``top_p=1`` are off."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = (
        1.0  # > 1 discourages tokens already present (CTRL, arXiv:1909.05858)
    )
    stop: tuple[str, ...] = ()  # generation ends before the first of these strings
    seed: int = 0
    use_cache: bool = True


@dataclass
class Generated:
    """One output: its text (stop string and end token removed), tokens and why it ended."""

    text: str
    token_ids: list[int]
    finish_reason: Literal["stop", "length"]

    def to_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "tokens": len(self.token_ids),
            "finish_reason": self.finish_reason,
        }


def eos_ids(model: torch.nn.Module, tokenizer: Any) -> set[int]:
    """Token ids that end an answer: the tokenizer's EOS and the model's generation config EOS."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    gen = getattr(model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None)
    if isinstance(extra, int):
        ids.add(extra)
    elif isinstance(extra, (list, tuple)):
        ids.update(int(i) for i in extra)
    return ids


def pad_id(tokenizer: Any) -> int:
    """The padding id: the tokenizer's pad token, else its EOS (padding is masked anyway)."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


def _forward_params(model: torch.nn.Module) -> set[str]:
    base: Any = model.get_base_model() if hasattr(model, "get_base_model") else model  # type: ignore[operator]
    return set(inspect.signature(base.forward).parameters)


def _new_cache(model: torch.nn.Module) -> Any:
    from transformers import DynamicCache

    if "config" in inspect.signature(DynamicCache).parameters:
        return DynamicCache(config=model.config)  # type: ignore[arg-type]
    return DynamicCache()


def _pick(
    logits: torch.Tensor,  # (B, V) scores of the next token
    seqs: torch.Tensor,  # (B, L) tokens so far (prompt + generated), left-padded
    mask: torch.Tensor,  # (B, L) 1 on real tokens
    opts: DecodingOptions,
    generator: torch.Generator,
) -> torch.Tensor:
    """The next token of every row (B,) after penalty, temperature, top-k and top-p."""
    if opts.repetition_penalty != 1.0:
        seen = torch.where(mask.bool(), seqs, seqs[:, -1:])  # pads stand in for a real token
        score = logits.gather(1, seen)
        score = torch.where(
            score > 0, score / opts.repetition_penalty, score * opts.repetition_penalty
        )
        logits = logits.scatter(1, seen, score)
    if opts.temperature <= 0:
        return logits.argmax(-1)
    logits = logits / opts.temperature
    if opts.top_k > 0:
        kth = logits.topk(min(opts.top_k, logits.shape[-1]), dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if opts.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= opts.top_p  # keep the smallest set reaching p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


@torch.no_grad()
def _token_steps(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    pad: int,
    opts: DecodingOptions,
    finished: torch.Tensor,  # (B,) bool, set by the caller; finished rows get ``pad``
) -> Iterator[torch.Tensor]:
    """Yield the next token of every row (B,), up to ``max_new_tokens`` times."""
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :] = torch.as_tensor(p, dtype=torch.long)
        mask[row, width - len(p) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, L): real tokens count from 0
    params = _forward_params(model)
    cache_key = "cache" if "cache" in params else "past_key_values"
    cache = _new_cache(model) if opts.use_cache else None
    generator = torch.Generator(device=device).manual_seed(opts.seed)
    step_ids, step_pos = ids, positions
    for _ in range(opts.max_new_tokens):
        kwargs: dict[str, Any] = {"attention_mask": mask, "use_cache": cache is not None}
        if "logits_to_keep" in params:
            kwargs["logits_to_keep"] = 1  # only the last position's vocabulary scores
        if cache is not None:
            kwargs[cache_key] = cache
            out = model(input_ids=step_ids, position_ids=step_pos, **kwargs)
        else:
            out = model(input_ids=ids, position_ids=positions, **kwargs)
        nxt = _pick(out.logits[:, -1].float(), ids, mask, opts, generator)
        nxt = torch.where(finished.to(device), torch.full_like(nxt, pad), nxt)
        yield nxt
        ids = torch.cat([ids, nxt[:, None]], 1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        positions = torch.cat([positions, positions[:, -1:] + 1], 1)
        step_ids, step_pos = nxt[:, None], positions[:, -1:]


def _cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    hits = [text.find(s) for s in stop if s and s in text]
    return (text[: min(hits)], True) if hits else (text, False)


def generate(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    opts: DecodingOptions,
    batch_size: int = 8,
) -> list[Generated]:
    """Continue every prompt (token ids), in left-padded batches of similar length.

    Returns one ``Generated`` per prompt, in input order. A row ends at an end token, a stop
    string or ``max_new_tokens``.
    """
    model.eval()
    stops = eos_ids(model, tokenizer)
    pad = pad_id(tokenizer)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: dict[int, Generated] = {}
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        finished = torch.zeros(len(idx), dtype=torch.bool)
        tokens: list[list[int]] = [[] for _ in idx]
        reasons: list[Literal["stop", "length"]] = ["length"] * len(idx)
        texts: list[str | None] = [None] * len(idx)  # set when a stop string cut the text
        for nxt in _token_steps(model, [prompts[i] for i in idx], pad, opts, finished):
            for row, tok in enumerate(nxt.tolist()):
                if finished[row]:
                    continue
                if tok in stops:
                    finished[row], reasons[row] = True, "stop"
                    continue
                tokens[row].append(tok)
                if opts.stop:
                    text, hit = _cut_at_stop(
                        tokenizer.decode(tokens[row], skip_special_tokens=True), opts.stop
                    )
                    if hit:
                        finished[row], reasons[row], texts[row] = True, "stop", text
            if bool(finished.all()):
                break
        for row, i in enumerate(idx):
            cut = texts[row]
            text = (
                cut if cut is not None else tokenizer.decode(tokens[row], skip_special_tokens=True)
            )
            results[i] = Generated(text.strip(), tokens[row], reasons[row])
    return [results[i] for i in range(len(prompts))]


@dataclass
class StreamStep:
    """One generated token's share of a streamed answer, or the closing step.

    ``text`` is the text this token decided (often empty: a special token, half a character,
    or text held back because it might start a stop string). After the last token comes one
    closing step with the ``finish_reason`` and whatever text was still held back.
    """

    text: str
    tokens: int  # tokens generated so far, the end token not counted (as in ``Generated``)
    finish_reason: Literal["stop", "length"] | None = None


def stream_steps(
    model: torch.nn.Module, tokenizer: Any, prompt: Sequence[int], opts: DecodingOptions
) -> Iterator[StreamStep]:
    """Continue one prompt a token at a time: a ``StreamStep`` per token, then a closing one.

    One step per token (not per piece of text) lets a server stop between any two tokens and
    count them; the steps' texts join to ``generate``'s text (before stripping).
    """
    model.eval()
    stops = eos_ids(model, tokenizer)
    finished = torch.zeros(1, dtype=torch.bool)
    tokens: list[int] = []
    sent = 0
    text = ""
    reason: Literal["stop", "length"] = "length"
    for nxt in _token_steps(model, [prompt], pad_id(tokenizer), opts, finished):
        tok = int(nxt[0])
        if tok in stops:
            reason = "stop"
            break
        tokens.append(tok)
        text, hit = _cut_at_stop(tokenizer.decode(tokens, skip_special_tokens=True), opts.stop)
        if hit:
            reason = "stop"
            break
        safe = len(text)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence
            safe = len(text.rstrip("\ufffd"))
        for s in opts.stop:  # the longest tail that might grow into a stop string
            for k in range(min(len(s) - 1, safe), 0, -1):
                if text[:safe].endswith(s[:k]):
                    safe -= k
                    break
        piece = ""
        if safe > sent:
            piece, sent = text[sent:safe], safe
        yield StreamStep(piece, len(tokens))
    yield StreamStep(text[sent:], len(tokens), reason)  # what was held back, and why it ended


def stream(
    model: torch.nn.Module, tokenizer: Any, prompt: Sequence[int], opts: DecodingOptions
) -> Iterator[str]:
    """Yield the text of one continuation piece by piece, as tokens are generated.

    Text that could be the start of a stop string, or half a multi-byte character, is held back
    until it is decided; the pieces join to ``generate``'s text (before stripping).
    """
    for step in stream_steps(model, tokenizer, prompt, opts):
        if step.text:
            yield step.text
