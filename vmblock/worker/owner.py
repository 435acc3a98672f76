"""The owner's side of the worker processes: start them, place sessions, run their commands.

``WorkerPool`` starts ``server.workers`` worker processes (``python -m vmblock.worker``), each
with a unix socketpair, and starts a new one when one dies. Logins stay in the owner (ACL,
CHAP, TSIH, reinstatement in one place); when a normal session's connection reaches full
feature phase the ``IscsiService`` calls ``place``: the connection stops being read, its
Login Response is let out, and its socket, negotiated parameters, session identity, command
window and the bytes received past the login go to the worker with the fewest sessions (a
connection joining a session goes where the session is; while QoS reservations or shares are
set, a session that serves a VM's LU goes to one designated worker, so every scheduled flow
competes in one scheduler: ``scheduled``, docs/qos.md). The owner forgets the socket but
keeps the session in its registry, the connection as a ``RemoteConnection`` (``session list``,
the connection limits, reinstatement and shutdown reach it there).

A ``COMMAND`` from a worker runs here through ``ScsiTarget.prepare``/``execute`` for the
session's I_T nexus and goes back as a ``RESULT``. A ``TMF`` other than ABORT TASK (SET) is
applied here, and every other worker aborts the matching tasks (``ABORT``). ``CLOSED`` ends the
connection's record, and with the last one the session and its nexus. A worker that dies takes
its sessions with it (their nexuses go, the initiators log in again) and is started anew.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import subprocess
import sys
import time
from functools import partial

from vmblock.iscsi.machine import ConnectionMachine
from vmblock.iscsi.pdu import TmfFunction
from vmblock.iscsi.portal import IscsiService
from vmblock.iscsi.session import Session
from vmblock.scsi.sense import ScsiError, SenseReason, fail
from vmblock.scsi.task import ScsiTask
from vmblock.stats.live import lu_rows_json
from vmblock.stats.recorder import probe_class

from .channel import Channel
from .publish import Publisher
from .wire import (
    CMD_READ,
    CMD_WRITE,
    CLOSED,
    CONNECTION,
    NO_LUN,
    QUESTION_TAG,
    RESULT_CLASS_SHIFT,
    RESULT_DATA_IN,
    RESULT_FAILED,
    RESULT_GONE,
    TMF,
    TMF_DONE,
    Msg,
    pack_handoff,
    pack_json,
    pack_result,
    unpack_command,
    unpack_json,
)

log = logging.getLogger("vmblock.worker")

START_TIMEOUT = 120.0       # seconds a worker may take to say READY (numba loads its cache)
STOP_TIMEOUT = 10.0         # seconds a worker may take to exit after STOP
RESPAWN_DELAY = 1.0         # seconds before restarting a worker that lived less than ...
MIN_LIFE = 5.0              # ... this long (no tight loop of crashing starts)
ANSWER_TIMEOUT = 2.0    # seconds the owner waits for a worker's answer (STATS_FLUSH, SESSIONS)
POLL = 0.002                # seconds between checks while a handoff waits (rare paths only)
# The TMFs whose effect reaches other sessions: the other workers abort their tasks too.
TARGET_WIDE = {TmfFunction.CLEAR_TASK_SET, TmfFunction.LUN_RESET,
               TmfFunction.TARGET_WARM_RESET, TmfFunction.TARGET_COLD_RESET}


class Worker:
    """One worker process as the owner sees it: process, channel, the sessions placed there."""

    def __init__(self, index: int, proc: subprocess.Popen, loop):
        self.index = index
        self.proc = proc
        self.pid = proc.pid
        self.started = time.monotonic()
        self.ready = loop.create_future()
        self.channel: Channel | None = None
        self.sessions: dict[int, Session] = {}                 # TSIH -> the owner's session
        self.conns: dict[int, RemoteConnection] = {}   # handoff serial -> record
        self.fence = None       # the fast path's shared words (shared.Fence), if any

    @property
    def up(self) -> bool:
        """Ready and not gone."""
        return self.ready.done() and not self.channel.closed


class RemoteConnection:
    """A connection running in a worker, where the owner's session and service keep their
    connections: ``info`` for ``session list``, ``terminate`` closes it there."""

    def __init__(self, worker: Worker, conn: ConnectionMachine, tsih: int, serial: int):
        self.worker = worker
        self.tsih = tsih
        self.serial = serial            # this handoff's number: CLOSED names it
        self.cid = conn.cid
        self.host = conn.host
        self.peer = conn.peer
        self.portal = conn.portal
        self.header_digest = conn.header_digest
        self.data_digest = conn.data_digest

    def info(self) -> dict:
        """The connection as ``session list`` shows it, with the worker that runs it."""
        out = {"cid": self.cid, "peer": f"{self.peer[0]}:{self.peer[1]}",
               "portal": f"{self.portal[0]}:{self.portal[1]}",
               "header_digest": self.header_digest, "data_digest": self.data_digest,
               "worker": self.worker.index, "worker_pid": self.worker.pid}
        if self.worker.fence is not None:   # the worker's fast-path commands so far
            out["worker_fast"] = self.worker.fence.counts(self.worker.index)
        return out

    def terminate(self, why: str) -> None:
        """Have the worker drop the connection; its ``CLOSED`` ends this record."""
        log.info("%s: closing connection in worker %d: %s", self.host, self.worker.index, why)
        self.worker.channel.send(Msg.TERMINATE, CONNECTION.pack(self.tsih, self.cid))


class WorkerPool:
    """The worker processes of one ``IscsiService`` (module docstring)."""

    def __init__(self, service: IscsiService, count: int, publisher: Publisher | None = None):
        self.service = service
        self.count = count
        self.publisher = publisher      # the fast path's shared state; None: Forward only
        if publisher is not None:
            publisher.tsih_of = self._tsih_of
        self.workers: list[Worker | None] = [None] * count
        self.loop = None
        self.stopping = False
        self.tasks: set[asyncio.Task] = set()     # handoffs and restarts under way
        self.next = itertools.count()             # round robin among the least loaded
        self.serials = itertools.count(1)         # handoff serials (CLOSED names one)
        self.stats = None       # vmblock.stats.live.LiveStats: set before start when counted
        self.answers: dict[int, asyncio.Future] = {}     # question tag -> its answer
        self.tags = itertools.count(1)
        self.qos = None         # the owner's vmblock.qos.gate.QosGate: set before start
        self.qos_throttled = None   # async callback(key): a worker held a flow at its limit

    def _tsih_of(self, nexus) -> int | None:
        """The TSIH of ``nexus``'s session, None when it has none."""
        sess = self.service.registry.by_key.get((nexus.initiator, nexus.isid, nexus.target))
        return sess.tsih if sess is not None else None

    # ---- processes ----------------------------------------------------------------------
    async def start(self) -> None:
        """Start every worker and wait until each is READY."""
        self.loop = asyncio.get_running_loop()
        for i in range(self.count):
            self._spawn(i)
        await asyncio.wait_for(asyncio.gather(*(w.ready for w in self.workers)), START_TIMEOUT)

    def _spawn(self, index: int) -> Worker:
        # on the loop's thread: PR_SET_PDEATHSIG fires when the thread that forked ends
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            args = [sys.executable, "-m", "vmblock.worker", "--fd", str(theirs.fileno()),
                    "--index", str(index), "--parent", str(os.getpid())]
            fds = [theirs.fileno()]
            if self.stats is not None:          # the worker's slab of statistics counters
                fds.append(self.stats.arena.fd_of(index))
                args += ["--stats-fd", str(fds[-1])]
            if self.qos is not None and self.qos.shared is not None:   # the VMs' limit tags
                fds.append(self.qos.shared.fd)
                args += ["--qos-fd", str(fds[-1])]
            proc = subprocess.Popen(args, pass_fds=fds, stdin=subprocess.DEVNULL)
        finally:
            theirs.close()
        w = Worker(index, proc, self.loop)
        w.channel = Channel(ours, self.loop, partial(self._frame, w), partial(self._died, w))
        if self.publisher is not None:
            w.fence = self.publisher.fence
            info, fds = self.publisher.store_message()
            w.channel.send(Msg.STORE, pack_json({**info, "fds": len(fds)}), fds=fds)
        self.workers[index] = w
        if self.qos is not None:
            w.channel.send(Msg.QOS, pack_json(self.qos.describe()))
        return w

    def qos_changed(self) -> None:
        """Every worker's QoS gate takes the owner's configuration (``vmblock.qos``). When
        reservations or shares now apply to sessions placed in more than one worker, say so:
        they compete per worker until they log in again (docs/qos.md)."""
        msg = pack_json(self.qos.describe())
        for w in self.workers:
            if w is not None:
                w.channel.send(Msg.QOS, msg)
        spread = [w.index for w in self.workers if w is not None and self._runs_scheduled(w)]
        if len(spread) > 1:
            log.warning("QoS reservations or shares apply to sessions in workers %s: they are "
                        "scheduled per worker until they log in again (docs/qos.md)",
                        ", ".join(map(str, spread)))

    def _died(self, w: Worker) -> None:
        """A worker's channel closed: its sessions end, and unless the server stops, a new
        worker takes its place."""
        if not self.stopping:
            log.error("worker %d (pid %d) is gone; its %d sessions end", w.index, w.pid,
                      len(w.sessions))
        if self.publisher is not None:
            self.publisher.fence.quiescent(w.index)     # a dead worker holds nothing
        for conn in w.conns.values():
            self.service.release(conn)
        w.conns.clear()
        for sess in list(w.sessions.values()):
            self.service.registry.close(sess, "worker gone")
        w.sessions.clear()
        if not w.ready.done():
            w.ready.set_exception(ConnectionError(f"worker {w.index} exited before READY"))
            w.ready.exception()          # retrieved: start() or nobody reports it
        self._track(self._reap(w))

    async def _reap(self, w: Worker) -> None:
        if w.proc.poll() is None:
            w.proc.kill()
        await self.loop.run_in_executor(None, w.proc.wait)
        if self.stopping:
            return
        if time.monotonic() - w.started < MIN_LIFE:
            await asyncio.sleep(RESPAWN_DELAY)
        if not self.stopping:
            log.info("starting worker %d again", w.index)
            self._spawn(w.index)

    def _track(self, coro) -> None:
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def stop(self) -> None:
        """Tell every worker to close its connections and exit; kill those that do not."""
        self.stopping = True
        for task in list(self.tasks):
            task.cancel()
        for w in self.workers:
            if w is not None:
                w.channel.send(Msg.STOP)
        for w in self.workers:
            if w is None:
                continue
            try:
                await asyncio.wait_for(self.loop.run_in_executor(None, w.proc.wait),
                                       STOP_TIMEOUT)
            except asyncio.TimeoutError:
                log.warning("worker %d did not exit; killing it", w.index)
                w.proc.kill()
                await self.loop.run_in_executor(None, w.proc.wait)
            w.channel.close()

    def pids(self) -> list[int]:
        """The pids of the running workers."""
        return [w.pid for w in self.workers if w is not None and w.up]

    # ---- placement ----------------------------------------------------------------------
    def place(self, conn: ConnectionMachine) -> None:
        """``IscsiService.handoff``: ``conn`` just entered full feature phase in a normal
        session; from here on a worker runs it."""
        conn.hand_over()
        conn.io.transport.pause_reading()
        self._track(self._move(conn))

    def scheduled(self, sess: Session) -> bool:
        """Whether ``sess``'s commands go through the QoS scheduler's dispatch rounds: some
        VM (or vdisk) has a reservation or shares, and the session's target serves an LU of
        a VM or vdisk (while rounds run, every VM's flow is scheduled: docs/qos.md)."""
        return self._scheduled_target(sess.target)

    def _scheduled_target(self, target) -> bool:
        gate = self.qos
        if gate is None or not gate.rounds:
            return False
        name = target.name
        return any((name, lun) in gate.keys for lun in target.scsi.luns)

    def _runs_scheduled(self, w: Worker) -> bool:
        """Whether worker ``w`` runs a scheduled session (each target checked once)."""
        targets = {sess.target.name: sess.target for sess in w.sessions.values()}
        return any(self._scheduled_target(t) for t in targets.values())

    async def _choose(self, sess: Session) -> Worker:
        for w in self.workers:
            if w is not None and sess.tsih in w.sessions and w.up:
                return w                    # a connection joining a session placed there
        scheduled = self.scheduled(sess)
        while True:
            up = [w for w in self.workers if w is not None and w.up]
            if up and scheduled:            # every scheduled flow in one mClock scheduler
                return self._designated(up)
            if up:
                least = min(len(w.sessions) for w in up)
                candidates = [w for w in up if len(w.sessions) == least]
                return candidates[next(self.next) % len(candidates)]
            await asyncio.sleep(POLL)       # every worker is starting again

    def _designated(self, up: list[Worker]) -> Worker:
        """The worker that runs the scheduled sessions (docs/qos.md, "Worker processes"):
        the one that already runs some (a worker started again after a death, with a lower
        index, does not split them), else the lowest-index worker that is up."""
        for w in up:
            if self._runs_scheduled(w):
                return w
        return up[0]

    async def _move(self, conn: ConnectionMachine) -> None:
        sess = conn.session
        transport = conn.io.transport
        deadline = time.monotonic() + self.service.config.login_timeout
        try:
            w = await asyncio.wait_for(self._choose(sess), self.service.config.login_timeout)
            while transport.get_write_buffer_size() and time.monotonic() < deadline:
                await asyncio.sleep(POLL)   # the Login Response has not left yet
        except asyncio.TimeoutError:
            w = None
        live = (self.service.registry.by_tsih.get(sess.tsih) is sess
                and sess.connections.get(conn.cid) is conn)
        if w is None or not w.up or not live or transport.get_write_buffer_size():
            conn.terminate("no worker took the connection")
            return
        pending = bytes(conn.rview[conn.rstart:conn.rend])
        sock = conn.io.detach()
        stub = RemoteConnection(w, conn, sess.tsih, next(self.serials) & 0xFFFFFFFF)
        self.service.connections.discard(conn)
        self.service.connections.add(stub)
        sess.connections[conn.cid] = stub
        w.sessions[sess.tsih] = sess
        w.conns[stub.serial] = stub
        if self.publisher is not None:      # the new nexus's unit attention is pending
            self.publisher.refresh(sess.target.scsi.luns.values())
        info = {**self._describe(conn, sess), "serial": stub.serial}
        w.channel.send(Msg.HANDOFF, *pack_handoff(info, pending), fds=(sock.detach(),))

    def _fabric(self) -> dict:
        """The fabric settings a worker runs its connections with (``HANDOFF``, ``CONFIG``)."""
        cfg = self.service.config
        share = cfg.data_budget // self.count       # each worker holds its share of it
        return {"max_pdu": self.service.max_pdu,
                "config": {"nop_interval": cfg.nop_interval, "nop_timeout": cfg.nop_timeout,
                           "tpgt": cfg.tpgt, "data_budget": share,
                           "data_budget_per_host": min(cfg.data_budget_per_host, share),
                           "poll_window": cfg.poll_window}}

    def reconfigure(self) -> None:
        """The service was reconfigured (``Apply.FABRIC``): every worker takes the new
        settings for its running connections, as the owner's own do."""
        msg = pack_json(self._fabric())
        for w in self.workers:
            if w is not None:
                w.channel.send(Msg.CONFIG, msg)

    def _describe(self, conn: ConnectionMachine, sess: Session) -> dict:
        neg = sess.params
        return {
            "tsih": sess.tsih, "isid": sess.isid, "initiator": sess.initiator,
            "alias": sess.initiator_alias, "target": sess.target.name,
            "luns": sorted(sess.target.scsi.luns), "cid": conn.cid, "statsn": conn.statsn,
            "exp_cmdsn": sess.exp_cmdsn, "max_cmdsn": sess.max_cmdsn,
            "peer": list(conn.peer[:2]), "portal": list(conn.portal[:2]),
            "offer": neg.offer, "result": neg.result,
            "send_targets": self.service.send_targets("All", sess),
            "slots": self._slots(sess.target.scsi.luns),
            "stats": _stats_rows(sess.target.scsi.stats_rows),
            **self._fabric(),
        }

    def _slots(self, luns) -> dict[str, int]:
        return self.publisher.slots(luns) if self.publisher is not None else {}

    async def flush_stats(self) -> None:
        """Every running worker adds its staged statistics into its slab: what the owner
        reads next counts every command answered before this call. A worker that does not
        answer within ``ANSWER_TIMEOUT`` is not waited for (its counts come later)."""
        await self._ask(Msg.STATS_FLUSH)

    async def session_tasks(self) -> dict[int, int]:
        """TSIH -> the tasks outstanding in the worker that runs the session (the owner's
        ``Session`` of a handed-over session holds none), for ``session list``."""
        counts = {}
        for answer in await self._ask(Msg.SESSIONS):
            counts.update((int(tsih), n) for tsih, n in unpack_json(answer).items())
        return counts

    async def _ask(self, mtype: Msg) -> list[bytes]:
        """Ask every running worker ``mtype`` (a tag for the payload) and return the answers
        (past their tag) of those that answered within ``ANSWER_TIMEOUT``."""
        waits = []
        for w in self.workers:
            if w is not None and w.up:
                tag = next(self.tags) & 0xFFFFFFFF
                fut = self.answers[tag] = self.loop.create_future()
                w.channel.send(mtype, QUESTION_TAG.pack(tag))
                waits.append(fut)
        if not waits:
            return []
        done, pending = await asyncio.wait(waits, timeout=ANSWER_TIMEOUT)
        for tag in [t for t, f in self.answers.items() if f in pending]:
            del self.answers[tag]
        return [f.result() for f in waits if f in done]

    def luns_changed(self, target: str, luns, stats_rows: dict | None = None) -> None:
        """A target's LUNs changed: every worker learns the new list (and the fast path's
        LU record slots, and the stats rows ``stats_rows`` of its LUs: call again after a
        split is installed on one)."""
        msg = pack_json({"target": target, "luns": sorted(luns), "slots": self._slots(luns),
                         "stats": _stats_rows(stats_rows or {})})
        for w in self.workers:
            if w is not None:
                w.channel.send(Msg.LUNS, msg)

    # ---- from the workers ---------------------------------------------------------------
    def _frame(self, w: Worker, mtype: Msg, payload: bytes) -> None:
        if mtype == Msg.COMMAND:
            self._command(w, payload)
        elif mtype == Msg.TMF:
            self._tmf(w, payload)
        elif mtype == Msg.CLOSED:
            self._closed(w, *CLOSED.unpack_from(payload))
        elif mtype in (Msg.STATS_FLUSHED, Msg.SESSION_TASKS):
            fut = self.answers.pop(QUESTION_TAG.unpack_from(payload)[0], None)
            if fut is not None and not fut.done():
                fut.set_result(payload[QUESTION_TAG.size:])
        elif mtype == Msg.QOS_THROTTLED:
            if self.qos_throttled is not None:
                self._track(self.qos_throttled(unpack_json(payload)["key"]))
        elif mtype == Msg.READY:
            w.pid = unpack_json(payload)["pid"]
            w.ready.set_result(None)
            log.info("worker %d ready: pid %d", w.index, w.pid)
        else:
            log.error("worker %d: unexpected message %s", w.index, mtype.name)

    def _session(self, w: Worker, tsih: int) -> Session | None:
        """The session ``tsih`` of worker ``w``, None once it ended here (reinstated, reset)."""
        sess = w.sessions.get(tsih)
        if sess is None or self.service.registry.by_tsih.get(tsih) is not sess:
            return None
        return sess

    def _command(self, w: Worker, payload: bytes) -> None:
        tag, tsih, itt, lun, edtl, attr, flags, cdb, data = unpack_command(payload)
        sess = self._session(w, tsih)
        if sess is None:
            w.channel.send(Msg.RESULT, *pack_result(tag, 0, RESULT_GONE, 0, None, None))
            return
        task = ScsiTask(lun, cdb, sess.nexus, itt, attr, edtl, bool(flags & CMD_READ),
                        bool(flags & CMD_WRITE))
        scsi = sess.target.scsi
        if not scsi.prepare(task):
            self._reply(w, tag, task, sess)
            return
        if task.data_out_len > len(data):   # the worker gathers all of EDTL: never short
            fail(task, ScsiError(SenseReason.INVALID_FIELD_IN_INFORMATION_UNIT))
            self._reply(w, tag, task, sess)
            return
        task.data_out = data[:task.data_out_len]
        # the flash cache's probe, as the fabric takes it in one process (_execute_now): the
        # worker's statistics record gets the class (flash, flash miss) with the RESULT
        lr = scsi.stats_rows.get(lun)
        probe = (lr, lr.probe.capacity_reads) if lr is not None and lr.probe is not None \
            else None
        pending = scsi.execute(task)
        if pending is None:
            self._reply(w, tag, task, sess, probe=probe)
            return
        fut = asyncio.ensure_future(pending)
        fut.add_done_callback(partial(self._executed, w, tag, task, sess, probe))

    def _executed(self, w: Worker, tag: int, task: ScsiTask, sess: Session, probe,
                  fut: asyncio.Future) -> None:
        failed = fut.cancelled() or fut.exception() is not None
        if failed and not fut.cancelled():
            log.error("SCSI command failed", exc_info=fut.exception())
        self._reply(w, tag, task, sess, failed, probe)

    def _reply(self, w: Worker, tag: int, task: ScsiTask, sess: Session,
               failed: bool = False, probe: tuple | None = None) -> None:
        if self.publisher is not None:      # the command may have changed the LU's state
            lu = sess.target.scsi.luns.get(task.lun)
            if lu is not None:
                self.publisher.refresh((lu,))
        flags = (RESULT_DATA_IN if task.data_in is not None else 0) | (RESULT_FAILED if failed
                                                                       else 0)
        if probe is not None:
            flags |= probe_class(*probe) << RESULT_CLASS_SHIFT
        w.channel.send(Msg.RESULT, *pack_result(tag, task.status, flags, task.cdb_xfer_len,
                                                task.sense, task.data_in, task.t_io))

    def _tmf(self, w: Worker, payload: bytes) -> None:
        tag, tsih, function, lun = TMF.unpack_from(payload)
        lun = None if lun == NO_LUN else lun
        sess = self._session(w, tsih)
        ok = False
        if sess is not None:
            function = TmfFunction(function)
            if function in TARGET_WIDE:
                msg = pack_json({"target": sess.target.name, "lun": lun,
                                 "close": function == TmfFunction.TARGET_COLD_RESET,
                                 "at": time.monotonic()})
                for other in self.workers:
                    if other is not None and other is not w:
                        other.channel.send(Msg.ABORT, msg)
            ok = sess.target.scsi.task_management(function.name, sess.nexus, lun)
            if self.publisher is not None:  # unit attentions: FORWARD before TMF_DONE
                self.publisher.refresh(sess.target.scsi.luns.values())
        w.channel.send(Msg.TMF_DONE, TMF_DONE.pack(tag, ok))

    def _closed(self, w: Worker, tsih: int, cid: int, serial: int) -> None:
        """Handoff ``serial`` ended in worker ``w``: its slot goes back, and unless a
        connection reinstatement replaced it (the session's CID ``cid`` is another
        connection now), the session loses it (and ends with its last one, ERL 0)."""
        conn = w.conns.pop(serial, None)
        if conn is None:
            return
        self.service.release(conn)
        sess = w.sessions.get(tsih)
        if sess is None:
            return
        self.service.registry.detach(sess, conn)     # only if still the session's ``cid``
        if not any(c.tsih == tsih for c in w.conns.values()):
            del w.sessions[tsih]


def _stats_rows(stats_rows: dict) -> dict:
    """LUN -> the JSON of its ``LuRows`` (``vmblock.stats.live.lu_rows_json``)."""
    return {str(lun): lu_rows_json(lr) for lun, lr in stats_rows.items()}
