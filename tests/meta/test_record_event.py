"""``Pool.record_event``: the one way a layer above the store records an event."""

import pytest

from vmblock.errors import InvalidArgument
from vmblock.meta import Pool


def test_event_is_persisted_and_handed_to_listeners(tmp_path):
    pool = Pool(str(tmp_path / "p"), create=True)
    seen = []
    pool.event_listeners.append(seen.append)
    ev = pool.record_event("vm_quota", "warning", "VM a is over its quota", vm="a",
                           advice="trim or raise the quota")
    assert seen == [ev]
    assert ev["id"].endswith("/vm_quota") and "vdisk" not in ev
    pool.close()
    pool = Pool(str(tmp_path / "p"))
    assert pool.events()[-1] == ev
    pool.close()


def test_unknown_severity_is_refused_and_nothing_recorded(tmp_path):
    pool = Pool(str(tmp_path / "p"), create=True)
    with pytest.raises(InvalidArgument, match="severity"):
        pool.record_event("vm_quota", "loud", "x")
    assert pool.events() == []
    pool.close()
