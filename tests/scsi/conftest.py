"""Fixtures for the SCSI core tests: a fresh store and target per test."""

import pytest
from scsi_rig import MemoryStore, Rig


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def rig(store) -> Rig:
    return Rig(store)
