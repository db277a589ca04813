"""A pod's volumes and the env it takes from ConfigMaps and Secrets, as the kubelet makes them.

Volumes. Every volume gets a source directory ``<pod dir>/volumes/<name>/`` (a hostPath
volume: the host's path itself). ``configMap``, ``secret`` and ``downwardAPI`` volumes are
written there as plain files (one per key, or per ``items`` entry, with ``defaultMode`` /
``mode``), ``emptyDir`` starts empty. Each ``volumeMounts[]`` entry is a bind mount made in
the pause's mount namespace (``nsenter --target PAUSE --mount -- mount --bind``), from the
source (or its ``subPath``) onto the mount path inside the pod's overlay root: every
container of the pod enters that namespace, so they all see it, and a later container
mounting the same path reuses it. The mount path is resolved against the pod's root first
(a symlink such as ``/var/run`` must not lead the mount out onto the host's ``/run``).
When the pause dies the namespace goes, and the mounts with it: nothing to undo.

Updates. ``refresh`` rewrites the configMap, secret and downwardAPI files (a temp file
renamed over the old one, so a reader never sees half a file); the bind mount is of the
directory, so the pod sees the new files within the kubelet's refresh period, as upstream
(a ``subPath`` mount is a bind of one file and keeps the old content, also as upstream).

Env. ``envFrom`` (configMapRef / secretRef, with ``prefix``) comes first, then ``env``
entries (``valueFrom.configMapKeyRef`` / ``secretKeyRef``), so an explicit entry wins. A
missing object or key that is not ``optional`` is a ``ConfigError``: the container waits
in ``CreateContainerConfigError`` and is retried.
"""

from __future__ import annotations

import base64
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from knetlab import shell
from knetlab.errors import KnetlabError

if TYPE_CHECKING:
    from knetlab.kube.client import KubeClient
    from knetlab.kube.sandboxes import Sandbox

log = logging.getLogger("knetlab.kube.volumes")
Obj = dict[str, Any]
ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
REFRESH_S = 2.0  # how often a running pod's configMap/secret/downwardAPI files are rewritten


class ConfigError(KnetlabError):
    """A container's config refers to a ConfigMap/Secret (key) that does not exist."""


class Lookup:
    """ConfigMaps and Secrets of one namespace, each fetched once per lookup round."""

    def __init__(self, client: KubeClient, namespace: str) -> None:
        self.client, self.ns = client, namespace
        self._cache: dict[tuple[str, str], Obj | None] = {}

    def data(self, kind: str, name: str, optional: bool = False) -> dict[str, str] | None:
        """The object's data as text (a Secret's decoded), None when optional and absent."""
        key = (kind, name)
        if key not in self._cache:
            try:
                self._cache[key] = self.client.get(
                    "configmaps" if kind == "configmap" else "secrets", name, self.ns)
            except Exception as exc:  # noqa: BLE001 - ApiError 404 and API trouble alike
                if getattr(exc, "code", 0) != 404:
                    raise ConfigError(f"failed to get {kind} {self.ns}/{name}: {exc}") from exc
                self._cache[key] = None
        obj = self._cache[key]
        if obj is None:
            if optional:
                return None
            raise ConfigError(f'{kind} "{name}" not found')
        out: dict[str, str] = {}
        for k, v in (obj.get("data") or {}).items():
            out[k] = base64.b64decode(v).decode(errors="replace") if kind == "secret" else v
        for k, v in (obj.get("binaryData") or {}).items():
            out[k] = base64.b64decode(v).decode(errors="replace")
        return out

    def key(self, kind: str, ref: Obj) -> str | None:
        optional = bool(ref.get("optional"))
        data = self.data(kind, ref.get("name", ""), optional)
        if data is None:
            return None
        if ref.get("key") not in data:
            if optional:
                return None
            what = "ConfigMap" if kind == "configmap" else "Secret"
            raise ConfigError(f"couldn't find key {ref.get('key')} in {what} "
                              f"{self.ns}/{ref.get('name')}")
        return data[ref["key"]]


def env_from_objects(lookup: Lookup, container: Obj, env: dict[str, str]) -> None:
    """Apply ``envFrom`` to ``env`` (invalid names are skipped, as upstream)."""
    for src in container.get("envFrom") or []:
        for kind, field in (("configmap", "configMapRef"), ("secret", "secretRef")):
            ref = src.get(field)
            if ref is None:
                continue
            data = lookup.data(kind, ref.get("name", ""), bool(ref.get("optional")))
            for k, v in (data or {}).items():
                name = (src.get("prefix") or "") + k
                if ENV_NAME.match(name):
                    env[name] = v


def env_value(lookup: Lookup, value_from: Obj) -> str | None:
    """The value of a configMapKeyRef / secretKeyRef (None: optional and absent)."""
    if "configMapKeyRef" in value_from:
        return lookup.key("configmap", value_from["configMapKeyRef"])
    if "secretKeyRef" in value_from:
        return lookup.key("secret", value_from["secretKeyRef"])
    return None


def _downward(pod: Obj, path: str) -> str:
    meta = pod.get("metadata") or {}
    if path in ("metadata.labels", "metadata.annotations"):
        items = meta.get(path.split(".")[1]) or {}
        return "\n".join(f'{k}="{v}"' for k, v in sorted(items.items()))
    m = re.match(r"metadata\.(labels|annotations)\['(.*)'\]$", path)
    if m:
        return (meta.get(m.group(1)) or {}).get(m.group(2), "")
    fields = {"metadata.name": meta.get("name", ""), "metadata.namespace": meta.get(
        "namespace", ""), "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": (pod.get("spec") or {}).get("nodeName", ""),
        "spec.serviceAccountName": (pod.get("spec") or {}).get("serviceAccountName", "")}
    return fields.get(path, "")


class Volumes:
    """One pod's volumes: source dirs, their content, and the bind mounts into its root."""

    def __init__(self, client: KubeClient, pod_dir: Path, sandbox: Sandbox) -> None:
        self.client, self.dir, self.sandbox = client, pod_dir, sandbox
        self.mounted: set[str] = set()
        self.refreshable = False

    def source(self, vol: Obj) -> str:
        if "hostPath" in vol:
            return vol["hostPath"].get("path", "/")
        return str(self.dir / "volumes" / vol["name"])

    def files_of(self, vol: Obj, pod: Obj, lookup: Lookup) -> dict[str, tuple[str, int]] | None:
        """What a configMap/secret/downwardAPI volume holds: path -> (content, mode)."""
        for kind, field in (("configmap", "configMap"), ("secret", "secret")):
            if field in vol:
                src = vol[field]
                name = src.get("name") or src.get("secretName", "")
                mode = int(src.get("defaultMode", 0o644))
                data = lookup.data(kind, name, bool(src.get("optional"))) or {}
                items = src.get("items")
                if not items:
                    return {k: (v, mode) for k, v in data.items()}
                out = {}
                for it in items:
                    if it["key"] not in data:
                        if src.get("optional"):
                            continue
                        raise ConfigError(f"configmap references non-existent config key: "
                                          f"{it['key']}")
                    out[it["path"]] = (data[it["key"]], int(it.get("mode", mode)))
                return out
        if "downwardAPI" in vol:
            src = vol["downwardAPI"]
            mode = int(src.get("defaultMode", 0o644))
            return {it["path"]: (_downward(pod, (it.get("fieldRef") or {}).get(
                "fieldPath", "")), int(it.get("mode", mode))) for it in src.get("items") or []}
        return None

    def write_files(self, pod: Obj, lookup: Lookup | None = None) -> None:
        """(Re)write every configMap/secret/downwardAPI volume; make emptyDir dirs."""
        spec = pod.get("spec") or {}
        lookup = lookup or Lookup(self.client, (pod.get("metadata") or {}).get(
            "namespace", "default"))
        for vol in spec.get("volumes") or []:
            src = Path(self.source(vol))
            if "hostPath" in vol:
                if (vol["hostPath"].get("type") or "") == "DirectoryOrCreate":
                    src.mkdir(parents=True, exist_ok=True)
                continue
            src.mkdir(parents=True, exist_ok=True)
            files = self.files_of(vol, pod, lookup)
            if files is None:
                continue  # emptyDir (and kinds knetlab does not fill): an empty dir
            self.refreshable = True
            for rel, (content, mode) in files.items():
                dest = src / rel.lstrip("/")
                if ".." in Path(rel).parts:
                    continue  # the API rejects these; never write outside the volume
                dest.parent.mkdir(parents=True, exist_ok=True)
                try:
                    if dest.read_text() == content and dest.stat().st_mode & 0o7777 == mode:
                        continue
                except OSError:
                    pass
                tmp = dest.with_name(f".{dest.name}.tmp")
                tmp.write_text(content)
                os.chmod(tmp, mode)
                tmp.replace(dest)
            for old in src.rglob("*"):  # keys removed from the object go too
                rel = str(old.relative_to(src))
                if old.is_file() and rel not in files and not old.name.startswith("."):
                    old.unlink(missing_ok=True)

    def mount(self, container: Obj, pod: Obj) -> None:
        """Bind-mount the container's volumeMounts into the pod's root (once per path)."""
        vols = {v["name"]: v for v in (pod.get("spec") or {}).get("volumes") or []}
        pid = self.sandbox.pid
        assert pid is not None
        for vm in container.get("volumeMounts") or []:
            path = vm.get("mountPath", "")
            vol = vols.get(vm.get("name", ""))
            if vol is None or not path or path in self.mounted:
                continue
            src = self.source(vol)
            if vm.get("subPath"):
                src = os.path.join(src, vm["subPath"].lstrip("/"))
                if not os.path.exists(src):
                    os.makedirs(src, exist_ok=True)
            target = self.sandbox.in_root(path)
            if os.path.isdir(src):
                os.makedirs(target, exist_ok=True)
            elif not os.path.exists(target):
                os.makedirs(os.path.dirname(target), exist_ok=True)
                Path(target).touch()
            # the same place seen from inside the pause's mount namespace (not chrooted)
            inside = str(self.dir / "rootfs") + target[len(f"/proc/{pid}/root"):]
            argv = ["nsenter", f"--target={pid}", "--mount", "--", "mount", "--bind", src,
                    inside]
            shell.run(argv, context=f"mount volume {vm['name']} at {path}")
            if vm.get("readOnly"):
                shell.run(["nsenter", f"--target={pid}", "--mount", "--", "mount", "-o",
                           "remount,bind,ro", inside],
                          context=f"make volume {vm['name']} read-only at {path}")
            self.mounted.add(path)
