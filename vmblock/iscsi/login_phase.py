"""The login phase of an iSCSI connection: Login Requests until the session is bound.

Each Login Request goes to the connection's ``login.LoginNegotiator`` and its answer out as a
Login Response; login deadlines are kept with the machine's one timer. On success the session
is bound in the registry and the connection takes on the negotiated parameters (digests,
segment and burst lengths, a receive buffer sized for full feature PDUs).
"""

from __future__ import annotations

import logging

from .framing import MIN_READ_ROOM
from .login import LoginStatus
from .pdu import Opcode, Pdu, build_bhs

log = logging.getLogger("vmblock.iscsi")


class LoginPhase:
    """``ConnectionMachine`` part: driving the login phase to full feature phase."""

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
        # discovery sessions stay in the login slots: they are short and need no auth, so a
        # flood of them must not take the room of normal sessions
        if not self.session.discovery:
            self.service.entered_full_feature(self)
        interval = self.service.config.nop_interval
        self.io.set_timer(self.last_rx + interval if interval > 0 else None)
        log.info("%s: %s session %s tsih %d", self.peer[0], "discovery" if self.session.discovery
                 else "normal", self.session.initiator, self.session.tsih)

    def _set_login_deadline(self, when: float, why: str) -> None:
        self.login_deadline = why
        self.io.set_timer(when)
