"""The connectors of a running server, and the one place their facts become VM records.

``Hypervisors.reconcile`` runs on the event loop after any connector read something. From what
every connector last saw it makes each domain that uses a vdisk of this server (or already has
a VM) the VM of that uuid (``vmblock.meta.hypervisors.sync_vm``), and then:

* a domain defined on two hypervisors (a live migration in flight, or a real conflict): the
  claim of the hypervisor where it runs is the VM's ``hypervisor``/``location``, every claim is
  kept in ``claims``, and when it runs on both a ``hypervisor_conflict`` event names them;
* a vdisk used by two different domains: it stays with its current owner if that is one of
  them (else the running one), and a ``hypervisor_conflict`` event names both;
* a VM of a reachable, synced hypervisor whose domain is gone: ``orphaned`` (and inactive),
  with a ``vm_orphaned`` event; its vdisks and data stay;
* a VM whose hypervisor cannot be reached (or was removed): ``meta_stale``; the connector
  records ``hypervisor_unreachable`` once per outage and ``hypervisor_reachable`` on return.

Only fields that changed are written (one batch per VM): a resync of an unchanged hypervisor
writes nothing, and nothing here touches I/O.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from vmblock.errors import InvalidArgument, NotFound, ServerError
from vmblock.hypervisor.connector import Connector, Mapped, register_event_impl
from vmblock.hypervisor.mapping import Served
from vmblock.meta.hypervisors import SOURCE_PREFIX, Hypervisor, sync_vm, update_vm

log = logging.getLogger("vmblock.hypervisor")

SYNC_WAIT = 2.0         # the call timeout's multiple a ``hypervisor sync`` waits at most


class Hypervisors:
    """Every hypervisor record of the pool, connected while the server runs."""

    def __init__(self, pool, portals: Callable[[], list[tuple[str, int]]], timeout: float):
        self.pool = pool
        self.portals = portals
        self.timeout = timeout
        self.connectors: dict[str, Connector] = {}
        self._reported: set[tuple] = set()      # conflicts already told, so each is told once

    async def start(self) -> None:
        """Connect every stored hypervisor (each in the background: none delays the start);
        VMs already marked stale stay so until their hypervisor answers."""
        for hv in self.pool.hypervisors():
            try:
                self.connect(hv)
            except InvalidArgument as e:      # libvirt-python missing: serve all the same
                log.error("hypervisor %s is not followed: %s", hv.name, e)

    def served(self) -> Served:
        """What this server serves now: portals, LUNs, NAAs (read on the loop)."""
        disks = self.pool.vdisks()
        return Served(list(self.portals()), {(d.target, d.lun): d.uuid for d in disks},
                      {f"{d.naa:032x}": d.uuid for d in disks})

    def connect(self, hv: Hypervisor) -> None:
        """Start following ``hv`` (libvirt's events on this loop from the first one)."""
        register_event_impl(asyncio.get_running_loop())
        self.connectors[hv.name] = Connector(hv.name, hv.uri, hv.interval, self.timeout,
                                             self.served, self._changed, self._state)

    async def disconnect(self, name: str) -> None:
        """Stop following ``name``; its VMs become ``meta_stale``."""
        c = self.connectors.pop(name, None)
        if c is not None:
            await c.stop()
        self.reconcile()

    async def stop(self) -> None:
        """Stop every connector (connections closed on their own threads)."""
        for name in list(self.connectors):
            await self.connectors.pop(name).stop()

    async def sync(self, name: str) -> bool:
        """A full sync of ``name`` now; whether it succeeded (False: unreachable)."""
        c = self.connectors.get(name)
        if c is None:
            raise NotFound(f"no hypervisor named {name!r}")
        try:
            return await asyncio.wait_for(asyncio.shield(c.request_sync()),
                                          self.timeout * SYNC_WAIT)
        except asyncio.TimeoutError:
            raise ServerError(f"hypervisor {name} did not answer within "
                              f"{self.timeout * SYNC_WAIT:g} s") from None

    def show(self, name: str) -> dict:
        """What the connector of ``name`` knows now (state, domains, unmapped disks)."""
        c = self.connectors.get(name)
        if c is None:
            return {"state": "not connected", "reachable": False, "domains": [],
                    "unmapped_disks": []}
        names = {d.uuid: d.name for d in self.pool.vdisks()}
        return c.show(names)

    # --- from the connectors ------------------------------------------------------------------

    def _changed(self, connector: Connector) -> None:
        try:
            self.reconcile()
        except Exception:
            log.exception("hypervisor %s: updating the VM records failed", connector.name)

    def _state(self, connector: Connector, reachable: bool, why: str) -> None:
        try:
            self._record_state(connector, reachable, why)
        except Exception:       # a failing meta DB: logged; the connector carries on
            log.exception("hypervisor %s: recording its state failed", connector.name)
        self._changed(connector)

    def _record_state(self, connector: Connector, reachable: bool, why: str) -> None:
        if reachable:
            self.pool.record_event("hypervisor_reachable", "info",
                                   f"hypervisor {connector.name} ({connector.uri}) is "
                                   f"reachable again", hypervisor=connector.name)
        else:
            self.pool.record_event(
                "hypervisor_unreachable", "warning",
                f"hypervisor {connector.name} ({connector.uri}) cannot be reached: {why}",
                advice="its VMs are marked meta_stale until it answers; vmblock retries "
                       "with backoff", hypervisor=connector.name)

    # --- facts into records --------------------------------------------------------------------

    def reconcile(self) -> None:
        """Bring the VM records in line with what every connector saw last (see the module)."""
        entries: dict[str, list[tuple[Connector, Mapped]]] = {}
        users: dict[str, set[str]] = {}         # vdisk uuid -> domain uuids using it
        for name in sorted(self.connectors):
            c = self.connectors[name]
            for uid, m in c.domains.items():
                if m.vdisks or self.pool.record(f"vm/{uid}") is not None:
                    entries.setdefault(uid, []).append((c, m))
                for v in m.vdisks:
                    users.setdefault(v, set()).add(uid)
        owner = {v: self._owner(v, uids, entries) for v, uids in users.items()}
        for uid, claims in entries.items():
            self._sync_domain(uid, claims, [v for _, m in claims for v in m.vdisks
                                            if owner[v] == uid])
        for vm in self.pool.vms():
            if vm.source.startswith(SOURCE_PREFIX) and vm.uuid not in entries:
                self._gone(vm)

    def _owner(self, vdisk: str, uids: set[str], entries: dict) -> str:
        if len(uids) == 1:
            return next(iter(uids))
        current = (self.pool.record(f"vdisk/{vdisk}") or {}).get("vm")
        running = sorted(u for u in uids if any(m.domain.active for _, m in entries[u]))
        chosen = current if current in uids else (running or sorted(uids))[0]
        names = {u: [f"{m.domain.name} on {c.name}" for c, m in entries[u]] for u in uids}
        key = ("vdisk", vdisk, tuple(sorted(uids)))
        if key not in self._reported:
            self._reported.add(key)
            disk = (self.pool.record(f"vdisk/{vdisk}") or {}).get("name", vdisk)
            self.pool.record_event(
                "hypervisor_conflict", "warning",
                f"vdisk {disk} is used by {len(uids)} domains: "
                f"{'; '.join(', '.join(n) for n in names.values())}; it stays with {chosen}",
                vdisk=disk, advice="two VMs writing one LUN corrupt it unless they share it "
                                   "on purpose (a cluster file system)",
                domains=sorted(uids))
        return chosen

    def _sync_domain(self, uid: str, claims: list[tuple[Connector, Mapped]],
                     vdisks: list[str]) -> None:
        running = [(c, m) for c, m in claims if m.domain.active]
        rec = self.pool.record(f"vm/{uid}") or {}
        primary = (running or [cm for cm in claims if cm[0].name == rec.get("hypervisor")]
                   or claims)[0]
        c, m = primary
        if len(running) > 1:
            key = ("domain", uid, tuple(sorted(c.name for c, _ in running)))
            if key not in self._reported:
                self._reported.add(key)
                self.pool.record_event(
                    "hypervisor_conflict", "warning",
                    f"domain {m.domain.name} ({uid}) runs on "
                    f"{' and '.join(c.name for c, _ in running)}: a live migration in flight "
                    f"or two copies of one VM; both facts are kept in its claims",
                    vm=m.domain.name, hypervisors=[c.name for c, _ in running])
        fields = {
            "name": m.domain.name, "active": bool(running), "guest_os": m.domain.guest_os,
            "location": c.host, "hypervisor": c.name, "source": SOURCE_PREFIX + c.name,
            "orphaned": False, "meta_stale": not c.reachable,
            "claims": {cc.name: {"domain": mm.domain.name, "state": mm.domain.state,
                                 "active": mm.domain.active, "host": cc.host}
                       for cc, mm in claims},
        }
        vm, changed = sync_vm(self.pool, uid, fields, vdisks)
        if "created" in changed or "adopted" in changed:
            self.pool.record_event("vm_discovered", "info",
                                   f"VM {vm.name} is domain {m.domain.name} of hypervisor "
                                   f"{c.name}", vm=vm.name, hypervisor=c.name,
                                   adopted="adopted" in changed)

    def _gone(self, vm) -> None:
        c = self.connectors.get(vm.hypervisor)
        if c is None or not c.reachable:
            update_vm(self.pool, vm.uuid, meta_stale=True)
        elif c.synced and not vm.orphaned:
            update_vm(self.pool, vm.uuid, orphaned=True, active=False, meta_stale=False,
                      claims={})
            self.pool.record_event(
                "vm_orphaned", "warning",
                f"VM {vm.name}: its domain is no longer defined on {c.name} (nor on any "
                f"other hypervisor); the VM and its vdisks are kept",
                vm=vm.name, hypervisor=c.name,
                advice=f"delete it with `vmblock vm delete {vm.name} --purge` if its data "
                       f"is no longer wanted")
