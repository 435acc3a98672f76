"""One end of the owner-worker socketpair as frames in and out, on an asyncio loop.

Frames (``wire``) are queued in order and written once the current callback is done, with one
gather ``sendmsg`` for all that were queued (the COMMANDs of one received buffer of PDUs, the
RESULTs of one received batch of COMMANDs go out together); what the socket does not take is
written when it is writable again. File descriptors ride as SCM_RIGHTS on
the first byte of their frame; the receiver queues every descriptor it gets in stream order,
so the frame that announces one (``HANDOFF``) finds it with ``take_fd`` whatever the kernel did
with the message boundaries. ``call`` sends one frame and waits for its answer with the loop
blocked: only a worker uses it, for a task management function whose answer must be known
before the TMF Response leaves (the owner never waits on a worker, so this cannot deadlock).
"""

from __future__ import annotations

import array
import logging
import os
import select
import socket
import time
from collections import deque
from typing import Callable

from .wire import HEADER, MAX_PAYLOAD, Msg, frame

log = logging.getLogger("vmblock.worker")

RECV_CHUNK = 1 << 20
MAX_FDS = 16                                  # descriptors one recvmsg may bring
ANC_SPACE = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)
IOV_MAX = 1024                                # buffers one sendmsg takes
CALL_TIMEOUT = 30.0                           # seconds ``call`` waits for its answer


class ChannelClosed(Exception):
    """The other end is gone (or sent a frame no process of ours sends)."""


class Channel:
    """Frames over a connected unix stream socket; ``on_frame(type, payload)`` gets each
    incoming frame in order, ``on_close()`` once when the other end goes."""

    def __init__(self, sock: socket.socket, loop, on_frame: Callable, on_close: Callable):
        sock.setblocking(False)
        self.sock = sock
        self.fd = sock.fileno()
        self.loop = loop
        self.on_frame = on_frame
        self.on_close = on_close
        self.rbuf = bytearray()
        self.fds: deque[int] = deque()            # received descriptors, in stream order
        self.deferred: deque[tuple] = deque()     # frames read by ``call``, not yet handled
        self.out: deque[list] = deque()           # [buffers, descriptors to attach]
        self.scratch = bytearray(RECV_CHUNK)      # recvmsg_into lands here
        self.flush_soon = False                   # a write is scheduled for this iteration
        self.writing = False
        self.closed = False
        loop.add_reader(self.fd, self._readable)

    # ---- out ---------------------------------------------------------------------------
    def send(self, mtype: Msg, *parts, fds: tuple[int, ...] = ()) -> None:
        """Queue one frame (its ``parts`` are not copied: keep them unchanged until sent),
        written when the current callback is done. ``fds`` go with its first byte and are
        closed here once sent."""
        if self.closed:
            for fd in fds:
                os.close(fd)
            return
        bufs = [memoryview(b).cast("B") for b in frame(mtype, *parts) if len(b)]
        if fds or not self.out or self.out[-1][1]:
            self.out.append([bufs, list(fds)])     # descriptors start an entry of their own
        else:
            self.out[-1][0].extend(bufs)
        if not (self.writing or self.flush_soon):
            self.flush_soon = True
            self.loop.call_soon(self._write)

    def _write(self) -> None:
        self.flush_soon = False
        while self.out and not self.closed:
            entry = self.out[0]
            bufs, fds = entry
            anc = ([(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
                   if fds else [])
            try:
                n = self.sock.sendmsg(bufs[:IOV_MAX], anc)
            except BlockingIOError:
                break
            except OSError:
                self._lost()
                return
            if fds:
                for fd in fds:
                    os.close(fd)
                entry[1] = []
            i = 0
            while n and n >= bufs[i].nbytes:
                n -= bufs[i].nbytes
                i += 1
            del bufs[:i]
            if n:
                bufs[0] = bufs[0][n:]
            if not bufs:
                self.out.popleft()
        if self.closed:
            return
        if self.out and not self.writing:
            self.loop.add_writer(self.fd, self._write)
            self.writing = True
        elif not self.out and self.writing:
            self.loop.remove_writer(self.fd)
            self.writing = False

    # ---- in ----------------------------------------------------------------------------
    def _receive(self) -> bool:
        """Read what is there into the buffer; False when the other end is gone."""
        try:
            n, anc, _flags, _addr = self.sock.recvmsg_into([self.scratch], ANC_SPACE)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
        for level, kind, cdata in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(cdata[:len(cdata) - len(cdata) % fds.itemsize])
                self.fds.extend(fds)
        if not n:
            return False
        self.rbuf += memoryview(self.scratch)[:n]
        return True

    def _readable(self) -> None:
        if self.closed:
            return
        if not self._receive():
            self._lost()
            return
        self._parse()

    def _next_frame(self) -> tuple | None:
        buf = self.rbuf
        if len(buf) < HEADER.size:
            return None
        n, mtype = HEADER.unpack_from(buf)
        if n > MAX_PAYLOAD:
            raise ChannelClosed(f"frame of {n} bytes")
        end = HEADER.size + n
        if len(buf) < end:
            return None
        payload = bytes(memoryview(buf)[HEADER.size:end])
        del buf[:end]
        return Msg(mtype), payload

    def _parse(self) -> None:
        try:
            while not self.closed:
                if self.deferred:
                    item = self.deferred.popleft()
                else:
                    item = self._next_frame()
                    if item is None:
                        return
                self.on_frame(*item)
        except (ChannelClosed, ValueError) as e:
            log.error("bad frame from the other process: %s", e)
            self._lost()

    def take_fd(self) -> int:
        """The next descriptor received (the one the frame being handled announced)."""
        return self.fds.popleft()

    # ---- a blocking round trip (worker only) -------------------------------------------
    def call(self, mtype: Msg, parts: list, reply: Msg, match: Callable) -> bytes:
        """Send a frame, then block until a ``reply`` frame whose payload ``match``es comes;
        frames that come before it are handled afterwards, in order. ChannelClosed if the
        other end goes or does not answer within CALL_TIMEOUT."""
        self.send(mtype, *parts)
        deadline = time.monotonic() + CALL_TIMEOUT
        while not self.closed:
            item = self._next_frame()
            if item is not None:
                if item[0] == reply and match(item[1]):
                    if self.deferred or self.rbuf:
                        self.loop.call_soon(self._parse)
                    return item[1]
                self.deferred.append(item)
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                break
            r, w, _ = select.select([self.fd], [self.fd] if self.out else [], [], left)
            if w:
                self._write()
            if r and not self._receive():
                self._lost()
        raise ChannelClosed("no answer from the owner")

    # ---- end ---------------------------------------------------------------------------
    def _lost(self) -> None:
        if self.closed:
            return
        self.close()
        self.on_close()

    def close(self) -> None:
        """Stop reading and writing, close the socket and every descriptor still held."""
        if self.closed:
            return
        self.closed = True
        self.loop.remove_reader(self.fd)
        if self.writing:
            self.loop.remove_writer(self.fd)
        for _bufs, fds in self.out:
            for fd in fds:
                os.close(fd)
        self.out.clear()
        while self.fds:
            os.close(self.fds.popleft())
        self.sock.close()
