"""The meta database and the one model tree (pool -> target, vm -> vdisk) on top of it."""

from vmblock.meta.pool import Pool, Target, Vdisk, Vm

__all__ = ["Pool", "Target", "Vdisk", "Vm"]
