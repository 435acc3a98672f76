"""The owner's write hook (``WatchedStore``: one range check after each write, WRITE SAME and
UNMAP) on a real pool's store, the thresholds from a PV's ranges, and the debounce on a real
event loop (no timers waited for: delay 0, the loop run until the callbacks ran)."""

from __future__ import annotations

import asyncio

from support.stores import small_pool

from vmblock.datastore.lvm import LABEL_SCAN_BYTES
from vmblock.datastore.watch import NOTHING_ABOVE, Debounce, WatchedStore, thresholds

MiB = 1 << 20


def test_thresholds_cover_the_label_and_both_metadata_areas():
    size = 64 * MiB
    assert thresholds([], size) == (LABEL_SCAN_BYTES, NOTHING_ABOVE)
    ranges = [(0, LABEL_SCAN_BYTES), (4096, MiB - 4096), (size - MiB, MiB)]
    assert thresholds(ranges, size) == (MiB, size - MiB)


def test_writes_in_watched_ranges_are_seen_others_not(tmp_path):
    pool = small_pool(tmp_path / "p", {}, {"d1": 8 * MiB})
    try:
        disk = pool.vdisk("d1")
        seen = []
        store = WatchedStore(pool.store, disk.map_id, disk.block_size,
                             lambda: seen.append(1))
        block = memoryview(bytes(512))
        store.write(4 * MiB, block)                         # data: not watched
        assert seen == []
        store.write(512, block)                             # a label sector
        assert len(seen) == 1
        store.watch_low, store.watch_high = MiB, 7 * MiB
        store.write(MiB - 512, memoryview(bytes(1024)))     # starts in the first area
        store.write_same(7 * MiB - 512, 1024, block)        # ends in the last one
        store.unmap(0, MiB)                                 # a wiped label
        assert len(seen) == 4
        store.write(2 * MiB, block)
        store.unmap(3 * MiB, MiB)
        assert len(seen) == 4
    finally:
        pool.close()


def test_a_burst_of_touches_fires_once_per_key():
    fired = []

    async def main():
        loop = asyncio.get_running_loop()
        d = Debounce(loop, 0.0, fired.append)
        for _ in range(3):
            d.touch("a")
        d.touch("b")
        d.touch("c")
        while len(fired) < 3:
            await asyncio.sleep(0)
        d.touch("a")            # armed after the close: ignored
        d.close()
        for _ in range(5):
            await asyncio.sleep(0)
    asyncio.run(main())
    assert sorted(fired) == ["a", "b", "c"]
