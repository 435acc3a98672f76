from support.scsi_rig import MemoryStore, read10, sense_of

from vmblock.scsi.lu import LogicalUnit
from vmblock.scsi.sense import SenseReason
from vmblock.scsi.task import SAM_STAT_GOOD, Nexus

UNIT_ATTENTION = 0x06
TUR = bytes(6)


def test_new_nexus_sees_power_on_reset_once(rig):
    c = Nexus("iqn.2026-11.test:c", 3, rig.target.name, 1)
    rig.target.nexus_added(c)
    assert sense_of(rig.run(TUR, nexus=c)) == (UNIT_ATTENTION, 0x29, 0x00)
    assert rig.run(TUR, nexus=c).status == SAM_STAT_GOOD


def test_inquiry_is_not_blocked_by_unit_attention(rig):
    rig.lu.add_ua(rig.a, SenseReason.POWER_ON_RESET)
    assert rig.run(bytes([0x12, 0, 0, 0, 36, 0])).status == SAM_STAT_GOOD
    assert rig.run(bytes([0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0])).status == SAM_STAT_GOOD
    assert sense_of(rig.run(read10(0, 1)))[0] == UNIT_ATTENTION


def test_request_sense_returns_and_clears_the_unit_attention(rig):
    rig.lu.add_ua(rig.a, SenseReason.MODE_PARAMETERS_CHANGED)
    task = rig.run(bytes([0x03, 0, 0, 0, 18, 0]))
    assert task.status == SAM_STAT_GOOD
    assert (task.data_in[2], task.data_in[12], task.data_in[13]) == (UNIT_ATTENTION, 0x2A, 1)
    assert rig.run(TUR).status == SAM_STAT_GOOD


def test_request_sense_without_condition_is_no_sense(rig):
    task = rig.run(bytes([0x03, 0, 0, 0, 18, 0]))
    assert (task.data_in[0], task.data_in[2], task.data_in[12]) == (0x70, 0, 0)


def test_lun_reset_establishes_ua_on_every_nexus(rig):
    assert rig.target.task_management("LUN_RESET", rig.a, 0)
    assert sense_of(rig.run(TUR, nexus=rig.a)) == (UNIT_ATTENTION, 0x29, 0x03)
    assert sense_of(rig.run(TUR, nexus=rig.b)) == (UNIT_ATTENTION, 0x29, 0x03)


def test_target_reset_reports_power_on_reset(rig):
    assert rig.target.task_management("TARGET_WARM_RESET", rig.a, None)
    assert sense_of(rig.run(TUR, nexus=rig.b)) == (UNIT_ATTENTION, 0x29, 0x00)


def test_lun_reset_of_missing_lun_fails(rig):
    assert not rig.target.task_management("LUN_RESET", rig.a, 9)


def test_same_unit_attention_is_queued_once(rig):
    rig.lu.add_ua(rig.a, SenseReason.POWER_ON_RESET)
    rig.lu.add_ua(rig.a, SenseReason.POWER_ON_RESET)
    assert sense_of(rig.run(TUR))[0] == UNIT_ATTENTION
    assert rig.run(TUR).status == SAM_STAT_GOOD


def test_adding_a_lun_reports_luns_data_changed(rig, store):
    rig.target.add_lun(1, LogicalUnit(MemoryStore(), name="x", serial="01", naa=0x6001))
    assert sense_of(rig.run(TUR, lun=1)) == (UNIT_ATTENTION, 0x3F, 0x0E)



def test_unit_attention_comes_before_invalid_opcode(rig):
    rig.lu.add_ua(rig.a, SenseReason.POWER_ON_RESET)
    assert sense_of(rig.run(bytes([0xC7, 0, 0, 0, 0, 0])))[0] == UNIT_ATTENTION
    assert sense_of(rig.run(bytes([0xC7, 0, 0, 0, 0, 0])))[0] == 0x05
