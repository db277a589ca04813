"""The ``ingress`` add-on: the API objects of an ingress-nginx install (see the package
docstring); the kubelets run the controller pods like any other."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from knetlab.addons import MODULES, Addon, register
from knetlab.addons.ingress import model, state_root
from knetlab.addons.ingress.controller import EXPOSE_SERVICE, HEALTH_PORT, NAMESPACE, POD_LABELS
from knetlab.kube.client import ApiError

if TYPE_CHECKING:
    from knetlab.kube.client import KubeClient
    from knetlab.nodes.k8snode import K8sNode
    from knetlab.topologies.fields import Fields
    from knetlab.topologies.schema import ClusterSpec

log = logging.getLogger("knetlab.addons.ingress")
CLASS_NAME = "nginx"
DAEMONSET = "ingress-nginx-controller"
SERVICE_ACCOUNT = "ingress-nginx"   # the controller's identity, as in ingress-nginx's deploy.yaml
IMAGE = "registry.k8s.io/ingress-nginx/controller:v1.11.3"
NODE_LABEL = "knetlab.io/ingress"     # the nodes the topology chose: the DaemonSet's selector
READY_TIMEOUT = 30.0


@register
class IngressNginx(Addon):
    name = "ingress"
    section = "ingress"

    @classmethod
    def validate(cls, spec: ClusterSpec, settings: Fields) -> dict[str, Any]:
        settings.only(["nodes", "httpPort", "httpsPort", "defaultClass", "enabled"])
        names = [n.name for n in spec.nodes]
        if settings.has("nodes"):
            nodes = [str(n) for n in settings.list("nodes")]
            for n in nodes:
                if n not in names:
                    raise settings.error("nodes", f"{n!r} is not a node of this topology",
                                         f"use node names among {', '.join(names[:8])}")
            if not nodes:
                raise settings.error("nodes", "is empty", "name at least one node, or set "
                                     "ingress.enabled: false")
        else:
            nodes = names[:1]
        http = settings.int("httpPort", 80, lo=1, hi=65535)
        https = settings.int("httpsPort", 443, lo=1, hi=65535)
        if len({http, https, HEALTH_PORT}) < 3:
            raise settings.error("httpsPort", f"httpPort {http}, httpsPort {https} and the "
                                 f"health port {HEALTH_PORT} must differ",
                                 "use three different ports")
        return {"nodes": nodes, "httpPort": http, "httpsPort": https,
                "defaultClass": settings.bool("defaultClass", True),
                # Opt-in, as ingress addons are in kind and minikube: the controller holds
                # ports 80 and 443 of its nodes, which a lab without `ingress:` may want.
                "enabled": settings.bool("enabled", bool(settings.data))}

    @property
    def client(self) -> KubeClient:
        assert self.cluster.control is not None
        return self.cluster.control.client

    # -- life cycle -----------------------------------------------------------------------
    def start(self) -> None:
        if not self.settings["enabled"] or self.cluster.control is None:
            return
        for resource, obj in self.objects():
            try:
                self.client.create(resource, obj, obj["metadata"].get("namespace"))
            except ApiError as exc:
                if exc.code != 409:
                    raise
        for node in self.cluster.nodes.values():
            self.start_node(node)
        self.wait_ready()

    def start_node(self, node: K8sNode) -> None:
        """A chosen node gets the label the DaemonSet selects: its controller pod follows."""
        if self.settings["enabled"] and self.cluster.control is not None and \
                node.name in self.settings["nodes"]:
            self.client.patch("nodes", node.name,
                              {"metadata": {"labels": {NODE_LABEL: "true"}}})

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Until a controller pod is Ready on every chosen node (its routes are loaded)."""
        want = {n for n in self.settings["nodes"] if n in self.cluster.nodes}
        deadline = time.monotonic() + timeout
        while True:
            ready = {p["spec"].get("nodeName") for p in self.pods() if _ready(p)}
            if want <= ready:
                return
            if time.monotonic() > deadline:
                log.warning("ingress-nginx: not ready on %s after %.0f s",
                            ", ".join(sorted(want - ready)), timeout)
                return
            time.sleep(0.05)

    def pods(self) -> list[dict[str, Any]]:
        sel = ",".join(f"{k}={v}" for k, v in POD_LABELS.items())
        return self.client.list("pods", NAMESPACE, label_selector=sel)["items"]

    # -- the API objects -------------------------------------------------------------------
    def objects(self) -> list[tuple[str, dict[str, Any]]]:
        control = self.cluster.control
        assert control is not None
        default = "true" if self.settings["defaultClass"] else "false"
        http, https = self.settings["httpPort"], self.settings["httpsPort"]
        labels = {"app.kubernetes.io/name": "ingress-nginx"}
        container = {
            "name": "controller", "image": IMAGE,
            "args": ["--state-dir", str(state_root(self.cluster.rundir)),
                     "--http-port", str(http), "--https-port", str(https),
                     "--health-port", str(HEALTH_PORT)],
            "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {
                        "fieldPath": "metadata.name"}}},
                    {"name": "NODE_NAME", "valueFrom": {"fieldRef": {
                        "fieldPath": "spec.nodeName"}}}],
            "ports": [{"name": "http", "containerPort": http, "hostPort": http},
                      {"name": "https", "containerPort": https, "hostPort": https},
                      {"name": "health", "containerPort": HEALTH_PORT,
                       "hostPort": HEALTH_PORT}],
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": HEALTH_PORT},
                               "periodSeconds": 1, "failureThreshold": 3}}
        objs: list[tuple[str, dict[str, Any]]] = [
            ("namespaces", {"apiVersion": "v1", "kind": "Namespace",
                            "metadata": {"name": NAMESPACE, "labels": labels}}),
            ("serviceaccounts", {"apiVersion": "v1", "kind": "ServiceAccount",
                                 "metadata": {"name": SERVICE_ACCOUNT, "namespace": NAMESPACE,
                                              "labels": labels}}),
            ("ingressclasses", {
                "apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
                "metadata": {"name": CLASS_NAME, "labels": labels,
                             "annotations": {model.DEFAULT_CLASS_ANNOTATION: default}},
                "spec": {"controller": model.CONTROLLER}}),
            ("daemonsets", {
                "apiVersion": "apps/v1", "kind": "DaemonSet",
                "metadata": {"name": DAEMONSET, "namespace": NAMESPACE,
                             "labels": dict(POD_LABELS)},
                "spec": {"selector": {"matchLabels": dict(POD_LABELS)},
                         "template": {"metadata": {"labels": dict(POD_LABELS)}, "spec": {
                             "serviceAccountName": SERVICE_ACCOUNT,
                             "hostNetwork": True, "dnsPolicy": "ClusterFirstWithHostNet",
                             "nodeSelector": {NODE_LABEL: "true"},
                             "terminationGracePeriodSeconds": 5,
                             "containers": [container]}}}})]
        if "knetlab.addons.kubeproxy" in MODULES:
            lb = self.cluster.spec.load_balancer_cidr is not None
            objs.append(("services", {
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": EXPOSE_SERVICE, "namespace": NAMESPACE, "labels": labels},
                "spec": {"type": "LoadBalancer" if lb else "NodePort",
                         "ports": [{"name": "http", "port": 80, "protocol": "TCP",
                                    "targetPort": http},
                                   {"name": "https", "port": 443, "protocol": "TCP",
                                    "targetPort": https}]}}))
        return objs


def _ready(pod: dict[str, Any]) -> bool:
    return not pod["metadata"].get("deletionTimestamp") and any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (pod.get("status") or {}).get("conditions") or [])
