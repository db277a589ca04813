"""Build ``types.json`` from the upstream Kubernetes ``generated.proto`` files and Go types.

Usage: ``python -m knetlab.kube.schema.build PROTO_DIR [--tag TAG] [--out PATH]``

PROTO_DIR is laid out by import path, as the proto files import each other::

    PROTO_DIR/k8s.io/api/apps/v1/generated.proto       (+ types.go beside it)
    PROTO_DIR/k8s.io/apimachinery/pkg/apis/meta/v1/generated.proto   (+ *.go)

Sources: github.com/kubernetes/api and github.com/kubernetes/apimachinery at the tag
written into the JSON header (Apache License 2.0, Copyright The Kubernetes Authors). Only
type structure is kept (field names, numbers, types, list/patch markers), no doc text.

The proto files give the wire format (field numbers, scalar types, messages, maps) and the
``+patchMergeKey``/``+patchStrategy``/``+listType``/``+listMapKey``/``+optional`` markers. The
proto field name is the JSON name except for Go-embedded (``json:",inline"``) fields and a
few renames (``aPIGroup``); those, ``omitempty``/``omitzero`` and pointer-ness (which decide
whether a zero value appears in JSON) come from the Go struct tags in the ``*.go`` files
beside each proto, parsed with regexes. The Go files are optional: without them
``+optional`` stands in for ``omitempty`` and no field is inline.

types.json layout: ``{"source", "kinds": {"apps/v1": {"Deployment": MSG}}, "messages":
{MSG: {"f": [FIELD...], "nullable"?: true}}}`` where MSG is the proto full name without the
leading dot and FIELD is ``{"n": number, "j": json name ("" when inline), "t": scalar or
MSG, "r"?: repeated, "k"?: map key type, "o"?: flags ("e" omitempty, "z" omitzero, "p"
pointer, "i" inline, "q" required), "pmk"?, "ps"?, "lt"?, "lmk"?}``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

PROTO_FILES = [
    "k8s.io/api/core/v1", "k8s.io/api/apps/v1", "k8s.io/api/batch/v1",
    "k8s.io/api/discovery/v1", "k8s.io/api/networking/v1", "k8s.io/api/autoscaling/v1",
    "k8s.io/api/coordination/v1", "k8s.io/api/policy/v1",
    "k8s.io/apimachinery/pkg/apis/meta/v1", "k8s.io/apimachinery/pkg/runtime",
    "k8s.io/apimachinery/pkg/util/intstr", "k8s.io/apimachinery/pkg/api/resource",
]
# API group of each proto package (from each package's +groupName); core is "".
GROUPS = {"core": "", "apps": "apps", "batch": "batch", "autoscaling": "autoscaling",
          "policy": "policy", "meta": "meta.k8s.io"}
SCALARS = {"string", "bool", "int32", "int64", "uint32", "uint64", "sint32", "sint64",
           "double", "float", "bytes", "fixed32", "fixed64", "sfixed32", "sfixed64"}
KIND_MARKER = "+k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object"

FIELD_RE = re.compile(r"^(optional|repeated|required)\s+(\S+)\s+(\w+)\s*=\s*(\d+)\s*;")
MAP_RE = re.compile(r"^map<\s*(\w+)\s*,\s*(\S+)\s*>\s+(\w+)\s*=\s*(\d+)\s*;")
GO_TYPE_RE = re.compile(r"^type\s+(\w+)\s+struct\s*{")
GO_FIELD_RE = re.compile(r"^\s*(\w+\s+)?(\S+)\s+`([^`]*)`")


@dataclass
class ProtoField:
    name: str
    number: int
    type: str
    repeated: bool = False
    key: str = ""
    markers: dict[str, str] = field(default_factory=dict)


@dataclass
class ProtoMessage:
    name: str              # full name without leading dot
    fields: list[ProtoField] = field(default_factory=list)
    markers: dict[str, str] = field(default_factory=dict)


def markers_of(comments: list[str]) -> dict[str, str]:
    """``+key=value`` (or bare ``+key``) comment markers."""
    out: dict[str, str] = {}
    for c in comments:
        c = c.strip()
        if c.startswith("+"):
            key, _, value = c[1:].partition("=")
            key, value = key.strip(), value.strip()
            # repeated markers (+listMapKey=a, +listMapKey=b) accumulate, one per line
            out[key] = f"{out[key]}\n{value}" if out.get(key) else value
    return out


def parse_proto(text: str) -> tuple[str, list[ProtoMessage]]:
    """Parse the proto2 subset of go-to-protobuf output into (package, messages)."""
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    package, stack, messages = "", [], []
    comments: list[str] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            comments = []
            continue
        if line.startswith("//"):
            comments.append(line[2:])
            continue
        line = line.split("//")[0].strip()
        if m := re.match(r"^package\s+([\w.]+)\s*;", line):
            package = m.group(1)
        elif m := re.match(r"^message\s+(\w+)\s*{", line):
            scope = stack[-1].name if stack else package
            msg = ProtoMessage(f"{scope}.{m.group(1)}", markers=markers_of(comments))
            stack.append(msg)
            messages.append(msg)
        elif line == "}":
            if not stack:
                raise ValueError(f"line {lineno}: unbalanced '}}'")
            stack.pop()
        elif m := FIELD_RE.match(line):
            if not stack:
                raise ValueError(f"line {lineno}: field outside a message")
            stack[-1].fields.append(ProtoField(m.group(3), int(m.group(4)), m.group(2),
                                               m.group(1) == "repeated",
                                               markers=markers_of(comments)))
        elif m := MAP_RE.match(line):
            stack[-1].fields.append(ProtoField(m.group(3), int(m.group(4)), m.group(2),
                                               key=m.group(1), markers=markers_of(comments)))
        elif not re.match(r"^(syntax|import|option)\b", line):
            raise ValueError(f"line {lineno}: cannot parse {line!r}")
        comments = []
    if stack:
        raise ValueError(f"message {stack[-1].name} not closed")
    return package, messages


@dataclass
class GoField:
    json: str
    opts: set[str]
    pointer: bool


def parse_go(text: str) -> tuple[dict[str, dict[str, GoField]], set[str]]:
    """Go structs of one file: {struct: {proto field name: GoField}}, and the kinds."""
    structs: dict[str, dict[str, GoField]] = {}
    kinds: set[str] = set()
    block: list[str] = []
    current: dict[str, GoField] | None = None
    for line in text.splitlines():
        if current is not None:
            if line.startswith("}"):
                current = None
                block = []
                continue
            m = GO_FIELD_RE.match(line)
            if not m or line.strip().startswith("//"):
                continue
            tag = m.group(3)
            pb = re.search(r'protobuf:"[^"]*name=(\w+)', tag)
            js = re.search(r'json:"([^"]*)"', tag)
            if not pb:
                continue
            jname, *opts = (js.group(1) if js else "").split(",")
            current[pb.group(1)] = GoField(jname, set(opts), m.group(2).startswith("*"))
            continue
        if m := GO_TYPE_RE.match(line):
            current = structs.setdefault(m.group(1), {})
            if any(KIND_MARKER in b for b in block):
                kinds.add(m.group(1))
        elif line.startswith("//") or not line.strip():
            block.append(line)
        else:
            block = []
    return structs, kinds


def resolve(name: str, scope: str, known: set[str]) -> str:
    """A proto type name as written in ``scope`` -> full name (no leading dot)."""
    if name in SCALARS:
        return name
    if name.startswith("."):
        return name[1:]
    parts = scope.split(".")
    while parts:
        cand = ".".join(parts + [name])
        if cand in known:
            return cand
        parts.pop()
    raise ValueError(f"unknown type {name!r} in {scope}")


def group_version(package: str) -> str | None:
    """``k8s.io.api.apps.v1`` -> ``apps/v1``; None for packages that hold no kinds."""
    m = re.match(r"^k8s\.io\.(?:api|apimachinery\.pkg\.apis)\.(\w+)\.(v\w+)$", package)
    if not m:
        return None
    group = GROUPS.get(m.group(1), f"{m.group(1)}.k8s.io")
    return f"{group}/{m.group(2)}" if group else m.group(2)


def field_record(f: ProtoField, scope: str, known: set[str], go: GoField | None) -> dict:
    rec: dict = {"n": f.number, "j": f.name, "t": resolve(f.type, scope, known)}
    if f.repeated:
        rec["r"] = 1
    if f.key:
        rec["k"] = f.key
    flags = ""
    optional = "optional" in f.markers
    if go is not None:
        rec["j"] = go.json if go.json != "-" else f.name
        if "inline" in go.opts:
            flags += "i"
            rec["j"] = ""
        if "omitempty" in go.opts:
            flags += "e"
            optional = True
        if "omitzero" in go.opts:
            flags += "z"
        if go.pointer:
            flags += "p"
    elif optional:
        flags += "e"
    if not optional and "i" not in flags:
        flags += "q"
    if flags:
        rec["o"] = flags
    for marker, key in (("patchMergeKey", "pmk"), ("patchStrategy", "ps"),
                        ("listType", "lt")):
        if f.markers.get(marker):
            rec[key] = f.markers[marker]
    if f.markers.get("listMapKey"):
        rec["lmk"] = f.markers["listMapKey"].split("\n")
    return rec


def build(proto_dir: Path, tag: str) -> dict:
    protos: list[tuple[str, str, list[ProtoMessage]]] = []
    for rel in PROTO_FILES:
        path = proto_dir / rel / "generated.proto"
        if not path.exists():
            raise SystemExit(f"missing {path}")
        try:
            package, messages = parse_proto(path.read_text())
        except ValueError as e:
            raise SystemExit(f"{path}: {e}") from None
        protos.append((rel, package, messages))
    known = {m.name for _, _, msgs in protos for m in msgs}
    out: dict = {"source": f"kubernetes/api and kubernetes/apimachinery {tag} "
                           "(generated.proto, Go struct tags); Apache-2.0",
                 "kinds": {}, "messages": {}}
    for rel, package, messages in protos:
        structs: dict[str, dict[str, GoField]] = {}
        kinds: set[str] = set()
        for go in sorted((proto_dir / rel).glob("*.go")):
            if go.name.endswith("_test.go") or go.name.startswith("zz_"):
                continue
            s, k = parse_go(go.read_text())
            structs.update(s)
            kinds |= k
        gv = group_version(package)
        for msg in messages:
            short = msg.name[len(package) + 1:]
            gofields = structs.get(short, {})
            rec: dict = {"f": [field_record(f, msg.name, known, gofields.get(f.name))
                               for f in msg.fields]}
            if "protobuf.nullable" in msg.markers:
                rec["nullable"] = 1
            out["messages"][msg.name] = rec
            is_kind = short in kinds if structs else any(
                f.name == "metadata" and f.type.endswith(("ObjectMeta", "ListMeta"))
                for f in msg.fields)
            if gv and is_kind and "." not in short:
                out["kinds"].setdefault(gv, {})[short] = msg.name
    return out


def dump(data: dict) -> str:
    """Compact JSON with one message per line, so that diffs of regenerations stay readable."""
    lines = ["{", f'"source": {json.dumps(data["source"])},',
             f'"kinds": {json.dumps(data["kinds"], separators=(",", ":"), sort_keys=True)},',
             '"messages": {']
    names = sorted(data["messages"])
    for i, name in enumerate(names):
        sep = "," if i < len(names) - 1 else ""
        body = json.dumps(data["messages"][name], separators=(",", ":"))
        lines.append(f"{json.dumps(name)}:{body}{sep}")
    lines += ["}", "}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("proto_dir", type=Path)
    ap.add_argument("--tag", default="v0.36.3", help="upstream tag the files came from")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("types.json"))
    args = ap.parse_args(argv)
    data = build(args.proto_dir, args.tag)
    args.out.write_text(dump(data))
    print(f"wrote {args.out}: {len(data['messages'])} messages, "
          f"{sum(len(k) for k in data['kinds'].values())} kinds", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
