"""vmblock.cache: the flash-cache directory (grouped S3-FIFO), eviction groups and trace replay.

``CacheDirectory`` keeps which capacity-tier blocks live in which flash slot; its per-block work
runs in ``vmblock.native.cache`` kernels over preallocated numpy arrays, in batches, and it is
the only caller of those kernels. ``flash.FlashCache`` is the cache in the data path (the
directory, its lock and the flash slots); the trace replayer (``tools/replay.py``) drives the
very same directory.
"""

from .directory import COUNTERS, DEFAULT_BLOCK_SIZE, CacheDirectory
from .groups import GroupSpec, parse_group, validate_groups
from .params import S3FIFO_DEFAULTS, parse_params

__all__ = ["COUNTERS", "DEFAULT_BLOCK_SIZE", "CacheDirectory", "GroupSpec", "parse_group",
           "validate_groups", "S3FIFO_DEFAULTS", "parse_params"]
