"""vmblock: a VM-aware iSCSI block target."""

__version__ = "0.1.0"

DEFAULT_TARGET = "iqn.2026-11.io.vmblock:default"
DEFAULT_PORTAL = "127.0.0.1:3260"
DEFAULT_POOL = "./vmblock-data"
