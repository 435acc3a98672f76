"""Settings: size strings, portals, the pool's flat config keys and the TOML file of ``serve``.

There is one key space. ``vmblock config set KEY VALUE`` stores a key in the pool; a TOML file
given to ``serve --config`` is flattened into the same dotted keys and overrides the pool for that
run only; ``--portal`` overrides both. Every key is checked here, once, whichever way it came in.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib

from vmblock import DEFAULT_PORTAL
from vmblock.errors import InvalidArgument
from vmblock.iscsi import params

_SIZE_RE = re.compile(r"^\s*(\d{1,20})\s*([kmgtp]?)(i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}

# RFC 3720 3.2.6.3.1, RFC 7143 4.2.7: iqn.YYYY-MM.reversed.domain[:anything], eui.<16 hex>,
# naa.<16|32 hex>
_IQN_RE = re.compile(r"^(iqn\.\d{4}-\d{2}\.[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?(?::[^\s,]+)?"
                     r"|eui\.[0-9a-f]{16}|naa\.(?:[0-9a-f]{16}|[0-9a-f]{32}))$")

_CHAP_FIELDS = ("chap_user", "chap_secret", "mutual_user", "mutual_secret")
# CHAP over a channel without IPsec is open to an offline dictionary attack on what one login
# exchange shows (RFC 7143 9.2.1): refuse secrets shorter than 96 bits, the least the Microsoft
# initiator accepts there.
MIN_CHAP_SECRET_BYTES = 12
# libiscsi's iscsi:// URL, which QEMU's iscsi driver parses too, takes CHAP credentials as
# user%secret@ and decodes neither part: it cuts the URL at the first '?', the credentials at the
# first '@' and the user at the first '%'. Credentials with these characters could not be written
# into a vdisk's URL.
_URL_UNSAFE = {"chap_user": "%@?", "chap_secret": "@?"}
# What pools created from now on store: every new target gets random CHAP credentials.
NEW_TARGET_CHAP_KEY = "auth.new_target_chap"

# The largest sizes the pool describes (vmblock.store.extent keeps its tables in RAM, dense, at
# one 64 KiB allocation unit per entry). A vdisk's extent map takes 4 bytes per AU and every
# process that opens the pool builds it: 4 TiB costs 256 MiB. A tier takes 5 bytes per AU
# (reference count and hold flag): 16 TiB costs 1.25 GiB, and both tiers' AU numbers stay far
# inside the 32 bits the maps store.
MAX_VDISK_BYTES = 4 << 40
MAX_TIER_BYTES = 16 << 40


def _shown(text: str, limit: int = 40) -> str:
    """``text`` for an error message, cut short so a huge value cannot flood it."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def format_size(n: int) -> str:
    for unit, shift in (("PiB", 50), ("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} bytes"


def parse_size(text: str | int, what: str = "size", limit: int | None = None) -> int:
    """Bytes from '512M', '1G', '8GiB', '1T' or a plain number; K/M/G/T/P are powers of 1024.
    Over ``limit`` is refused, naming the value as ``what``."""
    if isinstance(text, bool) or not isinstance(text, (str, int)):
        raise InvalidArgument(f"{what} must be a size such as 1G or a number of bytes, "
                              f"not {type(text).__name__}")
    if isinstance(text, int):
        n = text
    else:
        m = _SIZE_RE.match(text)
        if not m:
            raise InvalidArgument(f"bad {what} {_shown(text)} (use e.g. 512M, 1G, 8GiB, 1T)")
        n = int(m.group(1)) * _UNITS[m.group(2).lower()]
    if limit is not None and n > limit:
        raise InvalidArgument(f"{what} {_shown(str(text))} is over the largest the pool "
                              f"describes, {format_size(limit)}")
    return n


def parse_portal(text: str) -> tuple[str, int]:
    """('host', port) from 'HOST:PORT', '[v6]:PORT' or a bare host (port 3260)."""
    text = text.strip()
    host, port = text, "3260"
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise InvalidArgument(f"bad portal {text!r}")
        host, rest = text[1:end], text[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise InvalidArgument(f"bad portal {text!r}")
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InvalidArgument(f"bad portal {text!r} (use HOST:PORT)")
    return host, int(port)


def format_portal(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_portals(text: str) -> list[tuple[str, int]]:
    portals = [parse_portal(p) for p in text.split(",") if p.strip()]
    if not portals:
        raise InvalidArgument("portal list is empty")
    return portals


def check_iqn(name: str) -> str:
    if not _IQN_RE.match(name):
        raise InvalidArgument(f"bad iSCSI name {name!r} (expected iqn.YYYY-MM.domain:id)")
    return name


def parse_iqn_list(text: str) -> list[str]:
    return [check_iqn(p.strip()) for p in text.split(",") if p.strip()]


# The longest interval a seconds key takes: a day (an infinite or huge one would overflow the
# event loop's timer when the server starts).
MAX_SECONDS = 86400


def _nonneg_float(key: str, value: str) -> None:
    try:
        ok = 0 <= float(value) <= MAX_SECONDS
    except ValueError:
        ok = False
    if not ok:
        raise InvalidArgument(f"{key} must be a number of seconds from 0 to {MAX_SECONDS}, "
                              f"not {_shown(value)}")


# The fabric's limits (vmblock.iscsi.portal.IscsiConfig): what initiators, hostile or broken,
# can hold of the server. Connections: all of them, per source address, and how many may be
# still logging in (the rest is headroom for logged-in sessions); seconds until the first
# Login Request and until login must be done; bytes of initiator data held (immediate data,
# Data-Out buffers, READ data not yet taken by the initiator), all together and per address.
FABRIC_DEFAULTS = {
    "max_connections": "256",
    "max_connections_per_host": "64",
    "max_login_connections": "64",
    "first_pdu_timeout": "5",
    "login_timeout": "30",
    "data_budget": "256M",
    "data_budget_per_host": "64M",
}
MIN_DATA_BUDGET = 16 << 20      # the largest single command's data (FirstBurstLength) must fit


def _check_fabric_key(name: str, value: str) -> None:
    key = f"iscsi.{name}"
    if name.endswith("_timeout"):
        try:
            ok = 0 < float(value) <= 3600
        except ValueError:
            ok = False
        if not ok:
            raise InvalidArgument(f"{key} must be a number of seconds above 0 (at most 3600), "
                                  f"not {value!r}")
    elif name.startswith("data_budget"):
        if parse_size(value) < MIN_DATA_BUDGET:
            raise InvalidArgument(f"{key} must be at least 16M, not {value!r}")
    elif not (value.strip().isdigit() and 1 <= int(value) <= 65535):
        raise InvalidArgument(f"{key} must be a whole number from 1 to 65535, not {value!r}")


def fabric_settings(settings: dict[str, str]) -> dict[str, str]:
    """The fabric limit settings with defaults filled in, keys without the prefix."""
    return {k: settings.get(f"iscsi.{k}", v) for k, v in FABRIC_DEFAULTS.items()}


def _check_fabric_limits(settings: dict[str, str]) -> None:
    f = fabric_settings(settings)
    if int(f["max_login_connections"]) > int(f["max_connections"]):
        raise InvalidArgument("iscsi.max_login_connections must not exceed iscsi.max_connections")
    if float(f["first_pdu_timeout"]) > float(f["login_timeout"]):
        raise InvalidArgument("iscsi.first_pdu_timeout must not exceed iscsi.login_timeout")
    if parse_size(f["data_budget_per_host"]) > parse_size(f["data_budget"]):
        raise InvalidArgument("iscsi.data_budget_per_host must not exceed iscsi.data_budget")


def negotiation_overrides(settings: dict[str, str]) -> dict[str, str]:
    """The ``iscsi.<Key>`` settings that change what the target offers at login (RFC 7143 13)."""
    return {k[6:]: v for k, v in settings.items()
            if k.startswith("iscsi.") and k[6:] in params.TARGET_OFFER}


# The extent store's keys (vmblock.store.extent) and their defaults. Tier sizes apply when the
# pool is opened: a file tier grows to its size (never shrinks); a *_path names a file or block
# device to use instead of POOL/capacity, POOL/flash.
STORE_DEFAULTS = {
    "capacity_size": "64G",
    "capacity_path": "",
    "flash_size": "1G",
    "flash_path": "",
    "low_space_thresholds": "80,90,95",   # percent used; an event each time one is crossed
    "commit_interval": "5",               # seconds between background metadata commits
}


def _is_tier_device(path: str) -> bool:
    """An absolute path (a relative one would depend on the server's working directory) to a
    regular file or block device, or to a file to create in an existing directory."""
    if not os.path.isabs(path):
        return False
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return os.path.isdir(os.path.dirname(path))
    except (OSError, ValueError):
        return False
    return stat.S_ISREG(mode) or stat.S_ISBLK(mode)


def _check_store_key(name: str, value: str) -> None:
    if name in ("capacity_size", "flash_size"):
        if parse_size(value, f"store.{name}", MAX_TIER_BYTES) <= 0:
            raise InvalidArgument(f"store.{name} must be a positive size")
    elif name in ("capacity_path", "flash_path"):
        if value and not _is_tier_device(value):
            raise InvalidArgument(f"store.{name} must be empty or the absolute path of a file "
                                  f"or block device (or of a file to create in an existing "
                                  f"directory), not {_shown(value)}")
    elif name == "low_space_thresholds":
        try:
            pcts = [int(t) for t in value.split(",") if t.strip()]
        except ValueError:
            pcts = [-1]
        if not all(0 < p <= 100 for p in pcts):
            raise InvalidArgument(f"store.low_space_thresholds must be percentages 1-100 "
                                  f"separated by commas, not {value!r}")
    elif name == "commit_interval":
        _nonneg_float("store.commit_interval", value)


# The flash cache's keys (vmblock.cache.tier). cache.size: bytes of the flash tier used as cache
# slots, or a percentage of the flash tier ("0" turns the cache off); the rest of the flash tier is
# left to flash-tier AUs. cache.block_size: a power of two between 4K and 1M (docs/cache.md).
CACHE_DEFAULTS = {
    "size": "50%",
    "block_size": "64K",
}


def _check_cache_key(name: str, value: str) -> None:
    if name == "size":
        v = value.strip()
        if v.endswith("%"):
            try:
                ok = 0 <= float(v[:-1]) <= 100
            except ValueError:
                ok = False
            if not ok:
                raise InvalidArgument(f"cache.size {value!r}: a percentage must be 0-100%")
        else:
            parse_size(v, "cache.size", MAX_TIER_BYTES)
    elif name == "block_size":
        bs = parse_size(value, "cache.block_size")
        if bs < 4096 or bs > 1 << 20 or bs & (bs - 1):
            raise InvalidArgument(f"cache.block_size must be a power of two from 4K to 1M, "
                                  f"not {value!r}")


def cache_settings(settings: dict[str, str]) -> dict[str, str]:
    """The cache.* settings with defaults filled in, keys without the prefix."""
    return {k: settings.get(f"cache.{k}", v) for k, v in CACHE_DEFAULTS.items()}


def cache_bytes_wanted(settings: dict[str, str], flash_bytes: int) -> int:
    """Bytes at the start of the flash tier that ``cache.size`` asks for (the one place that
    reads it). The extent store turns this into the flash split (``PoolStore.cache_bytes``:
    rounded up to an AU, never over a flash-tier AU in use) and the cache takes its slots
    from that, so cache slots and flash-tier AUs never overlap."""
    text = cache_settings(settings)["size"].strip()
    if text.endswith("%"):
        return int(flash_bytes * float(text[:-1]) / 100)
    return parse_size(text)


def store_settings(settings: dict[str, str]) -> dict[str, str]:
    """The store.* settings with defaults filled in, keys without the prefix."""
    return {k: settings.get(f"store.{k}", v) for k, v in STORE_DEFAULTS.items()}


def check_key(key: str, value: str) -> str:
    """Validate one config key and its value; returns the value as stored (a string)."""
    parts = key.split(".")
    if len(parts) == 2 and parts[0] == "store" and parts[1] in STORE_DEFAULTS:
        _check_store_key(parts[1], value)
    elif len(parts) == 2 and parts[0] == "cache" and parts[1] in CACHE_DEFAULTS:
        _check_cache_key(parts[1], value)
    elif key == "iscsi.portals":
        parse_portals(value)
    elif key in ("iscsi.nop_interval", "iscsi.nop_timeout"):
        _nonneg_float(key, value)
    elif len(parts) == 2 and parts[0] == "iscsi" and parts[1] in FABRIC_DEFAULTS:
        _check_fabric_key(parts[1], value)
    elif parts[0] == "iscsi" and len(parts) == 2 and parts[1] in params.TARGET_OFFER:
        pass   # values are checked together by check_settings: some limits depend on each other
    elif key == NEW_TARGET_CHAP_KEY:
        if value not in ("Yes", "No"):
            raise InvalidArgument(f"{key} must be Yes or No, not {value!r}")
    elif len(parts) == 3 and parts[:2] == ["auth", "discovery"] and parts[2] in _CHAP_FIELDS:
        pass
    elif key.startswith("auth.target.") and key.rsplit(".", 1)[-1] in _CHAP_FIELDS:
        check_iqn(key[len("auth.target."):key.rindex(".")])
    elif key.startswith("acl."):
        check_iqn(key[len("acl."):])
        parse_iqn_list(value)
    else:
        raise InvalidArgument(f"unknown config key {key!r} (see configs/vmblock.toml)")
    return value


def _check_cache_fits(settings: dict[str, str]) -> None:
    """A cache.size in bytes larger than a file flash tier would stop the next server start."""
    cache = cache_settings(settings)["size"].strip()
    store = store_settings(settings)
    if cache.endswith("%") or store["flash_path"]:
        return
    flash = parse_size(store["flash_size"], "store.flash_size", MAX_TIER_BYTES)
    if parse_size(cache, "cache.size", MAX_TIER_BYTES) > flash:
        raise InvalidArgument(f"cache.size {_shown(cache)} is larger than the flash tier "
                              f"(store.flash_size {_shown(store['flash_size'])})")


def _check_chap(settings: dict[str, str]) -> None:
    """Secrets long enough, credentials a URL can carry, no secret used both ways. Messages
    name the key, never the secret."""
    for key, value in settings.items():
        if not key.startswith(("auth.target.", "auth.discovery.")):
            continue
        field = key.rsplit(".", 1)[-1]
        if field in ("chap_secret", "mutual_secret") and \
                len(value.encode()) < MIN_CHAP_SECRET_BYTES:
            raise InvalidArgument(f"{key} is {len(value.encode())} bytes; CHAP secrets must "
                                  f"be at least {MIN_CHAP_SECRET_BYTES} bytes")
        bad = sorted(set(value) & set(_URL_UNSAFE.get(field, "")))
        if bad:
            raise InvalidArgument(f"{key} must not contain {' or '.join(map(repr, bad))}: "
                                  f"an iscsi:// URL (libiscsi, QEMU) cannot carry it")
        if field == "mutual_secret":
            prefix = key[:-len(field)]
            if value == settings.get(prefix + "chap_secret"):
                # RFC 7143 9.2.1, 12.1.3: a secret that authenticates the initiator must not
                # authenticate the target, or the target's own challenge reflected back by
                # an impostor proves nothing
                raise InvalidArgument(f"{key} must differ from {prefix}chap_secret: one "
                                      f"secret must not authenticate both ways (RFC 7143)")


def check_settings(settings: dict[str, str]) -> None:
    """Check the whole set a server would run with: the fabric's own negotiation table and
    limits, the cache against the flash tier and the CHAP credentials, wherever they came
    from (pool, --config file, a key an older vmblock stored)."""
    try:
        params.validate_offer(negotiation_overrides(settings))
    except ValueError as e:
        raise InvalidArgument(f"bad iSCSI negotiation setting: {e}") from None
    _check_cache_fits(settings)
    _check_fabric_limits(settings)
    _check_chap(settings)


def _flatten(prefix: str, table: dict, out: dict[str, str]) -> None:
    for name, value in table.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict):
            _flatten(f"{key}.", value, out)
        elif isinstance(value, list):
            out[key] = ",".join(str(v) for v in value)
        elif isinstance(value, bool):
            out[key] = "Yes" if value else "No"
        else:
            out[key] = str(value)


def load_toml(path: str) -> tuple[str | None, dict[str, str]]:
    """(pool directory or None, checked config keys) from a ``serve --config`` TOML file."""
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as e:
        raise InvalidArgument(f"cannot read config file {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise InvalidArgument(f"config file {path}: {e}") from None
    pool = doc.pop("pool", None)
    if pool is not None and not isinstance(pool, str):
        raise InvalidArgument(f"config file {path}: pool must be a string")
    flat: dict[str, str] = {}
    _flatten("", doc, flat)
    for key, value in flat.items():
        check_key(key, value)
    check_settings(flat)
    return pool, flat


def portals_of(settings: dict[str, str]) -> list[tuple[str, int]]:
    return parse_portals(settings.get("iscsi.portals", DEFAULT_PORTAL))
