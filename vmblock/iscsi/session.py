"""Sessions: the I_T nexus, its command window and its tasks, shared by its connections.

A session is keyed by (initiator, ISID, target) for reinstatement and by TSIH for adding
connections (RFC 7143 6.3.1, 7.1.5: at ErrorRecoveryLevel 0 recovery is by reinstatement).
"""

from __future__ import annotations

import itertools

from ..scsi.task import Nexus
from .login import LoginStatus

SERIAL_HALF = 1 << 31
CMD_WINDOW = 128            # commands an initiator may have queued per session
# Tasks a session may hold: the window's, plus as many immediate commands (they bypass the
# window, RFC 7143 3.2.2.1, so only this bounds them); beyond it: TASK SET FULL.
MAX_SESSION_TASKS = 2 * CMD_WINDOW


def sn_lt(a: int, b: int) -> bool:
    """RFC 1982 serial number arithmetic, 32 bits."""
    return a != b and ((b - a) & 0xFFFFFFFF) < SERIAL_HALF


def sn_gt(a: int, b: int) -> bool:
    """``a`` after ``b`` in RFC 1982 32-bit serial number arithmetic."""
    return sn_lt(b, a)


class Session:
    """One iSCSI session (an I_T nexus): its connections, command window, tasks and the
    parameters negotiated at login; created by ``SessionRegistry.bind``."""

    def __init__(self, tsih: int, login, target_entry):
        self.tsih = tsih
        self.isid = login.isid
        self.initiator = login.initiator
        self.initiator_alias = login.initiator_alias
        self.discovery = login.discovery
        self.target = target_entry            # TargetEntry, None for discovery
        self.params = login.neg
        target_name = target_entry.name if target_entry else ""
        self.nexus = Nexus(self.initiator, self.isid, target_name, login.service.config.tpgt)
        self.connections: dict[int, object] = {}
        self.tasks: dict[int, object] = {}     # ITT -> TaskState, across connections
        self.exp_cmdsn = 0
        self.max_cmdsn = 0
        # CmdSN -> (connection, pdu, data or None, header, bytes of data budget it holds):
        # commands that arrived before a CmdSN gap was filled (Connection._park)
        self.pending: dict[int, tuple] = {}

    @property
    def key(self):
        """(initiator, ISID, target name): a new login with the same key reinstates the session."""
        return (self.initiator, self.isid, self.target.name if self.target else "")

    def start_window(self, cmdsn: int) -> None:
        """Open the command window at the login's CmdSN, ``CMD_WINDOW`` commands wide."""
        self.exp_cmdsn = cmdsn
        self.max_cmdsn = (cmdsn + CMD_WINDOW - 1) & 0xFFFFFFFF

    def window(self) -> tuple[int, int]:
        """(ExpCmdSN, MaxCmdSN); MaxCmdSN shrinks the window while tasks are outstanding
        but never moves backwards (RFC 7143 4.2.2.1)."""
        room = CMD_WINDOW - len(self.tasks)
        want = (self.exp_cmdsn + (room if room > 1 else 1) - 1) & 0xFFFFFFFF
        mx = self.max_cmdsn
        if want != mx and (want - mx) & 0xFFFFFFFF < SERIAL_HALF:   # sn_gt(want, mx) inline:
            self.max_cmdsn = mx = want                                # once per response
        return self.exp_cmdsn, mx

    def in_window(self, cmdsn: int) -> bool:
        """True when ``cmdsn`` lies from ExpCmdSN to MaxCmdSN (serial arithmetic)."""
        return not sn_lt(cmdsn, self.exp_cmdsn) and not sn_gt(cmdsn, self.max_cmdsn)

    def info(self) -> dict:
        """The session as a JSON-ready dict for ``session list``: who, which target, its
        connections, tasks outstanding and negotiated parameters."""
        return {"tsih": self.tsih, "initiator": self.initiator, "isid": f"{self.isid:012x}",
                "alias": self.initiator_alias,
                "target": self.target.name if self.target else None,
                "type": "discovery" if self.discovery else "normal",
                "connections": [c.info() for c in self.connections.values()],
                "tasks": len(self.tasks),
                "params": dict(self.params.result)}


class SessionRegistry:
    """All sessions of an ``IscsiService``, by TSIH (joining connections) and by key
    (reinstatement); it tells the SCSI target when a nexus comes and goes."""

    def __init__(self):
        self.by_tsih: dict[int, Session] = {}
        self.by_key: dict[tuple, Session] = {}
        self._tsih = itertools.count(1)

    def check_join(self, login) -> int:
        """Login status for joining: 0 if the connection may log in."""
        if login.tsih == 0:
            return 0
        sess = self.by_tsih.get(login.tsih)
        if sess is None:
            return LoginStatus.SESSION_DOES_NOT_EXIST
        if sess.isid != login.isid or sess.initiator != login.initiator:
            return LoginStatus.INITIATOR_ERROR
        # A connection joins only the session it authenticated for: same type, same target.
        if sess.discovery != login.discovery or sess.target is not login.target:
            return LoginStatus.INITIATOR_ERROR
        max_conns = sess.params.number("MaxConnections")
        if login.cid not in sess.connections and len(sess.connections) >= max_conns:
            return LoginStatus.TOO_MANY_CONNECTIONS
        return 0

    def bind(self, conn, login, cmdsn: int) -> Session:
        """Attach a logged-in connection: new session, session reinstatement (same ISID,
        TSIH 0) or a connection added to / reinstated in an existing session."""
        if login.tsih:
            sess = self.by_tsih[login.tsih]
            old = sess.connections.get(login.cid)
            if old is not None:                 # connection reinstatement: old one goes
                old.terminate("connection reinstated")
        else:
            key = (login.initiator, login.isid, login.target.name if login.target else "")
            old_sess = self.by_key.get(key)
            if old_sess is not None:            # session reinstatement
                self.close(old_sess, "session reinstated")
            tsih = self._new_tsih()
            sess = Session(tsih, login, login.target)
            sess.start_window(cmdsn)
            self.by_tsih[tsih] = sess
            self.by_key[sess.key] = sess
            if sess.target is not None:
                sess.target.scsi.nexus_added(sess.nexus)
        sess.connections[login.cid] = conn
        return sess

    def adopt(self, sess: Session) -> None:
        """Keep a session that another process logged in (vmblock.worker); its nexus is that
        process's to announce."""
        self.by_tsih[sess.tsih] = sess
        self.by_key[sess.key] = sess

    def _new_tsih(self) -> int:
        while True:
            t = next(self._tsih) & 0xFFFF
            if t and t not in self.by_tsih:
                return t

    def detach(self, sess: Session, conn) -> None:
        """A connection is gone; at ERL 0 a session without connections ends with it."""
        if sess.connections.get(conn.cid) is conn:
            del sess.connections[conn.cid]
        if not sess.connections:
            self._remove(sess)

    def close(self, sess: Session, why: str) -> None:
        """End ``sess``: terminate its connections and abort its tasks (session reinstatement)."""
        for c in list(sess.connections.values()):
            c.terminate(why)
        self._remove(sess)

    def _remove(self, sess: Session) -> None:
        if self.by_tsih.get(sess.tsih) is not sess:
            return
        del self.by_tsih[sess.tsih]
        if self.by_key.get(sess.key) is sess:
            del self.by_key[sess.key]
        for st in list(sess.tasks.values()):
            st.abort()
        sess.tasks.clear()
        for conn, _pdu, _data, _header, charged, _parked in sess.pending.values():
            conn.service.budget.give(conn.host, charged)
        sess.pending.clear()
        if sess.target is not None:
            sess.target.scsi.nexus_removed(sess.nexus)

    def for_target(self, name: str) -> list[Session]:
        """The sessions logged in to target ``name``: the scope of target-wide TMFs and resets."""
        return [s for s in self.by_tsih.values() if s.target is not None and s.target.name == name]

    def all(self) -> list[Session]:
        """Every session, discovery ones included (a copy, safe to iterate while they change)."""
        return list(self.by_tsih.values())
