"""The meta database and the one model tree (pool -> target, vm -> vdisk) on top of it."""

from vmblock.meta.model import Target, Vdisk, Vm
from vmblock.meta.pool import Pool

__all__ = ["Pool", "Target", "Vdisk", "Vm"]
