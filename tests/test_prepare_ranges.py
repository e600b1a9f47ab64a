"""Large line files read in byte ranges: the same records, line numbers and file entries as one
whole-file read, whatever the cut size; and the same corpus from ``prepare``."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from textloop.data.prepare import load_prepare_config, prepare
from textloop.data.prepare.ranges import ReadTask, cuts, serial_scan, split_tasks
from textloop.data.prepare.sources import generate_records, splittable

SETTINGS: dict[str, Any] = {
    "format": "auto",
    "txt_mode": "line",
    "text_column": "text",
    "label_column": None,
    "encoding": "utf-8",
    "on_error": "skip_records",
}


def _awkward_jsonl(path: Path) -> None:
    """A BOM, CRLF and lone-CR line ends, blank lines, bad JSON, multi-byte characters, a line
    longer than the small cuts, and no newline at the end."""
    rng = random.Random(3)
    ends = ["\n", "\r\n", "\r"]
    lines = []
    for i in range(60):
        text = " ".join(rng.choice(["naïve", "数据", "ok", "€uro", "x"]) for _ in range(i % 9 + 1))
        if i == 17:
            text = "long " * 40
        lines.append(json.dumps({"text": f"{i} {text}", "n": i}, ensure_ascii=False))
        if i % 11 == 5:
            lines.append("")  # a blank line: no record, but it is a line
        if i % 13 == 7:
            lines.append('{"text": broken')
    body = "".join(line + ends[i % 3] for i, line in enumerate(lines))
    path.write_bytes(("\ufeff" + body.rstrip("\r\n")).encode("utf-8"))


def _read(tasks: list[ReadTask], settings: dict[str, Any]) -> list[dict[str, Any]]:
    return list(generate_records(tasks, settings))


def _joined(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The records, and the file entry ``summarise`` builds from the trailers."""
    from textloop.data.prepare.summary import _join_ranges

    records = [r for r in rows if r["_meta"] is None]
    entry: dict[str, Any] | None = None
    for r in rows:
        if r["_meta"] is not None:
            meta = json.loads(r["_meta"])
            if entry is None:
                entry = meta
            else:
                _join_ranges(entry, meta)
    assert entry is not None
    return records, entry


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig"])
def test_ranges_read_the_records_and_line_numbers_of_the_whole_file(tmp_path, encoding):
    path = tmp_path / "awkward.jsonl"
    _awkward_jsonl(path)
    settings = {**SETTINGS, "encoding": encoding}
    whole_records, whole_entry = _joined(_read([ReadTask(0, str(path))], settings))
    assert len(whole_records) > 60 and any(r["_error"] for r in whole_records)
    assert whole_entry["sha256"] and whole_entry["bytes"] == path.stat().st_size
    size = path.stat().st_size
    for split_bytes in (1, 7, 64, 333, 1000, size - 1):
        tasks = split_tasks([ReadTask(0, str(path))], lambda p: "lines", split_bytes, serial_scan)
        assert len(tasks) > 1 and sum(t.last for t in tasks) == 1 and tasks[-1].last
        assert [t.start for t in tasks[1:]] == [t.end for t in tasks[:-1]]  # no gap, no overlap
        records, entry = _joined(_read(tasks, settings))
        assert records == whole_records, split_bytes
        assert entry == whole_entry, split_bytes


def test_txt_lines_and_the_cut_arithmetic(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_bytes(b"one\r\n\r\ntwo\rthree\n\nfour five\r\nsix")
    settings = {**SETTINGS, "format": "txt"}
    whole, _ = _joined(_read([ReadTask(0, str(path))], settings))
    tasks = split_tasks([ReadTask(0, str(path))], lambda p: "lines", 5, serial_scan)
    assert len(tasks) > 3
    got, _ = _joined(_read(tasks, settings))
    assert got == whole
    assert [(r["_row"], r["text"]) for r in got] == [
        (1, "one"),
        (3, "two"),
        (4, "three"),
        (6, "four five"),
        (7, "six"),
    ]
    assert cuts(10, 3) == [(0, 2), (2, 5), (5, 7), (7, 10)] and cuts(0, 3) == [(0, 0)]


def test_only_uncompressed_line_files_and_parquet_are_split(tmp_path):
    assert splittable("a.jsonl", SETTINGS) == splittable("a.txt", SETTINGS) == "lines"
    assert splittable("a.parquet", SETTINGS) == "row_groups"
    for path in ("a.jsonl.gz", "a.txt.zst", "a.csv", "a.json", "builtin:bbc_news"):
        assert splittable(path, SETTINGS) is None, path
    assert splittable("a.txt", {**SETTINGS, "txt_mode": "file"}) is None
    assert splittable("a.jsonl", {**SETTINGS, "encoding": "utf-16"}) is None
    assert splittable("a.jsonl", {**SETTINGS, "encoding": "latin-1"}) == "lines"


def test_a_parquet_file_is_read_in_runs_of_row_groups(tmp_path):
    path = tmp_path / "t.parquet"
    rows = [{"text": f"record {i} " + "x" * (i % 50), "n": i} for i in range(1000)]
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=90)  # 12 groups
    whole, whole_entry = _joined(_read([ReadTask(0, str(path))], SETTINGS))
    tasks = split_tasks(
        [ReadTask(0, str(path))], lambda p: "row_groups", path.stat().st_size // 5, serial_scan
    )
    assert 3 <= len(tasks) <= 12 and tasks[-1].end == 12
    assert [t.start for t in tasks[1:]] == [t.end for t in tasks[:-1]]
    records, entry = _joined(_read(tasks, SETTINGS))
    assert records == whole and entry == whole_entry
    assert [r["_row"] for r in records] == list(range(1, 1001))


def _table(out: Path, split: str) -> pa.Table:
    return pa.concat_tables(pq.read_table(p) for p in sorted((out / split).glob("*.parquet")))


def _manifest(out: Path) -> dict[str, Any]:
    m = json.loads((out / "manifest.json").read_text())
    m.pop("created"), m.pop("seconds"), m["config"].pop("split_bytes")
    return m


def test_prepare_writes_the_same_corpus_from_ranges(tmp_path):
    rng = random.Random(5)
    words = [f"w{i}" for i in range(400)]
    base = [" ".join(rng.choice(words) for _ in range(30)) for _ in range(150)]
    path = tmp_path / "big.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for i in range(600):  # copies across the whole file, so dedup crosses the ranges
            text = base[i % 150] if i % 4 else base[(i * 7) % 150].upper()
            f.write(json.dumps({"text": text, "label": "ab"[i % 2], "i": i}) + "\n")
        f.write("not json\n")
    outs = []
    for name, split_bytes, procs in (("whole", None, 1), ("ranges", 4000, 2)):
        tree = {
            "inputs": [str(path)],
            "output": str(tmp_path / name),
            "label_column": "label",
            "labels": {"min_per_class": 1},
            "split_bytes": split_bytes,
            "num_proc": procs,
        }
        outs.append(prepare(load_prepare_config(None, [], tree)).path)
    whole, ranged = outs
    assert _manifest(whole) == _manifest(ranged)
    assert _manifest(whole)["records_in"] == 601  # 600 records and 1 bad line
    for split in ("train", "validation", "test"):
        assert _table(whole, split).equals(_table(ranged, split))
    for name in ("duplicates.jsonl", "errors.jsonl"):
        assert (whole / name).read_text() == (ranged / name).read_text()
    assert f"{path}:601" in (ranged / "errors.jsonl").read_text()
