"""Trust benchmark on a real fine-tuned classifier: attribution completeness, deletion test, ECE.

    HF_HUB_OFFLINE=1 python bench/trust.py --run RUN_DIR [--n 200] [--steps 50] [--output x.json]

RUN_DIR is a finished classification run (e.g. ``textloop train configs/classification/
bbc-news_full.yaml --output runs/bbc``); it is only read. Prints one JSON object:

- ``completeness``: relative completeness error |sum(attr) - (F(x) - F(baseline))| / |F(x) -
  F(baseline)| over ``--n`` test texts at the default step count, explaining the logit (default)
  and, side by side on the first ``--n-probability`` texts, the probability;
- ``deletion``: deleting the top-k attributed words vs k random words (prob. drop, flip rate);
- ``calibration``: test ECE (equal-mass bins) before and after temperature scaling fitted on the
  run's validation split, and the test NLL before/after.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _explain_cached(
    run,
    texts: list[str],
    steps: int,
    cache: str | None,
    output: str = "logit",
    chunk: int = 8,
    progress=None,
) -> list[dict]:
    """Explain ``texts``, appending each chunk to ``cache`` (JSONL) so a killed run resumes."""
    from textloop.evaluation.explain import explain

    done: list[dict] = []
    if cache and Path(cache).is_file():
        done = [json.loads(x) for x in Path(cache).read_text().splitlines() if x.strip()]
        ok = [e["text"] == t and e["method"]["steps"] == steps for e, t in zip(done, texts)]
        done = done[: ok.index(False) if False in ok else len(ok)]
    for lo in range(len(done), len(texts), chunk):
        new = explain(run, texts[lo : lo + chunk], steps=steps, output=output)  # type: ignore[arg-type]
        done += new
        if cache:
            with open(cache, "a" if lo else "w", encoding="utf-8") as f:
                f.writelines(json.dumps(e, ensure_ascii=False) + "\n" for e in new)
        print(f"explained {len(done)}/{len(texts)}", file=sys.stderr, flush=True)
        if progress:
            progress(done)
    return done


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="finished classification run directory")
    p.add_argument("--n", type=int, default=200, help="test texts to explain")
    p.add_argument("--n-probability", type=int, default=50, help="texts for the probability run")
    p.add_argument("--steps", type=int, default=None, help="IG steps (default: the library's)")
    p.add_argument("--ks", default="1,3,5,10", help="deletion sizes")
    p.add_argument("--output", help="also write the JSON here")
    p.add_argument("--cache", help="JSONL of finished explanations (resume a killed run)")
    p.add_argument(
        "--reuse-calibration", action="store_true", help="take calibration from --output's JSON"
    )
    args = p.parse_args()

    import torch
    import torch.nn.functional as F

    from textloop.evaluation.explain import DEFAULT_STEPS, class_probabilities
    from textloop.evaluation.faithfulness import completeness_summary, deletion_test
    from textloop.runs import load_run
    from textloop.tasks import task_module
    from textloop.tasks.classification.temperature import calibration_summary, fit_temperature

    steps = args.steps or DEFAULT_STEPS
    run = load_run(args.run)
    task = run.task
    splits = task_module(run.config.task).build_splits(run.config, task.tokenizer)
    if splits.test is None:
        raise SystemExit("the run's data has no test split")
    result: dict = {
        "run": str(Path(args.run).resolve()),
        "model": run.config.model,
        "data": run.config.data.train,
        "labels": task.labels,
        "threads": torch.get_num_threads(),
        "note": "CPU shared with other jobs; timings are indicative",
        "complete": False,
    }

    # -- calibration: temperature fitted on validation, measured on test -----------------------
    bs = run.config.train.eval_batch_size
    previous = json.loads(Path(args.output).read_text()) if args.reuse_calibration else {}
    if "calibration" in previous:  # the attributions are the slow part; keep these numbers
        result["calibration"] = previous["calibration"]
    else:
        val_logits = task.logits_for(run.model, splits.validation, bs)
        test_logits = task.logits_for(run.model, splits.test, bs)
        dtype = torch.float32 if task.multi_label else torch.long
        val_y = torch.tensor(splits.validation.targets, dtype=dtype)
        test_y = torch.tensor(splits.test.targets, dtype=dtype)
        t = fit_temperature(val_logits, val_y, task.multi_label)
        before = calibration_summary(test_logits, test_y, task.multi_label, 1.0)
        after = calibration_summary(test_logits, test_y, task.multi_label, t)
        result["calibration"] = {
            "temperature": t,
            "fitted_on": f"validation (n={len(val_y)})",
            "measured_on": f"test (n={len(test_y)})",
            "test_ece_before": before["ece"],
            "test_ece_after": after["ece"],
            "test_nll_before": float(F.cross_entropy(test_logits, test_y)),
            "test_nll_after": float(F.cross_entropy(test_logits / t, test_y)),
            "validation_ece_before": calibration_summary(val_logits, val_y, task.multi_label)[
                "ece"
            ],
            "validation_ece_after": calibration_summary(val_logits, val_y, task.multi_label, t)[
                "ece"
            ],
            "accuracy": float((test_logits.argmax(-1) == test_y).float().mean()),
            "n_bins": before["n_bins"],
        }

    _save(args.output, result)

    # -- attributions on test texts -------------------------------------------------------------
    from textloop.data.readers import read_table

    source = splits.summary["test_source"]
    column = run.config.data.text_column
    texts = [r[column] for r in read_table(source).rows[: args.n]]
    started = time.perf_counter()

    def partial(done: list[dict]) -> None:  # numbers so far, for a run on a busy machine
        result["completeness"] = {"steps": steps, "logit": completeness_summary(done)}
        _save(args.output, result)

    expl = _explain_cached(run, texts, steps, args.cache, progress=partial)
    seconds = time.perf_counter() - started
    result["completeness"] = {
        "steps": steps,
        "logit": completeness_summary(expl),
        # meaningless when explanations came from --cache
        "seconds_per_text": None if args.cache else round(seconds / len(texts), 3),
    }
    if args.n_probability:
        prob_cache = args.cache + ".probability" if args.cache else None
        prob_expl = _explain_cached(
            run, texts[: args.n_probability], steps, prob_cache, output="probability"
        )
        result["completeness"]["probability"] = completeness_summary(prob_expl)
    result["deletion"] = deletion_test(
        expl,
        lambda xs: class_probabilities(run, xs, bs),
        task.labels,
        ks=[int(k) for k in args.ks.split(",")],
    )
    result["complete"] = True
    _save(args.output, result)
    print(json.dumps(result, indent=2))


def _save(path: str | None, result: dict) -> None:
    if path:
        tmp = Path(path + ".tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        os.replace(tmp, path)


if __name__ == "__main__":
    main()
