"""How every textloop config is read: YAML, dotted flags and ``--set`` overrides, validated by
pydantic with every problem reported at once (key path, found value, what is allowed, and the
closest valid key for a typo). The config sections themselves live in ``textloop.config``
(runs), ``textloop.continual.config`` (updates) and ``textloop.data.prepare.config`` (prepare).
"""

from __future__ import annotations

import difflib
import math
import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from textloop.errors import ConfigError

_M = TypeVar("_M", bound=BaseModel)


class StrictModel(BaseModel):
    """The base of every textloop config section: unknown keys are errors, assignments validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _flatten_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        keys.append(path)
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys.extend(_flatten_keys(ann, path + "."))
    return keys


def _closest_key(path: str, model: type[BaseModel]) -> str | None:
    valid = _flatten_keys(model)
    parent = path.rsplit(".", 1)[0] + "." if "." in path else ""
    siblings = [k for k in valid if k.startswith(parent) and "." not in k[len(parent) :]]
    match = difflib.get_close_matches(path, siblings, n=1, cutoff=0.6) or difflib.get_close_matches(
        path.rsplit(".", 1)[-1], [k.rsplit(".", 1)[-1] for k in valid], n=1, cutoff=0.75
    )
    if not match:
        return None
    if match[0] in valid:
        return match[0]
    return next(k for k in valid if k.endswith("." + match[0]) or k == match[0])


def _describe(err: Any, model: type[BaseModel]) -> str:
    path = ".".join(str(p) for p in err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden":
        hint = _closest_key(path, model)
        return f"{path}: unknown key" + (f"; did you mean '{hint}'?" if hint else "")
    if kind == "literal_error":
        allowed = err.get("ctx", {}).get("expected", "")
        return f"{path}: got {err.get('input')!r}; allowed: {allowed}"
    ctx = err.get("ctx") or {}
    if kind == "value_error" and "error" in ctx:  # a cross-field check names its own keys
        return (f"{path}: " if path else "") + str(ctx["error"])
    for bound, word in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        if bound in ctx:
            return f"{path}: got {err.get('input')!r}; must be {word} {ctx[bound]}"
    return f"{path}: {err['msg']} (got {err.get('input')!r})"


_YAML11_FLOAT = re.compile(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+")


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: '{key}' is a value, not a section")
        node = child
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``key.path=value`` and parse the value as YAML (so ``3e-5``, ``true``, ``[a, b]`` work)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set train.lr=3e-5")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str):
        # YAML would turn "|" or ">" into block scalars; a string value is taken as typed, except
        # "3e-5", which PyYAML (YAML 1.1, no dot) reads as a string where users mean a number
        value = float(raw) if _YAML11_FLOAT.fullmatch(raw.strip()) else raw.strip()
    return key, value


def validate_tree(model: type[_M], tree: dict[str, Any], source: str = "config") -> _M:
    """Validate a plain dict into any config ``model``, reporting every problem at once.

    Raises:
        ConfigError: listing each invalid key with its path, found value and what is allowed.
    """
    try:
        return model.model_validate(tree)
    except ValidationError as exc:
        problems = [_describe(e, model) for e in exc.errors()]
        head = f"{source}: {len(problems)} problem{'s' if len(problems) > 1 else ''}"
        raise ConfigError(head + ": " + "; ".join(problems)) from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with a clear error for a missing file or bad syntax."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        tree = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{p}{where}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not UTF-8 text") from None
    if not isinstance(tree, dict):
        raise ConfigError(
            f"{p}: expected a mapping of keys at the top, found {type(tree).__name__}"
        )
    return tree


def load_tree(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A YAML mapping (or an empty one), then ``extra`` dotted keys (from flags), then ``--set``.

    Every config kind (run, prepare, update) loads its raw tree this way before validating it.
    """
    tree = read_yaml(path) if path is not None else {}
    for key, value in (extra or {}).items():
        _set_dotted(tree, key, value)
    for text in overrides or []:
        key, value = parse_override(text)
        _set_dotted(tree, key, value)
    return tree


def _merge(base: dict[str, Any], top: dict[str, Any]) -> None:
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def parse_duration(value: str | float | int) -> float:
    """Seconds from ``90``, ``"90s"``, ``"10m"``, ``"1.5h"``; ValueError otherwise."""
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = value.strip().lower()
        scale = {"s": 1.0, "m": 60.0, "h": 3600.0}.get(text[-1:])
        number = text[:-1] if scale else text
        try:
            seconds = float(number) * (scale or 1.0)
        except ValueError:
            raise ValueError(f"{value!r} is not a duration; use e.g. 90s, 10m or 1.5h") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{value!r} is not a positive duration")
    return seconds
