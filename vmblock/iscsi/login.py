"""The login phase of one connection as a pure state machine (RFC 7143 6.3, 11.12, 11.13).

``LoginNegotiator.step(pdu, data)`` consumes one Login Request and returns a ``LoginReply``:
the flags, status and text of the Login Response to send. Session binding (TSIH, reinstatement)
is asked of the registry passed in, so this module does no I/O at all.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from . import params
from .chap import ChapAuthenticator, ChapError, ChapSecrets
from .pdu import LOGIN_FLAG_CONTINUE, LOGIN_FLAG_TRANSIT, Pdu



class LoginStatus(enum.IntEnum):
    """Login Response Status-Class and Status-Detail as one 16-bit value (RFC 7143 11.13.5)."""

    SUCCESS = 0x0000
    INITIATOR_ERROR = 0x0200
    AUTH_FAILED = 0x0201
    AUTHORIZATION_FAILURE = 0x0202
    TARGET_NOT_FOUND = 0x0203
    TARGET_REMOVED = 0x0204
    UNSUPPORTED_VERSION = 0x0205
    TOO_MANY_CONNECTIONS = 0x0206
    MISSING_PARAMETER = 0x0207
    CANT_INCLUDE_IN_SESSION = 0x0208
    SESSION_TYPE_UNSUPPORTED = 0x0209
    SESSION_DOES_NOT_EXIST = 0x020A
    INVALID_DURING_LOGIN = 0x020B
    TARGET_ERROR = 0x0300
    OUT_OF_RESOURCES = 0x0302


class Stage(enum.IntEnum):
    """Login stages, the CSG/NSG field values (RFC 7143 11.12.3); 2 is reserved."""

    SECURITY = 0
    OPERATIONAL = 1
    FULL_FEATURE = 3


# The login stage machine (RFC 7143 6.3, 11.12.3). STAGE_MAY_FOLLOW: the stages a request
# may name as its CSG after the stage the last one named (the login starts in SECURITY and
# may begin in OPERATIONAL; it never goes back). TRANSITIONS: where a request with the T bit
# may go from its CSG. Anything else is an initiator error; both are checked in
# ``check_stages`` only.
STAGE_MAY_FOLLOW = {
    Stage.SECURITY: frozenset({Stage.SECURITY, Stage.OPERATIONAL}),
    Stage.OPERATIONAL: frozenset({Stage.OPERATIONAL}),
}
TRANSITIONS = {
    Stage.SECURITY: frozenset({Stage.OPERATIONAL, Stage.FULL_FEATURE}),
    Stage.OPERATIONAL: frozenset({Stage.FULL_FEATURE}),
}

ISCSI_VERSION = 0x00
MAX_LOGIN_PDUS = 64
LOGIN_MRDSL = 8192          # RFC 7143 13.12: the default holds for Login PDUs, both ways

CHAP_KEYS = ("CHAP_A", "CHAP_N", "CHAP_R", "CHAP_I", "CHAP_C")


def check_stages(stage: Stage, csg: int, nsg: int, transit: bool, cont: bool) -> None:
    """Refuse a request whose CSG, NSG and T/C bits do not fit the stage machine."""
    if cont and transit:
        raise LoginFailure(LoginStatus.INITIATOR_ERROR, "T and C bits both set")
    if csg not in STAGE_MAY_FOLLOW[stage]:
        raise LoginFailure(LoginStatus.INITIATOR_ERROR, "bad current stage")
    if transit and nsg not in TRANSITIONS[csg]:
        raise LoginFailure(LoginStatus.INITIATOR_ERROR, "bad next stage")


class LoginFailure(Exception):
    """The login ends with this Login Response status (RFC 7143 11.13.5)."""

    def __init__(self, status: int, why: str):
        super().__init__(why)
        self.status = status


@dataclass
class LoginReply:
    """What to answer one Login Request with."""

    flags: int = 0
    status: int = LoginStatus.SUCCESS
    text: list = field(default_factory=list)
    done: bool = False          # the initiator may enter full feature phase after this reply
    data: bytes = b""           # the data segment to send: ``text`` encoded, or a piece of it


class LoginNegotiator:
    """Negotiates one connection's login. ``service`` provides targets, offer and discovery CHAP."""

    def __init__(self, service, registry):
        self.service = service
        self.registry = registry
        self.first = True
        self.pdus = 0
        self.stage = Stage.SECURITY
        self.pending = bytearray()          # text of Login Requests with the C bit
        self.isid = self.tsih = self.cid = 0
        self.initiator = ""
        self.initiator_alias = ""
        self.discovery = False
        self.target = None                  # TargetEntry of a normal session
        self.auth_required: ChapSecrets | None = None
        self.authenticated = False
        self.auth_method = ""
        self.chap: ChapAuthenticator | None = None
        self.neg: params.Negotiation | None = None
        self.held: LoginReply | None = None  # an answer longer than LOGIN_MRDSL being sent
        self.held_rest = b""                # its text not sent yet

    def step(self, pdu: Pdu, data) -> LoginReply:
        """Consume one Login Request; never raises (a failure is a reply with its status)."""
        try:
            if self.held is not None:
                return self._continue_answer(pdu, data)
            return self._split(self._step(pdu, data))
        except LoginFailure as e:
            return LoginReply(status=e.status, text=[])
        except ChapError:
            return LoginReply(status=LoginStatus.AUTH_FAILED)
        except params.NegotiationError:
            return LoginReply(status=LoginStatus.INITIATOR_ERROR)

    def _split(self, reply: LoginReply) -> LoginReply:
        """An answer longer than LOGIN_MRDSL goes out in pieces with the C bit and T clear
        (RFC 7143 11.13.3); the initiator asks for each next piece with an empty request."""
        body = params.encode_text(reply.text)
        if len(body) <= LOGIN_MRDSL:
            reply.data = body
            return reply
        self.held, self.held_rest = reply, body[LOGIN_MRDSL:]
        csg = (reply.flags >> 2) & 3
        return LoginReply(flags=LOGIN_FLAG_CONTINUE | (csg << 2), data=body[:LOGIN_MRDSL])

    def _continue_answer(self, pdu, data) -> LoginReply:
        self._count_and_check_ids(pdu)
        if data or pdu.flags & LOGIN_FLAG_CONTINUE:
            raise LoginFailure(LoginStatus.INITIATOR_ERROR, "text sent while the target's answer continues")
        piece, self.held_rest = self.held_rest[:LOGIN_MRDSL], self.held_rest[LOGIN_MRDSL:]
        if self.held_rest:
            csg = (self.held.flags >> 2) & 3
            return LoginReply(flags=LOGIN_FLAG_CONTINUE | (csg << 2), data=piece)
        reply, self.held = self.held, None
        reply.data = piece
        return reply

    def _count_and_check_ids(self, pdu) -> None:
        self.pdus += 1
        if self.pdus > MAX_LOGIN_PDUS:
            raise LoginFailure(LoginStatus.INITIATOR_ERROR, "too many login PDUs")
        if not self.first and (pdu.isid, pdu.tsih, pdu.cid) != (self.isid, self.tsih, self.cid):
            raise LoginFailure(LoginStatus.INITIATOR_ERROR, "ISID/TSIH/CID changed during login")

    def _step(self, pdu, data) -> LoginReply:
        self._count_and_check_ids(pdu)
        csg = (pdu.flags >> 2) & 3
        nsg = pdu.flags & 3
        transit = bool(pdu.flags & LOGIN_FLAG_TRANSIT)
        cont = bool(pdu.flags & LOGIN_FLAG_CONTINUE)
        if self.first:
            if not pdu.b3 <= ISCSI_VERSION <= pdu.b2:     # VersionMin <= 0 <= VersionMax
                raise LoginFailure(LoginStatus.UNSUPPORTED_VERSION, "unsupported iSCSI version")
            self.isid, self.tsih, self.cid = pdu.isid, pdu.tsih, pdu.cid
        check_stages(self.stage, csg, nsg, transit, cont)
        if len(self.pending) + len(data) > params.MAX_TEXT_BYTES:
            raise LoginFailure(LoginStatus.INITIATOR_ERROR, "login text too long")
        self.pending += data
        if cont:
            return LoginReply(flags=csg << 2)       # empty response: send the rest
        pairs = params.parse_text(bytes(self.pending))
        self.pending.clear()
        keys = {}
        for k, v in pairs:
            if k in keys:
                raise LoginFailure(LoginStatus.INITIATOR_ERROR, f"key {k} repeated")
            keys[k] = v
        reply = LoginReply()
        if self.first:
            self._first_pdu(keys, reply)
            self.first = False
        self.stage = csg
        if csg == Stage.SECURITY:
            self._security(keys, reply)
            ready = self.authenticated or self.auth_required is None
        else:
            if self.auth_required is not None and not self.authenticated:
                raise LoginFailure(LoginStatus.AUTH_FAILED, "authentication required")
            ready = True
        self._operational(keys, reply, csg)
        if transit and ready:
            reply.flags = LOGIN_FLAG_TRANSIT | (csg << 2) | nsg
            if nsg == Stage.FULL_FEATURE:
                reply.done = True
        else:
            reply.flags = csg << 2
            if transit and self.auth_required is not None and self.chap is None:
                raise LoginFailure(LoginStatus.AUTH_FAILED, "initiator skipped required authentication")
        return reply

    def _first_pdu(self, keys: dict, reply: LoginReply) -> None:
        self.initiator = keys.get("InitiatorName", "")
        if not self.initiator:
            raise LoginFailure(LoginStatus.MISSING_PARAMETER, "InitiatorName missing")
        self.initiator_alias = keys.get("InitiatorAlias", "")
        session_type = keys.get("SessionType", "Normal")
        if session_type == "Discovery":
            self.discovery = True
            if self.service.config.discovery_locked:
                raise LoginFailure(LoginStatus.AUTH_FAILED, self.service.config.discovery_locked)
            self.auth_required = self.service.config.discovery_chap
        elif session_type == "Normal":
            name = keys.get("TargetName")
            if not name:
                raise LoginFailure(LoginStatus.MISSING_PARAMETER, "TargetName missing")
            self.target = self.service.targets.get(name)
            if self.target is None:
                raise LoginFailure(LoginStatus.TARGET_NOT_FOUND, f"no target {name}")
            if self.target.locked:
                raise LoginFailure(LoginStatus.AUTH_FAILED, self.target.locked)
            if self.target.acl and self.initiator not in self.target.acl:
                raise LoginFailure(LoginStatus.AUTHORIZATION_FAILURE, "initiator not in ACL")
            self.auth_required = self.target.chap
            reply.text.append(("TargetPortalGroupTag", str(self.service.config.tpgt)))
            if self.target.alias:
                reply.text.append(("TargetAlias", self.target.alias))
        else:
            raise LoginFailure(LoginStatus.SESSION_TYPE_UNSUPPORTED, "unknown SessionType")
        status = self.registry.check_join(self)
        if status:
            raise LoginFailure(status, "cannot join session")
        self.neg = params.Negotiation(self.service.offer, self.discovery)

    def _security(self, keys: dict, reply: LoginReply) -> None:
        if "AuthMethod" in keys:
            offered = keys["AuthMethod"].split(",")
            if self.auth_required is not None:
                if "CHAP" not in offered:
                    raise LoginFailure(LoginStatus.AUTH_FAILED, "CHAP required")
                self.auth_method = "CHAP"
                self.chap = ChapAuthenticator(self.auth_required)
            elif "None" in offered:
                self.auth_method = "None"
            else:
                self.auth_method = "Reject"
            reply.text.append(("AuthMethod", self.auth_method))
        if self.chap is None:
            if any(k in keys for k in CHAP_KEYS) and self.auth_required is None:
                raise LoginFailure(LoginStatus.INITIATOR_ERROR, "CHAP keys without AuthMethod=CHAP")
            return
        if "CHAP_A" in keys:
            reply.text.extend(self.chap.select(keys["CHAP_A"]))
        elif "CHAP_R" in keys or "CHAP_N" in keys:
            reply.text.extend(self.chap.verify(keys))
            self.authenticated = True

    def _operational(self, keys: dict, reply: LoginReply, csg: int) -> None:
        phase = "L"
        for k, v in keys.items():
            if k in params.DECLARATIONS or k in CHAP_KEYS:
                continue
            answer = self.neg.respond(k, v, phase)
            if answer is not None:
                reply.text.append((k, answer))
        self.neg.finish()
        # RFC 7143 13.14: FirstBurstLength never exceeds MaxBurstLength, in the answer too.
        reply.text = [(k, self.neg.value(k) if k == "FirstBurstLength" and v not in
                       (params.REJECT, params.IRRELEVANT) else v) for k, v in reply.text]
        if csg == Stage.OPERATIONAL:
            reply.text.extend(self.neg.declarations())
