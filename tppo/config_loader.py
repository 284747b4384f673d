"""Loading documented dataclass configs: YAML, ``key=value`` overrides, type and range checks.

One loader for every config of the project (``tppo train`` / ``eval`` / ``bench`` read
:class:`tppo.config.TPPOConfig`, ``tppo sft`` reads :class:`tppo.sft.SFTConfig`):

1. :func:`read_yaml` reads a file of sections (a missing file or bad YAML is a :class:`ConfigError`);
2. :func:`parse_overrides` turns ``["rollout.window_length=64"]`` into a nested dict (YAML values);
3. :func:`from_dict` builds the dataclass, refusing an unknown key (naming the closest valid ones)
   and a value of the wrong type (ints pass as floats, lists as tuples);
4. :func:`check_fields` checks every value against the constraints its type carries:
   ``Annotated[float, Interval(ge=0, lt=1)]`` (the :mod:`annotated_types` vocabulary: ``Gt``,
   ``Ge``, ``Lt``, ``Le``, ``Interval``, ``MinLen``), element by element for tuples and lists, and
   every float must be finite. ``None`` (where the type allows it) always passes: it means "off".

Why not OmegaConf structured configs: OmegaConf checks types but not ranges (most of what is
refused here), suggests no close key for a misspelt one, and its ``Literal`` and tuple support is
new (2.4) where ours is tested; the loader below is about 200 lines with no dependency beyond PyYAML
and ``annotated_types``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Annotated, Any, TypeVar

import annotated_types as at
import yaml

T = TypeVar("T")

# Constrained types, shared by every config dataclass.
PositiveInt = Annotated[int, at.Gt(0)]
NonNegativeInt = Annotated[int, at.Ge(0)]
PositiveFloat = Annotated[float, at.Gt(0)]
NonNegativeFloat = Annotated[float, at.Ge(0)]
UnitInterval = Annotated[float, at.Interval(ge=0, le=1)]
"""A float in [0, 1]."""
UnitIntervalOpen = Annotated[float, at.Interval(ge=0, lt=1)]
"""A float in [0, 1) (a clip range below 1, an Adam beta)."""
Probability = Annotated[float, at.Interval(gt=0, le=1)]
"""A float in (0, 1] (``top_p``, a memory share)."""
Seed = Annotated[int, at.Interval(ge=0, lt=2**32)]
"""A seed numpy accepts: [0, 2**32)."""
NonEmptyStr = Annotated[str, at.MinLen(1)]


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key."""


def require(ok: bool, key: str, message: str) -> None:
    """Raise :class:`ConfigError` ``"key: message"`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key}: {message}")


# ------------------------------------------------------------------------------ reading
def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in the YAML file at ``path`` (empty file: ``{}``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    with path.open() as handle:
        try:
            loaded = yaml.safe_load(handle)
        except yaml.YAMLError as error:
            first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {first_line}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections")
    return loaded or {}


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["rollout.window_length=64", "optim.betas=[0.9,0.99]"]`` -> a nested dict (YAML values)."""
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        dotted, raw = item.split("=", 1)
        node = nested
        *parents, leaf = dotted.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is both a value and a section")
        try:
            node[leaf] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            raise ConfigError(f"override {item!r}: {raw!r} is not a valid YAML value") from None
    return nested


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``update`` wins."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def load_structured(
    cls: type[T], path: str | Path | None, overrides: dict[str, Any], *, skip: tuple[str, ...] = ()
) -> T:
    """Defaults of ``cls``, then the YAML file at ``path`` (less its top-level sections named in
    ``skip``, which other readers own), then ``overrides``; types and field constraints checked
    (:func:`from_dict`, :func:`check_fields`)."""
    loaded = read_yaml(path) if path is not None else {}
    data = merge({k: v for k, v in loaded.items() if k not in skip}, overrides)
    config = from_dict(cls, data)
    check_fields(config)
    return config


# ------------------------------------------------------------------------------ types
def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a nested dict, refusing unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(_unknown_key_message(prefix + str(key), list(fields), prefix))
        kwargs[key] = _coerce(hints[key], value, prefix + key)
    return cls(**kwargs)


def _unknown_key_message(key: str, valid: list[str], prefix: str) -> str:
    leaf = key[len(prefix) :]
    close = difflib.get_close_matches(leaf, valid, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(prefix + c for c in close)}?" if close else ""
    return f"unknown config key {key!r}{hint} (valid keys here: {', '.join(prefix + v for v in valid)})"


def _coerce(hint: Any, value: Any, key: str) -> Any:
    """Check ``value`` against type ``hint`` (ints pass as floats; lists as tuples)."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value if value is not None else {}, key + ".")  # type: ignore[arg-type]
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} matches none of {hint}")
    if origin is typing.Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            hint_text = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{key}: {value!r} is not one of {list(choices)}{hint_text}")
        return value
    if origin is list:
        (arg,) = typing.get_args(hint)
        items = value if isinstance(value, list | tuple) else [value]  # one value: a list of one
        return [_coerce(arg, v, f"{key}[{i}]") for i, v in enumerate(items)]
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    return _coerce_scalar(hint, value, key)


def _coerce_scalar(hint: Any, value: Any, key: str) -> Any:
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads `1e-4` (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint in (int, float, str, bool) and not (
        isinstance(value, hint) and not (hint is int and isinstance(value, bool))
    ):
        raise ConfigError(f"{key}: expected {hint.__name__}, got {value!r} ({type(value).__name__})")
    return value


# ------------------------------------------------------------------------------ constraints
def check_fields(config: Any, prefix: str = "") -> None:
    """Every field of dataclass ``config`` (nested ones too) against its type's constraints."""
    hints = typing.get_type_hints(type(config), include_extras=True)
    for f in dataclasses.fields(config):
        value, key = getattr(config, f.name), prefix + f.name
        if dataclasses.is_dataclass(value):
            check_fields(value, key + ".")
        else:
            _check_value(hints[f.name], value, key, optional=False)


def _check_value(hint: Any, value: Any, key: str, *, optional: bool) -> None:
    if value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}: must be a finite number, got {value}")
    origin = typing.get_origin(hint)
    if origin is Annotated:
        inner, *constraints = typing.get_args(hint)
        for constraint in constraints:
            _check_constraint(constraint, value, key, optional=optional)
        _check_value(inner, value, key, optional=optional)
    elif origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(options) == 1:
            _check_value(options[0], value, key, optional=len(options) < len(typing.get_args(hint)))
    elif origin in (tuple, list) and isinstance(value, list | tuple):
        items = typing.get_args(hint)
        for i, item in enumerate(value):
            _check_value(items[min(i, len(items) - 1)], item, f"{key}[{i}]", optional=False)


def _check_constraint(constraint: Any, value: Any, key: str, *, optional: bool) -> None:
    or_null = " or null" if optional else ""
    if isinstance(constraint, at.MinLen):
        require(len(value) >= constraint.min_length, key, f"must not be empty{or_null}, got {value!r}")
        return
    bounds = {name: getattr(constraint, name, None) for name in ("gt", "ge", "lt", "le")}
    ok = all(
        bound is None or test(value, bound)
        for bound, test in (
            (bounds["gt"], lambda v, b: v > b),
            (bounds["ge"], lambda v, b: v >= b),
            (bounds["lt"], lambda v, b: v < b),
            (bounds["le"], lambda v, b: v <= b),
        )
    )
    require(ok, key, f"must be {_describe(bounds)}{or_null}, got {value!r}")


def _describe(bounds: dict[str, Any]) -> str:
    low = ("(", bounds["gt"]) if bounds["gt"] is not None else ("[", bounds["ge"])
    high = (")", bounds["lt"]) if bounds["lt"] is not None else ("]", bounds["le"])
    if low[1] is not None and high[1] is not None:
        return f"in {low[0]}{low[1]}, {high[1]}{high[0]}"
    if low[1] is not None:
        return f"{'>' if low[0] == '(' else '>='} {low[1]}"
    return f"{'<' if high[0] == ')' else '<='} {high[1]}"


# ------------------------------------------------------------------------------ writing
def to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists), ready for YAML or JSON."""

    def plain(value: Any) -> Any:
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


def field_docs(cls: type) -> dict[str, str]:
    """Each field's documentation, from the ``Attributes:`` section of ``cls``'s docstring."""
    import docstring_parser

    parsed = docstring_parser.parse(cls.__doc__ or "")
    return {p.arg_name: " ".join((p.description or "").split()) for p in parsed.params}
