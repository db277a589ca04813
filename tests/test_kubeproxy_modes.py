"""kube-proxy's nftables and userspace modes, checked with real packets.

Two parts. Without the API: the nftables Proxier driven directly in a bare pair of
namespaces (the benchmark's ``Bed``: a node namespace and one holding every endpoint), for
what a lab cannot show quickly: the table layout, a partial sync that writes only the
changed Service, and a failed transaction that leaves the previous rules serving. With the
API: one 2-node host-gw lab per mode (``kubeProxy: {mode: nftables}`` / ``userspace``,
module-scoped), where agnhost pods serve and a client pod dials: ClusterIP over every
endpoint (TCP and UDP), a Service without endpoints refused at once, NodePort on every
node, ClientIP affinity, and a scale-down seen in the live rules.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from knetlab.addons.kubeproxy.model import ProxyState
from knetlab.addons.kubeproxy.nftables import NftablesProxier, service_chain
from knetlab.bench.kubeproxy import SERVICE_BASE, Bed, make_state, service
from knetlab.cluster import Cluster
from knetlab.errors import CommandError
from knetlab.netns import entered
from tests.conftest import ROOT, needs_root, poll, running_lab, write_topology
from tests.kube_helpers import (
    MULTI_AND_STICKY,
    cluster_ip,
    dial,
    expose_web,
    kubectl,
    netexec_deployment,
    netexec_pod,
)
from tests.test_kube_lab import Kubectl, wait_ready

KNETLAB = str(ROOT / ".venv" / "bin" / "knetlab")
APPS = f"""
{netexec_deployment("web", 3)}
{netexec_pod("client", "node-1", "client")}
{MULTI_AND_STICKY}"""


# -- the nftables Proxier in bare namespaces (no API) ----------------------------------------

@pytest.fixture(scope="module")
def bed() -> Iterator[Bed]:
    with Bed("t") as b:
        yield b


def connects(bed: Bed, ip: str, port: int = 80, timeout: float = 2) -> str:
    """Connect from the node namespace: "ok", "refused" or "timeout"."""
    with entered(bed.node_ns):
        s = socket.socket()
    s.settimeout(timeout)
    try:
        s.connect((ip, port))
        return "ok"
    except ConnectionRefusedError:
        return "refused"
    except OSError:
        return "timeout"
    finally:
        s.close()


def nft_table(bed: Bed) -> str:
    return subprocess.run(["nsenter", f"--net={bed.node_ns}", "--", "nft", "list", "table",
                           "ip", "kube-proxy"], capture_output=True, text=True).stdout


@needs_root
def test_nftables_layout_partial_sync_and_failure(bed: Bed) -> None:
    proxier = NftablesProxier("bench-node", logging.getLogger("test"))
    state = make_state(60)
    with entered(bed.node_ns):
        proxier.sync(state, None)
    full_lines = proxier.last_transaction_lines
    table = nft_table(bed)
    for name in ("map service-ips", "map service-nodeports", "map no-endpoint-services",
                 "chain services", "chain mark-for-masquerade", "set hairpin-endpoints"):
        assert name in table, name
    assert "type ipv4_addr . inet_proto . inet_service : verdict" in table
    # without affinity the service chain DNATs itself: no endpoint chains (each chain costs
    # every later transaction a little: nft lists them all first)
    assert "chain endpoint-" not in table
    three = service(2)  # svc-00002 has 3 endpoints: numgen mod 3, mod 2, then the last
    chain = table.split(f"chain {service_chain(three)} {{")[1].split("}")[0]
    eps = [f"{e.ip}:{e.port}" for e in three.endpoints]
    assert f"numgen random mod 3 0 meta l4proto tcp dnat to {eps[0]}" in chain
    assert f"numgen random mod 2 0 meta l4proto tcp dnat to {eps[1]}" in chain
    assert chain.strip().splitlines()[-1].strip() == f"meta l4proto tcp dnat to {eps[2]}"
    first, last = str(SERVICE_BASE), str(SERVICE_BASE + 59)
    assert connects(bed, first) == connects(bed, last) == "ok"
    # a Service that loses its endpoints is refused at once (reject, before DNAT)
    empty = service(59, extra=-(59 % 3 + 1))
    state.services[empty.key] = empty
    with entered(bed.node_ns):
        proxier.sync(state, {empty.key})
    assert proxier.last_transaction_lines < 20 < full_lines  # only that Service's lines
    assert connects(bed, last) == "refused"
    assert f"{last} . tcp . 80 : goto reject-chain" in nft_table(bed)
    # externalTrafficPolicy Local: the NodePort answers with this node's endpoint (the node's
    # own traffic is masqueraded and takes the cluster path); internalTrafficPolicy Local
    # with the only endpoint on another node: dropped, not refused
    etp = dataclasses.replace(service(1, extra=-1), service="etp", cluster_ip="10.96.200.2",
                              node_port=30080, external_local=True)
    elsewhere = tuple(dataclasses.replace(e, node="other") for e in service(3).endpoints)
    itp = dataclasses.replace(service(3), service="itp", cluster_ip="10.96.200.1",
                              internal_local=True, endpoints=elsewhere)
    state.services.update({etp.key: etp, itp.key: itp})
    with entered(bed.node_ns):
        proxier.sync(state, {etp.key, itp.key})
    assert connects(bed, "10.255.0.1", 30080) == "ok"
    assert connects(bed, "10.96.200.1", 80, timeout=1) == "timeout"
    assert "10.96.200.1 . tcp . 80 : drop" in nft_table(bed)
    state.services.pop(etp.key), state.services.pop(itp.key)
    with entered(bed.node_ns):
        proxier.sync(state, {etp.key, itp.key})
    assert "30080" not in nft_table(bed)
    # the periodic full sync (the proxier knows what it wrote): every rule rewritten in place
    with entered(bed.node_ns):
        proxier.sync(state, None)
    assert connects(bed, first) == "ok" and connects(bed, last) == "refused"
    assert "etp" not in nft_table(bed)
    # a transaction nft refuses changes nothing: the old table keeps serving
    bad = ProxyState(state.node, state.node_ips, state.cluster_cidr, dict(state.services))
    broken = service(0, extra=1)
    bad.services[broken.key] = dataclasses.replace(broken, port=70000)
    with entered(bed.node_ns), pytest.raises(CommandError):
        proxier.sync(bad, {broken.key})
    assert connects(bed, first) == "ok" and connects(bed, last) == "refused"
    with entered(bed.node_ns):
        proxier.sync(state, {broken.key})  # after a failure the proxier rebuilds it all
        assert proxier.last_transaction_lines > full_lines // 2
        proxier.cleanup()
    assert nft_table(bed) == ""


# -- one lab per mode ----------------------------------------------------------------------

@pytest.fixture(scope="module", params=["nftables", "userspace"])
def mode_lab(request: pytest.FixtureRequest,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    mode = request.param
    lab = f"kpb-{mode[:3]}"
    path = write_topology(tmp_path_factory.mktemp(lab), f"""
name: {lab}
dataplane: host-gw
kubernetes: true
nodes: {{count: 2}}
pods: {{perNode: 0}}
kubeProxy: {{mode: {mode}}}
""")
    with running_lab(path) as c:
        next(a for a in c.addons if a.name == "kube-proxy").wait_ready()  # type: ignore
        k = kubectl(c)
        k("apply", "-f", "-", stdin=APPS)
        expose_web(k)
        wait_ready(k, "app=web", 3, timeout=120)
        wait_ready(k, "app=client", 1, timeout=120)
        yield Lab(c, k, mode)


@dataclasses.dataclass
class Lab:
    c: Cluster
    k: Kubectl
    mode: str


def web_pods(k: Kubectl) -> set[str]:
    return {p["metadata"]["name"] for p in k.json("get", "pods", "-l", "app=web")["items"]
            if p["status"].get("podIP")}


def rules(c: Cluster, node: str = "node-1") -> str:
    return subprocess.run([KNETLAB, "proxy", "rules", node, "--cluster", c.spec.name],
                          capture_output=True, text=True, check=True, timeout=60).stdout


@needs_root
@pytest.mark.e2e
def test_clusterip_reaches_every_endpoint_tcp_and_udp(mode_lab: Lab) -> None:
    k = mode_lab.k
    web = web_pods(k)
    for svc, port, proto in (("web", 80, "http"), ("multi", 81, "http"),
                             ("multi", 53, "udp")):
        ip, seen = cluster_ip(k, svc), set()

        def all_seen(ip: str = ip, port: int = port, proto: str = proto,
                     seen: set[str] = seen) -> bool:
            seen.update(dial(k, ip, port, 9, protocol=proto))
            return seen == web
        poll(all_seen, 60, f"every one of {web} behind {svc} {ip}:{port}/{proto}")


@needs_root
@pytest.mark.e2e
def test_no_endpoints_is_refused_at_once(mode_lab: Lab) -> None:
    c, k = mode_lab.c, mode_lab.k
    ip = cluster_ip(k, "none")
    t0 = time.monotonic()
    proc = k.run("exec", "client", "--", "/agnhost", "connect", f"{ip}:80", "--timeout=5s",
                 check=False)
    took = time.monotonic() - t0
    assert proc.returncode == 1 and "REFUSED" in proc.stderr and took < 4, (proc, took)
    live = rules(c)
    assert (f"{ip} . tcp . 80 : goto reject-chain" in live if mode_lab.mode == "nftables"
            else f"-d {ip}/32 -p tcp -m tcp --dport 80" in live and "-j REJECT" in live)


@needs_root
@pytest.mark.e2e
def test_nodeport_on_every_node(mode_lab: Lab) -> None:
    c, k = mode_lab.c, mode_lab.k
    web = web_pods(k)
    port = k("get", "svc", "np", "-o", "jsonpath={.spec.ports[0].nodePort}")
    for target in ("node-1", "node-2"):
        url = f"http://{c.node(target).node_ip}:{port}/hostname"
        out = subprocess.run(["nsenter", f"--net={c.node('node-1').netns}", "--", "curl",
                              "-s", "-m", "5", url], capture_output=True, text=True,
                             timeout=30)
        assert out.stdout in web, (target, out)


@needs_root
@pytest.mark.e2e
def test_session_affinity_client_ip(mode_lab: Lab) -> None:
    c, k = mode_lab.c, mode_lab.k
    answers = dial(k, cluster_ip(k, "sticky"), 80, 12)
    assert len(answers) == 12 and len(set(answers)) == 1, answers
    live = rules(c)
    if mode_lab.mode == "nftables":
        assert "flags dynamic,timeout" in live and "timeout 1m" in live
        assert "update @affinity-" in live


@needs_root
@pytest.mark.e2e
def test_scale_down_is_an_incremental_change(mode_lab: Lab) -> None:
    c, k = mode_lab.c, mode_lab.k
    ip = cluster_ip(k, "web")
    k("scale", "deployment", "web", "--replicas", "1")

    def one_left() -> bool:
        return len(set(dial(k, ip, 80, 6))) == 1 and len(web_pods(k)) == 1
    poll(one_left, 60, "web down to one endpoint")
    live = rules(c)
    if mode_lab.mode == "nftables":
        chain = live.split("chain service-")
        web = next(ch for ch in chain[1:] if ch.split("{")[0].strip().endswith("default/web/tcp/"))
        body = web.split("{")[1].split("}")[0]
        assert "numgen" not in body and body.count("dnat to") == 1, body
        # hairpin: the last pod reaches itself through its Service (masqueraded, because
        # after DNAT source and destination are the same endpoint: set hairpin-endpoints)
        solo = web_pods(k).pop()
        assert dial(k, ip, 80, 3, pod=solo) == [solo] * 3
    else:
        line = next(ln for ln in live.splitlines() if f"-d {ip}/32" in ln)
        assert line.count(":8080") == 1, line  # the comment lists the one endpoint left
    status = json.loads((c.rundir.path / "daemons" / "node-1" / "kube-proxy" /
                         "status.json").read_text())
    assert status["mode"] == mode_lab.mode
    assert status["syncs"] > status["fullSyncs"] and not status["lastSyncFull"], status
