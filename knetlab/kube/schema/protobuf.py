"""Decode Kubernetes protobuf request bodies (``application/vnd.kubernetes.protobuf``) to JSON.

kubectl 1.32+ sends typed writes as protobuf: the magic ``k8s\\x00``, then a
``runtime.Unknown`` (typeMeta{apiVersion, kind}, raw, contentEncoding, contentType) whose
``raw`` is the object in the wire format of k8s.io/api's generated.proto. The result is the
dict that the same object has as JSON: the Go JSON names (inline structs flattened),
``omitempty`` zero values dropped as Go drops them, and the special types rendered as their
JSON (IntOrString, Quantity, Time, MicroTime, Duration, RawExtension, FieldsV1, bytes).

Design note: go-to-protobuf (gogo) writes every non-pointer scalar, zero or not, and every
non-pointer struct; so presence on the wire says nothing about JSON presence, and the Go
tags recorded in types.json (omitempty, omitzero, pointer) decide it, exactly as
encoding/json would after the API server's own unmarshal.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import struct
from typing import Any

from knetlab.kube.schema.types import (
    DURATION,
    FIELDS_V1,
    INT_OR_STRING,
    INTEGERS,
    MICRO_TIME,
    QUANTITY,
    RAW_EXTENSION,
    TIME,
    Field,
    registry,
)

MAGIC = b"k8s\x00"


def decode_protobuf(body: bytes) -> dict:
    """The JSON form of a Kubernetes protobuf-encoded object; ValueError if malformed."""
    if not isinstance(body, bytes | bytearray | memoryview):
        raise ValueError("protobuf body must be bytes")
    body = bytes(body)
    if body[:4] != MAGIC:
        raise ValueError("not a Kubernetes protobuf body: missing the 'k8s\\x00' prefix")
    api_version = kind = encoding = ""
    raw = b""
    for num, wt, val in _wire(body[4:], "runtime.Unknown"):
        if num == 1 and wt == 2:
            for n2, w2, v2 in _wire(val, "runtime.Unknown.typeMeta"):
                if n2 == 1 and w2 == 2:
                    api_version = _utf8(v2, "typeMeta.apiVersion")
                elif n2 == 2 and w2 == 2:
                    kind = _utf8(v2, "typeMeta.kind")
        elif num == 2 and wt == 2:
            raw = val
        elif num == 3 and wt == 2:
            encoding = _utf8(val, "contentEncoding")
    if encoding:
        raise ValueError(f"unsupported protobuf contentEncoding {encoding!r}")
    if not kind or not api_version:
        raise ValueError("protobuf body has no typeMeta apiVersion/kind")
    name = registry().kind(api_version, kind)
    if name is None:
        raise ValueError(f"no protobuf type known for kind {kind!r} in {api_version!r}")
    obj = decode_message(name, raw)
    return {"kind": kind, "apiVersion": api_version, **obj}


def decode_message(name: str, data: bytes) -> dict:
    """Decode one message (no envelope) of proto type ``name`` to its JSON object."""
    out: dict[str, Any] = {}
    _decode_into(name, data, out, name)
    return out


def _decode_into(name: str, data: bytes, out: dict, path: str) -> None:
    msg = registry().message(name)
    seen: dict[int, Any] = {}
    for num, wt, val in _wire(data, path):
        f = msg.by_number.get(num)
        if f is None:
            continue            # unknown fields are skipped, as gogo's Unmarshal does
        where = f"{path}.{f.json or f.type.rsplit('.', 1)[-1]}"
        if f.map_key:
            k, v = _map_entry(f, val, wt, where)
            seen.setdefault(num, {})[k] = v
        elif f.repeated:
            items = seen.setdefault(num, [])
            if wt == 2 and not f.is_message and f.type not in ("string", "bytes"):
                items.extend(_packed(f, val, where))
            else:
                items.append(_value(f.type, wt, val, where))
        elif f.inline:
            seen[num] = seen.get(num, b"") + _need(wt, 2, val, where)
        else:
            seen[num] = _value(f.type, wt, val, where)
    # emit in declaration order, so the dict reads like the Go struct's JSON
    for f in msg.fields:
        if f.number not in seen:
            continue
        v = seen[f.number]
        if f.inline:
            _decode_into(f.type, v, out, path)
        elif _keep(f, v):
            out[f.json] = v


def _keep(f: Field, v: Any) -> bool:
    """Would encoding/json write this field? (omitempty drops zero scalars, never structs)."""
    if f.pointer or f.repeated or f.map_key:
        return True
    if f.omitzero and v is None:
        return False            # the zero Time (creationTimestamp)
    if f.is_message or not f.omitempty:
        return True
    return not (v == 0 or v == "")     # 0 also matches False and 0.0


def _value(type_: str, wt: int, val: Any, where: str) -> Any:
    if "." in type_:
        data = _need(wt, 2, val, where)
        return _message_value(type_, data, where)
    if type_ == "string":
        return _utf8(_need(wt, 2, val, where), where)
    if type_ == "bytes":
        return base64.b64encode(_need(wt, 2, val, where)).decode()
    if type_ == "bool":
        return bool(_need(wt, 0, val, where))
    if type_ == "double":
        return struct.unpack("<d", _need(wt, 1, val, where))[0]
    if type_ == "float":
        return struct.unpack("<f", _need(wt, 5, val, where))[0]
    if type_ in INTEGERS:
        if wt == 0:
            return _signed(type_, val)
        if wt in (1, 5):
            fmt = {"fixed32": "<I", "sfixed32": "<i", "fixed64": "<Q", "sfixed64": "<q"}
            return struct.unpack(fmt.get(type_, "<q" if wt == 1 else "<i"), val)[0]
    raise ValueError(f"{where}: wire type {wt} does not fit a {type_} field")


def _message_value(type_: str, data: bytes, where: str) -> Any:
    if type_ == INT_OR_STRING:
        f = _flat(data, where)
        if f.get(1, 0) == 1:
            return _utf8(f.get(3, b""), where)
        return _signed("int32", f.get(2, 0))
    if type_ in (QUANTITY, QUANTITY + "Value"):
        return _utf8(_flat(data, where).get(1, b""), where) or "0"
    if type_ in (TIME, MICRO_TIME):
        if not data:
            return None            # the zero time, JSON null
        f = _flat(data, where)
        return format_time(_signed("int64", f.get(1, 0)), _signed("int32", f.get(2, 0)),
                           micro=type_ == MICRO_TIME)
    if type_ == DURATION:
        return format_duration(_signed("int64", _flat(data, where).get(1, 0)))
    if type_ in (RAW_EXTENSION, FIELDS_V1):
        raw = _flat(data, where).get(1, b"")
        if not raw:
            return None
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{where}: embedded object is not JSON: {e}") from None
    msg = registry().message(type_)
    if msg.nullable:            # list wrapper (meta/v1 Verbs): JSON is the bare list
        return decode_message(type_, data).get("items", [])
    out: dict[str, Any] = {}
    _decode_into(type_, data, out, where)
    return out


def _map_entry(f: Field, val: Any, wt: int, where: str) -> tuple[Any, Any]:
    key: Any = _zero(f.map_key)
    value: Any = None
    for num, w2, v2 in _wire(_need(wt, 2, val, where), where):
        if num == 1:
            key = _value(f.map_key, w2, v2, where)
        elif num == 2:
            value = _value(f.type, w2, v2, f"{where}[{key}]")
    if value is None:
        value = _message_value(f.type, b"", where) if f.is_message else _zero(f.type)
    return key, value


def _zero(type_: str) -> Any:
    if type_ == "string" or type_ == "bytes":
        return ""
    if type_ == "bool":
        return False
    return 0.0 if type_ in ("double", "float") else 0


def _flat(data: bytes, where: str) -> dict[int, Any]:
    """The last value of each field number of a small fixed message."""
    return {num: val for num, _, val in _wire(data, where)}


def _packed(f: Field, data: bytes, where: str) -> list[Any]:
    out, pos = [], 0
    while pos < len(data):
        if f.type in ("double", "fixed64", "sfixed64"):
            out.append(_value(f.type, 1, data[pos:pos + 8], where))
            pos += 8
        elif f.type in ("float", "fixed32", "sfixed32"):
            out.append(_value(f.type, 5, data[pos:pos + 4], where))
            pos += 4
        else:
            v, pos = _varint(data, pos, where)
            out.append(_value(f.type, 0, v, where))
    return out


def _wire(data: bytes, where: str):
    """Yield (field number, wire type, value) of one message's bytes."""
    pos, end = 0, len(data)
    while pos < end:
        tag, pos = _varint(data, pos, where)
        num, wt = tag >> 3, tag & 7
        if num == 0:
            raise ValueError(f"{where}: invalid field number 0")
        if wt == 0:
            val, pos = _varint(data, pos, where)
        elif wt == 1 or wt == 5:
            size = 8 if wt == 1 else 4
            if pos + size > end:
                raise ValueError(f"{where}: truncated fixed-size field {num}")
            val, pos = data[pos:pos + size], pos + size
        elif wt == 2:
            size, pos = _varint(data, pos, where)
            if pos + size > end:
                raise ValueError(f"{where}: field {num} length {size} runs past the end")
            val, pos = data[pos:pos + size], pos + size
        else:
            raise ValueError(f"{where}: unsupported wire type {wt} (field {num})")
        yield num, wt, val


def _varint(data: bytes, pos: int, where: str) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError(f"{where}: truncated varint")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError(f"{where}: varint too long")


def _signed(type_: str, v: int) -> int:
    if type_ in ("sint32", "sint64"):
        return (v >> 1) ^ -(v & 1)
    if type_ in ("uint32", "uint64", "fixed32", "fixed64"):
        return v
    v &= (1 << 64) - 1
    if v >= 1 << 63:
        v -= 1 << 64
    if type_ in ("int32", "sfixed32"):
        v = (v + (1 << 31)) % (1 << 32) - (1 << 31)
    return v


def _need(wt: int, want: int, val: Any, where: str) -> Any:
    if wt != want:
        raise ValueError(f"{where}: wire type {wt} where {want} was expected")
    return val


def _utf8(b: bytes, where: str) -> str:
    try:
        return b.decode()
    except UnicodeDecodeError:
        raise ValueError(f"{where}: string is not valid UTF-8") from None


def format_time(seconds: int, nanos: int = 0, micro: bool = False) -> str:
    """metav1.Time / MicroTime JSON: RFC 3339 in UTC (MicroTime with 6 fraction digits)."""
    t = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=seconds,
                                                               microseconds=nanos // 1000)
    if micro:
        return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond:06d}Z"
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def format_duration(ns: int) -> str:
    """Go's time.Duration.String(): "1h2m3.5s", "150ms", "0s"."""
    if ns == 0:
        return "0s"
    sign, ns = ("-", -ns) if ns < 0 else ("", ns)
    if ns < 1_000_000_000:
        for unit, size in (("ms", 1_000_000), ("µs", 1_000), ("ns", 1)):
            if ns >= size:
                return sign + _frac(ns, size) + unit
    h, rest = divmod(ns, 3600 * 10**9)
    m, rest = divmod(rest, 60 * 10**9)
    text = _frac(rest, 10**9) + "s"
    if h:
        return f"{sign}{h}h{m}m{text}"
    if m:
        return f"{sign}{m}m{text}"
    return sign + text


def _frac(value: int, unit: int) -> str:
    whole, frac = divmod(value, unit)
    if not frac:
        return str(whole)
    digits = f"{frac:0{len(str(unit)) - 1}d}".rstrip("0")
    return f"{whole}.{digits}"
