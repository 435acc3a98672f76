"""The control PDUs of an iSCSI connection: NOP, Task Management, Text and Logout.

NOP-Out is echoed and NOP-In pings an idle initiator; task management aborts tasks and resets
LUNs and targets through ``ScsiTarget.task_management``; Text answers SendTargets and
full-feature renegotiation, in several PDUs when long; Logout closes the connection or the
session.
"""

from __future__ import annotations

from . import params
from .framing import ProtocolViolation
from .pdu import (FLAG_FINAL, RSVD_TAG, TEXT_FLAG_CONTINUE, LogoutReason, LogoutResponse, Opcode,
                  Pdu, RejectReason, TmfFunction, TmfResponse, build_bhs, decode_lun)
from .session import sn_lt

NOP_SLACK = 0.01                    # seconds a NOP timer may fire early and still count

# The name ``ScsiTarget.task_management`` knows each task-set TMF by.
_TMF_NAMES = {TmfFunction.ABORT_TASK_SET: "ABORT_TASK_SET",
              TmfFunction.CLEAR_TASK_SET: "CLEAR_TASK_SET",
              TmfFunction.LUN_RESET: "LUN_RESET",
              TmfFunction.TARGET_WARM_RESET: "TARGET_WARM_RESET",
              TmfFunction.TARGET_COLD_RESET: "TARGET_COLD_RESET"}


class ControlPdus:
    """``ConnectionMachine`` part: the NOP, Task Management, Text and Logout PDUs."""

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
