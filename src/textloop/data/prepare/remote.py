"""Corpora on an object store: ``--output s3://bucket/corpus`` and ``train --train s3://...``.

Any URI that ``pyarrow.fs.FileSystem.from_uri`` opens works (``s3://``, ``gs://``, ``hdfs://``);
credentials and endpoints come from the usual environment (``AWS_ACCESS_KEY_ID``,
``AWS_ENDPOINT_URL``, ...). ``prepare`` builds the corpus in a local staging directory, exactly as
for a local output, then publishes it. An object store cannot rename a folder into place, so the
manifest is the commit: every other object is uploaded first and ``manifest.json`` last, and a
prefix without a manifest is no corpus to any reader. Replacing a corpus deletes its manifest
first, so it stops being one before any of its shards goes. An upload that fails deletes what
it wrote.
"""

from __future__ import annotations

import logging
import os
import posixpath
from pathlib import Path
from typing import Any

from textloop.errors import ConfigError, DataError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
_CHUNK = 8 << 20  # bytes copied at a time


def is_remote(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a URI with a scheme (``s3://bucket/x``), not a local path."""
    text = str(path)
    return "://" in text and not text.startswith("file://")


def join(root: str, *parts: str) -> str:
    """``root`` and ``parts`` joined with ``/`` (a URI or a local path)."""
    return posixpath.join(root, *parts) if is_remote(root) else str(Path(root, *parts))


def open_fs(uri: str) -> tuple[Any, str]:
    """(file system, path inside it) of ``uri``.

    Raises:
        ConfigError: the scheme is unknown or the file system cannot be opened.
    """
    import pyarrow.fs as pafs

    try:
        return pafs.FileSystem.from_uri(uri)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"cannot open {uri}: {str(exc).splitlines()[0]}") from None


def _objects(fs: Any, root: str) -> list[str]:
    """Paths (relative to ``root``) of every object under ``root``."""
    import pyarrow.fs as pafs

    selector = pafs.FileSelector(root, allow_not_found=True, recursive=True)
    infos = fs.get_file_info(selector)
    return sorted(i.path[len(root) :].lstrip("/") for i in infos if i.type == pafs.FileType.File)


def read_text(uri: str) -> str | None:
    """The text of the object ``uri``; None when there is none."""
    import pyarrow.fs as pafs

    fs, path = open_fs(uri)
    try:
        if fs.get_file_info(path).type != pafs.FileType.File:
            return None
        with fs.open_input_stream(path) as f:
            return bytes(f.read()).decode("utf-8")
    except OSError as exc:
        raise DataError(f"cannot read {uri}: {str(exc).splitlines()[0]}") from None


def _target(uri: str, overwrite: bool) -> tuple[Any, str, list[str]]:
    """(file system, root, objects under it) of a target ``check_target`` accepts."""
    fs, root = open_fs(uri)
    try:
        found = _objects(fs, root)
    except OSError as exc:
        raise ConfigError(f"cannot list {uri}: {str(exc).splitlines()[0]}") from None
    if found and MANIFEST not in found:
        raise ConfigError(
            f"{uri} holds {len(found)} object(s) and no prepared corpus; choose an empty prefix"
        )
    if found and not overwrite:
        raise ConfigError(f"{uri} is a prepared corpus already; pass --overwrite to replace it")
    return fs, root, found


def check_target(uri: str, overwrite: bool) -> None:
    """Refuse a target that holds objects, unless it is a corpus and ``overwrite`` is set.

    Raises:
        ConfigError: the prefix holds a corpus (without overwrite) or other objects; or the
            store cannot be listed (no bucket, no credentials).
    """
    _target(uri, overwrite)


def _upload(fs: Any, source: Path, path: str) -> None:
    with source.open("rb") as src, fs.open_output_stream(path) as out:
        while chunk := src.read(_CHUNK):
            out.write(chunk)


def _remove(fs: Any, root: str, written: list[str]) -> None:
    """Delete what a failed upload wrote: the whole prefix (it held nothing else: see
    ``check_target``; this also drops the folder markers pyarrow leaves), or, for a bare
    bucket, the objects one by one."""
    try:
        if "/" in root.strip("/"):
            fs.delete_dir(root)
            return
        for target in written:
            fs.delete_file(target)
    except OSError as exc:
        log.warning("could not delete what the failed upload wrote under %s: %s", root, exc)


def publish(local: Path, uri: str, overwrite: bool) -> None:
    """Upload the corpus directory ``local`` to ``uri``, the manifest last.

    Raises:
        ConfigError: the target is refused (``check_target``).
        DataError: the upload failed; what it wrote was deleted.
    """
    fs, root, old = _target(uri, overwrite)  # checked again: the build took a while
    files = sorted(p for p in local.rglob("*") if p.is_file() and p != local / MANIFEST)
    written: list[str] = []
    try:
        if old:  # the old corpus stops being one before any of its objects goes
            fs.delete_file(posixpath.join(root, MANIFEST))
            for rel in old:
                if rel != MANIFEST:
                    fs.delete_file(posixpath.join(root, rel))
        for path in [*files, local / MANIFEST]:
            target = posixpath.join(root, path.relative_to(local).as_posix())
            _upload(fs, path, target)
            written.append(target)
    except OSError as exc:
        _remove(fs, root, written)
        raise DataError(
            f"upload to {uri} failed: {str(exc).splitlines()[0]}; what was written is deleted"
        ) from None
    log.info("published %d object(s) to %s", len(written), uri)
