"""Checking the extent store: every map leaf against the records and the in-memory state."""

from __future__ import annotations

import numpy as np

from vmblock.native import extent as extent_kernels
from vmblock.store.census import LeafCensus
from vmblock.store.commit import Committer
from vmblock.store.layout import TIER_CAPACITY, TIER_FLASH, TIER_NAMES, n_vaus, scan_maps
from vmblock.store.move import TierMover


def check_store(committer: Committer, mover: TierMover, maps_info: dict[int, dict],
          families: dict[int, int]) -> dict:
    """Check every mapping of the meta DB's leaves against the records and the in-memory
    state (live maps, their mapped counts, reference counts, space accounting), and the
    bytes each live map uses as ``census`` counts them from the keys (what listings without
    a server show) against the map's.

    ``maps_info``: map id -> {"what": description, "size_bytes": n, "live": bool};
    ``families``: map id -> lineage family id (maps that may share AUs have the same one).
    """
    space = committer.space
    errors: list[str] = []
    with mover.step_lock, committer.flush_lock:
        committer.commit()
        with committer.lock:
            mids, vaus, file_aus, tiers = scan_maps(committer.db)
            refcount = space.refs().copy()
            held = space.held.copy()
            live = {m: committer.live.entries(m) for m in committer.live.maps}
            counts = {m: (n, extent_kernels.count_mapped(committer.live.maps[m],
                                                          committer.live.leaves))
                      for m, n in committer.live.mapped.items()}
            t_free, t_used = list(space.t_free), list(space.t_used)
        # what listings without a server show; the keys change only under the flush lock, so
        # they are read again as scan_maps read them, without holding up the data path
        census = LeafCensus(committer.db, space.au)
    n = space.n_aus
    ncap = space.ncap
    known = np.array(sorted(maps_info), dtype=np.int64)
    orphan = ~np.isin(mids, known)
    if orphan.any():
        errors.append(f"{int(orphan.sum())} map entries belong to no vdisk or snapshot "
                      f"(map ids {sorted(set(mids[orphan].tolist()))[:8]})")
    on_cap = tiers == TIER_CAPACITY
    on_flash = tiers == TIER_FLASH
    bad_tier = ~(on_cap | on_flash)
    if bad_tier.any():
        errors.append(f"{int(bad_tier.sum())} map keys name an unknown tier")
    out = bad_tier | (on_cap & (file_aus >= ncap))
    if (on_cap & (file_aus >= ncap)).any():
        errors.append(f"{int((on_cap & (file_aus >= ncap)).sum())} map keys point past "
                      f"the capacity tier ({ncap} AUs)")
    fl_out = on_flash & ((file_aus < space.flash_lo) | (file_aus >= space.flash.n_aus))
    if fl_out.any():
        errors.append(f"{int(fl_out.sum())} map keys point outside the flash tier's AU "
                      f"region (AUs {space.flash_lo}-{space.flash.n_aus - 1}; the cache "
                      f"slots are below)")
    out |= fl_out
    paus = file_aus.astype(np.int64)
    paus[on_flash] += space.fshift
    paus = np.where(out, 0, paus).astype(np.uint32)
    for mid, info in maps_info.items():
        sel = mids == mid
        limit = n_vaus(info["size_bytes"], space.au)
        beyond = vaus[sel] >= limit
        if beyond.any():
            errors.append(f"{info['what']}: {int(beyond.sum())} extents beyond its size")
        # one AU may be mapped at several vAUs of one map: EXTENDED COPY inside one LUN shares
        # it (the reference count counts each mapping)
        p = paus[sel]
        if info.get("live"):
            got = live.get(mid)
            keep = vaus[sel] < limit
            if got is None or not np.array_equal(got[0], vaus[sel][keep]) \
                    or not np.array_equal(got[1], p[keep]):
                errors.append(f"{info['what']}: in-memory map differs from the meta DB")
            elif counts.get(mid, (0, 0))[0] != counts.get(mid, (0, 0))[1]:
                errors.append(f"{info['what']}: {counts[mid][0]} vAUs counted as mapped, "
                              f"{counts[mid][1]} are")
            else:
                nf = int(np.count_nonzero(got[1] >= ncap))
                mapped = {TIER_NAMES[TIER_CAPACITY]: (len(got[1]) - nf) * space.au,
                          TIER_NAMES[TIER_FLASH]: nf * space.au}
                shown = census.tier_bytes(mid, info["size_bytes"])
                if shown != mapped:
                    errors.append(f"{info['what']}: the leaf keys count {shown} bytes used "
                                  f"(what listings without a server show), the map {mapped}")
    ok = ~orphan & ~out
    rebuilt = np.zeros(n, dtype=np.int64)
    np.add.at(rebuilt, paus[ok].astype(np.int64), 1)
    diff = np.flatnonzero(rebuilt != refcount.astype(np.int64))
    if len(diff):
        errors.append(f"{len(diff)} AUs have a reference count that differs from their "
                      f"references (e.g. AU {int(diff[0])}: {int(refcount[diff[0]])} vs "
                      f"{int(rebuilt[diff[0]])})")
    bad_held = np.flatnonzero(held.astype(bool) & (rebuilt > 0))
    if len(bad_held):
        errors.append(f"{len(bad_held)} AUs are both referenced and held as freed")
    in_use = int(np.count_nonzero(rebuilt))
    per_tier = {}
    for t, (lo, hi) in enumerate(space.bounds):
        used_t = int(np.count_nonzero(rebuilt[lo:hi]))
        held_t = int(np.count_nonzero(held[lo:hi]))
        per_tier[TIER_NAMES[t]] = {"aus": hi - lo, "used_aus": used_t, "held_aus": held_t}
        if used_t != t_used[t] or t_free[t] + t_used[t] + held_t != hi - lo:
            errors.append(f"space accounting on the {TIER_NAMES[t]} tier: {t_used[t]} "
                          f"used + {t_free[t]} free + {held_t} held != {hi - lo} AUs, or "
                          f"{used_t} referenced != {t_used[t]} used (leak)")
    # sharing only inside one lineage family: no AU of one VM readable from an unrelated one
    fam = np.array([families.get(int(m), -1 - int(m)) for m in mids[ok]], dtype=np.int64)
    order = np.argsort(paus[ok], kind="stable")
    sp, sf = paus[ok][order], fam[order]
    same = sp[1:] == sp[:-1]
    cross = same & (sf[1:] != sf[:-1])
    if cross.any():
        errors.append(f"{int(cross.sum())} AUs are shared between maps with no common "
                      f"lineage (e.g. AU {int(sp[1:][cross][0])})")
    return {
        "ok": not errors,
        "errors": errors,
        "maps": len(maps_info),
        "extents": int(len(mids)),
        "aus": n,
        "used_aus": in_use,
        "shared_aus": int(np.count_nonzero(rebuilt > 1)),
        "held_aus": int(np.count_nonzero(held)),
        "tiers": per_tier,
    }
