"""Experiment tracking callbacks: MLflow on a local store, TensorBoard event files, a broken store
(one warning, the run goes on), and a missing library (a clear error before anything is written)."""

from __future__ import annotations

import logging
import struct
import sys
from pathlib import Path

import pytest

from textloop.cli.main import main
from textloop.config import load_config
from textloop.training.run import train


def _cfg(tiny_bert: Path, toy_data: dict[str, Path], out: Path, track: str):
    return load_config(
        None,
        extra={
            "model": str(tiny_bert),
            "data.train": str(toy_data["train"]),
            "data.validation": str(toy_data["validation"]),
            "output": str(out),
            "track": track,
            "train.epochs": 2,
            "train.lr": 3e-3,
            "train.batch_size": 16,
            "train.eval_every_steps": 0,  # each epoch: steps 15 and 30
            "train.max_seq_len": 32,
            "train.precision": "fp32",
        },
    )


def test_mlflow_run_shows_what_train_logged(tiny_bert, toy_data, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)  # MLflow's artifacts go under ./mlruns
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    out = tmp_path / "run"
    train(_cfg(tiny_bert, toy_data, out, "mlflow"))

    (found,) = mlflow.search_runs(experiment_names=["textloop"], output_format="list")
    run = mlflow.get_run(found.info.run_id)  # a local store: no server
    assert run.info.status == "FINISHED" and run.info.run_name == str(out)
    params = run.data.params
    assert params["train.lr"] == "0.003" and params["train.batch_size"] == "16"
    assert params["model"] == str(tiny_bert) and "generation.top_p" not in params
    metrics = run.data.metrics
    assert metrics["final/validation/accuracy"] >= 0.0 and metrics["steps"] == 30
    history = mlflow.tracking.MlflowClient().get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in history] == [10, 20, 30]  # every logged step
    evals = mlflow.tracking.MlflowClient().get_metric_history(run.info.run_id, "validation/loss")
    assert [m.step for m in evals] == [15, 30]  # every evaluation
    artifacts = {a.path for a in mlflow.tracking.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"report.md", "metrics.json", "config.yaml", "model"} <= artifacts


def test_a_broken_tracking_store_is_one_warning(tiny_bert, toy_data, tmp_path, monkeypatch, caplog):
    pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{blocker / 'mlflow.db'}")  # unwritable
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="textloop"):
        run = train(_cfg(tiny_bert, toy_data, out, "mlflow"))
    assert run.metrics["train"]["steps"] == 30 and (out / "model").is_dir()
    warnings = [r.getMessage() for r in caplog.records if "tracking failed" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("mlflow tracking failed at start")


def _scalars(event_file: Path) -> dict[str, list[int]]:
    """Scalar tag -> steps, read from a TensorBoard event file (TFRecord framing)."""
    from tensorboardX.proto import event_pb2

    data, found, i = event_file.read_bytes(), {}, 0
    while i < len(data):
        (n,) = struct.unpack("<Q", data[i : i + 8])
        event = event_pb2.Event.FromString(data[i + 12 : i + 12 + n])
        i += 12 + n + 4  # length, its CRC, the record, its CRC
        for v in event.summary.value:
            found.setdefault(v.tag, []).append(event.step)
    return found


def test_tensorboard_writes_event_files_in_the_run(tiny_bert, toy_data, tmp_path):
    pytest.importorskip("tensorboardX")
    out = tmp_path / "run"
    train(_cfg(tiny_bert, toy_data, out, "tensorboard"))
    (events,) = (out / "tensorboard").glob("events.out.tfevents.*")
    tags = _scalars(events)
    assert tags["train/loss"] == [10, 20, 30] and tags["validation/accuracy"] == [15, 30]
    assert "final/validation/accuracy" in tags
    assert list((out / "tensorboard" / "hparams").glob("events.out.tfevents.*"))


def test_a_missing_tracking_library_is_a_clear_error(
    tiny_bert, toy_data, tmp_path, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # as if not installed
    out = tmp_path / "run"
    args = ["train", "--model", str(tiny_bert), "--train", str(toy_data["train"])]
    assert main([*args, "--output", str(out), "--track", "tensorboard", "--quiet"]) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert (
        err == "error: --track tensorboard needs the tensorboardX package: pip install tensorboardX"
    )
    assert not out.exists()
