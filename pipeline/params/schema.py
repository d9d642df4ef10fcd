"""Typed, validated configuration built from plain mappings (``params.yaml`` sections).

Every section of ``params.yaml`` is described by a dataclass. :func:`build` turns a mapping
into that dataclass and rejects, with one :class:`ParamError` naming the dotted key and the
allowed values, unknown keys, wrong types, values outside ``Literal`` choices, values outside
the numeric bounds declared with :func:`bounded`, and any number that is not finite (NaN, ±inf).
Two kinds of field take their allowed values from a registry when the config is built, so that
registering a new entry (a scenario) needs no edit here: :func:`one_of` (a name) and
:func:`sections` (one sub-mapping per registered name). :func:`check_name` holds the names of
experiments and studies to :data:`NAME`.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from pipeline.errors import UserError

T = TypeVar("T")

# An experiment's or a study's name: it becomes a folder (data/<name>, models/<name>,
# studies/<name>) and a segment of DVC's dotted keys, so no "/", no "." and no newline.
NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")


class ParamError(UserError, ValueError):
    """A parameter a user can fix: the message names the key and what is allowed."""


def check_name(name: Any, what: str) -> str:
    """``name`` if :data:`NAME` matches all of it, else a :class:`ParamError` saying so (``what``:
    e.g. "experiment name", "--study")."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ParamError(f"{what} {name!r} is not a valid name: use lower case letters, digits, _ and - only, "
                         "starting with a letter or digit (e.g. lt_ref)")
    return name


def bounded(default: Any, *, ge: float | None = None, gt: float | None = None,
            le: float | None = None, lt: float | None = None, added: bool = False, **kwargs: Any) -> Any:
    """A dataclass field with numeric bounds checked by :func:`build`.

    ``added``: a switch added after runs were recorded, whose default reproduces what those runs
    did. At its default it is left out of ``to_dict(..., hashing=True)``, so the configuration
    hashes of recorded runs (``config_hash``: resume checks, the reference sweep's outdated-metrics
    check) stay valid; any other value changes them."""
    meta = {"ge": ge, "gt": gt, "le": le, "lt": lt, "added": added}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta, **kwargs)
    return dataclasses.field(default=default, metadata=meta, **kwargs)


def one_of(choices: Callable[[], Iterable[str]], **kwargs: Any) -> Any:
    """A string field whose allowed values are ``choices()`` when the config is built (e.g. the
    registered scenarios); a value outside them is refused as a ``Literal`` would refuse it."""
    return dataclasses.field(metadata={"choices": choices}, **kwargs)


def sections(registry: Callable[[], Mapping[str, type]]) -> Any:
    """A field holding one section per entry of ``registry()`` (name -> dataclass), built when the
    config is: in params.yaml and in :func:`to_dict` each section is a key of the parent mapping
    (after its other keys, in the registry's order), built with its defaults when absent, and it
    reads as a dict ``{name: section}``."""
    return dataclasses.field(default_factory=dict, metadata={"sections": registry})


def keys(cls: type) -> list[str]:
    """The keys a mapping for dataclass ``cls`` may have: its fields read from params.yaml, with a
    :func:`sections` field replaced by the names of its sections."""
    out = []
    for f in dataclasses.fields(cls):
        if f.init:
            out += list(f.metadata["sections"]()) if "sections" in f.metadata else [f.name]
    return out


def describe(tp: Any) -> str:
    """Human-readable name of an annotation, used in error messages."""
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in get_args(tp))
    if origin in (list, tuple):
        return f"a list of {describe(get_args(tp)[0])}"
    if origin in (dict, Mapping):
        return f"a mapping of {describe(get_args(tp)[1])}"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return f"a mapping with keys {', '.join(keys(tp))}"
    return getattr(tp, "__name__", str(tp))


def _check_bounds(value: Any, meta: Mapping[str, Any], where: str) -> None:
    checks = {"ge": (lambda v, b: v >= b, ">="), "gt": (lambda v, b: v > b, ">"),
              "le": (lambda v, b: v <= b, "<="), "lt": (lambda v, b: v < b, "<")}
    for key, (ok, sym) in checks.items():
        bound = meta.get(key)
        if bound is not None and value is not None and not ok(value, bound):
            raise ParamError(f"{where} = {value!r} is out of range: it must be {sym} {bound}")


def check_finite(value: Any, where: str) -> None:
    """Refuse NaN and ±inf anywhere in ``value`` (a number, or lists and mappings of them, e.g. a
    method block or a search space): YAML's ``.nan`` fails every comparison, so it passes every
    bound check, and ``.inf`` passes every lower bound (``optim.lr: .inf``)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ParamError(f"{where} = {value!r} is not a finite number: give a finite value")
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_finite(item, f"{where}[{i}]")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            check_finite(item, f"{where}.{key}")


def convert(tp: Any, value: Any, where: str) -> Any:
    """Check ``value`` against annotation ``tp`` and convert it (mappings to dataclasses)."""
    origin = get_origin(tp)
    if origin is Literal:
        if value not in get_args(tp):
            raise ParamError(f"{where} = {value!r} is not allowed: use {describe(tp)}")
        return value
    if origin in (Union, types.UnionType):
        errors = []
        for option in get_args(tp):
            try:
                return convert(option, value, where)
            except ParamError as err:
                errors.append(err)
        raise ParamError(f"{where} = {value!r} is not allowed: use {describe(tp)}")
    if tp is type(None):
        if value is not None:
            raise ParamError(f"{where} = {value!r} is not allowed: use null")
        return None
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ParamError(f"{where} must be {describe(tp)}, got {value!r}")
        return build(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ParamError(f"{where} must be {describe(tp)}, got {value!r}")
        (item,) = get_args(tp)[:1]
        return [convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ParamError(f"{where} must be {describe(tp)}, got {value!r}")
        _, item = get_args(tp)
        return {str(k): convert(item, v, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ParamError(f"{where} = {value!r} must be true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamError(f"{where} = {value!r} must be an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamError(f"{where} = {value!r} must be a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ParamError(f"{where} = {value!r} must be a string")
        return value
    raise TypeError(f"unsupported annotation {tp!r} at {where}")


def build(cls: type[T], raw: Mapping[str, Any] | None, where: str) -> T:
    """Build dataclass ``cls`` from ``raw``; missing keys take their defaults.

    Raises :class:`ParamError` for unknown keys, missing required keys, wrong types,
    out-of-range values and numbers that are not finite. ``__post_init__`` may raise
    :class:`ParamError` for cross-field rules; a ``validate(where)`` method, if the class has one,
    is called with the dotted prefix so that its errors can name the full key (e.g.
    ``experiments.lt.methods.meta_iada.alpha``).
    """
    raw = dict(raw or {})
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(raw) - set(keys(cls)))
    if unknown:
        raise ParamError(f"unknown key {where}.{unknown[0]}: allowed keys are {', '.join(keys(cls))}")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        key = f"{where}.{name}"
        if "sections" in f.metadata:
            kwargs[name] = {s: build_section(tp, raw, s, f"{where}.{s}") for s, tp in f.metadata["sections"]().items()}
            continue
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ParamError(f"missing key {key}: it must be {describe(hints[name])}")
            continue
        check_finite(raw[name], key)
        value = convert(hints[name], raw[name], key)
        _check_bounds(value, f.metadata, key)
        if "choices" in f.metadata and value not in (allowed := list(f.metadata["choices"]())):
            raise ParamError(f"{key} = {value!r} is not allowed: use one of {', '.join(map(repr, allowed))}")
        kwargs[name] = value
    try:
        obj = cls(**kwargs)
    except ParamError as err:  # a cross-field rule of __post_init__: give the full dotted key
        parent, _, last = where.rpartition(".")
        msg = str(err)
        raise ParamError(f"{parent}.{msg}" if parent and msg.startswith(last + ".") else msg) from None
    validate = getattr(obj, "validate", None)
    if callable(validate):  # cross-field rules that name keys under ``where`` themselves
        validate(where)
    return obj


def build_section(cls: type, raw: Mapping[str, Any], name: str, where: str) -> Any:
    """Section ``name`` of a :func:`sections` field: ``raw[name]`` as ``cls``, or its defaults."""
    if name not in raw:
        return build(cls, {}, where)
    check_finite(raw[name], where)
    return convert(cls, raw[name], where)


def to_dict(obj: Any, *, hashing: bool = False) -> Any:
    """Plain-data view of a config (for logging, hashing and MLflow params); fields that are not
    read from params.yaml (``init=False``, e.g. an experiment's name) are left out, and with
    ``hashing`` also ``added`` fields at their default (see :func:`bounded`); a :func:`sections`
    field gives its sections as keys of their own."""
    if dataclasses.is_dataclass(obj):
        out = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if not f.init or (hashing and f.metadata.get("added") and value == f.default):
                continue
            if "sections" in f.metadata:
                out.update({k: to_dict(v, hashing=hashing) for k, v in value.items()})
            else:
                out[f.name] = to_dict(value, hashing=hashing)
        return out
    if isinstance(obj, dict):
        return {k: to_dict(v, hashing=hashing) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v, hashing=hashing) for v in obj]
    return obj


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
