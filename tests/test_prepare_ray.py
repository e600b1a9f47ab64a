"""``prepare --engine ray``: the same corpus as the local engine, a lost worker, a missing extra.

One local Ray instance with 2 CPUs serves the whole module (starting Ray and its workers is
the slow part). The fault test is marked slow: ``pytest -m slow tests/test_prepare_ray.py``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from textloop.cli.main import main
from textloop.data.prepare import load_prepare_config, prepare

WORDS = [f"w{i}" for i in range(3000)]
SPLITS = ("train", "validation", "test")


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    yield ray
    ray.shutdown()


def _doc(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _edit(rng: random.Random, text: str) -> str:
    words = text.split()
    words[rng.randrange(len(words))] = rng.choice(WORDS)
    return " ".join(words)


def _corpus(d: Path) -> list[str]:
    """Four files with exact copies (re-cased, re-spaced), one-word edits of long (80 words)
    and short (12 words) texts, across file boundaries, plus records the cleaner drops."""
    rng = random.Random(7)
    base = [_doc(rng, 80) for _ in range(120)] + [_doc(rng, 12) for _ in range(60)]
    files = []
    for i in range(4):
        texts = [base[(i * 45 + j) % 180] for j in range(45)]
        texts += [base[(i * 31 + j) % 180].upper().replace(" ", "  ") for j in range(8)]
        texts += [_edit(rng, base[(i * 53 + j) % 180]) for j in range(15)]
        texts += [f"<p>an <b>html</b> record {i}</p>", "", "\u200b"]
        path = d / f"part{i}.jsonl"
        with path.open("w", encoding="utf-8") as f:
            for j, t in enumerate(texts):
                # "mixed" is a number in three files and text in the fourth: written as text
                mixed = j if i < 3 else f"x{j}"
                f.write(
                    json.dumps({"text": t, "label": "ab"[j % 2], "n": j, "mixed": mixed}) + "\n"
                )
        files.append(str(path))
    return files


def _split(out: Path, split: str) -> pa.Table:
    return pa.concat_tables(pq.read_table(p) for p in sorted((out / split).glob("*.parquet")))


def _same_corpus(a: Path, b: Path) -> None:
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
    for m in (ma, mb):
        m.pop("created"), m.pop("seconds"), m["config"].pop("split_bytes")
    assert ma == mb  # counts, splits, clusters, examples, files, config
    for split in SPLITS:
        assert _split(a, split).equals(_split(b, split))
    for name in ("duplicates.jsonl", "errors.jsonl"):
        assert (a / name).read_text() == (b / name).read_text()


def _local(files: list[str], out: Path, **extra: Any) -> Path:
    tree = {"inputs": files, "output": str(out), **extra}
    return prepare(load_prepare_config(None, [], tree)).path


@pytest.mark.integration
def test_ray_engine_writes_the_local_engines_corpus(tmp_path, ray_local, capsys, monkeypatch):
    from textloop.data.prepare import finalize

    files = _corpus(tmp_path)
    common = ["--label-column", "label", "--set", "labels.min_per_class=1"]
    common += ["--set", "shard_rows=40"]  # several shards a split, crossing the workers' pieces
    local = _local(
        files, tmp_path / "local", label_column="label", labels={"min_per_class": 1}, shard_rows=40
    )
    assert len(list((local / "train").glob("*.parquet"))) >= 3

    def not_here(*args: Any) -> None:
        raise AssertionError("the Ray engine's driver wrote a shard")

    monkeypatch.setattr(finalize, "write_shard", not_here)  # the workers' copies are untouched
    args = ["prepare", *files, "--output", str(tmp_path / "ray"), "--engine", "ray", *common]
    assert main(args) == 0
    _same_corpus(local, tmp_path / "ray")
    assert pq.read_schema(local / "train" / "part-00000.parquet").field("mixed").type == pa.string()
    manifest = json.loads((local / "manifest.json").read_text())
    removed = {s["stage"]: s["removed"] for s in manifest["stages"]}
    # the planted duplicates were found (so the equality above compares real decisions)
    assert removed["exact_duplicate"] > 20 and removed["near_duplicate"] > 20
    assert manifest["dedup"]["clusters"]["near"]["clusters"] > 5
    assert "corpus:" in capsys.readouterr().out
    assert not list(tmp_path.glob(".*tmp*"))  # no temp output left behind


@pytest.mark.integration
def test_one_large_file_is_read_in_ranges_on_the_workers(tmp_path, ray_local, monkeypatch, caplog):
    from textloop.data.prepare import ray_engine

    big = tmp_path / "all.jsonl"
    big.write_text("".join(Path(f).read_text() for f in _corpus(tmp_path)))
    extra = {"label_column": "label", "labels": {"min_per_class": 1}}
    local = _local([str(big)], tmp_path / "local", split_bytes=None, **extra)
    scanned: list[Any] = []
    scan = ray_engine._scan_on_ray
    monkeypatch.setattr(ray_engine, "_scan_on_ray", lambda jobs: scanned.extend(jobs) or scan(jobs))
    with caplog.at_level("INFO", logger="textloop.data.prepare.ray_engine"):
        ray_out = _local([str(big)], tmp_path / "ray", engine="ray", split_bytes=10_000, **extra)
    cuts = -(-big.stat().st_size // 10_000)
    assert len(scanned) == cuts > 10  # every cut, scanned on Ray
    assert f"1 file(s) in {cuts} task(s)" in caplog.text  # and read by its own task
    _same_corpus(local, ray_out)


_HOOK = """
import os, time
from pathlib import Path
SIGNALS = Path({signals!r})

def slow_keep(text):
    if SIGNALS.is_dir():  # only during the Ray run: say which worker is busy, then go slowly
        mark = SIGNALS / str(os.getpid())
        if not mark.exists():
            mark.write_text("")
        time.sleep(0.02)
    return True
"""


@pytest.mark.slow  # ~20 s on 2 idle CPUs: the module's other tests keep it within a minute
@pytest.mark.integration
def test_a_worker_killed_mid_run_changes_nothing(tmp_path, ray_local):
    files = _corpus(tmp_path)
    signals = tmp_path / "signals"
    hook = tmp_path / "hook.py"
    hook.write_text(_HOOK.format(signals=str(signals)))
    clean = {"custom_filter": f"{hook}:slow_keep"}
    local = _local(files, tmp_path / "local", clean=clean)
    signals.mkdir()
    killed: list[int] = []

    def kill_first_busy_worker() -> None:
        deadline = time.monotonic() + 60
        while not killed and time.monotonic() < deadline:
            for mark in signals.iterdir():
                pid = int(mark.name)
                if pid != os.getpid():
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
            time.sleep(0.02)

    watcher = threading.Thread(target=kill_first_busy_worker, daemon=True)
    watcher.start()
    _local(files, tmp_path / "ray", clean=clean, engine="ray")
    watcher.join()
    assert killed, "no worker was killed"
    with pytest.raises(ProcessLookupError):
        os.kill(killed[0], 0)  # it is gone, and Ray ran its task again elsewhere
    _same_corpus(local, tmp_path / "ray")


def test_without_ray_the_engine_names_the_extra(tmp_path, monkeypatch, capsys):
    files = _corpus(tmp_path)
    monkeypatch.setitem(sys.modules, "ray", None)  # what Python does when ray is not installed
    out = tmp_path / "corpus"
    assert main(["prepare", *files, "--output", str(out), "--engine", "ray"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install 'textloop[ray]'" in err
    assert not out.exists()


@pytest.mark.integration
def test_a_bad_record_on_a_worker_is_the_local_engines_one_line_error(tmp_path, ray_local, capsys):
    good = tmp_path / "good.jsonl"
    good.write_text('{"text": "a fine record"}\n')
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": 5, "x": \n')
    out = tmp_path / "corpus"
    args = ["prepare", str(good), str(bad), "--output", str(out), "--engine", "ray"]
    assert main([*args, "--on-error", "fail"]) == 2
    # Ray logs the task's failure (its own lines, any order); textloop's is one line
    ours = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error: ")]
    assert ours == [f"error: {bad}:2: invalid JSON (Expecting value, column 1) (on_error: fail)"]
    assert not out.exists() and not list(tmp_path.glob(".corpus.tmp-*"))
