"""Login/text key negotiation driven by one table (RFC 7143 sections 6, 13).

Each ``Key`` names its default, range and rule; the spec defaults are never edited in place:
a target's preferences are a separate mapping (``TARGET_OFFER`` overlaid by config overrides).
``Negotiation.respond`` takes the initiator's offer and yields our answer plus the result.
"""

from __future__ import annotations

from dataclasses import dataclass

# Rules
BOOL_OR = "or"        # result is Yes if either side says Yes
BOOL_AND = "and"      # result is Yes only if both say Yes
NUM_MIN = "min"       # result is the smaller value
NUM_MAX = "max"       # result is the larger value
LIST = "list"         # first value in the offer that we support
DECLARATIVE = "decl"  # each side declares its own value, no answer needed
NUM_DECL = "ndecl"    # declarative number (MaxRecvDataSegmentLength)

NOT_UNDERSTOOD = "NotUnderstood"
IRRELEVANT = "Irrelevant"
REJECT = "Reject"

# Phases a key may appear in: L = login operational, S = security, F = full feature (text)
LOGIN_ONLY = "L"
ANY_PHASE = "LF"

MAX_KEY_LEN = 63
MAX_VALUE_LEN = 8192
MAX_TEXT_BYTES = 65536          # bound on accumulated text of one negotiation (C bit pieces)


@dataclass(frozen=True)
class Key:
    """One negotiable key: spec default, negotiation rule, numeric range, the phases it may
    appear in and whether it matters in a discovery session."""

    name: str
    default: str
    rule: str
    lo: int = 0
    hi: int = 0
    phases: str = LOGIN_ONLY
    discovery: bool = True      # relevant in a discovery session


KEYS = {k.name: k for k in (
    Key("HeaderDigest", "None", LIST),
    Key("DataDigest", "None", LIST),
    Key("MaxConnections", "1", NUM_MIN, 1, 65535, discovery=False),
    Key("InitialR2T", "Yes", BOOL_OR, discovery=False),
    Key("ImmediateData", "Yes", BOOL_AND, discovery=False),
    Key("MaxRecvDataSegmentLength", "8192", NUM_DECL, 512, 16777215, ANY_PHASE),
    Key("MaxBurstLength", "262144", NUM_MIN, 512, 16777215, discovery=False),
    Key("FirstBurstLength", "65536", NUM_MIN, 512, 16777215, discovery=False),
    Key("DefaultTime2Wait", "2", NUM_MAX, 0, 3600),
    Key("DefaultTime2Retain", "20", NUM_MIN, 0, 3600),
    Key("MaxOutstandingR2T", "1", NUM_MIN, 1, 65535, discovery=False),
    Key("DataPDUInOrder", "Yes", BOOL_OR, discovery=False),
    Key("DataSequenceInOrder", "Yes", BOOL_OR, discovery=False),
    Key("ErrorRecoveryLevel", "0", NUM_MIN, 0, 2),
    Key("IFMarker", "No", BOOL_AND),
    Key("OFMarker", "No", BOOL_AND),
    Key("iSCSIProtocolLevel", "0", NUM_MIN, 0, 31),
    Key("TaskReporting", "RFC3720", LIST, discovery=False),
)}

# Declarations that need no answer and are handled by the login layer.
DECLARATIONS = {"InitiatorName", "InitiatorAlias", "TargetName", "SessionType", "TargetAlias",
                "TargetAddress", "TargetPortalGroupTag", "AuthMethod"}
IRRELEVANT_KEYS = {"OFMarkInt", "IFMarkInt"}

# What vmblock prefers, before config overrides. Unsolicited and immediate data on: fewer round
# trips for small writes; ERL 0 and in-order data: session recovery only (RFC 7143 7.1.5).
TARGET_OFFER = {
    "HeaderDigest": "None,CRC32C",
    "DataDigest": "None,CRC32C",
    "MaxConnections": "1",
    "InitialR2T": "No",
    "ImmediateData": "Yes",
    "MaxRecvDataSegmentLength": "262144",
    "MaxBurstLength": "1048576",
    "FirstBurstLength": "262144",
    "DefaultTime2Wait": "2",
    "DefaultTime2Retain": "0",
    "MaxOutstandingR2T": "16",
    "DataPDUInOrder": "Yes",
    "DataSequenceInOrder": "Yes",
    "ErrorRecoveryLevel": "0",
    "IFMarker": "No",
    "OFMarker": "No",
    "iSCSIProtocolLevel": "1",
    "TaskReporting": "RFC3720",
}


# What this target implements, where the spec allows more: an offer beyond it would be
# negotiated and then not honoured. Numbers: the highest value; Yes/No: the only value;
# lists: the values we can do. ERL 0 only (recovery is session reinstatement, RFC 7143 7.1.5);
# Data-Out is checked in order (11.7.5); no markers (RFC 7143 dropped them); RFC 7143 is
# iSCSIProtocolLevel 1 (RFC 7144 would be 2).
TARGET_LIMITS = {
    "ErrorRecoveryLevel": 0,
    "iSCSIProtocolLevel": 1,
    "DataPDUInOrder": "Yes",
    "DataSequenceInOrder": "Yes",
    "IFMarker": "No",
    "OFMarker": "No",
    "HeaderDigest": ("None", "CRC32C"),
    "DataDigest": ("None", "CRC32C"),
    "TaskReporting": ("RFC3720",),
}


class NegotiationError(Exception):
    """The initiator broke the negotiation rules; login fails with Initiator Error."""


def parse_text(data: bytes) -> list[tuple[str, str]]:
    """'k=v\\0k=v\\0' into pairs, refusing what RFC 7143 6.1 forbids."""
    if not data:
        return []
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as e:
        raise NegotiationError("text is not UTF-8") from e
    pairs = []
    for item in text.split("\0"):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key or len(key) > MAX_KEY_LEN:
            raise NegotiationError(f"malformed key=value pair {item[:80]!r}")
        if len(value) > MAX_VALUE_LEN:
            raise NegotiationError(f"value of {key} too long")
        pairs.append((key, value))
    return pairs


def encode_text(pairs) -> bytes:
    """Pairs as a text/login data segment: 'k=v' each followed by a NUL (RFC 7143 6.1)."""
    return b"".join(f"{k}={v}".encode() + b"\0" for k, v in pairs)


def parse_number(value: str) -> int:
    """Decimal or 0x-hex (RFC 7143 6.1 numerical values); raises ValueError."""
    v = value.strip()
    if v[:2].lower() == "0x":
        return int(v[2:], 16)
    if not v.isdigit():
        raise ValueError(value)
    return int(v)


def validate_offer(overrides: dict) -> dict:
    """Our offer with config overrides applied; unknown keys or bad values are config errors."""
    offer = dict(TARGET_OFFER)
    for name, value in overrides.items():
        key = KEYS.get(name)
        if key is None:
            raise ValueError(f"unknown iSCSI key {name!r}")
        value = str(value)
        if key.rule in (NUM_MIN, NUM_MAX, NUM_DECL):
            n = parse_number(value)
            if not key.lo <= n <= key.hi:
                raise ValueError(f"{name}={value} outside {key.lo}..{key.hi}")
        elif key.rule in (BOOL_OR, BOOL_AND) and value not in ("Yes", "No"):
            raise ValueError(f"{name} must be Yes or No")
        _check_honoured(name, value)
        offer[name] = value
    if parse_number(offer["FirstBurstLength"]) > parse_number(offer["MaxBurstLength"]):
        raise ValueError("FirstBurstLength must not exceed MaxBurstLength")
    return offer


def _check_honoured(name: str, value: str) -> None:
    """Refuse an offer the target could agree to but not carry out (TARGET_LIMITS)."""
    limit = TARGET_LIMITS.get(name)
    if limit is None:
        return
    if isinstance(limit, int):
        if parse_number(value) > limit:
            raise ValueError(f"{name}={value} is not supported (at most {limit})")
    elif isinstance(limit, str):
        if value != limit:
            raise ValueError(f"{name}={value} is not supported (only {limit})")
    else:
        choices = value.split(",")
        if not all(choices) or any(c not in limit for c in choices):
            raise ValueError(f"{name}={value} is not supported (choose from {','.join(limit)})")


class Negotiation:
    """The operational parameters of one connection/session being negotiated."""

    def __init__(self, offer: dict, discovery: bool):
        self.offer = offer
        self.discovery = discovery
        self.result = {name: k.default for name, k in KEYS.items()}
        self.seen: set[str] = set()
        self.declared = False

    def respond(self, key: str, value: str, phase: str) -> str | None:
        """Our answer to one offered key (None: say nothing)."""
        spec = KEYS.get(key)
        if spec is None:
            if key in IRRELEVANT_KEYS:
                return IRRELEVANT
            return NOT_UNDERSTOOD
        if phase not in spec.phases:
            raise NegotiationError(f"{key} may not be negotiated in this phase")
        if key in self.seen and phase != "F":
            raise NegotiationError(f"{key} negotiated twice")
        self.seen.add(key)
        if self.discovery and not spec.discovery:
            return IRRELEVANT
        ours = self.offer[key]
        rule = spec.rule
        if rule == NUM_DECL:
            n = self._number(spec, value)
            if n is None:
                return REJECT
            self.result[key] = str(n)          # what the initiator can receive
            return None
        if rule in (NUM_MIN, NUM_MAX):
            n = self._number(spec, value)
            if n is None:
                return REJECT
            mine = parse_number(ours)
            res = min(n, mine) if rule == NUM_MIN else max(n, mine)
            if key == "FirstBurstLength":           # RFC 7143 13.14: never above MaxBurstLength
                res = min(res, int(self.result["MaxBurstLength"]))
            self.result[key] = str(res)
            return str(res)
        if rule in (BOOL_OR, BOOL_AND):
            if value not in ("Yes", "No"):
                return REJECT
            if rule == BOOL_OR:
                res = "Yes" if "Yes" in (value, ours) else "No"
            else:
                res = "Yes" if value == ours == "Yes" else "No"
            self.result[key] = res
            return res
        supported = ours.split(",")
        for choice in value.split(","):
            if choice in supported:
                self.result[key] = choice
                return choice
        return REJECT

    @staticmethod
    def _number(spec: Key, value: str) -> int | None:
        try:
            n = parse_number(value)
        except ValueError:
            return None
        return n if spec.lo <= n <= spec.hi else None

    def declarations(self) -> list[tuple[str, str]]:
        """What the target states unasked, once: how much it can receive per PDU."""
        if self.declared:
            return []
        self.declared = True
        return [("MaxRecvDataSegmentLength", self.offer["MaxRecvDataSegmentLength"])]

    @property
    def target_mrdsl(self) -> int:
        """Our MaxRecvDataSegmentLength in bytes: the largest data segment we accept per PDU."""
        return parse_number(self.offer["MaxRecvDataSegmentLength"])

    def finish(self) -> None:
        """Enforce cross-key rules once negotiation is over (RFC 7143 13.14)."""
        first = int(self.result["FirstBurstLength"])
        burst = int(self.result["MaxBurstLength"])
        if first > burst:
            self.result["FirstBurstLength"] = str(burst)

    def value(self, key: str) -> str:
        """The negotiated (or default) value of ``key`` as text."""
        return self.result[key]

    def number(self, key: str) -> int:
        """The negotiated (or default) value of a numeric ``key``."""
        return int(self.result[key])

    def flag(self, key: str) -> bool:
        """True when the negotiated (or default) value of a boolean ``key`` is Yes."""
        return self.result[key] == "Yes"
