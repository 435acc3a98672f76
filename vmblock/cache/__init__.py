"""vmblock.cache: the flash-cache directory (grouped S3-FIFO), eviction groups and trace replay.

``CacheDirectory`` keeps which capacity-tier blocks live in which flash slot; its per-block work
runs in ``vmblock.native.cache`` kernels over preallocated numpy arrays, in batches, and it is
the only caller of those kernels. ``flash.FlashCache`` is the cache in the data path (the
directory, its lock and the flash slots); the trace replayer (``tools/replay.py``) drives the
very same directory.

The directory's names are imported on first use (PEP 562): the directory brings the Numba
kernels, which the eviction-group model (``vmblock.meta.groups``, reading ``groups``) and the
listing verbs on a pool no server runs never need.
"""

from .groups import GroupSpec, parse_group, validate_groups
from .params import S3FIFO_DEFAULTS, parse_params

__all__ = ["COUNTERS", "DEFAULT_BLOCK_SIZE", "CacheDirectory", "GroupSpec", "parse_group",
           "validate_groups", "S3FIFO_DEFAULTS", "parse_params"]
_DIRECTORY = ("COUNTERS", "DEFAULT_BLOCK_SIZE", "CacheDirectory")


def __getattr__(name: str):
    """``COUNTERS``, ``DEFAULT_BLOCK_SIZE`` and ``CacheDirectory``, imported when first asked
    for."""
    if name in _DIRECTORY:
        from . import directory
        return getattr(directory, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
