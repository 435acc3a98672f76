"""Eviction groups: a named policy shared by a set of vdisks (and so VMs).

``NAME:priority=P,min=F,max=F,promote=read|write|never,pinned=0|1`` — ``min`` and ``max`` are
shares of the cache, ``10%`` or ``0.1`` (``vmblock.units.parse_fraction``: a bare number above 1
is refused, not read as a percentage). Priority: a higher number is kept longer.
Promotion: ``read`` admits blocks on read misses, ``write`` on read and write misses,
``never`` admits nothing (the group only serves what is already cached or preloaded).
A pinned group is never evicted from (it still cannot grow past ``max``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vmblock.errors import CacheError, InvalidArgument
from vmblock.units import parse_fraction, parse_kv_list

PROMOTE = {"never": 0, "read": 1, "write": 2}
GROUP_KEYS = ("priority", "min", "max", "promote", "pinned")
MAX_GROUPS = 32          # groups the directory is built with; unused ones have max 0
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class GroupSpec:
    """One eviction group's settings: priority, min/max share of the cache (0..1), what it
    admits on, and whether its blocks are pinned."""

    name: str
    priority: int = 0
    min: float = 0.0
    max: float = 1.0
    promote: str = "write"
    pinned: bool = False

    def check(self) -> None:
        """Refuse, as a CacheError, a name or setting the cache cannot use."""
        if not _NAME_RE.match(self.name):
            raise CacheError(f"invalid group name {self.name!r}")
        if not 0.0 <= self.min <= 1.0 or not 0.0 <= self.max <= 1.0:
            raise CacheError(f"group {self.name}: min and max must be between 0 and 100%")
        if self.min > self.max:
            raise CacheError(f"group {self.name}: min {self.min:.0%} is above max {self.max:.0%}")
        if self.promote not in PROMOTE:
            raise CacheError(f"group {self.name}: promote must be one of {', '.join(PROMOTE)}")


def parse_share(text: str, what: str) -> float:
    """A group's ``min`` or ``max`` share ('10%' or '0.1', as ``units.parse_fraction`` reads
    every fraction) with a bad one reported as a ``CacheError``, the cache's user error."""
    try:
        return parse_fraction(text, what)
    except InvalidArgument as e:
        raise CacheError(str(e)) from None


def parse_group(text: str) -> GroupSpec:
    """``NAME[:key=value,...]`` -> checked ``GroupSpec``."""
    name, _, rest = text.partition(":")
    name = name.strip()
    try:
        items = parse_kv_list(rest, f"group {name}", GROUP_KEYS)
    except InvalidArgument as e:
        raise CacheError(str(e)) from None
    kw: dict = {}
    for key, value in items.items():
        if key == "priority":
            try:
                kw["priority"] = int(value)
            except ValueError:
                raise CacheError(f"group {name}: priority={value!r} is not an integer") from None
        elif key in ("min", "max"):
            kw[key] = parse_share(value, f"group {name}: {key}")
        elif key == "promote":
            kw["promote"] = value
        else:
            if value not in ("0", "1", "true", "false"):
                raise CacheError(f"group {name}: pinned={value!r} is not 0/1")
            kw["pinned"] = value in ("1", "true")
    spec = GroupSpec(name, **kw)
    spec.check()
    return spec


def validate_groups(specs: list[GroupSpec]) -> None:
    """Each group valid, names unique, minimum reservations not over 100% in total."""
    seen = set()
    for s in specs:
        s.check()
        if s.name in seen:
            raise CacheError(f"group {s.name} defined twice")
        seen.add(s.name)
    total = sum(s.min for s in specs)
    if total > 1.0 + 1e-9:
        raise CacheError(f"minimum reservations sum to {total:.0%}, over 100% of the cache")
