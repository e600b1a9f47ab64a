"""NER attribution benchmark: completeness per entity and the cost of batching entities.

    HF_HUB_OFFLINE=1 python bench/trust_ner.py --run RUN_DIR --data FILE [--n 40] [--steps 50]

RUN_DIR is a finished NER run (only read); FILE a NER data file (CoNLL / JSONL) whose first
``--n`` sentences are explained. Prints one JSON object:

- ``completeness``: the relative completeness error of every predicted entity's explanation
  (``faithfulness.completeness_summary``) at ``--steps``;
- ``timing``: wall and CPU seconds per entity with all entities of all texts batched together
  (``batch_size`` 16) and, side by side on the same texts, one entity per attribution call
  (``batch_size`` 1).
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _timed(run, texts: list[str], steps: int, batch_size: int) -> tuple[list[dict], dict]:
    from textloop.evaluation.explain_spans import explain_spans

    wall, cpu = time.perf_counter(), time.process_time()
    out = explain_spans(run, texts, steps=steps, batch_size=batch_size)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    n = sum(len(e["entities"]) for e in out)
    return out, {
        "batch_size": batch_size,
        "entities": n,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "wall_s_per_entity": round(wall / max(1, n), 3),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="finished NER run directory")
    p.add_argument("--data", required=True, help="NER data file (CoNLL or JSONL)")
    p.add_argument("--n", type=int, default=40, help="sentences to explain")
    p.add_argument("--steps", type=int, default=50)
    args = p.parse_args()

    import torch

    from textloop.evaluation.faithfulness import completeness_summary
    from textloop.runs import load_run
    from textloop.tasks.ner.data import read_ner

    run = load_run(args.run)
    columns = run.config.data.model_dump()
    texts = [s.text for s in read_ner(args.data, columns)[: args.n]]
    batched, t_batched = _timed(run, texts, args.steps, 16)
    single, t_single = _timed(run, texts, args.steps, 1)
    entities = [x for e in batched for x in e["entities"]]
    same = all(
        abs(a["completeness"]["sum_attributions"] - b["completeness"]["sum_attributions"]) < 1e-3
        for e, f in zip(batched, single)
        for a, b in zip(e["entities"], f["entities"])
    )
    print(
        json.dumps(
            {
                "run": args.run,
                "data": args.data,
                "texts": len(texts),
                "entities": len(entities),
                "texts_without_entities": sum(1 for e in batched if not e["entities"]),
                "steps": args.steps,
                "threads": torch.get_num_threads(),
                "completeness": completeness_summary(entities),
                "timing": {"batched": t_batched, "one_entity_per_call": t_single},
                "batched_equals_single": same,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
