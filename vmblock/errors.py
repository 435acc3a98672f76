"""The typed errors of the management plane.

Every user-facing failure is a ``VmblockError``: the CLI prints it as one line and exits 2, the
admin API sends it as JSON with ``http_status`` and the client raises the same class again from
``kind``, so a command fails the same way whether or not a server is running.
"""

from __future__ import annotations

import errno

# class name -> class of every VmblockError, filled as the classes are defined
_KINDS: dict[str, type[VmblockError]] = {}


class VmblockError(Exception):
    """Base of every error a user can cause or fix."""

    http_status = 400

    def __init_subclass__(cls, **kwargs):
        """Register every subclass by name, wherever it is defined, so it round-trips."""
        super().__init_subclass__(**kwargs)
        _KINDS[cls.__name__] = cls

    def to_json(self) -> dict:
        """The admin socket's error reply: the message and the class name."""
        return {"error": str(self), "kind": type(self).__name__}

    @staticmethod
    def from_json(obj: dict) -> VmblockError:
        """Rebuild the error the admin server raised, keeping its class."""
        cls = _KINDS.get(obj.get("kind", ""), VmblockError)
        return cls(obj.get("error", "unknown error"))


class NotFound(VmblockError):
    """The VM, vdisk, snapshot, group or key named does not exist."""

    http_status = 404


class AlreadyExists(VmblockError):
    """The name asked for is taken."""

    http_status = 409


class InvalidArgument(VmblockError):
    """A value the command cannot use (the message says which and why)."""

    http_status = 400


class CacheError(InvalidArgument):
    """Invalid cache or eviction-group setting (a user error: one line, exit 2)."""


class TraceError(InvalidArgument):
    """A trace file that is missing, truncated, corrupt or of an unknown format."""


class PoolError(VmblockError):
    """The pool is missing, locked by another process or damaged."""

    http_status = 500


class NoSpace(VmblockError):
    """A tier has too few free allocation units for the change asked for."""

    http_status = 507


class ServerError(VmblockError):
    """The admin server could not be reached or is needed but not running."""

    http_status = 503


class InternalError(VmblockError):
    """A bug: an exception the server did not expect, answered as JSON and logged."""

    http_status = 500


def io_failure(e: OSError) -> VmblockError:
    """The management-plane error for a change whose commit failed (nothing was changed)."""
    cls = NoSpace if e.errno == errno.ENOSPC else PoolError
    return cls(f"{e.strerror or e}; nothing was changed (the pool recovers by itself once "
               f"its file system has space and works again)")


_KINDS[VmblockError.__name__] = VmblockError
