"""Take docs/img/label-page.png: the labelling page in the same headless Chromium as the tests.

    HF_HUB_OFFLINE=1 PYTHONPATH=src python -m tests.label_screenshot [OUTPUT.png]

Builds the tests' tiny BERT, trains it on the toy pos/neg task, serves a short queue and
photographs the page after one label, with the word highlights in.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from textloop.artifacts.feedback import FeedbackStore
from textloop.config import load_config
from textloop.runs import load_run
from textloop.serving.label_app import create_label_app
from textloop.serving.label_queue import read_queue
from textloop.serving.label_session import LabelSession
from textloop.training.run import train

from .browser import headless_chromium, serve_in_thread
from .conftest import REPO, build_tiny_bert, toy_rows, write_csv

KEY = "screenshot-key-0123456789"
QUEUE = [
    ("t-0193", "the staff was lovely", "margin 0.04"),
    (
        "t-0871",
        "overall i think the food was really excellent but the price was poor",
        "margin 0.02",
    ),
    ("t-0412", "the room was quite nasty", "margin 0.07"),
]


def main(output: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        rows = toy_rows(400, seed=123)
        model = build_tiny_bert(base / "bert", [r["text"] for r in rows], 300, 128)
        data = {s: write_csv(base / f"{s}.csv", toy_rows(n, seed)) for s, n, seed in
                (("train", 240, 1), ("validation", 60, 2))}  # fmt: skip
        cfg = load_config(
            None,
            extra={"model": str(model), "output": str(base / "run"),
                   "data.train": str(data["train"]), "data.validation": str(data["validation"]),
                   "train.epochs": 6, "train.lr": 3e-3, "train.batch_size": 16,
                   "train.max_seq_len": 32, "train.precision": "fp32"},
        )  # fmt: skip
        train(cfg)
        queue = base / "queue.jsonl"
        queue.write_text(
            "".join(json.dumps({"id": i, "text": t, "reason": r}) + "\n" for i, t, r in QUEUE)
        )
        store = FeedbackStore(base / "labels.sqlite")
        session = LabelSession(
            read_queue(str(queue)), load_run(base / "run"), store, "reviews", "ana", top_k=3
        )
        session.label(0, "pos")
        session.label(len(QUEUE) - 1, "complaint")  # a label typed in: it gets its own keys
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        app = create_label_app(session, KEY)
        with serve_in_thread(app) as url, headless_chromium(1000, 840) as driver:
            driver.get(f"{url}/#key={KEY}")
            wait = WebDriverWait(driver, 60)
            wait.until(lambda d: d.find_element(By.ID, "legend").text.startswith("green"))
            output.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(output))
    print(f"wrote {output}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "docs" / "img" / "label-page.png")
