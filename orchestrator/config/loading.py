"""Reading, overriding, saving and naming configs, and telling where each value came from (`config_sources`,
`config_yaml`: what ``--print-config`` prints).

Unknown keys are refused with the file, the dotted key and the closest valid key named; wrong types with file,
key, value and the expected type; then every field's range rule runs (`schema.validate`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import typing
from pathlib import Path
from types import UnionType
from typing import Any

import yaml

from orchestrator.config.rules import ConfigError
from orchestrator.config.schema import SEARCH_SPACE_KEYS, ExperimentConfig, unknown_key, validate
from orchestrator.io.atomic import write_text
from orchestrator.io.storage import read_text

# ---------------------------------------------------------------------------------------------- parsing


def _describe(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _coerce_scalar(value: Any, hint: Any, bad: ConfigError) -> Any:
    if hint is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if hint is float:
        # YAML 1.1 reads "1e-3" (no dot) as a string; accept any string float() takes.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise bad from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad
        return float(value)
    if not isinstance(value, str):  # hint is str
        raise bad
    return value


def _coerce(value: Any, hint: Any, source: str, key: str) -> Any:
    """Check ``value`` against a field's type hint; returns it converted (int -> float, tuple -> list)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], source, key)
    bad = ConfigError(f"{source}: {key} = {value!r}: expected {_describe(hint)}")
    if hint in (bool, int, float, str):
        return _coerce_scalar(value, hint, bad)
    if origin is list or hint is list:
        if not isinstance(value, (list, tuple)):
            raise bad
        item = args[0] if args else Any
        return [v if item is Any else _coerce(v, item, source, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or hint is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{source}: {key} = {value!r}: expected a mapping with string keys")
        return dict(value)
    raise TypeError(f"config field {key} has an unsupported type {hint}")  # a bug in this package


def _build(cls: type, data: Any, source: str, prefix: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {prefix or 'the top level'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            dotted = f"{prefix}.{key}" if prefix else str(key)
            candidates = [f"{prefix}.{n}" if prefix else n for n in names]
            raise ConfigError(f"{source}: {unknown_key(dotted, candidates)}")
    kwargs = {}
    for name in names:
        if name not in data:
            continue
        dotted = f"{prefix}.{name}" if prefix else name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, data[name], source, dotted)
        else:
            kwargs[name] = _coerce(data[name], hint, source, dotted)
    return cls(**kwargs)


# ---------------------------------------------------------------------------------------------- public API


def config_from_dict(data: dict | None, source: str = "config") -> ExperimentConfig:
    """Build and validate a config from a plain (e.g. YAML-loaded) dict; ``source`` names it in errors."""
    return validate(_build(ExperimentConfig, data, source, ""), source)


def config_to_dict(cfg: ExperimentConfig) -> dict:
    """The config as plain dicts, lists and scalars (YAML/JSON-safe, what Ray passes to workers)."""
    return dataclasses.asdict(cfg)


def parse_override(text: str, source: str = "override") -> tuple[list[str], Any]:
    """Split ``"a.b=value"`` into the key path and the YAML-parsed value."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"{source}: {text!r}: expected key=value, e.g. search.arch_lr=0.003")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: {text!r}: the value is not valid YAML ({err})") from None
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str] | dict[str, Any], source: str = "override") -> dict:
    """A copy of ``data`` (a config dict) with dotted-key overrides set, from strings or a mapping.

    Only sets values; `config_from_dict` then rejects unknown keys and bad values as for a file.
    """
    out = json.loads(json.dumps(data or {}))
    items = ([parse_override(o, source) for o in overrides] if isinstance(overrides, list)
             else [(k.split("."), v) for k, v in overrides.items()])
    for path, value in items:
        node = out
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[path[-1]] = value
    return out


def with_overrides(cfg: ExperimentConfig, overrides: list[str] | dict[str, Any],
                   source: str = "override") -> ExperimentConfig:
    """A new validated config: ``cfg`` with dotted-key overrides (what a Tune trial samples) applied."""
    return config_from_dict(apply_overrides(config_to_dict(cfg), overrides, source), source)


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML config (a local file or a storage URI), apply ``key=value`` overrides, validate.

    Errors name the file (and ``override`` for a bad override).
    """
    path = str(path)
    try:
        data = yaml.safe_load(read_text(path))
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    if not overrides:
        return config_from_dict(data, path)
    _build(ExperimentConfig, data, path, "")  # unknown keys and types in the file name the file alone
    source = f"{path} with overrides {' '.join(overrides)}"
    return config_from_dict(apply_overrides(data, list(overrides), source), source)


# ---------------------------------------------------------------------------------------------- sources

DEFAULT_SOURCE = "default"


def _sets(data: Any, dotted: str) -> bool:
    """Whether the nested mapping ``data`` holds the dotted key."""
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return False
        data = data[part]
    return True


def _field_keys(obj: Any, prefix: str = "") -> list[str]:
    """The dotted key of every field of a config, sections walked into (a dict-valued field is one key)."""
    keys = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        keys += _field_keys(value, f"{prefix}{f.name}.") if dataclasses.is_dataclass(value) else [prefix + f.name]
    return keys


def config_sources(path: str | os.PathLike, overrides: list[str] | None = None) -> dict[str, str]:
    """Where each field of ``load_config(path, overrides)`` got its value: ``default``, the file (``path``), or
    ``override <key=value>`` (the last override that set it; after the file's name when it set only a key inside
    a mapping the file gave). Call it after `load_config` succeeded: errors are reported there."""
    data = yaml.safe_load(read_text(str(path))) or {}
    sources = {key: str(path) if _sets(data, key) else DEFAULT_SOURCE
               for key in _field_keys(ExperimentConfig())}
    for text in overrides or []:
        touched, inner = apply_overrides({}, [text]), ".".join(parse_override(text)[0])
        for key in sources:
            if _sets(touched, key):  # the field, a key inside a mapping field, or a field in a section's mapping
                within = inner.startswith(key + ".") and sources[key] != DEFAULT_SOURCE  # the rest stays
                sources[key] = f"{sources[key]}, override {text}" if within else f"override {text}"
    return sources


def _flow(value: Any) -> str:
    """One value as one line of YAML (flow style for lists and mappings)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=math.inf, sort_keys=False)
    return text.removesuffix("...\n").strip()


def config_yaml(cfg: ExperimentConfig, sources: dict[str, str]) -> str:
    """The resolved config as YAML, one line per key with its source as a comment (``# default``, ``# <file>``,
    ``# override key=value``): what ``--print-config`` prints. It loads back to `config_to_dict` of ``cfg``."""
    rows: list[tuple[str, str]] = []

    def walk(obj: Any, prefix: str, indent: str) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                rows.append((f"{indent}{f.name}:", ""))
                walk(value, f"{prefix}{f.name}.", indent + "  ")
            else:
                rows.append((f"{indent}{f.name}: {_flow(value)}", sources.get(prefix + f.name, DEFAULT_SOURCE)))

    walk(cfg, "", "")
    width = max(len(line) for line, source in rows if source)
    return "".join(f"{line.ljust(width)}  # {source}\n" if source else f"{line}\n" for line, source in rows)


def save_config(cfg: ExperimentConfig, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML, atomically (temp file in the same folder, then os.replace)."""
    write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None))


# ---------------------------------------------------------------------------------------------- names

_HASH_EXCLUDED = ("name", "storage_path")  # where a run lives is not what it computes
_HASH_EXCLUDED_KEYS = {"runtime": ("progress_seconds",)}  # how a run reports progress is not what it computes
_HASH_NEW_DEFAULTS = {"search_space": {"head_mix": "sum"}}
"""Keys added after runs were named, left out of the hash at the value every earlier run had: an existing run
keeps its name (and resumes) under the new version."""


def config_hash(cfg: ExperimentConfig, length: int = 8) -> str:
    """A short stable hash of the resolved config (without name, storage_path and progress settings), for
    derived names."""
    data = {k: v for k, v in config_to_dict(cfg).items() if k not in _HASH_EXCLUDED}
    for section, keys in _HASH_EXCLUDED_KEYS.items():
        data[section] = {k: v for k, v in data[section].items() if k not in keys}
    for section, defaults in _HASH_NEW_DEFAULTS.items():
        data[section] = {k: v for k, v in data[section].items() if k not in defaults or defaults[k] != v}
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def derive_name(cfg: ExperimentConfig, source: str | os.PathLike | None = None) -> str:
    """``cfg.name``, else ``<config file stem>-<config_hash>``: the same config always names the same run,
    so running it again resumes it."""
    if cfg.name:
        return cfg.name
    stem = Path(source).stem if source else "search"
    return f"{stem}-{config_hash(cfg)}"


def search_space_of(cfg: ExperimentConfig) -> dict:
    """The values that fix the supernet's shape (compared when resuming a checkpoint)."""
    return {k: getattr(cfg.search_space, k) for k in SEARCH_SPACE_KEYS}
