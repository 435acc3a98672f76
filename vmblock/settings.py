"""Settings: one typed table of every config key, the checks across keys and the TOML file.

There is one key space. ``vmblock config set KEY VALUE`` stores a key in the pool; a TOML file
given to ``serve --config`` is flattened into the same dotted keys and overrides the pool for that
run only (``Pool.settings()`` is the one place that merges the two); ``--portal`` overrides both.
Every key has one row in ``TABLE``: its type, default, parse function (built on
``vmblock.units``), one line of doc and when a change applies (``Apply``). Values are stored as
the strings the user wrote; ``Settings.get`` parses them, so callers never parse a setting again.

The ``iscsi.<Key>`` rows are the RFC 7143 negotiation keys the target offers at login
(MaxBurstLength, HeaderDigest, ...). Their ranges, limits and the checks between them belong to
the fabric's negotiation table (``vmblock.iscsi.params``), which this module does not import:
settings sit below every layer. So this table names those keys (``NEGOTIATION_KEYS``, as data;
a test pins it to the fabric's offer) and ``Settings.negotiation()`` hands their values to the
layer that owns them: ``vmblock.meta.config.check_settings`` runs the fabric's check before this
module's own checks, for ``config set``, ``config unset``, a ``--config`` file and server start.
The alternative, the fabric injecting its check into settings, would make every caller that
builds settings carry the fabric along.
"""

from __future__ import annotations

import enum
import os
import re
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from vmblock import DEFAULT_PORTAL
from vmblock.errors import InvalidArgument
from vmblock.units import parse_fraction, parse_seconds, parse_size, shown

# RFC 3720 3.2.6.3.1, RFC 7143 4.2.7: iqn.YYYY-MM.reversed.domain[:anything], eui.<16 hex>,
# naa.<16|32 hex>
_IQN_RE = re.compile(r"^(iqn\.\d{4}-\d{2}\.[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?(?::[^\s,]+)?"
                     r"|eui\.[0-9a-f]{16}|naa\.(?:[0-9a-f]{16}|[0-9a-f]{32}))$")

CHAP_FIELDS = ("chap_user", "chap_secret", "mutual_user", "mutual_secret")
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

# The largest sizes the pool describes. A vdisk's extent map is two-level (vmblock.store.maps):
# its L1 takes 4 bytes per 16 MiB of size, touched only where something is written, and leaves
# are taken as data is mapped, so the size costs almost nothing until written; 64 TiB keeps
# every vAU inside the 32 bits the kernels index with. A tier takes 5 bytes of RAM per AU
# (reference count and hold flag): 16 TiB costs 1.25 GiB, and both tiers' AU numbers stay far
# inside the 32 bits the maps store.
MAX_VDISK_BYTES = 64 << 40
MAX_TIER_BYTES = 16 << 40

# The fabric's limits (vmblock.iscsi.portal.IscsiConfig): what initiators, hostile or broken,
# can hold of the server. The largest single command's data (FirstBurstLength) must fit a
# data budget; a login timeout above an hour keeps a stuck login too long.
MIN_DATA_BUDGET = 16 << 20
MAX_LOGIN_TIMEOUT = 3600.0
MAX_POLL_WINDOW = 0.01      # iscsi.poll_window: 10 ms of polling per PDU at most
MAX_CONNECTION_COUNT = 65535
# server.workers: worker processes beside the owner. Each holds a Python interpreter (~60 MiB)
# and shares the cores with the owner, so more than a few per core only adds switching.
MAX_WORKERS = 64
# server.workers auto (the default): one worker per usable CPU, none while the flash cache is
# on (docs/benchmarks.md, "Workers by default" and "Workers and the flash cache", has the
# measurements behind it)
WORKERS_AUTO = "auto"
WORKERS_KEY = "server.workers"
# stats.interval: at most one sample a second (the history's size follows it), at least one a day
MIN_STATS_INTERVAL = 1.0
MAX_STATS_INTERVAL = 86400.0

# cache.size 'auto' (the default): this share of the flash tier when the flash tier is on
# another device than the capacity tier, no cache when both are on one (docs/benchmarks.md,
# "The cache default" has the measurements behind it).
CACHE_SIZE_AUTO = "auto"
AUTO_CACHE_FRACTION = 0.5

# Events (vmblock.events): the webhook's attempts after the first, and how many events the
# meta DB keeps (the oldest beyond it are deleted).
MAX_EVENT_RETRIES = 10
MIN_EVENT_RETENTION = 100
MAX_EVENT_RETENTION = 1_000_000

# RFC 7143 section 13: the operational keys the target offers at login, which iscsi.<Key>
# overrides (the names of vmblock.iscsi.params.TARGET_OFFER; their rules live there).
NEGOTIATION_KEYS = (
    "HeaderDigest", "DataDigest", "MaxConnections", "InitialR2T", "ImmediateData",
    "MaxRecvDataSegmentLength", "MaxBurstLength", "FirstBurstLength", "DefaultTime2Wait",
    "DefaultTime2Retain", "MaxOutstandingR2T", "DataPDUInOrder", "DataSequenceInOrder",
    "ErrorRecoveryLevel", "IFMarker", "OFMarker", "iSCSIProtocolLevel", "TaskReporting",
)


# --- parsers of the values that are not plain units --------------------------------------------

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
    """'HOST:PORT', IPv6 hosts in brackets: the form ``parse_portal`` reads back."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_portals(text: str) -> list[tuple[str, int]]:
    """A comma list of portals (``iscsi.portals``); an empty list is refused."""
    portals = [parse_portal(p) for p in text.split(",") if p.strip()]
    if not portals:
        raise InvalidArgument("portal list is empty")
    return portals


def check_iqn(name: str) -> str:
    """``name`` if it is an iSCSI name (iqn., eui., naa.), else InvalidArgument."""
    if not _IQN_RE.match(name):
        raise InvalidArgument(f"bad iSCSI name {name!r} (expected iqn.YYYY-MM.domain:id)")
    return name


def parse_iqn_list(text: str) -> list[str]:
    """A comma list of iSCSI names (``acl.<iqn>``); empty means nobody is named."""
    return [check_iqn(p.strip()) for p in text.split(",") if p.strip()]


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


@dataclass(frozen=True)
class CacheSize:
    """``cache.size``: a share of the flash tier ('50%') or bytes ('512M'); '0' is no cache;
    'auto' (the default) is AUTO_CACHE_FRACTION of the flash tier when that tier is on
    another device than the capacity tier, and no cache when both share one (the server
    decides, ``server.open_cache``: there a flash copy is an extra write to the same disk,
    and the page cache already keeps the capacity tier's hot blocks in RAM)."""

    text: str
    fraction: float | None = None      # of the flash tier, when given as a percentage
    nbytes: int | None = None          # when given as a size
    auto: bool = False                 # 'auto': only where flash is another device

    def of(self, flash_bytes: int) -> int:
        """Bytes at the start of the flash tier the cache asks for. The extent store turns this
        into the flash split (``PoolStore.cache_bytes``: rounded up to an AU, never over a
        flash-tier AU in use) and the cache takes its slots from that, so cache slots and
        flash-tier AUs never overlap."""
        if self.fraction is not None:
            return int(flash_bytes * self.fraction)
        return self.nbytes


def _tier_size(text: str, key: str) -> int:
    n = parse_size(text, key, MAX_TIER_BYTES)
    if n <= 0:
        raise InvalidArgument(f"{key} must be a positive size")
    return n


def _tier_path(text: str, key: str) -> str:
    if text and not _is_tier_device(text):
        raise InvalidArgument(f"{key} must be empty or the absolute path of a file or block "
                              f"device (or of a file to create in an existing directory), "
                              f"not {shown(text)}")
    return text


def _percent_list(text: str, key: str) -> tuple[int, ...]:
    try:
        pcts = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        pcts = (-1,)
    if not all(0 < p <= 100 for p in pcts):
        raise InvalidArgument(f"{key} must be percentages 1-100 separated by commas, "
                              f"not {text!r}")
    return pcts


def _login_seconds(text: str, key: str) -> float:
    try:
        v = parse_seconds(text, key, MAX_LOGIN_TIMEOUT)
    except InvalidArgument:
        v = 0.0
    if v <= 0:
        raise InvalidArgument(f"{key} must be a number of seconds above 0 (at most "
                              f"{MAX_LOGIN_TIMEOUT:g}), not {text!r}")
    return v


def _poll_window(text: str, key: str) -> float:
    return parse_seconds(text, key, MAX_POLL_WINDOW)


def _connection_count(text: str, key: str) -> int:
    t = text.strip()
    if not (t.isascii() and t.isdigit() and 1 <= int(t) <= MAX_CONNECTION_COUNT):
        raise InvalidArgument(f"{key} must be a whole number from 1 to {MAX_CONNECTION_COUNT}, "
                              f"not {text!r}")
    return int(t)


def _workers_auto(text: str) -> bool:
    return text.strip() == WORKERS_AUTO


def _worker_count(text: str, key: str) -> int:
    t = text.strip()
    if _workers_auto(t):
        return auto_workers()
    if not (t.isascii() and t.isdigit() and int(t) <= MAX_WORKERS):
        raise InvalidArgument(f"{key} must be '{WORKERS_AUTO}' or a whole number from 0 to "
                              f"{MAX_WORKERS}, not {text!r}")
    return int(t)


def auto_workers() -> int:
    """``server.workers auto``: one worker per CPU this process may run on, none with one
    CPU (the owner alone is the one process then)."""
    cpus = len(os.sched_getaffinity(0))
    return min(cpus, MAX_WORKERS) if cpus > 1 else 0


def _data_budget(text: str, key: str) -> int:
    n = parse_size(text, key)
    if n < MIN_DATA_BUDGET:
        raise InvalidArgument(f"{key} must be at least 16M, not {text!r}")
    return n


def _rate(text: str, key: str) -> int:
    return parse_size(text, key)


def _cache_size(text: str, key: str) -> CacheSize:
    t = text.strip()
    if t == CACHE_SIZE_AUTO:
        return CacheSize(text, fraction=AUTO_CACHE_FRACTION, auto=True)
    if not t.endswith("%"):
        return CacheSize(text, nbytes=parse_size(t, key, MAX_TIER_BYTES))
    try:
        return CacheSize(text, fraction=parse_fraction(t, key))
    except InvalidArgument:
        raise InvalidArgument(f"{key} {text!r}: a percentage must be 0-100%") from None


def _cache_block_size(text: str, key: str) -> int:
    bs = parse_size(text, key)
    if bs < 4096 or bs > 1 << 20 or bs & (bs - 1):
        raise InvalidArgument(f"{key} must be a power of two from 4K to 1M, not {text!r}")
    return bs


def _yes_no(text: str, key: str) -> bool:
    if text not in ("Yes", "No"):
        raise InvalidArgument(f"{key} must be Yes or No, not {text!r}")
    return text == "Yes"


def _stats_interval(text: str, key: str) -> float:
    v = parse_seconds(text, key, MAX_STATS_INTERVAL)
    if v < MIN_STATS_INTERVAL:
        raise InvalidArgument(f"{key} must be from {MIN_STATS_INTERVAL:g} to "
                              f"{MAX_STATS_INTERVAL:g} seconds, not {text!r}")
    return v


def _listen(text: str, key: str) -> str:
    if text:
        if ":" not in text.rsplit("]", 1)[-1]:
            raise InvalidArgument(f"{key} must be HOST:PORT (a port is needed), not {text!r}")
        try:
            parse_portals(text)     # checked as a portal is
        except InvalidArgument as e:
            raise InvalidArgument(f"{key}: {e}") from None
    return text


def _text(text: str, key: str) -> str:
    return text


def _http_url(text: str, key: str) -> str:
    t = text.strip()
    if t and not re.match(r"^https?://[^\s/]+(/\S*)?$", t):
        raise InvalidArgument(f"{key} must be empty or an http:// or https:// URL, "
                              f"not {shown(t)}")
    return t


def _retries(text: str, key: str) -> int:
    t = text.strip()
    if not (t.isascii() and t.isdigit() and int(t) <= MAX_EVENT_RETRIES):
        raise InvalidArgument(f"{key} must be a whole number from 0 to {MAX_EVENT_RETRIES}, "
                              f"not {shown(text)}")
    return int(t)


def _retention(text: str, key: str) -> int:
    t = text.strip()
    if not (t.isascii() and t.isdigit() and MIN_EVENT_RETENTION <= int(t)
            <= MAX_EVENT_RETENTION):
        raise InvalidArgument(f"{key} must be a whole number from {MIN_EVENT_RETENTION} to "
                              f"{MAX_EVENT_RETENTION}, not {shown(text)}")
    return int(t)


def _positive_seconds(text: str, key: str) -> float:
    v = parse_seconds(text, key)
    if v <= 0:
        raise InvalidArgument(f"{key} must be above 0 seconds, not {shown(text)}")
    return v


def _portals(text: str, key: str) -> list[tuple[str, int]]:
    return parse_portals(text)


def _iqns(text: str, key: str) -> list[str]:
    return parse_iqn_list(text)


def _vm_pattern(text: str, key: str) -> re.Pattern | None:
    if not text:
        return None
    try:
        pattern = re.compile(text)
    except re.error as e:
        raise InvalidArgument(f"{key}: {text!r} is not a regular expression ({e})") from None
    if "vm" not in pattern.groupindex:
        raise InvalidArgument(f"{key}: {text!r} needs a named group (?P<vm>...) that gives "
                              f"the VM's name")
    return pattern


# --- the table ---------------------------------------------------------------------------------

class Apply(enum.Enum):
    """When a changed key takes effect on a running server (``config set`` answers ``live``)."""

    RESTART = "restart"          # read when the server starts or the pool's store opens
    FABRIC = "fabric"            # the iSCSI service is reconfigured: new logins see it
    TARGET = "target"            # that target's ACL and CHAP are re-read: new logins see them
    NEW_TARGET = "new target"    # read each time a target is created
    RESCAN = "rescan"            # every served datastore is scanned again
    LIVE = "live"                # read each time it is used (events, policies)
    STATS = "stats"              # the statistics sampler takes it at its next tick


@dataclass(frozen=True)
class Setting:
    """One row of ``TABLE``. A key with ``<iqn>`` or ``<Key>`` in it is a family of keys: one
    per iSCSI name, one per negotiation key (``NEGOTIATION_KEYS``)."""

    key: str
    type: type
    default: str | None                  # as stored; None: the owning layer's own default
    parse: Callable[[str, str], object]  # (stored text, key) -> value of ``type``
    apply: Apply
    doc: str


_ROWS = (
    Setting("store.capacity_size", int, "64G", _tier_size, Apply.RESTART,
            "capacity tier size, at most 16T; a file tier grows to it, never shrinks"),
    Setting("store.capacity_path", str, "", _tier_path, Apply.RESTART,
            "file or block device of the capacity tier instead of POOL/capacity"),
    Setting("store.flash_size", int, "1G", _tier_size, Apply.RESTART,
            "flash tier size (cache slots first, then flash-tier AUs)"),
    Setting("store.flash_path", str, "", _tier_path, Apply.RESTART,
            "file or block device of the flash tier instead of POOL/flash"),
    Setting("store.low_space_thresholds", tuple, "80,90,95", _percent_list, Apply.RESTART,
            "percent used at which a low_space event is recorded"),
    Setting("store.commit_interval", float, "5", parse_seconds, Apply.RESTART,
            "seconds between background metadata commits (0: none)"),
    Setting("cache.size", CacheSize, CACHE_SIZE_AUTO, _cache_size, Apply.RESTART,
            "flash tier bytes used as cache slots, or a percentage of it; 0 turns it off; "
            "auto: 50% when the flash tier is on another device than the capacity tier, "
            "else off"),
    Setting("cache.block_size", int, "64K", _cache_block_size, Apply.RESTART,
            "cache block, a power of two from 4K to 1M"),
    Setting(WORKERS_KEY, int, WORKERS_AUTO, _worker_count, Apply.RESTART,
            "worker processes that run iSCSI sessions: auto (one per CPU; none with one "
            "CPU or while the flash cache is on), or a number (0: none, one process; "
            "docs/workers.md)"),
    Setting("iscsi.portals", list, DEFAULT_PORTAL, _portals, Apply.RESTART,
            "HOST:PORT list to listen on; the first is the one vdisk URLs show"),
    Setting("iscsi.nop_interval", float, "30", parse_seconds, Apply.FABRIC,
            "seconds between NOP-In pings of an idle connection (0: none)"),
    Setting("iscsi.nop_timeout", float, "30", parse_seconds, Apply.FABRIC,
            "seconds to wait for the NOP-Out answer before dropping the connection"),
    Setting("iscsi.max_connections", int, "256", _connection_count, Apply.FABRIC,
            "connections, all together (each holds ~2 PDUs of receive buffer)"),
    Setting("iscsi.max_connections_per_host", int, "64", _connection_count, Apply.FABRIC,
            "connections from one source address"),
    Setting("iscsi.max_login_connections", int, "64", _connection_count, Apply.FABRIC,
            "connections still logging in or in discovery (the rest is for sessions)"),
    Setting("iscsi.first_pdu_timeout", float, "5", _login_seconds, Apply.FABRIC,
            "seconds from accept until a whole first Login Request"),
    Setting("iscsi.login_timeout", float, "30", _login_seconds, Apply.FABRIC,
            "seconds from accept until full feature phase"),
    Setting("iscsi.data_budget", int, "256M", _data_budget, Apply.FABRIC,
            "bytes of initiator data held, all connections together"),
    Setting("iscsi.data_budget_per_host", int, "64M", _data_budget, Apply.FABRIC,
            "bytes of initiator data held for one source address"),
    Setting("iscsi.poll_window", float, "200us", _poll_window, Apply.FABRIC,
            "while PDUs arrive closer together than this, a serving process polls its "
            "sockets for that long after each instead of sleeping (QD1 latency for CPU; "
            "0: never; at most 10ms; vmblock.iscsi.poll)"),
    Setting("iscsi.<Key>", str, None, _text, Apply.FABRIC,
            "what the target offers at login for an RFC 7143 key (vmblock.iscsi.params)"),
    Setting(NEW_TARGET_CHAP_KEY, bool, "No", _yes_no, Apply.NEW_TARGET,
            "Yes: each new target gets user vmblock and a random CHAP secret"),
    *(Setting(f"auth.discovery.{field}", str, "", _text, Apply.FABRIC,
              f"CHAP {field} for SendTargets discovery sessions") for field in CHAP_FIELDS),
    *(Setting(f"auth.target.<iqn>.{field}", str, "", _text, Apply.TARGET,
              f"CHAP {field} for normal sessions to one target") for field in CHAP_FIELDS),
    Setting("acl.<iqn>", list, "", _iqns, Apply.TARGET,
            "initiator names that may log in to a target; empty: any"),
    Setting("hypervisor.call_timeout", float, "10", _login_seconds, Apply.RESTART,
            "seconds a libvirt call may take before its hypervisor counts as unreachable"),
    Setting("datastore.lvm.vm_pattern", re.Pattern, None, _vm_pattern, Apply.RESCAN,
            "regex over LV names whose named group (?P<vm>...) names the owning VM, for LVs "
            "that are not Proxmox's vm-<id>-disk-<n>; unset or empty: those stay unassigned"),
    Setting("datastore.lvm.rescan_delay", float, "0.5", parse_seconds, Apply.RESTART,
            "seconds without another write to a PV's label or metadata area before the "
            "server reads its map again (docs/datastores.md)"),
    Setting("events.exec", str, "", _text, Apply.LIVE,
            "shell command run per event (/bin/sh -c), the event's JSON on its stdin"),
    Setting("events.exec_timeout", float, "30", _positive_seconds, Apply.LIVE,
            "seconds an events.exec command may run before it is killed (then retried once)"),
    Setting("events.webhook", str, "", _http_url, Apply.LIVE,
            "URL each event's JSON is POSTed to"),
    Setting("events.webhook_retries", int, "3", _retries, Apply.LIVE,
            "webhook attempts after a failed one, waiting 1, 2, 4 ... seconds between"),
    Setting("events.retention", int, "10000", _retention, Apply.LIVE,
            "events the meta DB keeps; the oldest beyond it are deleted"),
    Setting("events.hog_share", float, "30%", parse_fraction, Apply.LIVE,
            "share of the capacity tier above which a VM is a vm_space_hog"),
    Setting("events.hog_horizon", float, "1h", parse_seconds, Apply.LIVE,
            "a VM whose growth would fill the pool within this is a vm_space_hog too"),
    Setting("events.check_interval", float, "5", _positive_seconds, Apply.LIVE,
            "seconds between the server's space, flash and snapshot-schedule checks"),
    Setting("events.refuse_new_at", float, "90%", parse_fraction, Apply.LIVE,
            "capacity tier use from which vdisk create and vm clone are refused without "
            "--force"),
    Setting("scsi.sanitize_rate", int, "256M", _rate, Apply.RESTART,
            "bytes per second a SANITIZE OVERWRITE writes, so one vdisk's sanitize leaves "
            "the tier to the others (0: as fast as the tier takes it)"),
    Setting("stats.enabled", bool, "Yes", _yes_no, Apply.RESTART,
            "count every command per vdisk (docs/stats.md); No: no statistics at all"),
    Setting("stats.interval", float, "10", _stats_interval, Apply.STATS,
            "seconds between statistics samples kept in the history (docs/stats.md)"),
    Setting("metrics.listen", str, "", _listen, Apply.RESTART,
            "HOST:PORT of the Prometheus /metrics listener (serve --metrics); empty: none"),
    Setting("qos.slots", int, "16", _connection_count, Apply.RESTART,
            "QoS-scheduled commands each serving process runs at once; the others wait in "
            "their VM's queue (docs/qos.md)"),
    Setting("qos.throttled_after", float, "60", _positive_seconds, Apply.LIVE,
            "seconds a VM must be held at its QoS limit without a break for qos_throttled"),
)
TABLE = {row.key: row for row in _ROWS}
_FAMILIES = [(row, *row.key.split(placeholder)) for row in _ROWS
             for placeholder in ("<iqn>", "<Key>") if placeholder in row.key]


def lookup(key: str) -> tuple[Setting, str] | None:
    """(row, the name in its ``<...>`` part or "") for ``key``, None when no row has it. The
    name is not checked: ``check_key`` does that."""
    row = TABLE.get(key)
    if row is not None:
        return row, ""
    for row, prefix, suffix in _FAMILIES:
        if key.startswith(prefix) and key.endswith(suffix):
            middle = len(key) - len(prefix) - len(suffix)
            name = key[len(prefix):len(prefix) + middle] if middle > 0 else ""
            if "<Key>" in row.key and name not in NEGOTIATION_KEYS:
                continue
            return row, name
    return None


def _known(key: str) -> tuple[Setting, str]:
    """``lookup``, refusing a key no row has."""
    found = lookup(key)
    if found is None:
        raise InvalidArgument(f"unknown config key {key!r} (see configs/vmblock.toml)")
    return found


def check_key(key: str, value: str) -> str:
    """Validate one config key and its value; returns the value as stored (a string)."""
    row, name = _known(key)
    if "<iqn>" in row.key:
        check_iqn(name)
    row.parse(value, key)
    return value


# Pairs (lower, upper) whose values must keep that order (the fabric's limits).
NOT_ABOVE = (
    ("iscsi.max_login_connections", "iscsi.max_connections"),
    ("iscsi.first_pdu_timeout", "iscsi.login_timeout"),
    ("iscsi.data_budget_per_host", "iscsi.data_budget"),
)


class Settings:
    """A set of stored settings (strings, as the user wrote them), read as typed values.

    Built by ``Pool.settings()`` (the pool's keys overridden by ``--config`` for this run);
    ``get`` parses with the key's row, falling back to its default."""

    def __init__(self, values: Mapping[str, str]):
        self.values = dict(values)

    def overlay(self, changes: Mapping[str, str]) -> Settings:
        """These settings with ``changes`` winning over them."""
        return Settings({**self.values, **changes})

    def get(self, key: str):
        """The typed value of ``key`` (``TABLE`` says which type), its default when unset."""
        row = _known(key)[0]
        text = self.values.get(key, row.default)
        return None if text is None else row.parse(text, key)

    def workers(self, cache_on: bool) -> int:
        """``server.workers``: the number set, or for ``auto`` one per CPU (``auto_workers``)
        but none while the flash cache is on: every command then goes to the owner's cache,
        and a worker only adds a hop (docs/benchmarks.md, "Workers and the flash cache")."""
        if cache_on and _workers_auto(self.values.get(WORKERS_KEY, WORKERS_AUTO)):
            return 0
        return self.get(WORKERS_KEY)

    def negotiation(self) -> dict[str, str]:
        """The ``iscsi.<Key>`` settings that change what the target offers at login (RFC 7143
        13), by key name: the fabric checks and applies them."""
        return {k[len("iscsi."):]: v for k, v in self.values.items()
                if k.startswith("iscsi.") and k[len("iscsi."):] in NEGOTIATION_KEYS}

    def check(self) -> None:
        """The checks across keys this module can make: the cache against the flash tier, the
        fabric's limits in order, the CHAP credentials (the negotiation keys are the fabric's:
        ``vmblock.meta.config.check_settings`` runs both)."""
        self._check_cache_fits()
        for lower, upper in NOT_ABOVE:
            if self.get(lower) > self.get(upper):
                raise InvalidArgument(f"{lower} must not exceed {upper}")
        self._check_chap()

    def _check_cache_fits(self) -> None:
        """A cache.size in bytes larger than a file flash tier would stop the next server start."""
        cache = self.get("cache.size")
        if cache.nbytes is None or self.get("store.flash_path"):
            return
        if cache.nbytes > self.get("store.flash_size"):
            flash = self.values.get("store.flash_size", TABLE["store.flash_size"].default)
            raise InvalidArgument(f"cache.size {shown(cache.text.strip())} is larger than the "
                                  f"flash tier (store.flash_size {shown(flash)})")

    def _check_chap(self) -> None:
        """Secrets long enough, credentials a URL can carry, no secret used both ways. Messages
        name the key, never the secret."""
        for key, value in self.values.items():
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
                if value == self.values.get(prefix + "chap_secret"):
                    # RFC 7143 9.2.1, 12.1.3: a secret that authenticates the initiator must
                    # not authenticate the target, or the target's own challenge reflected
                    # back by an impostor proves nothing
                    raise InvalidArgument(f"{key} must differ from {prefix}chap_secret: one "
                                          f"secret must not authenticate both ways (RFC 7143)")


# --- the serve --config file -------------------------------------------------------------------

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
    """(pool directory or None, config keys) from a ``serve --config`` TOML file. Each key is
    checked here; the set as a whole by ``vmblock.meta.config.check_settings``."""
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
    return pool, flat

