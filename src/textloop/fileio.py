"""The one atomic-write helper: every file or folder textloop writes appears whole or not at all.

A temporary sibling of the output is created *exclusively* (``mkstemp`` / ``mkdtemp``: an
unpredictable name, ``O_EXCL``, so a link planted in the output's folder is never followed), filled,
flushed to disk and renamed over the output with one ``os.replace``. On any error the temporary is
removed and the output is left as it was. The output itself, if it is a symbolic link, is replaced
by the new file; the link's target is never written.

    write_text_atomic(path, text)          # a small text file
    with atomic_file(path) as f: ...       # streamed text (mode "w") or bytes (mode "wb")
    with atomic_path(path) as tmp: ...     # a library writes the file itself (torch.save, savefig)
    with atomic_dir(path) as tmp: ...      # a folder (checkpoint, model, report), swapped in whole

This module sits at the bottom of the layers (it imports only ``errors``), so every writer in
textloop can call it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Literal

from textloop.errors import OutputError


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp / mkdtemp create 0600 / 0700; the finished output gets the mode a plain open() would
_UMASK = _read_umask()
_FILE_MODE = 0o666 & ~_UMASK
_DIR_MODE = 0o777 & ~_UMASK


def check_output_path(path: str | os.PathLike[str], *, is_dir: bool = False) -> Path:
    """Refuse an output path that cannot be written: its folder missing or a file, or (for a file
    output) an existing folder. Returns the path.

    Raises:
        OutputError: naming the path and what to do.
    """
    out = Path(path)
    parent = out.parent
    _refuse_file_above(out)
    if not parent.is_dir():
        raise OutputError(f"cannot write {out}: folder {parent} does not exist; create it first")
    if not is_dir and out.is_dir() and not out.is_symlink():
        raise OutputError(f"cannot write {out}: it is a folder; give a file path")
    if is_dir and out.exists() and not out.is_dir():
        raise OutputError(f"cannot write {out}: it is a file, not a folder; choose another path")
    return out


def _refuse_file_above(out: Path) -> None:
    for up in out.parents:
        if up.exists():
            if not up.is_dir():
                raise OutputError(
                    f"cannot write {out}: {up} is a file, not a folder; choose another path"
                )
            return


def make_parent_dirs(path: str | os.PathLike[str]) -> Path:
    """Create the folders above ``path`` (an output about to be written). Returns the path.

    Raises:
        OutputError: a file stands where one of the folders belongs.
    """
    out = Path(path)
    _refuse_file_above(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _temp_prefix(out: Path, kind: str) -> str:
    # the pid lets a later run tell a dead process's leftover from a live one's temp
    return f".{out.name}.{kind}-{os.getpid()}-"


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A fresh, exclusively created temp file next to ``path`` for a library to write; renamed
    over ``path`` when the block ends without error, removed otherwise. The temp keeps the
    output's suffix (``savefig`` reads the format from it)."""
    out = check_output_path(path)
    fd, name = tempfile.mkstemp(dir=out.parent, prefix=_temp_prefix(out, "tmp"), suffix=out.suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:  # the library closed it; flush its data to disk
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, out)
    except BaseException:
        _remove(tmp)
        raise
    _fsync_dir(out.parent)


@contextlib.contextmanager
def atomic_file(
    path: str | os.PathLike[str], mode: Literal["w", "wb"] = "w", encoding: str = "utf-8"
) -> Iterator[IO[Any]]:
    """An open temp file next to ``path`` (text for ``"w"``, bytes for ``"wb"``) that replaces
    ``path`` when the block ends without error; removed otherwise."""
    out = check_output_path(path)
    fd, name = tempfile.mkstemp(dir=out.parent, prefix=_temp_prefix(out, "tmp"), suffix=out.suffix)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") if mode == "wb" else os.fdopen(fd, "w", encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, out)
    except BaseException:
        _remove(tmp)
        raise
    _fsync_dir(out.parent)


def write_text_atomic(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_file(path, "w", encoding) as f:
        f.write(text)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_file(path, "wb") as f:
        f.write(data)


def temp_dir_prefix(path: str | os.PathLike[str]) -> str:
    """The name prefix of ``atomic_dir``'s temp folders for ``path`` (to find stale ones)."""
    return f".{Path(path).name}.tmp-"


def swap_dir(tmp: Path, final: Path) -> None:
    """Move the finished folder ``tmp`` to ``final``; what was at ``final`` (a folder, a file or a
    link) is moved aside under an unpredictable name first and deleted after the swap."""
    old: Path | None = None
    if final.exists() or final.is_symlink():
        old = Path(tempfile.mkdtemp(dir=final.parent, prefix=_temp_prefix(final, "old")))
        if final.is_dir() and not final.is_symlink():
            os.replace(final, old)  # a folder renames onto the empty one
        else:
            os.replace(final, old / "entry")
    os.chmod(tmp, _DIR_MODE)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A fresh, exclusively created temp folder next to ``path`` that replaces ``path`` (whatever
    was there) when the block ends without error; removed otherwise. Deciding whether ``path``
    may be replaced is the caller's business."""
    out = check_output_path(path, is_dir=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=_temp_prefix(out, "tmp")))
    try:
        yield tmp
        swap_dir(tmp, out)
    except BaseException:
        _remove(tmp)
        raise


def is_stale_temp(path: Path) -> bool:
    """A temp file or folder left by a process that no longer runs (named by this module)."""
    try:
        pid = int(path.name.rsplit(".tmp-", 1)[1].split("-")[0])
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (ValueError, IndexError, PermissionError, OSError):
        return False
    return False


__all__ = [
    "atomic_dir",
    "atomic_file",
    "atomic_path",
    "check_output_path",
    "is_stale_temp",
    "make_parent_dirs",
    "swap_dir",
    "temp_dir_prefix",
    "write_bytes_atomic",
    "write_text_atomic",
]
