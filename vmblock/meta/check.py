"""The pool check (``vmblock pool check``): the model's records against each other, then the
extent store's keys against the records.

The records part is here; the store part (map keys against the records, the tiers and the
reference counts) is ``PoolStore.check`` (``vmblock.store.fsck``), which this hands the maps the
records name and how they are related. One function of an open ``Pool``, which ``Pool.check``
calls.
"""

from __future__ import annotations


def check_pool(pool) -> dict:
    """Records against each other (name and LUN indexes, owners, map ids used once), then
    every extent-map key against the records, the tier and the in-memory refcounts; returns
    the store's report with the record errors first, ``ok`` and the counts."""
    errors: list[str] = []
    vdisks = pool.vdisks()
    snaps = pool.snapshots()
    maps_info: dict[int, dict] = {}
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        while parent.get(x, x) != x:
            x = parent[x]
        return x

    def union(a: int, b: int) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    for d in vdisks:
        if d.map_id in maps_info:
            errors.append(f"vdisk {d.name}: map id {d.map_id} is used twice")
        maps_info[d.map_id] = {"what": f"vdisk {d.name}", "size_bytes": d.size_bytes,
                               "live": True}
        if pool.record(f"vdiskname/{d.name}") != d.uuid:
            errors.append(f"vdisk {d.name}: name index does not point at it")
        if pool.record(f"lun/{d.target}/{d.lun:05d}") != d.uuid:
            errors.append(f"vdisk {d.name}: LUN {d.lun} of {d.target} is not it")
        if d.vm and pool.record(f"vm/{d.vm}") is None:
            errors.append(f"vdisk {d.name}: owner VM {d.vm} does not exist")
        if d.parent:
            union(d.map_id, d.parent["map_id"])
    for s in snaps:
        if pool.record(f"snapname/{s.scope}/{s.name}") != s.uuid:
            errors.append(f"snapshot {s.name}: name index does not point at it")
        for e in s.disks:
            if e["map_id"] in maps_info:
                errors.append(f"snapshot {s.name}: map id {e['map_id']} is used twice")
            maps_info[e["map_id"]] = {"what": f"snapshot {s.name} of {e['name']}",
                                      "size_bytes": e["size_bytes"], "live": False}
            union(e["map_id"], e["src_map"])
    for iqn in [t.iqn for t in pool.targets()]:
        for lun, uid in pool.luns(iqn).items():
            if pool.record(f"vdisk/{uid}") is None:
                errors.append(f"LUN {lun} of {iqn} points at a missing vdisk")
    # maps EXTENDED COPY made share AUs (LUNs of one target) are one family, as a lineage
    for a, b in pool.store.copy_pairs():
        union(a, b)
    result = pool.store.check(maps_info, {m: find(m) for m in maps_info})
    result["errors"] = errors + result["errors"]
    result["ok"] = not result["errors"]
    result["vdisks"] = len(vdisks)
    result["snapshots"] = len(snaps)
    return result
