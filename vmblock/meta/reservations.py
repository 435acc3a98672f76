"""Persistent reservations kept through a restart (APTPL): one record per vdisk.

``PrRecord`` is the ``vmblock.scsi.pr.Persister`` the server hands each LU's reservations: the
SCSI core decides what to keep and when (the APTPL bit of the last REGISTER), this keeps it as
the record ``pr/<vdisk uuid>`` (JSON: generation, type, holder, registrations with their I_T
nexus and key), written in one synced batch before the PERSISTENT RESERVE OUT completes.
Deleting the vdisk deletes the record with it.
"""

from __future__ import annotations


def pr_key(vdisk_uuid: str) -> str:
    """The meta DB key of a vdisk's persistent reservations."""
    return f"pr/{vdisk_uuid}"


class PrRecord:
    """The saved persistent-reservation state of one vdisk's LU."""

    def __init__(self, pool, vdisk_uuid: str):
        self.pool = pool
        self.key = pr_key(vdisk_uuid)

    def load(self) -> dict | None:
        """The state saved last, None when APTPL was not in force."""
        return self.pool.record(self.key)

    def save(self, state: dict | None) -> None:
        """Store ``state`` (synced), or delete the record when ``state`` is None."""
        if state is None:
            self.pool.write_records({}, [self.key])
        else:
            self.pool.write_records({self.key: state})
