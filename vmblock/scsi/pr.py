"""Reservations: SPC-2 RESERVE/RELEASE and SPC-4 persistent reservations (SPC-4 5.9).

``Reservations`` is the per-LU state; ``check`` is the conflict test the common path runs for
every command (SPC-4 5.9.1 table 60); ``persistent_reserve_in``/``_out`` implement the two
commands. Registrations belong to an I_T nexus and survive its loss.

Persist through power loss (APTPL, SPC-4 5.9.5): the server gives each LU's reservations a
``Persister`` (the meta DB record of its vdisk; this layer does not know the meta DB) and
restores what it holds before the LU is served. The APTPL bit of the last REGISTER, REGISTER
AND IGNORE EXISTING KEY or REGISTER AND MOVE decides: while it is one, every PERSISTENT
RESERVE OUT that completes has saved the registrations, the reservation and the generation
before its status; once it is zero, the saved state is deleted, so a restart forgets it. With
no persister (an LU without a pool) APTPL is refused and REPORT CAPABILITIES says PTPL_C=0.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Protocol

from vmblock.scsi.constants import PrAccess, PrInAction, PrOutAction, PrType, PROTOCOL_ID_ISCSI
from vmblock.scsi.sense import ScsiError, SenseReason
from vmblock.scsi.task import Nexus

if TYPE_CHECKING:
    from vmblock.scsi.lu import LogicalUnit

# SPC-4 6.16.3: basic PERSISTENT RESERVE OUT parameter list.
PROUT_PARAM_LEN = 24
SPEC_I_PT = 0x08
ALL_TG_PT = 0x04
APTPL = 0x01
SCOPE_LU = 0x0

# SPC-4 6.16.4: REGISTER AND MOVE parameter list (header, then a TransportID).
REGISTER_AND_MOVE_HEADER_LEN = 24
UNREG = 0x02
# SPC-4 6.15.4 table 168: REPORT CAPABILITIES.
REPORT_CAPABILITIES_LEN = 8
TMV = 0x80
PTPL_C = 0x01
PTPL_A = 0x01
ALLOW_COMMANDS_SHIFT = 4
# ALLOW COMMANDS 001b: TEST UNIT READY is allowed under every type, as ``check`` does.
ALLOW_COMMANDS = 0x1
PR_TYPE_MASK = {
    PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS: 0x8000,
    PrType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY: 0x4000,
    PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY: 0x2000,
    PrType.EXCLUSIVE_ACCESS: 0x0800,
    PrType.WRITE_EXCLUSIVE: 0x0200,
    PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS: 0x0001,
}
ALL_REGISTRANTS_TYPES = frozenset({PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS,
                                   PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS})
REGISTRANTS_TYPES = frozenset({PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY,
                               PrType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY}) | ALL_REGISTRANTS_TYPES
WRITE_EXCLUSIVE_TYPES = frozenset({PrType.WRITE_EXCLUSIVE, PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY,
                                   PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS})
# SPC-4 6.15.5: R_HOLDER bit of a READ FULL STATUS descriptor.
R_HOLDER = 0x01
# SPC-4 7.6.4.6: iSCSI TransportID, format 01b (name + ISID).
TRANSPORT_ID_ISCSI_WITH_ISID = 0x40 | PROTOCOL_ID_ISCSI
TRANSPORT_ID_HEADER_LEN = 4
ISID_SEPARATOR = ",i,0x"

# Registrations survive I_T nexus loss, so they are bounded (SPC-4 5.9.7: INSUFFICIENT
# REGISTRATION RESOURCES when the device server cannot keep another one).
MAX_REGISTRATIONS = 1024


def _conflict() -> ScsiError:
    return ScsiError(SenseReason.RESERVATION_CONFLICT)


class Persister(Protocol):
    """Where an LU's persistent reservations are kept through a restart (APTPL)."""

    def load(self) -> dict | None:
        """The state last saved (``Reservations.state``), None when there is none."""

    def save(self, state: dict | None) -> None:
        """Keep ``state`` durably before returning, or delete the saved state (None)."""


def _nexus_state(nexus: Nexus) -> dict:
    return {"initiator": nexus.initiator, "isid": nexus.isid, "target": nexus.target,
            "tpgt": nexus.tpgt}


def _nexus_of(d: dict) -> Nexus:
    return Nexus(d["initiator"], int(d["isid"]), d["target"], int(d["tpgt"]))


class Reservations:
    """Reservation state of one logical unit."""

    __slots__ = ("spc2_holder", "registrations", "generation", "holder", "type", "active",
                 "aptpl", "persister", "saved")

    def __init__(self) -> None:
        self.spc2_holder: Nexus | None = None
        self.registrations: dict[Nexus, int] = {}
        self.generation = 0
        self.holder: Nexus | None = None     # None for the all-registrants types
        self.type: PrType | None = None
        self.active = False                  # any reservation at all: the hot-path test
        self.aptpl = False                   # the APTPL bit of the last REGISTER*
        self.persister: Persister | None = None
        self.saved = False                   # the persister holds a state

    def _update(self) -> None:
        self.active = self.spc2_holder is not None or self.type is not None

    # -- persist through power loss (SPC-4 5.9.5)
    def state(self) -> dict:
        """The persistent state as JSON-ready data: registrations (nexus and key), holder,
        type, generation."""
        return {
            "generation": self.generation,
            "type": None if self.type is None else int(self.type),
            "holder": None if self.holder is None else _nexus_state(self.holder),
            "registrations": [dict(_nexus_state(n), key=k)
                              for n, k in self.registrations.items()],
        }

    def restore(self, persister: Persister) -> None:
        """Keep this LU's state with ``persister`` from now on, starting from what it saved
        (registrations, reservation, generation; APTPL stays set)."""
        self.persister = persister
        state = persister.load()
        if state is None:
            return
        self.registrations = {_nexus_of(r): int(r["key"]) for r in state["registrations"]}
        self.generation = int(state["generation"])
        self.type = None if state["type"] is None else PrType(state["type"])
        self.holder = None if state["holder"] is None else _nexus_of(state["holder"])
        self.aptpl = self.saved = True
        self._update()

    def persist(self) -> None:
        """Save the state after a PERSISTENT RESERVE OUT that completed while APTPL is set;
        delete the saved state once APTPL is cleared."""
        if self.persister is None:
            return
        if self.aptpl:
            self.persister.save(self.state())
            self.saved = True
        elif self.saved:
            self.persister.save(None)
            self.saved = False

    # -- the conflict test (SPC-4 5.9.1 table 60, SPC-2 5.5.1)
    def is_holder(self, nexus: Nexus) -> bool:
        """Whether ``nexus`` holds the persistent reservation (under the all-registrants
        types, every registrant does)."""
        if self.type in ALL_REGISTRANTS_TYPES:
            return nexus in self.registrations
        return self.type is not None and nexus == self.holder

    def check(self, nexus: Nexus, access: PrAccess, spc2_allowed: bool) -> None:
        """Raise RESERVATION CONFLICT if ``nexus`` may not run a command of class ``access``."""
        if self.spc2_holder is not None:
            if self.spc2_holder != nexus and not spc2_allowed:
                raise _conflict()
            return
        rtype = self.type
        if rtype is None or access == PrAccess.ALLOWED or access == PrAccess.SPECIAL:
            return
        if rtype in REGISTRANTS_TYPES:
            if nexus in self.registrations:
                return
        elif nexus == self.holder:
            return
        if access == PrAccess.READ and rtype in WRITE_EXCLUSIVE_TYPES:
            return
        raise _conflict()

    # -- SPC-2 RESERVE(6/10) / RELEASE(6/10)
    def reserve_spc2(self, nexus: Nexus) -> None:
        # SPC-4 5.9.3: RESERVE while persistent registrations exist -> RESERVATION CONFLICT.
        """RESERVE(6/10) for ``nexus`` (SPC-2 7.21)."""
        if self.registrations or self.type is not None:
            raise _conflict()
        if self.spc2_holder is not None and self.spc2_holder != nexus:
            raise _conflict()
        self.spc2_holder = nexus
        self._update()

    def release_spc2(self, nexus: Nexus) -> None:
        """RELEASE(6/10) from ``nexus`` (SPC-2 7.22)."""
        if self.type is not None:
            raise _conflict()
        # SPC-2 7.21: RELEASE from a nexus that holds nothing is GOOD and changes nothing.
        if self.spc2_holder == nexus:
            self.spc2_holder = None
            self._update()

    def nexus_lost(self, nexus: Nexus) -> None:
        """I_T nexus loss releases its RESERVE(6/10) reservation (SPC-4 5.9.3)."""
        if self.spc2_holder == nexus:
            self.spc2_holder = None
            self._update()

    def reset(self) -> None:
        """SPC-4 5.9.3: a reset releases SPC-2 reservations; persistent ones survive."""
        self.spc2_holder = None
        self._update()

    # -- persistent reservations
    def _release(self, lu: LogicalUnit, nexus: Nexus) -> None:
        # SPC-4 5.9.11.2: releasing a registrants-only or all-registrants reservation tells
        # the other registrants RESERVATIONS RELEASED.
        if self.type in REGISTRANTS_TYPES:
            for other in self.registrations:
                if other != nexus:
                    lu.add_ua(other, SenseReason.RESERVATIONS_RELEASED)
        self.type = None
        self.holder = None
        self._update()

    def _unregister(self, lu: LogicalUnit, nexus: Nexus) -> None:
        del self.registrations[nexus]
        if self.type is None:
            return
        if self.type in ALL_REGISTRANTS_TYPES:
            # SPC-4 5.9.11.1: the reservation ends with the last registrant.
            if not self.registrations:
                self._release(lu, nexus)
        elif self.holder == nexus:
            self._release(lu, nexus)


def _registered_key(res: Reservations, nexus: Nexus, key: int) -> None:
    """SPC-4 5.9.7: RESERVATION KEY must match this nexus's registration."""
    if res.registrations.get(nexus) != key:
        raise _conflict()


def persistent_reserve_out(lu: LogicalUnit, nexus: Nexus, action: int, scope_type: int,
                           param) -> None:
    """PERSISTENT RESERVE OUT (SPC-4 6.16) with a basic parameter list already gathered."""
    res = lu.reservations
    if res.spc2_holder is not None and res.spc2_holder != nexus:
        raise _conflict()
    _reserve_out(lu, res, nexus, action, scope_type, param)
    res.persist()


def _reserve_out(lu: LogicalUnit, res: Reservations, nexus: Nexus, action: int,
                 scope_type: int, param) -> None:
    """Carry out one PERSISTENT RESERVE OUT service action on ``res``."""
    if action == PrOutAction.REGISTER_AND_MOVE:
        _register_and_move(lu, res, nexus, scope_type, param)
        return
    if len(param) != PROUT_PARAM_LEN:
        raise ScsiError(SenseReason.PARAMETER_LIST_LENGTH_ERROR)
    key, sa_key, flags = struct.unpack_from(">QQ4xB", param, 0)
    unsupported = SPEC_I_PT | ALL_TG_PT | (0 if res.persister is not None else APTPL)
    if flags & unsupported:
        # SPC-4 6.16.3: capabilities REPORT CAPABILITIES declares as unsupported.
        bit = 3 if flags & SPEC_I_PT else 2 if flags & ALL_TG_PT else 0
        raise ScsiError(SenseReason.INVALID_FIELD_IN_PARAMETER_LIST, field=(20, bit),
                        in_cdb=False)
    if action in (PrOutAction.REGISTER, PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY):
        _register(lu, res, nexus, key, sa_key, action == PrOutAction.REGISTER)
        res.aptpl = bool(flags & APTPL)     # SPC-4 5.9.5: the last valid APTPL bit decides
        return
    _registered_key(res, nexus, key)
    if action == PrOutAction.CLEAR:
        # SPC-4 5.9.11.6: every other registrant learns RESERVATIONS PREEMPTED.
        for other in res.registrations:
            if other != nexus:
                lu.add_ua(other, SenseReason.RESERVATIONS_PREEMPTED)
        res.registrations.clear()
        res.type = None
        res.holder = None
        res.generation += 1
        res._update()
        return
    scope, rtype = scope_type >> 4, scope_type & 0xF
    if scope != SCOPE_LU:
        raise ScsiError(SenseReason.INVALID_FIELD_IN_CDB, field=(2, 7))
    if rtype not in PR_TYPE_MASK:
        raise ScsiError(SenseReason.INVALID_FIELD_IN_CDB, field=(2, 3))
    rtype = PrType(rtype)
    if action == PrOutAction.RESERVE:
        _reserve(res, nexus, rtype)
    elif action == PrOutAction.RELEASE:
        if res.type is None or not res.is_holder(nexus):
            return          # SPC-4 5.9.11.2: nothing held by this nexus: GOOD
        if res.type != rtype:
            raise ScsiError(SenseReason.INVALID_RELEASE_OF_PERSISTENT_RESERVATION)
        res._release(lu, nexus)
    elif action in (PrOutAction.PREEMPT, PrOutAction.PREEMPT_AND_ABORT):
        # PREEMPT AND ABORT is carried out as PREEMPT: commands of the preempted nexuses
        # that already passed the reservation check run to completion instead of aborting.
        _preempt(lu, res, nexus, sa_key, rtype)
    else:
        raise ScsiError(SenseReason.INVALID_FIELD_IN_CDB, field=(1, 4))


def _register(lu: LogicalUnit, res: Reservations, nexus: Nexus, key: int, sa_key: int,
              check_key: bool) -> None:
    """REGISTER / REGISTER AND IGNORE EXISTING KEY (SPC-4 5.9.7)."""
    current = res.registrations.get(nexus)
    if check_key:
        if current is None and key != 0:
            raise _conflict()
        if current is not None and key != current:
            raise _conflict()
    if sa_key == 0:
        if current is not None:
            res._unregister(lu, nexus)
            res.generation += 1
        return
    if current is None and len(res.registrations) >= MAX_REGISTRATIONS:
        raise ScsiError(SenseReason.INSUFFICIENT_REGISTRATION_RESOURCES)
    res.registrations[nexus] = sa_key
    res.generation += 1


def parse_transport_id(tid: bytes, at: int) -> str:
    """The initiator port name ('iqn...,i,0x<isid>') of an iSCSI TransportID of format 01b
    (SPC-4 7.6.4.6); anything else is an invalid field at byte ``at`` of the list."""
    if len(tid) < TRANSPORT_ID_HEADER_LEN or tid[0] != TRANSPORT_ID_ISCSI_WITH_ISID:
        raise ScsiError(SenseReason.INVALID_FIELD_IN_PARAMETER_LIST, field=(at, None),
                        in_cdb=False)
    n = int.from_bytes(tid[2:4], "big")
    name = tid[TRANSPORT_ID_HEADER_LEN:TRANSPORT_ID_HEADER_LEN + n].split(b"\0", 1)[0]
    text = name.decode("utf-8", "replace")
    if ISID_SEPARATOR not in text.lower():
        raise ScsiError(SenseReason.INVALID_FIELD_IN_PARAMETER_LIST, field=(at + 4, None),
                        in_cdb=False)
    return text


def _register_and_move(lu: LogicalUnit, res: Reservations, nexus: Nexus, scope_type: int,
                       param) -> None:
    """REGISTER AND MOVE (SPC-4 5.9.8): the holder registers another I_T nexus, named by a
    TransportID and a relative target port, with SERVICE ACTION RESERVATION KEY and hands it
    the reservation; with UNREG the issuing nexus's registration goes."""
    if len(param) < REGISTER_AND_MOVE_HEADER_LEN:
        raise ScsiError(SenseReason.PARAMETER_LIST_LENGTH_ERROR)
    key, sa_key, flags, rtpi, tid_len = struct.unpack_from(">QQxBHI", param, 0)
    if REGISTER_AND_MOVE_HEADER_LEN + tid_len > len(param):
        raise ScsiError(SenseReason.PARAMETER_LIST_LENGTH_ERROR)
    if flags & APTPL and res.persister is None:
        raise ScsiError(SenseReason.INVALID_FIELD_IN_PARAMETER_LIST, field=(17, 0),
                        in_cdb=False)
    if nexus not in res.registrations:
        raise _conflict()
    _registered_key(res, nexus, key)
    # SPC-4 5.9.8: only the holder of a reservation that is not of an all-registrants type
    if res.type is None or res.type in ALL_REGISTRANTS_TYPES or res.holder != nexus:
        raise _conflict()
    if sa_key == 0:
        raise ScsiError(SenseReason.INVALID_FIELD_IN_PARAMETER_LIST, field=(8, None),
                        in_cdb=False)
    port = parse_transport_id(bytes(param[REGISTER_AND_MOVE_HEADER_LEN:
                                          REGISTER_AND_MOVE_HEADER_LEN + tid_len]),
                              REGISTER_AND_MOVE_HEADER_LEN)
    initiator, isid = port.rsplit(",", 2)[0], int(port.lower().rsplit(ISID_SEPARATOR, 1)[1], 16)
    dest = Nexus(initiator, isid, nexus.target, rtpi)
    if dest == nexus:
        raise ScsiError(SenseReason.INVALID_FIELD_IN_PARAMETER_LIST, field=(24, None),
                        in_cdb=False)
    if dest not in res.registrations and len(res.registrations) >= MAX_REGISTRATIONS:
        raise ScsiError(SenseReason.INSUFFICIENT_REGISTRATION_RESOURCES)
    res.registrations[dest] = sa_key
    res.holder = dest
    if flags & UNREG:
        del res.registrations[nexus]
    res.generation += 1
    res.aptpl = bool(flags & APTPL)


def _reserve(res: Reservations, nexus: Nexus, rtype: PrType) -> None:
    """RESERVE (SPC-4 5.9.9): a second RESERVE by the holder with the same type is GOOD."""
    if res.type is None:
        res.type = rtype
        res.holder = None if rtype in ALL_REGISTRANTS_TYPES else nexus
        res._update()
        return
    if res.is_holder(nexus) and res.type == rtype:
        return
    raise _conflict()


def _preempt(lu: LogicalUnit, res: Reservations, nexus: Nexus, sa_key: int,
             rtype: PrType) -> None:
    """PREEMPT (SPC-4 5.9.11.4): remove registrations with SERVICE ACTION RESERVATION KEY."""
    all_registrants = res.type in ALL_REGISTRANTS_TYPES
    if res.type is not None and (
            (all_registrants and sa_key == 0)
            or (not all_registrants and res.registrations.get(res.holder) == sa_key)):
        # the reservation itself is preempted and taken over with the new type
        if all_registrants:
            victims = [n for n in res.registrations if n != nexus]
        else:
            victims = [n for n, k in res.registrations.items() if k == sa_key and n != nexus]
        for victim in victims:
            del res.registrations[victim]
            lu.add_ua(victim, SenseReason.REGISTRATIONS_PREEMPTED)
        if res.type != rtype:
            for other in res.registrations:
                if other != nexus:
                    lu.add_ua(other, SenseReason.RESERVATIONS_RELEASED)
        res.type = rtype
        res.holder = None if rtype in ALL_REGISTRANTS_TYPES else nexus
        res.generation += 1
        res._update()
        return
    if sa_key == 0:
        raise ScsiError(SenseReason.INVALID_FIELD_IN_PARAMETER_LIST, field=(8, None),
                        in_cdb=False)
    victims = [n for n, k in res.registrations.items() if k == sa_key]
    if not victims:
        raise _conflict()
    for victim in victims:
        del res.registrations[victim]
        if victim != nexus:
            lu.add_ua(victim, SenseReason.REGISTRATIONS_PREEMPTED)
    res.generation += 1


def persistent_reserve_in(lu: LogicalUnit, action: int) -> bytes:
    """PERSISTENT RESERVE IN parameter data (SPC-4 6.15), untruncated."""
    res = lu.reservations
    if action == PrInAction.READ_KEYS:
        keys = b"".join(k.to_bytes(8, "big") for k in res.registrations.values())
        return struct.pack(">II", res.generation, len(keys)) + keys
    if action == PrInAction.READ_RESERVATION:
        if res.type is None:
            return struct.pack(">II", res.generation, 0)
        # SPC-4 6.15.3.3: the key of an all-registrants reservation reads as zero
        key = 0 if res.holder is None else res.registrations[res.holder]
        return struct.pack(">IIQ4xxBxx", res.generation, 16, key, res.type)
    if action == PrInAction.REPORT_CAPABILITIES:
        mask = 0
        for bit in PR_TYPE_MASK.values():
            mask |= bit
        return struct.pack(">HBBH2x", REPORT_CAPABILITIES_LEN,
                           PTPL_C if res.persister is not None else 0,
                           TMV | (ALLOW_COMMANDS << ALLOW_COMMANDS_SHIFT)
                           | (PTPL_A if res.aptpl else 0), mask)
    if action == PrInAction.READ_FULL_STATUS:
        return _read_full_status(res)
    raise ScsiError(SenseReason.INVALID_FIELD_IN_CDB, field=(1, 4))


def transport_id(nexus: Nexus) -> bytes:
    """iSCSI TransportID of the initiator port (SPC-4 7.6.4.6), padded to 4 bytes."""
    name = nexus.initiator_port.encode() + b"\0"
    name += b"\0" * (-len(name) % 4)
    if len(name) < 20:
        name += b"\0" * (20 - len(name))
    return struct.pack(">BxH", TRANSPORT_ID_ISCSI_WITH_ISID, len(name)) + name


def _read_full_status(res: Reservations) -> bytes:
    """READ FULL STATUS (SPC-4 6.15.5): one descriptor per registered I_T nexus."""
    out = []
    for nexus, key in res.registrations.items():
        holder = res.type is not None and res.is_holder(nexus)
        scope_type = res.type if holder else 0
        tid = transport_id(nexus)
        # RELATIVE TARGET PORT IDENTIFIER: the portal group tag names the target port.
        out.append(struct.pack(">Q4xBB4xHI", key, R_HOLDER if holder else 0, scope_type,
                               nexus.tpgt, len(tid)) + tid)
    body = b"".join(out)
    return struct.pack(">II", res.generation, len(body)) + body
