"""Typed configs: dataclasses with one help string per field, YAML presets, ``key=value`` overrides.

Each component keeps its own dataclass next to its code (``DataConfig`` in ``data/``,
``ModelConfig`` in ``models/``, process configs in ``processes/``, ``TrainConfig`` in ``train/config.py``);
this module holds the machinery they share:

- :func:`param` declares a field with its help text (which doubles as documentation / CLI help)
  and, optionally, its allowed ``choices``;
- :func:`from_dict` builds a (nested) dataclass from plain data, rejecting unknown keys with the
  closest valid name, coercing ``"1e-3"``-style strings to the annotated type, and checking choices;
- a section may be *polymorphic*: a base dataclass with a ``variants`` registry picks its concrete
  class from the section's ``name`` key (e.g. ``process.name: masked``);
- :func:`apply_overrides` applies ``a.b.c=value`` strings to plain data before validation, so an
  override typo gets the same "did you mean" error as a YAML typo.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from thunderdlm.errors import ConfigError

PRESET_DIR = Path(__file__).parent / "configs"


def param(default: Any = dataclasses.MISSING, help: str = "", choices: tuple | None = None,
          default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with a help string (and optional allowed values)."""
    meta = {"help": help, "choices": choices}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def check(condition: bool, field: str, message: str) -> None:
    """Raise a ConfigError naming ``field`` when ``condition`` is false (use in __post_init__)."""
    if not condition:
        raise ConfigError(f"config field '{field}': {message}")


# ----------------------------------------------------------------------------------------------
# dict -> dataclass
# ----------------------------------------------------------------------------------------------

def _closest(name: str, options: list[str]) -> str:
    match = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
    return f"; did you mean '{match[0]}'?" if match else f"; valid keys: {', '.join(sorted(options))}"


def _not_one_of(where: str, value: Any, options: list) -> ConfigError:
    """The error for a value outside a fixed set of choices, with the closest valid one."""
    match = difflib.get_close_matches(str(value), [str(o) for o in options], n=1, cutoff=0.5)
    hint = f"; did you mean '{match[0]}'?" if match else ""
    return ConfigError(f"config field '{where}': {value!r} is not one of {list(options)}{hint}")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert ``value`` to the annotated type ``tp`` or raise a ConfigError naming ``where``."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"config field '{where}': bad value {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            raise _not_one_of(where, value, list(get_args(tp)))
        return value
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config field '{where}': expected a list, got {value!r}")
        (inner, *_) = get_args(tp) or (Any,)
        items = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"config section '{where}': expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"config field '{where}': expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"config field '{where}': expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value)
                if f.is_integer():
                    return int(f)
            except ValueError:
                pass
        raise ConfigError(f"config field '{where}': expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"config field '{where}': expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"config field '{where}': expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config field '{where}': expected a string, got {value!r}")
    return value


def from_dict(cls: type, data: dict, where: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys and bad values name their full path."""
    variants = getattr(cls, "variants", None)
    if callable(variants):
        registry = variants()
        name = data.get("name", getattr(cls, "default_variant", None))
        if name not in registry:
            raise ConfigError(f"config field '{_join(where, 'name')}': unknown {where or 'variant'} "
                              f"{name!r}{_closest(str(name), list(registry))}")
        cls = registry[name]
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"unknown config key '{_join(where, key)}'{_closest(key, list(fields))}")
        fpath = _join(where, key)
        kwargs[key] = _coerce(value, hints[key], fpath)
        choices = fields[key].metadata.get("choices")
        if choices and kwargs[key] not in choices:
            raise _not_one_of(fpath, kwargs[key], list(choices))
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"config section '{where or cls.__name__}': {e}") from None


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def to_dict(cfg: Any) -> dict:
    """Plain, JSON-serialisable data (tuples become lists)."""
    return _plain(dataclasses.asdict(cfg))


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


# ----------------------------------------------------------------------------------------------
# presets and overrides
# ----------------------------------------------------------------------------------------------

def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_yaml(source: str | Path) -> dict:
    """Read a preset by name (``thunderdlm/configs/NAME.yaml``) or a YAML file by path."""
    path = Path(source)
    if not path.suffix and not path.exists():
        path = PRESET_DIR / f"{source}.yaml"
        if not path.exists():
            raise ConfigError(f"no preset or config file named '{source}'"
                              f"{_closest(str(source), preset_names())} (presets: {', '.join(preset_names())})")
    if not path.exists():
        raise ConfigError(f"config file '{path}' does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file '{path}' is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping at the top level")
    base = data.pop("base", None)  # a preset may extend another one
    if base:
        merged = load_yaml(base)
        deep_update(merged, data)
        data = merged
    return data


def deep_update(dst: dict, src: dict) -> dict:
    """Merge ``src`` into ``dst``; a section naming another variant (``name``) replaces the old one."""
    for k, v in src.items():
        old = dst.get(k)
        if isinstance(v, dict) and isinstance(old, dict) and v.get("name", old.get("name")) == old.get("name"):
            deep_update(old, v)
        else:
            dst[k] = v
    return dst


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key=value (e.g. train.lr=1e-3)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b=value`` strings to plain config data (validated later by from_dict)."""
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            nxt = node.get(k)
            if nxt is None:
                nxt = node[k] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override '{text}': '{k}' is a value, not a section")
            node = nxt
        # switching a polymorphic section to another variant drops the old variant's keys
        if keys[-1] == "name" and node.get("name") not in (None, value):
            node.clear()
        node[keys[-1]] = value
    return data


def field_help(cls: type) -> list[tuple[str, str, Any]]:
    """(name, help, default) of each field: used by ``thunderdlm config --help``-style output."""
    out = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        out.append((f.name, f.metadata.get("help", ""), default))
    return out
