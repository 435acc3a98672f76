"""A worker process: runs the full feature phase of the connections the owner hands it.

Started by the owner (``owner.WorkerPool``) as ``python -m vmblock.worker --fd N --index I
--parent PID``: a fresh interpreter, its end of a unix socketpair as fd N. It dies with the
owner (PR_SET_PDEATHSIG, and its socketpair closing), ignores SIGINT (the owner stops it) and
on SIGTERM closes its connections and exits.

Each ``HANDOFF`` brings a logged-in TCP socket, the session's identity, negotiated parameters
and command window, and the bytes the owner received past the login. The worker adopts the
session in its own ``SessionRegistry`` and runs a ``ConnectionMachine`` that starts in full
feature phase (``ConnectionMachine.resume``) inside an ``IscsiProtocol``; SCSI commands go to
its ``WorkerTarget`` (the fast path, else ``COMMAND`` to the owner). When a connection ends it
sends ``CLOSED``, so the owner's session record and I_T nexus go too.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import itertools
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import uvloop

from vmblock.collector import settle_gc
from vmblock.heap import keep_buffers
from vmblock.scsi.lu import MAX_TRANSFER_BYTES
from vmblock.iscsi.budget import DataBudget
from vmblock.iscsi.machine import ConnectionMachine
from vmblock.iscsi.params import Negotiation
from vmblock.iscsi.poll import IdlePoll
from vmblock.iscsi.portal import IscsiConfig, TargetEntry
from vmblock.iscsi.protocol import IscsiProtocol
from vmblock.iscsi.session import Session, SessionRegistry
from vmblock.native import extent as extent_kernels
from vmblock.native import stats as stats_kernels
from vmblock.qos.gate import QosGate
from vmblock.qos.shared import SharedTags
from vmblock.scsi.task import Nexus, ScsiTask
from vmblock.stats.arena import rows_view, slab
from vmblock.stats.live import lu_rows_from_json
from vmblock.stats.recorder import StatsRecorder

from .channel import Channel
from .fastpath import FastPath, Forward
from .publish import HOOK_ENV
from .sharedpath import SharedMapsFastPath
from .target import WorkerTarget
from .wire import (
    CMD_READ,
    CMD_WRITE,
    CLOSED,
    CONNECTION,
    NO_LUN,
    QUESTION_TAG,
    RESULT_CLASS_MASK,
    RESULT_CLASS_SHIFT,
    RESULT_DATA_IN,
    RESULT_FAILED,
    RESULT_GONE,
    TMF,
    TMF_DONE,
    Msg,
    pack_command,
    pack_json,
    unpack_handoff,
    unpack_json,
    unpack_result,
)

log = logging.getLogger("vmblock.worker")

PR_SET_PDEATHSIG = 1        # prctl(2): the signal this process gets when its parent dies


class Forwarded:
    """A command sent to the owner, until its ``RESULT``: the task, and where its end goes
    (``HandedProtocol.run`` fills in the connection's machine and task state)."""

    __slots__ = ("task", "machine", "st")

    def __init__(self, task: ScsiTask):
        self.task = task
        self.machine = None
        self.st = None


@dataclass
class HandedLogin:
    """What ``Session`` reads of a finished login, rebuilt from a ``HANDOFF``."""

    isid: int
    initiator: str
    initiator_alias: str
    neg: Negotiation
    service: WorkerService
    discovery: bool = False


class WorkerService:
    """What a ``ConnectionMachine`` asks of its service, in a worker: the fabric settings the
    owner sent, this worker's sessions, its share of the data budget."""

    def __init__(self, process: WorkerProcess):
        self.process = process
        self.config = IscsiConfig()
        self.registry = SessionRegistry()
        self.connections: set[ConnectionMachine] = set()
        self.budget = DataBudget(0, 0, process.loop.call_soon)
        self.poll = IdlePoll(self.config.poll_window)
        self.max_pdu = 0
        self.send_targets_answer: dict[int, list] = {}     # TSIH -> the session's SendTargets
        self.stats = None       # vmblock.stats.recorder.StatsRecorder over the owner's slab
        self.qos = None         # vmblock.qos.gate.QosGate, configured by the owner's QOS
        self.serials: dict[ConnectionMachine, int] = {}    # connection -> its handoff serial
        # test-only (HOOK_ENV, file ``hold-closed``): CLOSED messages sent once the next
        # handed connection is taken, as when the owner reads them after its HANDOFF
        self.held_closed: list[bytes] = []

    def configure(self, info: dict) -> None:
        """Take the owner's current fabric settings (sent with each ``HANDOFF`` and in
        ``CONFIG`` when they change)."""
        self.config = IscsiConfig(**info["config"])
        self.max_pdu = info["max_pdu"]
        self.budget.total = self.config.data_budget
        self.budget.per_host = self.config.data_budget_per_host
        self.poll.window = self.config.poll_window

    def entered_full_feature(self, conn: ConnectionMachine) -> None:
        """A handed-over connection resumed: it already runs where it stays."""

    def release(self, conn: ConnectionMachine) -> None:
        """``conn`` closed: the owner hears of it (``CLOSED``) and gives back its slot."""
        if conn in self.connections:
            self.connections.discard(conn)
            msg = CLOSED.pack(conn.session.tsih, conn.cid, self.serials.pop(conn, 0))
            hook = os.environ.get(HOOK_ENV)
            if hook and Path(hook, "hold-closed").exists():
                self.held_closed.append(msg)    # test-only: after the next HANDOFF
            else:
                self.process.channel.send(Msg.CLOSED, msg)

    def send_targets(self, value: str, session: Session) -> list[tuple[str, str]]:
        """SendTargets in a normal session: its own target only, as the owner answered it at
        handoff (RFC 7143 Appendix C)."""
        if value in ("", "All", session.target.name):
            return [tuple(pair) for pair in self.send_targets_answer.get(session.tsih, [])]
        return []


class HandedProtocol(IscsiProtocol):
    """The carrier of a handed-over connection: its machine resumes in full feature phase."""

    def __init__(self, service: WorkerService, session: Session, info: dict, pending: bytes):
        super().__init__(service, tuple(info["portal"]))
        self.session = session
        self.info = info
        self.pending = pending

    def run(self, st, work) -> None:
        """A forwarded command ends when its ``RESULT`` comes (``WorkerProcess._result``
        calls ``task_done``); other work (the fast path's) is awaited as usual."""
        if isinstance(work, Forwarded):
            work.machine, work.st = self.machine, st
        else:
            super().run(st, work)

    def connection_made(self, transport) -> None:
        """Resume the connection in full feature phase and handle what the owner received
        past the login."""
        self.transport = transport
        self.loop = asyncio.get_running_loop()
        info = self.info
        machine = self.machine = ConnectionMachine(self.service, self, tuple(info["peer"]),
                                                   tuple(info["portal"]))
        sess, cid = self.session, info["cid"]
        old = sess.connections.get(cid)
        if old is not None:                  # connection reinstatement: the old one goes
            old.terminate("connection reinstated")
        sess.connections[cid] = machine
        self.service.connections.add(machine)
        self.service.serials[machine] = info["serial"]
        now = self.loop.time()
        machine.resume(sess, cid, info["statsn"], now)
        if self.pending:
            machine.receive_data(self.pending, now)
        self.pending = b""


class WorkerProcess:
    """The worker's state: its channel to the owner, targets, forwarded commands."""

    def __init__(self, sock: socket.socket, index: int, loop):
        self.index = index
        self.loop = loop
        self.channel = Channel(sock, loop, self._frame, self._owner_gone)
        self.service = WorkerService(self)
        self.targets: dict[str, WorkerTarget] = {}
        self.fast: FastPath = Forward()     # until STORE (none with the flash cache on)
        self.tags = itertools.count(1)
        self.waiting: dict[int, Forwarded] = {}
        self.corked: list[ConnectionMachine] = []      # answering a batch of RESULTs
        # test-only (HOOK_ENV, file ``hold-abort``): ABORTs applied once the next command is
        # taken, as when its bytes are read before the ABORT (``WorkerTarget.prepare``)
        self.held_aborts: list[dict] = []
        self.done = asyncio.Event()
        self.accepting: set[asyncio.Task] = set()

    # ---- from the owner -----------------------------------------------------------------
    def _frame(self, mtype: Msg, payload: bytes) -> None:
        if mtype == Msg.RESULT:
            self._result(payload)
        elif mtype == Msg.HANDOFF:
            info, pending = unpack_handoff(payload)
            sock = socket.socket(fileno=self.channel.take_fd())
            task = self.loop.create_task(self._accept(info, pending, sock))
            self.accepting.add(task)
            task.add_done_callback(self.accepting.discard)
        elif mtype == Msg.ABORT:
            msg = unpack_json(payload)
            hook = os.environ.get(HOOK_ENV)
            if hook and Path(hook, "hold-abort").exists():
                self.held_aborts.append(msg)    # test-only: after the next command is taken
            else:
                self._abort(msg)
        elif mtype == Msg.TERMINATE:
            tsih, cid = CONNECTION.unpack_from(payload)
            sess = self.service.registry.by_tsih.get(tsih)
            conn = sess.connections.get(cid) if sess is not None else None
            if conn is not None:
                conn.terminate("closed by the owner")
        elif mtype == Msg.LUNS:
            msg = unpack_json(payload)
            target = self.targets.get(msg["target"])
            if target is not None:
                target.luns = set(msg["luns"])
            self._slots(msg["target"], msg)
        elif mtype == Msg.CONFIG:
            self.service.configure(unpack_json(payload))
        elif mtype == Msg.STORE:
            info = unpack_json(payload)
            fds = [self.channel.take_fd() for _ in range(info["fds"])]
            self.fast = SharedMapsFastPath(self.index, info, fds, self.forward, self._tsih)
            for target in self.targets.values():
                target.fast = self.fast
        elif mtype == Msg.STATS_FLUSH:
            if self.service.stats is not None:
                self.service.stats.flush()
            self.channel.send(Msg.STATS_FLUSHED, payload)      # the same tag
        elif mtype == Msg.SESSIONS:
            counts = {sess.tsih: len(sess.tasks)
                      for sess in self.service.registry.by_tsih.values()}
            self.channel.send(Msg.SESSION_TASKS, payload[:QUESTION_TAG.size], pack_json(counts))
        elif mtype == Msg.QOS:
            if self.service.qos is not None:
                self.service.qos.configure_json(unpack_json(payload))
        elif mtype == Msg.STOP:
            self.stop()
        else:
            log.error("worker %d: unexpected message %s", self.index, mtype.name)

    def _slots(self, target: str, msg: dict) -> None:
        """The fast path learns the LU record slots of ``target``'s LUNs, the fabric their
        stats rows."""
        entry = self.targets.get(target)
        if entry is not None and "stats" in msg:
            entry.stats_rows = {int(lun): lu_rows_from_json(d)
                                for lun, d in msg["stats"].items()}
        if isinstance(self.fast, SharedMapsFastPath):
            self.fast.set_slots(target, msg.get("slots", {}))

    def _owner_gone(self) -> None:
        log.info("worker %d: the owner is gone, exiting", self.index)
        self.done.set()

    async def _accept(self, info: dict, pending: bytes, sock: socket.socket) -> None:
        self.service.configure(info)
        sess = self._session(info)
        try:
            await self.loop.connect_accepted_socket(
                lambda: HandedProtocol(self.service, sess, info, pending), sock)
            held, self.service.held_closed = self.service.held_closed, []
            for msg in held:
                self.channel.send(Msg.CLOSED, msg)
        except OSError as e:        # the initiator went in between: the owner hears CLOSED
            log.info("worker %d: handed connection lost: %s", self.index, e)
            sock.close()
            self.channel.send(Msg.CLOSED, CLOSED.pack(info["tsih"], info["cid"], info["serial"]))

    def _session(self, info: dict) -> Session:
        """The session a handed connection belongs to: this worker's, or adopted now."""
        registry = self.service.registry
        sess = registry.by_tsih.get(info["tsih"])
        if sess is not None:
            return sess                     # a connection added to a session running here
        target = self.targets.get(info["target"])
        if target is None:
            target = self.targets[info["target"]] = WorkerTarget(info["target"], info["luns"],
                                                                 self, self.fast)
        else:
            target.luns = set(info["luns"])
        self._slots(target.name, info)
        neg = Negotiation(info["offer"], False)
        neg.result = dict(info["result"])
        neg.declared = True
        login = HandedLogin(info["isid"], info["initiator"], info["alias"], neg, self.service)
        sess = Session(info["tsih"], login, TargetEntry(name=target.name, scsi=target))
        sess.exp_cmdsn, sess.max_cmdsn = info["exp_cmdsn"], info["max_cmdsn"]
        registry.adopt(sess)
        self.service.send_targets_answer[sess.tsih] = info["send_targets"]
        return sess

    def _abort(self, msg: dict) -> None:
        """Another worker's session reset a LUN or the target: abort this worker's tasks
        there that it took before the reset (their answers are not sent), and for a cold
        reset drop the connections. A command taken after the reset stays: its initiator may
        have sent it on the reset's answer, before this message was read."""
        lun, at = msg["lun"], msg["at"]
        for sess in self.service.registry.for_target(msg["target"]):
            for itt, st in list(sess.tasks.items()):
                if (lun is None or st.task.lun == lun) and st.task.received < at:
                    st.abort()
                    del sess.tasks[itt]
            if msg["close"]:
                for conn in list(sess.connections.values()):
                    conn.terminate("target cold reset")

    def apply_held_aborts(self) -> None:
        """Apply the ABORTs the test hook held (``held_aborts``)."""
        held, self.held_aborts = self.held_aborts, []
        for msg in held:
            self._abort(msg)

    def _result(self, payload: bytes) -> None:
        """Answer a forwarded command; the answers of one batch of RESULTs are written
        together, per connection, once the batch is handled (``_uncork``)."""
        tag, status, flags, xfer, sense, data_in, t_io = unpack_result(payload)
        fwd = self.waiting.pop(tag, None)
        if fwd is None or fwd.machine is None:
            return
        machine = fwd.machine
        if not machine.corked:
            if not self.corked:
                self.loop.call_soon(self._uncork)
            machine.cork()
            self.corked.append(machine)
        if flags & RESULT_FAILED:
            log.error("worker %d: a forwarded SCSI command failed in the owner", self.index)
        if flags & (RESULT_FAILED | RESULT_GONE):
            machine.task_done(fwd.st, failed=True)
            return
        task = fwd.task
        task.status = status
        task.sense = sense
        task.cdb_xfer_len = xfer
        task.data_in = data_in if flags & RESULT_DATA_IN else None
        task.t_io = t_io    # the owner's executor queue counts as queue (statistics)
        cls = flags >> RESULT_CLASS_SHIFT & RESULT_CLASS_MASK
        if cls:         # the owner's flash cache served it: the statistics' class
            fwd.st.probe = cls
        machine.task_done(fwd.st)

    def _uncork(self) -> None:
        for machine in self.corked:
            machine.uncork()
        self.corked.clear()

    # ---- to the owner -------------------------------------------------------------------
    def _tsih(self, nexus: Nexus) -> int:
        return self.service.registry.by_key[(nexus.initiator, nexus.isid, nexus.target)].tsih

    def forward(self, task: ScsiTask) -> Forwarded:
        """Send ``task`` to the owner as a ``COMMAND``; its ``RESULT`` fills the task's
        status, sense and Data-In and ends it (``_result``)."""
        tag = next(self.tags)
        fwd = self.waiting[tag] = Forwarded(task)
        flags = (CMD_READ if task.read else 0) | (CMD_WRITE if task.write else 0)
        data = task.data_out if task.data_out is not None else b""
        self.channel.send(Msg.COMMAND, *pack_command(
            tag, self._tsih(task.nexus), task.itt, task.lun, task.edtl, task.attr, flags,
            bytes(task.cdb), data))
        return fwd

    def task_management(self, function: int, nexus: Nexus, lun: int | None) -> bool:
        """Have the owner apply a TMF, waiting for it (``Channel.call``): True when the LUN
        existed."""
        tag = next(self.tags)
        answer = self.channel.call(
            Msg.TMF, [TMF.pack(tag, self._tsih(nexus), function, NO_LUN if lun is None else lun)],
            Msg.TMF_DONE, lambda p: TMF_DONE.unpack_from(p)[0] == tag)
        return bool(TMF_DONE.unpack_from(answer)[1])

    def stop(self) -> None:
        """Close every connection, then end the process (its staged statistics added into
        its slab first: the owner stores them at its own stop)."""
        for conn in list(self.service.connections):
            conn.terminate("target shutting down")
        if self.service.stats is not None:
            self.service.stats.flush()
        self.loop.call_soon(self.done.set)


def die_with_parent(parent: int) -> None:
    """Get SIGKILL when the owner dies (PR_SET_PDEATHSIG); exit now if it already has."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(ctypes.get_errno()))
    if os.getppid() != parent:
        sys.exit(0)


async def _qos_watch(process: WorkerProcess) -> None:
    """Once a second: tell the owner which flows this worker's QoS gate held at their limit
    for longer than ``qos.throttled_after`` (it records ``qos_throttled``)."""
    gate = process.service.qos
    while True:
        await asyncio.sleep(1)
        for key in gate.throttled(gate.clock(), gate.throttled_after):
            process.channel.send(Msg.QOS_THROTTLED, pack_json({"key": key}))


async def _serve(sock: socket.socket, index: int, stats_fd: int | None = None,
                 qos_fd: int | None = None) -> None:
    loop = asyncio.get_running_loop()
    process = WorkerProcess(sock, index, loop)
    if stats_fd is not None:        # count into the slab the owner made for this worker
        process.service.stats = StatsRecorder(rows_view(slab(stats_fd)), loop.call_later)
    # QoS (vmblock.qos): configured by the owner's QOS messages; limits in the shared table
    process.service.qos = QosGate(loop.call_later, 1,
                                  SharedTags(qos_fd) if qos_fd is not None else None)
    watch = loop.create_task(_qos_watch(process))
    loop.add_signal_handler(signal.SIGTERM, process.stop)
    settle_gc()
    keep_buffers(MAX_TRANSFER_BYTES)   # Data-In buffers stay resident (vmblock.heap)
    process.channel.send(Msg.READY, pack_json({"index": index, "pid": os.getpid()}))
    await process.done.wait()
    watch.cancel()
    process.channel.close()


def main(argv: list[str] | None = None) -> int:
    """``python -m vmblock.worker --fd N --index I --parent PID`` (module docstring)."""
    ap = argparse.ArgumentParser(prog="python -m vmblock.worker")
    ap.add_argument("--fd", type=int, required=True, help="this end of the socketpair")
    ap.add_argument("--index", type=int, required=True)
    ap.add_argument("--parent", type=int, required=True, help="the owner's pid")
    ap.add_argument("--stats-fd", type=int, default=None, help="this worker's stats slab")
    ap.add_argument("--qos-fd", type=int, default=None, help="the QoS limit tags' memfd")
    a = ap.parse_args(argv)
    die_with_parent(a.parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s worker {a.index} %(name)s %(levelname)s %(message)s")
    extent_kernels.warm()       # the fast path's kernels, compiled before the first I/O
    stats_kernels.warm()
    uvloop.run(_serve(socket.socket(fileno=a.fd), a.index, a.stats_fd, a.qos_fd))
    return 0
