"""The asyncio carrier of one iSCSI connection: moves bytes between the transport and its
``ConnectionMachine``, awaits SCSI work and arms the machine's one timer.

A ``BufferedProtocol``: the event loop receives straight into the machine's preallocated
buffer. Back-pressure: while the socket does not take what is written (``pause_writing``) no
requests are read, so an initiator that does not read cannot make answers pile up here.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

from .machine import ConnectionMachine
from .transfer import TaskState

log = logging.getLogger("vmblock.iscsi")


class IscsiProtocol(asyncio.BufferedProtocol):
    """One accepted TCP connection of a portal; the protocol work is the machine's."""

    def __init__(self, service, portal: tuple[str, int]):
        self.service = service
        self.portal = portal
        self.transport = None
        self.loop = None
        self.machine: ConnectionMachine | None = None
        self.timer = None

    # ---- transport callbacks -----------------------------------------------------------
    def connection_made(self, transport) -> None:
        """Create the connection's machine; refuse (abort) the connection when the service's
        limits have no room for it."""
        self.transport = transport
        self.loop = asyncio.get_running_loop()
        peer = transport.get_extra_info("peername") or ("?", 0)
        portal = transport.get_extra_info("sockname") or self.portal
        machine = self.machine = ConnectionMachine(self.service, self, peer, portal)
        if not self.service.admit(machine):
            log.warning("%s: refused, connection limits reached (%d open, %d from this address)",
                        machine.host, len(self.service.connections),
                        self.service.per_host[machine.host])
            machine.closing = True
            transport.abort()
            return
        machine.start(self.loop.time())

    def connection_lost(self, exc) -> None:
        """Cancel the timer and let the machine give back its slot, budget and tasks."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.machine is not None:        # None once detached
            self.machine.connection_lost()

    def pause_writing(self) -> None:
        """The socket is full: stop reading requests until it drains (back-pressure)."""
        self.machine.pause_writing()
        if not self.machine.closing:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        """The socket drained: read requests again."""
        self.machine.resume_writing()
        if not self.machine.closing:
            self.transport.resume_reading()

    def get_buffer(self, sizehint: int):
        """The machine's receive buffer; the loop reads straight into it (``sizehint`` unused)."""
        return self.machine.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` arrived in the buffer: the machine parses and handles what is complete."""
        self.machine.buffer_updated(nbytes, self.loop.time())
        self.service.poll.arrived()

    def eof_received(self):
        """The initiator closed its side: returning False closes ours too."""
        return False

    def detach(self) -> socket.socket:
        """Give the connection up without ending it (vmblock.worker hands it to another
        process): a duplicate of its socket; the transport goes, the machine hears nothing."""
        dup = socket.socket(fileno=os.dup(self.transport.get_extra_info("socket").fileno()))
        self.machine = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.transport.abort()
        return dup

    # ---- ConnectionIo ------------------------------------------------------------------
    def write(self, buffers: list) -> None:
        """Hand ``buffers`` to the transport (dropped once it is closing)."""
        if not self.transport.is_closing():
            self.transport.writelines(buffers)

    def close(self, abort: bool) -> None:
        """Close the transport, at once when ``abort``."""
        if abort:
            self.transport.abort()
        else:
            self.transport.close()

    def run(self, st: TaskState, work) -> None:
        """Await ``work`` as a task; its end goes to the machine's ``task_done``."""
        fut = asyncio.ensure_future(work)
        fut.add_done_callback(lambda f, st=st: self._work_done(st, f))

    def _work_done(self, st: TaskState, fut) -> None:
        failed = fut.cancelled() or fut.exception() is not None
        if failed and not fut.cancelled():
            log.error("SCSI command failed", exc_info=fut.exception())
        self.machine.task_done(st, failed=failed)

    def set_timer(self, when: float | None) -> None:
        """Call the machine's ``timer_expired`` at loop time ``when``; None: never."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if when is not None:
            self.timer = self.loop.call_at(when, self._timer_fired)

    def _timer_fired(self) -> None:
        self.timer = None
        self.machine.timer_expired(self.loop.time())
