"""vmblock.iscsi.poll: a process polls instead of sleeping only while PDUs arrive close
together, and for ``window`` after the last one (a clock the test moves; a real event loop)."""

from __future__ import annotations

import asyncio

from vmblock.iscsi.poll import BACKOFF, NEVER_TAKEN_ENV, TAKEN, IdlePoll

US = 1e-6


class SteppedClock:
    """Time that moves only when the poll yields the CPU (``relax``): ``step`` a turn."""

    def __init__(self, step: float):
        self.now = 0.0
        self.step = step
        self.turns = 0

    def __call__(self) -> float:
        return self.now

    def relax(self) -> None:
        self.turns += 1
        self.now += self.step


def polled(window: float) -> tuple[SteppedClock, IdlePoll]:
    """A poll of ``window`` on a clock that moves 10 us a yield."""
    clock = SteppedClock(10 * US)
    return clock, IdlePoll(window, clock, clock.relax)


async def settle(poll: IdlePoll, most: int = 10_000) -> None:
    """Run the loop until the poll stops polling (at most ``most`` turns)."""
    for _ in range(most):
        if not poll.polling:
            return
        await asyncio.sleep(0)
    raise AssertionError("the poll never stopped")


def test_two_close_arrivals_poll_for_the_window_after_the_last():
    async def main():
        clock, poll = polled(100 * US)
        poll.arrived()
        assert not poll.polling                 # one arrival says nothing of the next
        clock.now = 50 * US
        poll.arrived()
        assert poll.polling
        await settle(poll)
        assert clock.turns == 10                # 50 us + 10 turns of 10 us = the window
        assert clock.now == 150 * US
    asyncio.run(main())


def test_an_arrival_while_polling_extends_it():
    async def main():
        clock, poll = polled(100 * US)
        poll.arrived()
        poll.arrived()
        for _ in range(5):
            await asyncio.sleep(0)
        assert clock.now == 50 * US
        poll.arrived()                          # a PDU at 50 us: on until 150 us
        await settle(poll)
        assert clock.now == 150 * US
    asyncio.run(main())


def test_far_apart_arrivals_never_poll():
    async def main():
        clock, poll = polled(100 * US)
        for i in range(5):
            clock.now = i * 150 * US
            poll.arrived()
            await asyncio.sleep(0)
            assert not poll.polling
        assert clock.turns == 0
    asyncio.run(main())


def test_window_zero_never_polls_and_a_window_set_to_zero_stops_polling():
    async def main():
        clock, poll = polled(0.0)
        poll.arrived()
        poll.arrived()
        assert not poll.polling
        poll.window = 1.0
        poll.arrived()
        assert poll.polling
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        turns = clock.turns
        assert turns >= 1
        poll.window = 0.0                       # iscsi.poll_window 0, set live
        await settle(poll, most=2)
        assert clock.turns == turns
    asyncio.run(main())


def test_a_yield_that_let_another_process_run_gives_the_cpu_up_for_the_backoff():
    """A yield that came back after TAKEN (another process had the CPU) ends the polling;
    close arrivals do not start it again until BACKOFF has passed."""
    async def main():
        clock, poll = polled(1.0)
        poll.arrived()
        poll.arrived()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert poll.polling and clock.turns == 2
        clock.step = 2 * TAKEN                  # the next yield: someone else ran meanwhile
        await settle(poll, most=2)
        assert clock.turns == 3
        clock.step = 10 * US
        taken = clock.now
        for _ in range(3):                      # close arrivals within the backoff
            clock.now += 10 * US
            poll.arrived()
            assert not poll.polling
        clock.now = taken + BACKOFF
        poll.arrived()
        assert poll.polling                     # close to the last one, after the backoff
        poll.window = 0.0
        await settle(poll)
    asyncio.run(main())


def test_with_the_test_environment_no_yield_counts_as_late(monkeypatch):
    """NEVER_TAKEN_ENV (what tests/e2e/test_poll_live.py gives its server): a slow yield
    does not end the polling; only the window does."""
    monkeypatch.setenv(NEVER_TAKEN_ENV, "1")

    async def main():
        clock = SteppedClock(2 * TAKEN)
        poll = IdlePoll(10 * TAKEN, clock, clock.relax)
        poll.arrived()
        poll.arrived()
        await settle(poll)
        assert clock.turns == 5 and poll.quiet_until == 0.0
    asyncio.run(main())
