"""Persistent reservations through a restart of a live ``vmblock serve`` (APTPL, SPC-4 5.9.5),
with two raw initiators: registrations, the holder and its type, the generation and REGISTER
AND MOVE survive when the last REGISTER asked for APTPL, and are gone after a restart when it
did not (or when a later REGISTER cleared it)."""

from __future__ import annotations

import struct

import pytest
from support.iscsi_client import IscsiClient, write10
from support.server import run_cli

from vmblock import DEFAULT_TARGET

PR_IN, PR_OUT = 0x5E, 0x5F
READ_KEYS, READ_RESERVATION, REPORT_CAPABILITIES, READ_FULL_STATUS = 0, 1, 2, 3
REGISTER, RESERVE, REGISTER_AND_MOVE = 0x00, 0x01, 0x07
WRITE_EXCLUSIVE = 0x01
APTPL, UNREG = 0x01, 0x02
GOOD, CHECK_CONDITION, RESERVATION_CONFLICT = 0x00, 0x02, 0x18
A = ("iqn.2026-11.io.vmblock.test:pr-a", 0x400000000A01)
B = ("iqn.2026-11.io.vmblock.test:pr-b", 0x400000000B02)
KEY_A, KEY_B, KEY_MOVED = 0xAAAA0001, 0xBBBB0002, 0xCCCC0003


class Initiator:
    """One raw session with a fixed initiator name and ISID (the same I_T nexus each time)."""

    def __init__(self, server, who):
        self.c = IscsiClient(server.host, server.port)
        self.c.isid = who[1]
        assert self.c.login(DEFAULT_TARGET, initiator=who[0],
                            chap=server.chap()).login_status == 0

    def cmd(self, cdb: bytes, read_len: int = 0, write: bytes = b""):
        """The command's result once the session's unit attentions are reported."""
        for _ in range(4):
            r = self.c.scsi(cdb, read_len=read_len, write=write)
            if not (r.status == CHECK_CONDITION and (r.sense[2] & 0x0F) == 0x06):
                return r
        return r

    def prout(self, action: int, param: bytes, scope_type: int = 0):
        cdb = bytes([PR_OUT, action, scope_type, 0, 0]) + struct.pack(">I", len(param)) + b"\0"
        return self.cmd(cdb, write=param)

    def register(self, key: int, sa_key: int, flags: int = 0):
        return self.prout(REGISTER, struct.pack(">QQ4xBxxx", key, sa_key, flags))

    def prin(self, action: int) -> bytes:
        r = self.cmd(bytes([PR_IN, action, 0, 0, 0, 0, 0, 0x04, 0x00, 0]), read_len=1024)
        assert r.status == GOOD, r
        return r.data

    def write(self):
        return self.cmd(write10(64, 1), write=b"\x5a" * 512).status

    def close(self):
        self.c.close()


def keys(i: Initiator) -> tuple[int, list[int]]:
    data = i.prin(READ_KEYS)
    gen, n = struct.unpack_from(">II", data)
    return gen, sorted(struct.unpack_from(f">{n // 8}Q", data, 8))


def reservation(i: Initiator) -> tuple[int, int] | None:
    data = i.prin(READ_RESERVATION)
    if struct.unpack_from(">I", data, 4)[0] == 0:
        return None
    key, scope_type = struct.unpack_from(">Q4xxB", data, 8)
    return key, scope_type & 0x0F


def transport_id(who) -> bytes:
    name = f"{who[0]},i,0x{who[1]:012x}".encode() + b"\0"
    name += b"\0" * (-len(name) % 4)
    return struct.pack(">BxH", 0x45, len(name)) + name      # format 01b, iSCSI


def restart(server, start_server):
    pool = server.pool
    assert server.stop() == 0
    return start_server(pool=pool)


@pytest.fixture(params=[0, 2], ids=["one-process", "two-workers"])
def pr_server(request, tmp_path, start_server):
    """A server on a new pool, alone or with ``server.workers 2`` (PR commands are forwarded
    to the owner; the restored state must keep the workers' fast path off the LU)."""
    pool = tmp_path / "pool"
    run_cli(pool, "config", "set", "server.workers", str(request.param))
    return start_server(pool=pool)


@pytest.mark.timeout(240)
def test_aptpl_state_survives_a_restart_and_register_and_move(pr_server, start_server):
    s = pr_server
    a, b = Initiator(s, A), Initiator(s, B)
    caps = a.prin(REPORT_CAPABILITIES)
    assert caps[2] & 0x01 and not caps[3] & 0x01          # PTPL_C, not yet PTPL_A
    assert a.register(0, KEY_A, APTPL).status == GOOD
    assert b.register(0, KEY_B, APTPL).status == GOOD
    assert a.prout(RESERVE, struct.pack(">QQ4xBxxx", KEY_A, 0, 0),
                   WRITE_EXCLUSIVE).status == GOOD
    assert a.prin(REPORT_CAPABILITIES)[3] & 0x01          # PTPL_A
    gen = keys(a)[0]
    a.close(), b.close()

    s = restart(s, start_server)
    b = Initiator(s, B)
    assert keys(b) == (gen, sorted([KEY_A, KEY_B]))
    assert reservation(b) == (KEY_A, WRITE_EXCLUSIVE)
    assert b.write() == RESERVATION_CONFLICT
    full = b.prin(READ_FULL_STATUS)
    assert transport_id(A)[4:].split(b"\0")[0] in full     # the holder's nexus, with its ISID
    a = Initiator(s, A)
    assert a.write() == GOOD                               # the same I_T nexus holds it
    # the holder moves the reservation to B's nexus with a new key and leaves
    tid = transport_id(B)
    param = struct.pack(">QQxBHI", KEY_A, KEY_MOVED, UNREG | APTPL, 1, len(tid)) + tid
    assert a.prout(REGISTER_AND_MOVE, param).status == GOOD
    assert reservation(b) == (KEY_MOVED, WRITE_EXCLUSIVE)
    a.close(), b.close()

    s = restart(s, start_server)
    a, b = Initiator(s, A), Initiator(s, B)
    assert keys(a)[1] == [KEY_MOVED]
    assert reservation(a) == (KEY_MOVED, WRITE_EXCLUSIVE)
    assert a.write() == RESERVATION_CONFLICT
    assert b.write() == GOOD
    a.close(), b.close()


@pytest.mark.timeout(240)
def test_without_aptpl_a_restart_forgets_everything(vmblock_server, start_server):
    s = vmblock_server
    a, b = Initiator(s, A), Initiator(s, B)
    assert a.register(0, KEY_A).status == GOOD
    assert b.register(0, KEY_B, APTPL).status == GOOD
    # the last REGISTER decides: A's re-registration without APTPL clears it
    assert a.register(KEY_A, KEY_A).status == GOOD
    assert a.prout(RESERVE, struct.pack(">QQ4xBxxx", KEY_A, 0, 0),
                   WRITE_EXCLUSIVE).status == GOOD
    assert b.write() == RESERVATION_CONFLICT
    assert not a.prin(REPORT_CAPABILITIES)[3] & 0x01
    a.close(), b.close()

    s = restart(s, start_server)
    a, b = Initiator(s, A), Initiator(s, B)
    assert keys(b)[1] == []
    assert reservation(b) is None
    assert b.write() == GOOD and a.write() == GOOD
    a.close(), b.close()
