import json
import struct

import pytest
from support.scsi_rig import BLOCK, read10, sense_of, write10

from vmblock.scsi.lu import LogicalUnit
from vmblock.scsi.task import SAM_STAT_GOOD, SAM_STAT_RESERVATION_CONFLICT

ILLEGAL = 0x05
UNIT_ATTENTION = 0x06
K1, K2 = 0x1111, 0x2222


def prout(rig, nexus, action, key=0, sa_key=0, rtype=0, flags=0):
    param = struct.pack(">QQ4xBx2x", key, sa_key, flags)
    cdb = struct.pack(">BBBxxIx", 0x5F, action, rtype, len(param))
    return rig.run(cdb, param, nexus=nexus)


def prin(rig, nexus, action, alloc=1024):
    return rig.run(struct.pack(">BB5xHx", 0x5E, action, alloc), nexus=nexus)


def register(rig, nexus, key):
    assert prout(rig, nexus, 6, sa_key=key).status == SAM_STAT_GOOD


def can_read(rig, nexus) -> bool:
    return rig.run(read10(1, 1), nexus=nexus).status == SAM_STAT_GOOD


def can_write(rig, nexus) -> bool:
    return rig.run(write10(1, 1), bytes(BLOCK), nexus=nexus).status == SAM_STAT_GOOD


def test_read_keys_lists_registrations_and_generation(rig):
    register(rig, rig.a, K1)
    register(rig, rig.b, K2)
    data = bytes(prin(rig, rig.a, 0).data_in)
    gen, length = struct.unpack_from(">II", data)
    assert gen == 2 and length == 16
    assert sorted(struct.unpack_from(">QQ", data, 8)) == [K1, K2]


def test_read_keys_truncated_keeps_additional_length(rig):
    register(rig, rig.a, K1)
    data = bytes(prin(rig, rig.a, 0, alloc=8).data_in)
    assert struct.unpack_from(">I", data, 4)[0] == 8


def test_register_with_wrong_key_conflicts(rig):
    register(rig, rig.a, K1)
    assert prout(rig, rig.a, 0, key=K2, sa_key=K2).status == SAM_STAT_RESERVATION_CONFLICT


def test_register_aptpl_is_invalid_field_in_parameter_list(rig):
    assert sense_of(prout(rig, rig.a, 6, sa_key=K1, flags=0x01)) == (ILLEGAL, 0x26, 0)


def test_reserve_unregistered_conflicts(rig):
    assert prout(rig, rig.a, 1, key=K1, rtype=3).status == SAM_STAT_RESERVATION_CONFLICT


def test_reserve_invalid_type_is_invalid_field(rig):
    register(rig, rig.a, K1)
    assert sense_of(prout(rig, rig.a, 1, key=K1, rtype=2)) == (ILLEGAL, 0x24, 0)


# type: (registered other can read, can write, unregistered other can read, can write)
ACCESS = {
    1: (True, False, True, False),
    3: (False, False, False, False),
    5: (True, True, True, False),
    6: (True, True, False, False),
    7: (True, True, True, False),
    8: (True, True, False, False),
}


@pytest.mark.parametrize("rtype", sorted(ACCESS))
def test_reservation_access_rules(rig, rtype):
    reg_read, reg_write, unreg_read, unreg_write = ACCESS[rtype]
    register(rig, rig.a, K1)
    register(rig, rig.b, K2)
    assert prout(rig, rig.a, 1, key=K1, rtype=rtype).status == SAM_STAT_GOOD
    assert can_read(rig, rig.a) and can_write(rig, rig.a)
    assert can_read(rig, rig.b) == reg_read
    assert can_write(rig, rig.b) == reg_write
    assert prout(rig, rig.b, 0, key=K2, sa_key=0).status == SAM_STAT_GOOD
    assert can_read(rig, rig.b) == unreg_read
    assert can_write(rig, rig.b) == unreg_write


def test_read_reservation_of_all_registrants_type_has_key_zero(rig):
    register(rig, rig.a, K1)
    prout(rig, rig.a, 1, key=K1, rtype=8)
    data = bytes(prin(rig, rig.a, 1).data_in)
    assert struct.unpack_from(">IIQ", data)[1:] == (16, 0)
    assert data[21] == 8


def test_unregistering_the_holder_releases_the_reservation(rig):
    register(rig, rig.a, K1)
    prout(rig, rig.a, 1, key=K1, rtype=3)
    prout(rig, rig.a, 0, key=K1, sa_key=0)
    assert struct.unpack_from(">I", prin(rig, rig.a, 1).data_in, 4)[0] == 0


def test_all_registrants_reservation_survives_one_unregistration(rig):
    register(rig, rig.a, K1)
    register(rig, rig.b, K2)
    prout(rig, rig.a, 1, key=K1, rtype=7)
    prout(rig, rig.a, 0, key=K1, sa_key=0)
    assert prin(rig, rig.a, 1).data_in[21] == 7
    assert prout(rig, rig.b, 2, key=K2, rtype=7).status == SAM_STAT_GOOD


def test_release_with_wrong_type_is_invalid_release(rig):
    register(rig, rig.a, K1)
    prout(rig, rig.a, 1, key=K1, rtype=3)
    assert sense_of(prout(rig, rig.a, 2, key=K1, rtype=1)) == (ILLEGAL, 0x26, 0x04)


def test_clear_removes_everything_and_tells_other_registrants(rig):
    register(rig, rig.a, K1)
    register(rig, rig.b, K2)
    prout(rig, rig.a, 1, key=K1, rtype=3)
    assert prout(rig, rig.a, 3, key=K1).status == SAM_STAT_GOOD
    data = bytes(prin(rig, rig.a, 0).data_in)
    assert struct.unpack_from(">II", data) == (3, 0)
    assert sense_of(rig.run(bytes(6), nexus=rig.b)) == (UNIT_ATTENTION, 0x2A, 0x03)


def test_preempt_removes_registration_and_bumps_generation_once(rig):
    register(rig, rig.a, K1)
    register(rig, rig.b, K2)
    assert prout(rig, rig.b, 4, key=K2, sa_key=K1, rtype=3).status == SAM_STAT_GOOD
    assert sense_of(rig.run(bytes(6), nexus=rig.a)) == (UNIT_ATTENTION, 0x2A, 0x05)
    data = bytes(prin(rig, rig.b, 0).data_in)
    assert struct.unpack_from(">IIQ", data) == (3, 8, K2)


def test_preempt_of_holder_takes_over_the_reservation(rig):
    register(rig, rig.a, K1)
    register(rig, rig.b, K2)
    prout(rig, rig.a, 1, key=K1, rtype=3)
    assert prout(rig, rig.b, 4, key=K2, sa_key=K1, rtype=1).status == SAM_STAT_GOOD
    data = bytes(prin(rig, rig.b, 1).data_in)
    assert struct.unpack_from(">Q", data, 8)[0] == K2 and data[21] == 1


def test_report_capabilities(rig):
    data = bytes(prin(rig, rig.a, 2).data_in)
    length, _, allow, mask = struct.unpack_from(">HBBH", data)
    assert length == 8
    assert (allow >> 4) & 7 <= 5
    assert mask == 0xEA01


def test_read_full_status_has_transport_id(rig):
    register(rig, rig.a, K1)
    prout(rig, rig.a, 1, key=K1, rtype=1)
    data = bytes(prin(rig, rig.a, 3).data_in)
    key, flags, scope_type = struct.unpack_from(">Q4xBB", data, 8)
    assert (key, flags, scope_type) == (K1, 1, 1)
    tid_len = struct.unpack_from(">I", data, 8 + 20)[0]
    tid = data[8 + 24:8 + 24 + tid_len]
    assert tid[0] == 0x45
    assert tid[4:].rstrip(b"\0") == rig.a.initiator_port.encode()


def test_prin_unknown_service_action_is_invalid_field(rig):
    task = prin(rig, rig.a, 4)
    assert sense_of(task) == (ILLEGAL, 0x24, 0)
    assert task.sense[17] == 1


def test_reserve6_conflicts_for_other_nexus(rig):
    assert rig.run(bytes([0x16, 0, 0, 0, 0, 0])).status == SAM_STAT_GOOD
    assert rig.run(bytes([0x16, 0, 0, 0, 0, 0]), nexus=rig.b).status == \
        SAM_STAT_RESERVATION_CONFLICT
    assert not can_read(rig, rig.b)
    assert rig.run(bytes([0x12, 0, 0, 0, 36, 0]), nexus=rig.b).status == SAM_STAT_GOOD


def test_release6_by_other_nexus_is_good_and_keeps_reservation(rig):
    rig.run(bytes([0x16, 0, 0, 0, 0, 0]))
    assert rig.run(bytes([0x17, 0, 0, 0, 0, 0]), nexus=rig.b).status == SAM_STAT_GOOD
    assert not can_read(rig, rig.b)


def test_reserve6_released_on_nexus_loss(rig):
    rig.run(bytes([0x16, 0, 0, 0, 0, 0]))
    rig.target.nexus_removed(rig.a)
    assert rig.run(bytes([0x16, 0, 0, 0, 0, 0]), nexus=rig.b).status == SAM_STAT_GOOD


def test_reserve6_released_on_lun_reset(rig):
    rig.run(bytes([0x16, 0, 0, 0, 0, 0]))
    assert rig.target.task_management("LUN_RESET", rig.a, 0)
    rig.lu.ua.clear()
    assert rig.run(bytes([0x16, 0, 0, 0, 0, 0]), nexus=rig.b).status == SAM_STAT_GOOD


def test_reserve6_conflicts_while_registrations_exist(rig):
    register(rig, rig.a, K1)
    assert rig.run(bytes([0x16, 0, 0, 0, 0, 0])).status == SAM_STAT_RESERVATION_CONFLICT


def test_registrations_are_bounded(rig, monkeypatch):
    from vmblock.scsi import pr
    monkeypatch.setattr(pr, "MAX_REGISTRATIONS", 1)
    register(rig, rig.a, K1)
    assert sense_of(prout(rig, rig.b, 6, sa_key=K2)) == (ILLEGAL, 0x55, 0x04)


class DictPersister:
    """A persister that keeps the saved state in a dict, as the meta DB record would."""

    def __init__(self):
        self.saved = None
        self.writes = 0

    def load(self):
        return self.saved

    def save(self, state):
        self.saved = None if state is None else json.loads(json.dumps(state))
        self.writes += 1


def fresh_lu_from(rig, persister):
    """A new LU (a restart) whose reservations start from what ``persister`` kept."""
    lu = LogicalUnit(rig.store, name="demo", serial="0123456789abcdef", naa=0x6001405A0B1C2D3E)
    lu.reservations.restore(persister)
    return lu


def test_aptpl_keeps_registrations_and_reservation_for_a_restart(rig):
    p = DictPersister()
    rig.lu.reservations.restore(p)
    caps = bytes(prin(rig, rig.a, 2).data_in)
    assert caps[2] & 0x01 and not caps[3] & 0x01           # PTPL_C, PTPL_A not yet
    assert prout(rig, rig.a, 0, sa_key=K1, flags=0x01).status == SAM_STAT_GOOD
    assert prout(rig, rig.b, 0, sa_key=K2, flags=0x01).status == SAM_STAT_GOOD
    assert prout(rig, rig.a, 1, key=K1, rtype=0x01).status == SAM_STAT_GOOD
    assert bytes(prin(rig, rig.a, 2).data_in)[3] & 0x01     # PTPL_A
    res = fresh_lu_from(rig, p).reservations
    assert res.registrations == {rig.a: K1, rig.b: K2}
    assert res.holder == rig.a and res.type == 0x01 and res.generation == 2
    assert res.active


def test_clearing_aptpl_deletes_the_saved_state(rig):
    p = DictPersister()
    rig.lu.reservations.restore(p)
    assert prout(rig, rig.a, 0, sa_key=K1, flags=0x01).status == SAM_STAT_GOOD
    assert p.saved is not None
    assert prout(rig, rig.a, 0, key=K1, sa_key=K1).status == SAM_STAT_GOOD    # APTPL=0
    assert p.saved is None
    assert prout(rig, rig.a, 1, key=K1, rtype=0x01).status == SAM_STAT_GOOD
    assert p.saved is None and p.writes == 2               # nothing saved without APTPL
    assert fresh_lu_from(rig, p).reservations.registrations == {}


def register_and_move(rig, nexus, key, sa_key, dest, flags=0, rtpi=1):
    name = f"{dest.initiator},i,0x{dest.isid:012x}".encode() + b"\0"
    name += b"\0" * (-len(name) % 4)
    tid = struct.pack(">BxH", 0x45, len(name)) + name
    param = struct.pack(">QQxBHI", key, sa_key, flags, rtpi, len(tid)) + tid
    cdb = struct.pack(">BBBxxIx", 0x5F, 0x07, 0, len(param))
    return rig.run(cdb, param, nexus=nexus)


def test_register_and_move_hands_the_reservation_over(rig):
    register(rig, rig.a, K1)
    assert prout(rig, rig.a, 1, key=K1, rtype=0x01).status == SAM_STAT_GOOD
    assert register_and_move(rig, rig.a, K1, K2, rig.b, flags=0x02).status == SAM_STAT_GOOD
    res = rig.lu.reservations
    assert res.holder == rig.b and res.registrations == {rig.b: K2}
    assert can_write(rig, rig.b) and not can_write(rig, rig.a)


def test_register_and_move_refusals(rig):
    register(rig, rig.a, K1)
    register(rig, rig.b, K2)
    # not the holder (no reservation at all)
    assert register_and_move(rig, rig.a, K1, K2, rig.b).status == SAM_STAT_RESERVATION_CONFLICT
    assert prout(rig, rig.a, 1, key=K1, rtype=0x01).status == SAM_STAT_GOOD
    assert register_and_move(rig, rig.b, K2, K1, rig.a).status == SAM_STAT_RESERVATION_CONFLICT
    # a key of 0, the issuing nexus itself, APTPL without a persister
    assert sense_of(register_and_move(rig, rig.a, K1, 0, rig.b)) == (ILLEGAL, 0x26, 0)
    assert sense_of(register_and_move(rig, rig.a, K1, K2, rig.a)) == (ILLEGAL, 0x26, 0)
    assert sense_of(register_and_move(rig, rig.a, K1, K2, rig.b, flags=0x01)) == (ILLEGAL, 0x26, 0)
    assert rig.lu.reservations.holder == rig.a
