"""Per-vdisk statistics counted at one point of the data path (docs/stats.md).

``layout`` names the columns of a stats row and the latency buckets, ``rows`` resolves an LU
(and an LBA within it) to a stats row, ``arena`` keeps the counters of every process in shared
memory, ``recorder`` is what the iSCSI fabric calls once per command, and ``figures`` turns
counter rows into the numbers people read (rates, percentiles, the latency split).
"""
