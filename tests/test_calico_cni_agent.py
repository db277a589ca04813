"""The calico plugin through its node agent (knetlab/cni/agent.py) and without one:
the same pod wiring, the same CNI answers (results, errors, DEL twice), concurrent ADDs
served in parallel, and a lab whose pods are wired by its nodes' agents.

Real namespaces, a real etcd (the session's), the real plugin executable: a throwaway
"node" namespace runs the agent, as a lab's node does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from knetlab.cni.plugins.calico_ipam import BlockStore, node_blocks
from knetlab.cni.runtime import KNETLAB_PLUGINS
from knetlab.pyagent import SOURCE_ROOT
from knetlab.store import Store
from tests.conftest import needs_root, poll, running_lab

pytestmark = needs_root
PLUGIN = str(Path(KNETLAB_PLUGINS) / "calico")
NODE = f"pcca{os.getpid() % 100000}"  # the throwaway node namespace


def ns(*argv: str, netns: str = NODE, check: bool = True) -> str:
    return subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True,
                          text=True, check=check).stdout


@pytest.fixture
def node_ns() -> Iterator[str]:
    subprocess.run(["ip", "netns", "add", NODE], check=True)
    ns("ip", "link", "set", "lo", "up")
    pods: list[str] = []
    try:
        yield NODE
    finally:
        for name in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                   text=True).stdout.split():
            if name.startswith(f"{NODE}p"):
                pods.append(name)
        for name in [*pods, NODE]:
            subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def agent(node_ns: str, tmp_path: Path) -> Iterator[Path]:
    """The agent running in the node namespace; its log's path."""
    log, ready = tmp_path / "agent.log", tmp_path / "ready"
    with log.open("w") as out:
        proc = subprocess.Popen(["ip", "netns", "exec", node_ns, sys.executable, "-S", "-m",
                                 "knetlab.cni.agent", "calico", "--ready-file", str(ready)],
                                stdout=out, stderr=out, env={**os.environ,
                                                             "PYTHONPATH": SOURCE_ROOT})
    try:
        poll(ready.exists, 20.0, "the agent listens")
        yield log
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def conf(store: Store, **extra: object) -> dict:
    return {"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "calico",
            **store.conf(), "nodename": "node-1", "mtu": 1400,
            "ipam": {"type": "calico-ipam", "ipv4_pools": ["10.9.0.0/24"], "blockSize": 26},
            **extra}


def plugin(command: str, cid: str, netns: str, config: dict) -> tuple[int, dict]:
    """The plugin executable, run in the node namespace as a runtime runs it."""
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": netns,
           "CNI_IFNAME": "eth0", "CNI_PATH": KNETLAB_PLUGINS,
           "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    p = subprocess.run(["ip", "netns", "exec", NODE, PLUGIN], input=json.dumps(config),
                       env=env, capture_output=True, text=True, timeout=60)
    assert not p.stderr.strip(), p.stderr
    return p.returncode, json.loads(p.stdout) if p.stdout.strip() else {}


def pod_ns(i: int) -> str:
    name = f"{NODE}p{i}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    return f"/run/netns/{name}"


def wired(netns: str, result: dict) -> None:
    """What the calico plugin promises, read back from both namespaces."""
    name = netns.rsplit("/", 1)[1]
    ip = result["ips"][0]["address"]
    veth = result["interfaces"][0]["name"]
    assert ip.startswith("10.9.0.") and ip.endswith("/32")
    eth0 = json.loads(ns("ip", "-j", "addr", "show", "dev", "eth0", netns=name))[0]
    assert eth0["mtu"] == 1400 and "UP" in eth0["flags"]
    assert eth0["address"] == result["interfaces"][1]["mac"]
    assert [f"{a['local']}/{a['prefixlen']}" for a in eth0["addr_info"]
            if a["family"] == "inet"] == [ip]
    routes = ns("ip", "route", netns=name)
    assert "default via 169.254.1.1 dev eth0" in routes
    assert "169.254.1.1 dev eth0 scope link" in routes
    neigh = ns("ip", "neigh", "show", "169.254.1.1", netns=name)
    assert result["interfaces"][0]["mac"] in neigh and "PERMANENT" in neigh
    assert f"{ip.split('/')[0]} dev {veth} scope link" in ns("ip", "route")
    host = json.loads(ns("ip", "-j", "link", "show", "dev", veth))[0]
    assert "UP" in host["flags"] and host["mtu"] == 1400
    assert ns("cat", f"/proc/sys/net/ipv4/conf/{veth}/proxy_arp").strip() == "1"
    # a packet through it: the node reaches the pod over the /32 route (proxy-ARP back)
    ns("ip", "addr", "add", "10.9.255.1/32", "dev", "lo", check=False)
    ns("ping", "-c1", "-W5", "-I", "10.9.255.1", ip.split("/")[0])


def through_agent(log: Path, command: str, cid: str) -> bool:
    return f"{command} {cid} eth0: exit" in log.read_text()


def test_add_check_del_through_the_agent(agent: Path, etcd_store: Store) -> None:
    netns = pod_ns(0)
    code, result = plugin("ADD", "c0", netns, conf(etcd_store))
    assert code == 0, result
    assert through_agent(agent, "ADD", "c0")
    wired(netns, result)
    assert plugin("CHECK", "c0", netns, conf(etcd_store, prevResult=result)) == (0, {})
    assert plugin("DEL", "c0", netns, conf(etcd_store)) == (0, {})
    assert result["interfaces"][0]["name"] not in ns("ip", "-o", "link")
    assert etcd_store.get("/calico/ipam/v2/handle/k8s-pod-network.c0") is None
    assert plugin("DEL", "c0", netns, conf(etcd_store)) == (0, {})  # gone already: fine
    assert through_agent(agent, "DEL", "c0")


def test_errors_through_the_agent_are_the_specs(agent: Path, etcd_store: Store) -> None:
    netns = pod_ns(0)
    code, err = plugin("ADD", "bad", netns, {"cniVersion": "0.4.0", "type": "calico"})
    assert code == 1 and err == {"cniVersion": "0.4.0", "code": 7,
                                 "msg": "calico: ipam with a type is required"}
    code, err = plugin("ADD", "gone", "/run/netns/no-such-pod", conf(etcd_store))
    assert code == 1 and err["code"] == 102 and "no-such-pod" in err["msg"]
    # the address of the failed ADD went back to the pool
    assert etcd_store.get("/calico/ipam/v2/handle/k8s-pod-network.gone") is None
    assert through_agent(agent, "ADD", "gone")
    code, err = plugin("ADD", "huge", netns, conf(etcd_store, mtu=1 << 20))
    assert code == 1 and err["code"] == 102 and err["msg"].startswith("failed to create cali")
    assert etcd_store.get("/calico/ipam/v2/handle/k8s-pod-network.huge") is None
    assert "cali" not in ns("ip", "-o", "link")
    # the agent still wires pods after failures
    code, result = plugin("ADD", "after", netns, conf(etcd_store))
    assert code == 0, result
    wired(netns, result)


def test_without_an_agent_the_plugin_wires_the_pod_itself(node_ns: str,
                                                          etcd_store: Store) -> None:
    netns = pod_ns(0)
    code, result = plugin("ADD", "solo", netns, conf(etcd_store))
    assert code == 0, result
    wired(netns, result)
    assert plugin("DEL", "solo", netns, conf(etcd_store)) == (0, {})


def test_an_agent_that_ends_without_an_answer_is_the_specs_error(node_ns: str,
                                                                 etcd_store: Store) -> None:
    """The thin client (knetlab/cni/agent_client.c) reads the agent's answer to EOF; an
    agent that takes the invocation and dies gives error 11 (try again) in the version the
    configuration asked for, not an empty or half answer; nor a death by SIGPIPE when the
    agent is gone before the request (here larger than a socket buffer) is sent."""
    code = ("import socket; s = socket.socket(socket.AF_UNIX); "
            "s.bind('\\0knetlab-calico-cni'); s.listen(1); print('up', flush=True); "
            "c, _ = s.accept(); c.close()")
    dying = subprocess.Popen(["ip", "netns", "exec", node_ns, sys.executable, "-c", code],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert dying.stdout is not None and dying.stdout.readline().strip() == "up"
        rc, err = plugin("ADD", "cut", pod_ns(0), conf(etcd_store, cniVersion="0.4.0",
                                                       padding="x" * (1 << 20)))
    finally:
        dying.kill()
        dying.wait(timeout=10)
    assert rc == 1 and err["code"] == 11 and err["cniVersion"] == "0.4.0", err
    assert "ended without an answer" in err["msg"] and "calico-cni.log" in err["details"]


def test_concurrent_adds_get_distinct_addresses(agent: Path, etcd_store: Store) -> None:
    netns = [pod_ns(i) for i in range(6)]
    with ThreadPoolExecutor(6) as pool:
        out = list(pool.map(lambda i: plugin("ADD", f"p{i}", netns[i], conf(etcd_store)),
                            range(6)))
    assert all(code == 0 for code, _ in out), out
    assert len({r["ips"][0]["address"] for _, r in out}) == 6
    # one after the other under the node's IPAM lock: one block claimed, not one apiece
    assert len(node_blocks(BlockStore(etcd_store), "node-1")) == 1
    for i, (_, result) in enumerate(out):
        wired(netns[i], result)
        assert through_agent(agent, "ADD", f"p{i}")


def test_a_calico_lab_wires_its_pods_through_its_agents(tmp_path: Path) -> None:
    topo = ("name: pcc-agents\ndataplane: calico-bgp\nunderlay:\n  type: segment\n"
            "  cidr: 192.168.0.0/24\nnodes: {count: 2}\npods: {perNode: 2}\n"
            "kubernetes: false\n")
    with running_lab(topo, tmp_path) as c:
        agents = c.backend.cni_agents.agents
        assert set(agents) == {"node-1", "node-2"} and all(a.alive() for a in agents.values())
        pods = list(c.pods.values())
        # the first pods may race the agents' start (the plugin then wires them itself);
        # a pod added now is the agent's
        deadline = time.monotonic() + 20
        while not all(a.is_ready() for a in agents.values()):
            assert time.monotonic() < deadline, "agents not ready"
            time.sleep(0.05)
        c.add_pod("pcc-late", "node-2")
        assert "ADD" in agents["node-2"].log_file.read_text()
        late = c.pods["pcc-late"]
        for pod in pods:
            assert late.cmd(f"ping -c1 -W5 {pod.ip}").count("1 received") == 1, pod.name
