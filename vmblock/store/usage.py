"""The extent store's usage report (``pool show``'s ``store``)."""

from __future__ import annotations

import numpy as np

from vmblock.store.commit import Committer


def usage_report(committer: Committer) -> dict:
    """The capacity tier at the top level (as before flash-tier AUs existed), each tier's
    AUs under ``tiers``."""
    space = committer.space
    au = space.au
    with committer.lock:
        refs = space.refs()
        held = [int(np.count_nonzero(space.held[lo:hi])) for lo, hi in space.bounds]
        tiers = {}
        for t, tier in enumerate((space.capacity, space.flash)):
            lo, hi = space.bounds[t]
            tiers[tier.name] = {
                "path": tier.path, "size_bytes": tier.size_bytes, "au_count": tier.n_aus,
                "device": not tier.is_file,
                "au_bytes": (hi - lo) * au,          # room for AUs of the extent store
                "used_bytes": space.t_used[t] * au, "free_bytes": space.t_free[t] * au,
                "held_bytes": held[t] * au,
                "used_pct": round(space.used_pct(t), 2),
                "shared_aus": int(np.count_nonzero(refs[lo:hi] > 1)),
            }
        tiers["flash"]["cache_bytes"] = space.cache_bytes
        tiers["flash"]["au_offset_bytes"] = space.flash_lo * au
        return {
            "au_size": au,
            "capacity_bytes": space.capacity.size_bytes,
            "used_bytes": space.t_used[0] * au,
            "free_bytes": space.t_free[0] * au,
            "held_bytes": held[0] * au,
            "used_pct": round(space.used_pct(0), 2),
            "shared_aus": int(np.count_nonzero(refs > 1)),
            "pending_keys": len(committer.pending),
            "tiers": tiers,
        }
