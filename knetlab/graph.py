"""The lab as a picture: a Graphviz graph of racks, switches, ToRs, spines, nodes and pods
(with addresses), and the data plane's tunnels or BGP sessions; a trace drawn on it.

Built from the lab's state (``knetlab status``), the same way the underlay builds the lab:
one switch per rack (``<tag>s<rack>``) holding that rack's nodes and its ToR (or the VPC
router), every ToR linked to every spine, pods on their node. The data plane adds dashed
edges between nodes: VXLAN, GRE or UDP tunnels (a full mesh, as the agents program them),
or BGP sessions (mesh, to the reflectors, or to the ToR). Rendering is the ``dot`` binary
(Debian ``graphviz``); ``.dot`` writes the source.
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path
from typing import Any

from knetlab import shell
from knetlab.errors import KnetlabError
from knetlab.rundir import lab_tag

FORMATS = ("png", "svg", "dot")
TRACE_COLOR, REPLY_COLOR = "red", "blue"
ROUTER = "shape=box3d style=filled fillcolor=lightgoldenrod"
SWITCH = "shape=box style=filled fillcolor=lightgrey"
NODE = "shape=box style=filled fillcolor=lightblue"
POD = "shape=ellipse style=filled fillcolor=white"


def _q(text: str) -> str:
    return '"' + text.replace('"', r"\"") + '"'


def _overlay_edges(state: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(node, node-or-router, label) for the data plane's tunnels or BGP sessions."""
    plane, nodes = state.get("dataplane", ""), [n["name"] for n in state.get("nodes", [])]
    hosts = state.get("hosts", {})
    label = ""
    if plane == "flannel-vxlan":
        cfg = state.get("flannel", {}).get("config", {}).get("Backend", {})
        label = f"VXLAN vni {cfg.get('VNI', 1)} udp {cfg.get('Port', 8472)}"
    elif plane == "flannel-udp":
        label = "UDP 8285 (flannel0)"
    elif plane.startswith("ovs-"):
        ovs = state.get("ovs", {})
        label = f"{ovs.get('tunnel', plane[4:]).upper()} key/vni {ovs.get('vni', '')}".strip()
    elif plane == "weave":
        label = "weave sleeve UDP 6784 (peers TCP 6783)"
    elif plane == "calico-vxlan":
        label = f"VXLAN vni {state.get('vxlan', {}).get('vni', 4096)}"
    elif plane.startswith("calico-"):
        bgp = state.get("bgp", {})
        mode = bgp.get("mode", "mesh")
        if mode == "tor":
            return [(n["name"], f"tor-{n.get('rack', 1)}", "BGP") for n in state["nodes"]]
        if mode == "rr":
            rrs = [h for h in hosts if h.startswith(("rr", "reflector"))]
            rrs += [str(r) for r in bgp.get("reflectors", {}) if str(r) in hosts
                    and str(r) not in rrs]
            return [(n, rr, "BGP (to reflector)") for n in nodes for rr in rrs]
        label = f"BGP AS {bgp.get('asn', '')}".strip()
    if not label:
        return []
    return [(a, b, label) for a, b in combinations(nodes, 2)]


def to_dot(state: dict[str, Any], path: list[tuple[str, str]] | None = None) -> str:
    """DOT source of the lab; ``path``: (where, leg) in order, drawn as numbered edges."""
    tag = lab_tag(state["cluster"])
    hosts = state.get("hosts", {})
    nodes = state.get("nodes", [])
    racks = sorted({int(n.get("rack", 1)) for n in nodes} or {1})
    title = (f"lab {state['cluster']}: {state.get('dataplane')} on {state.get('underlay')} "
             f"({state.get('switch')})")
    lines = [f"graph {_q(state['cluster'])} {{", f"  label={_q(title)};",
             "  labelloc=t; fontname=Helvetica; newrank=true; compound=true;",
             "  node [fontname=Helvetica fontsize=10]; edge [fontname=Helvetica fontsize=9];"]
    visited = {w for w, _ in path or []}

    def style(name: str, base: str) -> str:
        return base + (f" color={TRACE_COLOR} penwidth=2.5" if name in visited else "")

    spines = sorted(h for h in hosts if h.startswith("spine-"))
    if spines:
        lines.append("  { rank=min; " + " ".join(
            f"{_q(s)} [{style(s, ROUTER)}];"
            for s in spines) + " }")
    for r in racks:
        sw = f"switch:{tag}s{r}"
        lines.append(f"  subgraph cluster_rack{r} {{ label={_q(f'rack {r}')}; style=rounded;")
        lines.append(f"    {_q(sw)} [label={_q(f'switch {tag}s{r}')} {style(sw, SWITCH)}];")
        known = {n["name"] for n in nodes} | {p["name"] for p in state.get("pods", [])}
        others = sorted(h for h in hosts if h not in known and h not in spines
                        and not h.startswith("tor-") and h != "vpc-router")
        # Other namespaces (route reflectors, peers) sit on the segment, rack 1's switch.
        for router in (f"tor-{r}",) + (("vpc-router", *others) if r == 1 else ()):
            if router in hosts:
                look = style(router, ROUTER)
                lines.append(f"    {_q(router)} [{look}];")
                lines.append(f"    {_q(router)} -- {_q(sw)};")
        for n in [n for n in nodes if int(n.get("rack", 1)) == r]:
            cidr = ",".join(n.get("blocks", [])) or n.get("podCIDR", "")
            label = f"{n['name']}\\n{n['ip']}\\npods {cidr}"
            lines.append(f"    {_q(n['name'])} [label={_q(label)} {style(n['name'], NODE)}];")
            lines.append(f"    {_q(sw)} -- {_q(n['name'])};")
            for p in [p for p in state.get("pods", []) if p.get("node") == n["name"]]:
                plabel = f"{p['name']}\\n{p.get('ip') or ''}"
                lines.append(f"    {_q(p['name'])} [label={_q(plabel)} {style(p['name'], POD)}];")
                lines.append(f"    {_q(n['name'])} -- {_q(p['name'])};")
        lines.append("  }")
    for tor in sorted(h for h in hosts if h.startswith("tor-")):
        lines += [f"  {_q(s)} -- {_q(tor)};" for s in spines]
    for a, b, label in _overlay_edges(state):
        if a in hosts and b in hosts:
            lines.append(f"  {_q(a)} -- {_q(b)} [style=dashed color=darkgreen "
                         f"fontcolor=darkgreen label={_q(label)} constraint=false];")
    lines += _path_edges(path or [])
    lines.append("}")
    return "\n".join(lines) + "\n"


def _path_edges(path: list[tuple[str, str]]) -> list[str]:
    """Numbered edges between consecutive places of a trace (request red, reply blue)."""
    out, step = [], 0
    for (a, leg_a), (b, leg_b) in zip(path, path[1:], strict=False):
        if a == b or leg_a != leg_b:
            continue
        step += 1
        color = TRACE_COLOR if leg_b == "request" else REPLY_COLOR
        out.append(f"  {_q(a)} -- {_q(b)} [dir=forward color={color} fontcolor={color} "
                   f"penwidth=2 label={_q(str(step))} constraint=false];")
    return out


def render(dot: str, output: str | Path) -> Path:
    """Write ``dot`` as ``output``: .png or .svg through Graphviz, .dot as the source."""
    out = Path(output)
    fmt = out.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise KnetlabError(f"{out}: unknown picture format {fmt!r} (use .png, .svg or .dot)")
    if fmt == "dot":
        out.write_text(dot)
        return out
    res = shell.run(["dot", f"-T{fmt}", "-o", str(out)], input=dot, check=False, timeout=60)
    if res.returncode == 127:
        raise KnetlabError("Graphviz's `dot` is not installed (Debian package graphviz; "
                           "`make setup` installs it); write .dot instead")
    if not res.ok:
        raise KnetlabError(f"dot failed to draw {out}: {res.stderr.strip()}")
    return out
