"""The resolved config of a preset (or YAML file, run folder or export) with every field's help:
``thunderdlm config PRESET [key=value ...]``.

Every field of the RunConfig, section by section (a polymorphic section shows the fields of the
variant its ``name`` picks), with its value, whether that value was *set* (by the preset, a base
preset it extends, a YAML file or an override) or is the dataclass default, its allowed choices and
the help string declared next to it with :func:`thunderdlm.config.param`. :func:`render_yaml`
prints it as YAML whose comments carry the help, so the output can be saved and edited as a
config file; :func:`to_json` is the machine-readable form.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from thunderdlm.config import apply_overrides, load_yaml
from thunderdlm.run_config import RunConfig, read_run_config


@dataclass
class FieldDoc:
    key: str                  # dotted path, e.g. "train.lr"
    value: Any                # resolved value (a section: None)
    default: Any              # the dataclass default (a section: None)
    set: bool                 # given by the preset / YAML file / run folder / an override
    help: str
    choices: list | None = None
    section: bool = False     # a nested config section; its fields follow with deeper keys

    @property
    def depth(self) -> int:
        return self.key.count(".")


def resolve(source: str, overrides: list[str] | None = None) -> tuple[RunConfig, dict]:
    """(validated RunConfig, the plain data it was built from) for a preset name, a YAML file or a
    run folder (its ``config.json``), with ``key=value`` overrides applied; errors name the field."""
    path = Path(source)
    if path.is_dir():
        from thunderdlm.loading import read_export_info

        export = read_export_info(path)
        if export is not None:          # an export folder: the run config it embeds
            data = apply_overrides(export["run_config"], overrides or [])
            return RunConfig.from_data(data), data
        cfg = read_run_config(path, overrides)       # a run folder: every field is in config.json
        return cfg, apply_overrides(json.loads((path / "config.json").read_text()), overrides or [])
    data = apply_overrides(load_yaml(source), overrides or [])
    return RunConfig.from_data(data), data


def describe(cfg: Any, given: dict | None, prefix: str = "") -> list[FieldDoc]:
    """One FieldDoc per field of the dataclass ``cfg``, depth first; ``given`` is the plain data
    the config was built from (what is in it counts as set)."""
    out = []
    for f in dataclasses.fields(cfg):
        key, value = f"{prefix}{f.name}", getattr(cfg, f.name)
        sub = given.get(f.name) if isinstance(given, dict) else None
        meta = f.metadata
        if dataclasses.is_dataclass(value):
            out.append(FieldDoc(key, None, None, f.name in (given or {}), meta.get("help", ""), section=True))
            out.extend(describe(value, sub if isinstance(sub, dict) else {}, f"{key}."))
            continue
        default = (f.default if f.default is not dataclasses.MISSING else
                   f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        choices = list(meta["choices"]) if meta.get("choices") else None
        out.append(FieldDoc(key, _plain(value), _plain(default), isinstance(given, dict) and f.name in given,
                            meta.get("help", ""), choices))
    return out


def _plain(x: Any) -> Any:
    return list(x) if isinstance(x, tuple) else x


def _yaml_value(value: Any) -> str:
    """One-line YAML for a value (flow style: lists as [a, b])."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**9, allow_unicode=True)
    return text.removesuffix("\n...\n").strip()


def render_yaml(fields: list[FieldDoc], title: str) -> str:
    """YAML of the resolved config; each line's comment: ``*`` when set (else the default),
    the choices, the help."""
    lines = [f"# {title}",
             "# '*' marks a value set by the preset, the file or an override; the others are defaults.",
             "# Override any field on the command line as key=value (e.g. train.lr=3e-4)."]
    rows = []
    for f in fields:
        indent = "  " * f.depth
        name = f.key.rsplit(".", 1)[-1]
        if f.section:
            rows.append((f"{indent}{name}:", f"{f.help}"))
            continue
        choices = f" [{' | '.join(map(str, f.choices))}]" if f.choices else ""
        mark = "*" if f.set else " "
        rows.append((f"{indent}{name}: {_yaml_value(f.value)}", f"{mark} {f.help}{choices}"))
    width = min(max(len(left) for left, _ in rows) + 2, 48)
    for left, comment in rows:
        lines.append(f"{left.ljust(max(width, len(left) + 2))}# {comment}".rstrip())
    return "\n".join(lines) + "\n"


def to_json(cfg: RunConfig, fields: list[FieldDoc]) -> str:
    return json.dumps({"config": cfg.to_dict(),
                       "fields": [{"key": f.key, "value": f.value, "default": f.default, "set": f.set,
                                   "help": f.help, "choices": f.choices}
                                  for f in fields if not f.section]}, indent=1)
