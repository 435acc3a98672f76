"""One byte budget for the initiator data the target holds, drawn on by every connection.

It covers immediate and unsolicited data of commands not yet executed (also of commands parked
for a CmdSN gap), the Data-Out buffers of WRITEs (granted before their R2Ts go out), and READ
data a connection holds until its socket takes it. With the receive buffers (a fixed size per
connection) and the connection limits, this bounds what initiators can make the server hold,
whatever they send: the RSS bound in configs/vmblock.toml.

A charge is granted only while both the total and the charging source address stay within
their limits; the per-address limit keeps one host from taking it all. Nothing waits inside
this class: a connection that is refused asks to be called back (``wait``) and tries again.
"""

from __future__ import annotations

from typing import Callable


class DataBudget:
    """The shared byte budget (module docstring). ``call_soon(callback)`` runs ``callback``
    once the current work is done (the event loop's ``call_soon``), so the connections that
    wait are called back outside the ``give`` that freed the bytes."""

    def __init__(self, total: int, per_host: int, call_soon: Callable[[Callable], object]):
        self.total = total
        self.call_soon = call_soon
        self.per_host = per_host
        self.used = 0
        # bytes charged per source address; a plain dict (a Counter's ``del`` and
        # ``__missing__`` are Python calls, and both run once per command)
        self.by_host: dict[str, int] = {}
        self.waiting: dict = {}          # connections to call back, in the order they asked
        self._wake_scheduled = False

    def take(self, host: str, n: int) -> bool:
        """Charge ``n`` bytes to ``host`` if both limits allow it."""
        if n <= 0:
            return True
        had = self.by_host.get(host, 0)
        if self.used + n > self.total or had + n > self.per_host:
            return False
        self.used += n
        self.by_host[host] = had + n
        return True

    def give(self, host: str, n: int) -> None:
        """Return ``n`` bytes charged to ``host``; waiting connections get another try."""
        if n <= 0:
            return
        self.used -= n
        by_host = self.by_host
        left = by_host.get(host, 0) - n
        if left:
            by_host[host] = left
        else:
            del by_host[host]
        if self.waiting and not self._wake_scheduled:
            self._wake_scheduled = True
            self.call_soon(self._wake)

    def wait(self, conn) -> None:
        """Call ``conn.budget_freed()`` when bytes come back."""
        self.waiting[conn] = None

    def forget(self, conn) -> None:
        """``conn`` is gone: no call back."""
        self.waiting.pop(conn, None)

    def _wake(self) -> None:
        self._wake_scheduled = False
        for conn in list(self.waiting):
            if conn.budget_freed():
                self.waiting.pop(conn, None)
