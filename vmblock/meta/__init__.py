"""The meta database and the one model tree (pool -> target, vm -> vdisk) on top of it.

``Pool`` is imported on first use (PEP 562): it brings the extent store and with it numpy and
Numba, which a CLI command that only talks to a running server never needs (a third of a
second of its start).
"""

from vmblock.meta.model import Target, Vdisk, Vm

__all__ = ["Pool", "Target", "Vdisk", "Vm"]


def __getattr__(name: str):
    """``vmblock.meta.Pool``, imported when first asked for."""
    if name == "Pool":
        from vmblock.meta.pool import Pool
        return Pool
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
