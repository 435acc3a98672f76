"""The admin socket: ``POST /v1/<group>/<verb>`` with the verb's keyword arguments as JSON.

Replies are ``{"result": ...}`` or, for a VmblockError, ``{"error", "kind"}`` with the error's
HTTP status, so the client can raise the same error class the server did. Arguments are checked
against the verb's signature (vmblock.admin.schema) before the verb runs; every other failure is a
JSON reply too (``InternalError``, 500, logged).
"""

from __future__ import annotations

import inspect
import logging
import os
import socket

from aiohttp import web

from vmblock.admin.api import VERBS, Api, run_verb
from vmblock.errors import InternalError, InvalidArgument, PoolError, VmblockError
from vmblock.meta.pool import OWNER_ONLY_UMASK

log = logging.getLogger(__name__)

# sockaddr_un.sun_path is 108 bytes including the terminating NUL
MAX_SOCKET_PATH = 107


@web.middleware
async def _json_errors(request: web.Request, handler):
    """Every error reply is JSON with a message: aiohttp's own (no such path, wrong method,
    body too large) and any exception nobody expected (logged, then a 500)."""
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        err = InvalidArgument(f"{e.reason}: {request.method} {request.path}")
        return web.json_response(err.to_json(), status=e.status)
    except Exception as e:
        log.exception("admin request %s %s failed", request.method, request.path)
        err = InternalError(f"internal error: {type(e).__name__}: {str(e)[:200]} "
                            f"(see the server log)")
        return web.json_response(err.to_json(), status=err.http_status)


def make_app(api: Api) -> web.Application:
    """The aiohttp application answering every verb of ``VERBS`` on ``api``."""
    async def answer(request: web.Request) -> web.Response:
        group, verb = request.match_info["group"], request.match_info["verb"]
        if (group, verb) not in VERBS:
            err = InvalidArgument(f"unknown admin verb {group} {verb}")
            return web.json_response(err.to_json(), status=404)
        try:
            kwargs = await request.json() if request.can_read_body else {}
        except (ValueError, RecursionError) as e:   # not JSON, not UTF-8, nested too deep
            return web.json_response(InvalidArgument(f"bad request: {e}").to_json(), status=400)
        try:
            if not isinstance(kwargs, dict):
                raise InvalidArgument("request body must be a JSON object")
            result = run_verb(api, group, verb, kwargs)
            if inspect.isawaitable(result):   # verbs that drain a running LU first
                result = await result
        except VmblockError as e:
            return web.json_response(e.to_json(), status=e.http_status)
        return web.json_response({"result": result})

    app = web.Application(middlewares=[_json_errors])
    app.router.add_post("/v1/{group}/{verb}", answer)
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
    sock = bind_owner_only(socket_path)
    runner = web.AppRunner(make_app(api), access_log=None, handle_signals=False)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    return runner


def bind_owner_only(socket_path: str) -> socket.socket:
    """A unix socket bound under umask 077: bind creates the file, so it is owner-only from
    its first instant (a chmod after listening leaves a window for anyone to connect)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(OWNER_ONLY_UMASK)
    try:
        sock.bind(socket_path)
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old)
    return sock
