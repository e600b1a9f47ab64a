"""``engine: ray``: read, clean and fingerprint on a Ray cluster with Ray Data.

The same stages as ``ingest.clean_partial``, from the same functions (``generate_records``,
``clean_batch`` and the MinHash code behind it): one Ray Data task per input file, or per byte
range of a large one (``ranges.py``; the cuts are scanned as Ray tasks first), reads it
record by record and cleans it ``_PIECE_ROWS`` records at a time. Each piece is written by the
worker as two Arrow stream files in the work directory (which must be on a file system every
node sees): the survivors with their digests and band keys, and the few columns the clean
report reads. A piece's name is its (file, range, piece number), so a task that Ray retries after
losing its worker rewrites the same files with the same bytes, and the driver, which lists
the pieces in name order, sees the input order whatever order the tasks finished in.

The driver then memory-maps the pieces (no copy), summarises them with ``summary.summarise`` and
hands the survivors to the global stages with a ``ray_dedup.RayFinder``, which runs the exact
and near duplicate searches as Ray Data shuffles.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from textloop.data.prepare.clean import CHANGE_STAGES
from textloop.data.prepare.config import PrepareConfig
from textloop.data.prepare.ingest import (
    REPORT_ONLY_COLUMNS,
    IngestPlan,
    Partial,
    clean_batch,
    cleaned_features,
    ingest_features,
    lsh_info,
    plan_ingest,
    unwrap_error,
)
from textloop.data.prepare.ranges import ReadTask, Span, scan_span
from textloop.data.prepare.ray_dedup import Pieces, RayFinder
from textloop.data.prepare.sources import generate_records
from textloop.data.prepare.summary import summarise
from textloop.errors import ConfigError, DataError, TextloopError

log = logging.getLogger(__name__)

RAY_EXTRA = "pip install 'textloop[ray]'"
_PIECE_ROWS = 20_000  # records cleaned and written at a time by a worker (~50 MB of web text)
_CLEAN_BATCH = 256  # the local engine's map batch size: the same calls, the same results
_KEPT, _REPORT = ".kept.arrow", ".report.arrow"


def require_ray() -> None:
    """Fail with one line naming the extra when Ray is not installed.

    Raises:
        ConfigError: ``ray`` (with Ray Data) cannot be imported.
    """
    try:
        import ray.data  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"engine ray needs Ray Data, which is not installed: {RAY_EXTRA}"
        ) from None


@contextmanager
def ray_session(address: str | None, num_cpus: int | None) -> Iterator[None]:
    """Join the Ray cluster at ``address`` or start a local instance (``num_cpus`` CPUs); a
    session already open in this process (a notebook's, a test's) is used as it is."""
    require_ray()
    import ray

    if ray.is_initialized():
        yield
        return
    try:
        ray.init(
            address=address,
            num_cpus=num_cpus if address is None else None,
            include_dashboard=False,
            configure_logging=False,
        )
    except ConnectionError as exc:
        raise ConfigError(f"cannot reach the Ray cluster at {address!r}: {exc}") from None
    try:
        yield
    finally:
        ray.shutdown()


def _ipc_write(table: pa.Table, path: Path) -> None:
    """Write ``table`` as an Arrow stream file, atomically (a retried task rewrites it whole)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    os.replace(tmp, path)


def ipc_read(path: Path | str) -> pa.Table:
    """A piece, memory-mapped (no copy)."""
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_stream(source).read_all()


def _first_k(mask: np.ndarray, k: int) -> np.ndarray:
    return np.flatnonzero(mask)[:k]


def _clean_piece(
    rows: list[dict[str, Any]], plan: IngestPlan, examples: int
) -> tuple[pa.Table, pa.Table]:
    """(survivors, report columns) of one piece; the report keeps texts only where the clean
    summary may show them: dropped records and the first ``examples`` changed ones per stage."""
    raw = pa.Table.from_pylist(rows, schema=ingest_features().arrow_schema)
    texts = raw.column("text").to_pylist()
    metas = raw.column("_meta").to_pylist()
    parts = [
        clean_batch(
            {"text": texts[i : i + _CLEAN_BATCH], "_meta": metas[i : i + _CLEAN_BATCH]},
            plan.cleaner,
            plan.reps,
            plan.minhash,
        )
        for i in range(0, len(texts), _CLEAN_BATCH)
    ]
    new = {
        name: [x for p in parts for x in p[name]]
        if name == "text"
        else np.concatenate([p[name] for p in parts])
        for name in parts[0]
    }
    schema = cleaned_features(plan.bands).arrow_schema
    columns = {name: raw.column(name) for name in raw.column_names}
    columns.update(new)
    table = pa.table({f.name: pa.array(columns[f.name], type=f.type) for f in schema})
    drop, changed = np.asarray(new["_drop"]), np.asarray(new["_changed"])
    kept = table.filter(pa.array(drop == 0)).drop_columns(list(REPORT_ONLY_COLUMNS))
    shown = np.zeros(len(drop), dtype=bool)
    for bit in range(len(CHANGE_STAGES)):
        shown[_first_k((drop == 0) & ((changed & (1 << bit)) != 0), examples)] = True
    before = [t if s else None for t, s in zip(texts, shown)]
    text = [t if (d != 0 or s) else None for t, d, s in zip(new["text"], drop, shown)]
    report = table.select(["_file", "_row", *REPORT_ONLY_COLUMNS])
    report = report.append_column("text", pa.array(text, type=pa.string()))
    report = report.append_column("_before", pa.array(before, type=pa.string()))
    return kept, report


def _write_piece(
    rows: list[dict[str, Any]], stem: Path, plan: IngestPlan, examples: int
) -> dict[str, np.ndarray]:
    kept, report = _clean_piece(rows, plan, examples)
    _ipc_write(kept, stem.with_suffix(_KEPT))
    _ipc_write(report, stem.with_suffix(_REPORT))
    return {"read": np.array([len(rows)]), "kept": np.array([kept.num_rows])}


def _timed_ingest(
    batch: dict[str, np.ndarray], plan: IngestPlan, workdir: str, examples: int
) -> Iterator[dict[str, np.ndarray]]:
    """``_ingest_files`` with each piece's seconds in the task (for the stage costs)."""
    started = time.perf_counter()
    for out in _ingest_files(batch, plan, workdir, examples):
        yield {**out, "seconds": np.array([time.perf_counter() - started])}
        started = time.perf_counter()


def _ingest_files(
    batch: dict[str, np.ndarray], plan: IngestPlan, workdir: str, examples: int
) -> Iterator[dict[str, np.ndarray]]:
    """Ray Data task: read, clean and write every piece of the batch's files or ranges."""
    for i in range(len(batch["file_id"])):
        task = ReadTask(
            int(batch["file_id"][i]),
            str(batch["path"][i]),
            int(batch["start"][i]),
            None if batch["end"][i] < 0 else int(batch["end"][i]),
            int(batch["first_line"][i]),
            int(batch["part"][i]),
            bool(batch["last"][i]),
        )
        rows: list[dict[str, Any]] = []
        piece = 0
        prefix = f"{task.file_id:08d}-{task.part:06d}"
        for rec in generate_records([task], plan.settings):
            rows.append(rec)
            if len(rows) == _PIECE_ROWS:
                yield _write_piece(rows, Path(workdir) / f"{prefix}-{piece:08d}", plan, examples)
                rows, piece = [], piece + 1
        if rows:  # the trailer row is always last, so a task leaves at least one piece
            yield _write_piece(rows, Path(workdir) / f"{prefix}-{piece:08d}", plan, examples)


def _scan_on_ray(jobs: list[tuple[int, str, int, int, int]]) -> list[Span]:
    """``ranges.scan_span`` over the cuts of the large files, one Ray task per cut."""
    import ray

    remote = ray.remote(scan_span)
    return [Span(*s) for s in ray.get([remote.remote(*job) for job in jobs])]


def _task_error(exc: BaseException) -> BaseException:
    """The TextloopError a task raised (a bad record with ``on_error: fail``), from under Ray's
    wrapping: a ``RayTaskError`` subclasses the error it carries but prints the remote
    traceback, and keeps the error itself in ``cause``."""
    found = unwrap_error(exc)
    original = getattr(found, "cause", None)
    return original if isinstance(original, TextloopError) else found


@contextmanager
def task_errors_unwrapped() -> Iterator[None]:
    """Re-raise a TextloopError that a Ray task raised as itself (Ray wraps what a task raised)."""
    try:
        yield
    except Exception as exc:
        cause = _task_error(exc)
        if cause is not exc:
            raise cause from None
        raise


def clean_on_ray(cfg: PrepareConfig, workdir: Path) -> tuple[Partial, RayFinder]:
    """``clean_partial`` on Ray: the partial corpus, and the finder that dedups it on Ray.

    Raises:
        DataError: inputs missing, fields missing, or a bad record with ``on_error: fail``.
        ConfigError: the custom filter cannot be loaded.
    """
    import ray
    from datasets import Dataset, concatenate_datasets

    started = time.perf_counter()
    plan = plan_ingest(cfg, _scan_on_ray)
    plan_s = time.perf_counter() - started
    if not plan.tasks:
        raise DataError("no records in this slice of the inputs (0 file(s))")
    pieces_dir = workdir / "pieces"
    pieces_dir.mkdir(parents=True, exist_ok=True)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    log.info(
        "ray: reading and cleaning %d file(s) in %d task(s) on %d CPU(s)",
        len(plan.files),
        len(plan.tasks),
        cpus,
    )
    files = ray.data.from_items(
        [{**t._asdict(), "end": -1 if t.end is None else t.end} for t in plan.tasks],
        override_num_blocks=len(plan.tasks),
    )
    done = files.map_batches(
        _timed_ingest,  # type: ignore[arg-type]  # Ray's stubs miss UDFs with keyword args
        batch_size=1,
        batch_format="numpy",
        fn_kwargs={"plan": plan, "workdir": str(pieces_dir), "examples": cfg.examples_per_stage},
    )  # Ray runs a task whose worker died again (3 times by default): the same pieces
    started = time.perf_counter()
    with task_errors_unwrapped():
        counts = done.take_all()
    stats: dict[str, dict[str, Any]] = {
        # listing the inputs and scanning the large files' cuts (Ray tasks, one per range)
        "plan": {"wall_s": plan_s, "ranges": sum(t.end is not None for t in plan.tasks)},
        "read_clean": {
            "wall_s": time.perf_counter() - started,
            "task_s": sum(float(c["seconds"]) for c in counts),
            "tasks": len(plan.tasks),
            "pieces": len(counts),
        },
    }
    log.info("ray: %d record(s) read", sum(int(c["read"]) for c in counts))
    started = time.perf_counter()
    names = sorted(p.name[: -len(_KEPT)] for p in pieces_dir.glob("*" + _KEPT))
    report = pa.concat_tables([ipc_read(pieces_dir / (n + _REPORT)) for n in names])
    text, before = report.column("text"), report.column("_before")

    def raw_text_of(i: int) -> str | None:
        value = before[i].as_py()
        return value if value is not None else text[i].as_py()

    info = summarise(report, raw_text_of, cfg, plan.files, plan.ignored, workdir)
    info["lsh"] = lsh_info(plan.reps)
    kept_paths = [pieces_dir / (n + _KEPT) for n in names]
    records = concatenate_datasets([Dataset.from_file(str(p)) for p in kept_paths])
    sizes = [int(d) for d in np.cumsum([0] + [ipc_rows(p) for p in kept_paths])]
    pieces = Pieces(paths=[str(p) for p in kept_paths], offsets=sizes[:-1], rows=sizes[-1])
    finder = RayFinder(pieces, cpus)
    stats["summary_driver"] = {"wall_s": time.perf_counter() - started}
    finder.stats.update(stats)
    return Partial(records=records, info=info), finder


def ipc_rows(path: Path) -> int:
    with pa.memory_map(str(path)) as source:
        return sum(b.num_rows for b in pa.ipc.open_stream(source))
