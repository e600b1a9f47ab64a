"""Build the SQuAD 2.0-format files in this folder from paragraphs.txt.

    python examples/qa/build_dataset.py

Paragraphs go to train / validation / test by position (every 6th from the 5th to validation,
every 6th from the 6th to test), so no paragraph has questions in two splits. Each answer's
``answer_start`` is the first occurrence of its text in the paragraph (or the N-th with ``@N``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

HERE = Path(__file__).resolve().parent


def parse(text: str) -> list[dict]:
    """Paragraphs with their questions, from the ``## title`` / ``Q: question || answer`` format."""
    paragraphs: list[dict] = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("# "):
            continue
        if line.startswith("## "):
            paragraphs.append({"title": line[3:].strip(), "context": None, "qas": []})
        elif line.startswith("Q: "):
            question, _, answer = line[3:].partition(" || ")
            para = paragraphs[-1]
            n = len(para["qas"]) + 1
            qid = f"{para['title'].lower().replace(' ', '-')}-{n}"
            if answer.strip() == "-":
                para["qas"].append(
                    {"id": qid, "question": question, "answers": [], "is_impossible": True}
                )
                continue
            answer, _, nth = answer.partition(" @")
            start = -1
            for _ in range(int(nth or 1)):
                start = para["context"].find(answer, start + 1)
            if start < 0:
                raise ValueError(f"{qid}: answer {answer!r} is not in the paragraph")
            para["qas"].append(
                {
                    "id": qid,
                    "question": question,
                    "answers": [{"text": answer, "answer_start": start}],
                    "is_impossible": False,
                }
            )
        else:
            paragraphs[-1]["context"] = line.strip()
    return paragraphs


def main() -> None:
    paragraphs = parse((HERE / "paragraphs.txt").read_text(encoding="utf-8"))
    splits: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
    for i, para in enumerate(paragraphs):
        name = {4: "validation", 5: "test"}.get(i % 6, "train")
        splits[name].append(
            {"title": para["title"], "paragraphs": [{"context": para["context"], "qas": para["qas"]}]}
        )
    for name, data in splits.items():
        out = HERE / f"{name}.json"
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps({"version": "v2.0", "data": data}, indent=1, ensure_ascii=False))
        os.replace(tmp, out)
        n_q = sum(len(p["qas"]) for a in data for p in a["paragraphs"])
        print(f"{out.name}: {len(data)} paragraphs, {n_q} questions")


if __name__ == "__main__":
    main()
