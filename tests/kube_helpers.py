"""What the Kubernetes-in-a-lab test files share: a kubectl on the lab, the agnhost image
and its pod templates, the kube-proxy tests' Services, and the agnhost ``/dial`` probe.
(The module lab itself is ``running_lab`` in tests/conftest.py; ``Kubectl``, ``wait_ready``
and ``serving`` stay in tests/test_kube_lab.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.parse

import pytest

from knetlab.cluster import Cluster
from tests.test_kube_lab import Kubectl, kubectls

#: the servers of Kubernetes' own network e2e tests (netexec, serve-hostname, connect)
AGNHOST = "registry.k8s.io/e2e-test-images/agnhost:2.47"

#: a netexec container answering HTTP on 8080 and UDP on 8081, ready once /healthz is
NETEXEC_CONTAINER = f"""- name: netexec
  image: {AGNHOST}
  args: ["netexec", "--http-port=8080", "--udp-port=8081"]
  ports: [{{name: http, containerPort: 8080}}, {{name: udp, containerPort: 8081, protocol: UDP}}]
  readinessProbe: {{httpGet: {{path: /healthz, port: http}}, periodSeconds: 1}}"""


def _indent(text: str, spaces: int) -> str:
    return "\n".join(" " * spaces + line for line in text.splitlines())


def netexec_pod(name: str, node: str, app: str) -> str:
    """A netexec pod pinned to ``node``, labelled ``app``, followed by a document break."""
    return f"""
apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: {app}}}}}
spec:
  nodeName: {node}
  containers:
{_indent(NETEXEC_CONTAINER, 2)}
---"""


def deployment(name: str, replicas: int, container: str) -> str:
    """A Deployment of ``container`` (one YAML list item) labelled ``app: name``, followed
    by a document break."""
    return f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers:
{_indent(container, 6)}
---"""


def netexec_deployment(name: str, replicas: int) -> str:
    return deployment(name, replicas, NETEXEC_CONTAINER)


#: two Services over the ``web`` netexec Deployment: two ports (TCP and UDP) with named
#: target ports, and ClientIP session affinity
MULTI_AND_STICKY = """
apiVersion: v1
kind: Service
metadata: {name: multi}
spec:
  selector: {app: web}
  ports:
  - {name: web, port: 81, targetPort: http}
  - {name: dns, port: 53, targetPort: 8081, protocol: UDP}
---
apiVersion: v1
kind: Service
metadata: {name: sticky}
spec:
  selector: {app: web}
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}
  ports: [{port: 80, targetPort: 8080}]
"""


def expose_web(k: Kubectl) -> None:
    """The imperative Services over the ``web`` Deployment: ``web`` (ClusterIP), ``np``
    (NodePort, named target port) and ``none`` (a ClusterIP without endpoints)."""
    k("expose", "deployment", "web", "--port", "80", "--target-port", "8080")
    k("expose", "deployment", "web", "--name", "np", "--type", "NodePort", "--port", "80",
      "--target-port", "http")
    k("create", "service", "clusterip", "none", "--tcp", "80:8080")


def skip_without_root_or_kubectl() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (namespaces)")
    if not kubectls():
        pytest.skip("no kubectl")


def kubectl(c: Cluster) -> Kubectl:
    """The first real kubectl, pointed at the lab's API server."""
    return Kubectl(c.kubeconfig, kubectls()[0])


def cluster_ip(k: Kubectl, svc: str) -> str:
    return k("get", "svc", svc, "-o", "jsonpath={.spec.clusterIP}")


def dial(k: Kubectl, host: str, port: int, tries: int, protocol: str = "http",
         request: str = "hostname", pod: str = "client") -> list[str]:
    """``tries`` independent connections from ``pod`` (agnhost /dial): the answers."""
    q = urllib.parse.urlencode({"host": host, "port": port, "request": request,
                                "protocol": protocol, "tries": tries})
    out = k("exec", pod, "--", "wget", "-qO-", "-T", "30", f"http://127.0.0.1:8080/dial?{q}",
            timeout=60)
    return json.loads(out).get("responses", [])


def in_netns(netns: str, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in a network namespace (a node's or a pod's), unchecked."""
    return subprocess.run(["nsenter", f"--net={netns}", "--", *argv], capture_output=True,
                          text=True, timeout=timeout)
