"""knetlab.kube.schema: protobuf decoding checked against the real kubectl, patches, strict
validation and OpenAPI (kubectl explain against a loopback fake API server). No root."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

import pytest

from knetlab.kube.schema import (
    decode_protobuf,
    json_merge,
    json_patch,
    openapi_v3,
    openapi_v3_index,
    strategic_merge,
    unknown_fields,
)
from knetlab.kube.schema.protobuf import format_duration, format_time

ROOT = Path(__file__).resolve().parent.parent
KUBECTL = ROOT / ".venv" / "bin" / "kubectl"

RESOURCES = {
    "v1": [("namespaces", "Namespace", False, "ns", ["status"]),
           ("configmaps", "ConfigMap", True, "cm", []),
           ("secrets", "Secret", True, "", []),
           ("services", "Service", True, "svc", ["status"]),
           ("pods", "Pod", True, "po", ["status", "log", "exec", "binding"])],
    "apps/v1": [("deployments", "Deployment", True, "deploy", ["status", "scale"])],
    "batch/v1": [("jobs", "Job", True, "", ["status"])],
}


def _resources(gv: str) -> list[dict]:
    return [{"name": n, "kind": k, "namespaced": ns, "subresources": subs}
            for n, k, ns, _, subs in RESOURCES[gv]]


class FakeApi(BaseHTTPRequestHandler):
    """Legacy discovery, OpenAPI v3 from knetlab.kube.schema, and POSTs recorded and echoed."""

    posts: list[tuple[str, str, bytes]] = []

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, code: int, obj: dict) -> None:
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        path = urlparse(self.path).path
        groups = [gv for gv in RESOURCES if "/" in gv]
        if path == "/version":
            return self._send(200, {"major": "1", "minor": "33", "gitVersion": "v1.33.0"})
        if path == "/api":
            return self._send(200, {"kind": "APIVersions", "versions": ["v1"]})
        if path == "/apis":
            return self._send(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": gv.split("/")[0], "versions": [{"groupVersion": gv, "version": "v1"}],
                 "preferredVersion": {"groupVersion": gv, "version": "v1"}} for gv in groups]})
        if path == "/openapi/v3":
            return self._send(200, openapi_v3_index(list(RESOURCES)))
        for gv, rs in RESOURCES.items():
            prefix = "/api/" if gv == "v1" else "/apis/"
            if path == prefix + gv:
                return self._send(200, {
                    "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
                    "resources": [{"name": n, "singularName": k.lower(), "namespaced": ns,
                                   "kind": k, "shortNames": [s] if s else [],
                                   "verbs": ["create", "delete", "get", "list", "patch",
                                             "update", "watch"]}
                                  for n, k, ns, s, _ in rs]})
            if path == "/openapi/v3" + prefix + gv:
                group, _, version = gv.rpartition("/")
                return self._send(200, openapi_v3(group, version, _resources(gv)))
        self._send(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                         "reason": "NotFound", "code": 404})

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        FakeApi.posts.append((self.path, self.headers.get("Content-Type", ""), body))
        try:
            obj = decode_protobuf(body) if body[:4] == b"k8s\x00" else json.loads(body)
        except ValueError as e:
            return self._send(400, {"kind": "Status", "message": str(e), "code": 400})
        self._send(201, obj)


# The venv's kubectl 1.37, and Debian's dispatcher (it runs its bundled 1.33 for our /version).
KUBECTLS = [KUBECTL, Path("/usr/bin/kubectl")]


@pytest.fixture(scope="module", params=KUBECTLS, ids=["venv", "dispatcher"])
def kubectl(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    binary = request.param
    if not binary.exists():
        pytest.skip(f"{binary} is not installed")
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    home = tmp_path_factory.mktemp("kubectl-home")
    env = {**os.environ, "HOME": str(home), "KUBECONFIG": str(home / "none")}
    url = f"http://127.0.0.1:{server.server_address[1]}"

    def run(*args: str) -> str:
        out = subprocess.run([str(binary), "--server", url, *args], env=env,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout

    yield run
    server.shutdown()
    server.server_close()
    shutil.rmtree(home, ignore_errors=True)


CREATES = [
    ["create", "deployment", "web", "--image=nginx", "--replicas=0", "--port=80"],
    ["create", "namespace", "team-a"],
    ["create", "configmap", "cfg", "--from-literal=a=1", "--from-literal=b=x y"],
    ["create", "secret", "generic", "s", "--from-literal=k=v"],
    ["create", "service", "clusterip", "web", "--tcp=80:8080", "--tcp=443:8443"],
    ["run", "box", "--image=busybox", "--port=80", "--env=A=B", "--labels=x=y",
     "--restart=Never", "--", "sleep", "3600"],
    ["create", "job", "j", "--image=busybox", "--", "echo", "hi"],
]


@pytest.mark.parametrize("args", CREATES, ids=lambda a: " ".join(a[:3]))
def test_decode_matches_kubectl_json(kubectl, args: list[str]) -> None:
    FakeApi.posts.clear()
    cut = args.index("--") if "--" in args else len(args)     # flags go before "--"
    head, tail = args[:cut], args[cut:]
    expected = json.loads(kubectl(*head, "--dry-run=client", "-o", "json", *tail))
    kubectl(*head, "-o", "json", *tail)
    assert len(FakeApi.posts) == 1
    _, ctype, body = FakeApi.posts[0]
    if args[0] == "run":        # kubectl run posts an unstructured object: JSON
        assert ctype == "application/json"
        assert json.loads(body) == expected
        return
    assert ctype == "application/vnd.kubernetes.protobuf"
    assert decode_protobuf(body) == _drop_null_creation(expected)


def _drop_null_creation(obj: object) -> object:
    """kubectl before 1.34 prints the zero creationTimestamp as null (no omitzero yet)."""
    if isinstance(obj, dict):
        return {k: _drop_null_creation(v) for k, v in obj.items()
                if not (k == "creationTimestamp" and v is None)}
    if isinstance(obj, list):
        return [_drop_null_creation(v) for v in obj]
    return obj


def test_explain_uses_openapi_v3(kubectl) -> None:
    out = kubectl("explain", "deployment.spec.strategy")
    assert "rollingUpdate" in out and "type" in out
    out = kubectl("explain", "pods.spec.containers.ports")
    assert "containerPort" in out


# --- protobuf: hand-encoded bodies for the special types -------------------------------

def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = b""
    while True:
        b, n = n & 0x7F, n >> 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def _f(num: int, value: bytes | int | str) -> bytes:
    if isinstance(value, int):
        return _varint(num << 3) + _varint(value)
    data = value.encode() if isinstance(value, str) else value
    return _varint(num << 3 | 2) + _varint(len(data)) + data


def _envelope(api_version: str, kind: str, raw: bytes) -> bytes:
    type_meta = _f(1, api_version) + _f(2, kind)
    return b"k8s\x00" + _f(1, type_meta) + _f(2, raw) + _f(3, "") + _f(4, "")


def test_decode_special_types() -> None:
    ts = _f(1, 1704164645) + _f(2, 500_000_000)
    meta = _f(1, "a") + _f(3, "") + _f(7, 0) + _f(8, b"") + _f(9, ts) + _f(10, 0)
    meta += _f(11, _f(1, "k") + _f(2, "v"))
    port = _f(1, "http") + _f(2, 0) + _f(3, 80) + _f(4, "TCP")
    probe_port = _f(1, 1) + _f(2, 0) + _f(3, "http")           # IntOrString string
    resources = _f(1, _f(1, "cpu") + _f(2, _f(1, "500m")))      # limits map<Quantity>
    container = (_f(1, "c") + _f(6, port) + _f(8, resources)
                 + _f(11, _f(1, _f(2, _f(2, probe_port))) + _f(2, -5)))
    pod = _f(1, meta) + _f(2, _f(2, container) + _f(4, 30))
    obj = decode_protobuf(_envelope("v1", "Pod", pod))
    assert obj["metadata"] == {"name": "a", "deletionTimestamp": "2024-01-02T03:04:05Z",
                               "deletionGracePeriodSeconds": 0, "labels": {"k": "v"}}
    c = obj["spec"]["containers"][0]
    assert c["ports"] == [{"name": "http", "containerPort": 80, "protocol": "TCP"}]
    assert c["resources"] == {"limits": {"cpu": "500m"}}
    assert c["readinessProbe"]["httpGet"]["port"] == "http"
    assert c["readinessProbe"]["initialDelaySeconds"] == -5
    assert obj["spec"]["terminationGracePeriodSeconds"] == 30
    secret = decode_protobuf(_envelope("v1", "Secret", _f(2, _f(1, "k") + _f(2, b"\x00\xff"))))
    assert secret == {"kind": "Secret", "apiVersion": "v1", "data": {"k": "AP8="}}


def test_decode_errors() -> None:
    with pytest.raises(ValueError, match="k8s"):
        decode_protobuf(b'{"kind": "Pod"}')
    with pytest.raises(ValueError, match="no protobuf type"):
        decode_protobuf(_envelope("v1", "Nope", b""))
    with pytest.raises(ValueError):
        decode_protobuf(_envelope("v1", "Pod", b"\x0a\x10ab"))    # length past the end


def test_time_and_duration_formats() -> None:
    assert format_time(0) == "1970-01-01T00:00:00Z"
    assert format_time(1704164645, 123456789, micro=True) == "2024-01-02T03:04:05.123456Z"
    assert format_duration(0) == "0s"
    assert format_duration(3600 * 10**9) == "1h0m0s"
    assert format_duration(90 * 10**9 + 500_000_000) == "1m30.5s"
    assert format_duration(1_500_000) == "1.5ms"


# --- strategic merge patch --------------------------------------------------------------

def _deployment() -> dict:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "labels": {"app": "web", "tier": "fe"},
                     "finalizers": ["a", "b"]},
        "spec": {"replicas": 2,
                 "strategy": {"type": "RollingUpdate",
                              "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [
                     {"name": "nginx", "image": "nginx:1.25",
                      "ports": [{"containerPort": 80, "protocol": "TCP"}],
                      "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
                     {"name": "side", "image": "busybox"}]}}},
    }


def _containers(obj: dict) -> list[dict]:
    return obj["spec"]["template"]["spec"]["containers"]


def test_smp_second_apply_image_change() -> None:
    patch = {"spec": {"template": {"spec": {
        "$setElementOrder/containers": [{"name": "nginx"}, {"name": "side"}],
        "containers": [{"image": "nginx:1.26", "name": "nginx"}]}}}}
    out = strategic_merge(_deployment(), patch)
    c = _containers(out)
    assert [x["name"] for x in c] == ["nginx", "side"]
    assert c[0]["image"] == "nginx:1.26"
    assert c[0]["ports"] == [{"containerPort": 80, "protocol": "TCP"}]   # JSON merge loses it
    assert c[0]["env"] == _containers(_deployment())[0]["env"]


def test_smp_ports_env_labels() -> None:
    add = {"spec": {"template": {"spec": {
        "$setElementOrder/containers": [{"name": "nginx"}, {"name": "side"}],
        "containers": [{"name": "nginx",
                        "$setElementOrder/ports": [{"containerPort": 80},
                                                   {"containerPort": 443}],
                        "ports": [{"containerPort": 443, "protocol": "TCP"}],
                        "$setElementOrder/env": [{"name": "A"}, {"name": "C"}],
                        "env": [{"name": "B", "$patch": "delete"},
                                {"name": "C", "value": "3"}]}]}}},
        "metadata": {"labels": {"tier": None, "env": "prod"}}}
    out = strategic_merge(_deployment(), add)
    c = _containers(out)[0]
    assert [p["containerPort"] for p in c["ports"]] == [80, 443]
    assert c["env"] == [{"name": "A", "value": "1"}, {"name": "C", "value": "3"}]
    assert out["metadata"]["labels"] == {"app": "web", "env": "prod"}
    remove = {"spec": {"template": {"spec": {"containers": [
        {"name": "nginx", "ports": [{"containerPort": 80, "$patch": "delete"}]}]}}}}
    out2 = strategic_merge(out, remove)
    assert _containers(out2)[0]["ports"] == [{"containerPort": 443, "protocol": "TCP"}]


def test_smp_directives() -> None:
    d = _deployment()
    out = strategic_merge(d, {"spec": {"strategy": {"$retainKeys": ["type"],
                                                    "type": "Recreate"}}})
    assert out["spec"]["strategy"] == {"type": "Recreate"}
    out = strategic_merge(d, {"spec": {"template": {"spec": {"containers": [
        {"name": "only", "image": "x"}, {"$patch": "replace"}]}}}})
    assert _containers(out) == [{"name": "only", "image": "x"}]
    out = strategic_merge(d, {"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}})
    assert out["metadata"]["finalizers"] == ["b"]
    out = strategic_merge(d, {"metadata": {"finalizers": ["c", "a"]}})
    assert out["metadata"]["finalizers"] == ["c", "a", "b"]     # merged as a set
    out = strategic_merge(d, {"spec": {"strategy": {"$patch": "replace", "type": "Recreate"}}})
    assert out["spec"]["strategy"] == {"type": "Recreate"}
    out = strategic_merge(d, {"spec": {"template": {"spec": {"containers": [
        {"name": "side", "command": ["sleep"]}]}}}})
    assert _containers(out)[1]["command"] == ["sleep"]
    # command has no patch strategy: replaced, not merged
    out = strategic_merge(out, {"spec": {"template": {"spec": {"containers": [
        {"name": "side", "command": ["true"]}]}}}})
    assert _containers(out)[1]["command"] == ["true"]
    assert d == _deployment()                                   # input untouched


def test_smp_service_ports_and_unknown_types() -> None:
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
           "spec": {"ports": [{"port": 80, "targetPort": 8080}, {"port": 443}]}}
    out = strategic_merge(svc, {"spec": {"ports": [{"port": 80, "targetPort": 9090}]}})
    assert out["spec"]["ports"] == [{"port": 80, "targetPort": 9090}, {"port": 443}]
    custom = {"apiVersion": "example.com/v1", "kind": "Thing", "spec": {"l": [1, 2], "m": {
        "a": 1}}}
    out = strategic_merge(custom, {"spec": {"l": [3], "m": {"b": 2}}})
    assert out["spec"] == {"l": [3], "m": {"a": 1, "b": 2}}


def test_json_merge_and_patch() -> None:
    assert json_merge({"a": {"b": 1, "c": 2}, "l": [1]}, {"a": {"b": None}, "l": [2]}) == \
        {"a": {"c": 2}, "l": [2]}
    doc = {"a": [1, 2], "b": {"c": "x"}}
    out = json_patch(doc, [{"op": "add", "path": "/a/-", "value": 3},
                           {"op": "replace", "path": "/b/c", "value": "y"},
                           {"op": "copy", "from": "/b", "path": "/d"},
                           {"op": "move", "from": "/a/0", "path": "/e"},
                           {"op": "remove", "path": "/b"},
                           {"op": "test", "path": "/d/c", "value": "y"},
                           {"op": "add", "path": "/x~1y", "value": 1}])
    assert out == {"a": [2, 3], "d": {"c": "y"}, "e": 1, "x/y": 1}
    for bad in ([{"op": "test", "path": "/a/0", "value": 9}],
                [{"op": "remove", "path": "/nope"}],
                [{"op": "replace", "path": "/a/5", "value": 1}],
                [{"op": "frob", "path": "/a"}]):
        with pytest.raises(ValueError):
            json_patch(doc, bad)


# --- strict validation and OpenAPI ------------------------------------------------------

def test_unknown_fields() -> None:
    d = _deployment()
    assert unknown_fields(d) == []
    d["spec"]["template"]["spec"]["containers"][1]["imagee"] = "x"
    d["metadata"]["labels"]["any-key"] = "ok"
    d["spec"]["template"]["spec"]["volumes"] = [{"name": "v", "emptyDir": {}, "bogus": 1}]
    d["status"] = {"replicas": 1, "what": 2}
    assert unknown_fields(d) == [".spec.template.spec.containers[1].imagee",
                                 ".spec.template.spec.volumes[0].bogus", ".status.what"]
    assert unknown_fields({"apiVersion": "x/v1", "kind": "Y", "z": 1}) == []


def test_openapi_document() -> None:
    doc = openapi_v3("apps", "v1", _resources("apps/v1"))
    patch = doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"]
    assert patch["x-kubernetes-group-version-kind"] == {"group": "apps", "kind": "Deployment",
                                                        "version": "v1"}
    assert any(p["name"] == "fieldValidation" for p in patch["parameters"])
    scale = doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale"]
    assert scale["patch"]["x-kubernetes-group-version-kind"]["group"] == "autoscaling"
    schemas = doc["components"]["schemas"]
    dep = schemas["io.k8s.api.apps.v1.Deployment"]
    assert dep["x-kubernetes-group-version-kind"] == [patch["x-kubernetes-group-version-kind"]]
    assert dep["properties"]["spec"]["allOf"] == [
        {"$ref": "#/components/schemas/io.k8s.api.apps.v1.DeploymentSpec"}]
    containers = schemas["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"]
    assert containers["x-kubernetes-patch-merge-key"] == "name"
    assert containers["x-kubernetes-patch-strategy"] == "merge"
    ports = schemas["io.k8s.api.core.v1.Container"]["properties"]["ports"]
    assert ports["x-kubernetes-list-map-keys"] == ["containerPort", "protocol"]
    assert schemas["io.k8s.apimachinery.pkg.util.intstr.IntOrString"][
        "x-kubernetes-int-or-string"] is True
    assert schemas["io.k8s.apimachinery.pkg.apis.meta.v1.Time"]["format"] == "date-time"
    refs = {r for r in json.dumps(doc).split('"') if r.startswith("#/components/schemas/")}
    assert {r.rsplit("/", 1)[1] for r in refs} <= set(schemas)
    index = openapi_v3_index(["v1", "apps/v1"], {"apps/v1": doc})
    url = index["paths"]["apis/apps/v1"]["serverRelativeURL"]
    assert url.startswith("/openapi/v3/apis/apps/v1?hash=")
    assert url == openapi_v3_index(["apps/v1"], {"apps/v1": doc})["paths"]["apis/apps/v1"][
        "serverRelativeURL"]
    assert "api/v1" in index["paths"]
