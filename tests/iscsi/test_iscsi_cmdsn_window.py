"""Session numbering (RFC 1982 serial arithmetic) and the command window (RFC 7143 4.2.2.1)."""

from __future__ import annotations

import pytest

from vmblock.iscsi import params
from vmblock.iscsi.login import LoginNegotiator
from vmblock.iscsi.portal import IscsiService
from vmblock.iscsi.session import CMD_WINDOW, Session, sn_gt, sn_lt


@pytest.mark.parametrize("a,b", [(0, 1), (0xFFFFFFFF, 0), (5, 5 + (1 << 31) - 1), (0x7FFFFFFF, 0x80000000)])
def test_serial_less_than_wraps_at_32_bits(a, b):
    assert sn_lt(a, b) and sn_gt(b, a) and not sn_lt(b, a)


def test_serial_numbers_are_not_less_than_themselves():
    assert not sn_lt(7, 7) and not sn_gt(7, 7)


def session(cmdsn: int) -> Session:
    svc = IscsiService({})
    lg = LoginNegotiator(svc, svc.registry)
    lg.initiator, lg.isid = "iqn.2026-11.io.vmblock.test:s", 1
    lg.neg = params.Negotiation(svc.offer, True)
    s = Session(1, lg, None)
    s.start_window(cmdsn)
    return s


@pytest.mark.parametrize("start", [1, 0xFFFFFFF0])
def test_window_admits_cmdsn_from_expcmdsn_to_maxcmdsn(start):
    s = session(start)
    exp, mx = s.window()
    assert exp == start and mx == (start + CMD_WINDOW - 1) & 0xFFFFFFFF
    assert s.in_window(start) and s.in_window(mx)
    assert not s.in_window((mx + 1) & 0xFFFFFFFF) and not s.in_window((start - 1) & 0xFFFFFFFF)


def test_max_cmdsn_never_moves_backwards_while_tasks_pile_up():
    s = session(10)
    _, mx = s.window()
    for itt in range(CMD_WINDOW + 5):
        s.tasks[itt] = object()
    assert s.window()[1] == mx
    s.exp_cmdsn = 20
    s.tasks.clear()
    assert s.window() == (20, 20 + CMD_WINDOW - 1)
