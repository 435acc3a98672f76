"""The LVM2 parser against images written by the real lvm2 tools (pvcreate, vgcreate,
vgcfgrestore on a loop device: support.lvm), its byte ranges checked against what lvm2 itself
reports (``lvs -o seg_pe_ranges``), and against damaged copies of those images."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.lvm import (EXTENT, MiB, change_vg, changed_runs, loop_device, lvm, make_vg,
                         needs_lvm)

from vmblock.datastore import lvm as lvm2
from vmblock.datastore.lvm import BadMetadata, NotAPhysicalVolume, lvm_crc

pytestmark = needs_lvm

SIZE = 64 * MiB
# three LVs, one of them in two segments: (first physical extent, extents)
LVS = {"vm-100-disk-0": [(0, 2), (6, 1)], "vm-100-disk-1": [(2, 1)], "vm-101-disk-0": [(3, 3)]}


def scan_image(data: bytes) -> lvm2.Scan:
    return lvm2.scan(lambda off, n: data[off:off + n], len(data))


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("lvm") / "pv.img"
    make_vg(path, SIZE, "pve", LVS)
    return path


def lvm_ranges(path) -> dict[str, list[list[int]]]:
    """Byte ranges of each LV as lvm2 reports them (``pvs --segments``: its PV segments, the
    PV's pe_start)."""
    with loop_device(path) as dev:
        out = lvm(dev, "pvs", "--segments", "--noheadings", "--separator", ";", "--units", "b",
                  "-o", "pvseg_start,pvseg_size,lv_name,pe_start")
    ranges: dict[str, list[list[int]]] = {}
    for line in out.splitlines():
        first, count, name, pe_start = (x.strip() for x in line.split(";"))
        if name:                # free space has no LV
            ranges.setdefault(name, []).append([int(pe_start.rstrip("B")) + int(first) * EXTENT,
                                                int(count) * EXTENT])
    return {k: lvm2.merge(v) for k, v in ranges.items()}


def test_three_lvs_map_to_lvm2s_own_ranges(image):
    s = scan_image(image.read_bytes())
    assert s.vg.name == "pve" and s.problems == []
    got = {v.name: v.extents for v in s.vg.volumes}
    assert got == lvm_ranges(image)
    assert got["vm-100-disk-0"] == [[MiB, 2 * EXTENT], [MiB + 6 * EXTENT, EXTENT]]
    assert all(v.mapped and v.kind == "linear" and v.visible for v in s.vg.volumes)


def test_the_crc_is_lvm2s(image):
    """Initial value 0xF597A6CF, reflected 0xEDB88320, no final xor: the label's stored CRC."""
    data = image.read_bytes()
    s = scan_image(data)
    sector = data[s.pv.label_sector * 512:(s.pv.label_sector + 1) * 512]
    assert struct.unpack_from("<I", sector, 16)[0] == lvm_crc(sector[20:])
    assert lvm_crc(b"") == 0xF597A6CF


def test_the_newest_version_wins(image, tmp_path):
    path = tmp_path / "v2.img"
    path.write_bytes(image.read_bytes())
    before = scan_image(path.read_bytes()).vg.seqno
    change_vg(path, "pve", {**LVS, "vm-101-disk-0": [(3, 3), (7, 1)], "vm-102-disk-0": [(8, 2)]})
    s = scan_image(path.read_bytes())
    assert s.vg.seqno == before + 1
    assert {v.name: v.extents for v in s.vg.volumes} == lvm_ranges(path)


def test_a_half_written_version(image, tmp_path):
    """lvm2 writes the new text, then the area header that points at it: with the text alone
    the old version still reads; a header whose text is not all there yet is bad metadata."""
    path = tmp_path / "v2.img"
    path.write_bytes(image.read_bytes())
    change_vg(path, "pve", {**LVS, "vm-102-disk-0": [(8, 2)]})
    old, new = image.read_bytes(), path.read_bytes()
    runs = changed_runs(old, new)
    header = [r for r in runs if r[0] == 4096]
    text = [r for r in runs if r[0] != 4096]
    assert header and text

    def applied(chosen):
        out = bytearray(old)
        for off, n in chosen:
            out[off:off + n] = new[off:off + n]
        return bytes(out)
    seqno = scan_image(old).vg.seqno
    assert scan_image(applied(text)).vg.seqno == seqno
    for partial in ([], [(text[0][0], 512)]):     # the header and none or a sector of the text
        with pytest.raises(BadMetadata, match="metadata checksum"):
            scan_image(applied(header + partial))
    assert scan_image(applied(runs)).vg.seqno == seqno + 1


def _metadata_offset(data: bytes) -> tuple[int, int]:
    s = scan_image(data)
    start = s.pv.metadata_areas[0][0]
    offset, size, _, _ = struct.unpack_from("<QQII", data, start + 40)
    return start + offset, size


def test_a_flipped_byte_in_the_text_is_bad_metadata(image):
    data = bytearray(image.read_bytes())
    at, size = _metadata_offset(bytes(data))
    data[at + size // 2] ^= 0x01
    with pytest.raises(BadMetadata, match="metadata checksum .* does not match") as e:
        scan_image(bytes(data))
    assert e.value.pv.metadata_areas      # what to keep watching


def test_a_flipped_byte_in_the_area_header_is_bad_metadata(image):
    data = bytearray(image.read_bytes())
    start = scan_image(bytes(data)).pv.metadata_areas[0][0]
    data[start + 60] ^= 0x80
    with pytest.raises(BadMetadata, match="header checksum"):
        scan_image(bytes(data))


def test_no_label_is_no_pv():
    assert scan_image(bytes(SIZE // 16)).pv is None


def test_a_label_like_sector_is_not_a_pv():
    data = bytearray(1 * MiB)
    data[512:512 + 32] = b"LABELONE" + bytes(range(24))
    with pytest.raises(NotAPhysicalVolume, match="sector 1: checksum .* not an LVM"):
        scan_image(bytes(data))


def test_a_pv_without_a_vg(tmp_path):
    path = tmp_path / "pv.img"
    with open(path, "wb") as f:
        f.truncate(SIZE)
    with loop_device(path) as dev:
        lvm(dev, "pvcreate", "-ff", "-y", dev)
    s = scan_image(path.read_bytes())
    assert s.pv is not None and s.vg is None and s.problems == []
    assert s.pv.watched()[1] == (4096, s.pv.metadata_areas[0][1])


def test_two_metadata_areas_one_bad(tmp_path):
    path = tmp_path / "pv2.img"
    with open(path, "wb") as f:
        f.truncate(SIZE)
    with loop_device(path) as dev:
        lvm(dev, "pvcreate", "-ff", "-y", "--pvmetadatacopies", "2", dev)
        lvm(dev, "vgcreate", "-s", "4m", "pve", dev)
    change_vg(path, "pve", LVS)
    data = bytearray(path.read_bytes())
    s = scan_image(bytes(data))
    assert len(s.pv.metadata_areas) == 2 and s.pv.metadata_areas[1][0] > SIZE // 2
    at, size = _metadata_offset(bytes(data))
    data[at + 10] ^= 0x01
    s = scan_image(bytes(data))
    assert [v.name for v in s.vg.volumes] == sorted(LVS, key=lambda n: LVS[n][0][0])
    assert len(s.problems) == 1 and "checksum" in s.problems[0]


THIN = """
pool {
id = "tttttt-tttt-tttt-tttt-tttt-tttt-tttttt"
status = ["READ", "WRITE", "VISIBLE"]
flags = []
segment_count = 1
segment1 {
start_extent = 0
extent_count = 2
type = "thin-pool"
metadata = "pool_tmeta"
pool = "pool_tdata"
transaction_id = 1
chunk_size = 128
discards = "passdown"
zero_new_blocks = 1
}
}
thin1 {
id = "uuuuuu-tttt-tttt-tttt-tttt-tttt-tttttt"
status = ["READ", "WRITE", "VISIBLE"]
flags = []
segment_count = 1
segment1 {
start_extent = 0
extent_count = 4
type = "thin"
thin_pool = "pool"
transaction_id = 0
device_id = 1
}
}
pool_tmeta {
id = "vvvvvv-tttt-tttt-tttt-tttt-tttt-tttttt"
status = ["READ", "WRITE"]
flags = []
segment_count = 1
segment1 {
start_extent = 0
extent_count = 1
type = "striped"
stripe_count = 1
stripes = ["pv0", 10]
}
}
pool_tdata {
id = "wwwwww-tttt-tttt-tttt-tttt-tttt-tttttt"
status = ["READ", "WRITE"]
flags = []
segment_count = 1
segment1 {
start_extent = 0
extent_count = 2
type = "striped"
stripe_count = 1
stripes = ["pv0", 11]
}
}
"""


def test_thin_pool_is_mapped_thin_lvs_are_not(tmp_path):
    """A thin pool and a thin LV restored by vgcfgrestore --force: the pool owns its hidden
    data and metadata LVs' ranges (as lvm2 reports them); the thin LV maps nothing."""
    path = tmp_path / "thin.img"
    make_vg(path, SIZE, "pve", {"vm-100-disk-0": [(0, 2)]}, THIN)
    s = scan_image(path.read_bytes())
    by = {v.name: v for v in s.vg.volumes}
    assert set(by) == {"vm-100-disk-0", "pool", "thin1"}     # tmeta/tdata belong to the pool
    ranges = lvm_ranges(path)
    assert by["pool"].extents == lvm2.merge(ranges["[pool_tdata]"] + ranges["[pool_tmeta]"])
    assert by["pool"].extents == [[MiB + 10 * EXTENT, 3 * EXTENT]] and by["pool"].mapped
    assert by["pool"].kind == "thin-pool" and by["thin1"].kind == "thin"
    assert by["thin1"].extents == [] and not by["thin1"].mapped
    assert "thin LV" in by["thin1"].note and "'pool'" in by["thin1"].note


RAID1 = """
r1 {
id = "rrrrrr-tttt-tttt-tttt-tttt-tttt-tttttt"
status = ["READ", "WRITE", "VISIBLE"]
flags = []
segment_count = 1
segment1 {
start_extent = 0
extent_count = 2
type = "raid1"
device_count = 2
region_size = 1024
raids = ["r1_rmeta_0", "r1_rimage_0", "r1_rmeta_1", "r1_rimage_1"]
}
}
r1_rmeta_0 {
id = "rrrrr0-tttt-tttt-tttt-tttt-tttt-tttttt"
status = ["READ", "WRITE"]
flags = []
segment_count = 1
segment1 {
start_extent = 0
extent_count = 1
type = "striped"
stripe_count = 1
stripes = ["pv0", 12]
}
}
r1_rimage_0 {
id = "rrrrr1-tttt-tttt-tttt-tttt-tttt-tttttt"
status = ["READ", "WRITE"]
flags = []
segment_count = 1
segment1 {
start_extent = 0
extent_count = 2
type = "striped"
stripe_count = 1
stripes = ["pv0", 13]
}
}
r1_rmeta_1 {
id = "rrrrr2-tttt-tttt-tttt-tttt-tttt-tttttt"
status = ["READ", "WRITE"]
flags = []
segment_count = 1
segment1 {
start_extent = 0
extent_count = 1
type = "striped"
stripe_count = 1
stripes = ["pv0", 15]
}
}
r1_rimage_1 {
id = "rrrrr3-tttt-tttt-tttt-tttt-tttt-tttttt"
status = ["READ", "WRITE"]
flags = []
segment_count = 1
segment1 {
start_extent = 0
extent_count = 2
type = "striped"
stripe_count = 1
stripes = ["pv0", 16]
}
}
"""


def test_raid1_counts_its_images_and_metadata_to_the_lv(tmp_path):
    """A raid1 LV restored by vgcfgrestore: its hidden rimage/rmeta sub-LVs' ranges (as lvm2
    reports them) are the LV's."""
    path = tmp_path / "raid.img"
    make_vg(path, 2 * SIZE, "pve", {"vm-100-disk-0": [(0, 2)]}, RAID1)
    by = {v.name: v for v in scan_image(path.read_bytes()).vg.volumes}
    assert set(by) == {"vm-100-disk-0", "r1"} and by["r1"].kind == "raid1"
    ranges = lvm_ranges(path)
    parts = [r for name in ("[r1_rmeta_0]", "[r1_rimage_0]", "[r1_rmeta_1]", "[r1_rimage_1]")
             for r in ranges[name]]
    assert by["r1"].extents == lvm2.merge(parts) == [[MiB + 12 * EXTENT, 6 * EXTENT]]


def test_the_circular_buffer_wraps(image):
    """The text moved so it wraps past the area's end to just after the header, as lvm2
    leaves it after enough versions; checksum over the wrapped bytes."""
    data = bytearray(image.read_bytes())
    s = scan_image(bytes(data))
    start, length = s.pv.metadata_areas[0]
    at, size = _metadata_offset(bytes(data))
    text = bytes(data[at:at + size])
    new_off = length - 100                   # 100 bytes at the end, the rest after the header
    data[start + new_off:start + length] = text[:100]
    data[start + 512:start + 512 + size - 100] = text[100:]
    struct.pack_into("<QQII", data, start + 40, new_off, size, lvm_crc(text), 0)
    struct.pack_into("<I", data, start, lvm_crc(bytes(data[start + 4:start + 512])))
    assert [v.extents for v in scan_image(bytes(data)).vg.volumes] == \
        [v.extents for v in s.vg.volumes]


@pytest.mark.parametrize("text, match", [
    ("vg { seqno = 1 ", "not closed"),
    ("vg { seqno = [1, 2 }", "list"),
    ("vg { seqno = 1 } other { }", "2 volume group sections"),
    ("vg { a { " * 40 + "}" * 40, "nested too deep"),
    ("vg { seqno = @ }", "unexpected"),
])
def test_bad_text_gets_a_clear_error(text, match):
    with pytest.raises(lvm2.DatastoreError, match=match):
        lvm2._vg_section(lvm2.parse_text(text))


@pytest.fixture(scope="module")
def image_head(image):
    return image.read_bytes()[:2 * MiB]


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_damaged_images_give_an_answer_or_a_datastore_error(image_head, data):
    """Random bytes over a real PV's label, PV header, area header or text (the checksums
    recomputed half the time, so the parsers behind them see the damage too): a Scan or a
    DatastoreError, nothing else."""
    buf = bytearray(image_head)                 # the rest of the image is zeros

    def scan(data: bytes) -> lvm2.Scan:
        return lvm2.scan(lambda off, n: data[off:off + n].ljust(n, b"\0"), SIZE)
    pv = scan(bytes(buf)).pv
    start = pv.metadata_areas[0][0]
    at, size = struct.unpack_from("<QQ", buf, start + 40)
    region = data.draw(st.sampled_from([(512, 512), (start, 512), (start + at, size)]))
    for _ in range(data.draw(st.integers(1, 8))):
        i = region[0] + data.draw(st.integers(0, region[1] - 1))
        buf[i] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        text = bytes(buf[start + at:start + at + size])
        struct.pack_into("<I", buf, start + 56, lvm_crc(text))
        struct.pack_into("<I", buf, start, lvm_crc(bytes(buf[start + 4:start + 512])))
        struct.pack_into("<I", buf, 512 + 16, lvm_crc(bytes(buf[512 + 20:1024])))
    try:
        scan(bytes(buf))
    except lvm2.DatastoreError:
        pass
