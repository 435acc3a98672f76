"""The arguments each admin verb takes: name, JSON type, length or range, whether it may be null.

The table of each verb is derived from its signature (``args_of``) and checked in one place,
``vmblock.admin.api.run_verb``, before the verb runs: by the admin socket for every request and by
the CLI's ``LocalClient`` when no server runs. A value that passes here has the
type the verb expects and a bounded size; what it means (a size, a name, a config key) is still
checked where it is used (vmblock.settings, vmblock.meta.model), which gives the detailed message.
"""

from __future__ import annotations

import importlib
import inspect
import unicodedata
from dataclasses import dataclass
from types import UnionType
from typing import Annotated, Union, get_args, get_origin, get_type_hints

from vmblock.errors import InvalidArgument

_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "a number",
               float: "a number", bool: "true or false", type(None): "null"}


def _json_type(value) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _wrong(where: str, want: str, value) -> InvalidArgument:
    return InvalidArgument(f"{where} must be {want}, not {_json_type(value)}")


@dataclass(frozen=True)
class Text:
    """A string of at most ``max_len`` printable characters that encodes as UTF-8."""

    max_len: int

    def check(self, where: str, value) -> None:
        """Raise InvalidArgument (naming ``where``) unless ``value`` is such a string."""
        if not isinstance(value, str):
            raise _wrong(where, "a string", value)
        if len(value) > self.max_len:
            raise InvalidArgument(f"{where} is {len(value)} characters long, over the "
                                  f"{self.max_len} allowed")
        try:
            value.encode()
        except UnicodeEncodeError:
            raise InvalidArgument(f"{where} is not valid Unicode text") from None
        if any(unicodedata.category(c) == "Cc" for c in value):
            raise InvalidArgument(f"{where} contains control characters")


@dataclass(frozen=True)
class Int:
    """An integer (not a boolean) from ``lo`` to ``hi``."""

    lo: int
    hi: int

    def check(self, where: str, value) -> None:
        """Raise InvalidArgument (naming ``where``) unless ``value`` is such an integer."""
        if isinstance(value, bool) or not isinstance(value, int):
            raise _wrong(where, "an integer", value)
        if not self.lo <= value <= self.hi:
            raise InvalidArgument(f"{where} must be from {self.lo} to {self.hi}, not {value}")


@dataclass(frozen=True)
class Flag:
    """A JSON boolean; "no" or 0 would be read as true by Python, so they are refused."""

    def check(self, where: str, value) -> None:
        """Raise InvalidArgument (naming ``where``) unless ``value`` is a JSON boolean."""
        if not isinstance(value, bool):
            raise _wrong(where, "true or false", value)


@dataclass(frozen=True)
class OneOf:
    """One of a few words (a tier, a promotion policy): given, or named ``"module:NAME"``
    and looked up when first checked, so the verb table loads without the module that owns
    them (the store and the cache bring numpy and Numba, which a CLI command talking to a
    running server never needs)."""

    choices: tuple[str, ...] | str

    def words(self) -> tuple[str, ...]:
        """The allowed words."""
        if isinstance(self.choices, str):
            module, _, name = self.choices.partition(":")
            return tuple(getattr(importlib.import_module(module), name))
        return self.choices

    def check(self, where: str, value) -> None:
        """Raise InvalidArgument (naming ``where``) unless ``value`` is one of the words."""
        words = self.words()
        if not isinstance(value, str) or value not in words:
            shown = repr(value) if isinstance(value, str) and len(value) <= 40 else \
                _json_type(value)
            raise InvalidArgument(f"{where} must be one of {', '.join(words)}, "
                                  f"not {shown}")


@dataclass(frozen=True)
class Size:
    """A size string such as '8G' or a number of bytes; its range is the pool's to check."""

    def check(self, where: str, value) -> None:
        """Raise InvalidArgument unless ``value`` is an integer or a short size string."""
        if isinstance(value, int) and not isinstance(value, bool):
            return
        if not isinstance(value, str):
            raise _wrong(where, "a size such as 1G or a number of bytes", value)
        Text(32).check(where, value)


@dataclass(frozen=True)
class Arg:
    """One argument of a verb: its type, and whether it is required or may be null."""

    type: Text | Int | Flag | OneOf | Size
    required: bool = False     # else absent means the verb's default
    null: bool = False         # JSON null allowed: the verb's default of None


# Lengths: names as vmblock.meta.model allows them; iSCSI names at most 223 bytes (RFC 7143
# 6.1); a config key is an iSCSI name plus its prefix and field.
NAME = Text(128)
IQN = Text(223)
GROUP = Text(64)
KEY = Text(256)
VALUE = Text(4096)
GUEST_OS = Text(256)
LOCATION = Text(1024)
FRACTION = Text(32)
# unused cache directory slots sit at priority -(1 << 30), below every real group
PRIORITY = Int(-(1 << 30) + 1, (1 << 30) - 1)
EVENT_LIMIT = Int(0, 1 << 31)
POLICY = Text(32)
EVENT_KIND = Text(64)
EVENT_ID = Text(100)
EPOCH = Int(0, 1 << 40)
CURSOR = Int(0, 1 << 62)
# a follower's long poll: below the admin client's timeout
WAIT_SECONDS = Int(0, 30)

# The types of verb parameters: a verb's signature says which one each parameter is
# (``name: Name``); a bool parameter is a Flag. Whether an argument is required or may be null
# comes from its default (none, or None).
Name = Annotated[str, NAME]
Iqn = Annotated[str, IQN]
GroupName = Annotated[str, GROUP]
Key = Annotated[str, KEY]
Value = Annotated[str, VALUE]
GuestOs = Annotated[str, GUEST_OS]
Location = Annotated[str, LOCATION]
Share = Annotated[str, FRACTION]
Priority = Annotated[int, PRIORITY]
EventLimit = Annotated[int, EVENT_LIMIT]
PolicyText = Annotated[str, POLICY]
EventKind = Annotated[str, EVENT_KIND]
EventId = Annotated[str, EVENT_ID]
Epoch = Annotated[int, EPOCH]
Cursor = Annotated[int, CURSOR]
WaitSeconds = Annotated[int, WAIT_SECONDS]
SizeText = Annotated[str | int, Size()]
TierName = Annotated[str, OneOf("vmblock.store.layout:TIER_NAMES")]
Promotion = Annotated[str, OneOf("vmblock.cache.groups:PROMOTE")]
MemberKind = Annotated[str, OneOf(("vm", "vdisk"))]


def _arg_type(hint) -> Text | Int | Flag | OneOf | Size | None:
    """The checker in an ``Annotated`` hint (also inside ``X | None``); Flag for a bool."""
    if get_origin(hint) is Annotated:
        return hint.__metadata__[0]
    if hint is bool:
        return Flag()
    if get_origin(hint) in (Union, UnionType):
        found = [t for t in map(_arg_type, get_args(hint)) if t is not None]
        return found[0] if len(found) == 1 else None
    return None


def args_of(function) -> dict[str, Arg]:
    """The arguments a verb takes, from its signature: the type each parameter is annotated
    with, required when it has no default, null allowed when its default is None."""
    hints = get_type_hints(function, include_extras=True)
    table = {}
    for name, p in inspect.signature(function).parameters.items():
        if name == "self":
            continue
        arg_type = _arg_type(hints.get(name))
        if arg_type is None:
            raise TypeError(f"{function.__qualname__}: parameter {name!r} has no admin type "
                            f"(annotate it with one of vmblock.admin.schema's)")
        table[name] = Arg(arg_type, required=p.default is p.empty, null=p.default is None)
    return table


def check_args(group: str, verb: str, table: dict[str, Arg], kwargs: dict) -> None:
    """Refuse, in one line, an argument the verb does not take, lacks or cannot use."""
    for name in kwargs:
        if name not in table:
            shown = name if len(name) <= 40 else name[:40] + "..."
            raise InvalidArgument(f"{group} {verb}: unknown argument {shown!r} "
                                  f"(takes {', '.join(table) or 'none'})")
    for name, arg in table.items():
        if name not in kwargs:
            if arg.required:
                raise InvalidArgument(f"{group} {verb}: missing argument {name!r}")
            continue
        value = kwargs[name]
        if value is None and arg.null:
            continue
        arg.type.check(f"{group} {verb}: {name}", value)
