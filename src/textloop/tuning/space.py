"""The search space of a tuning study: ``--space`` specs, the default space, sampling.

    --space lr=1e-5:3e-4:log        a float range, sampled on a log scale
    --space epochs=2:10             an integer range (both ends integers), both ends included
    --space warmup_ratio=0:0.2      a float range, uniform
    --space batch_size=16,32,64     a list of values (categorical)
    --space scheduler=linear,cosine

Without ``--space`` the study searches around the default recipe's choice for the data
(``training/recipe.py``): ``lr`` log-uniform from a third to three times the recipe's rate,
``batch_size`` among half, the same and double the recipe's, ``epochs`` from half to twice the
recipe's passes. Every value a space can produce is checked against the config's own bounds
before the study starts.
"""

from __future__ import annotations

import copy
import difflib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import yaml

from textloop.config import build_config
from textloop.errors import ConfigError

Kind = Literal["float", "int", "choice"]

# parameter -> (dotted config key, kind): what a space may search
TUNABLE: dict[str, tuple[str, Kind]] = {
    "lr": ("train.lr", "float"),
    "head_lr": ("train.head_lr", "float"),
    "batch_size": ("train.batch_size", "int"),
    "epochs": ("train.epochs", "int"),
    "warmup_ratio": ("train.warmup_ratio", "float"),
    "weight_decay": ("train.weight_decay", "float"),
    "grad_clip": ("train.grad_clip", "float"),
    "grad_accum_steps": ("train.grad_accum_steps", "int"),
    "max_seq_len": ("train.max_seq_len", "int"),
    "scheduler": ("train.scheduler", "choice"),
    "class_weights": ("train.class_weights", "choice"),
    "lora.r": ("lora.r", "int"),
    "lora.alpha": ("lora.alpha", "int"),
    "lora.dropout": ("lora.dropout", "float"),
}
_EXAMPLE = "e.g. lr=1e-5:3e-4:log, epochs=2:10 or batch_size=16,32,64"


@dataclass(frozen=True)
class Param:
    """One searched parameter: a range (``low``..``high``, both included) or ``choices``."""

    name: str
    key: str  # the dotted config key it sets
    kind: Kind
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple[Any, ...] = ()

    def spec(self) -> str:
        """The ``--space`` text that gives this parameter."""
        if self.choices:
            return f"{self.name}=" + ",".join(str(c) for c in self.choices)
        if self.kind == "int":
            low, high = str(int(self.low)), str(int(self.high))
        else:  # the shortest text that reads back as the same float
            low, high = repr(self.low), repr(self.high)
        return f"{self.name}={low}:{high}" + (":log" if self.log else "")

    def describe(self) -> str:
        """In words, for the report: ``log-uniform 1e-05 .. 0.0003``."""
        if self.choices:
            return "one of " + ", ".join(str(c) for c in self.choices)
        scale = "log-uniform" if self.log else "uniform"
        kind = "integers" if self.kind == "int" else "floats"
        return f"{scale} {kind} {self.low:g} .. {self.high:g}"

    def values(self) -> list[Any]:
        """The values to check against the config: the ends of a range, or every choice."""
        if self.choices:
            return list(self.choices)
        if self.kind == "int":
            return [int(self.low), int(self.high)]
        return [self.low, self.high]

    def contains(self, value: Any) -> bool:
        if self.choices:
            return value in self.choices
        return isinstance(value, (int, float)) and self.low <= value <= self.high

    def suggest(self, trial: Any) -> Any:
        """The value an Optuna trial samples (or its fixed value, for an enqueued trial)."""
        if self.choices:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)

    def to_json(self) -> dict[str, Any]:
        return {"spec": self.spec()}


def _lookup(name: str, text: str) -> tuple[str, str, Kind]:
    short = name[len("train.") :] if name.startswith("train.") else name
    if short not in TUNABLE:
        near = difflib.get_close_matches(short, list(TUNABLE), n=1, cutoff=0.6)
        hint = f"; did you mean '{near[0]}'?" if near else ""
        raise ConfigError(
            f"--space {text}: unknown parameter {name!r}{hint} (tunable: {', '.join(TUNABLE)})"
        )
    key, kind = TUNABLE[short]
    return short, key, kind


def _scalar(raw: str) -> Any:
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    return raw if value is None else value


def _number(raw: str, kind: Kind, text: str) -> float:
    try:
        if kind == "int":
            if not raw.strip().lstrip("+-").isdigit():
                raise ValueError
            return float(int(raw))
        return float(raw)
    except ValueError:
        want = "an integer" if kind == "int" else "a number"
        raise ConfigError(f"--space {text}: {raw!r} is not {want} ({_EXAMPLE})") from None


def parse_param(text: str) -> Param:
    """One ``--space`` spec. Raises ConfigError (one line) on any mistake."""
    name, sep, body = text.partition("=")
    name, body = name.strip(), body.strip()
    if not sep or not name:
        raise ConfigError(f"--space {text!r}: expected NAME=LOW:HIGH[:log] or NAME=A,B,C")
    short, key, kind = _lookup(name, text)
    if not body or body.strip(":,") == "":
        raise ConfigError(f"--space {text}: empty range; give LOW:HIGH[:log] or A,B,C")
    if "," in body:
        items = [x.strip() for x in body.split(",")]
        if any(not x for x in items):
            raise ConfigError(f"--space {text}: an empty value in the list")
        choices: list[Any] = []
        for item in items:
            value: Any = _scalar(item) if kind == "choice" else _number(item, kind, text)
            if kind == "int":
                value = int(value)
            if value not in choices:
                choices.append(value)
        if len(choices) < 2:
            raise ConfigError(
                f"--space {text}: one value is no search; set it in the config "
                f"(--set {key}={choices[0]})"
            )
        return Param(short, key, kind, choices=tuple(choices))
    if kind == "choice":
        raise ConfigError(f"--space {text}: {short} takes a list of values, e.g. {short}=A,B")
    parts = body.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2].strip() != "log"):
        if len(parts) == 1:
            raise ConfigError(
                f"--space {text}: one value is no search; set it in the config "
                f"(--set {key}={body}), or give a range LOW:HIGH"
            )
        raise ConfigError(f"--space {text}: expected LOW:HIGH or LOW:HIGH:log ({_EXAMPLE})")
    low, high = (_number(p.strip(), kind, text) for p in parts[:2])
    log = len(parts) == 3
    if not low < high:
        what = "empty" if low == high else "inverted"
        raise ConfigError(f"--space {text}: {what} range; LOW must be below HIGH")
    if log and low <= 0:
        raise ConfigError(f"--space {text}: a log range needs LOW > 0")
    return Param(short, key, kind, low, high, log)


def parse_space(specs: Sequence[str]) -> list[Param]:
    """Every ``--space`` spec, each parameter at most once."""
    space = [parse_param(text) for text in specs]
    seen: set[str] = set()
    for p in space:
        if p.name in seen:
            raise ConfigError(f"--space {p.name}: given twice; give each parameter once")
        seen.add(p.name)
    return space


def default_space(settings: dict[str, Any]) -> list[Param]:
    """The space around the default recipe's ``settings`` (lr, batch_size, epochs)."""
    lr, batch, epochs = float(settings["lr"]), int(settings["batch_size"]), int(settings["epochs"])
    low_epochs = max(1, math.ceil(epochs / 2))
    low_lr, high_lr = _round(lr / 3), _round(min(lr * 3, 1.0))  # 3.33e-05, not 3.3333...e-05
    return [
        Param("lr", "train.lr", "float", low_lr, high_lr, log=True),
        Param(
            "batch_size",
            "train.batch_size",
            "int",
            choices=tuple(sorted({max(1, batch // 2), batch, batch * 2})),
        ),
        Param("epochs", "train.epochs", "int", low_epochs, max(low_epochs + 1, 2 * epochs)),
    ]


def _round(x: float, digits: int = 3) -> float:
    return float(f"{x:.{digits}g}")


def with_values(tree: dict[str, Any], space: Sequence[Param], values: dict[str, Any]) -> dict:
    """A copy of the config ``tree`` with each parameter's value set at its key."""
    out = copy.deepcopy(tree)
    for p in space:
        if p.name in values:
            *sections, last = p.key.split(".")
            node = out
            for section in sections:
                node = node.setdefault(section, {})
            node[last] = values[p.name]
    return out


def check_space(space: Sequence[Param], tree: dict[str, Any]) -> None:
    """Every value the space can produce must make a valid config with ``tree``.

    Raises:
        ConfigError: naming the spec and the config's bound it breaks.
    """
    for p in space:
        for value in p.values():
            try:
                build_config(with_values(tree, [p], {p.name: value}))
            except ConfigError as exc:
                why = str(exc).split(": ", 2)[-1]  # drop "config: 1 problem"
                raise ConfigError(f"--space {p.spec()}: {why}") from None
