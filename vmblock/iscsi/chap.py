"""CHAP authentication for the login security stage (RFC 7143 12.1.3, RFC 1994).

The target sends CHAP_A/CHAP_I/CHAP_C, checks the initiator's CHAP_N/CHAP_R, and for mutual
CHAP answers the initiator's own CHAP_I/CHAP_C with its CHAP_N/CHAP_R.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

CHAP_MD5 = 5
CHAP_SHA256 = 7
ALGORITHMS = {CHAP_MD5: hashlib.md5, CHAP_SHA256: hashlib.sha256}
CHALLENGE_LEN = 32
MAX_BINARY_LEN = 1024


class ChapError(Exception):
    """Authentication failed (login status 0x0201)."""


@dataclass(frozen=True)
class ChapSecrets:
    """The CHAP credentials of a target or of discovery (``vmblock.server.chap_of``): the
    initiator must prove ``user``/``secret``; the mutual pair, if set, is what the target answers
    with when the initiator challenges it back."""

    user: str
    secret: str
    mutual_user: str | None = None
    mutual_secret: str | None = None

    @property
    def mutual(self) -> bool:
        """True when both mutual fields are set, i.e. the target may answer a mutual challenge."""
        return bool(self.mutual_user and self.mutual_secret)


def decode_binary(value: str) -> bytes:
    """RFC 7143 6.1 binary-value: 0x hex or 0b base64."""
    prefix, body = value[:2].lower(), value[2:]
    if len(body) > 2 * MAX_BINARY_LEN:
        raise ChapError("binary value too long")
    try:
        if prefix == "0x":
            return bytes.fromhex(body if len(body) % 2 == 0 else "0" + body)
        if prefix == "0b":
            return base64.b64decode(body, validate=True)
    except ValueError as e:
        raise ChapError(f"bad binary value: {e}") from e
    raise ChapError("binary value needs 0x or 0b prefix")


def chap_response(algorithm: int, ident: int, secret: str, challenge: bytes) -> bytes:
    """CHAP_R bytes: hash(ident byte + secret + challenge) with the CHAP_A algorithm (RFC 1994)."""
    return ALGORITHMS[algorithm](bytes([ident]) + secret.encode() + challenge).digest()


class ChapAuthenticator:
    """Target side of one CHAP exchange."""

    def __init__(self, creds: ChapSecrets):
        self.creds = creds
        self.algorithm: int | None = None
        self.ident = 0
        self.challenge = b""

    def select(self, offered: str) -> list[tuple[str, str]]:
        """Answer CHAP_A with our choice and our challenge."""
        try:
            choices = [int(a) for a in offered.split(",")]
        except ValueError as e:
            raise ChapError("bad CHAP_A") from e
        for a in choices:
            if a in ALGORITHMS:
                self.algorithm = a
                break
        else:
            raise ChapError("no supported CHAP algorithm offered")
        self.ident = secrets.randbelow(256)
        self.challenge = secrets.token_bytes(CHALLENGE_LEN)
        return [("CHAP_A", str(self.algorithm)), ("CHAP_I", str(self.ident)),
                ("CHAP_C", "0x" + self.challenge.hex())]

    def verify(self, keys: dict) -> list[tuple[str, str]]:
        """Check CHAP_N/CHAP_R; return the mutual answer (or nothing)."""
        if self.algorithm is None:
            raise ChapError("CHAP_R before CHAP_A")
        name, resp = keys.get("CHAP_N"), keys.get("CHAP_R")
        if name is None or resp is None:
            raise ChapError("CHAP_N and CHAP_R required")
        expected = chap_response(self.algorithm, self.ident, self.creds.secret, self.challenge)
        if name != self.creds.user or not hmac.compare_digest(decode_binary(resp), expected):
            raise ChapError("bad CHAP credentials")
        ident, chal = keys.get("CHAP_I"), keys.get("CHAP_C")
        if ident is None and chal is None:
            return []
        if ident is None or chal is None:
            raise ChapError("mutual CHAP needs both CHAP_I and CHAP_C")
        if not self.creds.mutual:
            raise ChapError("initiator asked for mutual CHAP, none configured")
        try:
            ident_n = int(ident, 0)
        except ValueError as e:
            raise ChapError("bad CHAP_I") from e
        their_challenge = decode_binary(chal)
        if not 0 <= ident_n <= 255 or not their_challenge:
            raise ChapError("bad mutual CHAP challenge")
        if their_challenge == self.challenge:
            raise ChapError("reflected CHAP challenge")   # RFC 7143 12.1.3: refuse reflection
        answer = chap_response(self.algorithm, ident_n, self.creds.mutual_secret, their_challenge)
        return [("CHAP_N", self.creds.mutual_user), ("CHAP_R", "0x" + answer.hex())]
