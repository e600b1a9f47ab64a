"""The default recipe: the training settings a user left unset, chosen from the data and model.

A user who does not tune gets settings fitted to what the run sees, decided once before the first
step and written into ``config.yaml`` and the report ("Why these settings"), so every choice can
be read and overridden (set the key: the recipe never touches a key the user set).

For an encoder fine-tuned on a task (classification, ner, qa):

- ``lr``: the body's peak learning rate by encoder width: 1e-4 up to 512 hidden units (MiniLM and
  other small encoders), 5e-5 up to 768 (BERT-base), 2e-5 above (large). Small encoders move
  slowly at the BERT-base rate of 5e-5.
- ``head_lr``: the freshly initialised head learns ``HEAD_LR_FACTOR`` x faster than the width's
  body rate (or at ``lr``, if a user set a higher one): it starts from random weights, the body
  does not.
- ``batch_size``: 32, or 16 / 8 when the data is too small for ``MIN_STEPS_PER_EPOCH`` steps a pass
  at 32 (few examples need more updates per pass, and a short step costs about the same).
- ``epochs``: passes over the data from its size: fewer examples (per class, for
  classification) need more passes.
- ``eval_every_steps`` and ``early_stopping_patience``: at most ``EVALS`` evaluations per run, and
  fewer when the validation set is large (their compute under ``EVAL_SHARE`` of training's), at
  least ``MIN_EVAL_INTERVAL`` steps apart, and a stop after ``PATIENCE`` of them without
  improvement (not before half the planned steps); the best checkpoint is restored at the end,
  so a generous step budget costs time, not accuracy.
- ``class_weights``: none: every example weighs the same in the loss.

For a classifier with at most ``FEW_SHOT_MAX_PER_CLASS`` examples per class, ``train.recipe: auto``
picks the few-shot recipe (``training/few_shot.py``: contrastive pairs, then a logistic-regression
head); ``few_shot_settings`` gives its schedule (SetFit's defaults: one pass, batch 16, lr 2e-5)
and weighs the head's classes equally (``class_weights: balanced``).

Other tasks (masked / causal LM, generation) keep fixed defaults. ``bench/recipes.py`` measures the
recipe against Hugging Face ``Trainer`` defaults and a small grid; README "Default recipe" says
which datasets chose the constants and which are unseen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

ENCODER_TASKS = ("classification", "ner", "qa")
RECIPE_FIELDS = (
    "batch_size",
    "epochs",
    "lr",
    "head_lr",
    "eval_every_steps",
    "early_stopping_patience",
    "class_weights",
)
FIXED_DEFAULTS: dict[str, Any] = {
    "batch_size": 32,
    "epochs": 3,
    "lr": 5e-5,
    "head_lr": None,
    "eval_every_steps": 0,
    "early_stopping_patience": None,
    "class_weights": "none",
}

HEAD_LR_FACTOR = 10.0
MAX_EPOCHS = 100
EVALS = 8
EVAL_SHARE = 0.15  # evaluations' compute at most this share of training's
MIN_EVAL_INTERVAL = 50  # steps; an evaluation + checkpoint costs as much as many short steps
PATIENCE = 3
# batch size: the largest of 8, 16, 32 that still gives MIN_STEPS_PER_EPOCH steps a pass
BATCH_SIZES = (32, 16, 8)
MIN_STEPS_PER_EPOCH = 32
# passes over the data: classification from examples per class, token tasks from examples
PASSES_AT_100_PER_CLASS = 3.0  # passes = 3 * sqrt(100 / examples per class)
TOKEN_TASK_EXAMPLES = 100_000  # passes = sqrt(TOKEN_TASK_EXAMPLES / n)
MIN_PASSES, MAX_PASSES = 2, 30


# few-shot: chosen by ``train.recipe: auto`` up to this many training examples per class: the
# largest size measured where it was at least level with default fine-tuning on every dataset
# (5 seeds, 20 reads a pass; docs/few-shot.md "The threshold"): at 8 per class +1.7 SNIPS, +8.5
# drug reviews, +1.5 BBC, +1.6 CLINC150; at 12 +0.1, +2.8, +1.0, +0.0 (few_shot_threshold_12.json);
# at 16 -0.8 SNIPS and -1.7 CLINC150 against +0.4 BBC (3 seeds) and +2.1 drug reviews, with
# default fine-tuning faster on three of the four (few_shot_default_16.json, few_shot_threshold.json)
FEW_SHOT_MAX_PER_CLASS = 12
FEW_SHOT_PAIRS_PER_EXAMPLE = 40  # SetFit's 20 iterations x (one positive + one negative pair)
# the in-batch loss (the default) reads each example this many times a pass (batches of
# 2 x batch_size texts, every pair scored): 20 took half the time of 40 at the same accuracy
# (-0.1 points on average over SNIPS, BBC and drug reviews at 8 to 32 per class, 11 cells of 3-5
# seeds; 10 lost 0.9 on SNIPS and drug reviews; docs/few-shot.md "Steps of a pass")
FEW_SHOT_IN_BATCH_READS_PER_EXAMPLE = 20
FEW_SHOT_MAX_PAIRS = 6000  # a bound on a pass for many classes (CLINC150: 150 x 8 examples)
FEW_SHOT_DEFAULTS: dict[str, Any] = {
    "batch_size": 16,
    "epochs": 1,
    "lr": 2e-5,
    "eval_every_steps": 0,
    "early_stopping_patience": 0,
    # unweighted, a regression this regularised (C=1) on classes of 2 to 7 examples gave most
    # texts to the classes labelled most: CLINC150, 600 labels picked at random after 2 per
    # class, test accuracy 0.58 vs 0.86 balanced (4 per class exactly: 0.85); docs/few-shot.md
    "class_weights": "balanced",
}


@dataclass(frozen=True)
class DataShape:
    """What the recipe looks at: the task, the training data's size, the model's width."""

    task: str
    n_train: int  # training examples (windows / features for token tasks)
    n_classes: int | None  # classification only
    hidden_size: int | None
    grad_accum_steps: int = 1
    n_validation: int | None = None  # examples each evaluation reads


@dataclass
class Recipe:
    """Final values of ``RECIPE_FIELDS`` and, for those the recipe chose, why."""

    settings: dict[str, Any]
    reasons: dict[str, str] = field(default_factory=dict)
    user_set: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"settings": self.settings, "reasons": self.reasons, "user_set": self.user_set}


def _body_lr(hidden: int | None) -> tuple[float, str]:
    if hidden is None:
        return 5e-5, "model width unknown: the BERT-base rate"
    if hidden <= 512:
        return 1e-4, f"a small encoder ({hidden} hidden units) learns slowly at 5e-5"
    if hidden <= 768:
        return 5e-5, f"a base-size encoder ({hidden} hidden units)"
    return 2e-5, f"a large encoder ({hidden} hidden units) is unstable at higher rates"


def _passes(shape: DataShape) -> tuple[int, str]:
    n = max(shape.n_train, 1)
    if shape.task == "classification" and shape.n_classes:
        per_class = n / shape.n_classes
        raw = PASSES_AT_100_PER_CLASS * math.sqrt(100 / max(per_class, 1.0))
        why = f"{per_class:.0f} examples per class over {shape.n_classes} classes"
    else:
        raw = math.sqrt(TOKEN_TASK_EXAMPLES / n)
        why = f"{n} training examples"
    return min(MAX_PASSES, max(MIN_PASSES, math.ceil(raw))), why


def decide(shape: DataShape, given: dict[str, Any], user_set: set[str]) -> Recipe:
    """Fill the ``RECIPE_FIELDS`` the user left unset (``None`` in ``given``) for ``shape``.

    ``given`` maps each recipe field to the config's value (None where unset); ``user_set`` names
    the fields the user set, which are kept as they are.
    """
    settings: dict[str, Any] = {k: given.get(k) for k in RECIPE_FIELDS}
    mine = [k for k in RECIPE_FIELDS if settings[k] is None and k not in user_set]
    recipe = Recipe(settings, user_set=[k for k in RECIPE_FIELDS if k not in mine])
    if shape.task not in ENCODER_TASKS:
        for k in mine:
            settings[k] = FIXED_DEFAULTS[k]
            recipe.reasons[k] = f"the fixed default for {shape.task}"
        return recipe

    if "lr" in mine:
        settings["lr"], recipe.reasons["lr"] = _body_lr(shape.hidden_size)
    if "head_lr" in mine:
        width_lr = _body_lr(shape.hidden_size)[0]
        settings["head_lr"] = max(settings["lr"], width_lr * HEAD_LR_FACTOR)
        recipe.reasons["head_lr"] = (
            f"the task head starts from random weights: {HEAD_LR_FACTOR:g} x this width's body "
            "rate (or lr, if higher)"
        )
    if "batch_size" in mine:
        fits = [b for b in BATCH_SIZES if shape.n_train / b >= MIN_STEPS_PER_EPOCH]
        settings["batch_size"] = fits[0] if fits else BATCH_SIZES[-1]
        recipe.reasons["batch_size"] = (
            f"32 when the data gives {MIN_STEPS_PER_EPOCH} steps a pass, else smaller (down to 8): "
            f"few examples need more updates per pass ({shape.n_train} examples)"
        )
    examples_per_step = int(settings["batch_size"]) * shape.grad_accum_steps
    per_epoch = max(1, math.ceil(shape.n_train / examples_per_step))
    if "epochs" in mine:
        passes, why = _passes(shape)
        settings["epochs"] = min(passes, MAX_EPOCHS)
        recipe.reasons["epochs"] = f"{passes} passes for {why} ({passes * per_epoch} steps)"
    total = int(settings["epochs"]) * per_epoch
    if "eval_every_steps" in mine:
        evals = EVALS
        if shape.n_validation:  # an example evaluated costs about a third of one trained
            trained = int(settings["epochs"]) * shape.n_train
            affordable = EVAL_SHARE * trained * 3 / shape.n_validation
            evals = max(1, min(EVALS, int(affordable)))
        interval = max(math.ceil(total / evals), MIN_EVAL_INTERVAL)
        if int(settings["epochs"]) <= evals and per_epoch >= interval:
            settings["eval_every_steps"] = 0
            recipe.reasons["eval_every_steps"] = "evaluate after every epoch"
        else:
            settings["eval_every_steps"] = interval
            recipe.reasons["eval_every_steps"] = (
                f"every {interval} steps: at most {evals} evaluations over {total} steps "
                f"(evaluation kept under {EVAL_SHARE:.0%} of the training compute), at least "
                f"{MIN_EVAL_INTERVAL} steps apart"
            )
    if "early_stopping_patience" in mine:
        settings["early_stopping_patience"] = PATIENCE
        recipe.reasons["early_stopping_patience"] = (
            f"stop after {PATIENCE} evaluations without improvement; the best checkpoint is kept"
        )
    if "class_weights" in mine:
        settings["class_weights"] = "none"
        recipe.reasons["class_weights"] = (
            "every example weighs the same in the loss (balanced: classes by inverse frequency)"
            if shape.task == "classification"
            else f"not used by {shape.task}"
        )
    return recipe


def model_width(model: Any) -> int | None:
    """A Hugging Face model's hidden size (its ``config.hidden_size``), None when it has none."""
    hidden = getattr(getattr(model, "config", None), "hidden_size", None)
    return hidden if isinstance(hidden, int) else None


def choose_recipe(
    requested: str, per_class: float | None, few_shot_possible: bool, largest_class: int = 2
) -> tuple[str, str | None]:
    """``train.recipe``'s value and why (None where the user set it): few-shot for a single-label
    classifier with at most ``FEW_SHOT_MAX_PER_CLASS`` training examples per class (and some
    class with two, for a same-class pair)."""
    if requested != "auto":
        return requested, None
    if not few_shot_possible or per_class is None:
        return "default", "few-shot applies to single-label, single-text classification only"
    if largest_class < 2:
        return "default", "one example per class: no same-class pair for few-shot training"
    if per_class <= FEW_SHOT_MAX_PER_CLASS:
        return "few-shot", (
            f"{per_class:.1f} training examples per class (at most {FEW_SHOT_MAX_PER_CLASS}): "
            "contrastive pairs teach the encoder more than fine-tuning a head on so few "
            "(docs/few-shot.md); set train.recipe: default to fine-tune instead"
        )
    return "default", (
        f"{per_class:.0f} training examples per class (more than {FEW_SHOT_MAX_PER_CLASS}): "
        "enough to fine-tune the encoder with its head"
    )


def few_shot_pairs(n_train: int, per_example: int = FEW_SHOT_PAIRS_PER_EXAMPLE) -> int:
    """Sentence pairs of the few-shot pass (``pairs`` loss): ``per_example`` per example, capped
    at ``FEW_SHOT_MAX_PAIRS`` (or two per example, if that is more); with the in-batch reads per
    example, the texts of an in-batch pass under the same cap."""
    return min(per_example * n_train, max(FEW_SHOT_MAX_PAIRS, 2 * n_train))


def few_shot_steps(n_train: int, batch_size: int, loss: str) -> int:
    """Steps of one few-shot pass: batches of ``batch_size`` sampled pairs (``pairs``), or batches
    of ``2 * batch_size`` texts whose every pair counts (``in-batch``), enough for each example to
    be read ``FEW_SHOT_IN_BATCH_READS_PER_EXAMPLE`` times (under the same cap): a quarter of the
    ``pairs`` loss's steps (half where the cap binds), each scoring ~30x the pairs."""
    if loss == "pairs":
        return -(-few_shot_pairs(n_train) // batch_size)
    texts = few_shot_pairs(n_train, FEW_SHOT_IN_BATCH_READS_PER_EXAMPLE)
    return -(-texts // (2 * batch_size))


def few_shot_settings(given: dict[str, Any], n_train: int, loss: str = "in-batch") -> Recipe:
    """The few-shot recipe's values for the ``RECIPE_FIELDS`` left unset (None in ``given``)."""
    settings: dict[str, Any] = {k: given.get(k) for k in RECIPE_FIELDS}
    mine = [k for k in RECIPE_FIELDS if settings[k] is None]
    recipe = Recipe(settings, user_set=[k for k in RECIPE_FIELDS if k not in mine])
    batch = settings["batch_size"] or FEW_SHOT_DEFAULTS["batch_size"]
    if loss == "pairs":
        a_pass = (
            f"{few_shot_pairs(n_train)} sampled sentence pairs ({FEW_SHOT_PAIRS_PER_EXAMPLE} per "
            f"example, at most {FEW_SHOT_MAX_PAIRS})"
        )
    else:
        a_pass = (
            f"{few_shot_steps(n_train, batch, loss)} batches of {2 * batch} texts, each example "
            f"read {FEW_SHOT_IN_BATCH_READS_PER_EXAMPLE} times (at most {FEW_SHOT_MAX_PAIRS} "
            "texts' worth)"
        )
    why = {
        "batch_size": "sentence pairs per step, SetFit's default (in-batch: twice as many texts)",
        "epochs": f"passes; a pass is {a_pass}; SetFit's default is one",
        "lr": "the encoder's contrastive learning rate (SetFit's default)",
        "eval_every_steps": "one evaluation, after the head is fitted",
        "early_stopping_patience": "one pass: nothing to stop early",
        "class_weights": (
            "the head's logistic regression weighs each class by inverse frequency, so a class "
            "labelled more often (as active learning's picks are) does not take the others' "
            "texts; on data with the same count per class it changes nothing"
        ),
    }
    for key in mine:
        if key == "head_lr":
            settings[key] = (
                settings["lr"] if settings["lr"] is not None else FEW_SHOT_DEFAULTS["lr"]
            )
            recipe.reasons[key] = "unused: the head is fitted by logistic regression"
            continue
        settings[key] = FEW_SHOT_DEFAULTS[key]
        recipe.reasons[key] = why[key]
    return recipe
