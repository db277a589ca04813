"""What the engine shows, in Docker's output shapes: ``ps``, ``port``, ``network ls`` and
``network inspect`` (the CNM view: network -> endpoints -> sandboxes)."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from knetlab.docker.engine import Container, Engine, Network


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("   ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows) + "\n"


def _ago(t: float) -> str:
    s = int(time.time() - t)
    return f"{s} seconds ago" if s < 60 else f"{s // 60} minutes ago"


def ps(engine: Engine, all_: bool = False) -> str:
    rows = [["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"]]
    for c in engine.containers.values():
        if c.status != "Up" and not all_:
            continue
        cmd = " ".join(c.command)
        cmd = f'"{cmd[:17]}…"' if len(cmd) > 20 else f'"{cmd}"'
        rows.append([c.id[:12], c.image, cmd, _ago(c.created), c.status,
                     ", ".join(b.ps_text() for b in c.bindings), c.name])
    return _table(rows)


def port(c: Container, which: str = "") -> str:
    lines = [b.docker_port_line() for b in c.bindings
             if not which or which in (str(b.container_port), f"{b.container_port}/{b.proto}")]
    if which:  # `docker port web 5000` prints only the host side
        lines = [line.split(" -> ")[1] for line in lines]
    return "".join(f"{line}\n" for line in lines)


def network_ls(engine: Engine) -> str:
    rows = [["NETWORK ID", "NAME", "DRIVER", "SCOPE"]]
    rows += [[n.id[:12], n.name, n.driver, n.scope] for n in engine.all_networks().values()]
    return _table(rows)


def _endpoints(engine: Engine, net: Network) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for c in engine.containers.values():
        for e in c.endpoints:
            if e.network == net.name and c.sandbox is not None:
                out[c.id] = {"Name": c.name, "EndpointID": e.id, "MacAddress": e.mac,
                             "IPv4Address": f"{e.ip}/{net.subnet.split('/')[1]}",
                             "Interface": e.ifname, "SandboxKey": c.sandbox.netns}
    return out


def inspect(engine: Engine, net: Network) -> str:
    ipam: dict[str, Any] = {"Subnet": net.subnet, "Gateway": net.gateway}
    if net.ip_range:
        ipam["IPRange"] = net.ip_range
    if net.options.get("aux_host"):
        ipam["AuxiliaryAddresses"] = {"host": net.options["aux_host"]}
    options = {k: v for k, v in net.options.items() if k != "aux_host"}
    if net.driver == "bridge":
        options["com.docker.network.bridge.name"] = net.ifname
    elif net.driver == "macvlan":
        options.update(parent=net.parent, macvlan_mode="bridge")
    else:
        options["com.docker.network.driver.overlay.vxlanid_list"] = str(net.vni)
    view: dict[str, Any] = {"Name": net.name, "Id": net.id, "Scope": net.scope,
                            "Driver": net.driver, "IPAM": {"Driver": "default",
                                                           "Config": [ipam]},
                            "Containers": _endpoints(engine, net), "Options": options}
    if net.driver == "overlay":
        store = engine.service.store
        view["Peers"] = [{"Name": k.rsplit("/", 1)[1], "IP": v["ip"]} for k, v in
                         store.list(f"/knetlab/docker/overlay/{net.name}/nodes").items()]
        view["Endpoints (cluster store)"] = list(
            store.list(f"/knetlab/docker/overlay/{net.name}/endpoints").values())
    return json.dumps([view], indent=4) + "\n"
