"""``rancher-ipsec``: Rancher's encrypted overlay (IPsec ESP tunnels between hosts, keyed by
strongSwan/charon). It needs the kernel's ESP transform; where the kernel lacks it (as
this lab's machines do: XFRM core, no ESP), the topology is refused before anything is
built, naming what is missing and what works here instead. knetlab does not build this
overlay on any kernel yet, and says so rather than pretend.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from knetlab import kernel
from knetlab.dataplane import Backend, register
from knetlab.errors import ConfigError

if TYPE_CHECKING:
    from knetlab.topologies.fields import Fields
    from knetlab.topologies.schema import ClusterSpec

ALTERNATIVE = ("use `dataplane: weave` with `weave: {password: ...}`: weave's sleeve "
               "encrypts pod traffic between nodes in userspace (NaCl secretbox), with no "
               "kernel IPsec")


@register
class RancherIpsecBackend(Backend):
    name = "rancher-ipsec"

    @classmethod
    def validate(cls, spec: ClusterSpec, settings: Fields) -> dict[str, Any]:
        settings.only([])
        where = {"file": spec.file, "line": spec.lines.get("dataplane"), "field": "dataplane"}
        esp = kernel.probe("esp")
        if not esp.present:
            option, what = kernel.FEATURES["esp"]
            raise ConfigError(f"data plane rancher-ipsec needs {what}, which this kernel "
                              f"lacks ({option} is not set; {esp.how}); XFRM alone cannot "
                              f"encrypt", fix=ALTERNATIVE, **where)
        raise ConfigError("data plane rancher-ipsec (IPsec ESP tunnels keyed by "
                          "strongSwan) is not built by knetlab yet, although this kernel "
                          "has ESP", fix=ALTERNATIVE, **where)
