"""One iSCSI connection: PDU framing, the login phase, and the full feature phase.

A thin asyncio shell (``asyncio.BufferedProtocol``): the event loop receives straight into one
preallocated buffer; complete PDUs are parsed in place with ``pdu.parse_bhs`` and dispatched
through a table. Responses produced while one receive buffer is processed are corked and sent
with one ``writelines`` call. SCSI work is handed to ``ScsiTarget.prepare/execute``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
import struct
import time

from ..scsi.sense import ScsiError, SenseReason, fail
from ..scsi.task import SAM_STAT_GOOD, SAM_STAT_TASK_SET_FULL, ScsiTask
from . import params, pdu as P
from .login import LOGIN_MRDSL, LOGIN_SUCCESS, LoginNegotiator
from .session import MAX_SESSION_TASKS, sn_lt

log = logging.getLogger("vmblock.iscsi")

MAX_AHS = 1020
MAX_WRITE_BUFFER = 64 << 20         # largest Data-Out we gather for one command
MIN_READ_ROOM = 65536
NOP_SLACK = 0.01                    # seconds a NOP timer may fire early and still count

# Task management functions (RFC 7143 11.5.1) and responses (11.6.1)
TMF_ABORT_TASK = 1
TMF_ABORT_TASK_SET = 2
TMF_CLEAR_ACA = 3
TMF_CLEAR_TASK_SET = 4
TMF_LUN_RESET = 5
TMF_TARGET_WARM_RESET = 6
TMF_TARGET_COLD_RESET = 7
TMF_TASK_REASSIGN = 8
TMF_RSP_COMPLETE = 0
TMF_RSP_NO_TASK = 1
TMF_RSP_NO_LUN = 2
TMF_RSP_REASSIGN_UNSUPPORTED = 4
TMF_RSP_NOT_SUPPORTED = 5
TMF_RSP_REJECTED = 255
# Logout reasons and responses (11.14.1, 11.15.1)
LOGOUT_CLOSE_SESSION = 0
LOGOUT_CLOSE_CONNECTION = 1
LOGOUT_REMOVE_FOR_RECOVERY = 2
LOGOUT_RSP_SUCCESS = 0
LOGOUT_RSP_CID_NOT_FOUND = 1
LOGOUT_RSP_RECOVERY_UNSUPPORTED = 2

_SENSE_LEN = struct.Struct(">H")


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
        self.aborted = True
        self.task.aborted = True
        self.buf = None
        self.conn._release(self)


class Connection(asyncio.BufferedProtocol):
    _ttt = itertools.count(1)

    def __init__(self, service, portal: tuple[str, int]):
        self.service = service
        self.portal = portal
        self.transport = None
        self.peer = ("?", 0)
        self.host = "?"                 # source address: the key of per-address limits
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
        self.last_rx = time.monotonic()
        self.nop_ttt = None
        self.nop_sent = 0.0
        self.timer = None
        self.text_ttt = P.RSVD_TAG
        self.text_rest = b""
        self.text_pending = bytearray()
        self.budget_waiting: deque[TaskState] = deque()   # tasks whose data has no budget yet
        self.out_charged = 0            # budget of READ data sent, until the socket takes it
        self.writing_paused = False
        self.started = 0.0
        self.handlers = {
            P.OP_NOP_OUT: self._nop_out,
            P.OP_SCSI_CMD: self._scsi_cmd,
            P.OP_TMF_REQ: self._tmf,
            P.OP_TEXT_REQ: self._text,
            P.OP_LOGOUT_REQ: self._logout,
        }

    # ---- asyncio protocol -------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        self.peer = transport.get_extra_info("peername") or ("?", 0)
        self.host = self.peer[0]
        if not self.service.admit(self):
            log.warning("%s: refused, connection limits reached (%d open, %d from this address)",
                        self.host, len(self.service.connections), self.service.per_host[self.host])
            self.closing = True
            transport.abort()
            return
        self.portal = transport.get_extra_info("sockname") or self.portal
        loop = asyncio.get_running_loop()
        self.started = loop.time()
        self.timer = loop.call_later(self.service.config.first_pdu_timeout, self._login_timeout,
                                     "no Login Request in iscsi.first_pdu_timeout")

    def connection_lost(self, exc) -> None:
        self.closing = True
        if self.timer is not None:
            self.timer.cancel()
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
        """The socket is not taking what we send: read no more requests until it does, so an
        initiator that does not read cannot make responses pile up here."""
        self.writing_paused = True
        if not self.closing:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        self.service.budget.give(self.host, self.out_charged)
        self.out_charged = 0
        if not self.closing:
            self.transport.resume_reading()

    def get_buffer(self, sizehint: int):
        if len(self.rbuf) - self.rend < MIN_READ_ROOM:
            n = self.rend - self.rstart
            self.rview[:n] = self.rview[self.rstart:self.rend]
            self.rstart, self.rend = 0, n
        return self.rview[self.rend:]

    def buffer_updated(self, nbytes: int) -> None:
        self.rend += nbytes
        self.last_rx = time.monotonic()
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

    def eof_received(self):
        return False

    # ---- framing -----------------------------------------------------------------------
    def _process_input(self) -> None:
        while not self.closing:
            view = self.rview                      # replaced once, when login completes
            start = self.rstart
            avail = self.rend - start
            if avail < P.BHS_LEN:
                if avail == 0:
                    self.rstart = self.rend = 0
                return
            p = P.parse_bhs(view, start)
            if p.dlen > self.rx_limit:
                raise ProtocolViolation(P.REJECT_PROTOCOL_ERROR,
                                        f"DataSegmentLength {p.dlen} > {self.rx_limit}",
                                        bytes(view[start:start + P.BHS_LEN]))
            hd = P.DIGEST_LEN if self.header_digest else 0
            dd = P.DIGEST_LEN if self.data_digest and p.dlen else 0
            data_off = start + P.BHS_LEN + p.ahs_len + hd
            total = data_off - start + p.dlen + P.pad_len(p.dlen) + dd
            if avail < total:
                return
            header = view[start:start + P.BHS_LEN]
            if hd and P.read_digest(view, data_off - hd) != P.digest_of(view[start:data_off - hd]):
                raise ProtocolViolation(P.REJECT_PROTOCOL_ERROR, "header digest error")
            data = view[data_off:data_off + p.dlen]
            if dd:
                padded = view[data_off:data_off + p.dlen + P.pad_len(p.dlen)]
                if P.read_digest(view, data_off + len(padded)) != P.digest_of(padded):
                    self.rstart = start + total
                    raise ProtocolViolation(P.REJECT_DATA_DIGEST_ERROR, "data digest error",
                                            bytes(header))
            if p.ahs_len:
                p.ahs = bytes(view[start + P.BHS_LEN:start + P.BHS_LEN + p.ahs_len])
            self.rstart = start + total
            if self.session is None:
                self._login_pdu(p, data)
            else:
                self._ffp_pdu(p, data, header)

    def _ffp_pdu(self, p, data, header) -> None:
        op = p.opcode
        if op == P.OP_DATA_OUT:
            self._data_out(p, data, header)
            return
        handler = self.handlers.get(op)
        if handler is None:
            if op in (P.OP_SNACK, P.OP_LOGIN_REQ):
                raise ProtocolViolation(P.REJECT_PROTOCOL_ERROR, f"opcode {op:#x} in full feature phase",
                                        bytes(header))
            self._send_reject(P.REJECT_CMD_NOT_SUPPORTED, bytes(header))
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

    def _park(self, p, data, header) -> None:
        """Keep a command that arrived before a CmdSN gap was filled. Its immediate data is
        checked now and copied only within the data budget; a SCSI command beyond the budget
        is kept without its data and answered TASK SET FULL when its turn comes."""
        sess = self.session
        if p.opcode == P.OP_SCSI_CMD:
            self._check_unsolicited(p, len(data), header)
        if self.service.budget.take(self.host, len(data)):
            sess.pending[p.cmdsn] = (self, p, bytes(data), bytes(header), len(data))
        elif p.opcode == P.OP_SCSI_CMD:
            sess.pending[p.cmdsn] = (self, p, None, bytes(header), 0)
        else:
            raise ProtocolViolation(P.REJECT_PROTOCOL_ERROR, "out-of-order request beyond the "
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
        self._send(P.build_bhs(P.OP_SCSI_RSP, P.FLAG_FINAL, P.ISCSI_RSP_COMPLETED,
                               SAM_STAT_TASK_SET_FULL, 0, 0, itt, 0, self._next_statsn(), exp, mx))

    # ---- output ------------------------------------------------------------------------
    def _send(self, header: bytes, data=b"") -> None:
        if self.closing:
            return
        self.out.extend(P.frame(header, data, self.header_digest, self.data_digest))
        if not self.corked:
            self._flush()

    def _flush(self) -> None:
        if self.out and self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(self.out)
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
        hdr = P.build_bhs(P.OP_REJECT, P.FLAG_FINAL, reason, 0, len(header), 0, P.RSVD_TAG, 0,
                          self._next_statsn(), exp, mx)
        self._send(hdr, header)

    def _close_after_flush(self) -> None:
        self._flush()
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def terminate(self, why: str) -> None:
        """Drop this connection at once (reinstatement, reset, shutdown)."""
        log.info("%s: closing connection: %s", self.peer[0], why)
        self.closing = True
        self.out.clear()
        if self.transport is not None:
            self.transport.abort()

    def info(self) -> dict:
        return {"cid": self.cid, "peer": f"{self.peer[0]}:{self.peer[1]}",
                "portal": f"{self.portal[0]}:{self.portal[1]}",
                "header_digest": self.header_digest, "data_digest": self.data_digest}

    # ---- login -------------------------------------------------------------------------
    def _login_pdu(self, p, data) -> None:
        if p.opcode != P.OP_LOGIN_REQ:
            log.warning("%s: opcode %#x before login", self.peer[0], p.opcode)
            self._close_after_flush()
            return
        lg = self.login
        if lg.pdus == 0:
            self.statsn = p.exp_statsn          # the initiator's guess is as good as any start
            self.timer.cancel()
            loop = asyncio.get_running_loop()
            self.timer = loop.call_at(self.started + self.service.config.login_timeout,
                                      self._login_timeout, "login not done in iscsi.login_timeout")
        reply = lg.step(p, data)
        tsih = 0
        if reply.status == LOGIN_SUCCESS and reply.done:
            self.session = self.service.registry.bind(self, lg, p.cmdsn)
            tsih = self.session.tsih
            exp, mx = self.session.window()
        else:
            exp = p.cmdsn
            mx = (exp + 1) & 0xFFFFFFFF if reply.status == LOGIN_SUCCESS else exp
            if lg.tsih and reply.status == LOGIN_SUCCESS:
                sess = self.service.registry.by_tsih.get(lg.tsih)
                if sess is not None:
                    exp, mx = sess.window()
        text = reply.data
        status = reply.status
        hdr = P.build_bhs(P.OP_LOGIN_RSP, reply.flags, 0, 0, len(text), (lg.isid << 16) | tsih, p.itt, 0, self._next_statsn(), exp, mx,
                          ((status >> 8) << 24) | ((status & 0xFF) << 16))
        self._send(hdr, text)
        if status != LOGIN_SUCCESS:
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
        if self.timer is not None:
            self.timer.cancel()
        interval = self.service.config.nop_interval
        if interval > 0:
            self.timer = asyncio.get_running_loop().call_later(interval, self._nop_check)
        log.info("%s: %s session %s tsih %d", self.peer[0], "discovery" if self.session.discovery
                 else "normal", self.session.initiator, self.session.tsih)

    def _login_timeout(self, why: str) -> None:
        if self.session is None and not self.closing:
            self.terminate(why)

    # ---- NOP ---------------------------------------------------------------------------
    def _nop_out(self, p, data, header) -> None:
        if p.itt == P.RSVD_TAG:
            if p.ttt != P.RSVD_TAG and p.ttt == self.nop_ttt:
                self.nop_ttt = None                 # answer to our ping
            return
        if p.ttt != P.RSVD_TAG:
            raise ProtocolViolation(P.REJECT_PROTOCOL_ERROR, "NOP-Out with ITT and TTT", bytes(header))
        exp, mx = self._window()
        echo = bytes(data[:self.peer_mrdsl])
        hdr = P.build_bhs(P.OP_NOP_IN, P.FLAG_FINAL, 0, 0, len(echo), p.lun, p.itt, P.RSVD_TAG,
                          self._next_statsn(), exp, mx)
        self._send(hdr, echo)

    def _nop_check(self) -> None:
        """Ping once the connection has been idle ``nop_interval``; drop it ``nop_timeout`` after
        an unanswered ping. The timer is set for the exact deadline, and a check up to NOP_SLACK
        early counts as due: loop timers may fire a millisecond early, and a strict compare then
        put the ping or the drop off by a whole interval."""
        if self.closing:
            return
        cfg = self.service.config
        now = time.monotonic()
        if self.nop_ttt is not None:
            left = self.nop_sent + cfg.nop_timeout - now
            if left <= NOP_SLACK:
                self.terminate("initiator did not answer NOP-In")
                return
        elif cfg.nop_interval <= 0:                 # pings switched off since this connection began
            self.timer = None
            return
        else:
            left = self.last_rx + cfg.nop_interval - now
            if left <= NOP_SLACK:
                self.nop_ttt = next(self._ttt) & 0x7FFFFFFF
                self.nop_sent = now
                exp, mx = self._window()
                self._send(P.build_bhs(P.OP_NOP_IN, P.FLAG_FINAL, 0, 0, 0, 0, P.RSVD_TAG, self.nop_ttt,
                                       self.statsn, exp, mx))
                left = cfg.nop_timeout
        self.timer = asyncio.get_running_loop().call_later(max(left, NOP_SLACK), self._nop_check)

    # ---- SCSI commands -----------------------------------------------------------------
    def _scsi_cmd(self, p, data, header) -> None:
        sess = self.session
        if sess.discovery:
            raise ProtocolViolation(P.REJECT_PROTOCOL_ERROR, "SCSI command in discovery session",
                                    bytes(header))
        flags = p.flags
        write = bool(flags & P.CMD_FLAG_WRITE)
        edtl = p.w20
        dlen = len(data)
        self._check_unsolicited(p, dlen, header)
        if p.itt in sess.tasks or p.itt == P.RSVD_TAG:
            self._send_reject(P.REJECT_TASK_IN_PROGRESS if p.itt != P.RSVD_TAG
                              else P.REJECT_INVALID_PDU_FIELD, bytes(header))
            return
        if len(sess.tasks) >= MAX_SESSION_TASKS:
            self._answer_task_set_full(p.itt)
            return
        cdb = p.cdb
        if p.ahs:
            cdb = self._extended_cdb(p.cdb, p.ahs, header)
        task = ScsiTask(P.decode_lun(p.lun), cdb, sess.nexus, p.itt, flags & P.CMD_ATTR_MASK, edtl,
                        bool(flags & P.CMD_FLAG_READ), write)
        st = TaskState(self, task, p.lun, p.cmdsn)
        sess.tasks[p.itt] = st
        scsi = sess.target.scsi
        if not scsi.prepare(task):
            self._complete(st)
            return
        want = task.data_out_len if write else 0
        if want > MAX_WRITE_BUFFER:
            raise ProtocolViolation(P.REJECT_PROTOCOL_ERROR, f"write of {want} bytes too large",
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
            self._complete(st)
            return
        n = min(dlen, want)
        st.buf[:n] = data[:n]
        self._write_progress(st)

    def _check_unsolicited(self, p, dlen: int, header) -> None:
        """Immediate and unsolicited data within what was negotiated (RFC 7143 13.10-13.14)."""
        write = bool(p.flags & P.CMD_FLAG_WRITE)
        edtl = p.w20
        if dlen and (not write or not self.immediate_data or dlen > edtl or dlen > self.first_burst):
            raise ProtocolViolation(P.REJECT_PROTOCOL_ERROR, "bad immediate data", bytes(header))
        if write and not p.final and (self.initial_r2t or dlen >= min(edtl, self.first_burst)):
            raise ProtocolViolation(P.REJECT_PROTOCOL_ERROR, "unsolicited data not allowed", bytes(header))

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

    def _data_out(self, p, data, header) -> None:
        sess = self.session
        st = sess.tasks.get(p.itt)
        if st is None or st.buf is None or st.conn is not self or st.done:
            return                                   # late data of a finished or aborted task
        off = p.w40
        n = len(data)
        ttt = p.ttt
        seq = st.unsolicited if ttt == P.RSVD_TAG else st.r2ts.get(ttt)
        # RFC 7143 11.7.5/11.7.6: DataSN counts from 0 in each sequence; offsets in order.
        # At ERL 0 a sequence error ends the task, not the connection (RFC 7143 7.1.4.1).
        if seq is None or off != seq[0] or off + n > seq[1] or p.w36 != seq[2]:
            log.warning("%s: Data-Out out of sequence for ITT %#x", self.peer[0], p.itt)
            st.buf = None
            fail(st.task, ScsiError(SenseReason.DATA_OFFSET_ERROR))
            self._complete(st)
            return
        seq[0] += n
        seq[2] += 1
        end = min(off + n, len(st.buf))
        if end > off:
            st.buf[off:end] = data[:end - off]
        st.received += n
        if p.final or seq[0] == seq[1]:
            if ttt == P.RSVD_TAG:
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
            self._send(P.build_bhs(P.OP_R2T, P.FLAG_FINAL, 0, 0, 0, st.lun_field, st.task.itt, ttt,
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
            self._complete(st, failed=True)
            return
        if pending is None:
            self._complete(st)
        else:
            fut = asyncio.ensure_future(pending)
            fut.add_done_callback(lambda f, st=st: self._complete_later(st, f))

    def _complete_later(self, st: TaskState, fut) -> None:
        failed = fut.cancelled() or fut.exception() is not None
        if failed and not fut.cancelled():
            log.error("SCSI command failed", exc_info=fut.exception())
        self._complete(st, failed=failed)

    def _complete(self, st: TaskState, failed: bool = False) -> None:
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
            self._send(P.build_bhs(P.OP_SCSI_RSP, P.FLAG_FINAL, P.ISCSI_RSP_TARGET_FAILURE, 0, 0, 0,
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
            flags, residual = P.RSP_FLAG_OVERFLOW, xfer - edtl
        elif xfer < edtl:
            flags, residual = P.RSP_FLAG_UNDERFLOW, edtl - xfer
        datasn = st.r2tsn
        if data is not None and task.read and edtl and len(data):
            collapsed, datasn = self._send_data_in(st, data, min(len(data), edtl), flags, residual)
            if collapsed:
                return
        exp, mx = self._window()
        sense = task.sense
        body = _SENSE_LEN.pack(len(sense)) + sense if sense else b""
        self._send(P.build_bhs(P.OP_SCSI_RSP, P.FLAG_FINAL | flags, P.ISCSI_RSP_COMPLETED, task.status,
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
            pflags = P.FLAG_FINAL if (last or end % burst == 0) else 0
            statsn = 0
            status = 0
            res = 0
            if last and collapse:
                pflags |= P.DATA_IN_FLAG_STATUS | flags
                statsn = self._next_statsn()
                status = task.status
                res = residual
            self._send(P.build_bhs(P.OP_DATA_IN, pflags, 0, status, length, st.lun_field, task.itt,
                                   P.RSVD_TAG, statsn, exp, mx, datasn, off, res), view[off:end])
            off = end
            datasn += 1
        return collapse, datasn

    # ---- task management ---------------------------------------------------------------
    def _tmf(self, p, data, header) -> None:
        sess = self.session
        func = p.flags & 0x7F
        lun = P.decode_lun(p.lun)
        scsi = sess.target.scsi if sess.target else None
        response = TMF_RSP_COMPLETE
        cold = False
        if scsi is None:
            response = TMF_RSP_REJECTED
        elif func == TMF_ABORT_TASK:
            st = sess.tasks.pop(p.ttt, None)
            if st is not None:
                st.abort()
            elif not (sess.in_window(p.w32) and sn_lt(p.w32, p.cmdsn)):
                # RFC 7143 11.5.1: an unseen task counts as completed only when its RefCmdSN
                # lies in the window and before the TMF itself.
                response = TMF_RSP_NO_TASK
        elif func in (TMF_ABORT_TASK_SET, TMF_CLEAR_TASK_SET, TMF_LUN_RESET):
            if lun not in scsi.luns:
                response = TMF_RSP_NO_LUN
            else:
                scope = [sess] if func == TMF_ABORT_TASK_SET else \
                    self.service.registry.for_target(sess.target.name)
                self._abort_tasks(scope, lun)
                name = {TMF_ABORT_TASK_SET: "ABORT_TASK_SET", TMF_CLEAR_TASK_SET: "CLEAR_TASK_SET",
                        TMF_LUN_RESET: "LUN_RESET"}[func]
                scsi.task_management(name, sess.nexus, lun)
        elif func in (TMF_TARGET_WARM_RESET, TMF_TARGET_COLD_RESET):
            self._abort_tasks(self.service.registry.for_target(sess.target.name), None)
            cold = func == TMF_TARGET_COLD_RESET
            scsi.task_management("TARGET_COLD_RESET" if cold else "TARGET_WARM_RESET", sess.nexus, None)
        elif func == TMF_TASK_REASSIGN:
            response = TMF_RSP_REASSIGN_UNSUPPORTED
        else:
            response = TMF_RSP_NOT_SUPPORTED
        exp, mx = self._window()
        self._send(P.build_bhs(P.OP_TMF_RSP, P.FLAG_FINAL, response, 0, 0, 0, p.itt, 0,
                               self._next_statsn(), exp, mx))
        if cold:                         # SAM-5 7.10: a cold reset drops every connection
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
    def _text(self, p, data, header) -> None:
        exp, mx = self._window()
        if p.ttt != P.RSVD_TAG:
            if p.ttt != self.text_ttt:
                raise ProtocolViolation(P.REJECT_PROTOCOL_ERROR, "unknown Text TTT", bytes(header))
            body = self.text_rest
        else:
            if len(self.text_pending) + len(data) > params.MAX_TEXT_BYTES:
                raise ProtocolViolation(P.REJECT_PROTOCOL_ERROR, "text request too long", bytes(header))
            self.text_pending += data
            if p.flags & P.TEXT_FLAG_CONTINUE:
                self._send(P.build_bhs(P.OP_TEXT_RSP, 0, 0, 0, 0, p.lun, p.itt, P.RSVD_TAG,
                                       self._next_statsn(), exp, mx))
                return
            try:
                pairs = params.parse_text(bytes(self.text_pending))
            except params.NegotiationError:
                self.text_pending.clear()
                self._send_reject(P.REJECT_PROTOCOL_ERROR, bytes(header))
                return
            self.text_pending.clear()
            body = params.encode_text(self._text_answer(pairs))
        chunk, self.text_rest = body[:self.peer_mrdsl], body[self.peer_mrdsl:]
        if self.text_rest:
            self.text_ttt = next(self._ttt) & 0x7FFFFFFF
            flags, ttt = P.TEXT_FLAG_CONTINUE, self.text_ttt
        else:
            self.text_ttt = P.RSVD_TAG
            flags, ttt = P.FLAG_FINAL, P.RSVD_TAG
        self._send(P.build_bhs(P.OP_TEXT_RSP, flags, 0, 0, len(chunk), p.lun, p.itt, ttt,
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
    def _logout(self, p, data, header) -> None:
        sess = self.session
        reason = p.flags & 0x7F
        cid = p.w20 >> 16
        response = LOGOUT_RSP_SUCCESS
        close_self = False
        if reason == LOGOUT_CLOSE_SESSION:
            close_self = True
        elif reason == LOGOUT_CLOSE_CONNECTION:
            if cid == self.cid:
                close_self = True
            elif cid in sess.connections:
                sess.connections[cid].terminate("logged out by another connection")
            else:
                response = LOGOUT_RSP_CID_NOT_FOUND
        elif reason == LOGOUT_REMOVE_FOR_RECOVERY:
            response = LOGOUT_RSP_RECOVERY_UNSUPPORTED
        else:
            raise ProtocolViolation(P.REJECT_INVALID_PDU_FIELD, "bad logout reason", bytes(header))
        exp, mx = self._window()
        t2w = sess.params.number("DefaultTime2Wait")
        t2r = sess.params.number("DefaultTime2Retain")
        self._send(P.build_bhs(P.OP_LOGOUT_RSP, P.FLAG_FINAL, response, 0, 0, 0, p.itt, 0,
                               self._next_statsn(), exp, mx, 0, (t2w << 16) | t2r))
        if close_self:
            if reason == LOGOUT_CLOSE_SESSION:
                for c in list(sess.connections.values()):
                    if c is not self:
                        c.terminate("session logged out")
            self._close_after_flush()
