"""The live extent maps of a pool's vdisks: vAU -> global AU arrays, their sizes, their tiers."""

from __future__ import annotations

import errno

import numpy as np

from vmblock.native import extent as extent_kernels
from vmblock.store.alloc import Allocator
from vmblock.store.layout import TIER_CAPACITY, TIER_NAMES, n_vaus, scan_maps


class LiveMaps:
    """Every live map (a dense ``uint32`` array vAU -> global AU, see ``vmblock.native.extent``)
    by map id, each vdisk's size, and the tier its new allocations go to.

    The dicts are never replaced, only changed under the store lock; a map array is replaced
    whole (resize, revert), so a reader that got it keeps a consistent view.
    """

    def __init__(self, db, space: Allocator):
        self.db = db
        self.space = space
        self.au = space.au
        self.maps: dict[int, np.ndarray] = {}
        self.sizes: dict[int, int] = {}
        # new allocations of a live map go to its vdisk's tier (TIER_CAPACITY when absent)
        self.tiers: dict[int, int] = {}

    def load(self, live: dict[int, int], mids: np.ndarray, vaus: np.ndarray,
             paus: np.ndarray) -> None:
        """Build the live maps ``live`` (map id -> size) from every map key (global AUs)."""
        for mid, size in live.items():
            amap = extent_kernels.new_map(n_vaus(size, self.au))
            sel = mids == mid
            v, p = vaus[sel], paus[sel]
            keep = v < len(amap)
            amap[v[keep]] = p[keep]
            self.maps[mid] = amap
            self.sizes[mid] = size

    def get(self, mid: int) -> np.ndarray:
        """The live map ``mid``; ENODEV when its vdisk was deleted under a command already
        dispatched."""
        amap = self.maps.get(mid)
        if amap is None:
            raise OSError(errno.ENODEV, f"extent map {mid} is gone")
        return amap

    def tier(self, mid: int) -> int:
        """The tier new AUs of map ``mid`` come from."""
        return self.tiers.get(mid, TIER_CAPACITY)

    def scan(self, mid: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(map ids, vAUs, global physical AUs) of the meta DB's map keys."""
        mids, vaus, file_aus, tiers = scan_maps(self.db, mid)
        return mids, vaus, self.space.global_aus(file_aus, tiers)

    def entries(self, mid: int) -> tuple[np.ndarray, np.ndarray]:
        """(vAUs, physical AUs) of one map: the live array if it is live, else the DB."""
        amap = self.maps.get(mid)
        if amap is not None:
            v = np.flatnonzero(amap != extent_kernels.UNMAPPED)
            return v.astype(np.uint32), amap[v].copy()
        _, v, p = self.scan(mid)
        return v, p

    def used_bytes(self, mid: int) -> int:
        """Bytes the live map ``mid`` has mapped (0 when it is not live)."""
        amap = self.maps.get(mid)
        return 0 if amap is None else extent_kernels.count_mapped(amap) * self.au

    def tier_bytes(self, mid: int) -> dict[str, int]:
        """Bytes a live map holds on each tier."""
        amap = self.maps.get(mid)
        if amap is None:
            return {name: 0 for name in TIER_NAMES}
        mapped = amap != extent_kernels.UNMAPPED
        fl = int(np.count_nonzero(mapped & (amap >= self.space.ncap)))
        return {"capacity": (int(np.count_nonzero(mapped)) - fl) * self.au,
                "flash": fl * self.au}
