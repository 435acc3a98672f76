"""SCSI command transfer of an iSCSI connection: SCSI Command, R2T, Data-Out, Data-In, Response.

Each SCSI command gets a ``TaskState`` holding its Data-Out collection and R2Ts. Its data is
charged to the service's shared data budget before it is gathered or read; commands the budget
cannot grant yet wait in order (``budget_freed``). The work itself goes to
``ScsiTarget.prepare/execute``, and its end (``task_done``) is answered with Data-In and a SCSI
Response.
"""

from __future__ import annotations

import logging
import struct

from ..scsi.sense import ScsiError, SenseReason, fail
from ..scsi.task import SAM_STAT_GOOD, SAM_STAT_TASK_SET_FULL, ScsiTask
from .framing import ProtocolViolation
from .pdu import (CMD_ATTR_MASK, CMD_FLAG_READ, CMD_FLAG_WRITE, DATA_IN_FLAG_STATUS, FLAG_FINAL,
                  ISCSI_RSP_COMPLETED, ISCSI_RSP_TARGET_FAILURE, RSP_FLAG_OVERFLOW,
                  RSP_FLAG_UNDERFLOW, RSVD_TAG, Opcode, Pdu, RejectReason, build_bhs, decode_lun,
                  pack_bhs)
from .session import MAX_SESSION_TASKS

log = logging.getLogger("vmblock.iscsi")

MAX_WRITE_BUFFER = 64 << 20         # largest Data-Out we gather for one command

# Plain-int opcodes of the per-PDU path (Data-Out in, which the machine dispatches on first;
# Data-In, SCSI Response, R2T out): reading an IntEnum member and packing it costs more than a
# module-level int.
DATA_OUT = int(Opcode.DATA_OUT)
_DATA_IN = int(Opcode.DATA_IN)
_SCSI_RSP = int(Opcode.SCSI_RSP)
_R2T = int(Opcode.R2T)

_SENSE_LEN = struct.Struct(">H")


class TaskState:
    """Fabric-side state of one SCSI command: Data-Out collection and R2Ts."""

    __slots__ = ("conn", "task", "buf", "want", "received", "unsolicited", "next_r2t",
                 "r2ts", "r2tsn", "lun_field", "cmdsn", "aborted", "done", "charged", "read_len",
                 "stats_rows", "t_arr", "t_grant", "t_exec", "probe", "qos")

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
        # statistics (vmblock.stats.recorder): the LU's rows, None when not counted. t_arr
        # None: it waited for nothing inside the target, so it counts with its receive
        # buffer's group; else when it arrived, and t_grant, t_exec are set too (when it got
        # its data budget, went to the SCSI core: ``own_times``). None, not 0.0: the test of
        # every command is then an identity test, not a float's truth. probe: the cache's
        # capacity reads as it started, or (a worker) the class the owner found
        self.stats_rows = None
        self.t_arr = None
        self.probe = None
        self.qos = None                 # its VM's key while it holds a QoS slot (vmblock.qos)

    def abort(self) -> None:
        """Stop the command (task aborted, Data-Out dropped) and return its data budget; for
        TMFs, session removal and a lost connection. The caller drops it from ``session.tasks``."""
        self.aborted = True
        self.task.aborted = True
        self.buf = None
        self.conn._release(self)


class ScsiTransfer:
    """``ConnectionMachine`` part: SCSI commands, their data both ways and their data budget."""

    def _answer_task_set_full(self, itt: int) -> None:
        """End a command that gets no task: the initiator may retry it (SAM-5 5.3.1)."""
        exp, mx = self._window()
        self._send(build_bhs(_SCSI_RSP, FLAG_FINAL, ISCSI_RSP_COMPLETED,
                             SAM_STAT_TASK_SET_FULL, 0, 0, itt, 0, self._next_statsn(), exp, mx))

    def _scsi_cmd(self, p: Pdu, data, header) -> None:
        sess = self.session
        if sess.discovery:
            raise ProtocolViolation(RejectReason.PROTOCOL_ERROR, "SCSI command in discovery session",
                                    bytes(header))
        flags = p.flags
        write = flags & CMD_FLAG_WRITE != 0
        edtl = p.edtl
        dlen = len(data)
        if dlen or write:           # a command without data has nothing to check there
            self._check_unsolicited(p, dlen, header)
        itt = p.itt
        tasks = sess.tasks
        if itt in tasks or itt == RSVD_TAG:
            self._send_reject(RejectReason.TASK_IN_PROGRESS if itt != RSVD_TAG
                              else RejectReason.INVALID_PDU_FIELD, bytes(header))
            return
        if len(tasks) >= MAX_SESSION_TASKS:
            self._answer_task_set_full(itt)
            return
        cdb = p.cdb
        if p.ahs:
            cdb = self._extended_cdb(p.cdb, p.ahs, header)
        lun_field = p.lun
        lun = lun_field >> 48   # peripheral addressing, bus 0 (LUN < 256): the field's top byte
        if lun > 0xFF:
            lun = decode_lun(lun_field)
        task = ScsiTask(lun, cdb, sess.nexus, itt, flags & CMD_ATTR_MASK, edtl,
                        flags & CMD_FLAG_READ != 0, write)
        st = TaskState(self, task, lun_field, p.cmdsn)
        tasks[itt] = st
        scsi = sess.target.scsi
        stats = self.stats
        if stats is not None:           # the one accounting point: vmblock.stats.recorder
            st.stats_rows = scsi.stats_rows.get(lun)
            if self.parked_at is not None:      # the CmdSN gap it waited for is queue
                st.t_arr, st.t_grant, st.t_exec = self.parked_at, stats.clock(), 0.0
        if not scsi.prepare(task):
            self.task_done(st)
            return
        want = task.data_out_len if write else 0
        if want > MAX_WRITE_BUFFER:
            raise ProtocolViolation(RejectReason.PROTOCOL_ERROR, f"write of {want} bytes too large",
                                    bytes(header))
        if want == 0:
            n = st.read_len = task.cdb_xfer_len if task.read else 0
            if n and ((self.budget_waiting and self._tasks_wait_for_budget())
                      or not self.service.budget.take(self.host, n)):
                self._wait_for_budget(st)          # in order behind what waits already
                return
            st.charged = n
            self._execute_now(st)
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
        if (not (self.budget_waiting and self._tasks_wait_for_budget())
                and self.service.budget.take(self.host, want)):
            st.charged = want
            if dlen == want:        # all of it came as immediate data: one copy, no zeroing
                st.buf = bytearray(data)
                self._execute_now(st)
                return
            self.own_times(st)      # it waits for its Data-Out
            st.buf = bytearray(want)
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

    def own_times(self, st: TaskState) -> None:
        """``st``, as it arrives, is going to wait inside the target (data budget, Data-Out,
        QoS, an executor or the owner process): it leaves its receive buffer's group and
        keeps times of its own (vmblock.stats.recorder)."""
        if st.stats_rows is not None and st.t_arr is None:
            st.t_arr = self.rx_time
            st.t_grant = st.t_exec = 0.0        # 0: at arrival, at its grant

    def _wait_for_budget(self, st: TaskState) -> None:
        self.own_times(st)
        self.budget_waiting.append(st)
        self.service.budget.wait(self)

    def _grant(self, st: TaskState) -> bool:
        """Charge what ``st`` still lacks: a WRITE's whole Data-Out buffer, a READ's data."""
        need = (st.want or st.read_len) - st.charged
        if not self._take(need):
            return False
        st.charged += need
        if st.stats_rows is not None:
            st.t_grant = self.stats.clock()
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
        """Run ``st`` now that its data and budget are in: later than it arrived."""
        if st.stats_rows is not None:
            st.t_exec = self.stats.clock()
        self._execute_now(st)

    def _execute_now(self, st: TaskState) -> None:
        """Run ``st``; called as it arrives, it needs no time stamp of its own. A VM's QoS
        (vmblock.qos.gate) may hold it first and run it here later."""
        qos = self.qos
        if qos is not None and qos.active and qos.hold(self, st):
            return
        task = st.task
        lr = st.stats_rows
        if lr is not None and lr.probe is not None:
            st.probe = lr.probe.capacity_reads
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
            self.own_times(st)          # its I/O's start comes as ``t_io``
            self.io.run(st, pending)

    def task_done(self, st: TaskState, failed: bool = False) -> None:
        """``st``'s SCSI command ended (``failed``: its work raised): answer it."""
        st.done = True
        if st.qos is not None:
            self.qos.done(st)
        if st.read_len and not (st.aborted or self.closing):
            self.out_charged += st.charged          # held until the socket takes the data
            st.charged = 0
        if st.charged:
            self._release(st)
        task = st.task
        sess = self.session
        if sess is not None:
            tasks = sess.tasks
            if tasks.get(task.itt) is st:
                del tasks[task.itt]
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
        collapsed = False
        if data is not None and task.read and edtl and xfer:
            moved = xfer if xfer < edtl else edtl
            collapsed, datasn = self._send_data_in(st, data, moved, flags, residual)
        else:
            moved = task.data_out_len if task.write else 0
        if not collapsed:
            exp, mx = self.session.window()
            sense = task.sense
            body = _SENSE_LEN.pack(len(sense)) + sense if sense else b""
            statsn = self.statsn                # _next_statsn(), inline
            self.statsn = (statsn + 1) & 0xFFFFFFFF
            self._send(pack_bhs(_SCSI_RSP, FLAG_FINAL | flags, ISCSI_RSP_COMPLETED,
                                task.status, len(body), 0, task.itt, 0, statsn, exp, mx, datasn,
                                0, residual), body)
        lr = st.stats_rows
        if lr is not None:
            if st.t_arr is not None or task.status or not lr.inline:
                self.stats.done(st, task, moved)
            else:       # StatsRecorder.done's grouped command, spelled inline
                stats = self.stats
                key = lr.keys[task.cdb[0]]
                if key is not stats.key:
                    stats.fast.append(key)
                    stats.key = key
                stats.fast.append(moved)

    def _send_data_in(self, st, data, n, flags, residual) -> tuple[bool, int]:
        """Send ``n`` bytes as Data-In PDUs; collapse GOOD status into the last one (RFC 7143
        11.7.4). Returns (status sent, number of Data-In PDUs)."""
        task = st.task
        collapse = task.status == SAM_STAT_GOOD and not task.sense
        seg = self.peer_mrdsl
        burst = self.max_burst or seg
        exp, mx = self.session.window()
        if n <= seg and n <= burst:     # one PDU (every small read): the loop below, unrolled
            if collapse:
                statsn = self.statsn                # _next_statsn(), inline
                self.statsn = (statsn + 1) & 0xFFFFFFFF
                pflags, status, res = FLAG_FINAL | DATA_IN_FLAG_STATUS | flags, task.status, residual
            else:
                pflags, statsn, status, res = FLAG_FINAL, 0, 0, 0
            self._send(pack_bhs(_DATA_IN, pflags, 0, status, n, st.lun_field, task.itt,
                                RSVD_TAG, statsn, exp, mx, 0, 0, res),
                       data if n == len(data) else memoryview(data)[:n])
            return collapse, 1
        view = data if isinstance(data, memoryview) else memoryview(data)
        off = 0
        datasn = 0
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
