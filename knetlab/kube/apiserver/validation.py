"""Validation of objects on create and update, worded as kube-apiserver's field errors.

``validate(res, obj)`` and ``validate_update(res, new, old)`` return causes
``(field, reason, message)``; the registry turns a non-empty list into a 422 Invalid
Status (``The Deployment "x" is invalid: spec.selector: Required value``). Checked:
names (DNS-1123), containers, ports, selectors of the apps kinds and their template
labels, Service types and ports, Job restart policies, and the immutable fields
(apps selectors, Pod spec except image/activeDeadlineSeconds/tolerations, Service
clusterIP, Job selector and template).
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any

from .resources import Resource
from .selectors import labels_match, selector_to_reqs

Obj = dict[str, Any]
Cause = tuple[str, str, str]

DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
LABEL_MSG = ("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or "
             "'-', and must start and end with an alphanumeric character (e.g. 'my-name',  or "
             "'123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')")
SUBDOMAIN_MSG = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                 "characters, '-' or '.', and must start and end with an alphanumeric character "
                 "(e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])"
                 "?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")
# Kinds whose names must be DNS labels (63 chars, no dots), as upstream.
LABEL_NAMED = {"Namespace", "Service"}
SELECTOR_KINDS = {"Deployment", "ReplicaSet", "DaemonSet", "StatefulSet"}


def _v(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def required(field: str) -> Cause:
    return (field, "FieldValueRequired", "Required value")


def invalid(field: str, value: Any, why: str) -> Cause:
    return (field, "FieldValueInvalid", f"Invalid value: {_v(value)}: {why}")


def unsupported(field: str, value: Any, allowed: list[str]) -> Cause:
    return (field, "FieldValueNotSupported", f"Unsupported value: {_v(value)}: supported "
            f"values: {', '.join(_v(a) for a in allowed)}")


def forbidden(field: str, why: str) -> Cause:
    return (field, "FieldValueForbidden", f"Forbidden: {why}")


def check_name(kind: str, name: str, field: str = "metadata.name") -> list[Cause]:
    if not name:
        return [(field, "FieldValueRequired", "Required value: name or generateName is required")]
    if kind in LABEL_NAMED:
        if len(name) > 63 or not DNS_LABEL.fullmatch(name):
            return [invalid(field, name, LABEL_MSG)]
    elif len(name) > 253 or not DNS_SUBDOMAIN.fullmatch(name):
        return [invalid(field, name, SUBDOMAIN_MSG)]
    return []


def check_port(field: str, port: Any) -> list[Cause]:
    if not isinstance(port, int) or not 1 <= port <= 65535:
        return [invalid(field, port, "must be between 1 and 65535, inclusive")]
    return []


def pod_spec(spec: Obj | None, path: str) -> list[Cause]:
    if not isinstance(spec, dict):
        return [required(path)]
    out: list[Cause] = []
    cs = spec.get("containers")
    if not cs:
        out.append(required(f"{path}.containers"))
    seen: set[str] = set()
    for group in ("initContainers", "containers"):
        for i, c in enumerate(spec.get(group) or []):
            p = f"{path}.{group}[{i}]"
            name = c.get("name") or ""
            if not name:
                out.append(required(f"{p}.name"))
            elif not DNS_LABEL.fullmatch(name) or len(name) > 63:
                out.append(invalid(f"{p}.name", name, LABEL_MSG))
            elif name in seen:
                out.append((f"{p}.name", "FieldValueDuplicate", f"Duplicate value: {_v(name)}"))
            seen.add(name)
            if not c.get("image"):
                out.append(required(f"{p}.image"))
            for j, port in enumerate(c.get("ports") or []):
                out += check_port(f"{p}.ports[{j}].containerPort", port.get("containerPort"))
                proto = port.get("protocol", "TCP")
                if proto not in ("TCP", "UDP", "SCTP"):
                    out.append(unsupported(f"{p}.ports[{j}].protocol", proto,
                                           ["SCTP", "TCP", "UDP"]))
    rp = spec.get("restartPolicy", "Always")
    if rp not in ("Always", "OnFailure", "Never"):
        out.append(unsupported(f"{path}.restartPolicy", rp, ["Always", "OnFailure", "Never"]))
    return out


def selector_template(obj: Obj) -> list[Cause]:
    spec = obj.get("spec") or {}
    sel = spec.get("selector")
    out: list[Cause] = []
    if not sel or not (sel.get("matchLabels") or sel.get("matchExpressions")):
        out.append(required("spec.selector"))
        if not sel:
            return out + pod_spec((spec.get("template") or {}).get("spec"), "spec.template.spec")
    labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
    if sel and (sel.get("matchLabels") or sel.get("matchExpressions")) and \
            not labels_match(selector_to_reqs(sel), labels):
        out.append(invalid("spec.template.metadata.labels", labels,
                           "`selector` does not match template `labels`"))
    if isinstance(spec.get("replicas"), int) and spec["replicas"] < 0:
        out.append(invalid("spec.replicas", spec["replicas"],
                           "must be greater than or equal to 0"))
    out += pod_spec((spec.get("template") or {}).get("spec"), "spec.template.spec")
    return out


PROTOCOLS = ("TCP", "UDP", "SCTP")


def service(obj: Obj) -> list[Cause]:
    spec = obj.get("spec") or {}
    out: list[Cause] = []
    types = ["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"]
    t = spec.get("type", "ClusterIP")
    if t not in types:
        return [unsupported("spec.type", t, types)]
    ports = spec.get("ports") or []
    if not ports and t != "ExternalName" and spec.get("clusterIP") != "None":
        out.append(required("spec.ports"))
    names: set[str] = set()
    seen_ports: set[tuple[Any, Any]] = set()
    seen_node_ports: set[tuple[Any, Any]] = set()
    for i, p in enumerate(ports):
        out += check_port(f"spec.ports[{i}].port", p.get("port"))
        proto = p.get("protocol", "TCP")
        if proto not in PROTOCOLS:
            out.append(unsupported(f"spec.ports[{i}].protocol", proto, list(PROTOCOLS)))
        # as the real validator prints its key: core.ServicePort{Protocol, Port}
        if (proto, p.get("port")) in seen_ports:
            out.append((f"spec.ports[{i}]", "FieldValueDuplicate",
                        f'Duplicate value: core.ServicePort{{Name:"", Protocol:"{proto}", '
                        f'AppProtocol:(*string)(nil), Port:{p.get("port")}, '
                        'TargetPort:intstr.IntOrString{Type:0, IntVal:0, StrVal:""}, '
                        'NodePort:0}'))
        seen_ports.add((proto, p.get("port")))
        if p.get("nodePort"):
            if (proto, p["nodePort"]) in seen_node_ports:
                out.append((f"spec.ports[{i}].nodePort", "FieldValueDuplicate",
                            f"Duplicate value: {p['nodePort']}"))
            seen_node_ports.add((proto, p["nodePort"]))
        if len(ports) > 1 and not p.get("name"):
            out.append(required(f"spec.ports[{i}].name"))
        if p.get("name") in names:
            out.append((f"spec.ports[{i}].name", "FieldValueDuplicate",
                        f"Duplicate value: {_v(p.get('name'))}"))
        names.add(p.get("name", ""))
        tp = p.get("targetPort")
        if isinstance(tp, int):
            out += check_port(f"spec.ports[{i}].targetPort", tp)
        if p.get("nodePort") and t not in ("NodePort", "LoadBalancer"):
            out.append(forbidden(f"spec.ports[{i}].nodePort",
                                 "may not be used when `type` is 'ClusterIP'"))
    if t == "ExternalName" and not spec.get("externalName"):
        out.append(required("spec.externalName"))
    return out


#: what no endpoint may be (apimachinery's ValidateNonSpecialIP), in the real messages
SPECIAL_RANGES = [
    ("0.0.0.0/32", "may not be unspecified (0.0.0.0, ::)"),
    ("127.0.0.0/8", "may not be in the loopback range (127.0.0.0/8, ::1/128)"),
    ("169.254.0.0/16", "may not be in the link-local range (169.254.0.0/16, fe80::/10)"),
    ("224.0.0.0/24", "may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)"),
]


def endpoint_ip(field: str, address: Any) -> list[Cause]:
    try:
        ip = ipaddress.IPv4Address(str(address))
    except ValueError:
        return [invalid(field, address, "must be a valid IPv4 address")]
    return [invalid(field, address, why) for net, why in SPECIAL_RANGES
            if ip in ipaddress.IPv4Network(net)][:1]


def endpoint_slice(obj: Obj) -> list[Cause]:
    out: list[Cause] = []
    kind = obj.get("addressType")
    if kind not in ("IPv4", "IPv6", "FQDN"):
        return [unsupported("addressType", kind, ["FQDN", "IPv4", "IPv6"])]
    for i, ep in enumerate(obj.get("endpoints") or []):
        addrs = ep.get("addresses") or []
        if not addrs:
            out.append(required(f"endpoints[{i}].addresses"))
        for j, a in enumerate(addrs if kind == "IPv4" else []):
            out += endpoint_ip(f"endpoints[{i}].addresses[{j}]", a)
    for i, p in enumerate(obj.get("ports") or []):
        if p.get("port") is not None:
            out += check_port(f"ports[{i}].port", p.get("port"))
    return out


def endpoints(obj: Obj) -> list[Cause]:
    out: list[Cause] = []
    for i, subset in enumerate(obj.get("subsets") or []):
        for key in ("addresses", "notReadyAddresses"):
            for j, a in enumerate(subset.get(key) or []):
                out += endpoint_ip(f"subsets[{i}].{key}[{j}].ip", a.get("ip"))
    return out


def job(obj: Obj) -> list[Cause]:
    spec = obj.get("spec") or {}
    tspec = (spec.get("template") or {}).get("spec")
    out = pod_spec(tspec, "spec.template.spec")
    rp = (tspec or {}).get("restartPolicy")
    if rp not in ("OnFailure", "Never"):
        out.append(unsupported("spec.template.spec.restartPolicy", rp, ["OnFailure", "Never"]))
    return out


def validate(res: Resource, obj: Obj) -> list[Cause]:
    meta = obj.get("metadata") or {}
    out = check_name(res.kind, meta.get("name", ""))
    kind = res.kind
    if kind == "Pod":
        out += pod_spec(obj.get("spec"), "spec")
    elif kind in SELECTOR_KINDS:
        out += selector_template(obj)
    elif kind == "Service":
        out += service(obj)
    elif kind == "Job":
        out += job(obj)
    elif kind == "EndpointSlice":
        out += endpoint_slice(obj)
    elif kind == "Endpoints":
        out += endpoints(obj)
    return out


def _immutable(field: str, new: Any, old: Any) -> list[Cause]:
    if new != old:
        return [invalid(field, new, "field is immutable")]
    return []


POD_MUTABLE = ("`spec.containers[*].image`,`spec.initContainers[*].image`,"
               "`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing "
               "tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it "
               "was previously negative)")


def _pod_spec_comparable(spec: Obj) -> Obj:
    s = json.loads(json.dumps(spec))
    for group in ("containers", "initContainers"):
        for c in s.get(group) or []:
            c.pop("image", None)
    for k in ("activeDeadlineSeconds", "tolerations", "nodeName"):
        s.pop(k, None)
    return s


def validate_update(res: Resource, new: Obj, old: Obj) -> list[Cause]:
    out = validate(res, new)
    ns, os_ = new.get("spec") or {}, old.get("spec") or {}
    kind = res.kind
    if kind in SELECTOR_KINDS:
        out += _immutable("spec.selector", ns.get("selector"), os_.get("selector"))
    elif kind == "Pod":
        if _pod_spec_comparable(ns) != _pod_spec_comparable(os_):
            out.append(forbidden("spec", f"pod updates may not change fields other than "
                                 f"{POD_MUTABLE}"))
        if os_.get("nodeName") and ns.get("nodeName") != os_.get("nodeName"):
            out += _immutable("spec.nodeName", ns.get("nodeName"), os_.get("nodeName"))
    elif kind == "Service":
        if os_.get("clusterIP") and ns.get("type") != "ExternalName":
            out += _immutable("spec.clusterIPs[0]", ns.get("clusterIP"), os_.get("clusterIP"))
    elif kind == "Job":
        out += _immutable("spec.selector", ns.get("selector"), os_.get("selector"))
        if not ns.get("suspend"):
            out += _immutable("spec.template", ns.get("template"), os_.get("template"))
    return out
