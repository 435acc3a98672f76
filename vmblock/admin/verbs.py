"""The admin verbs are the methods marked ``@verb``; the verb table is derived from them.

A verb method is named ``<noun>_<verb>`` (``vm_create`` answers ``vmblock vm create`` and
``POST /v1/vm/create``); its signature gives the arguments the admin socket accepts
(``vmblock.admin.schema.args_of``) and its docstring says what it does. The HTTP dispatcher, the
clients and the CLI all read the one table ``vmblock.admin.api.VERBS`` built here, so a new verb
is one method, not an entry in three lists.
"""

from __future__ import annotations

from dataclasses import dataclass

from vmblock.admin.schema import Arg, args_of


def verb(method):
    """Mark ``method`` as an admin verb (so ``vdisk_created``, a hook, is not one)."""
    method.admin_verb = True
    return method


@dataclass(frozen=True)
class Verb:
    """One verb: its noun and name, where ``Api`` keeps the method and what it takes."""

    noun: str
    name: str
    part: str                 # attribute of Api holding the method's object; "" for Api itself
    function: object          # the method as defined (its signature and docstring)
    args: dict[str, Arg]

    @property
    def method(self) -> str:
        """The method's name: ``<noun>_<verb>``."""
        return f"{self.noun}_{self.name}"

    def bound(self, api):
        """The method that answers this verb on ``api`` (a subclass's override if it has one)."""
        return getattr(getattr(api, self.part) if self.part else api, self.method)


def collect(parts: dict[str, type]) -> dict[tuple[str, str], Verb]:
    """The verbs of every class in ``parts`` (attribute of Api -> class), by (noun, verb)."""
    table = {}
    for part, cls in parts.items():
        for attr in sorted(dir(cls)):
            function = getattr(cls, attr)
            if not getattr(function, "admin_verb", False):
                continue
            noun, _, name = attr.partition("_")
            if (noun, name) in table:
                raise TypeError(f"admin verb {noun} {name} is defined twice")
            table[(noun, name)] = Verb(noun, name, part, function, args_of(function))
    return table
