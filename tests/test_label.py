"""The labelling page: its API over a real server, durability under kill -9, resume, export and
import (training files, Label Studio), and the loop back into train and update."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

httpx = pytest.importorskip("httpx")

from textloop.artifacts.feedback import FeedbackStore  # noqa: E402
from textloop.artifacts.registry import Registry  # noqa: E402
from textloop.cli.main import main  # noqa: E402
from textloop.runs import load_run  # noqa: E402
from textloop.serving.label_queue import read_queue  # noqa: E402
from textloop.serving.label_session import LabelSession, highlight_segments  # noqa: E402
from textloop.serving.label_studio import (  # noqa: E402
    export_labels,
    import_labels,
    read_label_studio,
)

from .conftest import REPO, toy_rows  # noqa: E402

KEY = "label-key-for-tests-0123456789"
XSS = (
    'the food <script>document.title="pwned"</script>'
    "<img src=x id=injected onerror=\"document.title='pwned'\"> was great"
)


def write_queue(path: Path, texts: list[str], with_predictions: bool = True) -> Path:
    """A queue as `textloop select` writes it: the first rows carry predictions, the rest not."""
    with path.open("w", encoding="utf-8") as f:
        for i, text in enumerate(texts):
            row: dict[str, Any] = {"id": f"q{i}", "text": text, "reason": "margin 0.0{i}"}
            if with_predictions and i % 2 == 0:
                row["predictions"] = [
                    {"label": "neg", "score": 0.4},
                    {"label": "pos", "score": 0.6},
                ]
                row["score"] = 0.2
            f.write(json.dumps(row) + "\n")
    return path


QUEUE_TEXTS = [
    "the staff was lovely",
    "the room was awful and dreadful",
    XSS,
    "i think the price was fine",
    "the music was terrible",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_cli_server(args: list[str], port: int) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "textloop", "label", *args, "--port", str(port)]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0]
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
            return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("the labelling server did not start")


def test_page_api_auth_decisions_escaping_and_kill9_durability(label_run, tmp_path):
    queue = write_queue(tmp_path / "queue.jsonl", QUEUE_TEXTS)
    store_path = tmp_path / "labels.sqlite"
    (tmp_path / "key.txt").write_text(KEY + "\n")
    port = free_port()
    args = [str(queue), "--run", str(label_run), "--store", str(store_path)]
    args += ["--api-key-file", str(tmp_path / "key.txt"), "--user", "ana", "--explain-steps", "8"]
    proc = start_cli_server(args, port)
    url, auth = f"http://127.0.0.1:{port}", {"X-API-Key": KEY}
    try:
        page = httpx.get(url + "/")
        assert page.status_code == 200 and '<form id="login"' in page.text
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe" not in csp
        assert "the staff" not in page.text  # the page holds no data; the API behind the key does
        for headers in ({}, {"X-API-Key": "wrong-key-wrong-key-wrong"}):
            r = httpx.get(url + "/api/state", headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        assert httpx.post(url + "/api/label", json={"index": 0, "label": "pos"}).status_code == 401
        assert httpx.get(url + "/api/highlights/0").status_code == 401

        state = httpx.get(url + "/api/state", headers=auth).json()
        assert state["item"]["index"] == 0 and state["user"] == "ana"
        assert state["progress"] == {"labelled": 0, "skipped": 0, "total": 5}
        assert state["shortcuts"] == [
            {"label": "neg", "keys": ["1", "n"]},
            {"label": "pos", "keys": ["2", "p"]},
        ]
        assert [s["label"] for s in state["item"]["suggestions"]] == ["pos", "neg"]  # the queue's

        def post(path: str, body: dict[str, Any] | None = None) -> httpx.Response:
            return httpx.post(url + path, json=body, headers=auth, timeout=30)

        r = post("/api/label", {"index": 0, "label": "pos"})
        assert r.status_code == 200 and r.json()["state"]["item"]["index"] == 1
        assert post("/api/label", {"index": 0, "label": "neg"}).status_code == 409  # done already
        # item 1 has no predictions in the queue: the run suggests, with its own scores
        expected = load_run(label_run).predict([QUEUE_TEXTS[1]], top_k=5)[0]["top_k"]
        assert r.json()["state"]["item"]["suggestions"] == expected
        assert post("/api/skip", {"index": 1}).json()["state"]["item"]["index"] == 2
        back = post("/api/undo").json()["state"]  # undo the skip: item 1 is current again
        assert back["item"]["index"] == 1 and back["progress"]["skipped"] == 0
        for bad in ("<b>", "  ", "a\u200bb"):
            r = post("/api/label", {"index": 1, "label": bad})
            assert r.status_code == 422, bad
        r = post("/api/label", {"index": 1, "label": " refund_request "})  # a new label
        assert r.status_code == 200
        new = r.json()["state"]
        assert new["shortcuts"][-1] == {"label": "refund_request", "keys": ["3", "r"]}
        assert new["item"]["text"] == XSS  # JSON carries the text as it is; the page escapes
        assert r.headers["content-type"].startswith("application/json")
        pieces = httpx.get(url + "/api/highlights/2", headers=auth, timeout=60).json()["segments"]
        assert "".join(p["text"] for p in pieces) == XSS
        assert any(p["level"] != 0 for p in pieces)
        assert post("/api/undo").json()["state"]["item"]["index"] == 1  # the new label undone
        rows = FeedbackStore(store_path).feedback("reviews")
        assert [(r["label"], r["user"]) for r in rows] == [("pos", "ana")]
        assert rows[0]["predicted_label"] == "pos"  # what the model suggested is kept too

        r = post("/api/label", {"index": 1, "label": "neg"})
        assert r.status_code == 200
        os.kill(proc.pid, signal.SIGKILL)  # right after the 200: the label must be on disk
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    rows = FeedbackStore(store_path).feedback("reviews")
    assert [(r["text"], r["label"]) for r in rows] == [
        (QUEUE_TEXTS[0], "pos"),
        (QUEUE_TEXTS[1], "neg"),
    ]

    # a new session over the same store continues where the last one stopped
    session = LabelSession(
        read_queue(str(queue)), load_run(label_run), FeedbackStore(store_path), "reviews", "bo"
    )
    assert session.current() == 2 and session.state()["progress"]["labelled"] == 2


def test_public_bind_without_key_is_refused(label_run, tmp_path, capsys):
    queue = write_queue(tmp_path / "queue.jsonl", QUEUE_TEXTS[:2])
    code = main(["label", str(queue), "--run", str(label_run), "--host", "0.0.0.0"])
    assert code == 2 and "without an API key" in capsys.readouterr().err
    short = tmp_path / "short.txt"
    short.write_text("tooshort")
    code = main(["label", str(queue), "--run", str(label_run), "--api-key-file", str(short)])
    assert code == 2 and "at least 16" in capsys.readouterr().err


def test_highlight_segments_cover_the_text_with_signed_shades():
    words = [
        {"word": "food", "start": 4, "end": 8, "attribution": -0.5},
        {"word": "great", "start": 13, "end": 18, "attribution": 1.0},
    ]
    pieces = highlight_segments("the food was great!", words)
    assert "".join(p["text"] for p in pieces) == "the food was great!"
    assert [(p["text"], p["level"]) for p in pieces if p["level"]] == [("food", -2), ("great", 3)]


def test_queue_reading_takes_any_text_file_and_says_what_is_wrong(tmp_path):
    txt = tmp_path / "texts.txt"
    txt.write_text("first text\n\n  \nsecond text\n")  # blank lines are not texts
    assert [i.text for i in read_queue(str(txt))] == ["first text", "second text"]
    bad = tmp_path / "bad.csv"
    bad.write_text("review\nnice\n")
    with pytest.raises(Exception, match=r"no column 'text'.*review.*--text-column"):
        read_queue(str(bad))
    assert read_queue(str(bad), "review")[0].text == "nice"


# ---- export / import -----------------------------------------------------------------------
def test_label_studio_round_trip_and_training_files(tmp_path):
    store = FeedbackStore(tmp_path / "labels.sqlite")
    write_queue(tmp_path / "queue.jsonl", QUEUE_TEXTS)
    store.add_feedback("m", "neg", QUEUE_TEXTS[0], user="ana", predicted_label="pos")
    store.add_feedback("m", "pos", QUEUE_TEXTS[0], user="bo")  # relabelled: the latest wins
    store.add_feedback("m", "neg", QUEUE_TEXTS[1], user="ana")
    store.add_feedback("m", "pos", "a text from the served traffic", user="cy")

    out = tmp_path / "ls.json"
    assert main(["label", "export", "--store", str(store.path), "--name", "m",
                 "--format", "label-studio", "--output", str(out),
                 "--queue", str(tmp_path / "queue.jsonl")]) == 0  # fmt: skip
    tasks = json.loads(out.read_text())
    assert len(tasks) == 6 and [t["id"] for t in tasks] == [1, 2, 3, 4, 5, 6]
    first = tasks[0]
    assert first["data"] == {"text": QUEUE_TEXTS[0]}
    assert first["annotations"][0]["result"] == [
        {"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": ["pos"]}}
    ]
    assert first["predictions"][0]["result"][0]["value"]["choices"] == ["pos"]
    assert first["predictions"][0]["score"] == 0.6 and first["meta"]["labelled_by"] == "bo"
    assert "annotations" not in tasks[2] and tasks[2]["predictions"]  # unlabelled, predicted
    assert tasks[5]["data"]["text"] == "a text from the served traffic"
    assert "predictions" not in tasks[5]  # no suggestion was kept for it

    # what Label Studio gives back: a cancelled annotation and a two-choice one are left out
    tasks[2]["annotations"] = [{"result": [], "was_cancelled": True}]
    tasks[3]["annotations"] = [{"completed_by": {"id": 7, "email": "dee@example.org"},
                                "result": [{"type": "choices", "value": {"choices": ["pos"]}}]}]  # fmt: skip
    tasks[4]["annotations"] = [
        {"result": [{"type": "choices", "value": {"choices": ["pos", "neg"]}}]}
    ]
    out.write_text(json.dumps(tasks))
    got = read_label_studio(out)
    assert got.left_out == {"not annotated": 1, "not exactly one choice": 1}
    fresh = FeedbackStore(tmp_path / "fresh.sqlite")
    assert import_labels(got, fresh, "m", user="importer") == 4
    assert import_labels(read_label_studio(out), fresh, "m", None) == 0  # twice adds nothing
    rows = {r["text"]: (r["label"], r["user"]) for r in fresh.feedback("m")}
    assert rows[QUEUE_TEXTS[0]] == ("pos", "importer")
    assert rows[QUEUE_TEXTS[3]] == ("pos", "dee@example.org")

    assert main(["label", "import", str(out), "--output", str(tmp_path / "ls.csv")]) == 0
    with (tmp_path / "ls.csv").open(newline="") as f:
        assert len(list(csv.DictReader(f))) == 4
    with pytest.raises(Exception, match=r"name the file \.csv"):
        export_labels(store, "m", tmp_path / "x.jsonl", "csv")
    assert export_labels(store, "m", tmp_path / "train.csv", "csv") == 3
    with (tmp_path / "train.csv").open(newline="") as f:
        assert next(csv.DictReader(f)) == {"text": QUEUE_TEXTS[0], "label": "pos"}


def test_exported_labels_train_a_model_and_feed_update(
    label_run, tiny_bert, toy_data, tmp_path, capsys
):
    store = FeedbackStore(tmp_path / "labels.sqlite")
    for row in toy_rows(160, seed=11):  # labels given on the page, as the store keeps them
        store.add_feedback("reviews", row["label"], row["text"], user="ana")
    labelled = tmp_path / "labelled.jsonl"
    assert main(["label", "export", "--store", str(store.path), "--name", "reviews",
                 "--output", str(labelled)]) == 0  # fmt: skip
    out = tmp_path / "run"
    args = ["train", "--model", str(tiny_bert), "--train", str(labelled)]
    args += ["--validation", str(toy_data["validation"]), "--epochs", "1"]
    args += ["--batch-size", "16", "--max-seq-len", "32", "--output", str(out), "--quiet"]
    assert main(args) == 0  # the labels are the training set: every text, both classes
    capsys.readouterr()
    assert load_run(out).task.labels == ["neg", "pos"]
    assert json.loads((out / "metrics.json").read_text())["train"]["steps"] == 160 // 16
    reg = Registry(tmp_path / "registry")
    reg.add(label_run, "reviews")
    reg.promote("reviews", 1)
    code = main(["update", "--registry", str(reg.root), "--name", "reviews",
                 "--new-data", str(labelled), "--dry-run", "--json"])  # fmt: skip
    assert code == 0
    plan = json.loads(capsys.readouterr().out)["plan"]
    assert plan["n_new"] == 160 and plan["new_labels"] == []  # every label read, none unknown


def test_a_store_from_before_labels_had_users_is_migrated_in_place(tmp_path):
    import sqlite3

    db = tmp_path / "old.sqlite"
    with sqlite3.connect(db) as con:  # the feedback table as earlier versions wrote it
        con.execute(
            "CREATE TABLE feedback (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, "
            "model TEXT NOT NULL, prediction_id TEXT, text TEXT NOT NULL, text_hash TEXT NOT NULL, "
            "label TEXT NOT NULL, predicted_label TEXT)"
        )
        con.execute("INSERT INTO feedback VALUES (1, 0, 'm', NULL, 'old text', 'h', 'pos', NULL)")
    store = FeedbackStore(db)
    fid = store.add_feedback("m", "neg", "new text", user="ana")
    assert [(r["text"], r["user"]) for r in store.feedback("m")] == [
        ("old text", None),
        ("new text", "ana"),
    ]
    assert store.delete_feedback("m", fid) and not store.delete_feedback("m", fid)
    assert not store.delete_feedback("other", 1)  # only the named model's rows
    assert len(store.feedback("m")) == 1


def test_texts_from_the_traffic_log_stay_tied_to_their_prediction(label_run, tmp_path):
    store = FeedbackStore(tmp_path / "registry", keep_text=True)
    texts = ["the food was lovely", "the view was poor"]
    served = [{"label": "neutral", "score": 0.7}] * 2  # a label the run cannot suggest
    ids = store.log_predictions("reviews", 1, texts, served, wait=True)
    queue = tmp_path / "queue.jsonl"
    queue.write_text(
        json.dumps({"id": "a", "text": texts[0], "prediction_id": ids[0]})
        + "\n"
        + json.dumps({"id": "b", "text": texts[1], "prediction_id": "not-in-this-store"})
        + "\n"
    )
    session = LabelSession(read_queue(str(queue)), load_run(label_run), store, "reviews", "ana")
    session.label(0, "pos")
    session.label(1, "neg")  # an id this store never logged: the label is kept without it
    rows = store.feedback("reviews")
    assert (rows[0]["prediction_id"], rows[0]["predicted_label"]) == (ids[0], "neutral")
    assert rows[1]["prediction_id"] is None and rows[1]["predicted_label"] in ("pos", "neg")
