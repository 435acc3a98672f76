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
