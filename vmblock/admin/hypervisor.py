"""The verbs of hypervisors: ``hypervisor add|list|show|remove|sync``.

Records live in the pool (``vmblock.meta.hypervisors``); a running server follows each one
with a connector (``vmblock.hypervisor``), which these verbs start, stop, ask for a sync or read
the live state of (``Runtime.hypervisors``). Without a server the records change all the same
and the next ``vmblock serve`` connects them; ``sync`` and the live state need a server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Protocol

from vmblock.admin.schema import Name, Text
from vmblock.admin.verbs import verb
from vmblock.errors import ServerError
from vmblock.hypervisor.connector import libvirt_module
from vmblock.meta.hypervisors import check_uri, hypervisor
from vmblock.units import parse_seconds

if TYPE_CHECKING:
    from vmblock.hypervisor.manager import Hypervisors
    from vmblock.meta import Pool

# A libvirt URI (with an ssh key's or auth.conf's path in its query); an interval like "30s".
Uri = Annotated[str, Text(4096)]
Interval = Annotated[str, Text(32)]
DEFAULT_INTERVAL = "30s"


class Runtime(Protocol):
    """What a running server shows the hypervisor verbs."""

    hypervisors: Hypervisors | None


class HypervisorVerbs:
    """The hypervisor verbs of one pool, live on ``runtime`` when a server runs."""

    def __init__(self, pool: Pool, runtime: Runtime | None = None):
        self.pool = pool
        self.runtime = runtime

    def _live(self) -> Hypervisors | None:
        return getattr(self.runtime, "hypervisors", None)

    def _vms_of(self, name: str) -> list[dict]:
        return [{"name": vm.name, "uuid": vm.uuid, "active": vm.active,
                 "orphaned": vm.orphaned, "meta_stale": vm.meta_stale}
                for vm in self.pool.vms() if vm.hypervisor == name]

    @verb
    def hypervisor_add(self, name: Name, uri: Uri, interval: Interval = DEFAULT_INTERVAL
                       ) -> dict:
        """Follow a libvirt hypervisor (its domains' disks on this server's LUNs become VMs),
        resynced fully every ``interval``."""
        libvirt_module()            # a clear message now rather than a silent record
        check_uri(uri)
        hv = self.pool.add_hypervisor(name, uri, parse_seconds(interval))
        live = self._live()
        if live is not None:
            live.connect(hv)
        return hv.dump()

    @verb
    def hypervisor_list(self) -> list[dict]:
        """Every hypervisor with its connection state (``not connected`` without a server)."""
        live = self._live()
        out = []
        for hv in self.pool.hypervisors():
            c = live.connectors.get(hv.name) if live is not None else None
            out.append(dict(hv.dump(), state=c.state if c else "not connected",
                            error=c.error if c else "", vms=len(self._vms_of(hv.name))))
        return out

    @verb
    def hypervisor_show(self, name: Name) -> dict:
        """One hypervisor: record, connection state, its domains with the vdisks they use,
        the disks that are no LUN of this server (``unmapped_disks``, with the reason) and
        its VMs."""
        hv = hypervisor(self.pool, name)
        live = self._live()
        state = live.show(name) if live is not None else {
            "state": "not connected", "reachable": False, "domains": [], "unmapped_disks": []}
        return dict(hv.dump(), **state, vms=self._vms_of(name))

    @verb
    def hypervisor_remove(self, name: Name) -> dict:
        """Stop following a hypervisor; its VMs and their vdisks stay (marked meta_stale)."""
        hv = self.pool.remove_hypervisor(name)
        live = self._live()
        if live is None:
            return hv.dump()

        async def disconnect() -> dict:
            await live.disconnect(name)
            return hv.dump()
        return disconnect()

    @verb
    def hypervisor_sync(self, name: Name) -> dict:
        """Read every domain of a hypervisor now (a reconnect attempt when it is unreachable);
        answers ``hypervisor show``."""
        hypervisor(self.pool, name)
        live = self._live()
        if live is None:
            raise ServerError(f"no server is running on pool {self.pool.path}; hypervisors "
                              f"are followed only while `vmblock serve` runs")

        async def sync() -> dict:
            await live.sync(name)
            return self.hypervisor_show(name)
        return sync()
