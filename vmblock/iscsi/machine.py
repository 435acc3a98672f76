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
"""

from __future__ import annotations

import itertools
import logging
import struct
from collections import deque
from typing import Protocol

from ..scsi.sense import ScsiError, SenseReason, fail
from ..scsi.task import SAM_STAT_GOOD, SAM_STAT_TASK_SET_FULL, ScsiTask
from . import params
from .login import LOGIN_MRDSL, LoginNegotiator, LoginStatus
from .pdu import (BHS_LEN, CMD_ATTR_MASK, CMD_FLAG_READ, CMD_FLAG_WRITE, DATA_IN_FLAG_STATUS,
                  DIGEST_LEN, FLAG_FINAL, ISCSI_RSP_COMPLETED, ISCSI_RSP_TARGET_FAILURE,
                  RSP_FLAG_OVERFLOW, RSP_FLAG_UNDERFLOW, RSVD_TAG, TEXT_FLAG_CONTINUE,
                  LogoutReason, LogoutResponse, Opcode, Pdu, RejectReason, TmfFunction,
                  TmfResponse, build_bhs, decode_lun, digest_of, frame, pad_len, parse_bhs,
                  read_digest)
from .session import MAX_SESSION_TASKS, sn_lt

log = logging.getLogger("vmblock.iscsi")

MAX_WRITE_BUFFER = 64 << 20         # largest Data-Out we gather for one command
MIN_READ_ROOM = 65536
NOP_SLACK = 0.01                    # seconds a NOP timer may fire early and still count

# Plain-int opcodes of the per-PDU path (Data-Out in; Data-In, SCSI Response, R2T out):
# reading an IntEnum member and packing it costs more than a module-level int.
_DATA_OUT = int(Opcode.DATA_OUT)
_DATA_IN = int(Opcode.DATA_IN)
_SCSI_RSP = int(Opcode.SCSI_RSP)
_R2T = int(Opcode.R2T)

# The name ``ScsiTarget.task_management`` knows each task-set TMF by.
_TMF_NAMES = {TmfFunction.ABORT_TASK_SET: "ABORT_TASK_SET",
              TmfFunction.CLEAR_TASK_SET: "CLEAR_TASK_SET",
              TmfFunction.LUN_RESET: "LUN_RESET",
              TmfFunction.TARGET_WARM_RESET: "TARGET_WARM_RESET",
              TmfFunction.TARGET_COLD_RESET: "TARGET_COLD_RESET"}

_SENSE_LEN = struct.Struct(">H")


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


class ProtocolViolation(Exception):
    """The initiator broke framing or sequencing rules: reject the PDU and drop the connection."""

    def __init__(self, reason: int, why: str, header: bytes = b""):
        super().__init__(why)
        self.reason = reason
        self.header = header


class TaskState:
    """Fabric-side state of one SCSI command: Data-Out collection and R2Ts."""

    __slots__ = ("conn", "task", "buf", "want", "received", "unsolicited", "next_r2t",
                 "r2ts", "r2tsn", "lun_field", "cmdsn", "aborted", "done", "charged", "read_len")

    # A Data-Out sequence (one R2T, or the unsolicited burst) is [next offset, end, next DataSN];
    # with DataPDUInOrder=Yes each PDU must continue exactly where the last one ended.

    def __init__(self, conn, task, lun_field, cmdsn):
        self.conn = conn
        self.task = task
        self.lun_field = lun_field
        self.cmdsn = cmdsn
        self.buf = None
        self.want = 0
        self.received = 0
        self.unsolicited: list | None = None
        self.next_r2t = 0
        self.r2ts: dict[int, list] = {}
        self.r2tsn = 0
        self.aborted = False
        self.done = False
        self.charged = 0                # bytes of the data budget it holds
        self.read_len = 0               # READ data it will hold, charged before it executes

    def abort(self) -> None:
        """Stop the command (task aborted, Data-Out dropped) and return its data budget; for
        TMFs, session removal and a lost connection. The caller drops it from ``session.tasks``."""
        self.aborted = True
        self.task.aborted = True
        self.buf = None
        self.conn._release(self)


class ConnectionMachine:
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

    def pause_writing(self) -> None:
        """The peer does not take what we send: READ data sent stays charged until it does."""
        self.writing_paused = True

    def resume_writing(self) -> None:
        """The peer took what was sent: its READ data budget comes back."""
        self.writing_paused = False
        self.service.budget.give(self.host, self.out_charged)
        self.out_charged = 0

    def get_buffer(self):
        """Where the next received bytes go (at least MIN_READ_ROOM of it)."""
        if len(self.rbuf) - self.rend < MIN_READ_ROOM:
            n = self.rend - self.rstart
            self.rview[:n] = self.rview[self.rstart:self.rend]
            self.rstart, self.rend = 0, n
        return self.rview[self.rend:]

    def buffer_updated(self, nbytes: int, now: float) -> None:
        """``nbytes`` were received into ``get_buffer()`` at time ``now``: act on every whole
        PDU in them and write the answers at once."""
        self.rend += nbytes
        self.last_rx = now
        self.corked = True
        try:
            self._process_input()
        except ProtocolViolation as e:
            log.warning("%s: %s", self.peer[0], e)
            if self.session is not None:
                self._send_reject(e.reason, e.header)
            self._close_after_flush()
        except Exception:
            log.exception("%s: internal error, dropping the connection", self.peer[0])
            self.terminate("internal error")
        finally:
            self.corked = False
            self._flush()

    def receive_data(self, data: bytes, now: float) -> None:
        """``buffer_updated`` for bytes that were received elsewhere (in pieces that fit)."""
        view = memoryview(data)
        while view and not self.closing:
            room = self.get_buffer()
            n = min(len(room), len(view))
            room[:n] = view[:n]
            view = view[n:]
            self.buffer_updated(n, now)

    def timer_expired(self, now: float) -> None:
        """The deadline last given to ``ConnectionIo.set_timer`` has come."""
        if self.closing:
            return
        if self.session is None:
            self.terminate(self.login_deadline)
        else:
            self._nop_check(now)

    # ---- framing -----------------------------------------------------------------------
    def _process_input(self) -> None:
        while not self.closing:
            view = self.rview                      # replaced once, when login completes
            start = self.rstart
            avail = self.rend - start
            if avail < BHS_LEN:
                if avail == 0:
                    self.rstart = self.rend = 0
                return
            p = parse_bhs(view, start)
            if p.dlen > self.rx_limit:
                raise ProtocolViolation(RejectReason.PROTOCOL_ERROR,
                                        f"DataSegmentLength {p.dlen} > {self.rx_limit}",
                                        bytes(view[start:start + BHS_LEN]))
            hd = DIGEST_LEN if self.header_digest else 0
            dd = DIGEST_LEN if self.data_digest and p.dlen else 0
            data_off = start + BHS_LEN + p.ahs_len + hd
            total = data_off - start + p.dlen + pad_len(p.dlen) + dd
            if avail < total:
                return
            header = view[start:start + BHS_LEN]
            if hd and read_digest(view, data_off - hd) != digest_of(view[start:data_off - hd]):
                raise ProtocolViolation(RejectReason.PROTOCOL_ERROR, "header digest error")
            data = view[data_off:data_off + p.dlen]
            if dd:
                padded = view[data_off:data_off + p.dlen + pad_len(p.dlen)]
                if read_digest(view, data_off + len(padded)) != digest_of(padded):
                    self.rstart = start + total
                    raise ProtocolViolation(RejectReason.DATA_DIGEST_ERROR, "data digest error",
                                            bytes(header))
            if p.ahs_len:
                p.ahs = bytes(view[start + BHS_LEN:start + BHS_LEN + p.ahs_len])
            self.rstart = start + total
            if self.session is None:
                self._login_pdu(p, data)
            else:
                self._ffp_pdu(p, data, header)

    def _ffp_pdu(self, p: Pdu, data, header) -> None:
        op = p.opcode
        if op == _DATA_OUT:
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
                conn, q, qdata, qheader, charged = sess.pending.pop(sess.exp_cmdsn)
                sess.exp_cmdsn = (sess.exp_cmdsn + 1) & 0xFFFFFFFF
                conn.dispatch_parked(q, qdata, qheader, charged)
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
        if self.service.budget.take(self.host, len(data)):
            sess.pending[p.cmdsn] = (self, p, bytes(data), bytes(header), len(data))
        elif p.opcode == Opcode.SCSI_CMD:
            sess.pending[p.cmdsn] = (self, p, None, bytes(header), 0)
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

    def _answer_task_set_full(self, itt: int) -> None:
        """End a command that gets no task: the initiator may retry it (SAM-5 5.3.1)."""
        exp, mx = self._window()
        self._send(build_bhs(_SCSI_RSP, FLAG_FINAL, ISCSI_RSP_COMPLETED,
                             SAM_STAT_TASK_SET_FULL, 0, 0, itt, 0, self._next_statsn(), exp, mx))

    # ---- output ------------------------------------------------------------------------
    def _send(self, header: bytes, data=b"") -> None:
        if self.closing:
            return
        self.out.extend(frame(header, data, self.header_digest, self.data_digest))
        if not self.corked:
            self._flush()

    def _flush(self) -> None:
        if self.out:
            self.io.write(self.out)
            self.out.clear()
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

    # ---- login -------------------------------------------------------------------------
    def _login_pdu(self, p: Pdu, data) -> None:
        if p.opcode != Opcode.LOGIN_REQ:
            log.warning("%s: opcode %#x before login", self.peer[0], p.opcode)
            self._close_after_flush()
            return
        lg = self.login
        if lg.pdus == 0:
            self.statsn = p.exp_statsn          # the initiator's guess is as good as any start
            self._set_login_deadline(self.started + self.service.config.login_timeout,
                                     "login not done in iscsi.login_timeout")
        reply = lg.step(p, data)
        tsih = 0
        if reply.status == LoginStatus.SUCCESS and reply.done:
            self.session = self.service.registry.bind(self, lg, p.cmdsn)
            tsih = self.session.tsih
            exp, mx = self.session.window()
        else:
            exp = p.cmdsn
            mx = (exp + 1) & 0xFFFFFFFF if reply.status == LoginStatus.SUCCESS else exp
            if lg.tsih and reply.status == LoginStatus.SUCCESS:
                sess = self.service.registry.by_tsih.get(lg.tsih)
                if sess is not None:
                    exp, mx = sess.window()
        text = reply.data
        status = reply.status
        hdr = build_bhs(Opcode.LOGIN_RSP, reply.flags, dlen=len(text), lun=(lg.isid << 16) | tsih,
                        itt=p.itt, statsn=self._next_statsn(), exp_cmdsn=exp, max_cmdsn=mx,
                        datasn=status << 16)
        self._send(hdr, text)
        if status != LoginStatus.SUCCESS:
            log.info("%s: login failed %#06x (%s)", self.peer[0], status, lg.initiator)
            self.session = None
            self._close_after_flush()
        elif reply.done:
            self._enter_full_feature()

    def _enter_full_feature(self) -> None:
        neg = self.session.params
        self.cid = self.login.cid
        self._flush()                              # login response goes out without digests
        self.header_digest = neg.value("HeaderDigest") == "CRC32C"
        self.data_digest = neg.value("DataDigest") == "CRC32C"
        self.peer_mrdsl = neg.number("MaxRecvDataSegmentLength")
        self.rx_limit = neg.target_mrdsl
        pending = self.rview[self.rstart:self.rend]
        self.rbuf = bytearray(2 * (self.service.max_pdu + MIN_READ_ROOM))
        self.rbuf[:len(pending)] = pending
        self.rview = memoryview(self.rbuf)
        self.rstart, self.rend = 0, len(pending)
        self.max_burst = neg.number("MaxBurstLength")
        self.first_burst = neg.number("FirstBurstLength")
        self.max_r2t = neg.number("MaxOutstandingR2T")
        self.immediate_data = neg.flag("ImmediateData")
        self.initial_r2t = neg.flag("InitialR2T")
        self.login = None
        if not self.session.discovery:      # discovery sessions stay in the login slots: they
            self.service.logged_in(self)    # are short and need no auth, so a flood of them
                                            # must not take the room of normal sessions
        interval = self.service.config.nop_interval
        self.io.set_timer(self.last_rx + interval if interval > 0 else None)
        log.info("%s: %s session %s tsih %d", self.peer[0], "discovery" if self.session.discovery
                 else "normal", self.session.initiator, self.session.tsih)

    def _set_login_deadline(self, when: float, why: str) -> None:
        self.login_deadline = why
        self.io.set_timer(when)

    # ---- NOP ---------------------------------------------------------------------------
    def _nop_out(self, p: Pdu, data, header) -> None:
        if p.itt == RSVD_TAG:
            if p.ttt != RSVD_TAG and p.ttt == self.nop_ttt:
                self.nop_ttt = None                 # answer to our ping
            return
        if p.ttt != RSVD_TAG:
            raise ProtocolViolation(RejectReason.PROTOCOL_ERROR, "NOP-Out with ITT and TTT", bytes(header))
        exp, mx = self._window()
        echo = bytes(data[:self.peer_mrdsl])
        hdr = build_bhs(Opcode.NOP_IN, FLAG_FINAL, 0, 0, len(echo), p.lun, p.itt, RSVD_TAG,
                        self._next_statsn(), exp, mx)
        self._send(hdr, echo)

    def _nop_check(self, now: float) -> None:
        """Ping once the connection has been idle ``nop_interval``; drop it ``nop_timeout`` after
        an unanswered ping. The timer is set for the exact deadline, and a check up to NOP_SLACK
        early counts as due: loop timers may fire a millisecond early, and a strict compare then
        put the ping or the drop off by a whole interval."""
        cfg = self.service.config
        if self.nop_ttt is not None:
            left = self.nop_sent + cfg.nop_timeout - now
            if left <= NOP_SLACK:
                self.terminate("initiator did not answer NOP-In")
                return
        elif cfg.nop_interval <= 0:                 # pings switched off since this connection began
            return
        else:
            left = self.last_rx + cfg.nop_interval - now
            if left <= NOP_SLACK:
                self.nop_ttt = next(self._ttt) & 0x7FFFFFFF
                self.nop_sent = now
                exp, mx = self._window()
                self._send(build_bhs(Opcode.NOP_IN, FLAG_FINAL, 0, 0, 0, 0, RSVD_TAG, self.nop_ttt,
                                     self.statsn, exp, mx))
                left = cfg.nop_timeout
        self.io.set_timer(now + max(left, NOP_SLACK))

    # ---- SCSI commands -----------------------------------------------------------------
    def _scsi_cmd(self, p: Pdu, data, header) -> None:
        sess = self.session
        if sess.discovery:
            raise ProtocolViolation(RejectReason.PROTOCOL_ERROR, "SCSI command in discovery session",
                                    bytes(header))
        flags = p.flags
        write = bool(flags & CMD_FLAG_WRITE)
        edtl = p.edtl
        dlen = len(data)
        self._check_unsolicited(p, dlen, header)
        if p.itt in sess.tasks or p.itt == RSVD_TAG:
            self._send_reject(RejectReason.TASK_IN_PROGRESS if p.itt != RSVD_TAG
                              else RejectReason.INVALID_PDU_FIELD, bytes(header))
            return
        if len(sess.tasks) >= MAX_SESSION_TASKS:
            self._answer_task_set_full(p.itt)
            return
        cdb = p.cdb
        if p.ahs:
            cdb = self._extended_cdb(p.cdb, p.ahs, header)
        task = ScsiTask(decode_lun(p.lun), cdb, sess.nexus, p.itt, flags & CMD_ATTR_MASK, edtl,
                        bool(flags & CMD_FLAG_READ), write)
        st = TaskState(self, task, p.lun, p.cmdsn)
        sess.tasks[p.itt] = st
        scsi = sess.target.scsi
        if not scsi.prepare(task):
            self.task_done(st)
            return
        want = task.data_out_len if write else 0
        if want > MAX_WRITE_BUFFER:
            raise ProtocolViolation(RejectReason.PROTOCOL_ERROR, f"write of {want} bytes too large",
                                    bytes(header))
        if want == 0:
            st.read_len = task.cdb_xfer_len if task.read else 0
            if st.read_len and (self._tasks_wait_for_budget() or not self._take(st.read_len)):
                self._wait_for_budget(st)          # in order behind what waits already
                return
            st.charged = st.read_len
            self._execute(st)
            return
        st.want = want
        st.received = dlen
        st.next_r2t = dlen
        if not p.final:
            st.unsolicited = [dlen, min(edtl, self.first_burst), 0]
        # Data the initiator may send unasked needs room now: without budget for it the
        # command ends TASK SET FULL (the initiator retries) rather than the server holding
        # more. The rest is solicited (R2T) only once the budget grants the whole buffer.
        early = min(want, st.unsolicited[1] if st.unsolicited else dlen)
        if not self._tasks_wait_for_budget() and self._take(want):
            st.buf, st.charged = bytearray(want), want
        elif self._take(early):
            st.buf, st.charged = bytearray(early), early
            self._wait_for_budget(st)
        else:
            log.info("%s: data budget spent, WRITE ITT %#x answered TASK SET FULL",
                     self.host, p.itt)
            task.status = SAM_STAT_TASK_SET_FULL
            self.task_done(st)
            return
        n = min(dlen, want)
        st.buf[:n] = data[:n]
        self._write_progress(st)

    def _check_unsolicited(self, p, dlen: int, header) -> None:
        """Immediate and unsolicited data within what was negotiated (RFC 7143 13.10-13.14)."""
        write = bool(p.flags & CMD_FLAG_WRITE)
        edtl = p.edtl
        if dlen and (not write or not self.immediate_data or dlen > edtl or dlen > self.first_burst):
            raise ProtocolViolation(RejectReason.PROTOCOL_ERROR, "bad immediate data", bytes(header))
        if write and not p.final and (self.initial_r2t or dlen >= min(edtl, self.first_burst)):
            raise ProtocolViolation(RejectReason.PROTOCOL_ERROR, "unsolicited data not allowed",
                                    bytes(header))

    def _take(self, n: int) -> bool:
        return self.service.budget.take(self.host, n)

    def _tasks_wait_for_budget(self) -> bool:
        """Whether live tasks wait for budget (a new one queues behind them); finished or
        aborted ones at the head are dropped here, as nothing gives budget back for them."""
        q = self.budget_waiting
        while q and (q[0].done or q[0].aborted):
            q.popleft()
        return bool(q)

    def _wait_for_budget(self, st: TaskState) -> None:
        self.budget_waiting.append(st)
        self.service.budget.wait(self)

    def _grant(self, st: TaskState) -> bool:
        """Charge what ``st`` still lacks: a WRITE's whole Data-Out buffer, a READ's data."""
        need = (st.want or st.read_len) - st.charged
        if not self._take(need):
            return False
        st.charged += need
        if st.want:
            st.buf[len(st.buf):] = bytes(st.want - len(st.buf))
        return True

    def budget_freed(self) -> bool:
        """Start waiting tasks, oldest first, while the budget grants them; True once none
        is left waiting (``DataBudget`` stops calling back)."""
        if self.closing:
            return True
        self.corked = True
        try:
            while self.budget_waiting:
                st = self.budget_waiting[0]
                if not (st.done or st.aborted):
                    if not self._grant(st):
                        return False
                    if st.want:
                        self._write_progress(st)
                    else:
                        self._execute(st)
                self.budget_waiting.popleft()
            return True
        finally:
            self.corked = False
            self._flush()

    def _release(self, st: TaskState) -> None:
        """Return ``st``'s budget."""
        if st.charged:
            self.service.budget.give(self.host, st.charged)
            st.charged = 0

    def _write_progress(self, st: TaskState) -> None:
        if st.received >= st.want:
            self._execute(st)
        elif st.charged >= st.want and not st.unsolicited:
            self._send_r2ts(st)

    def _extended_cdb(self, cdb: bytes, ahs: bytes, header) -> bytes:
        """Append an Extended CDB AHS (RFC 7143 11.3.3, type 1) to the 16 BHS bytes."""
        off = 0
        while off + 3 <= len(ahs):
            length = int.from_bytes(ahs[off:off + 2], "big")
            ahs_type = ahs[off + 2]
            if ahs_type == 1:
                return cdb + ahs[off + 4:off + 3 + length]
            off += 3 + length + (-(3 + length) & 3)
        return cdb

    def _data_out(self, p: Pdu, data, header) -> None:
        sess = self.session
        st = sess.tasks.get(p.itt)
        if st is None or st.buf is None or st.conn is not self or st.done:
            return                                   # late data of a finished or aborted task
        off = p.buffer_offset
        n = len(data)
        ttt = p.ttt
        seq = st.unsolicited if ttt == RSVD_TAG else st.r2ts.get(ttt)
        # RFC 7143 11.7.5/11.7.6: DataSN counts from 0 in each sequence; offsets in order.
        # At ERL 0 a sequence error ends the task, not the connection (RFC 7143 7.1.4.1).
        if seq is None or off != seq[0] or off + n > seq[1] or p.datasn != seq[2]:
            log.warning("%s: Data-Out out of sequence for ITT %#x", self.peer[0], p.itt)
            st.buf = None
            fail(st.task, ScsiError(SenseReason.DATA_OFFSET_ERROR))
            self.task_done(st)
            return
        seq[0] += n
        seq[2] += 1
        end = min(off + n, len(st.buf))
        if end > off:
            st.buf[off:end] = data[:end - off]
        st.received += n
        if p.final or seq[0] == seq[1]:
            if ttt == RSVD_TAG:
                st.unsolicited = None
                st.next_r2t = max(st.next_r2t, st.received)
            else:
                del st.r2ts[ttt]
        self._write_progress(st)

    def _send_r2ts(self, st: TaskState) -> None:
        exp, mx = self._window()
        while len(st.r2ts) < self.max_r2t and st.next_r2t < st.want:
            length = min(self.max_burst, st.want - st.next_r2t)
            ttt = next(self._ttt) & 0x7FFFFFFF
            st.r2ts[ttt] = [st.next_r2t, st.next_r2t + length, 0]
            self._send(build_bhs(_R2T, FLAG_FINAL, 0, 0, 0, st.lun_field, st.task.itt, ttt,
                                 self.statsn, exp, mx, st.r2tsn, st.next_r2t, length))
            st.r2tsn += 1
            st.next_r2t += length

    def _execute(self, st: TaskState) -> None:
        task = st.task
        if st.buf is not None:
            task.data_out = memoryview(st.buf)
        st.buf = None
        try:
            pending = self.session.target.scsi.execute(task)
        except Exception:
            log.exception("SCSI command %s failed", bytes(task.cdb[:1]).hex())
            self.task_done(st, failed=True)
            return
        if pending is None:
            self.task_done(st)
        else:
            self.io.run(st, pending)

    def task_done(self, st: TaskState, failed: bool = False) -> None:
        """``st``'s SCSI command ended (``failed``: its work raised): answer it."""
        st.done = True
        if st.read_len and not (st.aborted or self.closing):
            self.out_charged += st.charged          # held until the socket takes the data
            st.charged = 0
        self._release(st)
        task = st.task
        sess = self.session
        if sess is not None and sess.tasks.get(task.itt) is st:
            del sess.tasks[task.itt]
        if st.aborted or self.closing:
            return
        if failed:
            exp, mx = self._window()
            self._send(build_bhs(_SCSI_RSP, FLAG_FINAL, ISCSI_RSP_TARGET_FAILURE, 0, 0, 0,
                                 task.itt, 0, self._next_statsn(), exp, mx))
            return
        edtl = task.edtl
        data = task.data_in
        if data is not None:
            xfer = len(data)
        else:
            xfer = task.cdb_xfer_len if task.write else 0
        flags = 0
        residual = 0
        if xfer > edtl:
            flags, residual = RSP_FLAG_OVERFLOW, xfer - edtl
        elif xfer < edtl:
            flags, residual = RSP_FLAG_UNDERFLOW, edtl - xfer
        datasn = st.r2tsn
        if data is not None and task.read and edtl and len(data):
            collapsed, datasn = self._send_data_in(st, data, min(len(data), edtl), flags, residual)
            if collapsed:
                return
        exp, mx = self._window()
        sense = task.sense
        body = _SENSE_LEN.pack(len(sense)) + sense if sense else b""
        self._send(build_bhs(_SCSI_RSP, FLAG_FINAL | flags, ISCSI_RSP_COMPLETED, task.status,
                             len(body), 0, task.itt, 0, self._next_statsn(), exp, mx,
                             datasn, 0, residual), body)

    def _send_data_in(self, st, data, n, flags, residual) -> tuple[bool, int]:
        """Send ``n`` bytes as Data-In PDUs; collapse GOOD status into the last one (RFC 7143
        11.7.4). Returns (status sent, number of Data-In PDUs)."""
        task = st.task
        collapse = task.status == SAM_STAT_GOOD and not task.sense
        view = data if isinstance(data, memoryview) else memoryview(data)
        seg = self.peer_mrdsl
        burst = self.max_burst or seg
        off = 0
        datasn = 0
        exp, mx = self._window()
        while off < n:
            length = min(seg, n - off, burst - off % burst)
            end = off + length
            last = end == n
            pflags = FLAG_FINAL if (last or end % burst == 0) else 0
            statsn = 0
            status = 0
            res = 0
            if last and collapse:
                pflags |= DATA_IN_FLAG_STATUS | flags
                statsn = self._next_statsn()
                status = task.status
                res = residual
            self._send(build_bhs(_DATA_IN, pflags, 0, status, length, st.lun_field, task.itt,
                                 RSVD_TAG, statsn, exp, mx, datasn, off, res), view[off:end])
            off = end
            datasn += 1
        return collapse, datasn

    # ---- task management ---------------------------------------------------------------
    def _tmf(self, p: Pdu, data, header) -> None:
        sess = self.session
        func = p.flags & 0x7F
        lun = decode_lun(p.lun)
        scsi = sess.target.scsi if sess.target else None
        response = TmfResponse.COMPLETE
        if scsi is None:
            response = TmfResponse.REJECTED
        elif func == TmfFunction.ABORT_TASK:
            st = sess.tasks.pop(p.ref_task_tag, None)
            if st is not None:
                st.abort()
            elif not (sess.in_window(p.ref_cmdsn) and sn_lt(p.ref_cmdsn, p.cmdsn)):
                # RFC 7143 11.5.1: an unseen task counts as completed only when its RefCmdSN
                # lies in the window and before the TMF itself.
                response = TmfResponse.NO_TASK
        elif func in (TmfFunction.ABORT_TASK_SET, TmfFunction.CLEAR_TASK_SET,
                      TmfFunction.LUN_RESET):
            if lun not in scsi.luns:
                response = TmfResponse.NO_LUN
            else:
                scope = [sess] if func == TmfFunction.ABORT_TASK_SET else \
                    self.service.registry.for_target(sess.target.name)
                self._abort_tasks(scope, lun)
                scsi.task_management(_TMF_NAMES[func], sess.nexus, lun)
        elif func in (TmfFunction.TARGET_WARM_RESET, TmfFunction.TARGET_COLD_RESET):
            self._abort_tasks(self.service.registry.for_target(sess.target.name), None)
            scsi.task_management(_TMF_NAMES[func], sess.nexus, None)
        elif func == TmfFunction.TASK_REASSIGN:
            response = TmfResponse.REASSIGN_UNSUPPORTED
        else:
            response = TmfResponse.NOT_SUPPORTED
        exp, mx = self._window()
        self._send(build_bhs(Opcode.TMF_RSP, FLAG_FINAL, response, itt=p.itt,
                             statsn=self._next_statsn(), exp_cmdsn=exp, max_cmdsn=mx))
        if scsi is not None and func == TmfFunction.TARGET_COLD_RESET:
            # SAM-5 7.10: a cold reset drops every connection
            self._flush()
            for s in self.service.registry.for_target(sess.target.name):
                for c in list(s.connections.values()):
                    c._close_after_flush()

    @staticmethod
    def _abort_tasks(sessions, lun) -> None:
        for s in sessions:
            for itt, st in list(s.tasks.items()):
                if lun is None or st.task.lun == lun:
                    st.abort()
                    del s.tasks[itt]

    # ---- text (SendTargets, renegotiation) ---------------------------------------------
    def _text(self, p: Pdu, data, header) -> None:
        exp, mx = self._window()
        if p.ttt != RSVD_TAG:
            if p.ttt != self.text_ttt:
                raise ProtocolViolation(RejectReason.PROTOCOL_ERROR, "unknown Text TTT", bytes(header))
            body = self.text_rest
        else:
            if len(self.text_pending) + len(data) > params.MAX_TEXT_BYTES:
                raise ProtocolViolation(RejectReason.PROTOCOL_ERROR, "text request too long", bytes(header))
            self.text_pending += data
            if p.flags & TEXT_FLAG_CONTINUE:
                self._send(build_bhs(Opcode.TEXT_RSP, 0, 0, 0, 0, p.lun, p.itt, RSVD_TAG,
                                     self._next_statsn(), exp, mx))
                return
            try:
                pairs = params.parse_text(bytes(self.text_pending))
            except params.NegotiationError:
                self.text_pending.clear()
                self._send_reject(RejectReason.PROTOCOL_ERROR, bytes(header))
                return
            self.text_pending.clear()
            body = params.encode_text(self._text_answer(pairs))
        chunk, self.text_rest = body[:self.peer_mrdsl], body[self.peer_mrdsl:]
        if self.text_rest:
            self.text_ttt = next(self._ttt) & 0x7FFFFFFF
            flags, ttt = TEXT_FLAG_CONTINUE, self.text_ttt
        else:
            self.text_ttt = RSVD_TAG
            flags, ttt = FLAG_FINAL, RSVD_TAG
        self._send(build_bhs(Opcode.TEXT_RSP, flags, 0, 0, len(chunk), p.lun, p.itt, ttt,
                             self._next_statsn(), exp, mx), chunk)

    def _text_answer(self, pairs) -> list:
        out = []
        neg = self.session.params
        for key, value in pairs:
            if key == "SendTargets":
                out.extend(self.service.send_targets(value, self.session))
                continue
            if key in params.DECLARATIONS:
                out.append((key, params.REJECT))
                continue
            try:
                answer = neg.respond(key, value, "F")
            except params.NegotiationError:
                answer = params.REJECT
            if key == "MaxRecvDataSegmentLength" and answer is None:
                self.peer_mrdsl = neg.number(key)
            if answer is not None:
                out.append((key, answer))
        return out

    # ---- logout ------------------------------------------------------------------------
    def _logout(self, p: Pdu, data, header) -> None:
        sess = self.session
        reason = p.flags & 0x7F
        response = LogoutResponse.SUCCESS
        close_self = False
        if reason == LogoutReason.CLOSE_SESSION:
            close_self = True
        elif reason == LogoutReason.CLOSE_CONNECTION:
            if p.cid == self.cid:
                close_self = True
            elif p.cid in sess.connections:
                sess.connections[p.cid].terminate("logged out by another connection")
            else:
                response = LogoutResponse.CID_NOT_FOUND
        elif reason == LogoutReason.REMOVE_FOR_RECOVERY:
            response = LogoutResponse.RECOVERY_UNSUPPORTED
        else:
            raise ProtocolViolation(RejectReason.INVALID_PDU_FIELD, "bad logout reason", bytes(header))
        exp, mx = self._window()
        t2w = sess.params.number("DefaultTime2Wait")
        t2r = sess.params.number("DefaultTime2Retain")
        self._send(build_bhs(Opcode.LOGOUT_RSP, FLAG_FINAL, response, itt=p.itt,
                             statsn=self._next_statsn(), exp_cmdsn=exp, max_cmdsn=mx,
                             buffer_offset=(t2w << 16) | t2r))
        if close_self:
            if reason == LogoutReason.CLOSE_SESSION:
                for c in list(sess.connections.values()):
                    if c is not self:
                        c.terminate("session logged out")
            self._close_after_flush()
