"""A logical unit: one backing store plus the SCSI state that belongs to it.

The state a LUN keeps across commands lives here: pending unit attentions per I_T nexus
(SPC-4 5.14), reservations (``pr.Reservations``), the changeable mode parameters, and the
limits reported in VPD page B0, all derived once from the store's declared abilities. The
command table is not kept here: ``ScsiTarget`` builds it from these facts when the LU is added.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING

from vmblock.scsi.pr import Reservations
from vmblock.scsi.sense import SenseReason
from vmblock.scsi.task import Nexus
from vmblock.store.backend import (
    AtomicWritable,
    BackingStore,
    LbaStatus,
    NowaitReadable,
    Unmappable,
    WriteSameable,
    checked_abilities,
)

if TYPE_CHECKING:
    from asyncio import Future

# Limits reported in VPD B0 (SBC-3 6.5.3), in bytes so they scale with the block size.
MAX_TRANSFER_BYTES = 8 * 1024 * 1024
OPTIMAL_TRANSFER_BYTES = 1024 * 1024
MAX_COMPARE_WRITE_BYTES = 1024 * 1024
MAX_WRITE_SAME_BYTES = 16 * 1024 * 1024     # 32768 blocks of 512 bytes
MAX_UNMAP_BYTES = 256 * 1024 * 1024     # VPD B0 MAXIMUM UNMAP LBA COUNT stays <= 2^20 blocks
MAX_UNMAP_DESCRIPTORS = 256
# WRITE ATOMIC(16) (SBC-4 5.48): the most it writes as one unit; at least the 256 blocks
# libiscsi's tests write, whatever the block size.
MAX_ATOMIC_BYTES = 1024 * 1024
# READ CAPACITY(16) LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT (SBC-3 5.16.2): the pool reads
# and writes the tier files in 4 KiB pages, so that is the physical block reported by default
# (a vdisk may say 512 instead, for hosts that take only 512n disks).
PHYSICAL_BLOCK_BYTES = 4096
# Reads/writes up to this size run inline on the event loop; bigger ones go to the executor.
SYNC_IO_BYTES = 128 * 1024
# SPC-4 5.14: the queue of unit attentions per nexus is bounded; older ones are dropped.
MAX_PENDING_UA = 16


class LogicalUnit:
    """One LUN backed by a ``BackingStore``: its identity, limits and per-LU SCSI state.

    Raises ``TypeError`` when the store declares an ability it does not have.
    """

    def __init__(self, store: BackingStore, name: str, serial: str, naa: int,
                 vendor: str = "VMBLOCK", product: str = "vdisk", revision: str = "0001",
                 write_cache: bool = True, executor: Executor | None = None,
                 sync_io_bytes: int = SYNC_IO_BYTES, read_only: bool = False,
                 removable: bool = False, sanitize_rate: int = 0,
                 physical_block_size: int = PHYSICAL_BLOCK_BYTES):
        abilities = checked_abilities(store)
        self.store = store
        self.name = name
        self.serial = serial
        self.naa = naa
        self.vendor = vendor
        self.product = product
        self.revision = revision
        self.executor = executor
        self.sync_io_bytes = sync_io_bytes
        bs = store.block_size
        self.block_size = bs
        self.num_blocks = store.size_bytes // bs
        self.can_unmap = Unmappable in abilities
        self.can_write_same = WriteSameable in abilities
        self.can_lba_status = LbaStatus in abilities
        self.can_write_atomic = AtomicWritable in abilities
        # () -> async context manager inside which no worker runs a fast-path command on this
        # LU (the server's, when workers read its maps); None: nothing else reads them
        self.quiesce: Callable[[], AbstractAsyncContextManager] | None = None
        # small reads: on the loop when cached, else in the executor; None: always on the loop
        self.read_nowait = store.read_nowait if NowaitReadable in abilities else None
        self.max_transfer_blocks = MAX_TRANSFER_BYTES // bs
        self.optimal_transfer_blocks = OPTIMAL_TRANSFER_BYTES // bs
        # 2^exponent logical blocks per physical block: 3 for 512-byte blocks on 4 KiB, else 0
        self.physical_block_exponent = max(physical_block_size // bs, 1).bit_length() - 1
        # OPTIMAL TRANSFER LENGTH GRANULARITY: one physical block
        self.optimal_granularity_blocks = 1 << self.physical_block_exponent
        # VPD B0 OPTIMAL UNMAP GRANULARITY: the store's allocation unit when it has one
        self.unmap_granularity_blocks = (max(store.unmap_granularity // bs, 1)
                                         if store.unmap_granularity else
                                         self.optimal_granularity_blocks)
        # the NUMBER OF LOGICAL BLOCKS field of COMPARE AND WRITE is one byte (SBC-3 5.2)
        self.max_compare_write_blocks = min(MAX_COMPARE_WRITE_BYTES // bs, 255)
        self.max_write_same_blocks = MAX_WRITE_SAME_BYTES // bs
        self.max_unmap_blocks = MAX_UNMAP_BYTES // bs if self.can_unmap else 0
        self.max_unmap_descriptors = MAX_UNMAP_DESCRIPTORS if self.can_unmap else 0
        self.max_atomic_blocks = min(MAX_ATOMIC_BYTES // bs, self.max_transfer_blocks)
        # medium state (module docstring of ``target`` for what each one refuses):
        # ``read_only`` is the vdisk's setting, ``software_write_protect`` the control mode
        # page's SWP; a removable LU's medium can be ejected, and removal prevented per nexus
        self.read_only = read_only
        self.software_write_protect = False
        self.removable = removable
        self.medium_present = True
        self.prevent: set[Nexus] = set()
        self.sanitize_progress: int | None = None      # 0-65535 while a SANITIZE runs
        self.sanitize_rate = sanitize_rate      # bytes/s of SANITIZE OVERWRITE; 0: unpaced
        self.gated = False
        # called with the LU after ``gated`` is recomputed (the server republishes the LU's
        # flag word, so workers forward its commands at once); None: nobody to tell
        self.state_listener: Callable[[LogicalUnit], None] | None = None
        self.state_changed()
        # changeable mode parameter (caching page WCE) and its power-on default
        self.write_cache = write_cache
        self.default_write_cache = write_cache
        self.reservations = Reservations()
        self.nexuses: set[Nexus] = set()
        self.ua: dict[Nexus, list[SenseReason]] = {}
        self.pending_writes: set[Future] = set()

    # -- medium state
    @property
    def write_protected(self) -> bool:
        """Read-only vdisk, or SWP set in the control mode page (SBC-3 4.13)."""
        return self.read_only or self.software_write_protect

    def state_changed(self) -> None:
        """Recompute ``gated``: True while some commands are refused for the medium's state
        (write protected, ejected, being sanitized); ``ScsiTarget.prepare`` checks it once."""
        self.gated = (self.write_protected or not self.medium_present
                      or self.sanitize_progress is not None)
        if self.state_listener is not None:
            self.state_listener(self)

    def set_medium(self, present: bool, by: Nexus | None = None) -> None:
        """Load or eject a removable LU's medium; a load tells every nexus but ``by`` (the
        one that loaded it, if any) that the medium may have changed (SBC-3 4.10)."""
        if present and not self.medium_present:
            self.add_ua_all(SenseReason.MEDIUM_MAY_HAVE_CHANGED, exclude=by)
        self.medium_present = present
        self.state_changed()

    # -- unit attentions (SPC-4 5.14)
    def add_ua(self, nexus: Nexus, reason: SenseReason) -> None:
        """Queue ``reason`` for ``nexus`` once; the oldest drops out past MAX_PENDING_UA."""
        queue = self.ua.setdefault(nexus, [])
        if reason in queue:
            return
        if len(queue) >= MAX_PENDING_UA:
            del queue[0]
        queue.append(reason)

    def add_ua_all(self, reason: SenseReason, exclude: Nexus | None = None) -> None:
        """Queue ``reason`` for every nexus but ``exclude`` (the one that caused it)."""
        for nexus in self.nexuses:
            if nexus != exclude:
                self.add_ua(nexus, reason)

    def pop_ua(self, nexus: Nexus) -> SenseReason | None:
        """The oldest unit attention pending for ``nexus``, now reported, or None."""
        queue = self.ua.get(nexus)
        if not queue:
            return None
        reason = queue.pop(0)
        if not queue:
            del self.ua[nexus]
        return reason

    # -- I_T nexus bookkeeping, driven by ScsiTarget
    def nexus_added(self, nexus: Nexus) -> None:
        """A new I_T nexus reaches this LU."""
        self.nexuses.add(nexus)
        # SAM-5 6.3.1: a new I_T nexus first sees POWER ON, RESET, OR BUS DEVICE RESET OCCURRED.
        self.add_ua(nexus, SenseReason.POWER_ON_RESET)

    def nexus_removed(self, nexus: Nexus) -> None:
        """An I_T nexus is gone: its unit attentions and SPC-2 reservation with it."""
        self.nexuses.discard(nexus)
        self.ua.pop(nexus, None)
        self.prevent.discard(nexus)     # SBC-3 5.9: I_T nexus loss ends its prevention
        # SPC-4 5.9.3 / SPC-2 5.5.1: I_T nexus loss releases a RESERVE(6/10) reservation;
        # persistent registrations survive it.
        self.reservations.nexus_lost(nexus)

    def reset(self, reason: SenseReason) -> None:
        """LOGICAL UNIT RESET / target reset (SAM-5 6.3): drop SPC-2 reservations, tell everyone.

        The current WCE survives the reset: falling back to a write-back default behind the
        back of a host that chose write-through could lose writes it believes durable.
        """
        self.reservations.reset()
        self.prevent.clear()            # SBC-3 5.9: a reset allows medium removal
        self.ua.clear()
        self.add_ua_all(reason)

    def capacity_changed(self) -> None:
        """Re-read the store size after a resize (SBC-3 4.10: CAPACITY DATA HAS CHANGED)."""
        self.num_blocks = self.store.size_bytes // self.block_size
        self.add_ua_all(SenseReason.CAPACITY_DATA_HAS_CHANGED)
