#!/usr/bin/env python3
"""``vmblock serve`` for tools/crashtest, with a move-step hook installed in the server.

usage: tools/serve_with_move_race.py POOL HOST:PORT RACE_BYTES

Exactly ``vmblock --pool POOL serve --portal HOST:PORT``, except that each step of a ``vdisk
move`` that moves AUs among the first RACE_BYTES of the vdisk waits, between its copy and its
remap, until a writer has rewritten one of them (the write went round the step's bias to the
new tier: the race a move must survive happens for sure, at any machine speed), or gives up
after AWAIT_TIMEOUT seconds (the cycle then has no such race; a kill may come first anyway).
"""

from __future__ import annotations

import logging
import os
import sys
import time

from vmblock import server
from vmblock.settings import parse_portal
from vmblock.meta import Pool
from vmblock.meta.pool import OWNER_ONLY_UMASK
from vmblock.store.pool_store import PoolStore

log = logging.getLogger("vmblock")

AWAIT_TIMEOUT = 60.0
POLL = 0.001


class AwaitWrite:
    """The move-step hook: block until one of the step's vAUs below ``end`` bytes no longer
    points at its old AU. Steps with no vAU there go on at once."""

    def __init__(self, store: PoolStore, end: int):
        self.store = store
        self.end = end

    def __call__(self, mid, vaus, old_aus) -> None:
        sel = vaus * self.store.au < self.end
        if not sel.any():
            return
        vaus, old_aus = vaus[sel], old_aus[sel]
        deadline = time.monotonic() + AWAIT_TIMEOUT
        while time.monotonic() < deadline:
            with self.store.lock:
                live = self.store.live
                if mid not in live.maps or (live.lookup_many(mid, vaus) != old_aus).any():
                    return
            time.sleep(POLL)
        log.warning("no write landed in the moving AUs of map %d within %.0f s", mid,
                    AWAIT_TIMEOUT)


def main() -> None:
    pool_dir, portal, race_bytes = sys.argv[1], sys.argv[2], int(sys.argv[3])
    os.umask(OWNER_ONLY_UMASK)
    pool = Pool(pool_dir, create=True)
    try:
        pool.store.mover.move_step_hook = AwaitWrite(pool.store, race_bytes)
        listen = [parse_portal(portal)]
    except BaseException:
        pool.close()
        raise
    server.serve(pool, listen)


if __name__ == "__main__":
    main()
