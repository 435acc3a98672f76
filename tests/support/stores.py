"""Reading a vdisk through its store in-process, for the store tests."""

from __future__ import annotations


def store_of(pool, name: str = "d1"):
    """The ``ExtentStore`` of vdisk ``name`` of an open ``Pool``."""
    return pool.open_store(pool.vdisk(name))


def read(store, off: int, n: int) -> bytes:
    """``n`` bytes of ``store`` from byte ``off``."""
    buf = bytearray(n)
    store.read_into(off, memoryview(buf))
    return bytes(buf)


def small_pool(path, config: dict[str, str], vdisks: dict[str, int]):
    """A new pool at ``path`` with ``config`` set (applied by reopening it), VM ``vm1`` and its
    thin ``vdisks`` (name -> size in bytes), open."""
    from vmblock.meta import Pool     # the pool brings the store (numpy, Numba) only here

    pool = Pool(str(path), create=True)
    for key, value in config.items():
        pool.config_set(key, value)
    pool.close()
    pool = Pool(str(path))
    pool.create_vm("vm1")
    for name, size in vdisks.items():
        pool.create_vdisk(name, size, vm="vm1")
    return pool
