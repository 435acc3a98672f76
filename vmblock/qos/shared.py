"""The limit tags of limited VMs in shared memory: one table for the owner and every worker.

With worker processes a VM's sessions may be served by several processes, each with its own
``QosGate``. A limit holds for the VM as a whole because every process takes the VM's L and
B tags (``vmblock.qos.scheduler``) from the same two cells: ``advance`` moves them under a
POSIX byte-range lock on the cells (``fcntl.lockf``: one lock and unlock per command of a
limited VM), so two processes never hand out the same slice of the limit. The owner makes
the table (a memfd, ``vmblock.store.shm.SharedArray``), gives each limited VM a slot
(``QosGate.configure``) and passes the fd to each worker at spawn (``--qos-fd``).
Reservations and shares stay per process (docs/qos.md).
"""

from __future__ import annotations

import fcntl

import numpy as np

from vmblock.store.shm import SharedArray

# limited VMs with a shared slot per run; beyond it a VM's limit is kept per process
MAX_SHARED_FLOWS = 4096
_CELL = np.dtype(np.float64).itemsize


class SharedTags:
    """The table (module docstring); ``fd`` given: attach to the owner's."""

    def __init__(self, fd: int | None = None):
        items = 2 * MAX_SHARED_FLOWS
        self.shm = SharedArray("vmblock-qos", np.float64, items, fd=fd)    # read-write
        if fd is None:
            self.shm.ensure(items)
        self.fd = self.shm.fd
        self.cells = self.shm.array

    def advance(self, slot: int, dl: float, db: float, floor: float) -> tuple[float, float]:
        """The next (L, B) tags of the VM in ``slot``: each max(previous + step, floor), a
        step of 0 leaving that tag 0 (no such limit)."""
        i = 2 * slot
        fcntl.lockf(self.fd, fcntl.LOCK_EX, 2 * _CELL, i * _CELL)
        try:
            cells = self.cells
            lt = max(float(cells[i]) + dl, floor) if dl else 0.0
            bt = max(float(cells[i + 1]) + db, floor) if db else 0.0
            cells[i] = lt
            cells[i + 1] = bt
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN, 2 * _CELL, i * _CELL)
        return lt, bt

    def close(self) -> None:
        """Unmap and close the memfd (the other processes keep theirs)."""
        self.shm.close()
