"""The resource table: every resource the API server serves, as data.

One row per resource: plural and singular names, kind, group/version, scope, short names,
categories, subresources and where its objects live in etcd (kube-apiserver's own key
prefixes, e.g. nodes under ``/registry/minions/``). Discovery, routing, the registry and
the OpenAPI documents all read this table; adding a resource is adding a row (plus, if
it needs them, a strategy, table columns and validation).
"""

from __future__ import annotations

from dataclasses import dataclass, field

VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
SUB_VERBS = {"status": ["get", "patch", "update"], "scale": ["get", "patch", "update"],
             "log": ["get"], "exec": ["create", "get"], "portforward": ["create", "get"],
             "binding": ["create"], "eviction": ["create"], "finalize": ["update"]}


@dataclass(frozen=True)
class Resource:
    plural: str
    kind: str
    group: str = ""
    version: str = "v1"
    namespaced: bool = True
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()
    etcd: str = ""  # key prefix under /registry/ when it differs from the plural
    generation: bool = False  # metadata.generation bumped on spec changes
    singular: str = field(default="")

    @property
    def group_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def api_path(self) -> str:
        """The URL prefix of its group-version: ``/api/v1`` or ``/apis/apps/v1``."""
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"

    @property
    def name(self) -> str:
        return self.singular or self.kind.lower()

    @property
    def prefix(self) -> str:
        return f"/registry/{self.etcd or self.plural}/"

    def key(self, namespace: str | None, name: str) -> str:
        return f"{self.prefix}{namespace}/{name}" if self.namespaced else f"{self.prefix}{name}"

    def list_prefix(self, namespace: str | None) -> str:
        return f"{self.prefix}{namespace}/" if self.namespaced and namespace else self.prefix

    @property
    def qualified(self) -> str:
        """``deployments.apps`` (errors name resources so); ``pods`` for core."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


ALL = ("all",)
RESOURCES: list[Resource] = [
    # core/v1
    Resource("namespaces", "Namespace", namespaced=False, short_names=("ns",),
             subresources=("status", "finalize")),
    Resource("nodes", "Node", namespaced=False, short_names=("no",), subresources=("status",),
             etcd="minions"),
    Resource("pods", "Pod", short_names=("po",), categories=ALL,
             subresources=("status", "log", "exec", "binding", "portforward", "eviction")),
    Resource("services", "Service", short_names=("svc",), categories=ALL,
             subresources=("status",), etcd="services/specs"),
    Resource("endpoints", "Endpoints", short_names=("ep",), etcd="services/endpoints",
             singular="endpoints"),
    Resource("bindings", "Binding"),  # POST only: the older form of pods/binding
    Resource("configmaps", "ConfigMap", short_names=("cm",)),
    Resource("secrets", "Secret"),
    Resource("events", "Event", short_names=("ev",)),
    Resource("serviceaccounts", "ServiceAccount", short_names=("sa",)),
    Resource("resourcequotas", "ResourceQuota", short_names=("quota",),
             subresources=("status",)),
    Resource("limitranges", "LimitRange", short_names=("limits",)),
    Resource("persistentvolumeclaims", "PersistentVolumeClaim", short_names=("pvc",),
             subresources=("status",)),
    # apps/v1
    Resource("deployments", "Deployment", "apps", short_names=("deploy",), categories=ALL,
             subresources=("status", "scale"), generation=True),
    Resource("replicasets", "ReplicaSet", "apps", short_names=("rs",), categories=ALL,
             subresources=("status", "scale"), generation=True),
    Resource("daemonsets", "DaemonSet", "apps", short_names=("ds",), categories=ALL,
             subresources=("status",), generation=True),
    Resource("statefulsets", "StatefulSet", "apps", short_names=("sts",), categories=ALL,
             subresources=("status", "scale"), generation=True),
    Resource("controllerrevisions", "ControllerRevision", "apps"),
    # batch/v1
    Resource("jobs", "Job", "batch", categories=ALL, subresources=("status",), generation=True),
    Resource("cronjobs", "CronJob", "batch", short_names=("cj",), categories=ALL,
             subresources=("status",), generation=True),
    # discovery.k8s.io/v1
    Resource("endpointslices", "EndpointSlice", "discovery.k8s.io"),
    # networking.k8s.io/v1
    Resource("networkpolicies", "NetworkPolicy", "networking.k8s.io", short_names=("netpol",),
             generation=True),
    Resource("ingresses", "Ingress", "networking.k8s.io", short_names=("ing",),
             subresources=("status",), etcd="ingress", generation=True),
    Resource("ingressclasses", "IngressClass", "networking.k8s.io", namespaced=False),
    # coordination.k8s.io/v1
    Resource("leases", "Lease", "coordination.k8s.io"),
]

# Group order as kube-apiserver lists them (kubectl api-resources keeps it).
GROUPS: list[tuple[str, str]] = [("", "v1"), ("apps", "v1"), ("batch", "v1"),
                                 ("coordination.k8s.io", "v1"), ("discovery.k8s.io", "v1"),
                                 ("networking.k8s.io", "v1")]

BY_GV_PLURAL: dict[tuple[str, str, str], Resource] = {
    (r.group, r.version, r.plural): r for r in RESOURCES}
BY_PLURAL: dict[str, Resource] = {r.plural: r for r in RESOURCES}
BY_KIND: dict[str, Resource] = {r.kind: r for r in RESOURCES}


def lookup(group: str, version: str, plural: str) -> Resource | None:
    return BY_GV_PLURAL.get((group, version, plural))


def in_group(group: str, version: str) -> list[Resource]:
    return [r for r in RESOURCES if r.group == group and r.version == version]


def sub_kind(res: Resource, sub: str) -> tuple[str, str, str]:
    """(group, version, kind) a subresource answers with."""
    if sub == "scale":
        return "autoscaling", "v1", "Scale"
    if sub == "binding":
        return "", "v1", "Binding"
    if sub == "eviction":
        return "policy", "v1", "Eviction"
    if sub in ("exec", "portforward"):
        return "", "v1", "PodExecOptions" if sub == "exec" else "PodPortForwardOptions"
    if sub == "log":
        return "", "v1", "Pod"
    return res.group, res.version, res.kind
