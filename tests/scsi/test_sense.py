from vmblock.scsi.sense import SENSE_TABLE, SenseReason, build_sense


def test_build_sense_fixed_format_current():
    sense = build_sense(SenseReason.LBA_OUT_OF_RANGE)
    assert len(sense) == 18
    assert sense[0] == 0x70
    assert (sense[2], sense[7], sense[12], sense[13]) == (0x05, 10, 0x21, 0x00)


def test_build_sense_information_sets_valid():
    sense = build_sense(SenseReason.MISCOMPARE_DURING_VERIFY, info=0x1234)
    assert sense[0] == 0xF0
    assert sense[3:7] == b"\x00\x00\x12\x34"
    assert (sense[2], sense[12]) == (0x0E, 0x1D)


def test_build_sense_field_pointer_in_cdb_with_bit():
    sense = build_sense(SenseReason.INVALID_FIELD_IN_CDB, field=(1, 7))
    assert sense[15] == 0x80 | 0x40 | 0x08 | 7
    assert sense[16:18] == b"\x00\x01"


def test_build_sense_field_pointer_in_parameter_list():
    sense = build_sense(SenseReason.INVALID_FIELD_IN_PARAMETER_LIST, field=(20, None),
                        in_cdb=False)
    assert sense[15] == 0x80
    assert sense[16:18] == b"\x00\x14"


def test_every_reason_has_a_table_entry():
    assert set(SENSE_TABLE) == set(SenseReason)
