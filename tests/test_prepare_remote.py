"""A corpus on an object store: ``prepare --output s3://...`` (manifest last, refusals, a failed
upload leaves no corpus) and ``train --train s3://...``, against a real S3 API (moto's server on
127.0.0.1, reached through pyarrow's own S3 client)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from textloop.cli.main import main

from .conftest import toy_rows, write_csv

BUCKET = "corpora"


@pytest.fixture(scope="module")
def s3_server():
    server_mod = pytest.importorskip("moto.server")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(s3_server, monkeypatch):
    """A fresh bucket on the local S3 server; the environment points every client at it."""
    import uuid

    import boto3

    env = {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": s3_server,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    bucket = f"{BUCKET}-{uuid.uuid4().hex[:8]}"
    client = boto3.client("s3")
    client.create_bucket(Bucket=bucket)
    return {"bucket": bucket, "client": client}


def _keys(s3: dict[str, Any], prefix: str = "") -> list[str]:
    found = s3["client"].list_objects_v2(Bucket=s3["bucket"], Prefix=prefix)
    return sorted(o["Key"] for o in found.get("Contents", []))


def _prepare(src: Path, out: str, *extra: str) -> int:
    args = ["prepare", str(src), "--label-column", "label", "--dedup", "exact"]
    return main([*args, "--output", out, *extra])


def test_prepare_publishes_the_local_corpus_with_its_manifest_last(tmp_path, s3, monkeypatch):
    from textloop.data.prepare import remote

    src = write_csv(tmp_path / "toy.csv", toy_rows(300, seed=7))
    assert _prepare(src, str(tmp_path / "local")) == 0
    uploaded: list[str] = []
    upload = remote._upload

    def recorded(fs: Any, path: Path, target: str) -> None:
        uploaded.append(target)
        upload(fs, path, target)

    monkeypatch.setattr(remote, "_upload", recorded)
    uri = f"s3://{s3['bucket']}/corpus"
    assert _prepare(src, uri) == 0
    assert uploaded[-1].endswith("/corpus/manifest.json")  # the commit comes last

    local = tmp_path / "local"
    expected = sorted(
        "corpus/" + p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()
    )
    assert _keys(s3, "corpus/") == expected
    body = s3["client"].get_object(Bucket=s3["bucket"], Key="corpus/manifest.json")["Body"]
    manifest = json.loads(body.read())
    mine = json.loads((local / "manifest.json").read_text())
    for m in (manifest, mine):
        m.pop("created"), m.pop("seconds")
    assert manifest == mine
    for rel in mine["splits"]["train"]["files"]:
        assert pq.read_table(f"{uri}/{rel}").equals(pq.read_table(local / rel))
    assert not list(tmp_path.glob("textloop-stage-*"))


def test_an_output_that_holds_objects_is_refused_or_replaced(tmp_path, s3, capsys):
    src = write_csv(tmp_path / "toy.csv", toy_rows(200, seed=3))
    uri = f"s3://{s3['bucket']}/corpus"
    assert _prepare(src, uri) == 0
    before = _keys(s3)
    capsys.readouterr()
    assert _prepare(src, uri) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pass --overwrite" in err
    assert _keys(s3) == before

    s3["client"].put_object(Bucket=s3["bucket"], Key="other/notes.txt", Body=b"mine")
    assert _prepare(src, f"s3://{s3['bucket']}/other", "--overwrite") == 2
    err = capsys.readouterr().err.strip()
    assert "no prepared corpus; choose an empty prefix" in err
    assert _keys(s3, "other/") == ["other/notes.txt"]  # untouched

    smaller = write_csv(tmp_path / "small.csv", toy_rows(100, seed=4))
    assert _prepare(smaller, uri, "--overwrite") == 0
    body = s3["client"].get_object(Bucket=s3["bucket"], Key="corpus/manifest.json")["Body"]
    assert json.loads(body.read())["records_in"] == 100


def test_a_failed_upload_leaves_no_corpus(tmp_path, s3, monkeypatch, capsys):
    from textloop.data.prepare import remote

    src = write_csv(tmp_path / "toy.csv", toy_rows(200, seed=5))
    calls: list[str] = []
    upload = remote._upload

    def flaky(fs: Any, path: Path, target: str) -> None:
        calls.append(target)
        if len(calls) == 3:
            raise OSError("connection reset by peer")
        upload(fs, path, target)

    monkeypatch.setattr(remote, "_upload", flaky)
    assert _prepare(src, f"s3://{s3['bucket']}/corpus") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "upload to s3://" in err and "connection reset" in err
    assert _keys(s3) == []  # what was written is deleted; no manifest ever appeared


def test_train_reads_a_corpus_on_the_object_store(tmp_path, s3, tiny_bert):
    src = write_csv(tmp_path / "toy.csv", toy_rows(300, seed=7))
    uri = f"s3://{s3['bucket']}/corpus"
    assert _prepare(src, uri) == 0
    manifest = json.loads(
        s3["client"].get_object(Bucket=s3["bucket"], Key="corpus/manifest.json")["Body"].read()
    )
    run = tmp_path / "run"
    args = ["train", "--model", str(tiny_bert), "--train", uri, "--output", str(run)]
    args += ["--epochs", "1", "--batch-size", "16", "--max-seq-len", "32", "--quiet"]
    assert main(args) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    # the corpus's own validation and test splits came along from the store
    assert metrics["validation"]["n"] == manifest["splits"]["validation"]["records"]
    assert metrics["test"]["n"] == manifest["splits"]["test"]["records"]

    from textloop.tasks.lm.packing import document_source  # what pretrain streams

    docs = document_source(f"{uri}:validation")
    texts = [t for i in range(len(docs.shard_loaders)) for t in docs.texts(i)]
    assert len(texts) == manifest["splits"]["validation"]["records"]


def test_shards_merge_into_the_store_and_ray_writes_the_same_corpus(tmp_path, s3):
    ray = pytest.importorskip("ray")
    d = tmp_path / "raw"
    d.mkdir()
    for i in range(2):  # shards take whole files: two files, one per shard
        write_csv(d / f"part{i}.csv", toy_rows(120, seed=8 + i))
    src = d
    shards = []
    for i in range(2):
        out = tmp_path / f"shard{i}"
        assert _prepare(src, str(out), "--num-shards", "2", "--shard-index", str(i)) == 0
        shards.append(str(out))
    merged = f"s3://{s3['bucket']}/merged"
    assert main(["prepare", "merge", merged, *shards]) == 0
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    try:
        on_ray = f"s3://{s3['bucket']}/ray"
        assert _prepare(src, on_ray, "--engine", "ray") == 0
    finally:
        ray.shutdown()

    def manifest(prefix: str) -> dict[str, Any]:
        body = s3["client"].get_object(Bucket=s3["bucket"], Key=f"{prefix}/manifest.json")["Body"]
        m = json.loads(body.read())
        m.pop("created"), m.pop("seconds")
        return m

    assert _prepare(src, str(tmp_path / "local")) == 0
    local = json.loads((tmp_path / "local" / "manifest.json").read_text())
    local.pop("created"), local.pop("seconds")
    assert manifest("ray") == local
    assert manifest("merged")["splits"] == local["splits"]
