"""cache.size 'auto' (the default): no flash cache when the flash tier shares a device with the
capacity tier (the embedded pool: two files in one directory), 50% of the flash tier when the
flash tier is elsewhere (here a file on /dev/shm, a tmpfs); a number always wins."""

from __future__ import annotations

import os
import uuid

import pytest

from vmblock.meta import Pool
from vmblock.server import open_cache, same_device
from vmblock.settings import AUTO_CACHE_FRACTION, CacheSize, Settings

SHM = "/dev/shm"


@pytest.fixture
def shm_file():
    if not os.path.isdir(SHM):
        pytest.skip("needs /dev/shm")
    path = os.path.join(SHM, f"vmblock-test-flash-{uuid.uuid4().hex}")
    try:
        yield path
    finally:
        if os.path.exists(path):
            os.unlink(path)


def test_default_is_auto_at_the_auto_fraction():
    size = Settings({}).get("cache.size")
    assert size == CacheSize("auto", fraction=AUTO_CACHE_FRACTION, auto=True)
    assert size.of(1 << 30) == int((1 << 30) * AUTO_CACHE_FRACTION)   # the flash split


def test_embedded_pool_has_no_cache_by_default(tmp_path):
    pool = Pool(str(tmp_path / "pool"), create=True)
    try:
        store = pool.store
        assert same_device(store.capacity.fd, store.flash.fd)
        assert open_cache(pool, pool.settings()) is None
    finally:
        pool.close()


def test_a_number_turns_the_cache_on_even_on_one_device(tmp_path):
    pool = Pool(str(tmp_path / "pool"), create=True)
    pool.config_set("cache.size", "50%")
    try:
        cache = open_cache(pool, pool.settings())
        assert cache is not None and cache.nslots == pool.store.cache_bytes // cache.bs
    finally:
        pool.close()


def test_flash_on_another_device_gets_the_cache_by_default(tmp_path, shm_file):
    made = Pool(str(tmp_path / "pool"), create=True)
    made.config_set("store.flash_path", shm_file)
    made.config_set("store.flash_size", "16M")
    made.close()
    pool = Pool(str(tmp_path / "pool"))
    try:
        store = pool.store
        assert not same_device(store.capacity.fd, store.flash.fd)
        cache = open_cache(pool, pool.settings())
        assert cache is not None
        assert cache.nslots * cache.bs == int(16 * (1 << 20) * AUTO_CACHE_FRACTION)
    finally:
        pool.close()
