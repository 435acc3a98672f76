"""Waiting for a state a live server reaches on its own (an event delivered, a worker
restarted, a hypervisor's change followed): poll with a generous bound that a busy machine
never reaches, and return as soon as the state is there. Never a sleep that hopes."""

from __future__ import annotations

import asyncio
import time

import pytest

BOUND = 60.0        # seconds: a failure, never a timing the test relies on
POLL = 0.05
ASYNC_POLL = 0.01   # in a loop the state comes from callbacks of that same loop


def until(what: str, cond, bound: float = BOUND):
    """Poll ``cond()`` until it returns something true and return that; fail naming ``what``
    once ``bound`` seconds have passed."""
    end = time.monotonic() + bound
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > end:
            pytest.fail(f"not within {bound} s: {what}")
        time.sleep(POLL)


async def until_async(what: str, cond, bound: float = BOUND):
    """``until`` inside a running event loop: the loop goes on working between the polls (a
    delivery, a channel, a hypervisor watch)."""
    end = time.monotonic() + bound
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > end:
            pytest.fail(f"not within {bound} s: {what}")
        await asyncio.sleep(ASYNC_POLL)
