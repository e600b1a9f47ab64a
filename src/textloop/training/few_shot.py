"""The few-shot recipe: contrastive fine-tuning on sentence pairs, then a fitted head (SetFit).

With a handful of labelled texts per class, fine-tuning an encoder together with a fresh head
overfits before the head has learnt much. SetFit (Tunstall et al. 2022, arXiv:2209.11055) trains
the encoder on *pairs* instead: two texts of the same class should embed close (cosine 1), two
of different classes far apart (cosine 0). N examples give ~N^2 pairs, so a few dozen texts make
thousands of training signals. A logistic regression on the tuned embeddings is then the head.

Here both phases run inside textloop's own driver: ``ContrastiveObjective`` supplies the loop's
batches (of pair ids), collation, loss and evaluation, and ``training/run.py`` consumes the same
``train_steps`` generator, checkpoints and resume as for any run. The model is the classification
task's mean-pooled classifier (``tasks/classification/pooled.py``): its ``embed`` is what the pairs
train and what the head is fitted on, and its ``classifier`` layer receives the regression's
weights, so the run folder is an ordinary classification run.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from textloop.errors import DataError
from textloop.tasks.base import Encoded, eval_batches, pad_inputs
from textloop.tasks.classification.pooled import MeanPooledClassifier
from textloop.tasks.classification.task import ClassificationTask
from textloop.training.loop import LoopState

log = logging.getLogger("textloop")

HEAD_C = 1.0  # inverse L2 strength of the logistic regression (scikit-learn's and SetFit's)
HEAD_MAX_ITER = 1000
IN_BATCH_PER_CLASS = 4  # texts of a class in an in-batch batch: 6 same-class pairs each


def balanced_pairs(targets: Sequence[int], n_pairs: int, seed: int) -> list[tuple[int, int, float]]:
    """``n_pairs`` (i, j, similarity) pairs, alternately positive (same class, 1.0) and negative
    (different classes, 0.0); every example is an anchor about equally often.

    A class with a single example cannot form a positive pair: its example is used in negative
    pairs only.

    Raises:
        DataError: no class has two examples (no positive pair exists) or only one class exists.
    """
    by_label: dict[int, list[int]] = defaultdict(list)
    for i, y in enumerate(targets):
        by_label[int(y)].append(i)
    if len(by_label) < 2:
        raise DataError("few-shot training needs examples of at least two classes")
    pos_anchors = [i for i, y in enumerate(targets) if len(by_label[int(y)]) >= 2]
    if not pos_anchors:
        raise DataError(
            "few-shot training needs at least two examples of some class (a positive pair); "
            "every class has one — label more examples or use train.recipe: default"
        )
    rng = random.Random(seed)

    def cycle(pool: list[int]) -> Any:
        while True:
            order = list(pool)
            rng.shuffle(order)
            yield from order

    positives, negatives = cycle(pos_anchors), cycle(list(range(len(targets))))
    pairs: list[tuple[int, int, float]] = []
    for k in range(n_pairs):
        if k % 2 == 0:
            i = next(positives)
            same = by_label[int(targets[i])]
            j = rng.choice([x for x in same if x != i])
            pairs.append((i, j, 1.0))
        else:
            i = next(negatives)
            y = int(targets[i])
            other = rng.choice([lab for lab in by_label if lab != y])
            pairs.append((i, rng.choice(by_label[other]), 0.0))
    return pairs


def cosine_pair_loss(emb: torch.Tensor, similarity: torch.Tensor) -> torch.Tensor:
    """Mean squared error between the cosine of each pair and its target (1 same, 0 different).

    ``emb`` is (2B, H) unit vectors: the B first texts of the pairs, then the B second ones.
    """
    u, v = emb.chunk(2)  # (B, H) each
    return F.mse_loss((u * v).sum(-1), similarity)


@torch.no_grad()
def embeddings(model: MeanPooledClassifier, task: ClassificationTask, data: Encoded) -> np.ndarray:
    """Unit-length embeddings of every example of ``data``, in input order, (N, H)."""
    out = np.zeros((len(data), int(model.config.hidden_size)), dtype=np.float32)
    for idx, inputs, _ in eval_batches(task, model, data, 64):
        out[idx] = model.embed(**inputs).float().cpu().numpy()
    return out


def fit_head(
    model: MeanPooledClassifier,
    task: ClassificationTask,
    data: Encoded,
    seed: int,
    class_weights: str = "none",
) -> dict[str, Any]:
    """Fit a logistic regression on ``data``'s embeddings and load it into ``model.classifier``.

    ``class_weights="balanced"`` weighs each class's examples by inverse frequency (all weights
    are exactly 1 where every class has as many examples, so such data fits the same head).

    The softmax of the linear layer's logits is then the regression's ``predict_proba``; a binary
    regression's one score ``s`` becomes the logits (-s/2, s/2), whose softmax is sigmoid(s).
    """
    from sklearn.linear_model import LogisticRegression

    x = embeddings(model, task, data)
    y = np.asarray(data.targets)
    weighting = "balanced" if class_weights == "balanced" else None
    reg = LogisticRegression(
        C=HEAD_C, max_iter=HEAD_MAX_ITER, random_state=seed, class_weight=weighting
    ).fit(x, y)
    n_labels, hidden = len(task.labels), x.shape[1]
    weight = np.zeros((n_labels, hidden), dtype=np.float32)
    bias = np.zeros(n_labels, dtype=np.float32)
    seen = [int(c) for c in reg.classes_]
    if len(seen) == 2:
        weight[seen[1]], bias[seen[1]] = reg.coef_[0] / 2, reg.intercept_[0] / 2
        weight[seen[0]], bias[seen[0]] = -reg.coef_[0] / 2, -reg.intercept_[0] / 2
    else:
        weight[seen], bias[seen] = reg.coef_, reg.intercept_
    # a class missing from the data (cannot happen with training labels) keeps the lowest logit
    unseen = [c for c in range(n_labels) if c not in seen]
    bias[unseen] = float(bias[seen].min()) - 10.0 if unseen else 0.0
    with torch.no_grad():
        model.classifier.weight.copy_(torch.from_numpy(weight))
        model.classifier.bias.copy_(torch.from_numpy(bias))
    return {"train_accuracy": float(reg.score(x, y)), "iterations": int(np.max(reg.n_iter_))}


@dataclass
class ContrastiveObjective:
    """What the training loop needs for the few-shot pass: pair batches, collation, the loss and
    the evaluation (which first fits the head, so a checkpoint holds a working classifier)."""

    model: MeanPooledClassifier
    task: ClassificationTask
    train: Encoded
    validation: Encoded
    n_pairs: int  # "pairs": sampled pairs of a pass
    n_steps: int  # batches of a pass
    loss_kind: str  # "in-batch" (every pair of a class-balanced batch) or "pairs"
    batch_size: int
    eval_batch_size: int
    seed: int
    device: torch.device
    class_weights: str = "none"  # the head's: "balanced" weighs classes by inverse frequency
    pairs: list[tuple[int, int, float]] = field(default_factory=list)
    head: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        pairs = self.n_pairs if self.loss_kind == "pairs" else 0  # checks the data either way
        self.pairs = balanced_pairs(self.train.targets, pairs, self.seed)
        singles = sorted(
            {self.task.labels[y] for y in self.train.targets if self.train.targets.count(y) == 1}
        )
        if singles:
            log.warning(
                "few-shot: %d class(es) have one training example and appear in negative pairs "
                "only: %s",
                len(singles),
                ", ".join(singles[:10]),
            )
        what = (
            f"{len(self.pairs)} sampled sentence pairs (half same-class)"
            if self.loss_kind == "pairs"
            else f"{self.n_steps} class-balanced batches, every pair of each scored"
        )
        log.info(
            "few-shot: %s from %d examples, then a logistic-regression head", what, len(self.train)
        )

    def batches_for_epoch(self, state: LoopState) -> list[list[int]]:
        if self.loss_kind == "in-batch":  # ids of texts, not of pairs
            texts = 2 * self.batch_size  # as many texts as a batch of pairs holds
            classes = min(len(set(self.train.targets)), max(2, texts // IN_BATCH_PER_CLASS))
            per_class = max(IN_BATCH_PER_CLASS, texts // classes)  # 16 each for two classes
            seed = self.seed * 1_000_003 + state.epoch
            found = class_batches(self.train.targets, self.n_steps, per_class, classes, seed)
            return found[state.batches_done_in_epoch :]
        order = list(range(len(self.pairs)))
        random.Random(self.seed * 1_000_003 + state.epoch).shuffle(order)
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        return batches[state.batches_done_in_epoch :]

    def collate(self, items: Sequence[int]) -> dict[str, torch.Tensor]:
        """A batch of texts (in-batch: ``items`` are example ids) or of pairs (pair ids)."""
        if self.loss_kind == "in-batch":
            batch = pad_inputs(self.train, items, self.task.tokenizer.pad_token_id or 0)
            batch["labels"] = torch.tensor([self.train.targets[i] for i in items])
            return {k: v.to(self.device) for k, v in batch.items()}
        chosen = [self.pairs[k] for k in items]
        indices = [i for i, _, _ in chosen] + [j for _, j, _ in chosen]  # firsts, then seconds
        batch = pad_inputs(self.train, indices, self.task.tokenizer.pad_token_id or 0)
        batch["similarity"] = torch.tensor([s for _, _, s in chosen], dtype=torch.float32)
        return {k: v.to(self.device) for k, v in batch.items()}

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.loss_kind == "in-batch":
            labels = batch.pop("labels")
            return all_pairs_loss(self.model.embed(**batch), labels)
        similarity = batch.pop("similarity")
        return cosine_pair_loss(self.model.embed(**batch), similarity)

    def evaluate(self) -> dict[str, Any]:
        self.head = fit_head(self.model, self.task, self.train, self.seed, self.class_weights)
        metrics = self.task.evaluate(self.model, self.validation, self.eval_batch_size)
        metrics["head_train_accuracy"] = self.head["train_accuracy"]
        return metrics


def class_batches(
    targets: Sequence[int], n_batches: int, per_class: int, classes_per_batch: int, seed: int
) -> list[list[int]]:
    """Batches of ``classes_per_batch`` classes x ``per_class`` examples each (cycling through
    the classes and each class's examples), so every batch holds positive and negative pairs."""
    by_label: dict[int, list[int]] = defaultdict(list)
    for i, y in enumerate(targets):
        by_label[int(y)].append(i)
    rng = random.Random(seed)
    pools: dict[int, list[int]] = {y: [] for y in by_label}
    class_order: list[int] = []
    batches = []
    for _ in range(n_batches):
        batch: list[int] = []
        chosen: list[int] = []
        for _ in range(min(classes_per_batch, len(by_label))):
            if not class_order:  # a new cycle; classes already in this batch come last
                fresh = [y for y in by_label if y not in chosen]
                rng.shuffle(fresh)
                class_order = chosen + fresh  # popped from the end
            y = class_order.pop()
            chosen.append(y)
            for _ in range(min(per_class, len(by_label[y]))):
                if not pools[y]:
                    pools[y] = list(by_label[y])
                    rng.shuffle(pools[y])
                batch.append(pools[y].pop())
        batches.append(batch)
    return batches


def all_pairs_loss(emb: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cosine-similarity MSE over every pair of a batch, same-class and different-class pairs
    weighted equally (the two halves' means averaged). ``emb``: (B, H) unit vectors."""
    cos = emb @ emb.T  # (B, B)
    same = targets[:, None] == targets[None, :]
    upper = torch.triu(torch.ones_like(same), diagonal=1)
    pos, neg = same & upper, ~same & upper
    parts = []
    if pos.any():
        parts.append(((1 - cos[pos]) ** 2).mean())
    if neg.any():
        parts.append((cos[neg] ** 2).mean())
    return torch.stack(parts).mean()
