"""The lab's etcd as its control-plane store: started first, for every lab.

Every lab runs one etcd (``daemons/control-plane/etcd``), Kubernetes or not: the data
planes keep their state there (flannel leases, Calico IPAM, the OVS pod registry; see
knetlab/store.py), and with Kubernetes the API server uses the same etcd, as a kubeadm
cluster whose network plugin uses the etcd datastore does. A lab without Kubernetes
(``kubernetes: false``) pays for etcd's start alone (its PKI is two EC keys and etcd's
boot on tmpfs), rather than keep a second, home-made store with its own semantics.

It comes up before the network (the data plane's setup writes its config there) and
goes down last (CNI DEL of every pod releases addresses in it).
"""

from __future__ import annotations

from pathlib import Path

from knetlab.errors import KnetlabError
from knetlab.kube.etcd import EtcdDaemon
from knetlab.kube.pki import make_certs, make_etcd_certs
from knetlab.rundir import RunDir
from knetlab.store import Store

OWNER = "control-plane"  # as knetlab.kube.controlplane: one etcd, one place


def kube_dir(rundir: RunDir) -> Path:
    return rundir.path / "kube"


def start_lab_etcd(rundir: RunDir, apiserver_ips: tuple[str, ...] = (),
                   wait: bool = True) -> EtcdDaemon:
    """The lab's CA and etcd certificates (kept if present), then etcd (ready, unless
    ``wait`` is false: then call ``wait_ready`` before the first use)."""
    k = kube_dir(rundir)
    k.mkdir(parents=True, exist_ok=True)
    k.chmod(0o700)
    make_certs(k, f"knetlab-{rundir.cluster}", apiserver_ips)
    make_etcd_certs(k)
    etcd = EtcdDaemon(rundir, OWNER)
    etcd.start(wait=wait)
    return etcd


def etcd_store(etcd: EtcdDaemon) -> Store:
    """The store's clients use etcd's unix socket: they run in node namespaces too."""
    return Store(etcd.socket_url)


def lab_store(rundir: RunDir) -> Store:
    """The store of a running lab (for commands run outside its supervisor)."""
    etcd_dir = rundir.daemon_dir(OWNER, EtcdDaemon.name)
    if not (etcd_dir / "ports").exists():
        raise KnetlabError(f"lab {rundir.cluster} has no etcd (is it running?)")
    return etcd_store(EtcdDaemon(rundir, OWNER))
