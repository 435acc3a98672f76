"""What one row of the command table says about a command, and how the table is read.

A ``CommandSpec`` is LIO's parse result made static: decode, execute, data direction,
reservation class and the CDB USAGE DATA of SPC-4 6.35.3 (the opcode, the service action,
then a mask of the bits the device server looks at). This module knows no handler, so the
handlers that read the table (REPORT SUPPORTED OPERATION CODES) can import it; the rows
themselves live in ``commands``, above the handlers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Awaitable, Callable

from vmblock.scsi.cdb import Decoder
from vmblock.scsi.constants import Direction, PrAccess

# execute(target, lu, task, lba, blocks, options) -> None, or an awaitable the fabric awaits
Handler = Callable[..., Awaitable[None] | None]


class DataRule(IntEnum):
    """How Data-Out from the initiator must relate to what the CDB asks for."""

    NONE = 0        # no Data-Out
    BLOCKS = 1      # whole blocks; a short transfer writes what arrived (SAM-5 5.4.2)
    EXACT = 2       # exactly the CDB's amount (COMPARE AND WRITE, WRITE SAME)
    AT_LEAST = 3    # at least the CDB's amount (VERIFY with BYTCHK)
    PARAM = 4       # a parameter list, validated by the handler


@dataclass(frozen=True, slots=True, eq=False)
class CommandSpec:
    """One command (or, with ``service_actions``, one opcode that dispatches on byte 1).

    ``decode(cdb, lu) -> (lba, blocks, xfer_bytes, options)`` (see ``cdb``), then
    ``execute(target, lu, task, lba, blocks, options)``; ``cdb_len`` follows from ``usage``.
    """

    opcode: int
    name: str
    decode: Decoder
    execute: Handler | None        # None on a service-action group: its members execute
    usage: bytes
    direction: Direction = Direction.NONE
    access: PrAccess = PrAccess.WRITE
    data: DataRule = DataRule.NONE
    ranged: bool = False           # LBA + blocks checked against the capacity
    ua_exempt: bool = False        # SPC-4 5.14: INQUIRY, REPORT LUNS, REQUEST SENSE
    spc2_allowed: bool = False     # allowed through another nexus's RESERVE(6/10)
    service_action: int | None = None
    service_actions: dict[int, CommandSpec] | None = field(default=None)
    cdb_len: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "cdb_len", len(self.usage))


# opcode -> spec, 256 entries, None where the opcode is not supported (tgt's ops[256])
CommandTable = list[CommandSpec | None]


def supported_specs(table: CommandTable) -> list[CommandSpec]:
    """Every (opcode, service action) of a table, in opcode order, for REPORT SUPPORTED
    OPERATION CODES."""
    out = []
    for spec in table:
        if spec is None:
            continue
        if spec.service_actions is None:
            out.append(spec)
        else:
            out.extend(spec.service_actions[a] for a in sorted(spec.service_actions))
    return out
