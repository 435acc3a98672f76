"""The arguments each admin verb takes: name, JSON type, length or range, whether it may be null.

Checked in one place, ``call``, before the ``Api`` method runs: by the admin socket for every
request and by the CLI's ``LocalClient`` when no server runs. A value that passes here has the
type the verb expects and a bounded size; what it means (a size, a name, a config key) is still
checked where it is used (vmblock.config, vmblock.meta.pool), which gives the detailed message.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from vmblock.cache.groups import PROMOTE
from vmblock.errors import InvalidArgument
from vmblock.store.layout import TIER_NAMES

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
        if isinstance(value, bool) or not isinstance(value, int):
            raise _wrong(where, "an integer", value)
        if not self.lo <= value <= self.hi:
            raise InvalidArgument(f"{where} must be from {self.lo} to {self.hi}, not {value}")


@dataclass(frozen=True)
class Flag:
    """A JSON boolean; "no" or 0 would be read as true by Python, so they are refused."""

    def check(self, where: str, value) -> None:
        if not isinstance(value, bool):
            raise _wrong(where, "true or false", value)


@dataclass(frozen=True)
class OneOf:
    choices: tuple[str, ...]

    def check(self, where: str, value) -> None:
        if not isinstance(value, str) or value not in self.choices:
            shown = repr(value) if isinstance(value, str) and len(value) <= 40 else \
                _json_type(value)
            raise InvalidArgument(f"{where} must be one of {', '.join(self.choices)}, "
                                  f"not {shown}")


@dataclass(frozen=True)
class Size:
    """A size string such as '8G' or a number of bytes; its range is the pool's to check."""

    def check(self, where: str, value) -> None:
        if isinstance(value, int) and not isinstance(value, bool):
            return
        if not isinstance(value, str):
            raise _wrong(where, "a size such as 1G or a number of bytes", value)
        Text(32).check(where, value)


@dataclass(frozen=True)
class Arg:
    type: Text | Int | Flag | OneOf | Size
    required: bool = False     # else absent means the verb's default
    null: bool = False         # JSON null allowed: the verb's default of None


# Lengths: names as vmblock.meta.pool allows them; iSCSI names at most 223 bytes (RFC 7143
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

_name = Arg(NAME, required=True)
_flag = Arg(Flag())

VERB_ARGS: dict[tuple[str, str], dict[str, Arg]] = {
    ("vm", "create"): {"name": _name, "guest_os": Arg(GUEST_OS), "location": Arg(LOCATION)},
    ("vm", "list"): {},
    ("vm", "show"): {"name": _name},
    ("vm", "set"): {"name": _name, "guest_os": Arg(GUEST_OS, null=True),
                    "location": Arg(LOCATION, null=True), "active": Arg(Flag(), null=True)},
    ("vm", "delete"): {"name": _name, "purge": _flag, "force": _flag},
    ("vm", "snapshot"): {"name": _name, "snapshot": _name},
    ("vm", "clone"): {"name": _name, "new_name": _name, "snapshot": Arg(NAME, null=True),
                      "live": _flag},
    ("vm", "revert"): {"name": _name, "snapshot": _name, "force": _flag},
    ("vdisk", "create"): {"name": _name, "size": Arg(Size(), required=True),
                          "vm": Arg(NAME, null=True), "target": Arg(IQN, null=True)},
    ("vdisk", "list"): {"vm": Arg(NAME, null=True)},
    ("vdisk", "show"): {"name": _name},
    ("vdisk", "delete"): {"name": _name, "force": _flag},
    ("vdisk", "resize"): {"name": _name, "size": Arg(Size(), required=True)},
    ("vdisk", "snapshot"): {"name": _name, "snapshot": _name},
    ("vdisk", "revert"): {"name": _name, "snapshot": _name, "force": _flag},
    ("vdisk", "move"): {"name": _name, "tier": Arg(OneOf(TIER_NAMES), required=True)},
    ("snapshot", "list"): {"vm": Arg(NAME, null=True)},
    ("snapshot", "delete"): {"name": _name, "vm": Arg(NAME, null=True),
                             "vdisk": Arg(NAME, null=True)},
    ("config", "get"): {"key": Arg(KEY, required=True)},
    ("config", "set"): {"key": Arg(KEY, required=True), "value": Arg(VALUE, required=True)},
    ("config", "unset"): {"key": Arg(KEY, required=True)},
    ("config", "list"): {},
    ("session", "list"): {},
    ("pool", "show"): {},
    ("pool", "check"): {},
    ("event", "list"): {"limit": Arg(EVENT_LIMIT)},
    ("group", "create"): {"name": Arg(GROUP, required=True), "priority": Arg(PRIORITY),
                          "min": Arg(FRACTION), "max": Arg(FRACTION),
                          "promote": Arg(OneOf(tuple(PROMOTE))), "pinned": _flag},
    ("group", "list"): {},
    ("group", "show"): {"name": Arg(GROUP, required=True)},
    ("group", "set"): {"name": Arg(GROUP, required=True), "priority": Arg(PRIORITY, null=True),
                       "min": Arg(FRACTION, null=True), "max": Arg(FRACTION, null=True),
                       "promote": Arg(OneOf(tuple(PROMOTE)), null=True),
                       "pinned": Arg(Flag(), null=True)},
    ("group", "delete"): {"name": Arg(GROUP, required=True)},
    ("group", "assign"): {"target": _name, "to": Arg(GROUP, required=True),
                          "kind": Arg(OneOf(("vm", "vdisk")), null=True)},
    ("vdisk", "pin"): {"name": _name},
    ("vdisk", "unpin"): {"name": _name},
    ("cache", "show"): {},
    ("cache", "preload"): {"vdisk": _name},
}


def check_args(group: str, verb: str, kwargs: dict) -> None:
    """Refuse, in one line, an argument the verb does not take, lacks or cannot use."""
    table = VERB_ARGS.get((group, verb))
    if table is None:
        raise InvalidArgument(f"unknown admin verb {group} {verb}")
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


def call(api, group: str, verb: str, kwargs: dict):
    """Run a verb on ``api`` with checked arguments; an awaitable for the server's slow verbs."""
    check_args(group, verb, kwargs)
    return getattr(api, f"{group}_{verb}")(**kwargs)
