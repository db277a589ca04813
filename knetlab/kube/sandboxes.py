"""A pod's sandbox as the kubelet sees it: the pause process, its files, and CNI ADD/DEL.

``create`` writes ``sandbox.json`` (hostname, /etc/hosts, /etc/resolv.conf), starts
``sandbox.py`` (which makes the namespaces and the overlay root, then pauses), records the
pid and namespace in the lab's ownership record *right after* creation, and wires the
network through the node's CNI configuration only. ``teardown`` undoes it in reverse:
CNI DEL while the namespace still exists, then the pause and anything left in the pod's
mount namespace, then the pod dir.

A kubelet restart keeps its pods, as upstream: ``adopt`` takes over a sandbox a previous
kubelet of this node left running (its pause alive with the pod dir in its command line,
and, unless hostNetwork, the CNI result still in the node's CNI cache, which gives back
its IP). Only a sandbox that cannot be adopted is torn down and recreated (``reclaim``).
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from knetlab.errors import KnetlabError
from knetlab.kube import runtime

if TYPE_CHECKING:
    from knetlab.kube.kubelet import Kubelet

log = logging.getLogger("knetlab.kube.sandbox")
SANDBOX_PY = str(Path(__file__).with_name("sandbox.py"))
HOSTS_HEADER = ("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n"
                "::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\n"
                "fe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n")


class SandboxError(KnetlabError):
    pass


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def host_resolv() -> str:
    try:
        return Path("/etc/resolv.conf").read_text()
    except OSError:
        return ""


class Sandbox:
    def __init__(self, kubelet: Kubelet, pdir: Path, ns: str, name: str, uid: str) -> None:
        self.k, self.dir, self.ns, self.name, self.uid = kubelet, pdir, ns, name, uid
        self.cid = runtime.container_id(uid)
        self.pid: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.ip: str | None = None
        self.hostname = name
        self.fqdn = ""
        self.host_network = False
        self.host_aliases: list[dict[str, Any]] = []

    @property
    def owner_name(self) -> str:
        return f"{self.k.node}/pod/{self.ns}/{self.name}"

    def alive(self) -> bool:
        if self.pid is None:
            return False
        if self.proc is not None:
            return self.proc.poll() is None
        return runtime.pid_alive(self.pid, str(self.dir))

    def cni_args(self) -> dict[str, str]:
        return {"IgnoreUnknown": "1", "K8S_POD_NAMESPACE": self.ns, "K8S_POD_NAME": self.name,
                "K8S_POD_INFRA_CONTAINER_ID": self.cid, "K8S_POD_UID": self.uid}

    # -- files ---------------------------------------------------------------------------
    def resolv_conf(self, spec: dict[str, Any]) -> str:
        policy = spec.get("dnsPolicy", "ClusterFirst")
        cluster = policy == "ClusterFirstWithHostNet" or (policy == "ClusterFirst"
                                                          and not self.host_network)
        servers: list[str] = []
        search: list[str] = []
        options: list[str] = []
        if cluster and self.k.cluster_dns:
            d = self.k.cluster_domain
            servers = [self.k.cluster_dns]
            search = [f"{self.ns}.svc.{d}", f"svc.{d}", d]
            options = ["ndots:5"]
        elif policy != "None":
            text = host_resolv()
            if not spec.get("dnsConfig"):
                return text
            for line in text.splitlines():
                words = line.split()
                if len(words) > 1 and words[0] == "nameserver":
                    servers.append(words[1])
                elif words and words[0] in ("search", "domain"):
                    search += words[1:]
                elif words and words[0] == "options":
                    options += words[1:]
        cfg = spec.get("dnsConfig") or {}
        # The kubelet's appendDNSConfig: duplicates dropped, an option of dnsConfig
        # replaces the one of the same name (ndots:5 -> ndots:2), order kept.
        servers = list(dict.fromkeys([*servers, *(cfg.get("nameservers") or [])]))
        search = list(dict.fromkeys([*search, *(cfg.get("searches") or [])]))
        merged = {o.split(":", 1)[0]: o for o in options}
        for o in cfg.get("options") or []:
            merged[o["name"]] = f"{o['name']}:{o['value']}" if o.get("value") else o["name"]
        options = list(merged.values())
        # glibc reads at most 3 nameservers; the kubelet drops the rest (and 32+ searches)
        servers, search = servers[:3], search[:32]
        out = "".join(f"nameserver {s}\n" for s in servers)
        if search:
            out = f"search {' '.join(search)}\n" + out
        if options:
            out += f"options {' '.join(options)}\n"
        return out

    def hosts_file(self) -> str:
        text = HOSTS_HEADER
        if self.ip:
            names = f"{self.fqdn}\t{self.hostname}" if self.fqdn else self.hostname
            text += f"{self.ip}\t{names}\n"
        if self.host_aliases:
            text += "\n# Entries added by HostAliases.\n"
            for a in self.host_aliases:
                text += f"{a.get('ip')}\t" + "\t".join(a.get("hostnames") or []) + "\n"
        return text

    def in_root(self, path: str) -> str:
        """``path`` inside the pod's root, as seen from the host through /proc/PID/root,
        resolving symlinks against the pod's root (an absolute link must not lead out)."""
        root = f"/proc/{self.pid}/root"
        parts = [p for p in path.split("/") if p]
        done: list[str] = []
        hops = 0
        while parts:
            part = parts.pop(0)
            if part in (".", ""):
                continue
            if part == "..":
                if done:
                    done.pop()
                continue
            cand = "/".join([root, *done, part])
            if os.path.islink(cand):
                hops += 1
                if hops > 40:
                    raise OSError(f"too many symlinks resolving {path} in the pod")
                target = os.readlink(cand)
                if target.startswith("/"):
                    done = []
                parts = [p for p in target.split("/") if p] + parts
                continue
            done.append(part)
        return "/".join([root, *done])

    def write(self, path: str, content: str, mode: int = 0o644) -> None:
        dest = self.in_root(path)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open(dest, "w") as f:
            f.write(content)
        os.chmod(dest, mode)

    # -- life cycle ----------------------------------------------------------------------
    def create(self, pod: dict[str, Any], host_network: bool) -> None:
        spec = pod.get("spec") or {}
        self.host_network = host_network
        self.hostname = self.k.node if host_network else (spec.get("hostname") or self.name)
        sub = spec.get("subdomain")
        self.fqdn = (f"{self.hostname}.{sub}.{self.ns}.svc.{self.k.cluster_domain}"
                     if sub and not host_network else "")
        self.host_aliases = spec.get("hostAliases") or []
        self.reclaim()
        self.dir.mkdir(parents=True, exist_ok=True)
        files = {"/etc/resolv.conf": self.resolv_conf(spec),
                 "/etc/hostname": self.hostname + "\n"}
        if not host_network:
            files["/etc/hosts"] = self.hosts_file()
        (self.dir / "sandbox.json").write_text(json.dumps({
            "hostname": self.hostname, "netns": self.k.node_netns if host_network else None,
            "files": files}))
        proc = subprocess.Popen([sys.executable, "-S", SANDBOX_PY, str(self.dir)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.proc, self.pid = proc, proc.pid
        self.k.rundir_obj.record_process(proc.pid, str(self.dir), self.owner_name)
        line = self._first_line(proc, 10.0)
        if line != "ready":
            self.teardown(keep_dir=True)
            raise SandboxError(f"failed to create the sandbox of pod {self.ns}/{self.name}: "
                               f"{line or 'no answer'}")
        (self.dir / "sandbox.pid").write_text(f"{proc.pid}\n")
        netns = f"/proc/{proc.pid}/ns/net"
        self.k.watch_pid(proc.pid, f"{self.ns}/{self.name}")
        if host_network:
            self.ip = self.k.node_ip
            return
        self.k.rundir_obj.record_netns(netns, self.owner_name)
        try:
            result = self.k.cni.add(self.cid, netns, "eth0", self.cni_args())
        except Exception as exc:  # noqa: BLE001 - any plugin failure: undo, report, retry
            self.teardown(keep_dir=True)
            raise SandboxError(f"failed to set up the network of pod {self.ns}/{self.name}: "
                               f"{exc}") from exc
        ips = [ip["address"].split("/")[0] for ip in result.get("ips") or []]
        self.ip = ips[0] if ips else None
        self.write("/etc/hosts", self.hosts_file())

    def load(self) -> bool:
        """Fill pid, hostname and network mode from what an earlier kubelet left in the pod
        dir; False unless its pause still runs."""
        try:
            pid = int((self.dir / "sandbox.pid").read_text().split()[0])
            saved = json.loads((self.dir / "sandbox.json").read_text())
        except (OSError, ValueError, IndexError):
            return False
        if not runtime.pid_alive(pid, str(self.dir)):
            return False
        self.pid, self.proc = pid, None
        self.host_network = bool(saved.get("netns"))
        self.hostname = saved.get("hostname") or self.name
        return True

    def adopt(self, pod: dict[str, Any]) -> bool:
        """Take over the running sandbox of an earlier kubelet (see the module doc)."""
        if not self.load():
            return False
        assert self.pid is not None
        if self.host_network:
            self.ip = self.k.node_ip
        else:
            result = self.k.cni.cached(self.cid, "eth0") or {}
            ips = [ip["address"].split("/")[0] for ip in result.get("ips") or []]
            if not ips:  # no record of its network: reclaim() will start over
                self.pid = None
                return False
            self.ip = ips[0]
        spec = pod.get("spec") or {}
        sub = spec.get("subdomain")
        self.fqdn = (f"{self.hostname}.{sub}.{self.ns}.svc.{self.k.cluster_domain}"
                     if sub and not self.host_network else "")
        self.host_aliases = spec.get("hostAliases") or []
        self.k.watch_pid(self.pid, f"{self.ns}/{self.name}")
        return True

    def reclaim(self) -> None:
        """A sandbox left by an earlier kubelet of this node: take it down before a new one
        (its CNI result is still cached, so DEL releases its address)."""
        try:
            pid = int((self.dir / "sandbox.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return
        if runtime.pid_alive(pid, str(self.dir)):
            self.pid, self.ip = pid, "reclaimed"
            self.teardown(keep_dir=True)

    @staticmethod
    def _first_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
        assert proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        try:
            if not sel.select(timeout):
                return ""
            return proc.stdout.readline().decode(errors="replace").strip()
        finally:
            sel.close()
            proc.stdout.close()

    def teardown(self, keep_dir: bool = False) -> None:
        """CNI DEL, kill the pause and every process left in the pod's mount namespace,
        remove the pod dir (``keep_dir``: keep the logs). Safe to call twice."""
        pid = self.pid
        netns = f"/proc/{pid}/ns/net" if pid else ""
        if not self.host_network and (self.ip or pid):
            try:
                self.k.cni.delete(self.cid, netns if self.alive() else "", "eth0",
                                  self.cni_args())
            except Exception as exc:  # noqa: BLE001 - DEL must not stop the teardown
                log.warning("pod %s/%s: CNI DEL: %s", self.ns, self.name, exc)
        if pid is not None:
            mnt = _ns_inode(pid, "mnt") if self.alive() else None
            if self.alive():
                os.kill(pid, signal.SIGKILL)
            if mnt is not None:
                for other in _processes_in_mnt(mnt):
                    try:
                        os.kill(other, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            if self.proc is not None:
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
            else:
                deadline = time.monotonic() + 5
                while runtime.pid_alive(pid, str(self.dir)) and time.monotonic() < deadline:
                    time.sleep(0.01)
        self.pid, self.proc, self.ip = None, None, None
        (self.dir / "sandbox.pid").unlink(missing_ok=True)
        for sub in ("rootfs", "upper", "work"):
            shutil.rmtree(self.dir / sub, ignore_errors=True)
        if not keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)


def _ns_inode(pid: int, kind: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/{kind}").st_ino
    except OSError:
        return None


def _processes_in_mnt(inode: int) -> list[int]:
    """Processes in the pod's mount namespace; none if that is the machine's own (a pause
    caught before it unshared, or a reused pid): never a sweep of the whole machine."""
    if inode in (_ns_inode(os.getpid(), "mnt"), _ns_inode(1, "mnt")):
        log.warning("refusing to kill processes of the host's mount namespace")
        return []
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _ns_inode(int(entry), "mnt") == inode:
            out.append(int(entry))
    return out
