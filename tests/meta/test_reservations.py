"""``PrRecord``: a vdisk's persistent reservations in the meta DB (APTPL), kept across a reopen
of the pool, deleted on request and with the vdisk."""

from support.stores import small_pool

from vmblock.meta import Pool
from vmblock.meta.reservations import PrRecord, pr_key

MiB = 1 << 20
STATE = {"generation": 3, "type": 1, "holder": None,
         "registrations": [{"initiator": "iqn.2026-11.test:a", "isid": 1, "target": "t",
                            "tpgt": 1, "key": 7}]}


def test_saved_state_survives_a_reopen_and_goes_on_request(tmp_path):
    pool = small_pool(tmp_path / "p", {"store.capacity_size": "64M"}, {"d": 16 * MiB})
    uuid = pool.vdisk("d").uuid
    PrRecord(pool, uuid).save(STATE)
    pool.close()
    pool = Pool(str(tmp_path / "p"))
    try:
        rec = PrRecord(pool, uuid)
        assert rec.load() == STATE
        rec.save(None)
        assert rec.load() is None
    finally:
        pool.close()


def test_deleting_the_vdisk_deletes_its_record(tmp_path):
    pool = small_pool(tmp_path / "p", {"store.capacity_size": "64M"}, {"d": 16 * MiB})
    try:
        uuid = pool.vdisk("d").uuid
        PrRecord(pool, uuid).save(STATE)
        pool.delete_vdisk("d")
        assert pool.record(pr_key(uuid)) is None
        assert pool.check()["ok"]
    finally:
        pool.close()
