"""Receive framing of an iSCSI connection: whole PDUs out of the receive buffer.

The machine receives into one preallocated buffer (``get_buffer``/``buffer_updated``, or
``receive_data``). Each complete PDU there is checked against the negotiated limits and digests,
parsed in place with ``pdu.parse_bhs`` and handed on: to the login phase before a session
exists, to the full feature phase dispatch after. A framing or sequencing fault anywhere below
raises ``ProtocolViolation``: the PDU is rejected and the connection dropped.
"""

from __future__ import annotations

import logging

from .pdu import BHS_LEN, DIGEST_LEN, RejectReason, digest_of, pad_len, parse_bhs, read_digest

log = logging.getLogger("vmblock.iscsi")

MIN_READ_ROOM = 65536


class ProtocolViolation(Exception):
    """The initiator broke framing or sequencing rules: reject the PDU and drop the connection."""

    def __init__(self, reason: int, why: str, header: bytes = b""):
        super().__init__(why)
        self.reason = reason
        self.header = header


class ReceiveFraming:
    """``ConnectionMachine`` part: the receive buffer and cutting it into PDUs."""

    def get_buffer(self):
        """Where the next received bytes go (at least MIN_READ_ROOM of it)."""
        if not self.rend:           # all consumed (every buffer at QD1): the whole of it
            return self.rview
        if len(self.rbuf) - self.rend < MIN_READ_ROOM:
            n = self.rend - self.rstart
            self.rview[:n] = self.rview[self.rstart:self.rend]
            self.rstart, self.rend = 0, n
        return self.rview[self.rend:]

    def buffer_updated(self, nbytes: int, now: float) -> None:
        """``nbytes`` were received into ``get_buffer()`` at time ``now``: act on every whole
        PDU in them and write the answers at once."""
        self.rend += nbytes
        self.last_rx = now
        stats = self.stats          # the buffer's arrival: a group of commands (vmblock.stats)
        self.rx_time = stats.arrive() if stats is not None else 0.0
        self.corked = True
        try:
            self._process_input()
        except ProtocolViolation as e:
            log.warning("%s: %s", self.peer[0], e)
            if self.session is not None:
                self._send_reject(e.reason, e.header)
            self._close_after_flush()
        except Exception:
            log.exception("%s: internal error, dropping the connection", self.peer[0])
            self.terminate("internal error")
        finally:
            self.corked = False
            self._flush()

    def receive_data(self, data: bytes, now: float) -> None:
        """``buffer_updated`` for bytes that were received elsewhere (in pieces that fit)."""
        view = memoryview(data)
        while view and not self.closing:
            room = self.get_buffer()
            n = min(len(room), len(view))
            room[:n] = view[:n]
            view = view[n:]
            self.buffer_updated(n, now)

    def _process_input(self) -> None:
        while not self.closing:
            view = self.rview                      # replaced once, when login completes
            start = self.rstart
            avail = self.rend - start
            if avail < BHS_LEN:
                if avail == 0:
                    self.rstart = self.rend = 0
                return
            p = parse_bhs(view, start)
            if p.dlen > self.rx_limit:
                raise ProtocolViolation(RejectReason.PROTOCOL_ERROR,
                                        f"DataSegmentLength {p.dlen} > {self.rx_limit}",
                                        bytes(view[start:start + BHS_LEN]))
            dlen = p.dlen
            hd = DIGEST_LEN if self.header_digest else 0
            dd = DIGEST_LEN if self.data_digest and dlen else 0
            data_off = start + BHS_LEN + p.ahs_len + hd
            total = data_off - start + dlen + (-dlen & 3) + dd      # + pad_len(dlen)
            if avail < total:
                return
            header = view[start:start + BHS_LEN]
            if hd and read_digest(view, data_off - hd) != digest_of(view[start:data_off - hd]):
                raise ProtocolViolation(RejectReason.PROTOCOL_ERROR, "header digest error")
            data = view[data_off:data_off + dlen] if dlen else b""
            if dd:
                padded = view[data_off:data_off + dlen + pad_len(dlen)]
                if read_digest(view, data_off + len(padded)) != digest_of(padded):
                    self.rstart = start + total
                    raise ProtocolViolation(RejectReason.DATA_DIGEST_ERROR, "data digest error",
                                            bytes(header))
            if p.ahs_len:
                p.ahs = bytes(view[start + BHS_LEN:start + BHS_LEN + p.ahs_len])
            self.rstart = start + total
            if self.session is None:
                self._login_pdu(p, data)
            else:
                self._ffp_pdu(p, data, header)
