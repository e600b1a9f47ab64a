"""A customer-service assistant from two textloop runs: an intent classifier routes each message.

    nice -n 19 .venv/bin/python examples/customer_service/assistant.py train      # both runs
    nice -n 19 .venv/bin/python examples/customer_service/assistant.py demo       # scripted chat
    nice -n 19 .venv/bin/python examples/customer_service/assistant.py chat       # type messages
    nice -n 19 .venv/bin/python examples/customer_service/assistant.py labelled   # for update

- known intent, confident  -> a templated answer for that intent;
- anything else            -> the fine-tuned assistant (SmolLM2 + LoRA on chatterbot tech support);
- unsure classifier        -> also flagged for a human and logged to the feedback file (JSONL),
  ready to be labelled and fed to the continual loop (`textloop update`); `labelled` writes
  the rows a human labelled as the {"text", "label"} JSONL that `textloop update` reads.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SNIPS = REPO.parent / "shared" / "data" / "snips"

# answers for the intents the classifier knows (SNIPS here; replace with your own intents)
TEMPLATES = {
    "GetWeather": "I can check the forecast for you: which city and day do you mean?",
    "BookRestaurant": "Happy to book a table. For how many people, where, and at what time?",
    "PlayMusic": "Starting your music now. Say 'next' to skip a track.",
    "AddToPlaylist": "Done: I added it to your playlist.",
    "RateBook": "Thanks, your rating has been saved.",
    "SearchCreativeWork": "Here is what I found in our catalogue for that title.",
    "SearchScreeningEvent": "These are the next screenings near you.",
}
DEMO = [
    "what will the weather be like in boston tomorrow",
    "book a table for four at an italian place tonight",
    "my laptop won't turn on",
    "the wifi keeps dropping every few minutes",
    "play something by miles davis",
    "hello, can you help me",
]


def snips_with_other(out: Path) -> dict[str, str]:
    """SNIPS plus an ``Other`` intent: the user turns of chatterbot-corpus (English).

    A classifier trained on the seven SNIPS intents alone must put every message in one of them,
    often with a high score ("the wifi keeps dropping" -> GetWeather 0.99); the ``Other`` class
    gives out-of-scope messages somewhere to go (the assistant). Every 5th ``Other`` text goes
    to validation, so the fitted temperature sees it too. Returns the ``data`` config section.
    """
    from textloop.data.readers import read_table
    from textloop.tasks.generation_data import read_chatterbot

    convs = read_chatterbot("builtin:chatterbot:english")
    texts = {m["content"] for conv in convs.items for m in conv if m["role"] == "user"}
    other = [{"text": t, "label": "Other"} for t in sorted(texts)]
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, file, extra in (
        ("train", "train.tsv", [r for i, r in enumerate(other) if i % 5]),
        ("validation", "dev.tsv", other[::5]),
    ):
        rows = [
            {"text": r["text"], "label": r["label"]} for r in read_table(str(SNIPS / file)).rows
        ]
        path = out / f"{split}.jsonl"
        with path.open("w", encoding="utf-8") as f:
            for row in rows + extra:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        paths[split] = str(path)
    return paths


def train_intents(args: argparse.Namespace) -> None:
    """Train the intent classifier: MiniLM on SNIPS (or ``--intents FILE``), calibrated."""
    from textloop.config import build_config
    from textloop.training.callbacks import LogLines
    from textloop.training.run import train

    if args.intents:  # your own text,label file; validation is a stratified split of it
        data = {"train": args.intents}
    elif (SNIPS / "train.tsv").is_file():
        data = snips_with_other(args.runs / "intent_data")
    else:
        sys.exit(f"SNIPS data not found at {SNIPS}; pass your own intents with --intents FILE")
    clf = build_config(
        {
            "task": "classification",
            "model": "embedded:minilm",
            "output": str(args.runs / "intents"),
            "overwrite": True,
            "data": data,
            "train": {
                "max_steps": args.intent_steps,
                "batch_size": 32,
                "max_seq_len": 48,
                "lr": 1e-4,
                "eval_every_steps": args.intent_steps,
                "class_weights": "balanced",  # Other is ~5% of the rows
                # the router compares scores with --confident / --unsure: they must be calibrated
                "temperature_scaling": True,
            },
        }
    )
    run = train(clf, callbacks=[LogLines()])
    m = run.metrics["validation"]
    print("intent classifier:", json.dumps({k: m.get(k) for k in ("accuracy", "macro_f1", "ece")}))


def train_assistant(args: argparse.Namespace) -> None:
    """Train the assistant: SmolLM2 + LoRA on the chatterbot tech-support dialogues."""
    from textloop.config import build_config
    from textloop.training.callbacks import LogLines
    from textloop.training.run import train

    bot = build_config(
        {
            "task": "generation",
            "model": "embedded:smollm2",
            "output": str(args.runs / "assistant"),
            "overwrite": True,
            "data": {"train": "builtin:chatterbot:english:tech_support", "val_fraction": 0.03},
            "train": {
                "max_steps": args.assistant_steps,
                "batch_size": 8,
                "max_seq_len": 128,
                "lr": 3e-4,
                "eval_batch_size": 16,
            },
            "lora": {"r": 8, "alpha": 16, "targets": ["q_proj", "k_proj", "v_proj", "o_proj"]},
            "generation": {
                "system_prompt": "You are a concise customer-support assistant.",
                "eval_samples": 8,
                "eval_max_new_tokens": 40,
                "max_new_tokens": 60,
                "repetition_penalty": 1.2,
            },
        }
    )
    run = train(bot, callbacks=[LogLines()])
    m = run.metrics["validation"]
    print("assistant:", json.dumps({k: m.get(k) for k in ("perplexity", "chrf", "rougeL")}))


class Router:
    """Route a message to a template or the generation model; flag and log unsure cases."""

    def __init__(self, runs: Path, feedback: Path, confident: float, unsure: float) -> None:
        from textloop.runs import load_run

        self.intents = load_run(runs / "intents")
        self.assistant = load_run(runs / "assistant")
        self.feedback, self.confident, self.unsure = feedback, confident, unsure

    def answer(self, message: str) -> dict[str, Any]:
        pred = self.intents.predict([message])[0]
        intent, score = pred["label"], float(pred["score"])
        out: dict[str, Any] = {"message": message, "intent": intent, "score": round(score, 4)}
        if score >= self.confident and intent in TEMPLATES:
            out.update(route="template", answer=TEMPLATES[intent], flagged=False)
        else:
            gen = self.assistant.predict([message])[0]
            unsure = self.unsure <= score < self.confident  # a confident Other is not unsure
            out.update(route="assistant", answer=gen["text"], flagged=unsure)
        if out["flagged"]:  # maybe a known intent, maybe not: a human decides, the loop learns
            log_flagged(self.feedback, out)
        return out


def log_flagged(feedback: Path, out: dict[str, Any]) -> None:
    """Append a flagged answer to the feedback JSONL, ``label`` empty for a human to fill.

    The ``text`` and ``label`` keys are the columns ``textloop update --new-data`` reads by
    default; the other keys are context for the human and are ignored by the update.
    """
    record = {
        "text": out["message"],
        "label": None,
        "predicted": out["intent"],
        "score": out["score"],
        "route": out["route"],
        "answer": out["answer"],
        "time": round(time.time(), 3),
    }
    feedback.parent.mkdir(parents=True, exist_ok=True)
    with feedback.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")


def export_labelled(feedback: Path, output: Path) -> int:
    """Write the rows a human labelled as ``{"text", "label"}`` JSONL for ``textloop update``.

    Rows whose ``label`` is still empty are skipped; for a text flagged more than once the last
    label wins (like ``textloop feedback export``). Written to a temp file, then renamed.
    Returns the number of rows written.
    """
    latest: dict[str, str] = {}
    with feedback.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                sys.exit(f"{feedback}:{n}: not a JSON object; fix or delete that line")
            label = row.get("label")
            if isinstance(label, str) and label.strip():
                latest.pop(row["text"], None)  # keep the order of the last labelling
                latest[row["text"]] = label.strip()
    tmp = output.with_name(output.name + ".tmp")
    output.parent.mkdir(parents=True, exist_ok=True)
    with tmp.open("w", encoding="utf-8") as f:
        for text, label in latest.items():
            f.write(json.dumps({"text": text, "label": label}, ensure_ascii=False) + "\n")
    os.replace(tmp, output)
    return len(latest)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("command", choices=["train", "demo", "chat", "labelled"])
    ap.add_argument("--runs", type=Path, default=REPO / "runs" / "customer_service")
    ap.add_argument("--intents", help="your own intents file (text, label columns)")
    ap.add_argument("--only", choices=["intents", "assistant"], help="train: just this run")
    ap.add_argument("--intent-steps", type=int, default=300)
    ap.add_argument("--assistant-steps", type=int, default=60)
    ap.add_argument("--confident", type=float, default=0.9, help="template at or above this score")
    ap.add_argument("--unsure", type=float, default=0.5, help="flag scores in [unsure, confident)")
    ap.add_argument("--feedback", type=Path, default=None, help="JSONL of flagged messages")
    ap.add_argument("--output", type=Path, default=None, help="labelled: JSONL to write")
    args = ap.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    if args.command == "train":
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S"
        )
        if args.only in (None, "intents"):
            train_intents(args)
        if args.only in (None, "assistant"):
            train_assistant(args)
        return
    feedback = args.feedback or args.runs / "feedback.jsonl"
    if args.command == "labelled":
        output = args.output or args.runs / "feedback.labelled.jsonl"
        if not feedback.is_file():
            sys.exit(f"{feedback}: no feedback file; run demo or chat first")
        n = export_labelled(feedback, output)
        print(
            f"wrote {n} labelled rows to {output}; then: textloop update --registry REGISTRY "
            f"--name NAME --new-data {output}"
        )
        return
    router = Router(args.runs, feedback, args.confident, args.unsure)
    messages = DEMO if args.command == "demo" else (line.strip() for line in sys.stdin)
    for message in messages:
        if message:
            print(json.dumps(router.answer(message), ensure_ascii=False), flush=True)


if __name__ == "__main__":
    main()
