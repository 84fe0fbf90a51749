"""Plain-data records: frozen dataclasses that round-trip through JSON dicts without loss.

Everything that crosses a process boundary between the coordinator and a task
(deployment descriptors, task reports, checkpoint acknowledgements, control
messages) is a :class:`Record`. ``to_dict()`` gives plain JSON; ``from_dict()``
checks the dict against the dataclass (required fields present, no unknown field,
each value of the declared type, nested records and enums rebuilt) and raises
:class:`~sabot.errors.InvalidRequest` naming the record and the field, so a
malformed message is refused where it arrives instead of failing mid-stream.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True, slots=True)
    ... class Point(Record):
    ...     x: int
    ...     y: int = 0
    >>> Point.from_dict({"x": 1}).to_dict()
    {'x': 1, 'y': 0}
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from typing import Any, ClassVar

from sabot.errors import InvalidRequest

__all__ = ["Record"]

_PLAN_CACHE: dict[type, list] = {}


class Record:
    """Base of the frozen dataclasses that travel as JSON.

    A subclass with a ``TYPE`` tag writes it as ``"type"`` in :meth:`to_dict` and
    accepts (and checks) it in :meth:`from_dict`.
    """

    __slots__ = ()
    TYPE: ClassVar[str | None] = None

    def to_dict(self) -> dict:
        out = {"type": self.TYPE} if self.TYPE else {}
        for f in dataclasses.fields(self):
            out[f.name] = _encode(getattr(self, f.name))
        return out

    @classmethod
    def from_dict(cls, data, what: str | None = None):
        what = what or _describe(cls)
        if not isinstance(data, dict):
            raise InvalidRequest(f"{what} must be a JSON object, got {type(data).__name__}")
        plan = _plan(cls)
        names = {name for name, _, _ in plan}
        extra = set(data) - names
        if cls.TYPE:
            if data.get("type", cls.TYPE) != cls.TYPE:
                raise InvalidRequest(f"{what} has type {data.get('type')!r}; expected {cls.TYPE!r}")
            extra.discard("type")
        if extra:
            raise InvalidRequest(f"{what} has unknown field(s) {sorted(extra)}; known: {sorted(names)}")
        kwargs = {}
        for name, required, decode in plan:
            if name not in data:
                if required:
                    raise InvalidRequest(f"{what} is missing {name!r}")
                continue
            kwargs[name] = decode(data[name], f"{what}: {name!r}")
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise InvalidRequest(f"{what}: {exc}") from None


def _describe(cls) -> str:
    return cls.TYPE or cls.__name__


def _encode(value):
    if isinstance(value, Record) or hasattr(value, "to_dict") and dataclasses.is_dataclass(value):
        return value.to_dict()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    return value


def _plan(cls) -> list:
    plan = _PLAN_CACHE.get(cls)
    if plan is None:
        hints = typing.get_type_hints(cls)
        plan = []
        for f in dataclasses.fields(cls):
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            plan.append((f.name, required, _decoder(hints[f.name])))
        _PLAN_CACHE[cls] = plan
    return plan


def _decoder(hint):
    """A function ``(value, what) -> value`` checking (and rebuilding) one declared type."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        inner = _decoder(options[0]) if len(options) == 1 else _check_any_of(options)
        nullable = len(options) < len(args)

        def optional(value, what):
            if value is None:
                if nullable:
                    return None
                raise InvalidRequest(f"{what} must not be null")
            return inner(value, what)

        return optional
    if origin in (list, tuple):
        item = _decoder(args[0]) if args else (lambda v, w: v)

        def sequence(value, what):
            if not isinstance(value, (list, tuple)):
                raise InvalidRequest(f"{what} must be a list, got {type(value).__name__}")
            return [item(v, f"{what}[{i}]") for i, v in enumerate(value)]

        return sequence
    if origin is dict or hint is dict:
        def mapping(value, what):
            if not isinstance(value, dict):
                raise InvalidRequest(f"{what} must be an object, got {type(value).__name__}")
            return value

        return mapping
    if isinstance(hint, type) and hasattr(hint, "from_dict"):
        return lambda value, what: hint.from_dict(value, what)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        def member(value, what):
            try:
                return hint(value)
            except ValueError:
                raise InvalidRequest(
                    f"{what} must be one of {[m.value for m in hint]}, got {value!r}") from None

        return member
    if hint is bool:
        def boolean(value, what):
            if not isinstance(value, bool):
                raise InvalidRequest(f"{what} must be true or false, got {value!r}")
            return value

        return boolean
    if hint is int:
        def integer(value, what):
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidRequest(f"{what} must be an integer, got {value!r}")
            return value

        return integer
    if hint is float:
        def number(value, what):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InvalidRequest(f"{what} must be a number, got {value!r}")
            return float(value)

        return number
    if hint is str:
        def string(value, what):
            if not isinstance(value, str):
                raise InvalidRequest(f"{what} must be a string, got {value!r}")
            return value

        return string
    return lambda value, what: value  # Any


def _check_any_of(options):
    decoders = [_decoder(o) for o in options]

    def any_of(value, what):
        for decode in decoders:
            try:
                return decode(value, what)
            except InvalidRequest:
                continue
        raise InvalidRequest(f"{what}: {value!r} is none of {[getattr(o, '__name__', o) for o in options]}")

    return any_of
