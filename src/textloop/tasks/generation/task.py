"""Generation: fine-tune a decoder (causal LM) on prompt/target pairs or chats, and decode with it.

Loss is on the answer tokens only (``generation_data``). Short examples can be packed into one
row (``train.packing``): each keeps its own positions and attends only to itself, so a packed
row computes what its examples would compute alone, without the padding. Evaluation reports
held-out loss and perplexity over every answer token, and BLEU / chrF / ROUGE of greedy outputs on
a capped sample (``generation.eval_samples``) with a prompt / reference / output table.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from textloop.data.batching import sorted_batches
from textloop.errors import ConfigError, DataError
from textloop.tasks.base import Encoded, Task
from textloop.tasks.generation.data import (
    IGNORE,
    Conversations,
    encode_conversations,
    ensure_chat_template,
    pair_conversation,
    read_conversations,
    render,
)
from textloop.tasks.generation.decoding import (
    DecodingOptions,
    Generated,
    StreamStep,
    generate,
    pad_id,
    stream,
    stream_steps,
)
from textloop.tasks.generation.metrics import perplexity, text_metrics
from textloop.tasks.generation.pack import collate_rows

METRIC_NAMES = ("perplexity", "chrf", "bleu", "rougeL", "rouge1", "rouge2")  # first = default
LOWER_IS_BETTER = ("perplexity",)
LORA_DEFAULT = True  # decoders train LoRA adapters unless lora.enabled is false
N_SAMPLES_SHOWN = 8  # rows of the prompt / reference / output table


@dataclass
class GenerationTask(Task):
    """A causal LM trained on answers and decoded greedily or by sampling."""

    token_weighted: ClassVar[bool] = True
    tokenizer: Any
    max_seq_len: int
    packing: bool = False
    system_prompt: str | None = None
    prompt_template: str = "{prompt}"
    decoding: DecodingOptions = field(default_factory=DecodingOptions)
    eval_samples: int = 32
    eval_max_new_tokens: int = 64
    name: str = "generation"

    metric_names: tuple[str, ...] = METRIC_NAMES
    head_prefixes: tuple[str, ...] = ()  # the LM head is pretrained, not fresh

    # ---- model ---------------------------------------------------------------------------
    def build_model(self, model_dir: Path) -> torch.nn.Module:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(model_dir)

    def load_model(self, model_dir: Path) -> torch.nn.Module:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(model_dir)

    # ---- batches and loss ----------------------------------------------------------------
    def collate(self, data: Encoded, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        segments = data.extra.get("segments")
        return collate_rows(
            [data.input_ids[i] for i in indices],
            [data.targets[i] for i in indices],
            [segments[i] for i in indices] if segments else None,
            pad_id(self.tokenizer),
        )

    @staticmethod
    def _next_tokens(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The targets aligned with the logits: position t predicts token t + 1 (B, T-1)."""
        return batch["targets"][:, 1:]

    def token_losses(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Negative log-likelihood of every target token (N,): position t predicts token t + 1."""
        targets = self._next_tokens(batch)
        keep = targets != IGNORE
        kwargs: dict[str, Any] = {"input_ids": batch["input_ids"]}
        if "segment_ids" in batch:  # packed rows: attend within each example only
            seg = batch["segment_ids"]  # (B, T)
            causal = torch.ones(seg.shape[1], seg.shape[1], dtype=torch.bool, device=seg.device)
            allowed = (seg[:, :, None] == seg[:, None, :]) & causal.tril()  # (B, T, T)
            kwargs["attention_mask"] = _as_model_mask(model, allowed[:, None])  # (B, 1, T, T)
            kwargs["position_ids"] = batch["position_ids"]
        else:
            kwargs["attention_mask"] = batch["attention_mask"]
        head = _split_head(model)
        if head is not None:  # vocabulary scores only where there is a target: saves the LM head
            body, lm_head = head
            hidden = body(**kwargs).last_hidden_state[:, :-1]  # (B, T-1, H)
            logits = lm_head(hidden[keep])  # (N, V)
        else:
            logits = model(**kwargs).logits[:, :-1][keep]  # (N, V)
        return F.cross_entropy(logits.float(), targets[keep], reduction="none")

    def loss_tokens(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The target tokens ``training_loss`` averages over (the driver weights by them)."""
        return (self._next_tokens(batch) != IGNORE).sum()

    def training_loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        losses = self.token_losses(model, batch)
        return losses.mean() if len(losses) else losses.sum()

    # ---- evaluation ----------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(
        self,
        model: torch.nn.Module,
        data: Encoded,
        batch_size: int,
        progress: Callable[[int], None] | None = None,
    ) -> dict[str, Any]:
        model.eval()
        device = next(model.parameters()).device
        nll, n_tokens = 0.0, 0
        for idx in sorted_batches(data.lengths, batch_size):
            batch = {k: v.to(device) for k, v in self.collate(data, idx).items()}
            losses = self.token_losses(model, batch)
            nll += float(losses.sum())
            n_tokens += len(losses)
        loss = nll / max(n_tokens, 1)
        out: dict[str, Any] = {
            "n": len(data),
            "target_tokens": n_tokens,
            "loss": loss,
            "perplexity": perplexity(loss),
        }
        if self.eval_samples and "prompt_ids" in data.extra:
            out.update(self.sample_metrics(model, data, batch_size))
        return out

    def sample_metrics(
        self, model: torch.nn.Module, data: Encoded, batch_size: int
    ) -> dict[str, Any]:
        """BLEU / chrF / ROUGE of greedy answers on up to ``eval_samples`` evenly spread examples."""
        n = min(self.eval_samples, len(data))
        chosen = sorted({round(i * len(data) / n) for i in range(n)})
        prompts = [data.extra["prompt_ids"][i] for i in chosen]
        refs = [data.extra["reference"][i] for i in chosen]
        opts = DecodingOptions(
            max_new_tokens=self.eval_max_new_tokens, stop=self.decoding.stop, seed=0
        )
        t0 = time.perf_counter()
        outputs = generate(model, self.tokenizer, prompts, opts, batch_size=min(batch_size, 16))
        seconds = time.perf_counter() - t0
        new_tokens = sum(len(g.token_ids) for g in outputs)
        out: dict[str, Any] = text_metrics([g.text for g in outputs], refs)
        out["generated"] = len(outputs)
        out["generation_tokens_per_s"] = round(new_tokens / max(seconds, 1e-9), 2)
        out["samples"] = [
            {"prompt": data.extra["prompt_text"][i], "reference": r, "output": g.text}
            for i, r, g in zip(chosen, refs, outputs)
        ][:N_SAMPLES_SHOWN]
        return out

    def encode_source(self, source: str, columns: dict[str, Any], drop_invalid: bool) -> Encoded:
        convs = read_conversations(
            source, columns, drop_invalid, self.system_prompt, self.prompt_template
        )
        return self.encode(convs)

    def encode(self, convs: Conversations) -> Encoded:
        """Tokenize conversations (prompt tokens masked) without packing."""
        return encode_conversations(self.tokenizer, convs, self.max_seq_len)

    # ---- inference -----------------------------------------------------------------------
    def _options(self, overrides: dict[str, Any]) -> DecodingOptions:
        fields = {k: v for k, v in vars(self.decoding).items()}
        unknown = sorted(set(overrides) - set(fields))
        if unknown:
            raise ConfigError(
                f"unknown decoding option(s) {', '.join(unknown)}; options: {', '.join(fields)}"
            )
        fields.update({k: v for k, v in overrides.items() if v is not None})
        if "stop" in overrides and overrides["stop"] is not None:
            fields["stop"] = tuple(overrides["stop"])
        return DecodingOptions(**fields)

    def prompt_ids(self, item: str | Sequence[dict[str, str]], truncate: bool = True) -> list[int]:
        """Token ids asking for the next answer: a text (templated as a pair prompt) or a chat.

        A prompt longer than ``max_seq_len`` (the training length) keeps its last tokens, unless
        ``truncate`` is False (a server that refuses over-long prompts counts them whole).
        """
        if isinstance(item, str):
            messages = pair_conversation(
                self.prompt_template.replace("{prompt}", item), None, self.system_prompt
            )
        else:
            messages = list(item)
            if self.system_prompt and not any(m.get("role") == "system" for m in messages):
                messages.insert(0, {"role": "system", "content": self.system_prompt})
        if not messages or messages[-1].get("role") != "user":
            raise DataError("a chat to answer must end with a user message")
        text = render(self.tokenizer, messages, add_generation_prompt=True)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if not truncate:
            return list(ids)
        return list(ids[-self.max_seq_len :])  # the oldest context goes first, as in training

    def predict(
        self,
        model: torch.nn.Module,
        inputs: Sequence[str | Sequence[dict[str, str]]],
        pairs: Sequence[str] | None = None,
        batch_size: int = 8,
        **decoding: Any,
    ) -> list[dict[str, Any]]:
        """Answers for prompts (texts) or chats (message lists), generated in batches.

        ``decoding`` overrides the run's decoding options (max_new_tokens, temperature, top_p,
        top_k, repetition_penalty, stop, seed). ``pairs`` exists for the common predict
        signature and must be None.
        """
        if pairs is not None:
            raise DataError("a generation model takes prompts or chats, not text pairs")
        opts = self._options(decoding)
        prompts = [self.prompt_ids(x) for x in inputs]
        if not prompts:
            return []
        results: list[Generated] = generate(model, self.tokenizer, prompts, opts, batch_size)
        return [g.to_json() for g in results]

    def stream(
        self, model: torch.nn.Module, item: str | Sequence[dict[str, str]], **decoding: Any
    ) -> Iterator[str]:
        """The answer to one prompt or chat, yielded piece by piece as it is generated."""
        opts = self._options(decoding)
        return stream(model, self.tokenizer, self.prompt_ids(item), opts)

    def stream_steps(
        self, model: torch.nn.Module, item: str | Sequence[dict[str, str]], **decoding: Any
    ) -> Iterator[StreamStep]:
        """The answer to one prompt or chat, one step per generated token, then a closing step
        with the finish reason (what a server streams, counts and can stop at any token)."""
        opts = self._options(decoding)
        return stream_steps(model, self.tokenizer, self.prompt_ids(item), opts)

    def report_section(self, metrics: dict[str, Any]) -> str:
        """Markdown for report.md: generation metrics and the prompt / reference / output table."""
        keys = ("loss", "perplexity", "bleu", "chrf", "rouge1", "rouge2", "rougeL")
        lines = ["## Generation metrics", "", "| split | " + " | ".join(keys) + " |"]
        lines.append("| --- |" + " ---: |" * len(keys))
        for split in ("validation", "test"):
            m = metrics.get(split)
            if m:
                cells = [f"{m[k]:.4f}" if isinstance(m.get(k), float) else "" for k in keys]
                lines.append(f"| {split} | " + " | ".join(cells) + " |")
        samples = (metrics.get("validation") or {}).get("samples") or []
        if samples:
            lines += ["", "## Samples (validation, greedy)", ""]
            lines += ["| prompt | reference | output |", "| --- | --- | --- |"]
            for s in samples:
                cells = [_cell(s[k]) for k in ("prompt", "reference", "output")]
                lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def state(self) -> dict[str, Any]:
        d = vars(self.decoding)
        return {
            "task": self.name,
            "max_seq_len": self.max_seq_len,
            "packing": self.packing,
            "system_prompt": self.system_prompt,
            "prompt_template": self.prompt_template,
            "decoding": {**d, "stop": list(d["stop"])},
            "eval_samples": self.eval_samples,
            "eval_max_new_tokens": self.eval_max_new_tokens,
        }


def _cell(text: str, width: int = 160) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= width else text[: width - 1] + "…"


def _split_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """(decoder body, LM head) when logits are a plain projection of the last hidden state."""
    base: Any = model.get_base_model() if hasattr(model, "get_base_model") else model  # type: ignore[operator]
    get_body = getattr(base, "get_decoder", None)
    get_head = getattr(base, "get_output_embeddings", None)
    if not (callable(get_body) and callable(get_head)) or isinstance(
        model, torch.nn.parallel.DistributedDataParallel
    ):
        return None
    config = getattr(base, "config", None)
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        return None  # these models transform the projection; use their own forward
    body, head = get_body(), get_head()
    if body is None or body is base or not isinstance(head, torch.nn.Linear):
        return None
    return body, head


def _as_model_mask(model: torch.nn.Module, allowed: torch.Tensor) -> torch.Tensor:
    """A (B, 1, T, T) mask in the form the model's attention takes: bool for sdpa, additive else."""
    impl = getattr(getattr(model, "config", None), "_attn_implementation", "sdpa")
    if impl == "sdpa":
        return allowed
    dtype = next(model.parameters()).dtype
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
        ~allowed, torch.finfo(dtype).min
    )


def task_from_state(state: dict[str, Any], tokenizer: Any) -> GenerationTask:
    """Rebuild the task a finished run used from its ``labels.json``."""
    ensure_chat_template(tokenizer)
    d = dict(state.get("decoding") or {})
    d["stop"] = tuple(d.get("stop") or ())
    return GenerationTask(
        tokenizer=tokenizer,
        max_seq_len=state["max_seq_len"],
        packing=state.get("packing", False),
        system_prompt=state.get("system_prompt"),
        prompt_template=state.get("prompt_template", "{prompt}"),
        decoding=DecodingOptions(**d),
        eval_samples=state.get("eval_samples", 32),
        eval_max_new_tokens=state.get("eval_max_new_tokens", 64),
    )
