"""A store's declared abilities are the one truth the LU reads, checked once when it is made."""

import pytest
from support.scsi_rig import MemoryStore

from vmblock.scsi.lu import LogicalUnit
from vmblock.store.backend import LbaStatus, Unmappable, WriteSameable


class ReadWriteOnly:
    """A store with the required operations only (structurally a BackingStore)."""

    block_size = 512
    unmap_granularity = 0
    size_bytes = 512 * 64

    def __init__(self, abilities=frozenset()):
        self.abilities = abilities

    def read_into(self, offset, buf):
        buf[:] = bytes(len(buf))

    def write(self, offset, data):
        pass

    def flush(self):
        pass

    def close(self):
        pass


def make_lu(store) -> LogicalUnit:
    return LogicalUnit(store, name="x", serial="01", naa=0x6001)


def test_declared_abilities_become_the_lu_limits():
    lu = make_lu(MemoryStore(abilities=frozenset({Unmappable, LbaStatus})))
    assert (lu.can_unmap, lu.can_write_same, lu.can_lba_status) == (True, False, True)
    assert lu.max_unmap_blocks > 0


def test_methods_without_a_declaration_are_not_used():
    lu = make_lu(MemoryStore(abilities=frozenset()))
    assert (lu.can_unmap, lu.can_write_same, lu.can_lba_status) == (False, False, False)
    assert lu.max_unmap_blocks == 0 and lu.max_unmap_descriptors == 0


def test_a_structural_store_without_abilities_is_accepted():
    assert not make_lu(ReadWriteOnly()).can_unmap


@pytest.mark.parametrize("ability", [Unmappable, WriteSameable, LbaStatus])
def test_declaring_an_ability_without_its_method_fails_at_lu_creation(ability):
    with pytest.raises(TypeError, match=ability.__name__):
        make_lu(ReadWriteOnly(frozenset({ability})))


def test_an_unknown_ability_fails_at_lu_creation():
    with pytest.raises(TypeError, match="unknown ability"):
        make_lu(ReadWriteOnly(frozenset({"unmap"})))


def test_a_store_missing_a_required_operation_fails_at_lu_creation():
    class NoFlush(ReadWriteOnly):
        flush = None

    with pytest.raises(TypeError, match="not a BackingStore"):
        make_lu(NoFlush())
