"""Per-VM QoS: an mClock-style scheduler (reservation, limit and share tags per VM) and the
gate that holds commands at the fabric's accounting point (docs/qos.md)."""
