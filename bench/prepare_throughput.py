"""Throughput, peak memory and duplicate-removal quality of ``textloop prepare``.

Generates a JSONL corpus (about 2.3 KB per document) with planted duplicates: exact copies
(re-cased, re-punctuated, re-spaced), near copies (1-6 spaced word edits of a 300+ word document:
Jaccard of 5-word shingles >= 0.82) and hard negatives (12-20 edits: Jaccard 0.49-0.66, must be
kept). Runs, each in a fresh process with its whole process tree's peak RSS sampled:

- textloop prepare, clean + exact dedup, num_proc 1 and 2
- textloop prepare, clean + near dedup (MinHash LSH), num_proc 1 and 2
- a straightforward pandas pipeline (read all, same cleaning, drop_duplicates on the same digest)

at two corpus sizes, and prints one JSON object. Recall/precision compare removed records with
the planted truth.

    nice -n 19 .venv/bin/python bench/prepare_throughput.py --sizes 0.25,1.0 --dir /tmp/tl-bench
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

_FILES = 8
_REPO = Path(__file__).resolve().parents[1]


def _vocab(rng: random.Random) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choice(letters) for _ in range(rng.randint(3, 9))) for _ in range(60_000)]


def _spaced_edits(words: list[str], k: int, rng: random.Random, vocab: list[str]) -> list[str]:
    # positions at least 5 apart: each edit replaces exactly 5 of the ~300 shingles
    out = list(words)
    slots = rng.sample(range(len(words) // 5), k)
    for s in slots:
        out[s * 5 + 2] = rng.choice(vocab)
    return out


def generate(root: Path, size_gb: float, seed: int = 0) -> dict[str, Any]:
    """Write ``_FILES`` JSONL files totalling ``size_gb`` GB and a truth file; reuse if present."""
    import numpy as np

    truth_path = root.with_name(root.name + ".truth.json")  # outside the corpus it describes
    if truth_path.exists():
        return json.loads(truth_path.read_text())
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    vocab = _vocab(rng)
    nprng = np.random.default_rng(seed)
    recent: list[list[str]] = []
    truth: dict[str, list[str]] = {"exact": [], "near": [], "hard_negative": []}
    target = int(size_gb * 1e9 / _FILES)
    for f in range(_FILES):
        path = root / f"part-{f:02d}.jsonl"
        written, line = 0, 0
        with path.open("w", encoding="utf-8") as out:
            while written < target:
                line += 1
                roll = rng.random()
                if roll < 0.10 and recent:
                    words = list(rng.choice(recent))
                    words[0] = words[0].upper()
                    text = " ".join(words).replace(" ", "  ", 3) + "!"
                    truth["exact"].append(f"{path}:{line}")
                elif roll < 0.20 and recent:
                    text = " ".join(
                        _spaced_edits(rng.choice(recent), rng.randint(1, 6), rng, vocab)
                    )
                    truth["near"].append(f"{path}:{line}")
                elif roll < 0.25 and recent:
                    text = " ".join(
                        _spaced_edits(rng.choice(recent), rng.randint(12, 20), rng, vocab)
                    )
                    truth["hard_negative"].append(f"{path}:{line}")
                else:
                    idx = nprng.integers(0, len(vocab), size=rng.randint(300, 420)).tolist()
                    words = list(map(vocab.__getitem__, idx))
                    for i in range(40, len(words), 60):
                        words[i] += "."
                    recent.append(words)
                    if len(recent) > 3000:
                        recent.pop(rng.randrange(len(recent)))
                    text = " ".join(words)
                row = f'{{"text": "{text}", "id": {line}}}\n'  # plain ASCII words: valid JSON
                out.write(row)
                written += len(row)
    info = {"bytes": sum(p.stat().st_size for p in root.glob("*.jsonl")), **truth}
    truth_path.write_text(json.dumps(info))
    return info


def _measure(cmd: list[str]) -> dict[str, Any]:
    """Run ``cmd``; wall time and the peak summed RSS of the process and its children."""
    import psutil

    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = peak_anon = 0
    stop = threading.Event()

    def anon_kb(pid: int) -> int:
        # RssAnon: memory the process owns; RSS also counts pages of memory-mapped Arrow files,
        # which the kernel drops under pressure
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
        return 0

    def sample() -> None:
        nonlocal peak, peak_anon
        parent = psutil.Process(proc.pid)
        while not stop.is_set():
            try:
                tree = [parent, *parent.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree))
                peak_anon = max(peak_anon, sum(anon_kb(p.pid) for p in tree) * 1024)
            except (psutil.Error, OSError):
                pass
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    return {
        "seconds": time.perf_counter() - started,
        "peak_rss_mb": peak / 2**20,
        "peak_anon_rss_mb": peak_anon / 2**20,
        "stdout": out,
    }


def _quality(out_dir: Path, truth: dict[str, Any], read: int) -> dict[str, Any]:
    import pyarrow.parquet as pq

    kept = set()
    for p in out_dir.glob("*/*.parquet"):
        kept.update(pq.read_table(p, columns=["_tl_source"]).column("_tl_source").to_pylist())
    exact, near, hard = set(truth["exact"]), set(truth["near"]), set(truth["hard_negative"])
    removed_count = read - len(kept)  # read: records read minus unreadable ones
    removed_planted_exact = len(exact - kept)
    removed_planted_near = len(near - kept)
    removed_hard = len(hard - kept)
    true_removed = removed_planted_exact + removed_planted_near
    return {
        "removed": removed_count,
        "recall_exact": removed_planted_exact / max(len(exact), 1),
        "recall_near": removed_planted_near / max(len(near), 1),
        "hard_negatives_removed": removed_hard,
        "precision": true_removed / max(removed_count, 1),
    }


def _prepare_run(src: Path, out: Path, dedup: str, num_proc: int) -> list[str]:
    leakage = "off" if dedup == "exact" else "near"
    return [
        sys.executable, "-m", "textloop", "prepare", str(src), "--output", str(out), "--overwrite",
        "--dedup", dedup, "--num-proc", str(num_proc), "--set", f"split.leakage_check={leakage}",
    ]  # fmt: skip


_PANDAS = r"""
import glob, sys, time, hashlib, pandas as pd
from textloop.data.prepare.clean import Cleaner
from textloop.data.prepare.fingerprint import content_digest, dedup_tokens
src, out = sys.argv[1], sys.argv[2]
df = pd.concat([pd.read_json(p, lines=True) for p in sorted(glob.glob(src + "/*.jsonl"))], ignore_index=True)
cleaner = Cleaner()
cleaned = [cleaner.clean(t) for t in df["text"]]
df["text"] = [c[0] for c in cleaned]
df = df[[c[2] is None for c in cleaned]]
df["key"] = [content_digest(dedup_tokens(t)) for t in df["text"]]
df = df.drop_duplicates("key", keep="first").drop(columns="key")
df.to_parquet(out)
print(len(df))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0.25,1.0", help="corpus sizes in GB")
    parser.add_argument("--dir", default="/tmp/tl-prepare-bench", help="where corpora go")
    parser.add_argument("--procs", default="1,2")
    parser.add_argument("--modes", default="exact,near")
    parser.add_argument("--pandas", default="all", help="sizes to run pandas at: all | none | GB")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    root = Path(args.dir)
    results: dict[str, Any] = {"cpus": os.cpu_count(), "runs": []}
    for size in [float(s) for s in args.sizes.split(",")]:
        src = root / f"corpus-{size:g}gb"
        started = time.perf_counter()
        truth = generate(src, size)
        mb = truth["bytes"] / 1e6
        print(
            f"corpus {size:g} GB: {mb:.0f} MB ({time.perf_counter() - started:.0f} s)",
            file=sys.stderr,
        )
        for mode in args.modes.split(","):
            for procs in [int(p) for p in args.procs.split(",")]:
                out = root / f"out-{size:g}-{mode}-{procs}"
                m = _measure(_prepare_run(src, out, mode, procs))
                manifest = json.loads((out / "manifest.json").read_text())
                run = {
                    "impl": "textloop", "size_gb": size, "mb": round(mb), "dedup": mode,
                    "num_proc": procs, "seconds": round(m["seconds"], 1),
                    "mb_per_s": round(mb / m["seconds"], 2), "peak_rss_mb": round(m["peak_rss_mb"]),
                    "peak_anon_rss_mb": round(m["peak_anon_rss_mb"]), "phases_s": manifest["seconds"],
                    **{k: round(v, 4) if isinstance(v, float) else v for k, v in _quality(out, truth, manifest["records_in"] - manifest["errors"]["skipped_records"]).items()},
                }  # fmt: skip
                results["runs"].append(run)
                print(json.dumps(run), file=sys.stderr)
        if args.pandas == "all" or (args.pandas != "none" and float(args.pandas) == size):
            out_file = root / f"pandas-{size:g}.parquet"
            m = _measure([sys.executable, "-c", _PANDAS, str(src), str(out_file)])
            run = {
                "impl": "pandas", "size_gb": size, "mb": round(mb), "dedup": "exact", "num_proc": 1,
                "seconds": round(m["seconds"], 1), "mb_per_s": round(mb / m["seconds"], 2),
                "peak_rss_mb": round(m["peak_rss_mb"]),
                "peak_anon_rss_mb": round(m["peak_anon_rss_mb"]), "records_out": int(m["stdout"].split()[-1]),
            }  # fmt: skip
            results["runs"].append(run)
            print(json.dumps(run), file=sys.stderr)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
