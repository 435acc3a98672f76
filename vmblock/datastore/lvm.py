"""An LVM2 physical volume read from a vdisk's bytes: which byte ranges each logical volume
of its volume group occupies on this LUN.

Pure functions over a reader ``read(offset, length) -> bytes`` (a ``bytes`` image in the tests,
the vdisk's store in the server). The on-disk format, as lvm2 writes it (lib/label/label.h,
lib/format_text/layout.h, lib/format_text/format-text.c; checked against lvm2 2.03.16 output):

* **Label** in one of the first four 512-byte sectors: ``label_header`` = ``"LABELONE"``, the
  sector's own number (u64), a CRC of the rest of the sector from byte 20 on (u32), the offset of
  the contents (u32), the type ``"LVM2 001"``. Little-endian throughout.
* **PV header** at that offset: the PV uuid (32 characters), the device size in bytes, then two
  lists of ``disk_locn`` (offset, size in bytes), each ending with a zero entry: data areas
  (the first one starts at ``pe_start``), then metadata areas (usually one at 4 KiB, and with
  ``--pvmetadatacopies 2`` a second at the end of the device).
* **Metadata area**: a 512-byte ``mda_header`` (CRC of the rest, magic ``" LVM2 x[5A%r0N*>"``,
  version 1, its own start and size, then ``raw_locn`` entries: offset from the area's start,
  size, CRC of the text, flags; ending with a zero entry) followed by a circular buffer: the
  current text lies at ``offset`` for ``size`` bytes (its NUL included), wrapping past the area's
  end to just after the header. Entry 0 is the committed metadata.
* **CRC**: lvm2's ``calc_crc``: CRC-32 with the reflected polynomial 0xEDB88320 (zlib's), initial
  value 0xF597A6CF, no final inversion; so ``zlib.crc32(data, INITIAL_CRC ^ ~0) ^ ~0``.
* **Text**: ``name = value`` and ``name { ... }`` (values: integers, "strings", lists ``[...]``),
  ``#`` comments. The VG section has ``seqno``, ``extent_size`` (sectors), ``physical_volumes``
  (``id``, ``pe_start`` in sectors) and ``logical_volumes``, whose ``segmentN`` sections have
  ``start_extent``, ``extent_count``, ``type`` and areas: ``stripes``/``mirrors`` = [name,
  first extent, ...] where a name is a PV (physical extents) or an LV (a sub-LV), ``raids`` =
  [sub-LV, ...], and for a thin pool ``metadata``/``pool`` sub-LVs.

The newest copy wins: every metadata area's committed entry is read, its CRC checked and its
``seqno`` compared; a copy that fails is reported in ``problems`` and only raises when no copy
is good (``BadMetadata``). A ``LABELONE`` sector whose checksum, sector number or type is wrong
is not an LVM PV (``NotAPhysicalVolume``), as for lvm2.

What is mapped: linear and striped segments on this PV, and through them mirror, RAID and
thin-pool sub-LVs (their ranges belong to the LV that uses them); an old-style snapshot's COW
LV is an LV of its own (the hidden ``snapshot`` LV that ties it to its origin maps nothing).
What is not: the blocks of a
thin LV (allocated inside its pool's data LV by the pool's own metadata, which is not read here:
the pool's ranges stay the pool's), extents of the VG that lie on other PVs, and segment types
not listed (cache, vdo, ...); each such volume says so in ``note`` with ``mapped`` False.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

SECTOR_SIZE = 512
LABEL_SCAN_SECTORS = 4              # lvm2 looks for the label in sectors 0..3
LABEL_SCAN_BYTES = LABEL_SCAN_SECTORS * SECTOR_SIZE
LABEL_ID = b"LABELONE"
LVM2_LABEL = b"LVM2 001"
LABEL_HEADER = struct.Struct("<8sQII8s")     # id, sector_xl, crc_xl, offset_xl, type
LABEL_CRC_FROM = 20                 # crc_xl covers the sector from offset_xl on
INITIAL_CRC = 0xF597A6CF
ID_LEN = 32
PV_HEADER = struct.Struct("<32sQ")  # pv_uuid, device_size_xl
DISK_LOCN = struct.Struct("<QQ")    # offset, size (bytes)
FMTT_MAGIC = b" LVM2 x[5A%r0N*>"
FMTT_VERSION = 1
MDA_HEADER_SIZE = 512
MDA_HEADER = struct.Struct("<I16sIQQ")  # checksum_xl, magic, version, start, size
RAW_LOCN = struct.Struct("<QQII")   # offset, size, checksum, flags
RAW_LOCN_IGNORED = 0x1
MAX_NESTING = 32                    # sections within sections in the metadata text
MAX_TEXT_BYTES = 64 << 20           # one metadata copy (lvm2's default area is 1 MiB)
_MASK32 = 0xFFFFFFFF


class DatastoreError(ValueError):
    """A datastore's on-disk structures cannot be read; the message says where and why (a
    scan's finding, stored and reported as an event, never an error of a command)."""


class NotAPhysicalVolume(DatastoreError):
    """Something looks like an LVM2 label in the first sectors but is not a valid one."""


class BadMetadata(DatastoreError):
    """A PV whose metadata areas hold no copy that passes its checks (corrupted, or caught
    half-written). ``pv`` is the PV read from the label, for the ranges to keep watching."""

    def __init__(self, message: str, pv: PhysicalVolume):
        super().__init__(message)
        self.pv = pv


def lvm_crc(data: bytes, initial: int = INITIAL_CRC) -> int:
    """lvm2's ``calc_crc`` of ``data`` (module docstring)."""
    return zlib.crc32(data, initial ^ _MASK32) ^ _MASK32


def format_uuid(raw: str) -> str:
    """A 32-character LVM uuid in lvm2's dashed 6-4-4-4-4-4-6 form."""
    cuts = (6, 10, 14, 18, 22, 26)
    parts, prev = [], 0
    for cut in cuts:
        parts.append(raw[prev:cut])
        prev = cut
    parts.append(raw[prev:])
    return "-".join(parts)


@dataclass
class PhysicalVolume:
    """What the label and PV header say: where the label is, the PV's uuid (dashed), the
    device size it was made for, its data and metadata areas as (offset, size) in bytes."""

    label_sector: int
    uuid: str
    device_size: int
    data_areas: list[tuple[int, int]]
    metadata_areas: list[tuple[int, int]]

    def watched(self) -> list[tuple[int, int]]:
        """Byte ranges (offset, length) whose writes can change the map: the label sectors and
        every metadata area."""
        return [(0, LABEL_SCAN_BYTES)] + [(o, s) for o, s in self.metadata_areas]


@dataclass
class Volume:
    """One logical volume as seen on this PV: its byte ranges [first byte, length] (sorted,
    adjacent ones merged); ``mapped`` False when some of it is not in them (``note`` why)."""

    name: str
    uuid: str
    kind: str                        # segment type(s): linear, striped, thin, thin-pool, ...
    visible: bool
    extents: list[list[int]]
    mapped: bool = True
    note: str = ""

    def dump(self) -> dict:
        """The volume as a JSON-ready dict."""
        return {"name": self.name, "uuid": self.uuid, "kind": self.kind,
                "visible": self.visible, "extents": [list(e) for e in self.extents],
                "mapped": self.mapped, "note": self.note}


@dataclass
class VolumeGroup:
    """The newest good metadata of the VG this PV belongs to, mapped onto this PV."""

    name: str
    uuid: str
    seqno: int
    extent_size: int                 # bytes
    pv_name: str                     # this PV's name in the metadata (pv0, ...)
    pe_start: int                    # bytes
    volumes: list[Volume]


@dataclass
class Scan:
    """What a vdisk holds: ``pv`` None (no LVM2 label), a PV without a VG here (``vg`` None),
    or a PV with its VG; ``problems`` lists what was skipped (a bad copy beside a good one)."""

    pv: PhysicalVolume | None
    vg: VolumeGroup | None = None
    problems: list[str] = field(default_factory=list)


# ---- label and PV header ---------------------------------------------------------------------

def read_label(head: bytes) -> PhysicalVolume | None:
    """The PV described by the first ``LABEL_SCAN_BYTES`` of a device, None when no sector
    starts with ``LABELONE``; NotAPhysicalVolume when one does but is not a valid label."""
    for sector in range(LABEL_SCAN_SECTORS):
        raw = head[sector * SECTOR_SIZE:(sector + 1) * SECTOR_SIZE]
        if len(raw) < SECTOR_SIZE or not raw.startswith(LABEL_ID):
            continue
        where = f"LVM2 label in sector {sector}"
        _, sector_xl, crc, offset, kind = LABEL_HEADER.unpack_from(raw)
        if lvm_crc(raw[LABEL_CRC_FROM:]) != crc:
            raise NotAPhysicalVolume(f"{where}: checksum {crc:#010x} does not match its "
                                     f"contents ({lvm_crc(raw[LABEL_CRC_FROM:]):#010x}): "
                                     f"not an LVM physical volume")
        if sector_xl != sector:
            raise NotAPhysicalVolume(f"{where} says it is sector {sector_xl}: not an LVM "
                                     f"physical volume")
        if kind != LVM2_LABEL:
            raise NotAPhysicalVolume(f"{where} has type {kind!r}, not {LVM2_LABEL!r}")
        if not LABEL_HEADER.size <= offset <= SECTOR_SIZE - PV_HEADER.size - DISK_LOCN.size:
            raise NotAPhysicalVolume(f"{where}: PV header offset {offset} is outside the "
                                     f"sector")
        return _pv_header(raw, offset, sector)
    return None


def _pv_header(raw: bytes, offset: int, sector: int) -> PhysicalVolume:
    uuid, size = PV_HEADER.unpack_from(raw, offset)
    pos = offset + PV_HEADER.size
    lists: list[list[tuple[int, int]]] = []
    for _ in range(2):              # data areas, then metadata areas, each zero-terminated
        areas = []
        while True:
            if pos + DISK_LOCN.size > SECTOR_SIZE:
                raise NotAPhysicalVolume(f"PV header in sector {sector}: its area lists run "
                                         f"past the sector")
            o, s = DISK_LOCN.unpack_from(raw, pos)
            pos += DISK_LOCN.size
            if o == 0 and s == 0:
                break
            areas.append((o, s))
        lists.append(areas)
    try:
        text = uuid.decode("ascii")
    except UnicodeDecodeError:
        raise NotAPhysicalVolume(f"PV header in sector {sector}: the uuid is not text") \
            from None
    return PhysicalVolume(sector, format_uuid(text), size, lists[0], lists[1])


# ---- metadata areas ----------------------------------------------------------------------

def _metadata_copy(read: Callable[[int, int], bytes], size: int,
                   area: tuple[int, int]) -> tuple[dict, int] | None:
    """(parsed text, seqno) of the committed copy in one metadata area; None when the area holds
    none yet (a PV not in a VG); DatastoreError when the header or the text fails a check."""
    start, length = area
    where = f"metadata area at byte {start}"
    if length < MDA_HEADER_SIZE or start + length > size:
        raise DatastoreError(f"{where}: {length} bytes do not fit the {size}-byte vdisk")
    head = read(start, MDA_HEADER_SIZE)
    checksum, magic, version, hstart, hsize = MDA_HEADER.unpack_from(head)
    if magic != FMTT_MAGIC or version != FMTT_VERSION:
        raise DatastoreError(f"{where}: no LVM2 metadata header (magic {magic!r}, "
                             f"version {version})")
    if lvm_crc(head[4:]) != checksum:
        raise DatastoreError(f"{where}: header checksum {checksum:#010x} does not match "
                             f"({lvm_crc(head[4:]):#010x}): corrupted or half-written")
    if hstart != start or hsize != length:
        raise DatastoreError(f"{where}: header says start {hstart}, size {hsize}; the PV "
                             f"header says {start}, {length}")
    offset, text_size, text_crc, flags = RAW_LOCN.unpack_from(head, MDA_HEADER.size)
    if (offset, text_size) == (0, 0) or flags & RAW_LOCN_IGNORED:
        return None
    ring = length - MDA_HEADER_SIZE
    if not MDA_HEADER_SIZE <= offset < length or not 0 < text_size <= ring:
        raise DatastoreError(f"{where}: metadata at {offset}, {text_size} bytes lies "
                             f"outside the area")
    if text_size > MAX_TEXT_BYTES:
        raise DatastoreError(f"{where}: {text_size} bytes of metadata text, more than the "
                             f"{MAX_TEXT_BYTES} read")
    first = min(text_size, length - offset)
    raw = read(start + offset, first)
    if first < text_size:           # the circular buffer wraps to just after the header
        raw += read(start + MDA_HEADER_SIZE, text_size - first)
    if lvm_crc(raw) != text_crc:
        raise DatastoreError(f"{where}: metadata checksum {text_crc:#010x} does not match "
                             f"its {text_size} bytes ({lvm_crc(raw):#010x}): corrupted or "
                             f"half-written")
    tree = parse_text(raw.rstrip(b"\0").decode("utf-8", "replace"))
    seqno = _vg_section(tree)[1].get("seqno")
    if not isinstance(seqno, int):
        raise DatastoreError(f"{where}: the volume group has no seqno")
    return tree, seqno


def scan(read: Callable[[int, int], bytes], size: int) -> Scan:
    """Read the LVM2 structures of a ``size``-byte device through ``read(offset, length)``:
    no label (``Scan(None)``), a PV with no VG yet, or the VG mapped onto this PV from the
    newest copy whose checks pass (module docstring). NotAPhysicalVolume for an invalid label,
    BadMetadata when no metadata copy is good."""
    pv = read_label(read(0, min(LABEL_SCAN_BYTES, size)))
    if pv is None:
        return Scan(None)
    problems, best = [], None
    for area in pv.metadata_areas:
        try:
            copy = _metadata_copy(read, size, area)
        except DatastoreError as e:
            problems.append(str(e))
            continue
        if copy is not None and (best is None or copy[1] > best[1]):
            best = copy
    if best is None:
        if problems:
            raise BadMetadata(f"PV {pv.uuid}: no good metadata copy: {'; '.join(problems)}",
                              pv)
        if not pv.metadata_areas:
            problems.append(f"PV {pv.uuid} has no metadata area: its VG's metadata is on "
                            f"other PVs, not read")
        return Scan(pv, None, problems)
    try:
        vg = volume_group(best[0], pv, size)
    except DatastoreError as e:
        raise BadMetadata(f"PV {pv.uuid}: {e}", pv) from None
    return Scan(pv, vg, problems)


# ---- the text format ---------------------------------------------------------------------

_TOKEN = re.compile(r"""\s+|\#[^\n]*|(?P<str>"(?:[^"\\]|\\.)*")|(?P<num>-?\d+(?:\.\d+)?)
                        |(?P<name>[A-Za-z0-9_.+\-]+)|(?P<punct>[=\[\]{},])""", re.X)


def _tokens(text: str) -> list[tuple[str, object]]:
    out = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise DatastoreError(f"metadata text: unexpected {text[pos:pos + 20]!r} at "
                                 f"character {pos}")
        pos = m.end()
        if m.group("str") is not None:
            out.append(("value", re.sub(r"\\(.)", r"\1", m.group("str")[1:-1])))
        elif m.group("num") is not None:
            s = m.group("num")
            out.append(("value", float(s) if "." in s else int(s)))
        elif m.group("name") is not None:
            out.append(("name", m.group("name")))
        elif m.group("punct") is not None:
            out.append((m.group("punct"), None))
    return out


def parse_text(text: str) -> dict:
    """The metadata text as nested dicts (sections) of ints, floats, strings and lists."""
    tokens = _tokens(text)
    pos = 0

    def section(depth: int, closing: str | None) -> dict:
        nonlocal pos
        if depth > MAX_NESTING:
            raise DatastoreError("metadata text: sections nested too deep")
        out: dict = {}
        while pos < len(tokens):
            kind, value = tokens[pos]
            if kind == closing:
                pos += 1
                return out
            if kind != "name":
                raise DatastoreError(f"metadata text: expected a name, found {kind} "
                                     f"{value!r}")
            pos += 1
            nxt = tokens[pos][0] if pos < len(tokens) else None
            pos += 1
            if nxt == "{":
                out[value] = section(depth + 1, "}")
            elif nxt == "=":
                out[value] = item()
            else:
                raise DatastoreError(f"metadata text: {value!r} is followed by neither "
                                     f"'=' nor '{{'")
        if closing is not None:
            raise DatastoreError("metadata text: a section is not closed")
        return out

    def item():
        nonlocal pos
        if pos >= len(tokens):
            raise DatastoreError("metadata text: a value is missing at the end")
        kind, value = tokens[pos]
        pos += 1
        if kind == "value":
            return value
        if kind != "[":
            raise DatastoreError(f"metadata text: expected a value, found {kind} {value!r}")
        items: list = []
        while pos < len(tokens) and tokens[pos][0] != "]":
            if items:
                if tokens[pos][0] != ",":
                    raise DatastoreError("metadata text: list items need commas")
                pos += 1
            kind, value = tokens[pos] if pos < len(tokens) else (None, None)
            if kind != "value":
                raise DatastoreError(f"metadata text: expected a list item, found {kind}")
            items.append(value)
            pos += 1
        if pos >= len(tokens):
            raise DatastoreError("metadata text: a list is not closed")
        pos += 1
        return items

    return section(0, None)


def _vg_section(tree: dict) -> tuple[str, dict]:
    sections = [(k, v) for k, v in tree.items() if isinstance(v, dict)]
    if len(sections) != 1:
        raise DatastoreError(f"metadata text: {len(sections)} volume group sections, not one")
    return sections[0]


def _section(parent: dict, key: str, where: str) -> dict:
    value = parent.get(key, {})
    if not isinstance(value, dict):
        raise DatastoreError(f"{where}: {key} is not a section")
    return value


def _int(section: dict, key: str, where: str) -> int:
    value = section.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DatastoreError(f"{where}: {key} is {value!r}, not a count")
    return value


# ---- from metadata to byte ranges --------------------------------------------------------

_SUB_LV_KEYS = ("metadata", "pool", "mirror_log")   # thin pool: metadata, data; mirror log


def _areas(seg: dict, where: str) -> list[tuple[str, int | None, int]]:
    """(name, first extent or None for a whole sub-LV, extents) of a segment's areas."""
    count = _int(seg, "extent_count", where)
    out = []
    for key in ("stripes", "mirrors"):
        items = seg.get(key)
        if items is None:
            continue
        if not isinstance(items, list) or len(items) % 2:
            raise DatastoreError(f"{where}: {key} is not a list of name, extent pairs")
        pairs = list(zip(items[0::2], items[1::2]))
        per = count // len(pairs) if key == "stripes" and pairs else count
        for name, first in pairs:
            if not isinstance(name, str) or isinstance(first, bool) or \
                    not isinstance(first, int) or first < 0:
                raise DatastoreError(f"{where}: bad {key} entry {name!r}, {first!r}")
            out.append((name, first, per))
    raids = seg.get("raids")
    for name in raids if isinstance(raids, list) else []:
        if isinstance(name, str):
            out.append((name, None, count))
    for key in _SUB_LV_KEYS:
        if isinstance(seg.get(key), str):
            out.append((seg[key], None, 0))
    return out


def volume_group(tree: dict, pv: PhysicalVolume, size: int) -> VolumeGroup:
    """Map the parsed metadata ``tree`` onto the PV ``pv`` of a ``size``-byte device."""
    name, vg = _vg_section(tree)
    where = f"volume group {name}"
    seqno = _int(vg, "seqno", where)
    extent_size = _int(vg, "extent_size", where) * SECTOR_SIZE
    if extent_size == 0:
        raise DatastoreError(f"{where}: extent_size is 0")
    pvs = _section(vg, "physical_volumes", where)
    mine = [k for k, v in pvs.items() if isinstance(v, dict) and v.get("id") == pv.uuid]
    if not mine:
        raise DatastoreError(f"{where} does not list this PV ({pv.uuid})")
    pv_name = mine[0]
    pe_start = _int(pvs[pv_name], "pe_start", f"{where}, {pv_name}") * SECTOR_SIZE
    lvs = {k: v for k, v in _section(vg, "logical_volumes", where).items()
           if isinstance(v, dict)}

    own: dict[str, list[list[int]]] = {}    # LV -> ranges on this PV
    subs: dict[str, list[str]] = {}         # LV -> sub-LVs it uses
    notes: dict[str, list[str]] = {}
    kinds: dict[str, list[str]] = {}
    for lv_name, lv in lvs.items():
        own[lv_name], subs[lv_name], notes[lv_name], kinds[lv_name] = [], [], [], []
        segs = [v for k, v in lv.items() if k.startswith("segment") and isinstance(v, dict)]
        for i, seg in enumerate(segs):
            swhere = f"{where}, LV {lv_name}, segment {i + 1}"
            kind = seg.get("type")
            if kind == "striped":
                kind = "linear" if seg.get("stripe_count", 1) == 1 else "striped"
            if kind not in kinds[lv_name]:
                kinds[lv_name].append(str(kind))
            if kind == "thin":
                notes[lv_name].append(f"thin LV: its blocks are allocated inside pool "
                                      f"{seg.get('thin_pool')!r} by the pool's own metadata, "
                                      f"not mapped here (they count to the pool)")
                continue
            if kind not in ("linear", "striped", "mirror", "thin-pool", "snapshot") and \
                    not str(kind).startswith("raid"):
                notes[lv_name].append(f"segment type {kind!r} is not mapped")
                continue
            for area, first, count in _areas(seg, swhere):
                if first is None or area in lvs:
                    if area not in lvs:
                        raise DatastoreError(f"{swhere}: sub-LV {area!r} does not exist")
                    subs[lv_name].append(area)
                elif area == pv_name:
                    lo = pe_start + first * extent_size
                    n = count * extent_size
                    if lo + n > size:
                        raise DatastoreError(f"{swhere}: extents {first}+{count} end at byte "
                                             f"{lo + n}, past the {size}-byte vdisk")
                    own[lv_name].append([lo, n])
                elif area in pvs:
                    notes[lv_name].append(f"{count} extents on {area} (another PV)")
                else:
                    raise DatastoreError(f"{swhere}: area {area!r} is neither a PV nor an LV")

    used_by = {sub for lv_name in lvs for sub in subs[lv_name]}

    def collect(lv_name: str, seen: frozenset) -> tuple[list[list[int]], list[str]]:
        if lv_name in seen:
            raise DatastoreError(f"{where}: LV {lv_name} uses itself")
        ranges, why = list(own[lv_name]), list(notes[lv_name])
        for sub in subs[lv_name]:
            r, w = collect(sub, seen | {lv_name})
            ranges += r
            why += w
        return ranges, why

    volumes = []
    for lv_name, lv in lvs.items():
        if lv_name in used_by:
            continue                # its ranges belong to the LV that uses it
        ranges, why = collect(lv_name, frozenset())
        status = lv.get("status") if isinstance(lv.get("status"), list) else []
        volumes.append(Volume(lv_name, str(lv.get("id", "")), "+".join(kinds[lv_name]),
                              "VISIBLE" in status, merge(ranges), not why,
                              "; ".join(dict.fromkeys(why))))
    volumes.sort(key=lambda v: (v.extents[0][0] if v.extents else size, v.name))
    return VolumeGroup(name, str(vg.get("id", "")), seqno, extent_size, pv_name, pe_start,
                       volumes)


def merge(ranges: list[list[int]]) -> list[list[int]]:
    """[first byte, length] ranges sorted, adjacent or overlapping ones joined."""
    out: list[list[int]] = []
    for lo, n in sorted(ranges):
        if out and lo <= out[-1][0] + out[-1][1]:
            out[-1][1] = max(out[-1][0] + out[-1][1], lo + n) - out[-1][0]
        else:
            out.append([lo, n])
    return out
