"""Active learning: strategies on constructed cases, and `textloop select` on a tiny run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import toy_rows
from textloop.artifacts.feedback import FeedbackStore
from textloop.artifacts.registry import Registry
from textloop.cli.main import main
from textloop.config import load_config
from textloop.continual.selection import (
    Candidate,
    select,
    select_from_pool,
    select_from_traffic,
    write_queue,
)
from textloop.continual.strategies import STRATEGIES, entropies, margins, rank
from textloop.errors import CheckpointError, ConfigError, DataError
from textloop.runs import load_run
from textloop.training.run import train

LABELS = ["a", "b", "c"]
# row 1: two classes tie (margin 0); row 2: flattest distribution (highest entropy);
# row 3: the lowest top probability (least confident); row 0: a sure thing
PROBS = np.array(
    [
        [0.90, 0.05, 0.05],
        [0.49, 0.49, 0.02],
        [0.50, 0.25, 0.25],
        [0.45, 0.40, 0.15],
    ]
)


def test_each_uncertainty_strategy_picks_its_own_item() -> None:
    assert rank("margin", PROBS, LABELS, 1)[0].index == 1
    assert rank("entropy", PROBS, LABELS, 1)[0].index == 2
    assert rank("least-confidence", PROBS, LABELS, 1)[0].index == 3
    # the sure thing comes last for every uncertainty strategy
    for s in ("margin", "entropy", "least-confidence"):
        assert [p.index for p in rank(s, PROBS, LABELS, 4)][-1] == 0


def test_scores_and_reasons_name_the_numbers() -> None:
    np.testing.assert_allclose(margins(PROBS), [0.85, 0.0, 0.25, 0.05])
    assert entropies(PROBS)[2] == pytest.approx(-(0.5 * np.log(0.5) + 0.5 * np.log(0.25)))
    top = rank("margin", PROBS, LABELS, 4)
    assert top[0].reason == "margin 0.000 between a (0.49) and b (0.49)"
    assert top[1].reason == "margin 0.050 between a (0.45) and b (0.40)"
    assert [p.score for p in top] == sorted(p.score for p in top)


def test_random_is_deterministic_given_the_seed() -> None:
    probs = np.random.default_rng(0).dirichlet(np.ones(3), size=200)
    one = [p.index for p in rank("random", probs, LABELS, 20, seed=1)]
    assert one == [p.index for p in rank("random", probs, LABELS, 20, seed=1)]
    assert one != [p.index for p in rank("random", probs, LABELS, 20, seed=2)]
    assert len(set(one)) == 20


def test_ties_are_broken_by_the_seed_not_by_position() -> None:
    probs = np.tile([[0.5, 0.5, 0.0]], (50, 1))  # every margin is 0
    firsts = {rank("margin", probs, LABELS, 1, seed=s)[0].index for s in range(10)}
    assert len(firsts) > 1
    assert rank("margin", probs, LABELS, 5, seed=3) == rank("margin", probs, LABELS, 5, seed=3)


def test_diverse_spreads_over_clusters_where_margin_does_not() -> None:
    rng = np.random.default_rng(0)
    centres = np.eye(3) * 10.0
    emb = np.concatenate([centres[c] + rng.normal(0, 0.1, (10, 3)) for c in range(3)])
    # cluster 0 holds the ten most uncertain texts, so margin takes its three picks there
    gap = np.concatenate([rng.uniform(0.0, 0.05, 10), rng.uniform(0.2, 0.3, 20)])
    probs = np.stack([(1 + gap) / 2, (1 - gap) / 2, np.zeros(30)], 1)
    by_margin = [p.index // 10 for p in rank("margin", probs, LABELS, 3)]
    assert by_margin == [0, 0, 0]
    picks = rank("diverse", probs, LABELS, 3, seed=0, embeddings=emb)
    assert sorted(p.index // 10 for p in picks) == [0, 1, 2]
    assert all(p.cluster_size == 10 for p in picks)
    assert "cluster" in picks[0].reason and "margin" in picks[0].reason
    assert picks == rank("diverse", probs, LABELS, 3, seed=0, embeddings=emb)


def test_k_above_the_pool_takes_everything() -> None:
    for s in STRATEGIES:
        got = rank(s, PROBS, LABELS, 10, embeddings=np.eye(4))
        assert sorted(p.index for p in got) == [0, 1, 2, 3]


# ---- on a real (tiny) model ----------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tiny_bert: Path, toy_data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("select")
    cfg = load_config(
        None,
        extra={
            "model": str(tiny_bert),
            "output": str(root / "run"),
            "data.train": str(toy_data["train"]),
            "data.validation": str(toy_data["validation"]),
            "train.epochs": 1,  # any trained run will do: nothing here needs it to be good
            "train.lr": 3e-3,
            "train.batch_size": 16,
            "train.max_seq_len": 32,
        },
    )
    train(cfg)
    return root / "run"


def _pool(path: Path, texts: list[str]) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")
    return path


def test_cli_writes_a_queue_without_duplicates_or_labelled_texts(
    tiny_run: Path, toy_data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fresh = [r["text"] for r in toy_rows(40, seed=77)]
    trained = toy_rows(240, seed=1)[0]["text"]  # the first row of the run's train.csv
    pool = _pool(tmp_path / "pool.jsonl", [*fresh, fresh[0], f"  {fresh[1]} ", trained])
    out = tmp_path / "queue.jsonl"
    argv = [
        "select", str(tiny_run), "--pool", str(pool), "--k", "10", "--strategy", "margin",
        "--output", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "dropped 2 exact duplicates" in printed and "skipped 1 already-labelled" in printed
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 10 and [r["rank"] for r in rows] == list(range(1, 11))
    assert len({r["text"] for r in rows}) == 10 and trained not in {r["text"] for r in rows}
    run = load_run(tiny_run)
    assert [r["score"] for r in rows] == sorted(r["score"] for r in rows)
    for r in rows:  # the queue's labels are the model's own predictions, best first
        pred = run.predict([r["text"]], top_k=2)[0]["top_k"]
        assert [p["label"] for p in r["predictions"]] == [p["label"] for p in pred]
        assert r["score"] == pytest.approx(pred[0]["score"] - pred[1]["score"], abs=1e-5)
        assert r["reason"].startswith(f"margin {r['score']:.3f} between {pred[0]['label']}")
        assert r["id"].startswith(str(pool)) and r["prediction_id"] is None
    # the margin queue is the pool's lowest margins: no unpicked text has a smaller one
    picked = {r["text"] for r in rows}
    rest = [p for t, p in zip(fresh, run.predict(fresh, top_k=2)) if t not in picked]
    assert (
        min(p["top_k"][0]["score"] - p["top_k"][1]["score"] for p in rest)
        >= max(r["score"] for r in rows) - 1e-6
    )


def test_same_seed_same_queue_and_ids_from_the_file(tiny_run: Path, tmp_path: Path) -> None:
    pool = tmp_path / "pool.csv"
    rows = toy_rows(30, seed=5)
    pool.write_text("ticket,text\n" + "".join(f"T{i},{r['text']}\n" for i, r in enumerate(rows)))
    queues = [
        select_from_pool(tiny_run, str(pool), k=8, strategy=s, seed=seed).rows
        for s, seed in (("diverse", 3), ("diverse", 3), ("random", 0), ("random", 1))
    ]
    assert queues[0] == queues[1] and queues[2] != queues[3]
    assert all(r["cluster"] is not None for r in queues[0])
    ids = select_from_pool(tiny_run, str(pool), k=3, id_column="ticket").rows
    assert all(r["id"].startswith("T") for r in ids)


def test_from_traffic_skips_feedback_and_keeps_prediction_ids(
    tiny_run: Path, tmp_path: Path
) -> None:
    reg = Registry(tmp_path / "registry")
    reg.add(tiny_run, "reviews")
    reg.promote("reviews", 1, "production")
    store = FeedbackStore(tmp_path / "registry", keep_text=True)
    texts = [r["text"] for r in toy_rows(12, seed=9)]
    ids = store.log_predictions("reviews", 1, texts, [{"label": "pos", "score": 0.6}] * 12, True)
    store.add_feedback("reviews", "neg", prediction_id=ids[0])
    result = select_from_traffic(tmp_path / "registry", "reviews", k=20, strategy="entropy")
    assert result.n_labelled == 1 and len(result.rows) == 11
    assert any("taking them all" in n for n in result.notes)
    assert {r["prediction_id"] for r in result.rows} == set(ids[1:])
    assert all(r["id"] == r["prediction_id"] for r in result.rows)
    assert main(["select", "--registry", str(tmp_path / "registry"), "--name", "reviews",
                 "--from-traffic", "--k", "3", "--output", str(tmp_path / "q.jsonl")]) == 0  # fmt: skip
    assert len((tmp_path / "q.jsonl").read_text().splitlines()) == 3


def test_traffic_without_texts_says_to_log_them(tiny_run: Path, tmp_path: Path) -> None:
    reg = Registry(tmp_path / "registry")
    reg.add(tiny_run, "reviews")
    reg.promote("reviews", 1, "production")
    FeedbackStore(tmp_path / "registry").log_predictions("reviews", 1, ["x y"], [{}], wait=True)
    with pytest.raises(DataError, match="start serve with --log-text"):
        select_from_traffic(tmp_path / "registry", "reviews")


def test_errors_are_one_clear_line(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"text": "   "}) + "\n")
    out = str(tmp_path / "q.jsonl")
    assert main(["select", str(tmp_path / "nope"), "--pool", str(empty), "--output", out]) == 2
    assert "run directory not found" in capsys.readouterr().err
    assert main(["select", str(tiny_run), "--pool", str(empty), "--output", out]) == 2
    assert "empty.jsonl: no usable rows" in capsys.readouterr().err
    assert main(["select", str(tiny_run), "--output", out]) != 0
    assert "--pool FILE" in capsys.readouterr().err
    assert not Path(out).exists()
    with pytest.raises(CheckpointError):
        select_from_pool(tmp_path / "nope", str(empty))
    run = load_run(tiny_run)
    with pytest.raises(ConfigError, match="unknown strategy"):
        select(run, [Candidate("1", "good food", "x")], strategy="smallest")
    only_labelled = [Candidate("1", "good food", "x")]
    with pytest.raises(DataError, match="no candidate left"):
        select(run, only_labelled, labelled=["good   food "])


def test_write_queue_replaces_the_file_whole(tiny_run: Path, tmp_path: Path) -> None:
    run = load_run(tiny_run)
    cands = [Candidate(str(i), r["text"], "x") for i, r in enumerate(toy_rows(6, seed=4))]
    out = tmp_path / "q.jsonl"
    out.write_text("old\n" * 100)
    write_queue(select(run, cands, k=4, top_k=1), out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4 and all(len(r["predictions"]) == 1 for r in rows)
    assert [p.name for p in tmp_path.iterdir()] == ["q.jsonl"]


@pytest.mark.slow  # an ONNX export of the tiny run: ~8 s
def test_an_exported_onnx_run_selects_by_margin_but_not_diverse(
    tiny_run: Path, tmp_path: Path
) -> None:
    pytest.importorskip("onnxruntime")
    from textloop.errors import ModelError
    from textloop.serving.export import export_run

    export_run(tiny_run, tmp_path / "onnx", format="onnx")
    cands = [Candidate(str(i), r["text"], "x") for i, r in enumerate(toy_rows(20, seed=8))]
    onnx = {r["id"]: r["score"] for r in select(load_run(tmp_path / "onnx"), cands, k=20).rows}
    torch_run = {r["id"]: r["score"] for r in select(load_run(tiny_run), cands, k=20).rows}
    for i, score in torch_run.items():  # fp32 ONNX Runtime vs PyTorch kernels: ~1e-6 apart
        assert onnx[i] == pytest.approx(score, abs=1e-4)
    with pytest.raises(ModelError, match="hidden states; an exported"):
        select(load_run(tmp_path / "onnx"), cands, strategy="diverse")
