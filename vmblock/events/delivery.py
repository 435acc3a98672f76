"""Delivery of events, off the data path: followers, ``events.exec``, ``events.webhook``, syslog.

An event reaches ``Delivery.listener`` from whatever thread recorded it (the event loop, the
executor, the store's committing thread), after it is durable in the meta DB. The listener
only hands it to the event loop (``call_soon_threadsafe``); there it is

* appended to a ring of the last ``RING`` events with a sequence number, which wakes the
  followers (``wait``: the long poll behind ``vmblock events --follow``);
* logged to syslog (``/dev/log``, facility daemon) when that socket exists;
* queued, bounded (``QUEUE_MAX``; beyond it an event is dropped for that channel and the drop
  logged), for the exec worker and the webhook worker, each one task working through its queue.

The exec worker runs ``events.exec`` (a shell command, ``/bin/sh -c``: a script's path or a
pipeline such as ``cat >> /var/log/vmblock-events.jsonl``) with the event's JSON on stdin,
killed (its whole process group) after ``events.exec_timeout``; a failure (exit status not 0,
timeout, cannot start) is logged and the command run once more. The webhook worker POSTs the
JSON to ``events.webhook`` with aiohttp, ``WEBHOOK_TIMEOUT`` per attempt, retrying
``events.webhook_retries`` times with waits doubling from ``BACKOFF_FIRST``. Both read the
settings per event (a ``config set`` applies to the next one). Neither can slow a command or
an admin verb: they only ever await, and the queues are bounded.

Every ``PRUNE_EVERY`` events (and at start) the meta DB is cut to ``events.retention``
events, in the executor.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import logging.handlers
import os
import signal
import socket

import aiohttp

from vmblock.meta import events as meta_events

log = logging.getLogger(__name__)

RING = 1000                 # events a follower can fall behind by
QUEUE_MAX = 1000            # events waiting for the exec command or the webhook
PRUNE_EVERY = 100
SYSLOG_PATH = "/dev/log"
WEBHOOK_TIMEOUT = 10.0      # seconds per POST
BACKOFF_FIRST = 1.0         # seconds before the first webhook retry, doubling after
EXEC_ATTEMPTS = 2           # the command, and once more after a failure
STDERR_SHOWN = 200          # bytes of a failed command's stderr in the log
# syslog level of each severity
SYSLOG_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR,
                 "critical": logging.CRITICAL}


class _SysLog(logging.handlers.SysLogHandler):
    """A syslog handler that counts a failed send instead of printing a traceback (syslogd
    restarting must not flood the server's log)."""

    failures = 0

    def handleError(self, record: logging.LogRecord) -> None:
        """Count it."""
        self.failures += 1


def one_line(event: dict) -> str:
    """An event as one line of text (syslog and ``vmblock events``)."""
    who = " ".join(f"{k}={event[k]}" for k in ("vm", "vdisk") if event.get(k))
    return (f"{event['kind']} {event['severity']}{' ' + who if who else ''}: "
            f"{event['message']}")


class Delivery:
    """The server's delivery of events; ``start`` and ``stop`` on the event loop."""

    def __init__(self, pool, syslog_path: str = SYSLOG_PATH,
                 backoff_first: float = BACKOFF_FIRST):
        self.pool = pool
        self.syslog_path = syslog_path
        self.backoff_first = backoff_first
        self.loop: asyncio.AbstractEventLoop | None = None
        self.ring: collections.deque[tuple[int, dict]] = collections.deque(maxlen=RING)
        self.seq = 0
        self.closed = False         # stopping: followers are answered at once
        self._arrived = asyncio.Event()
        self.exec_queue: asyncio.Queue = asyncio.Queue(QUEUE_MAX)
        self.webhook_queue: asyncio.Queue = asyncio.Queue(QUEUE_MAX)
        self.tasks: list[asyncio.Task] = []
        self.syslog: logging.Logger | None = None
        self.counts = collections.Counter()     # delivered / failed / dropped per channel
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Listen to the pool's events, start the two workers, cut the meta DB's events to
        the retention."""
        self.loop = asyncio.get_running_loop()
        if os.path.exists(self.syslog_path):
            try:
                probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                try:
                    probe.connect(self.syslog_path)
                finally:
                    probe.close()
                handler = _SysLog(address=self.syslog_path,
                                  facility=logging.handlers.SysLogHandler.LOG_DAEMON)
            except OSError as e:    # there, but nothing listens
                log.warning("events: no syslog delivery: %s: %s", self.syslog_path,
                            e.strerror or e)
            else:
                handler.setFormatter(logging.Formatter("vmblock: %(message)s"))
                self.syslog = logging.Logger("vmblock.events.syslog")
                self.syslog.addHandler(handler)
        self.pool.event_listeners.append(self.listener)
        self.tasks = [asyncio.create_task(self._exec_worker()),
                      asyncio.create_task(self._webhook_worker())]
        await self.loop.run_in_executor(None, self._prune)

    async def stop(self) -> None:
        """Stop listening and delivering (events still queued are not delivered); answer the
        followers waiting now, so the admin socket can close without waiting for them."""
        self.closed = True
        self._arrived.set()
        if self.listener in self.pool.event_listeners:
            self.pool.event_listeners.remove(self.listener)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        if self.syslog is not None:
            for handler in self.syslog.handlers:
                handler.close()

    def listener(self, event: dict) -> None:
        """``Pool.event_listeners`` entry: from any thread, hand the event to the loop."""
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._arrive, event)

    def _arrive(self, event: dict) -> None:
        self.seq += 1
        self.ring.append((self.seq, event))
        self._arrived.set()
        self._arrived = asyncio.Event()
        if self.syslog is not None:
            try:
                self.syslog.log(SYSLOG_LEVELS.get(event.get("severity"), logging.INFO),
                                "%s", one_line(event))
            except Exception:       # logging reports its own handler errors; be sure
                self.counts["syslog_failed"] += 1
        for name, queue in (("exec", self.exec_queue), ("webhook", self.webhook_queue)):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                self.counts[f"{name}_dropped"] += 1
                log.warning("events: %s queue full (%d): dropped %s %s", name, QUEUE_MAX,
                            event["kind"], event.get("id"))
        if self.seq % PRUNE_EVERY == 0:
            self.loop.run_in_executor(None, self._prune)

    def _prune(self) -> None:
        try:
            gone = meta_events.prune(self.pool, self.pool.settings().get("events.retention"))
        except Exception as e:      # the meta DB failing is reported by the store itself
            log.warning("events: cannot apply events.retention: %s", e)
            return
        if gone:
            log.info("events: deleted the %d oldest events (events.retention)", gone)

    async def wait(self, cursor: int | None, kind: str | None, timeout: float) -> dict:
        """The events delivered after ``cursor`` (of ``kind`` only), waiting up to
        ``timeout`` seconds for one; ``cursor`` None: none, only where the stream is now.
        ``missed``: events the ring no longer holds (the follower fell behind, or the
        server restarted)."""
        if cursor is None or cursor > self.seq:
            return {"cursor": self.seq, "events": [], "missed": 0}
        deadline = self.loop.time() + timeout
        while self.seq == cursor and not self.closed and self.loop.time() < deadline:
            arrived = self._arrived
            try:
                await asyncio.wait_for(arrived.wait(), deadline - self.loop.time())
            except TimeoutError:
                break
        first = self.ring[0][0] if self.ring else self.seq + 1
        evs = [e for s, e in self.ring if s > cursor and (kind is None or e["kind"] == kind)]
        return {"cursor": self.seq, "events": evs, "missed": max(0, first - cursor - 1)}

    # --- events.exec -------------------------------------------------------------------------

    async def _exec_worker(self) -> None:
        while True:
            event = await self.exec_queue.get()
            try:
                await self._exec_one(event)
            except Exception:       # never the end of the channel: the next event goes on
                self.counts["exec_failed"] += 1
                log.exception("events.exec: event %s not delivered", event.get("id"))

    async def _exec_one(self, event: dict) -> None:
        try:
            settings = self.pool.settings()
            command = settings.get("events.exec").strip()
            timeout = settings.get("events.exec_timeout")
        except Exception as e:
            log.warning("events.exec: cannot read the settings: %s", e)
            return
        if not command:
            return
        data = json.dumps(event).encode() + b"\n"
        for attempt in range(1, EXEC_ATTEMPTS + 1):
            error = await self._run(command, data, timeout)
            if error is None:
                self.counts["exec_delivered"] += 1
                return
            log.warning("events.exec %r for event %s failed (attempt %d of %d): %s",
                        command[:80], event.get("id"), attempt, EXEC_ATTEMPTS, error)
        self.counts["exec_failed"] += 1

    async def _run(self, command: str, data: bytes, timeout: float) -> str | None:
        """Run the shell command with ``data`` on stdin; None when it exits 0, else why not."""
        try:
            proc = await asyncio.create_subprocess_shell(
                command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE, start_new_session=True)
        except OSError as e:
            return f"cannot run it: {e.strerror or e}"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            try:
                _, err = await asyncio.wait_for(proc.communicate(data), timeout)
            except (OSError, RuntimeError):
                # it closed its stdin before taking the whole event (asyncio ignores the
                # BrokenPipeError, uvloop raises RuntimeError): its exit status decides
                err = b""
                await asyncio.wait_for(proc.wait(), max(0.0, deadline - loop.time()))
        except TimeoutError:
            try:
                os.killpg(proc.pid, signal.SIGKILL)    # its own session: the whole group
            except ProcessLookupError:
                pass
            await proc.wait()
            return f"killed after {timeout:g} s (events.exec_timeout)"
        except asyncio.CancelledError:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            raise
        if proc.returncode != 0:
            tail = err[-STDERR_SHOWN:].decode(errors="replace").strip()
            return f"exit status {proc.returncode}{': ' + tail if tail else ''}"
        return None

    # --- events.webhook ----------------------------------------------------------------------

    async def _webhook_worker(self) -> None:
        while True:
            event = await self.webhook_queue.get()
            try:
                await self._webhook_one(event)
            except Exception:       # never the end of the channel: the next event goes on
                self.counts["webhook_failed"] += 1
                log.exception("events.webhook: event %s not delivered", event.get("id"))

    async def _webhook_one(self, event: dict) -> None:
        try:
            settings = self.pool.settings()
            url, retries = settings.get("events.webhook"), \
                settings.get("events.webhook_retries")
        except Exception as e:
            log.warning("events.webhook: cannot read the settings: %s", e)
            return
        if not url:
            return
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT))
        delay = self.backoff_first
        for attempt in range(retries + 1):
            error = await self._post(url, event)
            if error is None:
                self.counts["webhook_delivered"] += 1
                return
            log.warning("events.webhook %s for event %s failed (attempt %d of %d): %s",
                        url, event.get("id"), attempt + 1, retries + 1, error)
            if attempt < retries:
                await asyncio.sleep(delay)
                delay *= 2
        self.counts["webhook_failed"] += 1

    async def _post(self, url: str, event: dict) -> str | None:
        """POST the event's JSON; None on a 2xx answer, else why not."""
        try:
            async with self._session.post(url, json=event) as resp:
                if 200 <= resp.status < 300:
                    return None
                return f"HTTP {resp.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            return f"{type(e).__name__}: {e}"
