"""Command-line flags made from the config models: the pydantic field is the one declaration.

A command lists the dotted config keys it offers as flags; each flag takes its type, choices,
default-free switch behaviour and help text from the field, and its value lands on that key
(flags override the YAML, ``--set`` overrides both). A flag whose name or meaning is narrower
than the field's (``pretrain --corpus`` for ``data.train``) says so with a ``Flag``.

Example:
    >>> flags = add_config_flags(parser, RunConfig, ["train.lr", Flag("data.train", "corpus")])
    >>> extra = flag_values(parser.parse_args(["--lr", "3e-5"]), flags)
    >>> extra
    {'train.lr': 3e-05}
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union

from pydantic import BaseModel
from pydantic.fields import FieldInfo


@dataclass(frozen=True)
class Flag:
    """A config key offered as a flag under another name, or with narrower choices or help."""

    key: str
    name: str | None = None
    help: str | None = None
    choices: Sequence[str] | None = None


# flag dest -> dotted config key, as ``add_config_flags`` returns it
FlagMap = dict[str, str]


def config_field(model: type[BaseModel], key: str) -> FieldInfo:
    """The pydantic field a dotted key names (``train.lr`` -> ``TrainConfig.lr``).

    Raises:
        KeyError: no such key (a programming error in a command's flag list).
    """
    fields = model.model_fields
    head, _, rest = key.partition(".")
    if head not in fields:
        raise KeyError(f"{model.__name__} has no config key {key!r}")
    if not rest:
        return fields[head]
    inner = fields[head].annotation
    if not (isinstance(inner, type) and issubclass(inner, BaseModel)):
        raise KeyError(f"{model.__name__}.{head} is not a section; cannot take {key!r}")
    return config_field(inner, rest)


def _value_type(annotation: Any) -> tuple[Any, list[Any] | None]:
    """(python type the flag parses to, choices) of a field's annotation, Optional stripped."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _value_type(args[0])
        if str in args:  # str | float (a duration): the config validates the text
            return str, None
        raise TypeError(f"no flag for a union of {args}")
    if origin is list:  # e.g. split fractions: the config reads "0.8,0.1,0.1"
        return str, None
    if origin is Literal:
        choices = list(typing.get_args(annotation))
        return type(choices[0]), choices
    if annotation in (bool, int, float, str):
        return annotation, None
    raise TypeError(f"no flag for a field of type {annotation!r}")


def add_config_flags(
    parser: argparse.ArgumentParser, model: type[BaseModel], flags: Iterable[str | Flag]
) -> FlagMap:
    """Add one flag per config key to ``parser``; returns flag dest -> dotted key.

    Every flag defaults to None (unset), so only the flags a user gives override the config. A
    boolean field becomes a switch (``--multi-label``), or a ``--x/--no-x`` pair when its
    default is true. The help is the field's description, ending with the key it sets and the
    field's default.
    """
    out: FlagMap = {}
    for spec in flags:
        flag = spec if isinstance(spec, Flag) else Flag(spec)
        field = config_field(model, flag.key)
        name = flag.name or flag.key.rsplit(".", 1)[-1]
        kind, choices = _value_type(field.annotation)
        text = (flag.help or field.description or "").rstrip(".").replace("%", "%%")
        shown = field.default
        where = (
            flag.key
            if shown in (None, False, True) or not isinstance(shown, (int, float, str))
            else f"{flag.key}, default {shown}"
        )
        kwargs: dict[str, Any] = {"default": None, "help": f"{text} [{where}]"}
        if kind is bool:
            kwargs["action"] = (
                argparse.BooleanOptionalAction if field.default is True else "store_true"
            )
        else:
            kwargs["type"] = kind
            if flag.choices or choices:
                kwargs["choices"] = list(flag.choices or choices or [])
        dest = name.replace("-", "_")
        parser.add_argument("--" + name.replace("_", "-"), dest=dest, **kwargs)
        out[dest] = flag.key
    return out


def flag_values(args: argparse.Namespace, flags: FlagMap) -> dict[str, Any]:
    """The dotted config keys the given flags set (an unset flag is None and sets nothing)."""
    return {
        key: getattr(args, dest) for dest, key in flags.items() if getattr(args, dest) is not None
    }


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """The flags `train` and `pretrain` share that are not one config key each."""
    p.add_argument(
        "--lora",
        metavar="SPEC",
        help="LoRA adapters, e.g. r=8,alpha=16,targets=q_proj,v_proj; 'off' trains all weights "
        "[lora.*]",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the unfinished run in --output with its saved config",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key, e.g. train.lr=3e-5",
    )
    p.add_argument("--quiet", action="store_true", help="log lines instead of a progress bar")


def run_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The dotted config keys the command's flags set, ``--lora`` spelled out."""
    extra = flag_values(args, args.config_flags)
    if args.lora:
        from textloop.models.lora import parse_lora_spec

        extra.update({f"lora.{k}": v for k, v in parse_lora_spec(args.lora).items()})
    return extra
