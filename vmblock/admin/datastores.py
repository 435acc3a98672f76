"""The verbs of shared datastores: ``datastore list`` and ``datastore scan VDISK``.

What a vdisk holds is found by the running server on its own (when it serves the vdisk, and
after writes to its label or metadata areas: docs/datastores.md); ``datastore scan`` reads it
again now, through the running server's store when one runs, else from the pool. The
datastore of one vdisk also appears in ``vdisk show`` and its sub-vdisks in ``vm show``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from vmblock.admin.schema import Name
from vmblock.admin.verbs import verb
from vmblock.meta import datastores

if TYPE_CHECKING:
    from vmblock.meta import Pool, Vdisk


class Runtime(Protocol):
    """What a running server shows the datastore verbs."""

    def datastore_scan(self, disk: Vdisk) -> None:
        """Read what ``disk`` holds now, through its served store, and watch the new ranges."""


class DatastoreVerbs:
    """The datastore verbs of one pool, through ``runtime`` when a server runs."""

    def __init__(self, pool: Pool, runtime=None):
        self.pool = pool
        self.runtime = runtime

    @verb
    def datastore_list(self) -> list[dict]:
        """Every vdisk holding a shared datastore (an LVM2 PV): its VG, seqno, volumes and
        the last problem seen."""
        names = {vm.uuid: vm.name for vm in self.pool.vms()}
        found = dict(self.pool.records(datastores.PREFIX))
        out = []
        for disk in self.pool.vdisks():
            rec = found.get(disk.uuid)
            d = datastores.datastore_json(self.pool, disk, names, rec) if rec else None
            if d is not None:
                out.append(dict(d, vdisk=disk.name))
        return out

    @verb
    def datastore_scan(self, vdisk: Name) -> dict:
        """Read the vdisk's LVM2 label and metadata now (as a write there would make the
        server do) and answer what it holds: ``datastore`` (null: no LVM2 PV) and
        ``problem`` (why a label-like sector or the metadata did not read, else "")."""
        disk = self.pool.vdisk(vdisk)
        scan = getattr(self.runtime, "datastore_scan", None)
        if scan is not None:
            scan(disk)
        else:
            store = self.pool.open_store(disk)
            try:
                datastores.scan_vdisk(self.pool, disk, datastores.store_reader(store))
            finally:
                store.close()
        rec = datastores.record(self.pool, disk) or {}
        return {"vdisk": disk.name, "datastore": datastores.datastore_json(self.pool, disk),
                "problem": rec.get("problem", "")}
