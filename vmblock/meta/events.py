"""The pool's events as the meta DB keeps them: listing with filters, acknowledging, retention.

An event is ``event/<usec:020d>/<kind>`` -> ``{id, time, kind, severity, message, vm?, vdisk?,
advice?, ...}`` (``Pool.record_event`` for the layers above the store, ``StoreEvents`` for the
store's own, written with its commits); ``id`` is the key after ``event/``, so ids sort in
time order. ``ack`` adds ``acked`` (the time) to the record. ``prune`` keeps the newest
``events.retention`` records and deletes the rest in one batch.

These are functions of an open ``Pool``; they read and write through its record methods.
"""

from __future__ import annotations

import re
import time

from vmblock.errors import InvalidArgument, NotFound
from vmblock.units import shown

PREFIX = "event/"
_ID_RE = re.compile(r"^\d{20}/[a-z_]{1,64}$")


def check_id(event_id: str) -> str:
    """``event_id`` if it has the form of an event id (``<usec:020d>/<kind>``)."""
    if not _ID_RE.match(event_id):
        raise InvalidArgument(f"bad event id {shown(event_id)} (ids look like "
                              f"00001764456000000000/low_space; see vmblock events --json)")
    return event_id


def list_events(pool, limit: int = 100, since: float | None = None, kind: str | None = None,
                after: str | None = None, pending: bool = True) -> list[dict]:
    """Events oldest first: from time ``since`` on, of ``kind`` only, with ids after
    ``after``; ``pending``: with the store's not yet committed at the end; the newest
    ``limit`` of those (0: all)."""
    evs = [v for _, v in pool.records(PREFIX)]
    if pending and pool.store_open:
        evs += pool.store.pending_events()
    if after is not None:
        evs = [e for e in evs if e.get("id", "") > after]
    if since is not None:
        evs = [e for e in evs if e["time"] >= since]
    if kind is not None:
        evs = [e for e in evs if e["kind"] == kind]
    return evs[-limit:] if limit else evs


def ack(pool, event_id: str) -> dict:
    """Mark event ``event_id`` acknowledged (``acked``: when); NotFound if it is not kept."""
    key = PREFIX + check_id(event_id)
    event = pool.record(key)
    if event is None:
        raise NotFound(f"no event {event_id} (never recorded, or older than "
                       f"events.retention)")
    event.setdefault("acked", time.time())
    pool.write_records({key: event})
    return event


def prune(pool, keep: int) -> int:
    """Delete all but the newest ``keep`` events in one batch; how many went."""
    keys = [PREFIX + k for k, _ in pool.records(PREFIX)]
    gone = keys[:-keep] if len(keys) > keep else []
    if gone:
        pool.write_records({}, delete=gone)
    return len(gone)
