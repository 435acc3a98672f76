"""The seam where a worker runs a command itself instead of forwarding it to the owner.

``WorkerTarget`` (``target.py``) asks its ``FastPath`` first, for every command, in CmdSN
order: ``claim(task)`` either takes the command (decodes it, checks what ``ScsiTarget.prepare``
would check, sets ``task.data_out_len``, ``task.cdb_xfer_len`` and ``task.handler``) and
``execute(task)`` then runs it in the worker, or declines and the command is forwarded to the
owner, which runs it through the one ``ScsiTarget`` (PR, UA, reservations, every opcode).

``Forward`` declines everything: every command is run by the owner and a worker only moves
bytes (a worker's fast path until the owner's ``STORE``, and always with the flash cache on).
``sharedpath.SharedMapsFastPath`` runs READ/WRITE over the owner's shared maps, keeping to the
protocol of docs/workers.md ("The fast path"): map lookups in the shared maps, in-place
overwrite of owned AUs only, the per-LU flag word that sends a command to the owner while
the LU has PR registrations, a reservation or a pending unit attention, deferred frees and
the read-side sections that end them.
"""

from __future__ import annotations

from typing import Awaitable, Protocol

from vmblock.scsi.task import ScsiTask


class FastPath(Protocol):
    """What a worker asks before forwarding a command (module docstring)."""

    def claim(self, task: ScsiTask) -> bool:
        """Take ``task`` (a fresh command of a session in this worker) and prepare it as
        ``ScsiTarget.prepare`` would, or return False (untouched) to forward it."""

    def execute(self, task: ScsiTask) -> Awaitable[None] | None:
        """Run a claimed ``task``: None when done, or an awaitable the fabric awaits."""


class Forward:
    """The fast path that takes nothing: every command goes to the owner."""

    def claim(self, task: ScsiTask) -> bool:
        """Decline: the owner runs every command."""
        return False

    def execute(self, task: ScsiTask) -> Awaitable[None] | None:
        """Never called: ``claim`` takes nothing."""
        raise AssertionError("Forward claims no command")
