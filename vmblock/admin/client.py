"""Clients of the verbs, with the same methods as ``Api``: ``AdminClient`` over the admin
socket of a running server, ``LocalClient`` on a pool this process opened.

Plain ``http.client`` over AF_UNIX: a CLI command pays for neither aiohttp's import nor an event
loop, and a dead server is detected by a refused connect, not a timeout. Both check arguments by
the same schema (vmblock.admin.schema), so a command fails alike with or without a server. Their
verb methods are made from the one verb table, ``vmblock.admin.api.VERBS``.
"""

from __future__ import annotations

import http.client
import json
import socket

from vmblock.admin.api import VERBS, Api, run_verb
from vmblock.admin.verbs import Verb
from vmblock.errors import ServerError, VmblockError

TIMEOUT = 60.0


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class AdminClient:
    """Calls the verbs of a running server; ``connect`` returns None when none answers."""

    def __init__(self, socket_path: str):
        self.socket_path = socket_path

    @classmethod
    def connect(cls, socket_path: str) -> AdminClient | None:
        """A client of the server listening on ``socket_path``, None when nothing answers."""
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(socket_path)
        except (FileNotFoundError, ConnectionRefusedError):
            return None   # no socket, or a stale one left by a killed server
        except OSError as e:
            raise ServerError(f"cannot reach the server at {socket_path}: {e.strerror}") from None
        finally:
            probe.close()
        return cls(socket_path)

    def call(self, group: str, verb: str, /, **kwargs):
        """Run a verb on the server; its VmblockError is raised here again, same class."""
        conn = _UnixConnection(self.socket_path, TIMEOUT)
        try:
            conn.request("POST", f"/v1/{group}/{verb}", body=json.dumps(kwargs),
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            body = resp.read()
        except (OSError, http.client.HTTPException) as e:
            raise ServerError(f"admin request {group} {verb} failed: {e}") from None
        finally:
            conn.close()
        try:
            reply = json.loads(body)
        except ValueError:
            raise ServerError(f"admin server sent a non-JSON reply ({resp.status})") from None
        if resp.status != 200 or not isinstance(reply, dict) or "result" not in reply:
            raise VmblockError.from_json(reply if isinstance(reply, dict) else {})
        return reply["result"]


class LocalClient:
    """The verbs on a pool opened by this process, arguments checked as the admin socket
    checks them."""

    def __init__(self, api: Api):
        self.api = api

    def call(self, group: str, verb: str, /, **kwargs):
        """Run a verb on the pool, arguments checked as the server checks them."""
        return run_verb(self.api, group, verb, kwargs)


def _client_method(v: Verb):
    def method(self, **kwargs):
        return self.call(v.noun, v.name, **kwargs)
    method.__name__ = v.method
    method.__doc__ = v.function.__doc__
    return method


for _v in VERBS.values():
    setattr(AdminClient, _v.method, _client_method(_v))
    setattr(LocalClient, _v.method, _client_method(_v))
