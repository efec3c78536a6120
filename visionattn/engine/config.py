"""Config files merged with argparse: a YAML mapping of flag values (``-c FILE``) checked and
converted against a program's parser, and ``key=value`` model kwargs parsed as YAML."""
from __future__ import annotations

import argparse
import difflib
import os
import re
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import yaml

from .cli import UsageError


_FLOAT_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)")


def parse_model_kwargs(items: Optional[Sequence[str]]) -> Dict[str, Any]:
    """Parse ``key=value`` strings into a kwargs dict, each value with ``yaml.safe_load``.

    ``depths=[2,2,6,2]`` gives a list, ``mlp_ratio=2`` an int, ``layer_scale=1e-5`` a float
    (YAML 1.1 alone would keep ``1e-5`` a string), ``act=gelu`` a string, ``x=null`` None.
    Raises :class:`UsageError` for an item without ``=`` or with invalid YAML.
    """
    out: Dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--model-kwargs expects key=value items, got {item!r}")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise UsageError(f"--model-kwargs {key}: cannot parse {value!r} as YAML ({e})") from None
        if isinstance(parsed, str) and _FLOAT_RE.fullmatch(parsed.strip()):
            parsed = float(parsed)
        out[key] = parsed
    return out


def add_bool(g, flag: str, help: str) -> None:
    """Add a ``store_true`` flag whose default is None (so "not given" can be told from "false")."""
    g.add_argument(flag, action="store_true", default=None, help=help)


#: Flags that make no sense inside a config file (they name a particular run, not a recipe).
NOT_IN_CONFIG = ("config", "resume", "overwrite", "help")


def load_config(path: os.PathLike, parser: argparse.ArgumentParser, *, not_in_config: Sequence[str] = NOT_IN_CONFIG,
                program: str = "train.py") -> Dict[str, Any]:
    """Read a YAML config of flag values (``-c FILE``) into ``{dest: value}`` for ``parser``.

    Keys are the long flag names with ``-`` or ``_`` (``batch_size``, ``model-ema-decay``); values
    are converted with the flag's type (``1e-3`` written without a dot is a string in YAML 1.1 and
    becomes a float here). ``model_kwargs`` may be a mapping. Raises :class:`UsageError` for a file
    that is not a mapping, an unknown key (with the nearest valid ones), a key that names a run
    rather than a recipe (``not_in_config``: ``resume``, ``overwrite``, ``config``), or a value of
    the wrong type; the messages name ``program``'s flags.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--config {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UsageError(f"--config {path}: invalid YAML ({e})") from None
    if not isinstance(data, dict):
        raise UsageError(f"--config {path} must hold a mapping of flag names to values, got {type(data).__name__}")
    actions = {a.dest: a for a in parser._actions}
    valid = sorted(d for d in actions if d not in not_in_config)
    out: Dict[str, Any] = {}
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        if key not in actions or key in not_in_config:
            close = difflib.get_close_matches(key, valid, n=3)
            why = "names a run, not a recipe; give it on the command line" if key in not_in_config else \
                f"is not a {program} flag" + (f" (did you mean {', '.join(close)}?)" if close else "")
            raise UsageError(f"--config {path}: key {raw_key!r} {why}")
        out[key] = _convert_config_value(actions[key], value, path, raw_key)
    return out


def _convert_config_value(action: argparse.Action, value: Any, path: Path, key: Any) -> Any:
    """``value`` converted with ``action``'s type and arity; raises :class:`UsageError` naming ``key``."""
    if value is None:
        return None
    if action.dest == "model_kwargs":
        if isinstance(value, dict):
            return {str(k): v for k, v in value.items()}
        if isinstance(value, list):
            return parse_model_kwargs([str(v) for v in value])
        raise UsageError(f"--config {path}: {key} must be a mapping or a list of key=value strings")
    if action.dest == "pretrained":
        return value if isinstance(value, (bool, str)) else str(value)
    if isinstance(action, (argparse._StoreTrueAction, argparse.BooleanOptionalAction)):
        if not isinstance(value, bool):
            raise UsageError(f"--config {path}: {key} must be true or false, got {value!r}")
        return value
    convert = action.type or (lambda v: v)
    if convert is Path:
        convert = lambda v: Path(str(v))  # noqa: E731
    try:
        if action.nargs in ("+", "*") or isinstance(action.nargs, int):
            items = value if isinstance(value, (list, tuple)) else [value]
            if isinstance(action.nargs, int) and len(items) != action.nargs:
                raise ValueError(f"expected {action.nargs} values")
            return [convert(v) for v in items]
        if action.dest == "sched_on_updates":
            if not isinstance(value, bool):
                raise ValueError("expected true or false")
            return value
        return convert(value)
    except (TypeError, ValueError) as e:
        raise UsageError(f"--config {path}: bad value {value!r} for {key} ({e})") from None
