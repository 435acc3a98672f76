"""Errors of the cache layer: bad group settings, bad parameters, unreadable traces."""

from vmblock.errors import InvalidArgument


class CacheError(InvalidArgument):
    """Invalid cache or eviction-group setting (a user error: one line, exit 2)."""


class TraceError(InvalidArgument):
    """A trace file that is missing, truncated, corrupt or of an unknown format."""
