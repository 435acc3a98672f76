"""``vmblock.worker.channel.Channel`` over a real socketpair on a real event loop: frames in
order whatever their size, a descriptor found by the frame that announces it, ``call``
handling the frames that came before its answer afterwards, and the other end's close."""

from __future__ import annotations

import asyncio
import os
import socket

from support.waiting import until_async
from vmblock.worker.channel import Channel
from vmblock.worker.wire import Msg, frame


class End:
    """One end of the pair: what it received, and whether it saw the other end go."""

    def __init__(self, sock, loop):
        self.got: list[tuple[Msg, bytes]] = []
        self.fds: list[int] = []
        self.gone = asyncio.Event()
        self.channel = Channel(sock, loop, self.frame, self.gone.set)

    def frame(self, mtype, payload):
        if mtype == Msg.HANDOFF:
            self.fds.append(self.channel.take_fd())
        self.got.append((mtype, payload))


async def pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    loop = asyncio.get_running_loop()
    return End(a, loop), End(b, loop)


def test_frames_arrive_in_order_small_and_large():
    async def run():
        a, b = await pair()
        big = os.urandom(5 << 20)            # larger than the socket buffer: queued, written
        a.channel.send(Msg.COMMAND, b"one")
        a.channel.send(Msg.COMMAND, big)
        a.channel.send(Msg.CLOSED, b"two")
        await until_async("three frames", lambda: len(b.got) == 3)
        assert b.got == [(Msg.COMMAND, b"one"), (Msg.COMMAND, big), (Msg.CLOSED, b"two")]
        a.channel.close()
        await b.gone.wait()
    asyncio.run(run())


def test_a_descriptor_travels_with_its_frame():
    async def run():
        a, b = await pair()
        r, w = os.pipe()
        a.channel.send(Msg.HANDOFF, b"x", fds=(w,))    # sent, then closed on this side
        await until_async("a frame at b", lambda: b.got)
        os.write(b.fds[0], b"through")
        os.close(b.fds[0])
        assert os.read(r, 100) == b"through"
        os.close(r)
        a.channel.close()
        b.channel.close()
    asyncio.run(run())


def test_call_returns_its_answer_and_keeps_earlier_frames_for_later():
    a_sock, b_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    b_sock.sendall(b"".join(answer_frames()))         # the answer comes after a RESULT

    async def run():
        a = End(a_sock, asyncio.get_running_loop())
        answer = a.channel.call(Msg.TMF, [b"ask"], Msg.TMF_DONE, lambda p: p == b"yes")
        assert answer == b"yes" and a.got == []
        await until_async("a frame at a", lambda: a.got)
        assert a.got == [(Msg.RESULT, b"earlier")]
        a.channel.close()
    asyncio.run(run())
    assert b_sock.recv(100).endswith(b"ask")
    b_sock.close()


def answer_frames() -> list[bytes]:
    """A RESULT, then the TMF_DONE a ``call`` waits for, as the owner would send them."""
    return [bytes(p) for m, body in ((Msg.RESULT, b"earlier"), (Msg.TMF_DONE, b"yes"))
            for p in frame(m, body)]
