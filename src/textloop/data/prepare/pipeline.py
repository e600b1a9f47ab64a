"""``prepare`` and ``merge``: raw files in, a clean, deduplicated, split corpus directory out.

One machine: read + clean (``ingest``), then the global stages and the output (``finalize``).
K machines: each runs ``prepare`` with ``num_shards=K, shard_index=i`` and writes a *shard*
directory (its cleaned records with digests and MinHash band keys, and its counts); ``merge``
concatenates the shards in input order and runs the same global stages, so the corpus is the one
a single machine would have written.

Output is written to a temporary sibling directory and renamed into place at the end: an
interrupted run leaves no half-written corpus.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from textloop.data.prepare.clean import DROP_STAGES
from textloop.data.prepare.config import PrepareConfig, load_prepare_config
from textloop.data.prepare.dedup import DuplicateFinder
from textloop.data.prepare.extras import Extras
from textloop.data.prepare.finalize import OWN_COLUMNS, ShardWriter, decide, write_splits
from textloop.data.prepare.ingest import Partial, clean_partial
from textloop.data.prepare.remote import check_target, is_remote, publish
from textloop.data.prepare.report import build_manifest, write_histogram, write_report
from textloop.errors import ConfigError, DataError
from textloop.fileio import atomic_dir, is_stale_temp, make_parent_dirs, temp_dir_prefix

log = logging.getLogger(__name__)

SHARD_MARKER = "shard.json"
# config keys that may differ between the shards of one corpus
# (and where it ran: both engines write the same corpus, manifest included)
_PER_MACHINE = (
    "output",
    "overwrite",
    "staging_dir",
    "num_proc",
    "shard_index",
    "engine",
    "ray",
)
_ACTIVE_TEMP_DIRS: set[Path] = set()  # this process's unfinished outputs (for a forced exit)


def remove_active_temp_dirs() -> None:
    """Delete the temp outputs of this process's running ``prepare`` calls (before a forced
    exit, which skips the ``except`` that would otherwise remove them)."""
    for tmp in list(_ACTIVE_TEMP_DIRS):
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class PrepareResult:
    """Where the corpus (or shard) went and its manifest."""

    path: Path | str  # a str for an object-store output (s3://...)
    manifest: dict[str, Any]
    is_shard: bool = False


def _remove_stale_temp_dirs(target: Path) -> None:
    """Temp dirs of earlier runs into ``target`` that were killed (their process is gone)."""
    for stale in target.parent.glob(temp_dir_prefix(target) + "*"):
        if is_stale_temp(stale):
            shutil.rmtree(stale, ignore_errors=True)


def _is_corpus(path: Path) -> bool:
    return (path / "manifest.json").is_file() or (path / SHARD_MARKER).is_file()


@contextmanager
def _atomic_dir(target: Path, overwrite: bool) -> Iterator[Path]:
    """A temp dir next to ``target`` that replaces it only when the block succeeds."""
    if target.exists() or target.is_symlink():
        if not target.is_dir():
            raise ConfigError(f"output {target} is a file; choose a directory path")
        if any(target.iterdir()):
            if not _is_corpus(target):  # never offer --overwrite for what textloop did not write
                raise ConfigError(
                    f"output {target} holds files that are not a prepared corpus or shard; "
                    "refusing to replace it — choose a new or empty output directory"
                )
            if not overwrite:
                raise ConfigError(
                    f"output {target} already holds a prepared corpus; pass --overwrite "
                    "(overwrite: true) to replace it"
                )
    make_parent_dirs(target)
    _remove_stale_temp_dirs(target)
    with atomic_dir(target) as tmp:
        _ACTIVE_TEMP_DIRS.add(tmp)
        try:
            yield tmp
            shutil.rmtree(tmp / ".work", ignore_errors=True)
        finally:
            _ACTIVE_TEMP_DIRS.discard(tmp)


def _shared_config(cfg: PrepareConfig) -> dict[str, Any]:
    tree = cfg.model_dump(mode="json")
    for key in _PER_MACHINE:
        tree.pop(key, None)
    return tree


def prepare(config: PrepareConfig | str | os.PathLike[str]) -> PrepareResult:
    """Clean, deduplicate and split the inputs of ``config`` into a corpus directory.

    With ``num_shards > 1`` this machine's slice becomes a shard directory for ``merge``.

    Args:
        config: a ``PrepareConfig`` or the path of a prepare YAML.

    Returns:
        The output path and its manifest.

    Raises:
        ConfigError: no inputs or output, an existing output without overwrite.
        DataError: unreadable inputs (with ``on_error: fail``) or nothing left to write.

    Example:
        >>> cfg = load_prepare_config(None, extra={"inputs": ["raw/"], "output": "corpus/web"})
        >>> prepare(cfg).manifest["records_out"]
    """
    cfg = config if isinstance(config, PrepareConfig) else load_prepare_config(Path(config))
    if not cfg.inputs:
        raise ConfigError(
            "no inputs: give files, directories or globs (or set inputs: in the config)"
        )
    if not cfg.output:
        raise ConfigError("no output: pass --output DIR (or set output: in the config)")
    if is_remote(cfg.output):
        if cfg.num_shards > 1:
            raise ConfigError(
                "a shard of a --num-shards run is a local directory; give --output DIR"
            )
        return _staged(
            cfg.output,
            cfg.overwrite,
            cfg.staging_dir,
            lambda local: prepare(
                cfg.model_copy(update={"output": str(local), "overwrite": False})
            ),
        )
    target = Path(cfg.output)
    if cfg.engine == "ray":
        return _prepare_on_ray(cfg, target)
    with _atomic_dir(target, cfg.overwrite) as tmp:
        started = time.perf_counter()
        partial = clean_partial(cfg, tmp / ".work")
        clean_s = time.perf_counter() - started
        if cfg.num_shards > 1:
            manifest = _write_shard(partial, cfg, tmp, clean_s)
            return_value = PrepareResult(target, manifest, is_shard=True)
        else:
            manifest = _finalize([partial], cfg, tmp, {"read_and_clean": clean_s})
            return_value = PrepareResult(target, manifest)
    return return_value


def _staged(
    uri: str,
    overwrite: bool,
    staging_dir: str | None,
    build: Callable[[Path], PrepareResult],
) -> PrepareResult:
    """Build a corpus in a local staging directory, then publish it to the object store
    ``uri`` (``remote.publish``: the manifest last). The target is checked before any work."""
    import tempfile

    check_target(uri, overwrite)
    with tempfile.TemporaryDirectory(prefix="textloop-stage-", dir=staging_dir) as stage:
        local = Path(stage) / "corpus"
        result = build(local)
        publish(local, uri, overwrite)
    return PrepareResult(uri, result.manifest)


def _prepare_on_ray(cfg: PrepareConfig, target: Path) -> PrepareResult:
    """``prepare`` with ``engine: ray``: the same stages and output, the searches on Ray."""
    from textloop.data.prepare.ray_engine import clean_on_ray, ray_session, require_ray
    from textloop.data.prepare.ray_write import extras_on_ray, shard_writer

    require_ray()  # before any output exists
    with _atomic_dir(target, cfg.overwrite) as tmp, ray_session(cfg.ray.address, cfg.ray.num_cpus):
        started = time.perf_counter()
        partial, finder = clean_on_ray(cfg, tmp / ".work")
        seconds = {"read_and_clean": time.perf_counter() - started}
        output = Output(
            writer=shard_writer(finder.pieces, finder.stats),
            extras=lambda status: extras_on_ray(finder.pieces, status, finder.stats),
        )
        manifest = _finalize([partial], cfg, tmp, seconds, finder, output)
    log.info("ray stage costs: %s", json.dumps({**finder.stats, "manifest_s": seconds}))
    return PrepareResult(target, manifest)


def _write_shard(partial: Partial, cfg: PrepareConfig, out: Path, seconds: float) -> dict[str, Any]:
    partial.records.save_to_disk(str(out / "records"))
    shutil.copy(partial.info["errors_file"], out / "errors.jsonl")
    info = {k: v for k, v in partial.info.items() if k != "errors_file"}
    manifest = {
        "format": "textloop-prepare-shard",
        "config": _shared_config(cfg),
        "info": info,
        "seconds": seconds,
    }
    (out / SHARD_MARKER).write_text(json.dumps(manifest, ensure_ascii=False), encoding="utf-8")
    return manifest


def _merge_infos(infos: list[dict[str, Any]], k: int) -> dict[str, Any]:
    merged = dict(infos[0])
    merged["files"] = [f for info in infos for f in info["files"]]
    merged["counts"] = {
        key: sum(info["counts"].get(key, 0) for info in infos) for key in infos[0]["counts"]
    }
    merged["examples"] = {
        stage: [ex for info in infos for ex in info["examples"].get(stage, [])][:k]
        for stage in infos[0]["examples"]
    }
    merged["errors"] = [e for info in infos for e in info["errors"]][:100]
    merged["unreadable_files"] = [f for info in infos for f in info.get("unreadable_files", [])]
    merged["input_chars_hist"] = [
        sum(col) for col in zip(*(info["input_chars_hist"] for info in infos))
    ]
    merged["n_ignored_files"] = sum(info["n_ignored_files"] for info in infos)
    return merged


@dataclass(frozen=True)
class Output:
    """Who writes the output: the Ray engine's workers, instead of this process."""

    writer: ShardWriter
    extras: Callable[[np.ndarray], Extras]  # kept-record status -> the user's other columns


def _finalize(
    partials: list[Partial],
    cfg: PrepareConfig,
    out: Path,
    seconds: dict[str, float],
    finder: DuplicateFinder | None = None,
    output: Output | None = None,
) -> dict[str, Any]:
    from datasets import concatenate_datasets

    info = _merge_infos([p.info for p in partials], cfg.examples_per_stage)
    records = (
        concatenate_datasets([p.records for p in partials])
        if len(partials) > 1
        else partials[0].records
    )
    table = records.data.table
    if table.num_rows == 0:
        counts = info["counts"]
        dropped = ", ".join(f"{k} {counts[k]}" for k in DROP_STAGES)
        raise DataError(
            f"nothing left after cleaning: {info['counts']['read']} record(s) read, "
            f"{info['counts']['read_errors']} unreadable, the rest dropped by the cleaning filters "
            f"({dropped}); loosen them with --set clean.KEY=VALUE"
        )
    started = time.perf_counter()
    with (out / "errors.jsonl").open("w", encoding="utf-8") as f:
        for p in partials:
            f.write(Path(p.info["errors_file"]).read_text(encoding="utf-8"))
    status, split, outcome = decide(table, info["all_files"], cfg, out, finder)
    seconds["dedup_and_split"] = time.perf_counter() - started
    started = time.perf_counter()
    n_splits = len(cfg.split.fractions)
    files, extras = write_splits(
        table,
        info["all_files"],
        status,
        split,
        n_splits,
        out,
        cfg.shard_rows,
        (cfg.text_column, cfg.label_column),
        writer=output.writer if output else None,
        extras=output.extras(status) if output else None,
    )
    seconds["write"] = time.perf_counter() - started
    config = _shared_config(cfg)
    manifest = build_manifest(config, info, outcome, files, out, seconds)
    manifest["columns"] = [
        cfg.text_column,
        *([cfg.label_column] if cfg.label_column else []),
        *extras.schema.names,
        *OWN_COLUMNS,
    ]
    if extras.as_text:
        manifest["columns_as_text"] = extras.as_text
    write_histogram(info, outcome, out / "length_histogram.png")
    write_report(manifest, info, outcome, out / "report.md")
    (out / "manifest.json").write_text(
        json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8"
    )
    return manifest


def merge(
    output: str | os.PathLike[str], shards: list[str | os.PathLike[str]], overwrite: bool = False
) -> PrepareResult:
    """Combine the shard directories of one sharded run into the corpus one machine would write.

    Args:
        output: the corpus directory to create.
        shards: every shard directory (``num_shards`` of them, any order).
        overwrite: replace an existing corpus at ``output``.

    Raises:
        DataError: a directory is not a shard, shards are missing or come from different runs.
    """
    if is_remote(output):
        return _staged(str(output), overwrite, None, lambda local: merge(local, shards))
    from datasets import load_from_disk

    loaded = []
    for d in shards:
        marker = Path(d) / SHARD_MARKER
        if not marker.is_file():
            raise DataError(
                f"{d} is not a prepare shard (no {SHARD_MARKER}); run `textloop prepare ... --num-shards K --shard-index i` first"
            )
        loaded.append((Path(d), json.loads(marker.read_text(encoding="utf-8"))))
    loaded.sort(key=lambda dm: dm[1]["info"]["shard_index"])
    first = loaded[0][1]
    k = first["info"]["num_shards"]
    indices = [m["info"]["shard_index"] for _, m in loaded]
    if indices != list(range(k)):
        missing = sorted(set(range(k)) - set(indices))
        raise DataError(
            f"merge needs shards 0..{k - 1} once each; got {indices}"
            + (f" (missing {missing})" if missing else "")
        )
    for d, m in loaded[1:]:
        if m["config"] != first["config"] or m["info"]["all_files"] != first["info"]["all_files"]:
            raise DataError(
                f"{d} comes from another run than {loaded[0][0]} (different config or inputs)"
            )
    cfg = PrepareConfig.model_validate(
        {**first["config"], "output": str(output), "overwrite": overwrite}
    )
    with _atomic_dir(Path(output), overwrite) as tmp:
        partials = []
        for d, m in loaded:
            info = {**m["info"], "errors_file": str(d / "errors.jsonl")}
            partials.append(Partial(records=load_from_disk(str(d / "records")), info=info))
        seconds = {"read_and_clean_max_shard": max(m["seconds"] for _, m in loaded)}
        manifest = _finalize(partials, cfg, tmp, seconds)
    return PrepareResult(Path(output), manifest)
