"""The Kubernetes type registry: ``types.json`` loaded once, lazily, into lookup tables.

Every other module of this package asks here for a message's fields, by wire number (for
protobuf) or by JSON name (for patches, validation and OpenAPI); fields of Go-embedded
(``json:",inline"``) structs are flattened into their parent for the JSON view, as Go's
encoding/json does.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

TYPES_JSON = Path(__file__).with_name("types.json")

META = "k8s.io.apimachinery.pkg.apis.meta.v1."
TIME = META + "Time"
MICRO_TIME = META + "MicroTime"
DURATION = META + "Duration"
FIELDS_V1 = META + "FieldsV1"
INT_OR_STRING = "k8s.io.apimachinery.pkg.util.intstr.IntOrString"
QUANTITY = "k8s.io.apimachinery.pkg.api.resource.Quantity"
RAW_EXTENSION = "k8s.io.apimachinery.pkg.runtime.RawExtension"
# Messages whose JSON form is not an object of their proto fields.
SPECIAL = {TIME, MICRO_TIME, DURATION, FIELDS_V1, INT_OR_STRING, QUANTITY, RAW_EXTENSION,
           "k8s.io.apimachinery.pkg.api.resource.QuantityValue"}
INTEGERS = {"int32", "int64", "uint32", "uint64", "sint32", "sint64",
            "fixed32", "fixed64", "sfixed32", "sfixed64"}


@dataclass(frozen=True, slots=True)
class Field:
    number: int
    json: str               # "" for an inline (embedded) struct
    type: str               # proto scalar name or message full name
    repeated: bool
    map_key: str            # "" unless a map; then type is the value type
    omitempty: bool
    omitzero: bool
    pointer: bool
    inline: bool
    required: bool
    patch_merge_key: str
    patch_strategy: str     # "", "merge", "replace", "retainKeys", "merge,retainKeys"
    list_type: str
    list_map_keys: tuple[str, ...]

    @property
    def is_message(self) -> bool:
        return "." in self.type


@dataclass(frozen=True, slots=True)
class Message:
    name: str
    fields: tuple[Field, ...]           # wire order as declared
    by_number: dict[int, Field]
    by_json: dict[str, Field]           # JSON view, inline structs flattened
    nullable: bool                      # a list wrapper ({items}) that is a JSON array


class Registry:
    """All messages and the kind index of one types.json."""

    def __init__(self, data: dict) -> None:
        self.source: str = data["source"]
        self.raw: dict[str, dict] = data["messages"]
        self.kinds: dict[str, dict[str, str]] = data["kinds"]
        self._messages: dict[str, Message] = {}
        self._kind_messages = frozenset(n for ks in self.kinds.values() for n in ks.values())

    def is_kind(self, name: str) -> bool:
        """Is the message a kind (a Go runtime.Object, with TypeMeta inline)?"""
        return name in self._kind_messages

    def message(self, name: str) -> Message:
        msg = self._messages.get(name)
        if msg is None:
            rec = self.raw.get(name)
            if rec is None:
                raise KeyError(name)
            fields = tuple(_field(f) for f in rec["f"])
            by_json: dict[str, Field] = {}
            for f in fields:
                if f.inline:
                    by_json.update(self.message(f.type).by_json)
                else:
                    by_json[f.json] = f
            msg = Message(name, fields, {f.number: f for f in fields}, by_json,
                          bool(rec.get("nullable")))
            self._messages[name] = msg
        return msg

    def kind(self, api_version: str, kind: str) -> str | None:
        """The message name of ``kind`` in ``api_version`` (e.g. "apps/v1"), or None.

        meta.k8s.io/v1 kinds (DeleteOptions, Status, ...) are found in every group version,
        as the API server registers them there.
        """
        name = self.kinds.get(api_version, {}).get(kind)
        if name is None and kind in self.kinds.get("meta.k8s.io/v1", {}):
            name = self.kinds["meta.k8s.io/v1"][kind]
        return name

    def group_versions(self) -> list[str]:
        return sorted(self.kinds)


def _field(f: dict) -> Field:
    o = f.get("o", "")
    return Field(f["n"], f["j"], f["t"], bool(f.get("r")), f.get("k", ""), "e" in o, "z" in o,
                 "p" in o, "i" in o, "q" in o, f.get("pmk", ""), f.get("ps", ""),
                 f.get("lt", ""), tuple(f.get("lmk", ())))


@functools.cache
def registry() -> Registry:
    """The registry of the vendored types.json (loaded on first use)."""
    return Registry(json.loads(TYPES_JSON.read_text()))


def openapi_name(message: str) -> str:
    """Proto full name -> upstream OpenAPI schema name (k8s.io.api... -> io.k8s.api...)."""
    return "io.k8s." + message.removeprefix("k8s.io.")
