"""The runtime side of CNI (libcni-like): run a network configuration list for a container.

ADD runs the plugins in order, giving each the previous result as ``prevResult``; DEL runs
them in reverse with the cached result; CHECK runs them in order with it. Results are
cached per (network, container, ifname) like libcni's ``/var/lib/cni/results``, in its
``cniCacheV1`` shape (the attachment's netns and args beside the result), so that GC can
DEL an attachment it finds stale. STATUS and GC (spec 1.1.0) follow libcni's
``GetStatusNetworkList`` and ``GCNetworkList``. Plugins are executed inside
``plugin_netns`` (the node's namespace), found on ``cni_path``.
"""

from __future__ import annotations

import copy
import glob
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from knetlab.cni.invoke import exec_plugin, find_plugin
from knetlab.cni.types import INVALID_CONFIG, SUPPORTED_VERSIONS, CNIError, version_tuple
from knetlab.netns import entered

log = logging.getLogger("knetlab.cni")
KNETLAB_PLUGINS = str(Path(__file__).parent / "bin")
REFERENCE_PLUGINS = "/usr/lib/cni"
CACHE_KIND = "cniCacheV1"  # libcni's cache entry format
GC_FAILED = 120  # GC collected errors from several plugins (runtime-side code)


class CNIRuntime:
    def __init__(self, conf_list: dict[str, Any], cni_path: list[str], cache_dir: Path,
                 plugin_netns: str | None = None) -> None:
        self.conf_list = validate_conf_list(conf_list)
        self.cni_path = cni_path
        self.cache_dir = cache_dir
        self.plugin_netns = plugin_netns

    @property
    def name(self) -> str:
        return self.conf_list["name"]

    def _env(self, command: str, cid: str, netns: str, ifname: str,
             args: dict[str, str] | None) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": cid,
            "CNI_NETNS": netns,
            "CNI_IFNAME": ifname,
            "CNI_ARGS": ";".join(f"{k}={v}" for k, v in (args or {}).items()),
            "CNI_PATH": ":".join(self.cni_path),
        }

    def _net_conf(self, plugin: dict[str, Any], prev: dict[str, Any] | None,
                  runtime_conf: dict[str, Any] | None) -> dict[str, Any]:
        conf = copy.deepcopy(plugin)
        conf["cniVersion"] = self.conf_list["cniVersion"]
        conf["name"] = self.conf_list["name"]
        if prev is not None:
            conf["prevResult"] = prev
        caps = conf.get("capabilities") or {}
        wanted = {k: v for k, v in (runtime_conf or {}).items() if caps.get(k)}
        if wanted:
            conf["runtimeConfig"] = wanted
        return conf

    def _run(self, plugin: dict[str, Any], conf: dict[str, Any], env: dict[str, str]
             ) -> dict[str, Any] | None:
        path = find_plugin(plugin["type"], self.cni_path)
        log.debug("cni %s %s %s", env["CNI_COMMAND"], plugin["type"], env["CNI_CONTAINERID"])
        if not self.plugin_netns:
            return exec_plugin(path, conf, env)
        # The plugin inherits this thread's namespace: one exec (nsenter) less per plugin.
        with entered(self.plugin_netns):
            return exec_plugin(path, conf, env)

    def add(self, cid: str, netns: str, ifname: str = "eth0", args: dict[str, str] | None = None,
            runtime_conf: dict[str, Any] | None = None) -> dict[str, Any]:
        env = self._env("ADD", cid, netns, ifname, args)
        result: dict[str, Any] | None = None
        for plugin in self.conf_list["plugins"]:
            result = self._run(plugin, self._net_conf(plugin, result, runtime_conf), env)
        if result is None:
            raise CNIError(INVALID_CONFIG, f"network {self.name}: no plugin returned a result")
        entry = {"kind": CACHE_KIND, "containerId": cid, "ifName": ifname,
                  "networkName": self.name, "netns": netns, "cniArgs": args or {},
                  "capabilityArgs": runtime_conf or {}, "result": result}
        path = self._cache(cid, ifname)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_suffix(".tmp").write_text(json.dumps(entry))
        path.with_suffix(".tmp").replace(path)
        return result

    def delete(self, cid: str, netns: str, ifname: str = "eth0",
               args: dict[str, str] | None = None,
               runtime_conf: dict[str, Any] | None = None) -> None:
        env = self._env("DEL", cid, netns, ifname, args)
        prev = self.cached(cid, ifname)
        for plugin in reversed(self.conf_list["plugins"]):
            self._run(plugin, self._net_conf(plugin, prev, runtime_conf), env)
        self._cache(cid, ifname).unlink(missing_ok=True)

    def check(self, cid: str, netns: str, ifname: str = "eth0",
              args: dict[str, str] | None = None,
              runtime_conf: dict[str, Any] | None = None) -> None:
        if version_tuple(self.conf_list["cniVersion"]) < (0, 4, 0):
            raise CNIError(INVALID_CONFIG, "CHECK needs cniVersion 0.4.0 or later")
        prev = self.cached(cid, ifname)
        if prev is None:
            raise CNIError(INVALID_CONFIG, f"no cached result for {cid}/{ifname}: was it added?")
        env = self._env("CHECK", cid, netns, ifname, args)
        for plugin in self.conf_list["plugins"]:
            self._run(plugin, self._net_conf(plugin, prev, runtime_conf), env)

    def version(self, plugin_type: str) -> dict[str, Any]:
        env = self._env("VERSION", "", "", "", None)
        conf = {"cniVersion": self.conf_list["cniVersion"]}
        out = exec_plugin(find_plugin(plugin_type, self.cni_path), conf, env,
                          netns=self.plugin_netns)
        return out or {}

    def status(self) -> None:
        """libcni's GetStatusNetworkList: STATUS to every plugin in order; the first error
        (50 not available, 51 limited connectivity, ...) is raised. Before spec 1.1.0 there
        is no STATUS: a network of an older version is taken as ready."""
        if version_tuple(self.conf_list["cniVersion"]) < (1, 1, 0):
            return
        env = self._env("STATUS", "", "", "", None)
        for plugin in self.conf_list["plugins"]:
            self._run(plugin, self._net_conf(plugin, None, None), env)

    def gc(self, valid: Iterable[tuple[str, str]]) -> None:
        """libcni's GCNetworkList: DEL every cached attachment of this network that is not
        in ``valid`` ((containerID, ifname) pairs), then, from spec 1.1.0, GC to every
        plugin with the valid list, so they release what no cache remembers (a leaked IPAM
        reservation). Every step runs whatever failed before it; the errors are raised
        together at the end."""
        keep = {(cid, ifname) for cid, ifname in valid}
        errors: list[str] = []
        for entry in self.attachments():
            cid, ifname = entry["containerId"], entry["ifName"]
            if (cid, ifname) in keep:
                continue
            try:
                self.delete(cid, entry.get("netns", ""), ifname, entry.get("cniArgs") or None,
                            entry.get("capabilityArgs") or None)
            except CNIError as exc:
                errors.append(f"failed to delete stale attachment {cid} {ifname}: {exc}")
        if version_tuple(self.conf_list["cniVersion"]) >= (1, 1, 0):
            attachments = [{"containerID": cid, "ifname": ifname} for cid, ifname in sorted(keep)]
            env = self._env("GC", "", "", "", None)
            for plugin in self.conf_list["plugins"]:
                conf = self._net_conf(plugin, None, None)
                # the spec's text names the key cni.dev/attachments; libcni sends both
                conf["cni.dev/valid-attachments"] = conf["cni.dev/attachments"] = attachments
                try:
                    self._run(plugin, conf, env)
                except CNIError as exc:
                    errors.append(f"failed to GC plugin {plugin['type']}: {exc}")
        if errors:
            raise CNIError(GC_FAILED, f"network {self.name}: GC left errors",
                           "; ".join(errors))

    def attachments(self) -> list[dict[str, Any]]:
        """The cached attachments of this network (cniCacheV1 entries; a bare result from
        an older cache is read as one, its netns unknown)."""
        out = []
        prefix = f"{self.name}-"
        for path in sorted((self.cache_dir / "results").glob(f"{glob.escape(prefix)}*")):
            if path.suffix == ".tmp":
                continue
            try:
                entry = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if entry.get("kind") != CACHE_KIND:
                cid, _, ifname = path.name[len(prefix):].rpartition("-")
                entry = {"containerId": cid, "ifName": ifname, "networkName": self.name,
                         "netns": "", "result": entry}
            if entry.get("networkName") == self.name and entry.get("containerId"):
                out.append(entry)
        return out

    def _cache(self, cid: str, ifname: str) -> Path:
        return self.cache_dir / "results" / f"{self.name}-{cid}-{ifname}"

    def cached(self, cid: str, ifname: str) -> dict[str, Any] | None:
        """The result of the attachment's ADD (None when it was not added)."""
        try:
            entry = json.loads(self._cache(cid, ifname).read_text())
        except (OSError, ValueError):
            return None
        return entry.get("result") if entry.get("kind") == CACHE_KIND else entry


def validate_conf_list(conf: dict[str, Any]) -> dict[str, Any]:
    """The checks libcni makes before running anything."""
    for key in ("cniVersion", "name", "plugins"):
        if key not in conf:
            raise CNIError(INVALID_CONFIG, f"network configuration list has no {key!r}")
    if conf["cniVersion"] not in SUPPORTED_VERSIONS:
        raise CNIError(INVALID_CONFIG, f"unsupported cniVersion {conf['cniVersion']!r}")
    if not conf["plugins"] or not all(isinstance(p, dict) and p.get("type")
                                      for p in conf["plugins"]):
        raise CNIError(INVALID_CONFIG, "every plugin needs a 'type'")
    return conf
