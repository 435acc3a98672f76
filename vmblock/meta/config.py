"""The pool's config keys (``config/<dotted.key>``): read, set and unset, each change checked.

``vmblock.settings`` is the typed table of every key (type, default, parser, the checks across
keys); this module stores the keys of one pool and checks a change before it is written: the
key alone, the tier it places or sizes (a tier holding data is not moved, a size must fit its
file system), then the whole set with ``check_settings``, which adds the fabric's negotiation
rules. ``settings`` is the one place the stored keys and the process's overrides are merged.

Functions of an open ``Pool`` (its records, its overrides, its store for the tier check);
``Pool.config*`` and ``Pool.settings`` delegate here, so callers hold only the pool.
"""

from __future__ import annotations

import os

from vmblock.errors import InvalidArgument, NotFound
from vmblock.iscsi.params import validate_offer
from vmblock.settings import TABLE, Settings, check_key
from vmblock.units import format_size

# The keys that size or place a tier: a change must fit the file system (and the path keys
# must not move a tier that holds data).
TIER_PATH_KEYS = ("store.capacity_path", "store.flash_path")
TIER_KEYS = TIER_PATH_KEYS + ("store.capacity_size", "store.flash_size")


def check_settings(settings: Settings) -> None:
    """Check a whole set a server would run with, wherever it came from (pool, --config file,
    a key an older vmblock stored): the fabric's negotiation table first (vmblock.settings
    names those keys but leaves their rules to the fabric), then the checks across keys of
    vmblock.settings (cache against the flash tier, fabric limits, CHAP credentials)."""
    try:
        validate_offer(settings.negotiation())
    except ValueError as e:
        raise InvalidArgument(f"bad iSCSI negotiation setting: {e}") from None
    settings.check()


def tier_path(pool_path: str, tier: str, path: str) -> str:
    """Where a tier lives: its ``store.<tier>_path`` setting, else ``<pool>/<tier>``."""
    return path or os.path.join(pool_path, tier)


def config(pool) -> dict[str, str]:
    """The config keys stored in the pool, as strings (``settings()`` adds --config)."""
    return dict(pool.records("config/"))


def settings(pool) -> Settings:
    """The pool's config keys overridden by ``pool.overrides`` (serve --config) for this
    process: the one place the two are merged. Not checked as a whole (the server does
    that with ``check_settings`` when it starts); ``get`` parses one key."""
    return Settings(config(pool)).overlay(pool.overrides)


def config_get(pool, key: str) -> str:
    """One stored key's value; NotFound when it is not set (its default applies)."""
    value = pool.record(f"config/{key}")
    if value is None:
        raise NotFound(f"config key {key!r} is not set")
    return value


def config_set(pool, key: str, value: str) -> None:
    """Store ``key``: checked alone, against the tiers, then with the pool's other keys."""
    check_key(key, value)
    _check_tier_change(pool, key, value)
    try:
        check_settings(Settings(config(pool)).overlay({key: value}))
    except InvalidArgument as e:
        shown = "" if key.endswith("secret") else f" to {value!r}"   # never echo a secret
        raise InvalidArgument(f"cannot set {key}{shown}: {e}") from None
    pool.write_records({f"config/{key}": value})


def _check_tier_change(pool, key: str, value: str) -> None:
    """For the keys that place or size a tier: ``value`` must not move a tier that holds
    data, and the tier must fit its file system."""
    if key in TIER_PATH_KEYS:
        _check_tier_swap(pool, key, value)
    if key in TIER_KEYS:
        _check_tier_fits(pool, key, value)


def _check_tier_swap(pool, key: str, value: str) -> None:
    """A tier holding AUs cannot be pointed at another file or device: its data would be
    gone at the next start."""
    tier = key[len("store."):-len("_path")]
    if value == pool.settings().get(key):
        return
    used = pool.store.usage()["tiers"][tier]["used_bytes"]
    if used:
        raise InvalidArgument(f"{key} cannot change while the {tier} tier holds data "
                              f"({used} bytes in use)")


def _check_tier_fits(pool, key: str, value: str) -> None:
    """A file tier's size must fit its file system (ext4 with 4 KiB blocks stops 4 KiB short
    of 16 TiB): try it on a sparse file beside the tier, as the next start would."""
    tier = key[len("store."):key.rindex("_")]
    settings = pool.settings().overlay({key: value})
    path = tier_path(pool.path, tier, settings.get(f"store.{tier}_path"))
    if os.path.exists(path) and not os.path.isfile(path):
        return      # a block device: its size is the device's
    size = settings.get(f"store.{tier}_size")
    probe = os.path.join(os.path.dirname(path), f".{tier}-size-probe")
    try:
        fd = os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise InvalidArgument(f"cannot set {key}: cannot create files in "
                              f"{os.path.dirname(path)}: {e.strerror}") from None
    try:
        os.ftruncate(fd, size)
    except OSError as e:
        raise InvalidArgument(f"cannot set {key}: the {tier} tier cannot be "
                              f"{format_size(size)} on the file system of {path}: "
                              f"{e.strerror}") from None
    finally:
        os.close(fd)
        os.unlink(probe)


def config_unset(pool, key: str) -> None:
    """Remove a key; refused when its default would not go with the keys still set
    (e.g. the default FirstBurstLength over a MaxBurstLength set lower)."""
    config_get(pool, key)
    rest = {k: v for k, v in config(pool).items() if k != key}
    try:
        check_settings(Settings(rest))
    except InvalidArgument as e:
        raise InvalidArgument(f"cannot unset {key}: {e}") from None
    if key in TIER_KEYS:
        _check_tier_change(pool, key, TABLE[key].default)
    pool.write_records({}, [f"config/{key}"])
