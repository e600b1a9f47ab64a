"""Typed run configuration: YAML files validated by pydantic, with dotted ``--set`` overrides.

A YAML file holds only what differs from the defaults below. Every problem in a file is reported
at once, each with its key path, and an unknown key comes with the closest valid one.

Example:
    >>> cfg = load_config("configs/classification/bbc-news_full.yaml", ["train.epochs=2"])
    >>> cfg.train.epochs
    2
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, model_validator

from textloop.config_io import (  # re-exported: the run config's users read them from here
    StrictModel,
    _merge,
    load_tree,
    parse_duration,
    parse_override,
    read_yaml,
    validate_tree,
)
from textloop.config_tasks import (  # re-exported: a run config's sections are read from here
    GenerationConfig,
    LoraConfig,
    NerConfig,
    PretrainConfig,
    QaConfig,
)
from textloop.errors import CheckpointError, ConfigError

__all__ = [
    "DataConfig",
    "GenerationConfig",
    "LoraConfig",
    "NerConfig",
    "PretrainConfig",
    "QaConfig",
    "RunConfig",
    "ScheduleConfig",
    "StrictModel",
    "TrainConfig",
    "build_config",
    "config_to_yaml",
    "load_config",
    "load_resume_config",
    "load_tree",
    "parse_duration",
    "parse_override",
    "read_yaml",
    "validate_tree",
]

TaskName = Literal["classification", "ner", "qa", "mlm", "clm", "generation"]


class DataConfig(StrictModel):
    """Where the labelled data lives and which columns hold what."""

    train: str | None = Field(
        None, description="Training data: a file, directory, glob, or builtin:NAME."
    )
    validation: str | None = Field(
        None, description="Validation data; when absent, split from train (stratified, seeded)."
    )
    test: str | None = Field(
        None, description="Test data; when absent and the builtin has a test split, that is used."
    )
    text_column: str = Field("text", description="Column holding the text.")
    text_pair_column: str | None = Field(
        None, description="Second text column for sentence-pair classification."
    )
    label_column: str = Field("label", description="Column holding the label(s).")
    multi_label: bool = Field(
        False, description="Each row has a set of labels (a list column or label_separator)."
    )
    label_separator: str | None = Field(
        None, description="Split string labels on this separator (implies multi_label)."
    )
    tag_column: int = Field(
        -1,
        description="NER, CoNLL files: column holding the tag (0 = the token; negative counts "
        "from the end, so -1 is the last column).",
    )
    tag_scheme: Literal["auto", "IO", "IOB1", "IOB2", "BIO", "IOBES", "BILOU"] = Field(
        "auto",
        description="NER: tag scheme of the data (auto detects it); every scheme is converted "
        "to IOB2, invalid sequences repaired by the rule in docs/tasks.md.",
    )
    tokens_column: str = Field("tokens", description="NER, JSONL: key holding the token list.")
    tags_column: str = Field("tags", description="NER, JSONL: key holding one tag per token.")
    entities_column: str = Field(
        "entities",
        description="NER, JSONL with raw text (text_column): key holding the entities, each "
        "{start, end, label} in characters (end exclusive) or [start, end, label].",
    )
    question_column: str = Field("question", description="QA, flat JSONL: question key.")
    context_column: str = Field("context", description="QA, flat JSONL: context key.")
    answers_column: str = Field(
        "answers",
        description="QA, flat JSONL: answers key, {text: [...], answer_start: [...]} or a list "
        "of {text, answer_start}; empty for a question with no answer (SQuAD 2.0).",
    )
    prompt_column: str = Field("prompt", description="Generation, pairs: column with the prompt.")
    target_column: str = Field(
        "target", description="Generation, pairs: column with the answer to learn."
    )
    messages_column: str = Field(
        "messages",
        description="Generation, chats (jsonl): key holding a list of {role, content} messages "
        "(roles system/user/assistant); used when rows have it, else prompt/target columns.",
    )
    val_fraction: float = Field(
        0.1, gt=0.0, lt=0.5, description="Share of train held out when no validation is given."
    )
    drop_invalid_rows: bool = Field(
        False, description="Drop empty or undecodable rows (and report them) instead of failing."
    )


class ScheduleConfig(StrictModel):
    """The optimisation schedule ``train`` and ``update`` share; a key left unset (None) is
    decided by the default recipe (``textloop.training.recipe``) from the data and the model."""

    epochs: int | None = Field(
        None,
        ge=1,
        le=1000,
        description="Passes over the training data (default: the recipe's, from the data size).",
    )
    lr: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="Peak learning rate (default: the recipe's, from the encoder's width).",
    )
    head_lr: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="Learning rate of the fresh task head, new label rows included (default: the "
        "recipe's, 10 x lr for encoder tasks; set it equal to lr for one rate).",
    )
    batch_size: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="Examples per micro-batch (default: the recipe's, 32, or 16 / 8 for small "
        "data).",
    )
    warmup_ratio: float = Field(
        0.06, ge=0.0, lt=1.0, description="Share of steps warming up linearly."
    )
    weight_decay: float = Field(
        0.01, ge=0.0, le=1.0, description="Decoupled weight decay (not on biases or LayerNorm)."
    )
    grad_clip: float = Field(
        1.0, ge=0.0, description="Max global gradient norm; 0 turns clipping off."
    )
    seed: int = Field(0, ge=0, description="Seed for data order, splits, init and dropout.")


class TrainConfig(ScheduleConfig):
    """Optimisation and schedule. Defaults suit a small BERT-style encoder on a CPU."""

    max_steps: int | None = Field(
        None, ge=1, description="Stop after this many optimizer steps (overrides epochs)."
    )
    recipe: Literal["auto", "default", "few-shot"] = Field(
        "auto",
        description="How a classifier is trained. default: fine-tune the encoder with its head; "
        "few-shot: contrastive fine-tuning on pairs of the labelled texts, then a logistic-"
        "regression head on their mean-pooled embeddings (SetFit's method, docs/few-shot.md); "
        "auto: few-shot when the training data has at most 12 examples per class.",
    )
    few_shot_loss: Literal["in-batch", "pairs"] = Field(
        "in-batch",
        description="Few-shot recipe: in-batch scores every pair of a batch of 8 classes x 4 "
        "texts (each example read 20 times a pass: a quarter of pairs' steps); pairs trains on "
        "sampled pairs (40 per example), half same-class, as SetFit does.",
    )
    grad_accum_steps: int = Field(1, ge=1, le=1024, description="Micro-batches per step.")
    max_seq_len: int = Field(
        128, ge=8, le=8192, description="Tokens per example; longer ones are truncated."
    )
    scheduler: Literal["linear", "cosine", "constant"] = Field(
        "linear", description="Decay after warmup."
    )
    embedding_update: Literal["dense", "lazy"] = Field(
        "lazy",
        description=(
            "lazy: AdamW updates only the word-embedding rows a batch uses (LazyAdam); "
            "dense: every row every step, as torch.optim.AdamW."
        ),
    )
    class_weights: Literal["none", "balanced"] | None = Field(
        None,
        description="balanced: weight the loss (the few-shot head: its classes) by inverse "
        "class frequency (default: the recipe's, none; balanced for the few-shot head).",
    )
    eval_every_steps: int | None = Field(
        None,
        ge=0,
        description="Evaluate every N steps; 0 evaluates at the end of each epoch (default: the "
        "recipe's, about 8 evaluations a run).",
    )
    early_stopping_patience: int | None = Field(
        None,
        ge=0,
        description="Stop after this many evaluations without improvement; 0 never stops early "
        "(default: the recipe's, 3 for encoder tasks).",
    )
    time_budget: str | float | None = Field(
        None,
        description="Wall-clock budget for training, e.g. 90s, 10m, 1.5h: the step count is "
        "fitted to it from the first steps' speed, and a run that still runs over stops at the "
        "budget with its best checkpoint.",
    )
    metric_for_best: str | None = Field(
        None,
        description="Validation metric that picks the best checkpoint, or 'loss' "
        "(default: the task's main metric, macro_f1 for classification).",
    )
    bucket_batches: int = Field(
        50, ge=1, description="Batches per length-sorted bucket; higher pads less, shuffles less."
    )
    log_every_steps: int = Field(10, ge=1, description="Log loss and lr every N steps.")
    threads: int | None = Field(
        None, ge=1, le=512, description="Intra-op threads (default: all cores)."
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="auto: bf16 autocast only where the hardware has native bf16 (a GPU, or a CPU "
        "with amx_bf16 or avx512_bf16).",
    )
    eval_batch_size: int = Field(64, ge=1, le=8192, description="Examples per evaluation batch.")
    temperature_scaling: bool = Field(
        False,
        description="After training, fit one temperature on the validation logits (lower ECE, "
        "same accuracy); stored in labels.json and applied at predict and serve time.",
    )
    packing: bool = Field(
        False,
        description="Generation: pack short examples into rows of max_seq_len tokens (each "
        "attends only to itself, positions restart); batch_size then counts rows.",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute activations in backward instead of storing them: less memory "
        "(longer sequences, bigger batches), about a third more compute.",
    )
    distributed: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="Under torchrun: ddp keeps a full model, gradients and optimizer state in "
        "every process; fsdp shards all three over the processes (per transformer layer) for "
        "models that do not fit one device. Ignored in a single process.",
    )

    @model_validator(mode="after")
    def _check_time_budget(self) -> TrainConfig:
        if self.time_budget is not None:
            try:
                parse_duration(self.time_budget)
            except ValueError as exc:
                raise ValueError(f"time_budget: {exc}") from None
        return self


class RunConfig(StrictModel):
    """A whole run: task, model, data, training, and where it goes."""

    task: TaskName = Field("classification", description="Task to fine-tune for.")
    model: str = Field(
        "embedded:minilm", description="A local Hugging Face checkpoint dir or embedded:NAME."
    )
    output: str | None = Field(None, description="Run directory to create.")
    overwrite: bool = Field(False, description="Replace an existing, different run in output.")
    track: Literal["none", "mlflow", "tensorboard"] = Field(
        "none",
        description="Experiment tracking: mlflow logs params, per-step metrics, final metrics, "
        "the report and the model to MLflow (MLFLOW_TRACKING_URI, default ./mlflow.db); "
        "tensorboard writes event files to <output>/tensorboard. Never fails the run.",
    )
    data: DataConfig = Field(default_factory=lambda: DataConfig())
    train: TrainConfig = Field(default_factory=lambda: TrainConfig())
    lora: LoraConfig = Field(default_factory=lambda: LoraConfig())
    generation: GenerationConfig = Field(default_factory=lambda: GenerationConfig())
    ner: NerConfig = Field(default_factory=lambda: NerConfig())
    qa: QaConfig = Field(default_factory=lambda: QaConfig())
    pretrain: PretrainConfig = Field(default_factory=lambda: PretrainConfig())

    @model_validator(mode="after")
    def _separator_implies_multi_label(self) -> RunConfig:
        if self.data.label_separator and not self.data.multi_label:
            self.data.multi_label = True
        return self

    @model_validator(mode="after")
    def _windows_fit(self) -> RunConfig:
        # cross-field checks of the windowing options, all reported together
        problems = []
        room = self.train.max_seq_len - 4  # the most special tokens a model adds (RoBERTa pair)
        overlap = self.ner.window_overlap
        if self.task == "ner" and overlap is not None and overlap >= room // 2:
            problems.append(
                f"ner.window_overlap ({overlap}) must be < half of "
                f"train.max_seq_len - 4 ({room // 2}) so that windows advance"
            )
        if self.task == "qa":
            q = self.qa
            context_room = room - q.max_query_len
            if context_room < q.max_answer_len:
                problems.append(
                    f"train.max_seq_len ({self.train.max_seq_len}) leaves {context_room} tokens "
                    f"for the context after qa.max_query_len ({q.max_query_len}); it must hold "
                    f"qa.max_answer_len ({q.max_answer_len}): raise max_seq_len or lower max_query_len"
                )
            elif (
                q.doc_stride is not None and not q.max_answer_len - 1 <= q.doc_stride < context_room
            ):
                problems.append(
                    f"qa.doc_stride ({q.doc_stride}) must be >= qa.max_answer_len - 1 "
                    f"({q.max_answer_len - 1}) so no answer falls between windows, and < the "
                    f"{context_room} context tokens a window holds"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return self


def build_config(tree: dict[str, Any], source: str = "config") -> RunConfig:
    """Validate a plain dict into a ``RunConfig``, reporting every problem at once.

    Raises:
        ConfigError: listing each invalid key with its path, found value and what is allowed.
    """
    return validate_tree(RunConfig, tree, source)


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> RunConfig:
    """Load a run config from YAML, apply ``extra`` (flat dotted keys) and ``--set`` overrides.

    Args:
        path: YAML file, or None to start from defaults.
        overrides: ``key.path=value`` strings, applied last.
        extra: dotted keys from CLI flags, applied before overrides.

    Returns:
        The validated config.

    Raises:
        ConfigError: on a missing/invalid file or any invalid key or value (all listed at once).
    """
    tree = load_tree(path, overrides, extra)
    return build_config(tree, source=str(path) if path is not None else "config")


def load_resume_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> RunConfig:
    """The config of a run to resume: the ``config.yaml`` saved in its output folder, with the
    keys the YAML file, the flags and ``--set`` give on top. Nothing falls back to a default:
    ``train --output runs/x --resume`` continues with exactly the saved settings; a key given
    with a different value is refused by ``train`` (naming the key).

    Raises:
        ConfigError: no output folder given.
        CheckpointError: the output folder holds no saved config to resume.
    """
    given = load_tree(path, overrides, extra)
    output = given.get("output")
    if not output:
        raise ConfigError("--resume needs the run folder: pass --output DIR (or set output)")
    saved = Path(output) / "config.yaml"
    if not saved.is_file():
        raise CheckpointError(
            f"nothing to resume in {output}: no config.yaml there (start without --resume)"
        )
    tree = read_yaml(saved)
    _merge(tree, given)
    return build_config(tree, source=str(saved))


def config_to_yaml(cfg: RunConfig) -> str:
    """The fully resolved config as YAML, as written into every run dir."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
