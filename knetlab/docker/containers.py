"""Container life cycle on one engine: create the sandbox, join networks, publish, start.

``run`` is all or nothing: ports are allocated before anything is built (so "port is
already allocated" changes nothing), and a failure later tears down what was made.
"""

from __future__ import annotations

import json
import secrets
from typing import TYPE_CHECKING

from knetlab.docker.drivers import DRIVERS
from knetlab.docker.engine import (
    Container,
    ContainerProcess,
    DaemonError,
    DockerError,
    Endpoint,
    Network,
    UserlandProxy,
    new_id,
)
from knetlab.docker.ports import PortError
from knetlab.nodes.host import NetnsHost

if TYPE_CHECKING:
    from knetlab.docker.engine import Engine

ADJECTIVES = ["brave", "calm", "eager", "fervent", "gifted", "happy", "jolly", "keen"]
SURNAMES = ["turing", "hopper", "lovelace", "ritchie", "thompson", "perlman", "cerf"]


def _auto_name(engine: Engine) -> str:
    while True:
        name = f"{secrets.choice(ADJECTIVES)}_{secrets.choice(SURNAMES)}"
        if name not in engine.cluster.net.nameToNode:  # type: ignore[union-attr]
            return name


def run(engine: Engine, image: str, command: list[str], name: str = "", detach: bool = False,
        publish: list[str] | None = None, publish_all: bool = False,
        expose: list[str] | None = None, network: str = "bridge", ip: str = "") -> str:
    """``docker run``: returns the container id (-d) or the command's output."""
    net_ = engine.cluster.net
    assert net_ is not None
    name = name or _auto_name(engine)
    if name in net_.nameToNode:
        raise DockerError(f'Conflict. The container name "/{name}" is already in use')
    net = engine.network(network)
    cid = new_id()
    try:
        specs = engine.port_specs(publish or [], publish_all, expose or [])
        bindings = engine.ports.allocate(specs) if net.driver == "bridge" else []
    except PortError as exc:
        raise DockerError(f"driver failed programming external connectivity on endpoint "
                          f"{name} ({cid[:64]}): {exc}") from None
    sandbox = net_.addHost(name, cls=NetnsHost, rundir=engine.cluster.rundir, ip=None)
    sandbox.cmd("ip link set lo up")
    c = Container(cid, name, image, command, sandbox, bindings=bindings)
    engine.containers[name] = c
    try:
        join(engine, c, net, ip)
        engine.ports.commit(bindings, name)
        _start_proxies(engine, c)
        engine.reconcile()
        return _start(engine, c, detach)
    except BaseException:
        remove(engine, name, force=True)
        raise


def _start(engine: Engine, c: Container, detach: bool) -> str:
    assert c.sandbox is not None
    if not c.command:
        c.command = ["sleep", "infinity"]  # the image's default command: nothing to run
    if not detach:
        res = c.sandbox.run(c.command, check=False, timeout=120)
        c.status = f"Exited ({res.returncode})"
        _teardown(engine, c)
        return res.stdout + res.stderr
    owner = f"docker/{engine.node.name}/{c.name}"
    c.process = ContainerProcess(engine.cluster.rundir, owner, c.sandbox.netns, c.command)
    try:
        c.process.start()
    except DaemonError:
        c.status = "Exited"
        _teardown(engine, c)
    return c.id + "\n"


def _start_proxies(engine: Engine, c: Container) -> None:
    if not engine.userland_proxy or not c.endpoints:
        return
    owner = f"docker/{engine.node.name}/{c.name}"
    for b in c.bindings:
        if b.host_ip.startswith("127."):
            proxy = UserlandProxy(engine.cluster.rundir, owner, engine.node.netns, b,
                                  c.endpoints[0].ip)
            c.proxies.append(proxy)
            proxy.start()


def join(engine: Engine, c: Container, net: Network, ip: str = "") -> Endpoint:
    """Create the endpoint of ``c`` on ``net`` (``docker network connect``)."""
    assert c.sandbox is not None
    if any(e.network == net.name for e in c.endpoints):
        raise DockerError(f"endpoint with name {c.name} already exists in network {net.name}")
    eid = new_id()
    ep = Endpoint(eid, c.name, net.name, f"eth{len(c.endpoints)}", f"veth{eid[:7]}",
                  engine._allocate_ip(net, c.name, ip))
    c.endpoints.append(ep)
    DRIVERS[net.driver].join(engine, net, c.sandbox, ep, default=ep.ifname == "eth0")
    # ip, not /sys/class/net: sysfs shows the namespace that mounted it (the machine's)
    out = c.sandbox.run(["ip", "-j", "link", "show", "dev", ep.ifname], check=False)
    ep.mac = (json.loads(out.stdout or "[{}]") or [{}])[0].get("address", "")
    if net.driver == "overlay":
        store = engine.service.store
        store.put(f"/knetlab/docker/overlay/{net.name}/nodes/{engine.node.name}",
                  {"ip": engine.node.node_ip})
        store.put(f"/knetlab/docker/overlay/{net.name}/endpoints/{c.name}",
                  {"container": c.name, "id": eid, "ip": ep.ip, "mac": ep.mac,
                   "node": engine.node.name, "node_ip": engine.node.node_ip})
        engine.service.sync_overlay(net)
    return ep


def connect(engine: Engine, network: str, name: str) -> None:
    c = engine.container(name)
    if c.status != "Up":
        raise DockerError(f"container {name} is not running")
    join(engine, c, engine.network(network))
    engine.reconcile()


def _teardown(engine: Engine, c: Container) -> None:
    """Everything network of ``c``: process, proxies, endpoints, ports, sandbox, rules."""
    if c.process:
        c.process.stop()
    for proxy in c.proxies:
        proxy.stop()
    c.proxies = []
    nets = engine.all_networks()
    for ep in c.endpoints:
        net = nets.get(ep.network)
        if net is None:
            continue
        DRIVERS[net.driver].leave(engine, net, ep)
        engine._release_ip(net, ep.ip)
        if net.driver == "overlay":
            engine.service.store.delete(f"/knetlab/docker/overlay/{net.name}/endpoints/{c.name}")
    c.endpoints = []  # released once: the addresses may go to the next container
    engine.ports.release(c.name)
    c.bindings = []
    if c.sandbox is not None:
        _remove_host(engine, c.sandbox)
        c.sandbox = None
    engine.reconcile()


def _remove_host(engine: Engine, host: NetnsHost) -> None:
    net = engine.cluster.net
    host.terminate()
    if net is not None:
        if host in net.hosts:
            net.hosts.remove(host)
        net.nameToNode.pop(host.name, None)


def remove(engine: Engine, name: str, force: bool = False) -> str:
    """``docker rm [-f]``: a running container needs ``-f``."""
    c = engine.container(name)
    if c.status == "Up" and not force:
        raise DockerError(f"cannot remove container \"/{c.name}\": container is running: "
                          "stop the container before removing or force remove")
    _teardown(engine, c)
    del engine.containers[c.name]
    return c.name + "\n"
