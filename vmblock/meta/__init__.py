"""The meta database and the one model tree (pool -> target, vm -> vdisk) on top of it.

``Pool`` is imported on first use (PEP 562): it brings RocksDB and the model modules, which a
CLI command that only talks to a running server never needs. The extent store, and with it
numpy and Numba (a third of a second of a start), ``Pool`` imports only when it opens it
(``Pool.store``), which the listing verbs do not (``vmblock.store.census``).
"""

from vmblock.meta.model import Target, Vdisk, Vm

__all__ = ["Pool", "Target", "Vdisk", "Vm"]


def __getattr__(name: str):
    """``vmblock.meta.Pool``, imported when first asked for."""
    if name == "Pool":
        from vmblock.meta.pool import Pool
        return Pool
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
