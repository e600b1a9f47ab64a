"""What makes a folder a textloop run, and whether an output folder may be replaced.

``--overwrite`` replaces only what textloop wrote: a folder is a run when it holds a
``config.yaml`` that is a textloop run config (a mapping with ``task`` and ``model``) and either
``.incomplete`` (training in progress or killed) or ``labels.json`` next to a ``model/`` folder (a
finished run, an export or a retrained candidate). Anything else (a plain file, a folder of the
user's files) is refused even with ``--overwrite``; an empty folder is used as it is.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from textloop.errors import RunDirError

INCOMPLETE = ".incomplete"


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` is a folder textloop wrote as a run (finished, unfinished or exported)."""
    if not path.is_dir() or path.is_symlink():
        return False
    config = path / "config.yaml"
    if not config.is_file():
        return False
    try:
        tree = yaml.safe_load(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    if not isinstance(tree, dict) or not {"task", "model"} <= set(tree):
        return False
    finished = (path / "labels.json").is_file() and (path / "model").is_dir()
    return (path / INCOMPLETE).is_file() or finished


def is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and not any(path.iterdir())


def check_replaceable(out: Path, overwrite: bool, what: str = "a textloop run") -> bool:
    """Whether ``out`` holds something to replace (True) or is new / an empty folder (False).

    Raises:
        RunDirError: ``out`` is a file, a link or a folder that is not a textloop run (never
            replaced, whatever ``overwrite`` says), or a run while ``overwrite`` is off.
    """
    if not (out.exists() or out.is_symlink()):
        for up in out.parents:  # a file where a folder above the output belongs
            if up.exists():
                if not up.is_dir():
                    raise RunDirError(
                        f"cannot create output {out}: {up} is a file, not a folder; "
                        "choose another --output"
                    )
                break
        return False
    if out.is_symlink() or not out.is_dir():
        kind = "a symbolic link" if out.is_symlink() else "a file, not a folder"
        raise RunDirError(
            f"output {out} is {kind}; textloop never replaces it — choose another --output"
        )
    if is_empty_dir(out):
        return False
    if not is_run_dir(out):
        raise RunDirError(
            f"output folder {out} holds files that are not {what}; textloop never replaces "
            "it — choose a new or empty --output folder"
        )
    if not overwrite:
        raise RunDirError(
            f"output folder {out} already exists and holds {what}; pass --overwrite to replace it"
        )
    return True
