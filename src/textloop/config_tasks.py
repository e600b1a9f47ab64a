"""The task-specific sections of a run config (``ner:``, ``qa:``, ``pretrain:``, ``lora:``,
``generation:``); ``textloop.config`` assembles them into ``RunConfig`` and re-exports them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from textloop.config_io import StrictModel


class NerConfig(StrictModel):
    """Named-entity recognition options (task: ner)."""

    window_overlap: int | None = Field(
        None,
        ge=0,
        description="Sub-word tokens shared by consecutive windows of a sentence longer than "
        "train.max_seq_len; each word is labelled in the one window where it is most central "
        "(default: 32, less when windows are short).",
    )
    max_unknown_rate: float = Field(
        0.5,
        gt=0.0,
        le=1.0,
        description="Fail when more than this share of training words become the unknown "
        "token (the model's vocabulary cannot represent the script).",
    )


class QaConfig(StrictModel):
    """Extractive question answering options (task: qa)."""

    doc_stride: int | None = Field(
        None,
        ge=0,
        description="Tokens shared by consecutive windows of a long context (default: half of "
        "the room a window has for context, and at least max_answer_len - 1, so that every "
        "answer of allowed length lies whole in some window).",
    )
    max_query_len: int = Field(
        64, ge=4, description="Question tokens kept; longer questions are truncated."
    )
    max_answer_len: int = Field(30, ge=1, description="Longest answer span, in tokens.")
    n_best: int = Field(20, ge=1, description="Start and end candidates searched per window.")
    null_threshold: float | None = Field(
        None,
        description="SQuAD 2.0: answer 'no answer' when the null score beats the best span by "
        "more than this (default: tuned on the validation split for the best F1).",
    )
    allow_no_answer: bool | None = Field(
        None,
        description="Whether a question may have no answer (SQuAD 2.0); default: true when the "
        "training data has unanswerable questions.",
    )
    metric: Literal["auto", "squad", "cmrc"] = Field(
        "auto",
        description="How answers are scored: squad (official SQuAD: F1 over whitespace tokens "
        "after removing punctuation and articles) or cmrc (official CMRC2018 / DRCD: every CJK "
        "character a token, F1 over the longest common run); auto: cmrc when CJK characters "
        "make up 30%+ of the training answers.",
    )


class PretrainConfig(StrictModel):
    """Continued pre-training options (task: mlm or clm). data.train names the corpus, and
    train.max_seq_len is the packed block length; train.batch_size counts blocks."""

    mask_rate: float = Field(
        0.15, gt=0.0, lt=1.0, description="MLM: share of tokens chosen for prediction (80/10/10)."
    )
    whole_word_mask: bool = Field(
        False,
        description="MLM: choose whole words, masking all their sub-word tokens together; "
        "Chinese words come from the jieba segmenter (the zh extra), not the tokenizer.",
    )
    document_mask: bool = Field(
        True,
        description="Packed blocks: attend only within each document and restart positions per "
        "document (no cross-document leakage); false lets blocks attend across documents.",
    )
    eval_blocks: int = Field(
        256, ge=0, description="Held-out blocks scored for perplexity (0: all of them)."
    )
    extend_vocab: int = Field(
        0,
        ge=0,
        le=100_000,
        description="Add up to this many frequent corpus words that the tokenizer splits into "
        "pieces as new tokens (embeddings start at the mean of their pieces).",
    )
    min_word_count: int = Field(
        20, ge=1, description="extend_vocab: how often a word must occur in the corpus."
    )


class LoraConfig(StrictModel):
    """Low-rank adapters (LoRA): train small matrices next to frozen weights; merged at save."""

    enabled: bool | None = Field(
        None, description="Train LoRA adapters (default: on for generation, off for other tasks)."
    )
    r: int = Field(8, ge=1, le=1024, description="Adapter rank.")
    alpha: int = Field(16, ge=1, description="Scaling numerator: updates are scaled by alpha / r.")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the adapter input.")
    targets: list[str] = Field(
        default_factory=lambda: ["auto"],
        description="Linear layers to adapt, by name (e.g. [q_proj, v_proj]); auto: the "
        "attention projections of the model family.",
    )


class GenerationConfig(StrictModel):
    """Generation options (task: generation): prompt format, decoding, evaluation sample."""

    system_prompt: str | None = Field(
        None, description="System message put before every conversation (training and use)."
    )
    prompt_template: str = Field(
        "{prompt}",
        description="Pairs: how the prompt cell is phrased, e.g. 'Summarise: {prompt}'.",
    )
    max_new_tokens: int = Field(128, ge=1, le=8192, description="Longest answer, in tokens.")
    temperature: float = Field(
        0.0, ge=0.0, le=10.0, description="Sampling temperature; 0 decodes greedily."
    )
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass (1: off).")
    top_k: int = Field(0, ge=0, description="Sample among the k best tokens (0: off).")
    repetition_penalty: float = Field(
        1.0, gt=0.0, description="> 1 discourages tokens already in the text (1: off)."
    )
    stop: list[str] = Field(
        default_factory=list, description="Strings that end an answer (not included in it)."
    )
    eval_samples: int = Field(
        32,
        ge=0,
        description="Validation examples answered greedily at each evaluation for BLEU / chrF "
        "/ ROUGE (0: loss and perplexity only). Generating is slow on a CPU.",
    )
    eval_max_new_tokens: int = Field(
        64, ge=1, le=8192, description="Longest answer generated during evaluation."
    )
