"""Range rules that sit on the config fields they check, and the walk that applies them.

A field declared with `setting` carries its default and its rules; `check_fields` walks a config, runs every
field's rules and raises a `ConfigError` naming source, key, value and what was expected:

    epochs: int = setting(40, at_least(1))  # the paper searches for 40 epochs

A rule is a function ``(value, section, root) -> str | None``: what was expected when the value fails, else None.
``section`` is the dataclass holding the field (for rules between fields of one section), ``root`` the whole
config (for the few rules across sections). A rule about a nested part of its value (one entry of a mapping)
raises a `ConfigError` naming that part itself; the walk adds the source.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

Rule = Callable[[Any, Any, Any], "str | None"]


class ConfigError(ValueError):
    """A config file, override or dict that cannot be used; the message names source, key and expectation."""


def setting(default: Any, *rules: Rule) -> Any:
    """A dataclass field with ``default`` (copied per instance when a list or dict) and the rules it must pass."""
    metadata = {"rules": rules}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def rule(ok: Callable[[Any], bool], expected: str) -> Rule:
    """The value alone must satisfy ``ok``."""
    return lambda value, section, root: None if ok(value) else expected


def relation(ok: Callable[[Any, Any], bool], expected: str) -> Rule:
    """``ok(value, section)``: the value checked against other fields of its section, which ``expected`` may
    quote as ``{field}`` (e.g. ``"<= search.lr ({lr})"``)."""
    return lambda value, section, root: None if ok(value, section) else expected.format_map(vars(section))


def at_least(low: int | float, expected: str | None = None) -> Rule:
    return rule(lambda v: v >= low, expected or f"an integer >= {low}")


def above(low: int | float, expected: str | None = None) -> Rule:
    return rule(lambda v: v > low, expected or f"a value > {low}")


def one_of(choices: Iterable[str], expected: str | None = None) -> Rule:
    choices = tuple(choices)
    return rule(lambda v: v in choices, expected or f"one of {', '.join(choices)}")


def optional(inner: Rule) -> Rule:
    """None (YAML null) passes; any other value must pass ``inner``."""

    def check(value: Any, section: Any, root: Any) -> str | None:
        if value is None:
            return None
        expected = inner(value, section, root)
        return None if expected is None else f"{expected}, or null"

    return check


def check_fields(section: Any, source: str, root: Any = None, prefix: str = "") -> None:
    """Run the rules of every field of ``section`` and of its nested sections, in field order."""
    root = section if root is None else root
    for f in dataclasses.fields(section):
        value, key = getattr(section, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            check_fields(value, source, root, f"{key}.")
            continue
        for check in f.metadata.get("rules", ()):
            try:
                expected = check(value, section, root)
            except ConfigError as err:  # a rule that names a nested part of the value itself
                raise ConfigError(f"{source}: {err}") from None
            if expected is not None:
                raise ConfigError(f"{source}: {key} = {value!r}: expected {expected}")
