"""The per-node Python agents start site-less (``python -S``, knetlab/pyagent.py): each one's
start path needs nothing beyond the standard library and knetlab, and skips the imports that
made every node's start-up dearer (yaml, http.client with email, the proxy modes it does not
run). Real interpreters, no lab, no root."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import knetlab.rundir as rundir_mod
from knetlab import pyagent

#: the agents every node of a Kubernetes lab runs, by the module their daemon starts
AGENTS = ["knetlab.kube.kubelet", "knetlab.addons.kubeproxy", "knetlab.addons.netpolicy.agent",
          "knetlab.overlays.flannel.agent", "knetlab.overlays.flannel.udpfwd",
          "knetlab.addons.lbspeaker"]
#: what must stay off an agent's start path (each cost every node milliseconds of CPU)
HEAVY = ["yaml", "email", "http.client", "site", "asyncio"]


def run_site_less(code: str) -> str:
    proc = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                          env=pyagent.env(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.mark.parametrize("module", AGENTS)
def test_agent_starts_without_site_and_heavy_imports(module: str) -> None:
    proc = subprocess.run([*pyagent.argv(module), "--help"], capture_output=True, text=True,
                          env=pyagent.env(), timeout=60)
    assert proc.returncode == 0 and "usage:" in proc.stdout, proc.stderr
    imported = run_site_less(
        f"import sys, runpy; sys.argv = ['x', '--help']\n"
        f"try:\n    runpy.run_module({module!r}, run_name='__main__')\n"
        f"except SystemExit:\n    pass\n"
        f"print('HEAVY:', *(m for m in {HEAVY!r} if m in sys.modules))")
    assert imported.splitlines()[-1] == "HEAVY:", f"{module} imports on its start path: {imported}"


def test_kube_proxy_imports_only_its_mode() -> None:
    imported = run_site_less(
        "import sys\nfrom knetlab.addons.kubeproxy.agent import make_proxier\n"
        "p = make_proxier('iptables', 'node-1')\n"
        "print(type(p).__name__, sorted(m.rsplit('.', 1)[1] for m in sys.modules\n"
        "      if m.rsplit('.', 1)[-1] in ('iptables', 'nftables', 'userspace')\n"
        "      and m.startswith('knetlab.addons.kubeproxy.')))")
    assert imported == "IptablesProxier ['iptables']"


def test_every_node_agent_daemon_runs_site_less(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemons start their agents through ``pyagent`` (so the two above hold for what
    a lab really runs)."""
    from knetlab.addons.kubeproxy import KubeProxyDaemon
    from knetlab.addons.netpolicy.agent import PolicyAgentDaemon
    from knetlab.kube.kubelet import KubeletDaemon
    from knetlab.overlays.flannel.daemons import FlannelAgent, UdpForwarder
    from knetlab.rundir import RunDir

    monkeypatch.setattr(rundir_mod, "BASE", tmp_path)
    rd = RunDir("bt-pyagent")
    daemons = [
        KubeletDaemon(rd, "node-1", kubeconfig="k", node_netns="/n", node_ip="192.0.2.1",
                      pod_cidr="10.244.1.0/24", cni_conf="c", cni_path=["/p"], cni_cache="/c"),
        KubeProxyDaemon(rd, "node-1", kubeconfig=Path("k"), node_netns="/n",
                        node_ip="192.0.2.1", cluster_cidr="10.244.0.0/16",
                        service_cidr="10.96.0.0/12", mode="iptables", api_port=1),
        PolicyAgentDaemon(rd, "node-1", kubeconfig="k", node_netns="/n"),
    ]
    # flanneld takes the node and the store; their argv fields are all it reads here
    node = SimpleNamespace(rundir=rd, name="node-1", netns="/n", uplink="eth0",
                           spec=SimpleNamespace(pod_cidr="10.244.1.0/24", ip="192.0.2.1/24"))
    store = SimpleNamespace(to_arg=lambda: "unix:///s:0")
    daemons += [FlannelAgent(node, store), UdpForwarder(node, store, 24)]  # type: ignore[arg-type]
    for d in daemons:
        argv = d.command()
        assert argv[:3] == [sys.executable, "-S", "-m"], (d.name, argv)
        assert d.env()["PYTHONPATH"] == pyagent.SOURCE_ROOT
        assert (Path(pyagent.SOURCE_ROOT) / argv[3].replace(".", "/")).with_suffix(
            ".py").exists() or (Path(pyagent.SOURCE_ROOT) / argv[3].replace(".", "/")).is_dir()
