"""What this kernel can do, found by asking it (never guessed from the version).

Data planes name the features they need; ``require`` raises one clear error naming the
missing one, so a topology asking for IPIP on a kernel without it fails before building.

Each feature is probed by making the thing in a throwaway network namespace (``unshare
--net``; the namespace, and what was made in it, vanish when the probe exits): an IPIP
device, a VXLAN device, a netem qdisc, ... Modules load on demand as they would for the
real command, so a feature built as a module counts. /proc/config.gz is only consulted when
probing is impossible (not root, no ``unshare``); it is absent on most distributions, and
then the feature is assumed present and the first real command tells. Answers are cached
per process.
"""

from __future__ import annotations

import functools
import gzip
from dataclasses import dataclass
from pathlib import Path

from knetlab import shell
from knetlab.errors import CommandError, UnsupportedError

FEATURES = {
    "vxlan": ("CONFIG_VXLAN", "VXLAN devices"),
    "tun": ("CONFIG_TUN", "TUN/TAP devices"),
    "bridge": ("CONFIG_BRIDGE", "Linux bridges"),
    "macvlan": ("CONFIG_MACVLAN", "macvlan devices"),
    "ipip": ("CONFIG_NET_IPIP", "IPIP tunnels (tunl0)"),
    "gre": ("CONFIG_NET_IPGRE", "GRE tunnels"),
    "wireguard": ("CONFIG_WIREGUARD", "WireGuard devices"),
    "ipvs": ("CONFIG_IP_VS", "IPVS (kube-proxy ipvs mode)"),
    "openvswitch": ("CONFIG_OPENVSWITCH", "the Open vSwitch kernel datapath"),
    "netem": ("CONFIG_NET_SCH_NETEM", "netem delay/loss"),
    "esp": ("CONFIG_INET_ESP", "IPsec ESP (the xfrm transform that encrypts packets)"),
}

# Device names no one else uses: the namespace is empty anyway. (Not "a": `ip link add a`
# reads "a" as the abbreviation of "address".)
_IP = "ip -batch -"
PROBES: dict[str, tuple[str, str]] = {  # feature -> (command, its stdin)
    "vxlan": (_IP, "link add kprobe0 type vxlan id 1 dstport 4789\n"),
    "tun": (_IP, "tuntap add kprobe0 mode tun\n"),
    "bridge": (_IP, "link add kprobe0 type bridge\n"),
    "macvlan": (_IP, "link add kprobe0 type veth peer name kprobe1\n"
                     "link add kprobe2 link kprobe0 type macvlan\n"),
    "ipip": (_IP, "link add kprobe0 type ipip\n"),
    "gre": (_IP, "link add kprobe0 type gre\n"),
    "wireguard": (_IP, "link add kprobe0 type wireguard\n"),
    # No device to make: asking for the generic-netlink family loads the module if any.
    "ipvs": ("genl ctrl get name IPVS", ""),
    "openvswitch": ("genl ctrl get name ovs_datapath", ""),
    "netem": ("tc qdisc add dev lo root netem delay 1ms", ""),
    # An ESP security association: xfrm accepts it only if the kernel has ESP.
    "esp": (_IP, "xfrm state add src 10.0.0.1 dst 10.0.0.2 proto esp spi 0x100 mode tunnel "
                 "enc cbc(aes) 0x00112233445566778899aabbccddeeff "
                 "auth hmac(sha256) 0x" + "00112233445566778899aabbccddeeff" * 2 + "\n"),
}
PROBE_TIMEOUT = 10.0


@dataclass(frozen=True)
class Answer:
    present: bool
    how: str  # how we know: the probe's error, or where the answer came from


@functools.cache
def can_probe() -> bool:
    """True if we may make network namespaces (root, with util-linux's unshare)."""
    try:
        return shell.run(["unshare", "--net", "true"], check=False,
                         timeout=PROBE_TIMEOUT).ok
    except CommandError:  # unshare not installed
        return False


@functools.cache
def probe(feature: str) -> Answer:
    """Whether the kernel has ``feature``, from the kernel itself when we can ask it."""
    option, _ = FEATURES[feature]
    if can_probe():
        command, stdin = PROBES[feature]
        try:
            res = shell.run(["unshare", "--net", *command.split()], check=False,
                            input=stdin or None, timeout=PROBE_TIMEOUT)
        except CommandError as exc:  # the probing tool is missing (or hung)
            return _from_config(option, f"cannot probe: {exc}")
        if res.ok:
            return Answer(True, "probed in a scratch network namespace")
        lines = (res.stderr or res.stdout).splitlines()
        error = " ".join(ln.strip() for ln in lines if not ln.startswith("Command failed"))
        return Answer(False, f"probing it in a scratch network namespace: "
                             f"{error or f'exit {res.returncode}'}")
    return _from_config(option, "cannot make network namespaces to probe")


def _from_config(option: str, why: str) -> Answer:
    conf = kernel_config()
    if not conf:
        return Answer(True, f"{why}, and no /proc/config.gz: assumed present")
    return Answer(conf.get(option) in ("y", "m"), f"{why}; {option} in /proc/config.gz is "
                  f"{conf.get(option, 'not set')}")


@functools.cache
def kernel_config() -> dict[str, str]:
    path = Path("/proc/config.gz")
    if not path.exists():
        return {}
    conf: dict[str, str] = {}
    with gzip.open(path, "rt") as f:
        for line in f:
            if line.startswith("CONFIG_") and "=" in line:
                key, _, val = line.strip().partition("=")
                conf[key] = val
    return conf


def has(feature: str) -> bool:
    """True if the kernel has the feature, built in or as a module (or we cannot tell)."""
    return probe(feature).present


def require(feature: str, who: str) -> None:
    answer = probe(feature)
    if not answer.present:
        option, what = FEATURES[feature]
        raise UnsupportedError(
            f"{who} needs {what}, which this kernel lacks ({answer.how}); choose another "
            f"data plane or run on a kernel with {option}")
