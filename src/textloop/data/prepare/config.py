"""The ``textloop prepare`` config: inputs, cleaning stages, dedup, splits, label checks, output.

A YAML file holds only what differs from the defaults below; every problem in it is reported at
once with its key path and, for a misspelt key, the closest valid one (as run configs are).

Example:
    >>> cfg = load_prepare_config("configs/prepare/news.yaml", ["dedup.threshold=0.9"])
    >>> cfg.dedup.mode
    'near'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from textloop.config import StrictModel, load_tree, validate_tree
from textloop.errors import ConfigError

SPLIT_NAMES = ("train", "validation", "test")


class CleanConfig(StrictModel):
    """Cleaning stages, applied in this fixed order; each can be switched off."""

    nfkc: bool = Field(
        True,
        description="1. Unicode NFKC normalisation (full-width → ASCII, ligatures); it also "
        "turns Chinese full-width punctuation (，！？：) into ASCII — see "
        "keep_fullwidth_punctuation.",
    )
    keep_fullwidth_punctuation: bool = Field(
        False,
        description="1. With nfkc: leave full-width punctuation (，！？：；（）) as written and "
        "normalise the rest (dedup ignores punctuation either way).",
    )
    strip_control: bool = Field(
        True, description="2. Remove control, zero-width and other invisible format characters."
    )
    strip_html: bool = Field(
        True, description="3. Remove HTML/XML tags, comments, script/style blocks; decode entities."
    )
    normalize_whitespace: bool = Field(
        True, description="4. Collapse runs of spaces, strip lines, at most one blank line."
    )
    mask_emails: bool = Field(False, description="5. Replace e-mail addresses with <EMAIL>.")
    mask_phones: bool = Field(False, description="5. Replace phone numbers with <PHONE>.")
    mask_urls: bool = Field(False, description="5. Replace URLs with <URL>.")
    mask_ips: bool = Field(False, description="5. Replace IPv4/IPv6 addresses with <IP>.")
    boilerplate_patterns: list[str] = Field(
        default_factory=list,
        description="6. Regexes (case-insensitive); a line matching one is removed, e.g. "
        "'^(share|tweet|subscribe)\\b'.",
    )
    max_duplicate_line_fraction: float | None = Field(
        0.3,
        ge=0.0,
        le=1.0,
        description="7. Drop a document when more than this share of its lines (3+ lines) "
        "repeat an earlier line of it; null turns it off.",
    )
    min_chars: int = Field(1, ge=0, description="8. Drop documents shorter than this (chars).")
    max_chars: int | None = Field(None, ge=1, description="8. Drop documents longer than this.")
    min_words: int = Field(
        0, ge=0, description="8. Drop documents with fewer words (a CJK/Thai character is a word)."
    )
    max_words: int | None = Field(None, ge=1, description="8. Drop documents with more words.")
    custom_filter: str | None = Field(
        None,
        description="9. 'module:function' or 'path/file.py:function'; called with the cleaned "
        "text, returns True (keep), False/None (drop) or a str (the new text).",
    )

    @field_validator("boilerplate_patterns")
    @classmethod
    def _patterns_compile(cls, value: list[str]) -> list[str]:
        import re

        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"invalid regex {pattern!r} ({exc})") from None
        return value


class DedupConfig(StrictModel):
    """Duplicate removal; the first occurrence (input order) is always the one kept."""

    mode: Literal["none", "exact", "near"] = Field(
        "near",
        description="exact: same normalised text (case, punctuation and spacing ignored); "
        "near: exact, then MinHash LSH near-duplicates.",
    )
    threshold: float = Field(
        0.8,
        gt=0.0,
        le=1.0,
        description="Jaccard similarity of shingles at which two documents are "
        "near-duplicates (checked exactly on every LSH candidate pair), in both representations.",
    )
    shingle_size: int = Field(
        5, ge=1, le=32, description="Words per shingle of the long-text representation."
    )
    short_max_words: int = Field(
        128,
        ge=0,
        description="Documents of at most this many words (a CJK character is a word), or "
        "longer ones with at most this many distinct shingle_size-word shingles (a text that "
        "repeats a phrase), are also compared by their single words and word pairs (the "
        "short-text representation); 0 turns it off.",
    )
    long_min_words: int = Field(
        64,
        ge=0,
        description="Documents of at least this many words are compared by shingle_size-word "
        "shingles (the long-text representation); at most short_max_words + 1.",
    )
    max_differing_shingles: int = Field(
        12,
        ge=0,
        description="Short-text representation: two documents are also near-duplicates when at "
        "most this many of their word and word-pair shingles differ (one replaced word changes "
        "6, one deleted or inserted word 4) and at most 65% of the smaller text's, so 1-2 "
        "edited words are caught from 10 words on (about 20% of the words in shorter texts); "
        "0 leaves only the threshold.",
    )
    short_max_edits: int = Field(
        2,
        ge=-1,
        description="Short-text representation: a pair its shingle rule accepts must also differ "
        "by at most max(short_max_edits, short_edit_share x the longer text's words) replaced, "
        "deleted or inserted words (CJK characters), the definition of a near copy; -1 turns "
        "the check off.",
    )
    short_edit_share: float = Field(
        0.1, ge=0.0, le=1.0, description="See short_max_edits: 0.1 allows 12 edits at 128 words."
    )
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations.")
    seed: int = Field(1, ge=0, description="Seed of the MinHash permutations.")

    @model_validator(mode="after")
    def _representations_cover_every_length(self) -> DedupConfig:
        if self.long_min_words > self.short_max_words + 1:
            raise ValueError(
                f"long_min_words {self.long_min_words} leaves documents of "
                f"{self.short_max_words + 1}-{self.long_min_words - 1} words in neither "
                f"representation; set it to at most short_max_words + 1 "
                f"({self.short_max_words + 1})"
            )
        return self


class SplitConfig(StrictModel):
    """Deterministic splits by content hash: appending data never moves an old record."""

    fractions: list[float] = Field(
        default_factory=lambda: [0.8, 0.1, 0.1],
        description="Shares of train, validation[, test]; one to three numbers summing to 1.",
    )
    salt: str = Field("", description="Mixed into the hash; change it to draw another split.")
    leakage_check: Literal["near", "exact", "off"] = Field(
        "near",
        description="Remove evaluation records that duplicate a record of an earlier split "
        "(near also runs MinHash when dedup.mode is not near).",
    )

    @field_validator("leakage_check", mode="before")
    @classmethod
    def _yaml_off_is_off(cls, value: Any) -> Any:
        return "off" if value is False else value  # YAML 1.1 reads a bare `off` as false

    @field_validator("fractions")
    @classmethod
    def _fractions_sum_to_one(cls, value: list[float]) -> list[float]:
        if not 1 <= len(value) <= 3:
            raise ValueError(f"expected 1 to 3 fractions (train, validation, test), got {value}")
        if any(f < 0 for f in value) or abs(sum(value) - 1.0) > 1e-6:
            raise ValueError(f"fractions must be >= 0 and sum to 1, got {value} (sum {sum(value)})")
        return value


class LabelsConfig(StrictModel):
    """Label checks, used when ``label_column`` is set."""

    conflicts: Literal["drop", "keep_first"] = Field(
        "drop",
        description="Same normalised text with different labels: drop every copy, or keep the first.",
    )
    min_per_class: int = Field(
        10, ge=0, description="Classes with fewer records are too rare to split."
    )
    rare_classes: Literal["train", "drop"] = Field(
        "train", description="Rare classes go wholly to train, or are dropped."
    )


class RayConfig(StrictModel):
    """Where ``engine: ray`` runs."""

    address: str | None = Field(
        None,
        description="Ray cluster to join: 'auto' (the cluster this machine is part of) or "
        "'ray://HOST:10001'; null starts a local Ray instance on this machine.",
    )
    num_cpus: int | None = Field(
        None,
        ge=1,
        description="CPUs of the local Ray instance (null: all of this machine's); a cluster "
        "joined through address keeps its own.",
    )


class PrepareConfig(StrictModel):
    """A whole ``textloop prepare`` run."""

    inputs: list[str] = Field(
        default_factory=list,
        description="Files, directories, globs ('raw/**/*.jsonl.gz') or builtin:NAME[:SPLIT].",
    )
    output: str | None = Field(
        None,
        description="Corpus directory to create, or an object-store prefix (s3://bucket/corpus): "
        "built in staging_dir, then uploaded with its manifest last.",
    )
    staging_dir: str | None = Field(
        None,
        description="Where a corpus for an object-store output is built before the upload "
        "(null: the system temp dir; with engine ray on several nodes, a directory every node "
        "sees).",
    )
    overwrite: bool = Field(False, description="Replace an existing corpus in output.")
    format: Literal["auto", "txt", "jsonl", "json", "csv", "tsv", "parquet"] = Field(
        "auto", description="Input format; auto: from each file's suffix."
    )
    txt_mode: Literal["line", "file"] = Field(
        "line", description="txt files: one document per line, or one per file."
    )
    text_column: str = Field("text", description="Field holding the text (not used for txt).")
    label_column: str | None = Field(
        None, description="Field holding the label; set it for labelled data."
    )
    encoding: str = Field("utf-8", description="Encoding of text inputs.")
    on_error: Literal["skip_records", "skip", "fail"] = Field(
        "skip_records",
        description=(
            "skip_records: skip and report bad records, stop at a file that breaks off "
            "(truncated or corrupt); skip: skip both (the records before a break are kept); "
            "fail: stop at the first bad record or file."
        ),
    )
    engine: Literal["local", "ray"] = Field(
        "local",
        description="local: this machine, num_proc processes; ray: Ray Data on a local Ray "
        "instance or the cluster ray.address names (pip install 'textloop[ray]'). Both write "
        "the same corpus.",
    )
    ray: RayConfig = Field(default_factory=lambda: RayConfig())
    num_proc: int = Field(1, ge=1, le=512, description="Worker processes on this machine.")
    split_bytes: int | None = Field(
        64 << 20,
        ge=1,
        description="Read an uncompressed jsonl file, or a txt file of one document per line, "
        "that is larger than this in byte ranges of about this size, each its own task (so one "
        "big file keeps every worker busy); records keep their line numbers. null: never split.",
    )
    num_shards: int = Field(1, ge=1, description="Machines sharing the inputs (then merge).")
    shard_index: int = Field(0, ge=0, description="Which slice of the inputs this machine runs.")
    shard_rows: int = Field(100_000, ge=1, description="Records per output Parquet file.")
    examples_per_stage: int = Field(3, ge=0, le=100, description="Examples shown in report.md.")
    clean: CleanConfig = Field(default_factory=lambda: CleanConfig())
    dedup: DedupConfig = Field(default_factory=lambda: DedupConfig())
    split: SplitConfig = Field(default_factory=lambda: SplitConfig())
    labels: LabelsConfig = Field(default_factory=lambda: LabelsConfig())

    @model_validator(mode="after")
    def _shard_in_range(self) -> PrepareConfig:
        if self.shard_index >= self.num_shards:
            raise ValueError(
                f"shard_index {self.shard_index} must be < num_shards {self.num_shards}"
            )
        if self.engine == "ray" and self.num_shards > 1:
            raise ValueError(
                "engine ray spreads the work over the Ray cluster itself; "
                "leave num_shards at 1 (shards are for engine local on several machines)"
            )
        return self


def _parse_fractions(value: Any) -> Any:
    """Accept '0.8,0.1,0.1' from the command line as well as a YAML list."""
    if isinstance(value, str):
        try:
            return [float(v) for v in value.split(",") if v.strip()]
        except ValueError:
            raise ConfigError(
                f"--split {value!r}: expected comma-separated fractions, e.g. 0.8,0.1,0.1"
            ) from None
    return value


def load_prepare_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> PrepareConfig:
    """Load a prepare config from YAML, apply ``extra`` (dotted keys from flags), then ``--set``.

    Args:
        path: YAML file, or None to start from defaults.
        overrides: ``key.path=value`` strings, applied last.
        extra: dotted keys from CLI flags, applied before overrides.

    Returns:
        The validated config.

    Raises:
        ConfigError: a missing/invalid file or any invalid key or value (all listed at once).
    """
    tree = load_tree(path, overrides, extra)
    split = tree.get("split")
    if isinstance(split, dict) and "fractions" in split:
        split["fractions"] = _parse_fractions(split["fractions"])
    return validate_tree(PrepareConfig, tree, str(path) if path is not None else "prepare config")
