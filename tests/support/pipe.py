"""A target connection machine piped to a test initiator machine in memory, no socket.

Time is passed in (``Pipe.now``): a NOP-In is due when the test says the time has come. SCSI
work the machine hands out (``ConnectionIo.run``) runs on the test's event loop when the
test sends the next bytes; only the fabric is under test.
"""

from __future__ import annotations

from support.initiator_machine import INITIATOR, InitiatorMachine
from support.scsi_rig import MemoryStore
from vmblock.iscsi.chap import ChapSecrets
from vmblock.iscsi.machine import ConnectionMachine
from vmblock.iscsi.portal import IscsiConfig, IscsiService, TargetEntry
from vmblock.scsi.lu import LogicalUnit
from vmblock.scsi.target import ScsiTarget

TARGET = "iqn.2026-11.io.vmblock:pipe"
BLOCK = 512
START = 1000.0                          # the clock the tests pass in, in seconds
NOP_INTERVAL, NOP_TIMEOUT = 30.0, 20.0
CMD_WINDOW = 128                        # vmblock's per-session window (session.CMD_WINDOW)
# What the test initiator asks for and what the target must settle on (RFC 7143 13: the
# smaller burst sizes, InitialR2T=Yes wins the OR, ImmediateData=Yes needs both).
OPERATIONAL = {"HeaderDigest": "None", "DataDigest": "None",
               "MaxRecvDataSegmentLength": "8192", "InitialR2T": "Yes", "ImmediateData": "Yes",
               "FirstBurstLength": "8192", "MaxBurstLength": "16384", "MaxOutstandingR2T": "1"}
SEGMENT, BURST = 8192, 16384
CREDS = ChapSecrets("alice", "alice-secret-12")


class Pipe:
    """One target connection machine and its ``ConnectionIo``, driven by a test initiator."""

    def __init__(self, svc: IscsiService, loop, now: float = START):
        self.svc = svc
        self.loop = loop
        self.now = now
        self.wire = bytearray()          # what the target wrote, not yet read by the initiator
        self.closed = ""                 # "close" (after the written bytes) or "abort"
        self.deadline: float | None = None
        self.work: list = []             # SCSI work handed out, not yet awaited
        self.initiator = InitiatorMachine()
        self.machine = ConnectionMachine(svc, self, ("192.0.2.1", 40000), ("192.0.2.10", 3260))
        assert svc.admit(self.machine)
        self.machine.start(self.now)

    # ConnectionIo
    def write(self, buffers: list) -> None:
        self.wire += b"".join(buffers)

    def close(self, abort: bool) -> None:
        self.closed = "abort" if abort else "close"

    def run(self, st, work) -> None:
        self.work.append((st, work))

    def set_timer(self, when: float | None) -> None:
        self.deadline = when

    # driving
    def send(self, data: bytes) -> list:
        """Give ``data`` to the target, finish the SCSI work it starts, return its answers."""
        self.machine.receive_data(data, self.now)
        while self.work:
            st, work = self.work.pop(0)
            self.loop.run_until_complete(work)
            self.machine.task_done(st)
        self.initiator.receive_data(bytes(self.wire))
        self.wire.clear()
        return self.initiator.pdus()

    def wait(self, seconds: float) -> list:
        """Let ``seconds`` pass; the target's timer fires if it is due."""
        self.now += seconds
        if self.deadline is not None and self.now >= self.deadline:
            self.deadline = None
            self.machine.timer_expired(self.now)
        return self.send(b"")


def service(store: MemoryStore, chap: ChapSecrets | None = None) -> IscsiService:
    scsi = ScsiTarget(TARGET, tpgt=1)
    scsi.add_lun(0, LogicalUnit(store, name="pipe", serial="0123456789abcdef",
                                naa=0x6001405A0B1C2D3E))
    svc = IscsiService({TARGET: TargetEntry(TARGET, scsi, chap=chap)},
                       IscsiConfig(nop_interval=NOP_INTERVAL, nop_timeout=NOP_TIMEOUT))
    svc.budget.call_soon = lambda callback: None     # nothing in these tests waits for budget
    svc.bound_portals = [("192.0.2.10", 3260)]
    return svc


def login(pipe: Pipe, operational: dict | None = None, session_type: str = "Normal",
          target: str = TARGET):
    """Security then operational stage, no authentication; returns the last Login Response."""
    ini = pipe.initiator
    first = {"InitiatorName": INITIATOR, "SessionType": session_type, "AuthMethod": "None"}
    if session_type == "Normal":
        first["TargetName"] = target
    [rsp] = pipe.send(ini.login(first, 0, 1))
    assert rsp.login_status == 0
    [rsp] = pipe.send(ini.login(operational or OPERATIONAL, 1, 3))
    assert rsp.login_status == 0
    ini.tsih = rsp.lun & 0xFFFF
    return rsp


def answer(rsps, opcode: int):
    [rsp] = rsps
    assert rsp.opcode == opcode, f"expected opcode {opcode:#x}, got {rsp.opcode:#x}"
    return rsp
