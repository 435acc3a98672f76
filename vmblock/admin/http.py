"""The admin socket: ``POST /v1/<group>/<verb>`` with the verb's keyword arguments as JSON.

Replies are ``{"result": ...}`` or, for a VmblockError, ``{"error", "kind"}`` with the error's
HTTP status, so the client can raise the same error class the server did.
"""

from __future__ import annotations

import inspect
import logging
import os

from aiohttp import web

from vmblock.admin.api import VERBS, Api
from vmblock.errors import InvalidArgument, PoolError, VmblockError

log = logging.getLogger(__name__)

# sockaddr_un.sun_path is 108 bytes including the terminating NUL
MAX_SOCKET_PATH = 107


def make_app(api: Api) -> web.Application:
    async def call(request: web.Request) -> web.Response:
        group, verb = request.match_info["group"], request.match_info["verb"]
        if (group, verb) not in VERBS:
            err = InvalidArgument(f"unknown admin verb {group} {verb}")
            return web.json_response(err.to_json(), status=404)
        try:
            kwargs = await request.json() if request.can_read_body else {}
            if not isinstance(kwargs, dict):
                raise InvalidArgument("request body must be a JSON object")
            try:
                result = getattr(api, f"{group}_{verb}")(**kwargs)
            except TypeError as e:
                raise InvalidArgument(f"{group} {verb}: {e}") from None
            if inspect.isawaitable(result):   # verbs that drain a running LU first
                result = await result
        except VmblockError as e:
            return web.json_response(e.to_json(), status=e.http_status)
        except ValueError as e:   # body is not JSON
            return web.json_response(InvalidArgument(f"bad request: {e}").to_json(), status=400)
        return web.json_response({"result": result})

    app = web.Application()
    app.router.add_post("/v1/{group}/{verb}", call)
    return app


async def start(api: Api, socket_path: str) -> web.AppRunner:
    """Serve ``api`` on ``socket_path``.

    The caller holds the pool's lock, so a socket file already there is a killed server's leftover.
    """
    if len(os.fsencode(socket_path)) > MAX_SOCKET_PATH:
        raise PoolError(f"admin socket path {socket_path} is longer than {MAX_SOCKET_PATH} bytes; "
                        f"use a shorter pool path")
    try:
        os.unlink(socket_path)
    except FileNotFoundError:
        pass
    runner = web.AppRunner(make_app(api), access_log=None, handle_signals=False)
    await runner.setup()
    await web.UnixSite(runner, socket_path).start()
    os.chmod(socket_path, 0o600)
    return runner
