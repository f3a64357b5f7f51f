"""Field types of wire messages: checking and converting values to and from msgpack.

A message is a frozen dataclass; its annotations say what each field may
hold.  ``schema_for`` turns those annotations into per-field converters once,
so encoding and decoding a message is a loop over a short list.  Decoding is
strict — a bool is not an int, an unknown field is an error — because a
value that does not fit its field is a peer's protocol error, not something
to guess about.

Supported annotations: ``int``, ``float``, ``bool``, ``str``, ``bytes``,
``None``, unions of those, ``tuple[X, ...]``, ``dict[str, X]``, ``StrEnum``
subclasses, ``Code`` (an error code of any package), nested frozen
dataclasses ("records", sent as maps) and ``typing.Any`` meaning plain
msgpack data (scalars, tuples, str-keyed maps; lists come back as tuples).
"""

from __future__ import annotations

import dataclasses
import enum
import re
import types
import typing
from collections.abc import Callable
from typing import Any


class FieldError(ValueError):
    """A value does not fit the field it was given for."""


#: An error code, of the nodes package or another: 1 to 64 lower-case
#: letters, digits and underscores, starting with a letter.  A ``str`` (a
#: StrEnum member too) goes on the wire as its value and comes back a plain ``str``.
Code = typing.NewType("Code", str)
_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}\Z")


Convert = Callable[[Any], Any]

# msgpack nests at most this deep in plain data we accept: stats and reports
# are a few levels deep, and a bound keeps a hostile frame from recursing us.
_MAX_PLAIN_DEPTH = 16


def _exact(tp: type) -> Convert:
    def convert(value: Any) -> Any:
        if type(value) is not tp:
            raise FieldError(f"expected {tp.__name__}, got {type(value).__name__}")
        return value
    return convert


def _code(value: Any) -> str:
    if not isinstance(value, str) or not _CODE.match(value):
        raise FieldError(f"{value!r} is not an error code")
    return str.__str__(value)


def _none(value: Any) -> None:
    if value is not None:
        raise FieldError(f"expected None, got {type(value).__name__}")
    return None


def check_plain(value: Any, depth: int = 0) -> Any:
    if depth > _MAX_PLAIN_DEPTH:
        raise FieldError("plain data nested too deeply")
    kind = type(value)
    if value is None or kind in (bool, int, float, str, bytes):
        return value
    if kind in (tuple, list):
        return tuple(check_plain(item, depth + 1) for item in value)
    if kind is dict:
        out = {}
        for key, item in value.items():
            if type(key) is not str:
                raise FieldError("plain map keys must be str")
            out[key] = check_plain(item, depth + 1)
        return out
    raise FieldError(f"{kind.__name__} is not plain msgpack data")


class _Converters(typing.NamedTuple):
    to_wire: Convert
    from_wire: Convert


def _union(members: tuple[_Converters, ...], name: str) -> _Converters:
    def pick(which: str) -> Convert:
        funcs = [getattr(m, which) for m in members]

        def convert(value: Any) -> Any:
            for func in funcs:
                try:
                    return func(value)
                except FieldError:
                    continue
            raise FieldError(f"{type(value).__name__} does not fit {name}")
        return convert
    return _Converters(pick("to_wire"), pick("from_wire"))


def _sequence(item: _Converters) -> _Converters:
    def to_wire(value: Any) -> Any:
        if type(value) not in (tuple, list):
            raise FieldError(f"expected a tuple, got {type(value).__name__}")
        return [item.to_wire(v) for v in value]

    def from_wire(value: Any) -> Any:
        if type(value) is not tuple:
            raise FieldError(f"expected an array, got {type(value).__name__}")
        return tuple(item.from_wire(v) for v in value)
    return _Converters(to_wire, from_wire)


def _mapping(item: _Converters) -> _Converters:
    def pick(which: str) -> Convert:
        func = getattr(item, which)

        def convert(value: Any) -> Any:
            if type(value) is not dict:
                raise FieldError(f"expected a map, got {type(value).__name__}")
            out = {}
            for key, v in value.items():
                if type(key) is not str:
                    raise FieldError("map keys must be str")
                out[key] = func(v)
            return out
        return convert
    return _Converters(pick("to_wire"), pick("from_wire"))


def _enum(tp: type[enum.Enum]) -> _Converters:
    def to_wire(value: Any) -> Any:
        if not isinstance(value, tp):
            raise FieldError(f"expected {tp.__name__}, got {type(value).__name__}")
        return value.value

    def from_wire(value: Any) -> Any:
        try:
            return tp(value)
        except (ValueError, TypeError):
            raise FieldError(f"{value!r} is not a {tp.__name__}") from None
    return _Converters(to_wire, from_wire)


def _record(tp: type) -> _Converters:
    schema = schema_for(tp)

    def to_wire(value: Any) -> Any:
        if type(value) is not tp:
            raise FieldError(f"expected {tp.__name__}, got {type(value).__name__}")
        return schema.to_wire(value)

    def from_wire(value: Any) -> Any:
        if type(value) is not dict:
            raise FieldError(f"expected a {tp.__name__} map, got {type(value).__name__}")
        return schema.from_wire(value)
    return _Converters(to_wire, from_wire)


def _converters(tp: Any) -> _Converters:
    if tp is Any:
        return _Converters(check_plain, check_plain)
    if tp is Code:
        return _Converters(_code, _code)
    if tp is type(None) or tp is None:
        return _Converters(_none, _none)
    if tp in (int, float, bool, str, bytes):
        return _Converters(_exact(tp), _exact(tp))
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _enum(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _record(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return _union(tuple(_converters(a) for a in args), str(tp))
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return _sequence(_converters(args[0]))
    if origin is dict and args[0] is str:
        return _mapping(_converters(args[1]))
    raise TypeError(f"no wire form for field type {tp!r}")


class Schema:
    """How one dataclass's fields go to and from a msgpack map."""

    def __init__(self, cls: type) -> None:
        hints = typing.get_type_hints(cls)
        self.cls = cls
        self.fields: list[tuple[str, _Converters, bool]] = []
        for field in dataclasses.fields(cls):
            required = (field.default is dataclasses.MISSING
                        and field.default_factory is dataclasses.MISSING)
            self.fields.append((field.name, _converters(hints[field.name]), required))
        self.names = frozenset(name for name, _, _ in self.fields)

    def to_wire(self, obj: Any) -> dict[str, Any]:
        """Return the msgpack-ready map for ``obj``; raise FieldError if a field does not fit."""
        out = {}
        for name, conv, _ in self.fields:
            try:
                out[name] = conv.to_wire(getattr(obj, name))
            except FieldError as exc:
                raise FieldError(f"{self.cls.__name__}.{name}: {exc}") from None
        return out

    def from_wire(self, data: dict[str, Any]) -> Any:
        """Build an instance from a decoded map; raise FieldError if it does not fit."""
        unknown = data.keys() - self.names
        if unknown:
            raise FieldError(f"{self.cls.__name__} has no field {sorted(map(str, unknown))[0]!r}")
        kwargs = {}
        for name, conv, required in self.fields:
            if name in data:
                try:
                    kwargs[name] = conv.from_wire(data[name])
                except FieldError as exc:
                    raise FieldError(f"{self.cls.__name__}.{name}: {exc}") from None
            elif required:
                raise FieldError(f"{self.cls.__name__} lacks field {name!r}")
        return self.cls(**kwargs)


_SCHEMAS: dict[type, Schema] = {}


def schema_for(cls: type) -> Schema:
    """Return (and cache) the Schema of a dataclass; raise TypeError for unsupported fields."""
    schema = _SCHEMAS.get(cls)
    if schema is None:
        schema = _SCHEMAS[cls] = Schema(cls)
    return schema
