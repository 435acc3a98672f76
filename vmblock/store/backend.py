"""The narrow interface between the SCSI core and whatever stores a LUN's blocks.

Like LIO's ``struct sbc_ops`` or tgt's backing-store opcode map: ``BackingStore`` is the
``typing.Protocol`` of what every store must do (read, write, flush, close, a size and a
block size). The optional operations are small Protocols of their own (``Unmappable``,
``WriteSameable``, ``LbaStatus``, ``NowaitReadable``, ``Remappable``), and a store lists the ones it offers
in ``abilities``.
The SCSI core reads that set once, when a logical unit is created (``checked_abilities``),
and derives its command table, VPD B0/B2 and REPORT SUPPORTED OPERATION CODES from it.

Why a declaration and not structural detection alone: a wrapper (the flash cache in front of
an extent store) has every method and forwards it, yet can only do what the store it wraps
does; so a store says what it can do, and the check at LU creation makes sure every
declared ability has its methods. That set is the one truth: nobody probes a store with
``hasattr`` afterwards. Offsets and lengths are in bytes and always multiples of
``block_size``; range checks are the SCSI core's job, not the store's.
"""

from __future__ import annotations

import errno
from typing import Protocol, runtime_checkable


class SpaceExhausted(OSError):
    """A write needed space the store does not have. The SCSI core answers DATA PROTECT,
    SPACE ALLOCATION FAILED WRITE PROTECT (27h/07h); nothing already written is affected.
    It is an ``OSError`` with ENOSPC, like a full host file system under a file tier."""

    def __init__(self, message: str = "no space left in the pool"):
        super().__init__(errno.ENOSPC, message)


class WriteRefused(OSError):
    """The store refuses a write it could not make durable now (a failed commit not yet
    recovered from); it logged the fault once, so the SCSI core answers without logging."""


@runtime_checkable
class Unmappable(Protocol):
    """Ability: deallocate a range; later reads return zeros (UNMAP, WRITE SAME with UNMAP)."""

    def unmap(self, offset: int, length: int) -> None:
        """Deallocate ``length`` bytes at ``offset``."""


@runtime_checkable
class WriteSameable(Protocol):
    """Ability: replicate one block over a range in one call (WRITE SAME); without it the
    SCSI core writes the replicated block in chunks."""

    def write_same(self, offset: int, length: int, block: memoryview) -> None:
        """Store ``block`` repeated over ``length`` bytes at ``offset``."""


@runtime_checkable
class LbaStatus(Protocol):
    """Ability: tell mapped from deallocated blocks (GET LBA STATUS); without it every block
    is reported mapped."""

    def lba_status(self, offset: int) -> tuple[bool, int]:
        """(mapped, length in bytes) of the run of like blocks starting at ``offset``."""


@runtime_checkable
class AtomicWritable(Protocol):
    """Ability: write a range as one unit (WRITE ATOMIC): a reader or a crash sees all of it
    or none of it; without it the SCSI core's atomic write is an ordinary write."""

    def write_atomic(self, offset: int, data: memoryview) -> None:
        """Write ``data`` at ``offset`` all or nothing (durable at the next flush)."""


@runtime_checkable
class NowaitReadable(Protocol):
    """Ability: read only what needs no wait for the device (the page cache), so the SCSI core
    serves small cached reads on the event loop and sends the rest to the executor, where a
    slow device delays only that command, not every session on the loop."""

    def read_nowait(self, offset: int, buf: memoryview) -> bool:
        """Fill ``buf`` from ``offset`` and return True, or return False without waiting."""


@runtime_checkable
class Remappable(Protocol):
    """Ability: copy a range from another store of the same pool by sharing its whole
    allocation units (reference counted, copied on a later write, as snapshots share them);
    only unaligned heads and tails are copied as data (EXTENDED COPY). Without it, or between
    stores of different pools, the SCSI core copies with reads and writes."""

    def remap_from(self, source: BackingStore, src_offset: int, offset: int,
                   length: int) -> bool:
        """Copy ``length`` bytes of ``source`` at ``src_offset`` to ``offset``, durable at the
        next flush; False, with nothing changed, when ``source`` is not of the same pool."""


@runtime_checkable
class BackingStore(Protocol):
    """What every store a LUN sits on must do. Stores may subclass it to inherit the
    defaults (no abilities, no unmap granularity)."""

    block_size: int
    # The optional abilities this store offers, from ABILITIES.
    abilities: frozenset[type] = frozenset()
    # Bytes an UNMAP must cover, aligned, to deallocate anything (VPD B0 OPTIMAL UNMAP
    # GRANULARITY); 0 = the LU's optimal transfer granularity.
    unmap_granularity: int = 0

    @property
    def size_bytes(self) -> int:
        """The capacity in bytes (a multiple of ``block_size``)."""

    def read_into(self, offset: int, buf: memoryview) -> None:
        """Fill ``buf`` with the bytes at ``offset``; unwritten ranges read as zeros."""

    def write(self, offset: int, data: memoryview) -> None:
        """Store ``data`` at ``offset``; durable only after ``flush``."""

    def flush(self) -> None:
        """Make every completed write durable (fdatasync). Blocking: call it off the event loop."""

    def close(self) -> None:
        """Release file descriptors; the store is unusable afterwards."""


ABILITIES = (Unmappable, WriteSameable, LbaStatus, NowaitReadable, Remappable,
             AtomicWritable)


def checked_abilities(store: BackingStore) -> frozenset[type]:
    """The abilities ``store`` declares, once checked against what it has: a store that
    lacks a required operation, declares an unknown ability or lacks the methods of one it
    declares is a programming error, raised here rather than at the first command."""
    if not isinstance(store, BackingStore):
        raise TypeError(f"{type(store).__name__} is not a BackingStore")
    declared = frozenset(store.abilities)
    for ability in declared:
        if ability not in ABILITIES:
            raise TypeError(f"{type(store).__name__} declares an unknown ability {ability!r}")
        if not isinstance(store, ability):
            raise TypeError(f"{type(store).__name__} declares {ability.__name__} "
                            f"without its methods")
    return declared
