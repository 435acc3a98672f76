"""One iSCSI connection as a sans-IO state machine: framing, login, and the full feature phase.

Bytes come in (``get_buffer``/``buffer_updated``, or ``receive_data``), time comes in as an
argument (``buffer_updated(n, now)``, ``timer_expired(now)``), and everything that leaves goes
through the small ``ConnectionIo`` the carrier provides: buffers to write, a close, SCSI work to
await (its end comes back as ``task_done``) and the one deadline to be called back at. No
socket, no event loop and no clock here, so tests drive a connection from memory; the asyncio
carrier is ``protocol.IscsiProtocol``.

Complete PDUs are parsed in place with ``pdu.parse_bhs`` and dispatched through one table.
Responses produced while one receive buffer is processed are corked and written at once. SCSI
work is handed to ``ScsiTarget.prepare/execute``. The session registry and the data budget are
the service's objects, shared by every connection.

``ConnectionMachine`` is put together from one part per concern, each a mixin in its own module
(in the manner of LIO's iscsi_target_*.c): ``framing`` (whole PDUs out of the receive buffer),
``login_phase`` (Login Requests up to full feature phase), ``transfer`` (SCSI Command, R2T,
Data-Out, Data-In and their data budget) and ``control`` (NOP, Task Management, Text, Logout).
This module keeps the connection's state, the inputs from the carrier, the full feature phase
dispatch with its CmdSN ordering, and the output every part sends through.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from typing import Protocol

from .control import ControlPdus
from .framing import MIN_READ_ROOM, ProtocolViolation, ReceiveFraming
from .login import LOGIN_MRDSL, LoginNegotiator
from .login_phase import LoginPhase
from .pdu import FLAG_FINAL, PADDING, RSVD_TAG, Opcode, Pdu, RejectReason, build_bhs, frame
from .transfer import DATA_OUT, ScsiTransfer, TaskState

log = logging.getLogger("vmblock.iscsi")


class ConnectionIo(Protocol):
    """What a connection machine asks of the carrier it runs in (an asyncio protocol, a test)."""

    def write(self, buffers: list) -> None:
        """Send these buffers, in order, after everything written before."""

    def close(self, abort: bool) -> None:
        """Close the connection: after what was written, or at once (``abort``)."""

    def run(self, st: TaskState, work) -> None:
        """Await the awaitable ``work`` of ``st``'s SCSI command, then call the machine's
        ``task_done(st, failed)``."""

    def set_timer(self, when: float | None) -> None:
        """Call the machine's ``timer_expired(now)`` at time ``when`` (None: not at all),
        replacing any earlier deadline."""


class ConnectionMachine(ReceiveFraming, LoginPhase, ScsiTransfer, ControlPdus):
    """One connection's protocol state, from the first byte to the close (module docstring)."""

    _ttt = itertools.count(1)

    def __init__(self, service, io: ConnectionIo, peer: tuple, portal: tuple):
        self.service = service
        self.io = io
        self.peer = peer
        self.host = peer[0]             # source address: the key of per-address limits
        self.portal = portal
        self.rbuf = bytearray(2 * (LOGIN_MRDSL + 2048) + MIN_READ_ROOM)   # grown after login
        self.rview = memoryview(self.rbuf)
        self.rstart = self.rend = 0
        self.rx_limit = LOGIN_MRDSL
        self.header_digest = self.data_digest = False
        self.peer_mrdsl = LOGIN_MRDSL
        self.max_burst = self.first_burst = 0
        self.max_r2t = 1
        self.immediate_data = self.initial_r2t = True
        self.statsn = 0
        self.login = LoginNegotiator(service, service.registry)
        self.session = None
        self.cid = 0
        self.closing = False
        self.out: list = []
        self.corked = False
        self.started = self.last_rx = 0.0
        self.login_deadline = ""        # why the pending login deadline closes the connection
        self.nop_ttt = None
        self.nop_sent = 0.0
        self.text_ttt = RSVD_TAG
        self.text_rest = b""
        self.text_pending = bytearray()
        self.budget_waiting: deque[TaskState] = deque()   # tasks whose data has no budget yet
        self.out_charged = 0            # budget of READ data sent, until the socket takes it
        self.writing_paused = False
        # vmblock.stats: the service's recorder (None: statistics off); the time a parked
        # command being dispatched arrived (None otherwise)
        self.stats = getattr(service, "stats", None)
        self.parked_at = None
        self.qos = getattr(service, "qos", None)     # vmblock.qos.gate.QosGate, or None
        self.rx_time = 0.0              # when this receive buffer came in (statistics on)
        self.handlers = {
            Opcode.NOP_OUT: self._nop_out,
            Opcode.SCSI_CMD: self._scsi_cmd,
            Opcode.TMF_REQ: self._tmf,
            Opcode.TEXT_REQ: self._text,
            Opcode.LOGOUT_REQ: self._logout,
        }

    # ---- inputs ------------------------------------------------------------------------
    def start(self, now: float) -> None:
        """The connection is accepted and admitted: a first Login Request is due."""
        self.started = self.last_rx = now
        self._set_login_deadline(now + self.service.config.first_pdu_timeout,
                                 "no Login Request in iscsi.first_pdu_timeout")

    def resume(self, session, cid: int, statsn: int, now: float) -> None:
        """Take over connection ``cid`` of ``session`` in full feature phase, logged in by
        another process (vmblock.worker): StatSN goes on from ``statsn``; the bytes that
        process received past the login come in through ``receive_data``."""
        self.started = self.last_rx = now
        self.session = session
        self.statsn = statsn
        self.login.cid = cid
        self._enter_full_feature()

    def hand_over(self) -> None:
        """Stop here, in full feature phase, for another process to go on (vmblock.worker):
        no more PDUs are handled or answered in this one; the carrier passes the socket on."""
        self.closing = True

    def cork(self) -> None:
        """Hold what is sent until ``uncork``: the answers to a batch of commands that ended
        together (vmblock.worker) leave in one write."""
        self.corked = True

    def uncork(self) -> None:
        """Write what ``cork`` held."""
        self.corked = False
        self._flush()

    def connection_lost(self) -> None:
        """The carrier's connection is gone: give back the slot, the budget and the tasks."""
        self.closing = True
        self.service.release(self)
        budget = self.service.budget
        budget.forget(self)
        self.budget_waiting.clear()
        if self.session is not None:
            for st in list(self.session.tasks.values()):
                if st.conn is self:
                    st.abort()
                    self.session.tasks.pop(st.task.itt, None)
            self.service.registry.detach(self.session, self)
        budget.give(self.host, self.out_charged)
        self.out_charged = 0
        # the receive buffer (up to ~0.6 MiB after login) goes now, not when the collector
        # gets to the connection's reference cycles (server.settle_gc makes that rarer)
        self.rbuf = bytearray()
        self.rview = memoryview(self.rbuf)
        self.rstart = self.rend = 0

    def pause_writing(self) -> None:
        """The peer does not take what we send: READ data sent stays charged until it does."""
        self.writing_paused = True

    def resume_writing(self) -> None:
        """The peer took what was sent: its READ data budget comes back."""
        self.writing_paused = False
        self.service.budget.give(self.host, self.out_charged)
        self.out_charged = 0

    def timer_expired(self, now: float) -> None:
        """The deadline last given to ``ConnectionIo.set_timer`` has come."""
        if self.closing:
            return
        if self.session is None:
            self.terminate(self.login_deadline)
        else:
            self._nop_check(now)

    # ---- full feature phase dispatch --------------------------------------------------
    def _ffp_pdu(self, p: Pdu, data, header) -> None:
        op = p.opcode
        if op == DATA_OUT:
            self._data_out(p, data, header)
            return
        handler = self.handlers.get(op)
        if handler is None:
            if op in (Opcode.SNACK, Opcode.LOGIN_REQ):
                raise ProtocolViolation(RejectReason.PROTOCOL_ERROR,
                                        f"opcode {op:#x} in full feature phase", bytes(header))
            self._send_reject(RejectReason.CMD_NOT_SUPPORTED, bytes(header))
            return
        sess = self.session
        if p.immediate:
            handler(p, data, header)
            return
        cmdsn = p.cmdsn
        if cmdsn == sess.exp_cmdsn:
            sess.exp_cmdsn = (cmdsn + 1) & 0xFFFFFFFF
            handler(p, data, header)
            while sess.pending and sess.exp_cmdsn in sess.pending:
                conn, q, qdata, qheader, charged, parked = sess.pending.pop(sess.exp_cmdsn)
                sess.exp_cmdsn = (sess.exp_cmdsn + 1) & 0xFFFFFFFF
                conn.parked_at = parked
                try:
                    conn.dispatch_parked(q, qdata, qheader, charged)
                finally:
                    conn.parked_at = None
        elif sess.in_window(cmdsn) and cmdsn not in sess.pending:
            self._park(p, data, header)
        # else: outside the window or a duplicate: silently ignored (RFC 7143 4.2.2.1)

    def _park(self, p: Pdu, data, header) -> None:
        """Keep a command that arrived before a CmdSN gap was filled. Its immediate data is
        checked now and copied only within the data budget; a SCSI command beyond the budget
        is kept without its data and answered TASK SET FULL when its turn comes."""
        sess = self.session
        if p.opcode == Opcode.SCSI_CMD:
            self._check_unsolicited(p, len(data), header)
        parked = self.stats.clock() if self.stats is not None else None
        if self.service.budget.take(self.host, len(data)):
            sess.pending[p.cmdsn] = (self, p, bytes(data), bytes(header), len(data), parked)
        elif p.opcode == Opcode.SCSI_CMD:
            sess.pending[p.cmdsn] = (self, p, None, bytes(header), 0, parked)
        else:
            raise ProtocolViolation(RejectReason.PROTOCOL_ERROR, "out-of-order request beyond the "
                                    "data budget", bytes(header))

    def dispatch_parked(self, p, data, header, charged: int) -> None:
        """Run a parked command now that its CmdSN is due (see ``_park``)."""
        self.service.budget.give(self.host, charged)
        if self.closing:
            return
        if data is None:
            self._answer_task_set_full(p.itt)
            return
        self.handlers[p.opcode](p, data, header)

    # ---- output ------------------------------------------------------------------------
    def _send(self, header: bytes, data=b"") -> None:
        if self.closing:
            return
        if self.header_digest or self.data_digest:
            self.out.extend(frame(header, data, self.header_digest, self.data_digest))
        else:       # frame() spelled inline: the path of every response without digests
            out = self.out
            out.append(header)
            if data:
                out.append(data)
                if len(data) & 3:
                    out.append(PADDING[-len(data) & 3])
        if not self.corked:
            self._flush()

    def _flush(self) -> None:
        if self.out:
            self.io.write(self.out)
            self.out.clear()
            stats = self.stats
            if stats is not None:
                stats.sent()        # the statuses just written: their time is now
        if self.out_charged and not self.writing_paused:
            self.service.budget.give(self.host, self.out_charged)    # the socket took it
            self.out_charged = 0

    def _next_statsn(self) -> int:
        sn = self.statsn
        self.statsn = (sn + 1) & 0xFFFFFFFF
        return sn

    def _window(self):
        return self.session.window()

    def _send_reject(self, reason: int, header: bytes) -> None:
        exp, mx = self._window()
        hdr = build_bhs(Opcode.REJECT, FLAG_FINAL, reason, 0, len(header), 0, RSVD_TAG, 0,
                        self._next_statsn(), exp, mx)
        self._send(hdr, header)

    def _close_after_flush(self) -> None:
        self._flush()
        self.closing = True
        self.io.close(abort=False)

    def terminate(self, why: str) -> None:
        """Drop this connection at once (reinstatement, reset, shutdown)."""
        log.info("%s: closing connection: %s", self.peer[0], why)
        self.closing = True
        self.out.clear()
        self.io.close(abort=True)

    def info(self) -> dict:
        """The connection as ``session list`` shows it."""
        return {"cid": self.cid, "peer": f"{self.peer[0]}:{self.peer[1]}",
                "portal": f"{self.portal[0]}:{self.portal[1]}",
                "header_digest": self.header_digest, "data_digest": self.data_digest}
