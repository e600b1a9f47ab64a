"""``textloop prepare`` on its two engines, local and Ray, on this machine; and a scaling model.

Measured (each run a fresh process; a local Ray instance for the Ray engine): wall time, MB/s,
and the peak RSS of every process of the run's tree: the driver, the largest Ray worker, Ray's
own services (raylet, GCS, ...), and the whole tree at its peak. The corpus is
``bench/prepare_throughput.py``'s (JSONL, planted exact and near duplicates); dedup is near
(MinHash LSH) with the near leakage check. The two engines' manifests are compared.

Modelled (not measured): the Ray engine's time on W one-CPU workers for a corpus of
``--model-gb``, from the largest Ray run's per-stage costs per MB (CPU seconds of the parallel
stages, bytes through each shuffle, seconds of the driver's serial stages):

    T(W) = G * [(c_read_clean + sum c_shuffle) / W + sum v_shuffle / (W * net) + d_driver]

with the assumptions listed in the output. Prints JSON; ``--output`` saves it, ``--render``
prints markdown tables from a saved file.

    .venv/bin/python bench/prepare_engines.py --sizes 0.25,1.0 --output bench/results/prepare_engines.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prepare_throughput import generate  # the corpus generator, shared

_SYSTEM = ("raylet", "gcs_server", "dashboard", "log_monitor", "monitor.py", "runtime_env")


def _role(cmdline: list[str], root: int, pid: int) -> str:
    line = " ".join(cmdline)
    if pid == root:
        return "driver"
    if line.startswith("ray::") or "default_worker.py" in line:
        return "ray_worker"
    if any(s in line for s in _SYSTEM):
        return "ray_system"
    return "other"  # datasets' worker processes (local engine, num_proc > 1)


def _measure(cmd: list[str]) -> dict[str, Any]:
    """Run ``cmd``: wall seconds, stderr, and peak RSS per process role and of the whole tree."""
    import psutil

    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peaks: dict[int, tuple[str, int]] = {}
    tree_peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal tree_peak
        root = psutil.Process(proc.pid)
        while not stop.is_set():
            try:
                total = 0
                for p in [root, *root.children(recursive=True)]:
                    try:
                        rss = p.memory_info().rss
                        role = (
                            peaks[p.pid][0]
                            if p.pid in peaks
                            else _role(p.cmdline(), proc.pid, p.pid)
                        )
                    except psutil.Error:
                        continue
                    total += rss
                    peaks[p.pid] = (role, max(rss, peaks.get(p.pid, ("", 0))[1]))
                tree_peak = max(tree_peak, total)
            except psutil.Error:
                pass
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _out, err = proc.communicate()
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    by_role: dict[str, list[int]] = {}
    for role, rss in peaks.values():
        by_role.setdefault(role, []).append(rss)
    mb = 2**20
    return {
        "seconds": time.perf_counter() - started,
        "peak_rss_mb": {
            "driver": round(max(by_role.get("driver", [0])) / mb),
            "largest_ray_worker": round(max(by_role.get("ray_worker", [0])) / mb),
            "ray_workers": len(by_role.get("ray_worker", [])),
            "ray_system_sum": round(sum(by_role.get("ray_system", [0])) / mb),
            "largest_other": round(max(by_role.get("other", [0])) / mb),
            "whole_tree": round(tree_peak / mb),
        },
        "stderr": err,
    }


def _run(src: Path, out: Path, engine: str, cpus: int, split: str) -> dict[str, Any]:
    cmd = [
        sys.executable, "-m", "textloop", "prepare", str(src), "--output", str(out), "--overwrite",
        "--dedup", "near", "--engine", engine, "--set", f"split_bytes={_split_bytes(split)}",
    ]  # fmt: skip
    cmd += ["--num-proc", str(cpus)] if engine == "local" else ["--ray-num-cpus", str(cpus)]
    m = _measure(cmd)
    manifest = json.loads((out / "manifest.json").read_text())
    found = re.search(r"ray stage costs: (\{.*\})", m.pop("stderr"))
    return {
        **m,
        "stages_s": json.loads(found.group(1)) if found else manifest["seconds"],
        "records_in": manifest["records_in"],
        "records_out": manifest["records_out"],
        "manifest": manifest,
    }


def _split_bytes(split: str) -> str:
    """``--splits`` entry (MiB, or none) as the config value."""
    return "null" if split == "none" else str(int(float(split) * 2**20))


def _one_file(src: Path) -> Path:
    """The corpus's files joined into one (the case byte ranges are for); reused if present."""
    joined = src.with_name(src.name + "-onefile") / "all.jsonl"
    if not joined.exists():
        joined.parent.mkdir(parents=True, exist_ok=True)
        tmp = joined.with_suffix(".tmp")
        with tmp.open("wb") as out:
            for part in sorted(src.glob("*.jsonl")):
                with part.open("rb") as f:
                    while chunk := f.read(1 << 24):
                        out.write(chunk)
        tmp.rename(joined)
    return joined


def _scan_speed(path: Path) -> dict[str, Any]:
    """Serial MB/s of the range scan (``ranges.scan_span``) over the whole file, on one core."""
    from textloop.data.prepare.ranges import scan_span

    size = path.stat().st_size
    started = time.perf_counter()
    scan_span(0, str(path), 0, 0, size)
    seconds = time.perf_counter() - started
    return {
        "mb": round(size / 1e6),
        "seconds": round(seconds, 2),
        "mb_per_s": round(size / 1e6 / seconds),
    }


def _model(run: dict[str, Any], mb: float, args: argparse.Namespace) -> dict[str, Any]:
    """Predicted Ray-engine throughput at W workers from one measured Ray run's stage costs."""
    st = run["stages_s"]
    shuffles = {k: v for k, v in st.items() if "shuffle_bytes" in v}
    c_read = st["read_clean"]["task_s"] / mb  # CPU s per MB in the read+clean tasks
    # the plan: listing the inputs and scanning large files' cuts (Ray tasks); upper bound
    c_plan = st.get("plan", {}).get("wall_s", 0.0) * args.cpus / mb
    c_shuffle = {k: v["wall_s"] * args.cpus / mb for k, v in shuffles.items()}  # upper bound
    v_shuffle = {k: v["shuffle_bytes"] / 1e6 / mb for k, v in shuffles.items()}  # MB per MB
    # the workers write the output (ray_write.py): the shards and the extra-column scan
    on_workers = {k: st[k] for k in ("write", "extras") if k in st}
    c_write = sum(v["task_s"] for v in on_workers.values()) / mb
    manifest_s = st["manifest_s"]
    driver = (
        st["summary_driver"]["wall_s"]
        + manifest_s["dedup_and_split"]
        - sum(v["wall_s"] for v in shuffles.values())
        + manifest_s["write"]
        - sum(v["wall_s"] for v in on_workers.values())
    ) / mb  # serial seconds per MB on the driver
    g = args.model_gb * 1000  # MB
    net = args.net_mb_s
    predicted = {}
    for w in [int(x) for x in args.workers.split(",")]:
        parallel = g * (c_plan + c_read + sum(c_shuffle.values()) + c_write) / w
        network = g * sum(v_shuffle.values()) / (w * net)
        serial = g * driver
        total = parallel + network + serial + args.startup_s
        predicted[str(w)] = {
            "mb_per_s": round(g / total, 1),
            "hours": round(total / 3600, 2),
            "share_serial_driver": round(serial / total, 3),
        }
    return {
        "from_run": f"ray, {run['size_gb']} GB",
        "per_mb": {
            "plan_scan_cpu_s": round(c_plan, 5),
            "read_clean_cpu_s": round(c_read, 4),
            "shuffle_cpu_s": {k: round(v, 5) for k, v in c_shuffle.items()},
            "shuffle_mb": {k: round(v, 4) for k, v in v_shuffle.items()},
            "write_cpu_s": round(c_write, 5),
            "driver_serial_s": round(driver, 5),
        },
        "corpus_gb": args.model_gb,
        "predicted": predicted,
        "ceiling_mb_per_s": round(1 / driver, 1) if driver > 0 else None,
        "assumptions": [
            "one CPU per worker; at least W read tasks (one per input file, or per split_bytes "
            "range of a large jsonl/txt file: 64 MiB by default)",
            "read+clean cost per MB = the measured sum of task seconds / MB (this CPU)",
            "a shuffle step's CPU per MB = its measured wall time x the CPUs used (upper bound)",
            f"shuffle bytes cross the network at {net:g} MB/s per worker, in and out at once",
            "the Parquet write and the extra-column scan run on the workers (their task seconds "
            "per MB, divided by W); the driver's serial stages (clean summary, connected "
            "components, splits, leakage, the shard plan) scale with the corpus at the measured "
            "s/MB and do not shrink with W",
            f"{args.startup_s:g} s fixed start-up; Ray task scheduling overhead ignored",
            "the shared file system that holds the work pieces is not the bottleneck",
        ],
    }


def _render(results: dict[str, Any]) -> str:
    lines = [
        f"Measured on this machine ({results['cpus']} CPUs, {results['note']}):",
        "",
        "| engine | split MiB | files | GB | MB | seconds | MB/s | driver MB | largest worker MB "
        "| tree MB | same corpus |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results["runs"]:
        rss = r["peak_rss_mb"]
        worker = rss["largest_ray_worker"] or rss["largest_other"]
        lines.append(
            f"| {r['engine']} | {r.get('split_mib', 'none')} | {1 if r.get('one_file') else 8} "
            f"| {r['size_gb']} | {r['mb']} | {r['seconds']} | {r['mb_per_s']} "
            f"| {rss['driver']} | {worker} | {rss['whole_tree']} | {r.get('same_corpus', '')} |"
        )
    model = results.get("model")
    if model:
        lines += [
            "",
            f"Modelled (not measured), Ray engine, {model['corpus_gb']} GB corpus, "
            f"from the {model['from_run']} run:",
            "",
            "| workers | MB/s | hours | driver's serial share |",
            "| --- | --- | --- | --- |",
        ]
        for w, p in model["predicted"].items():
            lines.append(f"| {w} | {p['mb_per_s']} | {p['hours']} | {p['share_serial_driver']} |")
        lines += ["", "Assumptions:", *[f"- {a}" for a in model["assumptions"]]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0.25,1.0", help="corpus sizes in GB")
    parser.add_argument("--dir", default="/tmp/tl-prepare-bench", help="where corpora go")
    parser.add_argument("--engines", default="local,ray")
    parser.add_argument(
        "--splits", default="64", help="split_bytes values in MiB (none: never split), each a run"
    )
    parser.add_argument(
        "--one-file", action="store_true", help="join the corpus into one file first"
    )
    parser.add_argument("--cpus", type=int, default=2, help="num_proc / the local Ray's CPUs")
    parser.add_argument("--model-gb", type=float, default=1000.0, help="corpus size modelled")
    parser.add_argument("--workers", default="8,64,512", help="worker counts modelled")
    parser.add_argument("--net-mb-s", type=float, default=1000.0, help="per-worker network")
    parser.add_argument("--startup-s", type=float, default=30.0, help="cluster start-up")
    parser.add_argument("--note", default="", help="what else ran on the machine")
    parser.add_argument("--output", help="also write the JSON here")
    parser.add_argument("--render", metavar="JSON", help="print tables from a saved result")
    args = parser.parse_args()
    if args.render:
        print(_render(json.loads(Path(args.render).read_text())))
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.pop("RAY_ADDRESS", None)  # a fresh local Ray instance per run
    root = Path(args.dir)
    results: dict[str, Any] = {"cpus": os.cpu_count(), "note": args.note, "runs": []}
    for size in [float(s) for s in args.sizes.split(",")]:
        src = root / f"corpus-{size:g}gb"
        mb = generate(src, size)["bytes"] / 1e6
        if args.one_file:
            src = _one_file(src)
            results.setdefault("scan", {})[f"{size:g}"] = _scan_speed(src)
        manifests = []
        for engine in args.engines.split(","):
            for split in args.splits.split(","):
                name = f"engines-{size:g}-{engine}-split{split}"
                r = _run(src, root / name, engine, args.cpus, split)
                manifests.append(r.pop("manifest"))
                run = {"engine": engine, "split_mib": split, "size_gb": size, "mb": round(mb), **r}
                run["one_file"] = args.one_file
                run["seconds"] = round(run["seconds"], 1)
                run["mb_per_s"] = round(mb / r["seconds"], 2)
                results["runs"].append(run)
                print(
                    json.dumps({k: v for k, v in run.items() if k != "stages_s"}), file=sys.stderr
                )
        if len(manifests) > 1:
            first = manifests[0]
            same = all(
                m[k] == first[k]
                for m in manifests
                for k in ("stages", "splits", "dedup", "records_out")
            )
            for run in results["runs"][-len(manifests) :]:
                run["same_corpus"] = same
    ray_runs = [r for r in results["runs"] if r["engine"] == "ray"]
    if ray_runs:
        largest = ray_runs[-1]
        results["model"] = _model(largest, largest["mb"], args)
    text = json.dumps(results, indent=2)
    if args.output:
        Path(args.output).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
