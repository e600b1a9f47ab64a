"""A model registry: a directory of immutable model versions with a SQLite index.

Layout::

    registry/
      registry.sqlite          # versions, stages, file hashes, audit log
      models/<name>/<version>/ # a copy of the run or export folder (no checkpoints/)

Every version records its source run, metrics, a hash of its resolved config and the sha256 of
every file; loading re-hashes the files and refuses a version whose files were changed, removed
or added. Stages are ``staging`` (new versions), ``production`` (at most one per name) and
``archived``. ``promote`` moves a version to a stage; ``rollback`` returns production to the
version that held it before the current one. Every change is in the audit log with who, when and
why.

Example:
    >>> reg = Registry("registry")
    >>> v = reg.add("runs/reviews", "reviews")            # version 1, staging
    >>> reg.promote("reviews", v.version, reason="beats v0 on the March test set")
    >>> reg.production("reviews").path
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Literal

from textloop.artifacts.integrity import TOP_FILES, check_model_folder, config_hash, hash_tree
from textloop.artifacts.registry_index import ModelVersion, RegistryIndex, actor_name, now
from textloop.errors import RegistryError
from textloop.fileio import swap_dir

Stage = Literal["staging", "production", "archived"]
STAGES: tuple[str, ...] = ("staging", "production", "archived")
# matched whole with fullmatch: "$" would also accept a name ending in a newline
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class Registry(RegistryIndex):
    """A registry directory: add, promote, roll back, list and load verified model versions.

    Args:
        root: the registry directory (created on first use).
    """

    # ---- changes -------------------------------------------------------------------------
    def add(
        self,
        source: str | Path,
        name: str,
        actor: str | None = None,
        reason: str = "",
    ) -> ModelVersion:
        """Copy a run or export folder in as the next version of ``name``, in stage staging.

        Raises:
            RegistryError: an invalid name, or a folder that is not a pickle-free finished run.
        """
        if not _NAME.fullmatch(name):
            raise RegistryError(
                f"invalid model name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        src = Path(source)
        if not src.is_dir():
            raise RegistryError(f"run or export folder not found: {src}")
        fmt = check_model_folder(src)
        models = self.root / "models" / name
        models.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=models, prefix=f".incoming-{os.getpid()}-"))
        try:
            for item in TOP_FILES:
                if (src / item).is_file():
                    tmp.mkdir(exist_ok=True)
                    shutil.copy2(src / item, tmp / item)
            shutil.copytree(src / "model", tmp / "model")
            files = hash_tree(tmp)
            metrics_file = tmp / "metrics.json"
            metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
            with self._connect(write=True) as db:
                row = db.execute(
                    "SELECT COALESCE(MAX(version), 0) FROM versions WHERE name = ?", (name,)
                ).fetchone()
                version = int(row[0]) + 1
                final = models / str(version)
                swap_dir(tmp, final)  # replaces a folder a crash left between rename and commit
                db.execute(
                    "INSERT INTO versions VALUES (?, ?, 'staging', ?, ?, ?, ?, ?, ?)",
                    (
                        name,
                        version,
                        str(src.resolve()),
                        now(),
                        config_hash(final / "config.yaml"),
                        json.dumps(metrics),
                        json.dumps(files),
                        fmt,
                    ),
                )
                self._audit(db, actor_name(actor), "add", name, version, None, "staging", reason)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return self.get(name, version)

    def promote(
        self,
        name: str,
        version: int,
        stage: Stage = "production",
        actor: str | None = None,
        reason: str = "",
    ) -> ModelVersion:
        """Move a version to ``stage``; promoting to production archives the previous one.

        A version going to production or staging is verified first (``verify``), so the
        registry never names as production a version a server would refuse to load.

        Raises:
            RegistryError: unknown name, version or stage, or a version that fails ``verify``.
        """
        if stage not in STAGES:
            raise RegistryError(f"unknown stage {stage!r}; stages are: {', '.join(STAGES)}")
        if stage != "archived":
            self._verify_before(name, version, f"promote it to {stage}")
        who = actor_name(actor)
        with self._connect(write=True) as db:
            row = db.execute(
                "SELECT stage FROM versions WHERE name = ? AND version = ?", (name, version)
            ).fetchone()
            if row is None:
                raise self._unknown(name, version)
            if row["stage"] == stage:
                return self.get(name, version)
            if stage == "production":
                current = db.execute(
                    "SELECT version FROM versions WHERE name = ? AND stage = 'production'",
                    (name,),
                ).fetchone()
                if current is not None:
                    self._set_stage(
                        db,
                        who,
                        "archive",
                        name,
                        current[0],
                        "production",
                        "archived",
                        f"replaced by version {version}",
                    )
            self._set_stage(db, who, "promote", name, version, row["stage"], stage, reason)
        return self.get(name, version)

    def rollback(self, name: str, actor: str | None = None, reason: str = "") -> ModelVersion:
        """Put back the version that was in production before the current one.

        Rollbacks stack: rolling back twice goes two production versions back.

        Raises:
            RegistryError: unknown name, or no earlier production version to return to.
        """
        who = actor_name(actor)
        with self._connect(write=True) as db:
            history = self._production_history(db, name)
            current = db.execute(
                "SELECT version FROM versions WHERE name = ? AND stage = 'production'", (name,)
            ).fetchone()
            if current is None or len(history) < 2:
                if not db.execute("SELECT 1 FROM versions WHERE name = ?", (name,)).fetchone():
                    raise self._unknown(name)
                raise RegistryError(
                    f"{name!r} has no earlier production version to roll back to; "
                    "promote a version instead (`textloop registry promote NAME VERSION`)"
                )
            target = history[-2]
            self._verify_before(name, target, "roll back to it")
            prev = db.execute(
                "SELECT stage FROM versions WHERE name = ? AND version = ?", (name, target)
            ).fetchone()
            self._set_stage(
                db, who, "rollback-from", name, current[0], "production", "archived", reason
            )
            self._set_stage(db, who, "rollback", name, target, prev["stage"], "production", reason)
        return self.get(name, target)

    def _set_stage(
        self,
        db: sqlite3.Connection,
        actor: str,
        action: str,
        name: str,
        version: int,
        from_stage: str,
        to_stage: str,
        reason: str,
    ) -> None:
        db.execute(
            "UPDATE versions SET stage = ? WHERE name = ? AND version = ?",
            (to_stage, name, version),
        )
        self._audit(db, actor, action, name, version, from_stage, to_stage, reason)

    @staticmethod
    def _production_history(db: sqlite3.Connection, name: str) -> list[int]:
        """The stack of production versions: a promotion pushes, a rollback pops."""
        stack: list[int] = []
        rows = db.execute(
            "SELECT action, version, to_stage FROM audit WHERE name = ? ORDER BY id", (name,)
        )
        for action, version, to_stage in rows:
            if action == "promote" and to_stage == "production":
                stack.append(version)
            elif action == "rollback" and stack:
                stack.pop()
            elif action == "promote" and stack and stack[-1] == version:
                stack.pop()  # production version moved to another stage by hand
        return stack

    def _verify_before(self, name: str, version: int, action: str) -> None:
        """``verify``, re-raised as a refusal of ``action`` that says what stays as it is."""
        self.get(name, version)  # an unknown name or version: that error, as it is
        try:
            self.verify(name, version)
        except RegistryError as exc:
            live = self.production_version(name)
            stays = f"production stays version {live}" if live else "nothing was changed"
            raise RegistryError(f"cannot {action}: {exc} ({stays})") from None

    # ---- loading -------------------------------------------------------------------------
    def verify(self, name: str, version: int) -> ModelVersion:
        """Re-hash a version's files against the hashes recorded when it was added.

        Then the checks of ``add`` run again (``check_model_folder``): the entry must be the
        registry's own folder, made of regular files only; a symbolic link (even to an
        identical copy) or a hard-linked file is refused, since what it points to can change
        without the registry knowing.

        Raises:
            RegistryError: a file changed, went missing, was added or is a link (each one is
                named), or the entry's folder is missing or lies outside the registry.
        """
        mv = self.get(name, version)
        if not mv.path.is_dir():
            raise RegistryError(f"{name} v{version}: its folder {mv.path} is missing")
        expected = self.root.resolve() / "models" / name / str(version)
        if mv.path.resolve() != expected:
            raise RegistryError(
                f"{name} v{version} failed its integrity check: its folder {mv.path} resolves "
                f"to {mv.path.resolve()}, outside the registry; refusing to load it — restore "
                "the folder or register the run again"
            )
        found = hash_tree(mv.path)
        problems = []
        for rel, digest in mv.files.items():
            if rel not in found:
                problems.append(f"{rel} is missing")
            elif found[rel] != digest:
                problems.append(
                    f"{rel} has sha256 {found[rel][:12]}…, recorded {digest[:12]}… (modified)"
                )
        problems += [f"{rel} was added" for rel in sorted(set(found) - set(mv.files))]
        if problems:
            raise RegistryError(
                f"{name} v{version} in {mv.path} failed its integrity check: "
                f"{'; '.join(problems[:5])}{' …' if len(problems) > 5 else ''}; refusing to load "
                "it — restore the files or register the run again"
            )
        try:  # add's checks again: links (an identical copy hashes alike), pickles, weights
            check_model_folder(mv.path)
        except RegistryError as exc:
            raise RegistryError(f"{name} v{version} failed its integrity check: {exc}") from None
        return mv

    def resolve(self, name: str, version: int | None = None) -> ModelVersion:
        """The verified version ``version`` of ``name`` (default: its production version).

        Loading it is ``textloop.runs.load_registered``: the registry only knows files.

        Raises:
            RegistryError: unknown name/version, no production version, or a failed hash check.
        """
        if version is None:
            version = self.production_version(name)
            if version is None:
                if not self.versions(name):
                    raise self._unknown(name)
                raise RegistryError(
                    f"{name!r} has no production version; promote one with "
                    f"`textloop registry promote {name} VERSION`"
                )
        return self.verify(name, version)
