"""The words the owner and the workers share for the fast path (docs/workers.md, "The fast path").

One memfd-backed array of int64 (``SharedArray``), written by the owner except for each
worker's own words:

* ``EPOCH``: the owner's epoch, bumped by ``Fence.mark`` (a free, a leaf or L1 slice retired,
  a map about to change wholesale);
* ``ACTIVE + i``: worker ``i``'s read-side section: the epoch it loaded when it started a
  fast-path command (before it loaded any flag, L1 entry, leaf or refcount), 0 when it is
  between commands (quiescent). Something retired at mark ``m`` may be reused once every live
  worker's words (this one and its off-loop words, next) are 0 or >= ``m``; a dead worker's
  words are set to 0 by the owner;
* ``OFF_LOOP + i * OFF_LOOP_SLOTS + j``: worker ``i``'s read-side sections that outlive the
  command's ``execute`` (a read in a thread: its data not in the page cache), one word each,
  same meaning as ``ACTIVE``: the section's epoch, 0 when free. The worker sets it before
  ``execute``'s section ends and the reading thread stores 0 when its I/O is done, so the
  section ends with the I/O whatever the worker's event loop does (it may be blocked in a
  TMF's round trip to the owner while the owner waits for the words);
* ``WRITES + i``: in-place writes worker ``i`` made (the owner's commit fdatasyncs the tier
  files when the sum changed, so SYNCHRONIZE CACHE covers them);
* one word per TSIH: the LU slots (``slot % UA_BITS``) where the session's nexus has a unit
  attention pending: its commands there go to the owner, which reports it;
* one record of ``LU_WORDS`` per fast-path LU slot: ``FLAGS`` (the FORWARD bits and
  ``WRITE_THROUGH``), the map's L1 slot (offset and entries in the L1 arena), the LU's blocks
  and block size, the watched blocks (``WATCH_LOW``, ``WATCH_HIGH``: writes there are
  forwarded). A worker uses a record only while ``FLAGS`` has no FORWARD bit; the owner
  sets ``CHANGING`` and waits for the workers (``Fence.quiesced``) before it changes the
  other words.

Ordering: the owner stores the map (or flag) change, then bumps ``EPOCH``; a worker stores its
``ACTIVE`` word, then loads flags, L1 entries, leaves and refcounts. The owner checks the
``ACTIVE`` words only after a commit's fdatasync (frees) or after polling the event loop
(a wholesale change), far longer than a store takes to leave a CPU's store buffer.
"""

from __future__ import annotations

import threading

import numpy as np

from vmblock.store.shm import SharedArray

MAX_WORKERS = 64            # server.workers is checked against this (vmblock.settings)
MAX_LUS = 4096              # fast-path LU slots; LUs past that are forwarded
EPOCH = 0
ACTIVE = 1
WRITES = ACTIVE + MAX_WORKERS
READS = WRITES + MAX_WORKERS
LU_BASE = READS + MAX_WORKERS
LU_WORDS = 8
# the words of an LU record; WATCH_LOW/WATCH_HIGH (blocks): a WRITE starting below the one or
# ending above the other goes to the owner, whose store watches a datastore's label and
# metadata areas there (vmblock.datastore.watch)
FLAGS, L1_OFF, L1_LEN, BLOCKS, BLOCK_SIZE, WATCH_LOW, WATCH_HIGH = range(7)
NOTHING_WATCHED = 1 << 62       # WATCH_HIGH when no block at the end is watched
# per session (by TSIH): bit ``slot % UA_BITS`` set while the session's nexus has a unit
# attention pending on an LU of that slot (several slots share a bit: more forwarding, never
# less)
UA_BASE = LU_BASE + MAX_LUS * LU_WORDS
UA_BITS = 63                # bits of a non-negative int64
MAX_TSIH = 1 << 16
# per worker: the section words of its reads in threads (one per read; when all are taken,
# a read runs in the event loop)
OFF_LOOP = UA_BASE + MAX_TSIH
OFF_LOOP_SLOTS = 64
WORDS = OFF_LOOP + MAX_WORKERS * OFF_LOOP_SLOTS

# FLAGS bits. Any FORWARD bit: every command of the LU goes to the owner.
STATE = 0x1             # PR registrations or a reservation (PR or SPC-2)
CHANGING = 0x2          # the owner changes the map wholesale (snapshot, clone, revert, ...)
UNUSED = 0x4            # the slot serves no LU
FORWARD = STATE | CHANGING | UNUSED
WRITE_THROUGH = 0x8     # WCE=0: every write durable before status (SBC-3 4.15)


def record(slot: int) -> int:
    """Index of the first word of LU ``slot``'s record."""
    return LU_BASE + slot * LU_WORDS


def off_loop(index: int) -> int:
    """Index of worker ``index``'s first off-loop section word."""
    return OFF_LOOP + index * OFF_LOOP_SLOTS


class Fence:
    """The owner's side of the shared words: epoch, quiescence, worker write counts (module
    docstring). ``live(i)`` says whether worker ``i`` is running (a dead one is quiescent)."""

    def __init__(self, workers: int):
        self.shared = SharedArray("vmblock-fastpath", np.int64, WORDS)
        self.shared.ensure(WORDS)
        self.words = self.shared.array
        self.words[:] = 0
        self.words[EPOCH] = 1
        for slot in range(MAX_LUS):
            self.words[record(slot) + FLAGS] = UNUSED
        self.workers = workers
        self.lock = threading.Lock()     # marks come from the loop and the commit thread

    @property
    def fd(self) -> int:
        """The memfd the workers map."""
        return self.shared.fd

    def mark(self) -> int:
        """Bump the epoch: the mark of something retired now."""
        with self.lock:
            e = int(self.words[EPOCH]) + 1
            self.words[EPOCH] = e
            return e

    def passed(self, mark: int) -> bool:
        """No worker is in a section that started before ``mark`` (in its loop or a thread)."""
        words = self.words
        for held in (words[ACTIVE:ACTIVE + self.workers],
                     words[OFF_LOOP:OFF_LOOP + self.workers * OFF_LOOP_SLOTS]):
            if ((held != 0) & (held < mark)).any():
                return False
        return True

    def quiescent(self, index: int) -> None:
        """Worker ``index`` is gone: it holds nothing."""
        self.words[ACTIVE + index] = 0
        start = off_loop(index)
        self.words[start:start + OFF_LOOP_SLOTS] = 0

    def written(self) -> int:
        """In-place writes of all workers so far (a dead worker's count stays)."""
        return int(self.words[WRITES:WRITES + self.workers].sum())

    def counts(self, index: int) -> dict[str, int]:
        """The fast-path READs and WRITEs worker ``index`` ran so far."""
        return {"reads": int(self.words[READS + index]),
                "writes": int(self.words[WRITES + index])}

    def close(self) -> None:
        """Close the memfd."""
        self.shared.close()
