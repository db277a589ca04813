"""What this kernel can do, read from /proc/config.gz (never guessed from the version).

Data planes name the features they need; ``require`` raises one clear error naming the
missing option, so a topology asking for IPIP on a kernel without it fails before building.
"""

from __future__ import annotations

import functools
import gzip
from pathlib import Path

from knetlab.errors import UnsupportedError

FEATURES = {
    "vxlan": ("CONFIG_VXLAN", "VXLAN devices"),
    "tun": ("CONFIG_TUN", "TUN/TAP devices"),
    "bridge": ("CONFIG_BRIDGE", "Linux bridges"),
    "macvlan": ("CONFIG_MACVLAN", "macvlan devices"),
    "ipip": ("CONFIG_NET_IPIP", "IPIP tunnels (tunl0)"),
    "gre": ("CONFIG_NET_IPGRE", "GRE tunnels"),
    "ipvs": ("CONFIG_IP_VS", "IPVS (kube-proxy ipvs mode)"),
    "openvswitch": ("CONFIG_OPENVSWITCH", "the Open vSwitch kernel datapath"),
    "netem": ("CONFIG_NET_SCH_NETEM", "netem delay/loss"),
}


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
    """True if the kernel has the feature built in or as a module (or we cannot tell)."""
    conf = kernel_config()
    if not conf:
        return True  # no config exposed: let the first real command tell
    option, _ = FEATURES[feature]
    return conf.get(option) in ("y", "m")


def require(feature: str, who: str) -> None:
    if not has(feature):
        option, what = FEATURES[feature]
        raise UnsupportedError(
            f"{who} needs {what}, which this kernel lacks ({option} is not set in "
            f"/proc/config.gz); choose another data plane or run on a kernel with {option}")
