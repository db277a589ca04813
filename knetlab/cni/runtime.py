"""The runtime side of CNI (libcni-like): run a network configuration list for a container.

ADD runs the plugins in order, giving each the previous result as ``prevResult``; DEL runs
them in reverse with the cached result; CHECK runs them in order with it. Results are
cached per (network, container, ifname) like libcni's ``/var/lib/cni/results``. Plugins
are executed inside ``plugin_netns`` (the node's namespace), found on ``cni_path``.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import Any

from knetlab.cni.invoke import exec_plugin, find_plugin
from knetlab.cni.types import INVALID_CONFIG, SUPPORTED_VERSIONS, CNIError, version_tuple

log = logging.getLogger("knetlab.cni")
KNETLAB_PLUGINS = str(Path(__file__).parent / "bin")
REFERENCE_PLUGINS = "/usr/lib/cni"


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
        return exec_plugin(path, conf, env, netns=self.plugin_netns)

    def add(self, cid: str, netns: str, ifname: str = "eth0", args: dict[str, str] | None = None,
            runtime_conf: dict[str, Any] | None = None) -> dict[str, Any]:
        env = self._env("ADD", cid, netns, ifname, args)
        result: dict[str, Any] | None = None
        for plugin in self.conf_list["plugins"]:
            result = self._run(plugin, self._net_conf(plugin, result, runtime_conf), env)
        if result is None:
            raise CNIError(INVALID_CONFIG, f"network {self.name}: no plugin returned a result")
        self._cache(cid, ifname).parent.mkdir(parents=True, exist_ok=True)
        self._cache(cid, ifname).write_text(json.dumps(result))
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

    def _cache(self, cid: str, ifname: str) -> Path:
        return self.cache_dir / "results" / f"{self.name}-{cid}-{ifname}"

    def cached(self, cid: str, ifname: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._cache(cid, ifname).read_text())
        except (OSError, ValueError):
            return None


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
