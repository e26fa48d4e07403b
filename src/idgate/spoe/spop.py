"""SPOP 2.0 codec (HAProxy's Stream Processing Offload Protocol): pure functions over bytes, no I/O.

Source: HAProxy ``doc/SPOE.txt`` §3 (SPOP specification), checked against HAProxy 2.8.25 on the wire
(``tests/data/spop/``). Rules:

- A frame on the wire is ``<FRAME-LENGTH:4 bytes, big-endian><FRAME>``; ``FRAME`` is ``<TYPE:1 byte>
  <FLAGS:4 bytes, big-endian><STREAM-ID:varint><FRAME-ID:varint><PAYLOAD>``. FLAGS bit 0 is FIN, bit 1 ABORT.
  The length is checked against the negotiated maximum *before* the body is read (``frame_length``).
- varint is HAProxy's "peers" encoding (``encode_varint`` in ``include/haproxy/intops.h``): ``X < 240`` is one
  byte; otherwise the first byte is ``X | 0xF0`` and ``(X - 240) >> 4`` follows in 7-bit groups, high bit =
  "more". It is a bijection on byte strings, so there is no overlong form; we refuse more than 10 bytes or a
  value above 2**64-1 (HAProxy would wrap it).
- TYPED-DATA is one byte: the type in the LOW nibble, flags in the HIGH nibble (``SPOE_DATA_T_MASK 0x0F``,
  ``SPOE_DATA_FL_TRUE 0x10``): BOOL true is ``0x11``, false ``0x01``. Flags on any other type are refused.
  Integers travel as a varint of the 64-bit two's complement (HAProxy casts every integer type to int64);
  we decode INT32/INT64 as signed and range-check all four integer types.
- STRING must be UTF-8. A STRING *value* that is not valid UTF-8 decodes to ``InvalidString(raw)`` so the caller
  can deny that one request; the connection survives. A name (message, argument, KV key, variable) that is not
  UTF-8 is an invalid frame (names come from HAProxy's configuration, never from clients).
- MESSAGE-NAME, KV-NAME and the set-var VAR-NAME are untyped ``<LENGTH:varint><BYTES>``; VAR-SCOPE is one raw
  byte (checked against HAProxy 2.8: it accepts exactly this layout).
- Every length is checked against the bytes remaining in the frame before anything is sliced: no step allocates
  more than the frame it was given. Truncation, an unknown data type, a bad count or trailing bytes raise
  ``SpopError`` with the SPOP status code to send in AGENT-DISCONNECT.
- Fragmentation is not implemented (HAProxy 3.1 removed it): a frame without FIN, or of type UNSET (0), raises
  ``SpopError(Status.FRAGMENTATION)``.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from ipaddress import IPv4Address, IPv6Address
from typing import Final, TypeAlias

from idgate.errors import SpopError

MAX_FRAME_SIZE: Final = 16380
"""HAProxy's default ``max-frame-size`` (``tune.bufsize`` 16384 minus the 4-byte length) and our ceiling."""
MIN_FRAME_SIZE: Final = 256
"""SPOE.txt §3.2: every peer must accept frames of at least 256 bytes."""
SPOP_VERSION: Final = "2.0"
FLAG_FIN: Final = 0x1
FLAG_ABORT: Final = 0x2
U64_MAX: Final = (1 << 64) - 1
_VERSION = re.compile(r"([0-9]{1,9})\.[0-9]{1,9}")  # a SPOP version, "2.0" (bounded: int() of 5000 digits raises)
_LENGTH = struct.Struct(">I")
_HEADER = struct.Struct(">BI")


class FrameType(IntEnum):
    """SPOE.txt §3.2.2. HAProxy sends 1-3, agents send 101-103; 0 only appears in fragmented payloads."""

    UNSET = 0
    HAPROXY_HELLO = 1
    HAPROXY_DISCONNECT = 2
    NOTIFY = 3
    AGENT_HELLO = 101
    AGENT_DISCONNECT = 102
    ACK = 103


class DataType(IntEnum):
    """SPOE.txt §3.1; the type is the low nibble of the type byte."""

    NULL = 0
    BOOL = 1
    INT32 = 2
    UINT32 = 3
    INT64 = 4
    UINT64 = 5
    IPV4 = 6
    IPV6 = 7
    STRING = 8
    BINARY = 9


class Status(IntEnum):
    """SPOP status codes, SPOE.txt §3.5 (``enum spoe_frame_error`` in HAProxy)."""

    NORMAL = 0
    IO = 1
    TIMEOUT = 2
    TOO_BIG = 3
    INVALID = 4
    NO_VERSION = 5
    NO_FRAME_SIZE = 6
    NO_CAPABILITIES = 7
    BAD_VERSION = 8
    BAD_FRAME_SIZE = 9
    FRAGMENTATION = 10
    INTERLACED = 11
    FRAME_ID_NOT_FOUND = 12
    RESOURCE = 13
    UNKNOWN = 99


STATUS_MESSAGES: Final[Mapping[Status, str]] = {
    Status.NORMAL: "normal",
    Status.IO: "I/O error",
    Status.TIMEOUT: "a timeout occurred",
    Status.TOO_BIG: "frame is too big",
    Status.INVALID: "invalid frame received",
    Status.NO_VERSION: "version value not found",
    Status.NO_FRAME_SIZE: "max-frame-size value not found",
    Status.NO_CAPABILITIES: "capabilities value not found",
    Status.BAD_VERSION: "unsupported version",
    Status.BAD_FRAME_SIZE: "max-frame-size too big or too small",
    Status.FRAGMENTATION: "fragmentation not supported",
    Status.INTERLACED: "invalid interlaced frames",
    Status.FRAME_ID_NOT_FOUND: "frame-id not found",
    Status.RESOURCE: "resource allocation error",
    Status.UNKNOWN: "an unknown error occurred",
}


class Scope(IntEnum):
    """Variable scope of a set-var / unset-var action (SPOE.txt §3.4)."""

    PROCESS = 0
    SESSION = 1
    TRANSACTION = 2
    REQUEST = 3
    RESPONSE = 4


class ActionType(IntEnum):
    SET_VAR = 1
    UNSET_VAR = 2


def status_message(error: SpopError) -> str:
    """The AGENT-DISCONNECT ``message`` for ``error``: its status's text, then its detail."""
    text = STATUS_MESSAGES.get(error.status, STATUS_MESSAGES[Status.UNKNOWN])  # type: ignore[call-overload]
    return f"{text}: {error.detail}" if error.detail else text


@dataclass(frozen=True, slots=True)
class InvalidString:
    """A STRING value whose bytes are not valid UTF-8. Callers must treat it as unusable (deny)."""

    raw: bytes


@dataclass(frozen=True, slots=True)
class TypedInt:
    """An integer to encode with an explicit SPOP type (e.g. UINT32 ``max-frame-size``); plain ints use INT64."""

    type: DataType
    value: int


Value: TypeAlias = bool | int | IPv4Address | IPv6Address | str | bytes | InvalidString | None
"""What ``decode_typed`` returns: NULL, BOOL, any integer type, IPV4, IPV6, STRING (or ``InvalidString``), BINARY."""
EncodableValue: TypeAlias = Value | TypedInt

_T_NULL, _T_BOOL, _T_INT32, _T_UINT32, _T_INT64, _T_UINT64, _T_IPV4, _T_IPV6, _T_STRING, _T_BINARY = range(10)
_INT_RANGES: Final[Mapping[DataType, tuple[int, int]]] = {
    DataType.INT32: (-(1 << 31), (1 << 31) - 1),
    DataType.UINT32: (0, (1 << 32) - 1),
    DataType.INT64: (-(1 << 63), (1 << 63) - 1),
    DataType.UINT64: (0, U64_MAX),
}


# --- varint -----------------------------------------------------------------------------------------------------


def encode_varint(value: int) -> bytes:
    """HAProxy's varint of an unsigned 64-bit integer (1 to 10 bytes)."""
    if value < 0 or value > U64_MAX:
        raise ValueError(f"varint out of range: {value}")
    if value < 240:
        return bytes((value,))
    out = bytearray(((value & 0xFF) | 0xF0,))
    value = (value - 240) >> 4
    while value >= 128:
        out.append((value & 0xFF) | 0x80)
        value = (value - 128) >> 7
    out.append(value)
    return bytes(out)


def decode_varint(buf: bytes, offset: int) -> tuple[int, int]:
    """Decode a varint at ``offset``; returns ``(value, next offset)``. Truncated, >10 bytes or >2**64-1 → 4."""
    end = len(buf)
    if offset >= end:
        raise SpopError(Status.INVALID, "truncated varint")
    value = buf[offset]
    offset += 1
    if value < 240:
        return value, offset
    shift = 4
    while True:
        if offset >= end:
            raise SpopError(Status.INVALID, "truncated varint")
        byte = buf[offset]
        offset += 1
        value += byte << shift
        if byte < 128:
            break
        shift += 7
        if shift > 60:
            raise SpopError(Status.INVALID, "varint longer than 10 bytes")
    if value > U64_MAX:
        raise SpopError(Status.INVALID, "varint above 2**64-1")
    return value, offset


# --- strings and typed data -------------------------------------------------------------------------------------


def encode_bytes(data: bytes) -> bytes:
    """``<LENGTH:varint><BYTES>`` (an untyped STRING: names, and the body of STRING/BINARY values)."""
    return encode_varint(len(data)) + data


def encode_name(name: str) -> bytes:
    return encode_bytes(name.encode("utf-8"))


def decode_bytes(buf: bytes, offset: int) -> tuple[bytes, int]:
    """``<LENGTH:varint><BYTES>``; the length is checked against the bytes left before slicing."""
    end = len(buf)
    if offset < end and buf[offset] < 240:  # fast path: a one-byte length
        length = buf[offset]
        offset += 1
    else:
        length, offset = decode_varint(buf, offset)
    if length > end - offset:
        raise SpopError(Status.INVALID, f"length {length} beyond the frame ({end - offset} bytes left)")
    stop = offset + length
    return buf[offset:stop], stop


def decode_name(buf: bytes, offset: int) -> tuple[str, int]:
    """An untyped name that must be UTF-8 (message, argument, KV key, variable name)."""
    raw, offset = decode_bytes(buf, offset)
    try:
        return raw.decode("utf-8"), offset
    except UnicodeDecodeError:
        raise SpopError(Status.INVALID, "name is not UTF-8") from None


def _encode_int(kind: DataType, value: int) -> bytes:
    low, high = _INT_RANGES[kind]
    if not low <= value <= high:
        raise ValueError(f"{value} out of range for {kind.name}")
    return bytes((kind,)) + encode_varint(value & U64_MAX)


def encode_typed(value: EncodableValue) -> bytes:
    """TYPED-DATA for a Python value: None, bool, int (INT64, or UINT64 from 2**63), ``TypedInt``, IPv4/IPv6
    addresses, str (UTF-8), ``InvalidString`` (its raw bytes as a STRING), bytes (BINARY)."""
    if value is None:
        return b"\x00"
    if value is True:
        return b"\x11"
    if value is False:
        return b"\x01"
    if isinstance(value, str):
        data = value.encode("utf-8")
        return b"\x08" + encode_varint(len(data)) + data
    if isinstance(value, int):
        return _encode_int(DataType.INT64 if value < 1 << 63 else DataType.UINT64, value)
    if isinstance(value, TypedInt):
        if value.type not in _INT_RANGES or isinstance(value.value, bool):
            raise ValueError(f"TypedInt needs an integer type and an int, got {value!r}")
        return _encode_int(value.type, value.value)
    if isinstance(value, bytes):
        return b"\x09" + encode_varint(len(value)) + value
    if isinstance(value, InvalidString):
        return b"\x08" + encode_varint(len(value.raw)) + value.raw
    if isinstance(value, IPv4Address):
        return b"\x06" + value.packed
    if isinstance(value, IPv6Address):
        return b"\x07" + value.packed
    raise TypeError(f"cannot encode {type(value).__name__} as SPOP typed data")


def decode_typed(buf: bytes, offset: int) -> tuple[Value, int]:
    """Decode one TYPED-DATA at ``offset``; returns ``(value, next offset)``."""
    if offset >= len(buf):
        raise SpopError(Status.INVALID, "truncated typed data")
    byte = buf[offset]
    offset += 1
    if byte == _T_STRING:  # the common case first; plain int constants (enum lookups cost ~80 ns each)
        raw, offset = decode_bytes(buf, offset)
        try:
            return raw.decode("utf-8"), offset
        except UnicodeDecodeError:
            return InvalidString(raw), offset
    kind = byte & 0x0F
    flags = byte & 0xF0
    if kind == _T_BOOL:
        if flags not in (0x00, 0x10):
            raise SpopError(Status.INVALID, f"bad BOOL flags 0x{flags:02x}")
        return flags == 0x10, offset
    if flags:
        raise SpopError(Status.INVALID, f"flags 0x{flags:02x} on data type {kind}")
    if kind == _T_NULL:
        return None, offset
    if _T_INT32 <= kind <= _T_UINT64:
        raw_int, offset = decode_varint(buf, offset)
        signed = kind in (_T_INT32, _T_INT64) and raw_int >> 63
        number = raw_int - (1 << 64) if signed else raw_int
        low, high = _INT_RANGES[DataType(kind)]
        if not low <= number <= high:
            raise SpopError(Status.INVALID, f"{number} out of range for {DataType(kind).name}")
        return number, offset
    if kind == _T_BINARY:
        return decode_bytes(buf, offset)
    if kind == _T_IPV4:
        if offset + 4 > len(buf):
            raise SpopError(Status.INVALID, "truncated IPV4")
        return IPv4Address(buf[offset : offset + 4]), offset + 4
    if kind == _T_IPV6:
        if offset + 16 > len(buf):
            raise SpopError(Status.INVALID, "truncated IPV6")
        return IPv6Address(buf[offset : offset + 16]), offset + 16
    raise SpopError(Status.INVALID, f"unknown data type {kind}")


def encode_kv_list(items: Iterable[tuple[str, EncodableValue]]) -> bytes:
    """KV-LIST: ``<KV-NAME><KV-VALUE>`` repeated."""
    return b"".join(encode_name(name) + encode_typed(value) for name, value in items)


def decode_kv_list(buf: bytes, offset: int) -> tuple[tuple[str, Value], ...]:
    """A KV-LIST running to the end of ``buf``, in wire order (duplicates kept: the caller decides)."""
    items: list[tuple[str, Value]] = []
    end = len(buf)
    while offset < end:
        name, offset = decode_name(buf, offset)
        value, offset = decode_typed(buf, offset)
        items.append((name, value))
    return tuple(items)


# --- frames -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class FrameHeader:
    type: int
    flags: int
    stream_id: int
    frame_id: int


@dataclass(frozen=True, kw_only=True, slots=True)
class HaproxyHello:
    """HAPROXY-HELLO (§3.2.4). Lists are kept as sent (comma-separated); see ``split_list``."""

    supported_versions: str
    max_frame_size: int
    capabilities: str
    healthcheck: bool = False
    engine_id: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class AgentHello:
    """AGENT-HELLO (§3.2.5)."""

    version: str
    max_frame_size: int
    capabilities: str


@dataclass(frozen=True, kw_only=True, slots=True)
class HaproxyDisconnect:
    """HAPROXY-DISCONNECT (§3.2.8)."""

    status_code: int
    message: str


@dataclass(frozen=True, kw_only=True, slots=True)
class AgentDisconnect:
    """AGENT-DISCONNECT (§3.2.9)."""

    status_code: int
    message: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Message:
    """One SPOE message of a NOTIFY: its name and its arguments in wire order (names may repeat or be empty)."""

    name: str
    args: tuple[tuple[str, Value], ...]


@dataclass(frozen=True, kw_only=True, slots=True)
class Notify:
    """NOTIFY (§3.2.6): one or more messages for one event of one stream."""

    stream_id: int
    frame_id: int
    messages: tuple[Message, ...]


@dataclass(frozen=True, kw_only=True, slots=True)
class SetVar:
    """set-var action: HAProxy sets ``<scope>.<var-prefix>.<name>`` (only if the config references it)."""

    scope: Scope
    name: str
    value: EncodableValue


@dataclass(frozen=True, kw_only=True, slots=True)
class UnsetVar:
    """unset-var action."""

    scope: Scope
    name: str


Action: TypeAlias = SetVar | UnsetVar


@dataclass(frozen=True, kw_only=True, slots=True)
class Ack:
    """ACK (§3.2.7): echoes the NOTIFY's stream-id and frame-id."""

    stream_id: int
    frame_id: int
    actions: tuple[Action, ...]


Frame: TypeAlias = HaproxyHello | AgentHello | HaproxyDisconnect | AgentDisconnect | Notify | Ack


def split_list(value: str) -> tuple[str, ...]:
    """A comma-separated SPOP list (versions, capabilities); spaces ignored, empty items dropped."""
    return tuple(item for item in (part.replace(" ", "") for part in value.split(",")) if item)


def frame_length(prefix: bytes, max_frame_size: int) -> int:
    """The 4-byte big-endian length prefix; beyond ``max_frame_size`` → ``SpopError(TOO_BIG)`` (read nothing more)."""
    if len(prefix) != 4:
        raise SpopError(Status.INVALID, "truncated frame length")
    (length,) = _LENGTH.unpack(prefix)
    if length > max_frame_size:
        raise SpopError(Status.TOO_BIG, f"{length} bytes > {max_frame_size}")
    return int(length)


def _frame(kind: FrameType, stream_id: int, frame_id: int, payload: bytes, flags: int = FLAG_FIN) -> bytes:
    body = _HEADER.pack(kind, flags) + encode_varint(stream_id) + encode_varint(frame_id) + payload
    return _LENGTH.pack(len(body)) + body


def encode_action(action: Action) -> bytes:
    if isinstance(action, SetVar):
        return (
            bytes((ActionType.SET_VAR, 3, Scope(action.scope))) + encode_name(action.name) + encode_typed(action.value)
        )
    if isinstance(action, UnsetVar):
        return bytes((ActionType.UNSET_VAR, 2, Scope(action.scope))) + encode_name(action.name)
    raise TypeError(f"not an SPOP action: {type(action).__name__}")


def encode_ack(stream_id: int, frame_id: int, actions: Iterable[Action]) -> bytes:
    """The wire bytes (with length prefix) of an ACK; the hot path of the agent."""
    return _frame(FrameType.ACK, stream_id, frame_id, b"".join(encode_action(action) for action in actions))


def encode_actions(actions: Iterable[Action]) -> bytes:
    """The encoded action list of an ACK, to be framed later by :func:`encode_ack_payload` (a memoised answer)."""
    return b"".join(encode_action(action) for action in actions)


def encode_ack_payload(stream_id: int, frame_id: int, payload: bytes) -> bytes:
    """The wire bytes of an ACK whose actions ``payload`` were encoded before (:func:`encode_actions`)."""
    return _frame(FrameType.ACK, stream_id, frame_id, payload)


def encode_frame(frame: Frame, *, flags: int = FLAG_FIN) -> bytes:
    """Wire bytes (with the 4-byte length prefix) of any frame, in either direction."""
    if isinstance(frame, Ack):
        return encode_ack(frame.stream_id, frame.frame_id, frame.actions)
    if isinstance(frame, Notify):
        payload = b"".join(
            encode_name(message.name) + bytes((len(message.args),)) + encode_kv_list(message.args)
            for message in frame.messages
        )
        return _frame(FrameType.NOTIFY, frame.stream_id, frame.frame_id, payload, flags)
    if isinstance(frame, HaproxyHello):
        items: list[tuple[str, EncodableValue]] = [
            ("supported-versions", frame.supported_versions),
            ("max-frame-size", TypedInt(DataType.UINT32, frame.max_frame_size)),
            ("capabilities", frame.capabilities),
        ]
        if frame.healthcheck:
            items.append(("healthcheck", True))
        if frame.engine_id is not None:
            items.append(("engine-id", frame.engine_id))
        return _frame(FrameType.HAPROXY_HELLO, 0, 0, encode_kv_list(items), flags)
    if isinstance(frame, AgentHello):
        payload = encode_kv_list(
            [
                ("version", frame.version),
                ("max-frame-size", TypedInt(DataType.UINT32, frame.max_frame_size)),
                ("capabilities", frame.capabilities),
            ]
        )
        return _frame(FrameType.AGENT_HELLO, 0, 0, payload, flags)
    kind = FrameType.HAPROXY_DISCONNECT if isinstance(frame, HaproxyDisconnect) else FrameType.AGENT_DISCONNECT
    payload = encode_kv_list(
        [("status-code", TypedInt(DataType.UINT32, frame.status_code)), ("message", frame.message)]
    )
    return _frame(kind, 0, 0, payload, flags)


def decode_header(body: bytes) -> tuple[FrameHeader, int]:
    """The frame header (without the length prefix); returns it and the payload offset."""
    if len(body) < 5:
        raise SpopError(Status.INVALID, "frame shorter than its header")
    kind, flags = _HEADER.unpack_from(body)
    stream_id, offset = decode_varint(body, 5)
    frame_id, offset = decode_varint(body, offset)
    return FrameHeader(type=kind, flags=flags, stream_id=stream_id, frame_id=frame_id), offset


def _kv_dict(buf: bytes, offset: int) -> dict[str, Value]:
    result: dict[str, Value] = {}
    for name, value in decode_kv_list(buf, offset):
        if name in result:
            raise SpopError(Status.INVALID, f"duplicated key {name!r}")
        result[name] = value
    return result


def _string(items: Mapping[str, Value], key: str, missing: Status) -> str:
    if key not in items:
        raise SpopError(missing, key)
    value = items[key]
    if not isinstance(value, str):
        raise SpopError(Status.INVALID, f"{key} is not a UTF-8 STRING")
    return value


def _integer(items: Mapping[str, Value], key: str, missing: Status) -> int:
    if key not in items:
        raise SpopError(missing, key)
    value = items[key]
    if type(value) is not int:
        raise SpopError(Status.INVALID, f"{key} is not an integer")
    return value


def decode_notify(header: FrameHeader, body: bytes, offset: int) -> Notify:
    """LIST-OF-MESSAGES: ``<MESSAGE-NAME><NB-ARGS:1 byte><KV-LIST of NB-ARGS items>`` to the end of the frame."""
    messages: list[Message] = []
    end = len(body)
    while offset < end:
        name, offset = decode_name(body, offset)
        if offset >= end:
            raise SpopError(Status.INVALID, "truncated message (no NB-ARGS)")
        count = body[offset]
        offset += 1
        args: list[tuple[str, Value]] = []
        for _ in range(count):
            size = body[offset] if offset < end else 255
            if size < 240 and offset + 1 + size <= end:  # inlined decode_name for short names (the hot path)
                raw = body[offset + 1 : offset + 1 + size]
                offset += 1 + size
                try:
                    arg_name = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise SpopError(Status.INVALID, "name is not UTF-8") from None
            else:
                arg_name, offset = decode_name(body, offset)
            value, offset = decode_typed(body, offset)
            args.append((arg_name, value))
        messages.append(Message(name=name, args=tuple(args)))
    return Notify(stream_id=header.stream_id, frame_id=header.frame_id, messages=tuple(messages))


def decode_actions(body: bytes, offset: int) -> tuple[Action, ...]:
    """LIST-OF-ACTIONS to the end of the frame (set-var with 3 args, unset-var with 2)."""
    actions: list[Action] = []
    end = len(body)
    while offset < end:
        if offset + 3 > end:
            raise SpopError(Status.INVALID, "truncated action")
        kind, count, scope = body[offset], body[offset + 1], body[offset + 2]
        offset += 3
        if scope > Scope.RESPONSE:
            raise SpopError(Status.INVALID, f"unknown variable scope {scope}")
        name, offset = decode_name(body, offset)
        if kind == ActionType.SET_VAR and count == 3:
            value, offset = decode_typed(body, offset)
            actions.append(SetVar(scope=Scope(scope), name=name, value=value))
        elif kind == ActionType.UNSET_VAR and count == 2:
            actions.append(UnsetVar(scope=Scope(scope), name=name))
        else:
            raise SpopError(Status.INVALID, f"unknown action {kind} with {count} args")
    return tuple(actions)


def decode_payload(header: FrameHeader, body: bytes, offset: int) -> Frame:
    """The frame of a known type whose header is ``header`` (from ``decode_header``).

    A frame without FIN or of type UNSET → ``Status.FRAGMENTATION``; an unknown type → ``Status.INVALID``
    (an agent may skip unknown types instead: check ``header.type`` first). HELLO and DISCONNECT frames must have
    stream-id and frame-id 0.
    """
    kind = header.type
    if kind == FrameType.UNSET or not header.flags & FLAG_FIN:
        raise SpopError(Status.FRAGMENTATION, "fragmented frame")
    if kind == FrameType.NOTIFY:
        return decode_notify(header, body, offset)
    if kind == FrameType.ACK:
        return Ack(stream_id=header.stream_id, frame_id=header.frame_id, actions=decode_actions(body, offset))
    if kind not in (
        FrameType.HAPROXY_HELLO,
        FrameType.AGENT_HELLO,
        FrameType.HAPROXY_DISCONNECT,
        FrameType.AGENT_DISCONNECT,
    ):
        raise SpopError(Status.INVALID, f"unknown frame type {kind}")
    if header.stream_id or header.frame_id:
        raise SpopError(Status.INVALID, "HELLO/DISCONNECT with a non-zero stream-id or frame-id")
    items = _kv_dict(body, offset)
    if kind == FrameType.HAPROXY_HELLO:
        healthcheck = items.get("healthcheck", False)
        engine_id = items.get("engine-id")
        if not isinstance(healthcheck, bool) or not (engine_id is None or isinstance(engine_id, str)):
            raise SpopError(Status.INVALID, "healthcheck must be BOOL and engine-id a STRING")
        return HaproxyHello(
            supported_versions=_string(items, "supported-versions", Status.NO_VERSION),
            max_frame_size=_integer(items, "max-frame-size", Status.NO_FRAME_SIZE),
            capabilities=_string(items, "capabilities", Status.NO_CAPABILITIES),
            healthcheck=healthcheck,
            engine_id=engine_id,
        )
    if kind == FrameType.AGENT_HELLO:
        return AgentHello(
            version=_string(items, "version", Status.NO_VERSION),
            max_frame_size=_integer(items, "max-frame-size", Status.NO_FRAME_SIZE),
            capabilities=_string(items, "capabilities", Status.NO_CAPABILITIES),
        )
    status_code = _integer(items, "status-code", Status.INVALID)
    message = _string(items, "message", Status.INVALID)
    if kind == FrameType.HAPROXY_DISCONNECT:
        return HaproxyDisconnect(status_code=status_code, message=message)
    return AgentDisconnect(status_code=status_code, message=message)


def decode_frame(body: bytes) -> Frame:
    """A whole frame without its length prefix."""
    header, offset = decode_header(body)
    return decode_payload(header, body, offset)


def decode_wire(data: bytes, *, max_frame_size: int = MAX_FRAME_SIZE) -> Frame:
    """Exactly one frame with its length prefix (a recorded vector); a short or long buffer → ``Status.INVALID``."""
    length = frame_length(data[:4], max_frame_size)
    if len(data) - 4 != length:
        raise SpopError(Status.INVALID, f"length prefix {length} but {len(data) - 4} bytes follow")
    return decode_frame(data[4:])


def negotiate(hello: HaproxyHello, *, max_frame_size: int, capabilities: str = "pipelining") -> AgentHello:
    """Our AGENT-HELLO for ``hello`` (§3.2.4-3.2.5): SPOP 2.0 if HAProxy offers any 2.x, max-frame-size the smaller
    of both (refused below 256), and our own capabilities. Raises ``SpopError`` with the status to disconnect with."""
    majors: set[int] = set()
    for item in split_list(hello.supported_versions):
        version = _VERSION.fullmatch(item)  # ASCII digits only: str.isdigit() admits "²" and "٢", int() chokes on one
        if version:
            majors.add(int(version.group(1)))
    if 2 not in majors:
        raise SpopError(Status.BAD_VERSION, f"no 2.x in {hello.supported_versions[:64]!r}")
    size = min(hello.max_frame_size, max_frame_size)
    if size < MIN_FRAME_SIZE:
        raise SpopError(Status.BAD_FRAME_SIZE, f"{hello.max_frame_size} < {MIN_FRAME_SIZE}")
    return AgentHello(version=SPOP_VERSION, max_frame_size=size, capabilities=capabilities)
