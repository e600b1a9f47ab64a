"""The CLI end to end on a tiny model, and every bad-input case: one line, exit 2, nothing written."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from textloop.cli.main import main

from .conftest import REPO, toy_rows, write_csv

pytestmark = pytest.mark.integration


def base_args(tiny_bert: Path, toy_data: dict[str, Path], out: Path) -> list[str]:
    return [
        "train",
        "--model",
        str(tiny_bert),
        "--train",
        str(toy_data["train"]),
        "--validation",
        str(toy_data["validation"]),
        "--output",
        str(out),
        "--epochs",
        "4",
        "--lr",
        "3e-3",
        "--batch-size",
        "16",
        "--max-seq-len",
        "32",
        "--quiet",
    ]


def test_cli_train_evaluate_predict(tiny_bert, toy_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(
            [
                *base_args(tiny_bert, toy_data, out),
                "--test",
                str(toy_data["test"]),
                "--set",
                "train.warmup_ratio=0.1",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "test: accuracy" in printed and str(out) in printed and "report.md" in printed

    assert main(["evaluate", str(out), "--data", str(toy_data["test"]), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["n"] == 60 and metrics["accuracy"] >= 0.85

    assert main(["predict", str(out), "the room was superb", "--top-k", "2"]) == 0
    line = json.loads(capsys.readouterr().out.strip())
    assert line["label"] == "pos" and len(line["top_k"]) == 2

    new = tmp_path / "new.jsonl"
    new.write_text("\n".join(json.dumps({"text": r["text"]}) for r in toy_rows(10, seed=8)) + "\n")
    preds = tmp_path / "preds.jsonl"
    assert main(["predict", str(out), "--input", str(new), "--output", str(preds)]) == 0
    rows = [json.loads(x) for x in preds.read_text().splitlines()]
    assert len(rows) == 10 and all(r["label"] in {"pos", "neg"} for r in rows)
    assert not list(tmp_path.glob("*.tmp"))


def test_console_script_runs_as_module(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "textloop",
            "validate",
            str(REPO / "configs/classification/bbc-news_full.yaml"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )
    assert proc.returncode == 0, proc.stderr
    assert "ok:" in proc.stdout


def _fails(args: list[str], capsys, *needles: str) -> str:
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    msg = err.splitlines()[-1]
    assert msg.startswith("error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in msg, msg
    return msg


def test_missing_file(tiny_bert, toy_data, tmp_path, capsys):
    args = base_args(tiny_bert, toy_data, tmp_path / "run")
    args[args.index("--train") + 1] = str(tmp_path / "nope.csv")
    _fails(args, capsys, "not found", "nope.csv")
    assert not (tmp_path / "run").exists()


def test_unknown_column_lists_columns(tiny_bert, toy_data, tmp_path, capsys):
    args = [*base_args(tiny_bert, toy_data, tmp_path / "run"), "--text-column", "review"]
    _fails(args, capsys, "'review' not found", "columns are: text, label", "--text-column")
    assert not (tmp_path / "run").exists()


def test_empty_and_non_utf8_rows_named_then_droppable(tiny_bert, toy_data, tmp_path, capsys):
    rows = toy_rows(120, seed=4)
    rows[5]["text"] = "   "
    path = write_csv(tmp_path / "bad.csv", rows)
    raw = path.read_bytes().replace(
        rows[9]["text"].encode(), rows[9]["text"].encode() + b" \xff\xfe"
    )
    path.write_bytes(raw)
    args = base_args(tiny_bert, {**toy_data, "train": path}, tmp_path / "run")
    msg = _fails(args, capsys, "bad.csv:")
    assert "--drop-invalid-rows" in msg
    assert not (tmp_path / "run").exists()
    assert main([*args, "--drop-invalid-rows", "--epochs", "1"]) == 0
    capsys.readouterr()
    metrics = json.loads((tmp_path / "run/metrics.json").read_text())
    dropped = metrics["data"]["dropped_rows"]["train"]
    assert sum(dropped.values()) == 2 and metrics["data"]["n_train"] == 118


def test_non_utf8_row_number_reported(tiny_bert, toy_data, tmp_path, capsys):
    rows = toy_rows(50, seed=4)
    path = write_csv(tmp_path / "latin.csv", rows)
    path.write_bytes(
        path.read_bytes().replace(rows[2]["text"].encode(), b"caf\xe9 " + rows[2]["text"].encode())
    )
    _fails(
        base_args(tiny_bert, {**toy_data, "train": path}, tmp_path / "run"),
        capsys,
        "not UTF-8",
        "latin.csv:4",
    )


def test_single_class(tiny_bert, toy_data, tmp_path, capsys):
    rows = [r for r in toy_rows(100) if r["label"] == "pos"]
    path = write_csv(tmp_path / "one.csv", rows)
    _fails(
        base_args(tiny_bert, {**toy_data, "train": path}, tmp_path / "run"),
        capsys,
        "single class 'pos'",
    )


def test_unknown_labels_in_validation(tiny_bert, toy_data, tmp_path, capsys):
    rows = toy_rows(40, seed=7)
    rows[3]["label"] = "neutral"
    rows[4]["label"] = "mixed"
    path = write_csv(tmp_path / "val.csv", rows)
    msg = _fails(
        base_args(tiny_bert, {**toy_data, "validation": path}, tmp_path / "run"),
        capsys,
        "'mixed', 'neutral'",
        "val.csv:5",
    )
    assert "training labels are: neg, pos" in msg
    assert not (tmp_path / "run").exists()


def test_config_typo_and_range(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: embedded:minilm\ntrain:\n  epocs: 3\n  lr: -1\n  scheduler: cosin\n")
    msg = _fails(["train", str(cfg), "--output", str(tmp_path / "run")], capsys, "3 problems")
    assert "train.epocs: unknown key; did you mean 'train.epochs'?" in msg
    assert "train.lr: got -1; must be > 0.0" in msg
    assert "allowed: 'linear', 'cosine' or 'constant'" in msg
    _fails(
        ["train", str(cfg), "--set", "train.batchsize=3"], capsys, "did you mean 'train.batch_size'"
    )
    assert not (tmp_path / "run").exists()


def test_invalid_yaml_and_missing_config(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    _fails(["train", str(bad)], capsys, "bad.yaml", "invalid YAML")
    _fails(["train", str(tmp_path / "none.yaml")], capsys, "config file not found")


def test_model_dir_without_weights(tiny_bert, toy_data, tmp_path, capsys):
    empty = tmp_path / "model"
    empty.mkdir()
    (empty / "config.json").write_text((tiny_bert / "config.json").read_text())
    args = base_args(tiny_bert, toy_data, tmp_path / "run")
    args[args.index("--model") + 1] = str(empty)
    _fails(args, capsys, "has no weights", "model.safetensors")
    args[args.index("--model") + 1] = "embedded:nosuch"
    _fails(args, capsys, "unknown embedded model", "embedded:minilm")


def test_output_holding_a_different_run(tiny_bert, toy_data, tmp_path, capsys):
    out = tmp_path / "run"
    args = base_args(tiny_bert, toy_data, out)
    args[args.index("--epochs") + 1] = "1"
    assert main(args) == 0
    capsys.readouterr()
    before = (out / "metrics.json").read_bytes()
    _fails([*args, "--lr", "1e-3"], capsys, "already holds a run", "train.lr", "--overwrite")
    assert (out / "metrics.json").read_bytes() == before
    assert main([*args, "--lr", "1e-3", "--overwrite"]) == 0
    capsys.readouterr()
    _fails([*args, "--resume"], capsys, "finished run")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    args[args.index("--output") + 1] = str(tmp_path / "junk")
    _fails(args, capsys, "not a textloop run")


def test_readers_formats_gz_dir_and_glob(tiny_bert, toy_data, tmp_path, capsys):
    rows = toy_rows(120, seed=11)
    d = tmp_path / "parts"
    d.mkdir()
    write_csv(d / "a.tsv", rows[:40], delimiter="\t")
    with gzip.open(d / "b.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows[40:80])
    (d / "c.json").write_text(json.dumps(rows[80:]))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows[:30]), tmp_path / "v.parquet")
    from textloop.data.readers import read_table

    assert len(read_table(str(d))) == 120
    assert len(read_table(str(tmp_path / "parts" / "*.tsv"))) == 40
    assert len(read_table(str(tmp_path / "v.parquet"))) == 30
    (d / "broken.jsonl").write_text('{"text": "ok", "label": "pos"}\n{"text": oops}\n')
    _fails(
        base_args(tiny_bert, {**toy_data, "train": d}, tmp_path / "run"),
        capsys,
        "broken.jsonl:2",
        "invalid JSON",
    )
    (d / "broken.jsonl").unlink()
    (d / "trunc.jsonl.gz").write_bytes(gzip.compress(b'{"text": "a"}\n' * 100)[:40])
    _fails(
        base_args(tiny_bert, {**toy_data, "train": d}, tmp_path / "run"),
        capsys,
        "trunc.jsonl.gz",
        "corrupt gzip",
    )


def test_predict_and_evaluate_errors(tiny_bert, toy_data, tmp_path, capsys):
    _fails(["predict", str(tmp_path / "nothing"), "hi"], capsys, "run directory not found")
    _fails(
        ["evaluate", str(tmp_path / "nothing"), "--data", str(toy_data["test"])],
        capsys,
        "run directory not found",
    )


def _tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes (links as their target)."""
    return {
        str(p.relative_to(folder)): (
            str(p.readlink()).encode() if p.is_symlink() else p.read_bytes()
        )
        for p in sorted(folder.rglob("*"))
        if p.is_file() or p.is_symlink()
    }


def test_overwrite_never_replaces_what_is_not_a_run(tiny_bert, toy_data, tmp_path, capsys):
    notarun = tmp_path / "notarun"
    notarun.mkdir()
    (notarun / "important.txt").write_text("precious")
    (notarun / "config.yaml").write_text("mine: true\n")  # a config.yaml alone is no run
    afile = tmp_path / "afile.txt"
    afile.write_text("precious")
    before = _tree(tmp_path)
    for out, needle in [
        (notarun, "not a textloop run"),
        (afile, "is a file"),
        (afile / "sub", "is a file"),
    ]:
        args = [*base_args(tiny_bert, toy_data, out), "--overwrite"]
        msg = _fails(args, capsys, str(out) if out != afile / "sub" else str(afile), needle)
        assert "pass --overwrite" not in msg
    from textloop.errors import ExportError
    from textloop.serving.export import export_run

    with pytest.raises(ExportError, match="not a textloop run or export"):
        export_run(tmp_path / "norun", notarun, overwrite=True)
    assert _tree(tmp_path) == before  # nothing deleted, nothing left behind


def test_empty_output_folder_is_used_and_predict_output_is_checked(
    tiny_bert, toy_data, tmp_path, capsys
):
    out = tmp_path / "empty"
    out.mkdir()
    args = base_args(tiny_bert, toy_data, out)
    args[args.index("--epochs") + 1] = "1"
    assert main(args) == 0
    capsys.readouterr()
    assert (out / "metrics.json").is_file()
    afile = tmp_path / "afile.txt"
    afile.write_text("mine")
    folder = tmp_path / "afolder"
    folder.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    preds = tmp_path / "preds.jsonl"
    Path(f"{preds}.tmp").symlink_to(victim)  # a planted link at the old fixed temp name
    before = _tree(tmp_path)
    predict = ["predict", str(out), "--input", str(toy_data["validation"]), "--output"]
    _fails([*predict, str(folder)], capsys, str(folder), "is a folder")
    _fails([*predict, str(tmp_path / "missing" / "x.jsonl")], capsys, "missing", "does not exist")
    _fails([*predict, str(afile / "x.jsonl")], capsys, str(afile), "is a file")
    assert _tree(tmp_path) == before
    assert main([*predict, str(preds)]) == 0
    assert victim.read_text() == "precious"
    assert (
        len(preds.read_text().splitlines())
        == len(toy_data["validation"].read_text().splitlines()) - 1
    )
    assert set(_tree(tmp_path)) == {*before, "preds.jsonl"}


def test_resume_uses_the_saved_config_and_names_a_damaged_checkpoint_file(
    tiny_bert, toy_data, tmp_path, capsys
):
    import shutil

    from textloop.config import load_config
    from textloop.training.run import TrainingInterrupted, train

    cut = tmp_path / "cut"
    cfg = load_config(
        None,
        extra={
            "model": str(tiny_bert),
            "output": str(cut),
            "data.train": str(toy_data["train"]),
            "data.validation": str(toy_data["validation"]),
            "train.epochs": 1,
            "train.lr": 3e-3,
            "train.batch_size": 16,
            "train.max_seq_len": 32,
            "train.eval_every_steps": 2,
            "train.early_stopping_patience": 0,  # the whole epoch, to compare its step count
        },
    )

    class InterruptAt3:
        def on_step_end(self, info) -> None:
            if info.step == 3:
                raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted):
        train(cfg, callbacks=[InterruptAt3()])
    resume = ["train", "--output", str(cut), "--resume", "--quiet"]
    # flags that disagree with the saved config are refused by key; agreeing ones are fine
    _fails([*resume, "--lr", "1e-3"], capsys, "train.lr", "config.yaml")
    for name in ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", "state.json"):
        damaged = tmp_path / f"damaged-{name}"
        shutil.copytree(cut, damaged)
        path = damaged / "checkpoints" / "last" / name
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        before = _tree(damaged)
        args = ["train", "--output", str(damaged), "--resume", "--quiet"]
        _fails(args, capsys, str(path), "truncated or damaged", "without --resume")
        assert _tree(damaged) == before
    assert main([*resume, "--lr", "3e-3", "--batch-size", "16"]) == 0  # the saved settings
    capsys.readouterr()
    assert not (cut / ".incomplete").exists()
    n_train = len(toy_data["train"].read_text().splitlines()) - 1
    assert json.loads((cut / "metrics.json").read_text())["train"]["steps"] == -(-n_train // 16)


def test_duplicated_csv_header_is_refused_by_train_and_prepare(
    tiny_bert, toy_data, tmp_path, capsys
):
    bad = tmp_path / "dup.csv"
    bad.write_text("text,label,text\n" + "".join(f"good food {i},pos,other\n" for i in range(20)))
    args = base_args(tiny_bert, toy_data, tmp_path / "run")
    args[args.index("--train") + 1] = str(bad)
    _fails(args, capsys, str(bad), "'text' appears more than once")
    _fails(["prepare", str(bad), "--output", str(tmp_path / "corpus")], capsys, str(bad), "'text'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dup.csv"]


def _subparsers(parser):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                for inner, subsub in _subparsers(sub):
                    yield f"{name} {inner}", subsub


def test_every_flag_of_every_command_has_help():
    from textloop.cli.main import build_parser

    parser, _ = build_parser()
    missing = [
        f"{name} {action.option_strings[0] if action.option_strings else action.dest}"
        for name, sub in _subparsers(parser)
        for action in sub._actions
        if action.dest != "help" and not (action.help or "").strip()
    ]
    assert not missing, f"flags without help: {missing}"


def test_config_flags_take_type_choices_and_help_from_the_fields():
    import argparse

    from textloop.cli.flags import Flag, add_config_flags, flag_values
    from textloop.config import RunConfig, TrainConfig

    p = argparse.ArgumentParser()
    flags = add_config_flags(
        p,
        RunConfig,
        [
            "train.lr",
            "train.time_budget",
            "data.multi_label",
            "data.tag_scheme",
            Flag("task", "objective", choices=("mlm", "clm")),
        ],
    )
    args = p.parse_args(["--lr", "3e-5", "--time-budget", "10m", "--multi-label"])
    # only the flags given set keys; the YAML and defaults keep the rest
    assert flag_values(args, flags) == {
        "train.lr": 3e-5,
        "train.time_budget": "10m",
        "data.multi_label": True,
    }
    with pytest.raises(SystemExit):
        p.parse_args(["--tag-scheme", "XYZ"])  # choices come from the Literal
    with pytest.raises(SystemExit):
        p.parse_args(["--objective", "classification"])  # narrowed by the command
    help_text = " ".join(p.format_help().split())
    assert TrainConfig.model_fields["lr"].description.rstrip(".") in help_text
    assert "[train.lr]" in help_text and "[data.tag_scheme, default auto]" in help_text
