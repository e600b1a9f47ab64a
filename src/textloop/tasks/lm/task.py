"""Continued pre-training on unlabelled text: masked LM (encoders) and causal LM (decoders).

The task plugs into the same driver as fine-tuning (``textloop.training.run.train``). Its
training data is not an indexed table but a ``PackedStream`` (``Splits.stream``): packed blocks
read from disk as they are consumed, with the stream position in ``LoopState.data_cursor``. Its
held-out split is a fixed set of blocks; evaluation reports perplexity (exp of the mean token
loss) and token accuracy.

Masked LM follows BERT (Devlin et al. 2019, sec. 3.1): 15% of the (non-special) tokens are
chosen; of those 80% become ``[MASK]``, 10% a random token, 10% stay unchanged. Whole-word
masking chooses words instead of sub-word tokens. Each block's mask is drawn from a generator
seeded by (seed, epoch, block index), so it is the same whatever the world size, and on resume.

Packed blocks hold several documents; a block-diagonal attention mask and per-document
positions keep each document from seeing the others, and causal LM does not train the
prediction of a document's first token from the previous document.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, cast

import torch
import torch.nn.functional as F

from textloop.errors import DataError
from textloop.tasks.base import Encoded, Task
from textloop.tasks.lm.carried import (
    first_position_id,
    mlm_head,
    save_carried,
    unloaded_tensors,
)
from textloop.tasks.lm.packing import (
    Block,
    DocumentSource,
    PackedStream,
    Tokenize,
    document_source,
)

METRIC_NAMES = ("perplexity", "accuracy")  # the first picks the best checkpoint by default
LOWER_IS_BETTER = ("perplexity",)
LORA_DEFAULT = False  # lora.enabled true trains adapters (e.g. a decoder's CLM)
MASK_RATE, MASK_TOKEN_SHARE, RANDOM_TOKEN_SHARE = 0.15, 0.8, 0.1
IGNORE = -100  # label of a position that is not trained
log = logging.getLogger(__name__)


@dataclass
class PretrainTask(Task):
    """Language modelling over packed blocks: ``objective`` 'mlm' (encoders) or 'clm' (decoders)."""

    token_weighted: ClassVar[bool] = True
    tokenizer: Any
    objective: Literal["mlm", "clm"]
    block_size: int
    mask_rate: float = MASK_RATE
    whole_word_mask: bool = False
    document_mask: bool = True
    seed: int = 0
    # checkpoint tensors the LM architecture does not load (BERT's pooler under
    # BertForMaskedLM), under their saved names; written back next to the adapted model
    carried: dict[str, torch.Tensor] = field(default_factory=dict)
    name: str = "mlm"

    metric_names: tuple[str, ...] = METRIC_NAMES
    head_prefixes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # an encoder's MLM head may be fresh (MiniLM and e5 ship none): it trains in full under
        # LoRA; BERT calls it "cls", RoBERTa / XLM-R "lm_head" (only the model's own is used)
        if self.objective == "mlm" and not self.head_prefixes:
            self.head_prefixes = ("cls", "lm_head")

    # ---- model ---------------------------------------------------------------------------
    def build_model(self, model_dir: Path) -> torch.nn.Module:
        """The checkpoint with its LM head, or a fresh one (tied to the input embeddings)."""
        from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

        auto = AutoModelForMaskedLM if self.objective == "mlm" else AutoModelForCausalLM
        loaded = auto.from_pretrained(model_dir, output_loading_info=True)
        model, info = cast(tuple[Any, dict[str, Any]], loaded)
        self.carried = unloaded_tensors(model, model_dir, info["unexpected_keys"])
        fresh = sorted({k.split(".")[0] for k in info["missing_keys"]} & set(self.head_prefixes))
        tied = bool(getattr(model.config, "tie_word_embeddings", True))
        if fresh:  # e.g. embedded:minilm and embedded:e5-small ship a bare encoder
            log.info(
                "%s has no %s head: %s starts from random weights%s",
                model_dir,
                self.objective.upper(),
                ", ".join(fresh),
                ", its decoder tied to the input embeddings" if tied else "",
            )
        n_rows = int(cast(torch.nn.Embedding, model.get_input_embeddings()).num_embeddings)
        if len(self.tokenizer) > n_rows:
            from textloop.tasks.lm.domain_vocab import init_new_embeddings

            init_new_embeddings(model, self.tokenizer)
        if tied:
            model.tie_weights()  # a head the checkpoint lacked shares the embedding matrix
        return model

    def load_model(self, model_dir: Path) -> torch.nn.Module:
        return self.build_model(model_dir)

    # ---- batches -------------------------------------------------------------------------
    def _mask(self, block: Block, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """BERT's 80/10/10 masking of one block: (input ids, labels)."""
        ids = torch.tensor(block.ids)  # (T,)
        words = torch.tensor(block.words)  # (T,) -1 for special tokens
        maskable = words >= 0
        if self.whole_word_mask:
            doc = torch.zeros(len(ids), dtype=torch.long)
            doc[torch.tensor(block.doc_starts, dtype=torch.long)] = 1
            key = torch.cumsum(doc, 0) * (int(words.max()) + 2) + words  # word within document
            uniq, inverse = torch.unique(key, return_inverse=True)
            chosen = (torch.rand(len(uniq), generator=generator) < self.mask_rate)[inverse]
        else:
            chosen = torch.rand(len(ids), generator=generator) < self.mask_rate
        chosen &= maskable
        labels = torch.where(chosen, ids, IGNORE)
        roll = torch.rand(len(ids), generator=generator)
        to_mask = chosen & (roll < MASK_TOKEN_SHARE)
        to_random = (
            chosen & (roll >= MASK_TOKEN_SHARE) & (roll < MASK_TOKEN_SHARE + RANDOM_TOKEN_SHARE)
        )
        random_ids = torch.randint(len(self.tokenizer), ids.shape, generator=generator)
        ids = torch.where(to_mask, self.tokenizer.mask_token_id, ids)
        ids = torch.where(to_random, random_ids, ids)
        return ids, labels

    def _clm_labels(self, block: Block) -> torch.Tensor:
        labels = torch.tensor(block.ids)
        starts = [s for s in block.doc_starts if s > 0]
        labels[starts] = IGNORE  # never trained to guess a document's start from another document
        return labels

    def collate_blocks(self, blocks: Sequence[Block]) -> dict[str, Any]:
        """Model inputs and labels for packed blocks (all ``block_size`` long, no padding)."""
        inputs, labels = [], []
        for blk in blocks:
            if self.objective == "mlm":
                key = (self.seed * 1_000_003 + blk.epoch) * 1_000_000_007 + blk.index
                g = torch.Generator().manual_seed(key % 2**63)
                ids, lab = self._mask(blk, g)
            else:
                ids, lab = torch.tensor(blk.ids), self._clm_labels(blk)
            inputs.append(ids)
            labels.append(lab)
        is_start = torch.zeros((len(blocks), self.block_size), dtype=torch.bool)  # (B, T)
        for row, blk in enumerate(blocks):
            is_start[row, blk.doc_starts] = True
        pos = torch.arange(self.block_size).expand(len(blocks), -1)  # (B, T)
        first = torch.cummax(torch.where(is_start, pos, 0), 1).values  # where each document began
        batch: dict[str, Any] = {
            "input_ids": torch.stack(inputs),  # (B, T)
            "attention_mask": torch.ones((len(blocks), self.block_size), dtype=torch.long),
            "targets": torch.stack(labels),  # (B, T)
        }
        if self.document_mask:
            batch["document_ids"] = torch.cumsum(is_start.long(), 1)  # document number (B, T)
            batch["position_ids"] = pos - first  # positions restart with each document
        return batch

    def collate(self, data: Encoded, indices: Sequence[int]) -> dict[str, Any]:
        return self.collate_blocks([data.extra["blocks"][i] for i in indices])

    def _forward(
        self, model: torch.nn.Module, batch: dict[str, Any], keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits (B, T, V); with ``keep`` (B, T) only those positions' logits, (N, V)."""
        kwargs = {"input_ids": batch["input_ids"]}
        if "document_ids" in batch:
            doc = batch["document_ids"]  # (B, T)
            allowed = doc[:, :, None] == doc[:, None, :]  # (B, T, T) attend within the document
            if self.objective == "clm":
                allowed &= torch.ones_like(allowed[0]).tril().bool()
            kwargs["attention_mask"] = allowed[:, None]  # (B, 1, T, T)
            # RoBERTa-style models count positions from padding_idx + 1 (XLM-R: 2), not 0
            kwargs["position_ids"] = batch["position_ids"] + first_position_id(model)
        else:
            kwargs["attention_mask"] = batch["attention_mask"]
        if keep is None:
            return model(**kwargs).logits  # type: ignore[no-any-return]
        head = mlm_head(model)
        if head is None:
            return model(**kwargs).logits[keep]  # type: ignore[no-any-return]
        # the vocabulary projection only where there is a label: the head gets those rows alone
        hook = head.register_forward_pre_hook(lambda _module, args: (args[0][keep], *args[1:]))
        try:
            return model(**kwargs).logits  # type: ignore[no-any-return]
        finally:
            hook.remove()

    def _labels(self, batch: dict[str, Any]) -> torch.Tensor:
        """The labels the loss is over, aligned with the logits it uses: for CLM position t
        predicts token t + 1, so the first label is dropped."""
        labels = batch["targets"]
        return labels[:, 1:] if self.objective == "clm" else labels

    def _token_losses(
        self, model: torch.nn.Module, batch: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        labels = self._labels(batch)
        keep = labels != IGNORE
        if self.objective == "clm":
            logits = self._forward(model, batch).float()[:, :-1][keep]
        else:  # masked LM: 15% of positions carry a label; only they need the vocabulary
            logits = self._forward(model, batch, keep).float()  # (N, V)
        target = labels[keep]
        losses = F.cross_entropy(logits, target, reduction="none")  # (N,)
        correct = (logits.argmax(-1) == target).sum()
        return losses, correct, keep.sum()

    def save_extras(self, model_dir: Path) -> None:
        """Write back the checkpoint tensors the LM architecture dropped (``carried``)."""
        save_carried(model_dir, self.carried)

    def loss_tokens(self, batch: dict[str, Any]) -> torch.Tensor:
        """How many tokens ``training_loss`` averages over: the driver weights each batch's mean
        by its share of a step's tokens, so every token counts the same (see ``train_steps``)."""
        return (self._labels(batch) != IGNORE).sum()

    def training_loss(self, model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        losses, _, _ = self._token_losses(model, batch)
        return losses.mean() if len(losses) else losses.sum()  # a block with nothing masked: 0

    @torch.no_grad()
    def evaluate(
        self,
        model: torch.nn.Module,
        data: Encoded,
        batch_size: int,
        progress: Callable[[int], None] | None = None,
    ) -> dict[str, Any]:
        """Perplexity and token accuracy over the held-out blocks, summed across ranks."""
        from textloop.collectives import all_reduce_sum, rank, world_size

        model.eval()
        device = next(model.parameters()).device
        totals = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, tokens
        world = world_size()
        mine = list(range(rank(), len(data), world))
        # every rank runs the same number of forwards (FSDP gathers weights collectively in
        # each one); a rank out of blocks scores a stand-in batch and discards it
        n_batches = math.ceil(math.ceil(len(data) / world) / batch_size) if len(data) else 0
        for b in range(n_batches):
            part = mine[b * batch_size : (b + 1) * batch_size]
            batch = self.collate(data, part or [0])
            batch = {k: v.to(device) for k, v in batch.items()}
            losses, correct, n = self._token_losses(model, batch)
            if part:
                totals += torch.tensor([float(losses.sum()), float(correct), float(n)])
        loss_sum, correct, n = all_reduce_sum(totals).tolist()
        loss = loss_sum / max(n, 1.0)
        return {
            "n": len(data),
            "tokens": int(n),
            "loss": loss,
            "perplexity": math.exp(min(loss, 50.0)),
            "accuracy": correct / max(n, 1.0),
        }

    def encode_source(self, source: str, columns: dict[str, Any], drop_invalid: bool) -> Encoded:
        return held_out_blocks(
            document_source(source, columns.get("text_column", "text")), self, max_blocks=0
        )

    def predict(self, model: torch.nn.Module, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        raise DataError(
            f"a {self.objective} run adapts a model; fine-tune it for a task "
            "(textloop train --set model=RUN_DIR) or evaluate its perplexity on a corpus"
        )

    def state(self) -> dict[str, Any]:
        return {
            "task": self.name,
            "objective": self.objective,
            "block_size": self.block_size,
            "whole_word_mask": self.whole_word_mask,
            "document_mask": self.document_mask,
            "mask_rate": self.mask_rate,
            "seed": self.seed,
        }


def held_out_blocks(source: DocumentSource, task: PretrainTask, max_blocks: int) -> Encoded:
    """The first ``max_blocks`` blocks (0: all) of a held-out source, in corpus order."""
    stream = PackedStream(
        source,
        Tokenize(task.tokenizer, task.objective, task.whole_word_mask),
        task.block_size,
        0,
        task.collate_blocks,
    )
    blocks = []
    for blk, _ in stream.blocks(epoch=-1, shuffle=False):  # fixed order, fixed masks
        blocks.append(blk)
        if max_blocks and len(blocks) >= max_blocks:
            break
    if not blocks:
        raise DataError(
            f"{source.name}: held-out text is shorter than one block of {task.block_size} "
            "tokens; give more validation text or lower train.max_seq_len"
        )
    return Encoded(
        input_ids=[b.ids for b in blocks],
        targets=[],
        locations=[f"{source.name} block {b.index}" for b in blocks],
        extra={"blocks": blocks},
    )


def task_from_state(state: dict[str, Any], tokenizer: Any) -> PretrainTask:
    """Rebuild the task of a finished pre-training run from its ``labels.json``."""
    return PretrainTask(
        tokenizer=tokenizer,
        objective=state["objective"],
        block_size=state["block_size"],
        mask_rate=state.get("mask_rate", MASK_RATE),
        whole_word_mask=state.get("whole_word_mask", False),
        document_mask=state.get("document_mask", True),
        seed=state.get("seed", 0),
        name=state.get("task", state["objective"]),
    )
